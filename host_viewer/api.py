"""Typed commands for scripts: the methods of AgentClient beside `command()`.

    with AgentClient("pi.local:5555") as client:
        client.wait_connected()
        client.set_controls(ExposureTime=10_000, AnalogueGain=2.0)
        for frame in itertools.islice(client.frames(), 10):
            print(frame.sequence, frame.metadata["ExposureTime"])
        client.snapshot().save("shots")
        result = client.calibrate("all", on_progress=lambda p: print(p.step, p.fraction))

Each method sends one command (docs/protocol.md, "Commands") and waits for its final reply. Failures raise
a subclass of errors.CommandFailed, one per error code (Busy, OutOfRange, BadArgument, Cancelled, Failed,
Timeout, NotConnected, ...). The methods only build arguments and wrap results: everything on the wire
goes through `command()`, so command expiry and reconnection behave as for any other command.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from protocol import Progress

from .results import CalibrationResult, Controls, Snapshot, Status

CALIBRATION_TIMEOUT = 180.0  # seconds a whole "all" may take on a slow Pi (long exposures, 12 MP raw)
SNAPSHOT_TIMEOUT = 30.0  # a full-resolution still: two mode switches on a Pi and up to 25 MB of raw
CANCEL_WAIT_S = 10.0  # how long to wait for the agent to confirm a cancel (it restores the camera first)


class TypedCommands:
    """Mixed into AgentClient, which provides `command()`, `send_command()`, and the newest frame (`_latest`,
    guarded by `_frame_cond`)."""

    def cancel_pending(self, pending, wait: float = CANCEL_WAIT_S) -> bool:
        """Cancel the running command `pending` (a PendingCommand) on the agent and wait up to `wait` s for
        its final reply; True once it has one (normally Cancelled: the agent put back what it had)."""
        self.send_command("cancel", {"id": pending.id}, ttl=wait)
        try:
            pending.future.exception(timeout=wait)
        except TimeoutError:
            return False
        return True

    def set_controls(self, **controls: Any) -> dict[str, Any]:
        """Request camera controls, libcamera's names and units, shared by every viewer of the agent:
        ExposureTime (int µs), AnalogueGain (float ≥ 1), ColourGains ((red, blue) floats), AeEnable, AwbEnable
        (bool). A manual exposure or gain turns AeEnable off, manual ColourGains turn AwbEnable off (as in
        picamera2). They take effect after the sensor's delay (about 2 frames): watch `frame.metadata`, where
        ExposureTime is the request rounded down to whole sensor lines (less than 34 µs below it).

        Returns all requested controls after the change. Raises BadArgument (unknown or read-only name,
        wrong type), OutOfRange (outside `get_controls().ranges`), Busy (a calibration holds the camera),
        Timeout / NotConnected / Expired, and across a link outage ReplyLost / AgentRestarted (never sent
        twice: check `get_controls()`)."""
        wire = {name: list(value) if isinstance(value, tuple) else value for name, value in controls.items()}
        return self.command("set_controls", {"controls": wire})["controls"]

    def get_controls(self) -> Controls:
        """The requested controls, those in force in the newest frame, and each control's (min, max,
        default) range. Raises Timeout / NotConnected / Expired (asked again by itself after a reconnection
        or an agent restart)."""
        return Controls.from_value(self.command("get_controls"))

    def status(self) -> Status:
        """The agent's state: `busy` (job name or None), `fps` (frames/s captured), `viewers`, `uptime_s`,
        the newest frame's metadata and statistics, and the calibration in force. Raises Timeout /
        NotConnected / Expired (asked again by itself after a reconnection or an agent restart)."""
        return Status.from_value(self.command("status"))

    def calibrate(self, what: str = "all", *, on_progress: Callable[[Progress], None] | None = None,
                  target: float | None = None, tolerance: float | None = None, percentile: float | None = None,
                  timeout: float = CALIBRATION_TIMEOUT) -> CalibrationResult:
        """Calibrate on the agent, from raw frames: `what` is "exposure", "white_balance", "lens_shading" or
        "all". `target` is the raw white level to reach (raw units with the pedestal; default the sensor's),
        `tolerance` a fraction (0–0.5, default 0.05), `percentile` 50–100 (default 99.9). The result is saved
        on the agent and stays in force after a restart.

        `on_progress(p)` is called (on the client's I/O thread: keep it short) with each progress message:
        `p.step` (the part running), `p.fraction` (0–1 over the whole run, never falling), `p.detail`.

        Raises BadArgument / OutOfRange (arguments), Busy (a calibration already runs), Cancelled (someone
        cancelled it: the previous calibration is back in force), Failed (the target was not reached;
        `exc.detail` holds the partial result), CameraFailed, Timeout after `timeout` seconds: the
        calibration is then cancelled on the agent, which keeps the calibration it had (the message says
        if the agent did not confirm the cancel within CANCEL_WAIT_S)."""
        from .calibration import calibrate_args  # (calibration.py imports the client module)
        from .errors import command_error

        args = calibrate_args(what, target=target, tolerance=tolerance, percentile=percentile)
        self._not_on_io_thread("calibrate")
        pending = self.send_command("calibrate", args, ttl=timeout, on_progress=on_progress)
        try:
            try:
                return CalibrationResult.from_value(pending.future.result(timeout=timeout + 1.0))
            except TimeoutError:
                confirmed = self.cancel_pending(pending)
        finally:
            self._forget(pending)
        raise command_error("timeout", f"no result from calibrate within {timeout:g} s: " + (
            "cancelled on the agent, which keeps the calibration it had" if confirmed else
            f"asked the agent to cancel it, with no confirmation within {CANCEL_WAIT_S:g} s: it may still "
            f"finish there and be saved"))

    def snapshot(self, full_resolution: bool = True, *, raw: bool = True, quality: int = 95,
                 timeout: float = SNAPSHOT_TIMEOUT) -> Snapshot:
        """One picture with its raw Bayer mosaic and metadata. With `full_resolution` a still in the sensor's
        full-resolution mode (IMX219 3280×2464, IMX477 4056×3040), else the next frame of the stream (main
        at the stream size, raw of the stream's sensor mode). `quality` is the JPEG quality 1–100; `raw`
        False leaves the mosaic out (`Snapshot.raw` is then None).

        Returns a Snapshot: `jpeg` bytes, `raw` uint16 ndarray (raw height, raw width), `metadata`, and
        `save(directory)`. Raises BadArgument, Busy (another still is being taken), Failed (no frame or the
        still failed), TooLarge (ask raw=False), CameraFailed, Timeout."""
        args = {"full_resolution": full_resolution, "raw": raw, "quality": quality}
        value = self.command("snapshot", args, timeout=timeout)
        welcome = self.welcome
        return Snapshot.from_value(value, agent=welcome.agent if welcome else None,
                                   model=welcome.sensor.get("model") if welcome else None)

    def frames(self, timeout: float = 5.0) -> Iterator:
        """Newest frames, as they come: each iteration waits for a frame newer than the last one yielded and
        gives the newest then (frames in between are skipped: a slow loop never sees old frames). Each is a
        ReceivedFrame: `jpeg`, `decode()` → BGR uint8 (height, width, 3), `metadata`, `stats`, `sequence`,
        `age_ms()`. Endless: stop with `break` or itertools.islice. Raises TimeoutError when no new frame
        comes within `timeout` seconds."""
        last = None  # compared by identity, not frame number: a restarted agent counts from 0 again
        while True:
            with self._frame_cond:
                if not self._frame_cond.wait_for(lambda: self._latest is not None and self._latest is not last,
                                                 timeout):
                    raise TimeoutError(f"no new frame from {self.address} within {timeout} s (state: {self.state})")
                last = self._latest
            yield last
