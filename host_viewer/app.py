"""The windowed viewer: the newest frame of one or more cameras (tiled), overlays, and keys bound to actions.

Keys are a table from key code to (description, action) (`ViewerApp.bindings`) so that the help overlay
lists exactly what is bound, and features add their keys in one place with `bind`. Keys act on the selected
camera tile (Tab selects the next one); `send_command` sends a command to it without blocking the window,
with its Progress on the progress overlay and its outcome on the status line.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np

from .client import AgentClient, BadFrame
from .display import draw_text_block
from .overlays import Overlay, draw_help, draw_status, standard_overlays
from .session import ViewingSession
from .tile import CameraTile

log = logging.getLogger(__name__)

KEY_NAMES = {"\t": "Tab", " ": "Space", "\x1b": "Esc"}
MAX_TILE_WIDTH = 640
REDRAW_INTERVAL_S = 0.2  # redraw without new frames (connection state, progress) this often


@dataclass
class Binding:
    key: str
    description: str
    action: Callable[[], None]

    @property
    def label(self) -> str:
        return KEY_NAMES.get(self.key, self.key)


def connection_lines(client: AgentClient, width: int = 90) -> list[str]:
    """The client's connection state, then its hint (what to do) wrapped to `width` characters."""
    lines = [f"{client.address}: {client.status_text}"]
    hint = client.state_hint
    while hint:
        cut = hint.rfind(" ", 0, width) if len(hint) > width else len(hint)
        cut = cut if cut > 0 else len(hint)
        lines.append(hint[:cut])
        hint = hint[cut:].lstrip()
    return lines


class ViewerApp:
    def __init__(self, client: AgentClient | Iterable[AgentClient], title: str | None = None, *,
                 save_dir: str | Path = ".", overlays: Iterable[str] | None = None):
        clients = [client] if isinstance(client, AgentClient) else list(client)
        if not clients:
            raise ValueError("ViewerApp needs at least one AgentClient")
        self.tiles = [CameraTile(c, save_dir) for c in clients]
        self.selected = 0
        self.title = title or "picamlink " + " ".join(c.address for c in clients)
        self.running = True
        self.show_help = False
        self.overlays: list[Overlay] = standard_overlays()
        if overlays is not None:
            wanted = set(overlays)
            for overlay in self.overlays:
                overlay.enabled = "all" in wanted or overlay.name in wanted
        self.bindings: dict[int, Binding] = {}
        self._bind_standard_keys()

    # keys -------------------------------------------------------------------------------------------
    def bind(self, key: str, description: str, action: Callable[[], None]) -> None:
        self.bindings[ord(key)] = Binding(key, description, action)

    def _bind_standard_keys(self) -> None:
        self.bind("q", "quit (also Esc)", self.quit)
        self.bind("h", "help: show or hide this list of keys", self.toggle_help)
        for overlay in self.overlays:
            self.bind(overlay.key, overlay.description, lambda o=overlay: self.toggle_overlay(o.name))
        self.bind("o", "all overlays on / off", self.toggle_all_overlays)
        self.bind("]", "ExposureTime up 1/3 stop (manual)", lambda: self.tile.step_exposure(+1))
        self.bind("[", "ExposureTime down 1/3 stop (manual)", lambda: self.tile.step_exposure(-1))
        self.bind("=", "AnalogueGain up 1/3 stop (manual)", lambda: self.tile.step_gain(+1))
        self.bind("-", "AnalogueGain down 1/3 stop (manual)", lambda: self.tile.step_gain(-1))
        self.bind("x", "auto exposure on / off", lambda: self.tile.toggle_auto_exposure())
        self.bind("s", "snapshot: full-res JPEG + DNG raw + JSON", lambda: self.tile.snapshot())
        self.bind("r", "record MJPEG .mkv: start / stop", lambda: self.tile.toggle_recording())
        self.bind("\t", "select the next camera tile", self.select_next)

    def handle_key(self, code: int) -> None:
        if code == 27:  # Esc
            code = ord("q")
        binding = self.bindings.get(code)
        if binding is not None:
            binding.action()

    def help_lines(self) -> list[str]:
        lines = [f"keys (act on {self.tile.name})"]
        lines += [f"{binding.label:>5}  {binding.description}" for binding in self.bindings.values()]
        return lines

    # actions ----------------------------------------------------------------------------------------
    @property
    def tile(self) -> CameraTile:
        return self.tiles[self.selected]

    @property
    def client(self) -> AgentClient:
        return self.tile.client

    @property
    def session(self) -> ViewingSession:
        return self.tile.session

    @property
    def status_message(self) -> str:
        return self.tile.status

    @status_message.setter
    def status_message(self, text: str) -> None:
        self.tile.set_status(text)

    def send_command(self, name: str, args: dict | None = None, *, ttl: float = 5.0,
                     on_result: Callable[[dict], None] | None = None) -> Future:
        """Send a command to the selected camera without blocking; progress and outcome show on screen."""
        return self.tile.send(name, args, ttl=ttl, on_result=on_result)

    def quit(self) -> None:
        self.running = False

    def toggle_help(self) -> None:
        self.show_help = not self.show_help

    def toggle_overlay(self, name: str) -> None:
        for overlay in self.overlays:
            if overlay.name == name:
                overlay.enabled = not overlay.enabled

    def toggle_all_overlays(self) -> None:
        on = not any(o.enabled for o in self.overlays)
        for overlay in self.overlays:
            overlay.enabled = on

    def select_next(self) -> None:
        self.selected = (self.selected + 1) % len(self.tiles)

    # drawing ----------------------------------------------------------------------------------------
    def tile_size(self) -> tuple[int, int]:
        """(w, h) of each tile: the first camera's frame size, scaled down to MAX_TILE_WIDTH when tiling."""
        for tile in self.tiles:
            if tile.last_image is not None:
                h, w = tile.last_image.shape[:2]
                break
        else:
            w, h = 640, 480
        if len(self.tiles) > 1 and w > MAX_TILE_WIDTH:
            w, h = MAX_TILE_WIDTH, int(round(h * MAX_TILE_WIDTH / w))
        return w, h

    def status_screen(self, tile: CameraTile | None = None, size: tuple[int, int] = (640, 240)) -> np.ndarray:
        """What a tile shows before its first frame: the connection state and what to do about it."""
        tile = tile or self.tile
        image = np.zeros((size[1], size[0], 3), np.uint8)
        draw_text_block(image, connection_lines(tile.client, width=max(20, size[0] // 8)))
        return image

    def render_tile(self, tile: CameraTile, size: tuple[int, int]) -> np.ndarray:
        w, h = size
        if tile.last_image is None:
            return self.status_screen(tile, size)
        elif tile.last_image.shape[:2] != (h, w):
            image = cv2.resize(tile.last_image, (w, h), interpolation=cv2.INTER_AREA)
        else:
            image = tile.last_image.copy()
        for overlay in self.overlays:
            if overlay.enabled:
                overlay.draw(image, tile)
        draw_status(image, tile)
        return image

    def compose(self) -> np.ndarray:
        """The whole window: tiles in a grid, the selected one framed when there are several, help on top."""
        w, h = self.tile_size()
        n = len(self.tiles)
        columns = math.ceil(math.sqrt(n))
        rows = math.ceil(n / columns)
        canvas = np.zeros((rows * h, columns * w, 3), np.uint8)
        for i, tile in enumerate(self.tiles):
            y, x = (i // columns) * h, (i % columns) * w
            canvas[y : y + h, x : x + w] = self.render_tile(tile, (w, h))
            if n > 1 and i == self.selected:
                cv2.rectangle(canvas, (x + 1, y + 1), (x + w - 2, y + h - 2), (0, 220, 255), 2)
        if self.show_help:
            draw_help(canvas, self.help_lines())
        return canvas

    def render(self, frame, image, age_ms: float):
        """Overlays on one frame of the selected camera (kept for callers of the one-camera API)."""
        tile = self.tile
        tile.last_frame, tile.last_image, tile.last_age_ms = frame, image, age_ms
        return self.render_tile(tile, (image.shape[1], image.shape[0]))

    def window_closed(self) -> bool:
        """True once the window was closed by its close button or the window manager (Alt+F4). Without this
        check, the next imshow makes a new window with the same name: the window "comes back"."""
        try:
            return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1
        except cv2.error:
            return True

    # the loop ---------------------------------------------------------------------------------------
    def poll_frames(self) -> bool:
        """Decode the newest frame of every tile that has a new one; True if any did."""
        changed = False
        for tile in self.tiles:
            frame = tile.client.latest()
            if frame is not None and (tile.last_frame is None or frame.sequence != tile.last_frame.sequence
                                      or frame.received_ns != tile.last_frame.received_ns):
                try:
                    image = frame.decode()
                except BadFrame as exc:  # a corrupt frame is skipped; the next one will do
                    log.warning("%s", exc)
                    continue
                tile.shown(frame, image)
                tile.last_image = image
                changed = True
        return changed

    def run(self, duration: float | None = None, stop=None, frames: int | None = None) -> ViewingSession:
        """Show the window until q/Esc, the window's close button (or Alt+F4), `duration` seconds, or `stop`
        (anything with is_set(): the CLI's StopRequest for Ctrl-C and SIGTERM), or `frames` frames shown by the
        selected tile. Calibrations still running
        are cancelled on the agent, and recordings finished, before it returns."""
        cv2.namedWindow(self.title, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)  # no Qt toolbar: keys are ours
        end = time.monotonic() + duration if duration else float("inf")
        last_draw = 0.0
        next_sample = 0.0
        try:
            while self.running and time.monotonic() < end and not (stop is not None and stop.is_set()):
                changed = self.poll_frames()
                now = time.monotonic()
                if now >= next_sample:
                    for tile in self.tiles:
                        tile.sample_counters(now)
                    next_sample = now + 0.25
                if changed or now - last_draw > REDRAW_INTERVAL_S:
                    cv2.imshow(self.title, self.compose())
                    last_draw = now
                    if frames is not None and self.session.frames >= frames:
                        break
                key = cv2.waitKey(5)
                if key != -1:
                    self.handle_key(key & 0xFF)
                if self.window_closed():
                    log.info("window closed")
                    self.running = False
        finally:
            for tile in self.tiles:
                tile.cancel_in_flight()
                tile.stop_recording()
            try:
                cv2.destroyWindow(self.title)
            except cv2.error:  # already gone (closed by the window manager)
                pass
        return self.session
