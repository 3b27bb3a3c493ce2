"""Calibration from the window: keys e/w/l/a start it, c cancels, p saves the report picture; a progress
bar and the current step are drawn over the video while it runs (the stream keeps going)."""

from __future__ import annotations

import logging
import threading
from typing import Any

import cv2
import numpy as np

from protocol import Progress

from .calibration import calibration_summary, start_calibration
from .client import AgentClient, CommandFailed
from .display import FONT
from .report import save_report

log = logging.getLogger(__name__)


class CalibrationKeys:
    def __init__(self, client: AgentClient, report_dir: str | None = None):
        self.client = client
        self.report_dir = report_dir or "."
        self._lock = threading.Lock()
        self.running: str | None = None
        self.step = ""
        self.fraction = 0.0
        self.message = ""
        self.last_result: dict[str, Any] | None = None

    def install(self, app) -> None:
        app.bind("e", "calibrate exposure", lambda: self.start("exposure"))
        app.bind("w", "calibrate white balance", lambda: self.start("white_balance"))
        app.bind("l", "calibrate lens shading", lambda: self.start("lens_shading"))
        app.bind("a", "calibrate all", lambda: self.start("all"))
        app.bind("c", "cancel calibration", self.cancel)
        app.bind("p", "save calibration report picture", self.save_report)
        app.overlays.append(self.draw)

    def start(self, what: str) -> None:
        with self._lock:
            if self.running:
                self.message = f"{self.running} is running; press c to cancel"
                return
            self.running, self.step, self.fraction, self.message = what, "starting", 0.0, ""
        pending = start_calibration(self.client, what, on_progress=self._progress)
        pending.future.add_done_callback(self._done)

    def _progress(self, progress: Progress) -> None:
        with self._lock:
            self.step, self.fraction = progress.step, progress.fraction

    def _done(self, future) -> None:
        try:
            result = future.result()
        except CommandFailed as exc:
            message = f"calibration {exc.code}: {exc.message}"
            result = exc.detail or None
        else:
            summary = calibration_summary(result)
            message = "calibrated: " + ", ".join(summary)
        with self._lock:
            if result:
                self.last_result = {**(self.last_result or {}), **result}
            self.running, self.message = None, message

    def cancel(self) -> None:
        if self.running:
            self.client.send_command("cancel", {})

    def save_report(self) -> None:
        part = (self.last_result or {}).get("lens_shading")
        if not part or "luminance" not in part:
            self.message = "no lens shading result yet: press l (or a) first"
            return
        self.message = f"report saved: {save_report(part, self.report_dir)}"

    def draw(self, image: np.ndarray) -> None:
        """Progress bar along the bottom and the step (or the last message) above it."""
        with self._lock:
            running, step, fraction, message = self.running, self.step, self.fraction, self.message
        h, w = image.shape[:2]
        if running:
            x0, x1, y0, y1 = 10, w - 10, h - 22, h - 10
            cv2.rectangle(image, (x0, y0), (x1, y1), (255, 255, 255), 1)
            cv2.rectangle(image, (x0 + 2, y0 + 2), (x0 + 2 + int((x1 - x0 - 4) * fraction), y1 - 2), (0, 200, 0), -1)
            text = f"calibrating {running}: {step} {fraction * 100:.0f}%   (c: cancel)"
        else:
            text = message
        if text:
            cv2.putText(image, text, (10, h - 30), FONT, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(image, text, (10, h - 30), FONT, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
