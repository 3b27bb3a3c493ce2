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
from .overlays import (Overlay, Style, draw_help, draw_overlays, draw_text_lines, standard_overlays, text_size,
                       tile_label)
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


def fit_rect(image_size: tuple[int, int], area: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of an image of `image_size` scaled to fit `area` with its aspect ratio kept, centred."""
    iw, ih = image_size
    aw, ah = area
    scale = min(aw / iw, ah / ih)
    w, h = max(1, min(aw, round(iw * scale))), max(1, min(ah, round(ih * scale)))
    x0, y0 = (aw - w) // 2, (ah - h) // 2
    return x0, y0, x0 + w, y0 + h


def clear_outside(view: np.ndarray, rect: tuple[int, int, int, int]) -> None:
    """Black the letterbox bars of `view` around `rect` (only the bars: the video area is overwritten)."""
    x0, y0, x1, y1 = rect
    view[:y0] = 0
    view[y1:] = 0
    view[y0:y1, :x0] = 0
    view[y0:y1, x1:] = 0


def blit(image: np.ndarray, dst: np.ndarray) -> None:
    """`image` into `dst` (a view of the window's buffer), scaled when the sizes differ: the scaling writes
    straight into the buffer, no intermediate image."""
    if image.shape[:2] == dst.shape[:2]:
        np.copyto(dst, image)
        return
    # INTER_AREA only from 2x down (where linear would alias; OpenCV's area path is fast at integer ratios):
    # at 1920x1080 → 1280x720 it took 31 ms against linear's 1.6 ms (measured; notes/issue-16.md, 15.4).
    heavy_shrink = dst.shape[1] * 2 <= image.shape[1]
    out = cv2.resize(image, (dst.shape[1], dst.shape[0]), dst=dst,
                     interpolation=cv2.INTER_AREA if heavy_shrink else cv2.INTER_LINEAR)
    if out is not dst and not np.shares_memory(out, dst):  # OpenCV made its own array: copy it in
        np.copyto(dst, out)


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
        self._canvas: np.ndarray | None = None  # the window's buffer, reused frame after frame
        self.placed: list = []  # per tile, what compose() last laid out (boxes), for tests and tools
        self.help_page = 0
        self._help_pages = 1

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
        """h: show the help, then its next page when it has several, then hide it."""
        if not self.show_help:
            self.show_help, self.help_page = True, 0
        elif self.help_page + 1 < self._help_pages:
            self.help_page += 1
        else:
            self.show_help = False

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
        """(w, h) of each tile at the window's first size: the first camera's frame size, scaled down to
        MAX_TILE_WIDTH when tiling."""
        for tile in self.tiles:
            if tile.last_image is not None:
                h, w = tile.last_image.shape[:2]
                break
        else:
            w, h = 640, 480
        if len(self.tiles) > 1 and w > MAX_TILE_WIDTH:
            w, h = MAX_TILE_WIDTH, int(round(h * MAX_TILE_WIDTH / w))
        return w, h

    def grid(self) -> tuple[int, int]:
        """(columns, rows) of the tile grid."""
        columns = math.ceil(math.sqrt(len(self.tiles)))
        return columns, math.ceil(len(self.tiles) / columns)

    def natural_size(self) -> tuple[int, int]:
        """The window's size before the user resizes it: the grid of tiles at tile_size."""
        (w, h), (columns, rows) = self.tile_size(), self.grid()
        return columns * w, rows * h

    def status_screen(self, tile: CameraTile | None = None, size: tuple[int, int] = (640, 240)) -> np.ndarray:
        """What a tile shows before its first frame: the connection state and what to do about it."""
        image = np.zeros((size[1], size[0], 3), np.uint8)
        self._draw_status_screen(image, tile or self.tile)
        return image

    def _draw_status_screen(self, view: np.ndarray, tile: CameraTile) -> None:
        style = Style.for_height(max(240, view.shape[0]) if view.shape[0] >= 240 else view.shape[0])
        width = max(20, (view.shape[1] - 2 * style.margin) // max(1, style.text_width("m")))
        lines = [tile_label(tile)] + connection_lines(tile.client, width=width)
        w, h = text_size(lines, style)
        box = (style.margin, style.margin, min(view.shape[1], style.margin + w), min(view.shape[0], style.margin + h))
        draw_text_lines(view, lines, box, style)

    def compose(self, size: tuple[int, int] | None = None) -> np.ndarray:
        """The whole window at `size` (default: natural_size) drawn into one reused buffer: each tile's video
        scaled into its cell with its aspect ratio kept (letterboxed), the overlays laid out over it, the
        selected tile framed when there are several, help on top. The returned array is reused by the next
        call: copy it to keep it."""
        width, height = size or self.natural_size()
        canvas = self._canvas
        if canvas is None or canvas.shape[:2] != (height, width):
            canvas = self._canvas = np.zeros((height, width, 3), np.uint8)
        columns, rows = self.grid()
        self.placed = []
        for i, tile in enumerate(self.tiles):
            cx0, cx1 = (i % columns) * width // columns, (i % columns + 1) * width // columns
            cy0, cy1 = (i // columns) * height // rows, (i // columns + 1) * height // rows
            cell = canvas[cy0:cy1, cx0:cx1]
            if tile.last_image is None:
                cell[:] = 0
                self._draw_status_screen(cell, tile)
                continue
            ih, iw = tile.last_image.shape[:2]
            x0, y0, x1, y1 = fit_rect((iw, ih), (cx1 - cx0, cy1 - cy0))
            clear_outside(cell, (x0, y0, x1, y1))
            blit(tile.last_image, cell[y0:y1, x0:x1])
            self.placed.append(draw_overlays(cell, tile, (x0, y0, x1, y1), self.overlays))
            if len(self.tiles) > 1 and i == self.selected:
                cv2.rectangle(cell, (1, 1), (cell.shape[1] - 2, cell.shape[0] - 2), (0, 220, 255), 2)
        if self.show_help:
            self.help_page, self._help_pages = draw_help(canvas, self.help_lines(), self.help_page)
        return canvas

    def render(self, frame, image, age_ms: float):
        """Overlays on one frame of the selected camera, in a new image (for callers of the one-camera API)."""
        tile = self.tile
        tile.last_frame, tile.last_image, tile.last_age_ms = frame, image, age_ms
        out = image.copy()
        draw_overlays(out, tile, (0, 0, out.shape[1], out.shape[0]), self.overlays)
        return out

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
        """Show the window until q/Esc, the window's close button (or Alt+F4), `duration` seconds, `stop`
        (anything with is_set(): the CLI's StopRequest for Ctrl-C and SIGTERM), or `frames` frames shown by
        the selected tile. Calibrations still running are cancelled on the agent, and recordings finished,
        before it returns.

        The window is resizable; it opens at the video's size and each frame is drawn at the size the window
        has now (so text stays sharp and scales with it), into the same buffer every time. Every frame
        received is decoded and shown once (poll_frames → compose → imshow; waitKey(1) only pumps events)."""
        # no Qt toolbar (keys are ours); KEEPRATIO: the window manager's resizes keep the shape we draw
        cv2.namedWindow(self.title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO | cv2.WINDOW_GUI_NORMAL)
        end = time.monotonic() + duration if duration else float("inf")
        last_draw = 0.0
        next_sample = 0.0
        sized = False
        try:
            while self.running and time.monotonic() < end and not (stop is not None and stop.is_set()):
                changed = self.poll_frames()
                now = time.monotonic()
                if now >= next_sample:
                    for tile in self.tiles:
                        tile.sample_counters(now)
                    next_sample = now + 0.25
                if changed or now - last_draw > REDRAW_INTERVAL_S:
                    if not sized and any(t.last_image is not None for t in self.tiles):
                        cv2.resizeWindow(self.title, *self.natural_size())  # the video's size at first
                        sized = True
                        size = self.natural_size()
                    else:
                        size = self.window_size() or self.natural_size()
                    cv2.imshow(self.title, self.compose(size))
                    last_draw = now
                    if frames is not None and self.session.frames >= frames:
                        break
                key = cv2.waitKey(1)
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

    def window_closed(self) -> bool:
        """True once the window was closed by its close button or the window manager (Alt+F4). Without this
        check, the next imshow makes a new window with the same name: the window "comes back"."""
        try:
            return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1
        except cv2.error:
            return True

    def window_size(self) -> tuple[int, int] | None:
        """The size of the window's picture area now (after the user resized it), or None if unknown."""
        try:
            _x, _y, w, h = cv2.getWindowImageRect(self.title)
        except cv2.error:
            return None
        return (w, h) if w >= 32 and h >= 32 else None
