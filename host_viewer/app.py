"""The windowed viewer: newest frame, overlays, and keys bound to actions (`ViewerApp.bindings`).

Keys are a table from key code to (description, action) so that the help overlay lists exactly what is
bound, and features add their keys in one place.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from .client import AgentClient, BadFrame
from .display import basic_lines, draw_text_block
from .session import ViewingSession

log = logging.getLogger(__name__)


@dataclass
class Binding:
    key: str
    description: str
    action: Callable[[], None]


class ViewerApp:
    def __init__(self, client: AgentClient, title: str | None = None):
        self.client = client
        self.session = ViewingSession(client)
        self.title = title or f"picamlink {client.address}"
        self.running = True
        self.status_message = ""
        self.bindings: dict[int, Binding] = {}
        self.bind("q", "quit", self.quit)

    def bind(self, key: str, description: str, action: Callable[[], None]) -> None:
        self.bindings[ord(key)] = Binding(key, description, action)

    def quit(self) -> None:
        self.running = False

    def handle_key(self, code: int) -> None:
        if code == 27:  # Esc
            code = ord("q")
        binding = self.bindings.get(code)
        if binding is not None:
            binding.action()

    def render(self, frame, image, age_ms: float):
        draw_text_block(image, basic_lines(frame, self.session.fps_meter.rate(), age_ms, self.client.status_text))
        return image

    def status_screen(self, frame=None) -> np.ndarray:
        """The last frame dimmed (or a blank) with the connection state and what to do about it."""
        image = None
        if frame is not None:
            try:
                image = (frame.decode() * 0.5).astype(np.uint8)
            except BadFrame:
                image = None
        if image is None:
            image = np.zeros((240, 640, 3), np.uint8)
        lines = [self.client.status_text]
        hint = self.client.state_hint
        while hint:  # wrap the hint to the window
            cut = hint.rfind(" ", 0, 90) if len(hint) > 90 else len(hint)
            cut = cut if cut > 0 else len(hint)
            lines.append(hint[:cut])
            hint = hint[cut:].lstrip()
        draw_text_block(image, lines)
        return image

    def run(self, duration: float | None = None) -> ViewingSession:
        cv2.namedWindow(self.title, cv2.WINDOW_AUTOSIZE)
        end = time.monotonic() + duration if duration else float("inf")
        last = None
        shown_status = None
        while self.running and time.monotonic() < end:
            frame = self.client.latest()
            status = self.client.status_text
            if frame is not None and frame.sequence != last:
                last = frame.sequence
                try:
                    image = frame.decode()
                except BadFrame as exc:  # a corrupt frame is skipped; the next one will do
                    log.warning("%s", exc)
                    continue
                age = self.session.record(frame, image)
                cv2.imshow(self.title, self.render(frame, image, age))
                shown_status = status
            elif status != shown_status:
                # No new frame, but the connection changed (reconnecting, refused): say so on screen.
                cv2.imshow(self.title, self.status_screen(frame))
                shown_status = status
            key = cv2.waitKey(5)
            if key != -1:
                self.handle_key(key & 0xFF)
        cv2.destroyWindow(self.title)
        return self.session
