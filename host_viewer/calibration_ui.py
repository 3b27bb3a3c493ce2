"""Calibration from the window: keys e/w/l/a start it on the selected camera, c cancels, p saves the report
picture. The stream keeps going; the app's progress overlay shows the current step and a bar, and the
outcome goes on the status line (ViewerApp.send_command)."""

from __future__ import annotations

import logging
from typing import Any

from .calibration import TIMEOUT, calibrate_args, calibration_summary
from .report import save_report

log = logging.getLogger(__name__)


class CalibrationKeys:
    def __init__(self, report_dir: str | None = None):
        self.report_dir = report_dir or "."
        self.app = None
        self.running: str | None = None
        self.last_result: dict[str, Any] | None = None
        self._tile = None  # the tile (camera) the running calibration was started on

    def install(self, app) -> None:
        self.app = app
        app.bind("e", "calibrate exposure", lambda: self.start("exposure"))
        app.bind("w", "calibrate white balance", lambda: self.start("white_balance"))
        app.bind("l", "calibrate lens shading", lambda: self.start("lens_shading"))
        app.bind("a", "calibrate all (exposure, lens shading, white balance, exposure)", lambda: self.start("all"))
        app.bind("c", "cancel calibration", self.cancel)
        app.bind("p", "save the calibration report picture", self.save_report)

    def start(self, what: str) -> None:
        if self.running:
            self.app.status_message = f"calibrating {self.running}; press c to cancel"
            return
        self.running = what
        self._tile = self.app.tile
        future = self.app.send_command("calibrate", calibrate_args(what), ttl=TIMEOUT, on_result=self._result)
        future.add_done_callback(lambda _f: setattr(self, "running", None))

    def _result(self, result: dict[str, Any]) -> None:
        self.last_result = {**(self.last_result or {}), **result}
        self.app.status_message = "calibrated: " + ", ".join(calibration_summary(result))

    def cancel(self) -> None:
        """c: cancel the calibration this viewer started (by its id: another viewer's keeps running)."""
        if self.running and self._tile is not None:
            self._tile.request_cancel(("calibrate",))

    def save_report(self) -> None:
        part = (self.last_result or {}).get("lens_shading")
        if not part or "luminance" not in part:
            self.app.status_message = "no lens shading result yet: press l (or a) first"
            return
        self.app.status_message = f"report saved: {save_report(part, self.report_dir)}"
