"""Frames for calibration: where they come from, and waiting until the controls asked for are in force.

Why: a control reaches the sensor frames after it is requested (exposure and gain delays plus queued
requests), and the per-frame metadata reports what was really in force. Measuring the first frame that
shows the requested values — pixels and metadata of that one request — replaces the published methods'
fixed sleeps, and a bound on frames turns a control that never arrives into a clear error.
"""

from __future__ import annotations

import abc
import logging
import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from ..camera.base import CameraBackend, CameraError, CapturedFrame, capture_timeout
from ..camera.sensors import SensorMode
from ..stats import RawStats, compute_stats

log = logging.getLogger(__name__)

SETTLE_FRAMES = 8  # frames to wait for a control at most (largest delay 3 + queued requests + slack)
MIN_FRAME_TIMEOUT_S = 5.0  # the least a calibration waits for one frame


class CalibrationError(RuntimeError):
    """Calibration could not run or finish (too dark, clipped, a control never arrived); the message says why."""


class FrameSource(abc.ABC):
    """Frames (pixels, metadata and raw statistics of one request) in capture order, counting them."""

    def __init__(self, camera: CameraBackend, min_frame_timeout: float = MIN_FRAME_TIMEOUT_S):
        """`min_frame_timeout`: the least time (s) to wait for one frame. A camera whose frames are rendered
        on the host's CPU (the simulators) may be given more on a loaded machine."""
        self.camera = camera
        self.min_frame_timeout = min_frame_timeout
        self._first: int | None = None
        self._last: int | None = None
        self._last_metadata: dict = {}

    @abc.abstractmethod
    def _next(self, timeout: float) -> tuple[CapturedFrame, RawStats]: ...

    def frame_timeout(self) -> float:
        """Seconds to wait for one frame when the caller gives none: `min_frame_timeout`, or what the camera's
        frame duration and exposure need (camera.base.capture_timeout, counting startup frames: a capture
        here may follow a reopen; long exposures: a 2.5 s frame period is legal), whichever is longer."""
        camera = self.camera
        return max(self.min_frame_timeout,
                   capture_timeout(camera.configuration, camera.controls(), self._last_metadata, startup=True))

    def next(self, timeout: float | None = None) -> tuple[CapturedFrame, RawStats]:
        """The next frame and its full raw statistics; CameraError when none comes within `timeout` seconds
        (default `frame_timeout()`)."""
        frame, stats = self._next(self.frame_timeout() if timeout is None else timeout)
        if self._first is None:
            self._first = frame.sequence
        self._last = frame.sequence
        self._last_metadata = frame.metadata
        return frame, stats

    @property
    def frames(self) -> int:
        """Frames the camera delivered from the first frame taken since reset_count() to the last one,
        including frames that went by while calibration was computing: the honest cost in frame times."""
        return 0 if self._first is None else self._last - self._first + 1

    def reset_count(self) -> None:
        self._first = self._last = None

    def discard_queued(self) -> None:
        """Forget frames captured before now (after set_controls they cannot show the new values)."""

    def fresh(self, timeout: float | None = None) -> tuple[CapturedFrame, RawStats]:
        """A frame whose capture certainly started after this call (e.g. after a lens shading table was
        applied): queued frames are dropped and the one that may have been in flight is skipped."""
        self.discard_queued()
        self.next(timeout)
        return self.next(timeout)

    def close(self) -> None:
        pass


class CameraFrameSource(FrameSource):
    """Captures directly from a started camera (scripts, benchmarks, tests without the streaming pipeline)."""

    def _next(self, timeout: float) -> tuple[CapturedFrame, RawStats]:
        frame = self.camera.capture(timeout=timeout)
        return frame, compute_stats(frame.raw, frame.bayer_order, frame.bit_depth, frame.black_level)

    def fresh(self, timeout: float | None = None) -> tuple[CapturedFrame, RawStats]:
        return self.next(timeout)  # nothing is in flight between our own captures


class StillFrameSource(FrameSource):
    """Full-resolution stills (`CameraBackend.capture_still`): the whole pixel array, whatever mode the stream
    runs in. Each still is a fresh request with the controls and lens shading table in force; the stream
    goes on in its own mode between them (on a Pi it pauses for the two mode switches)."""

    def _next(self, timeout: float) -> tuple[CapturedFrame, RawStats]:
        frame = self.camera.capture_still(timeout=max(timeout, 30.0))  # a 12 MP still: two mode switches and a frame
        return frame, compute_stats(frame.raw, frame.bayer_order, frame.bit_depth, frame.black_level)

    def fresh(self, timeout: float | None = None) -> tuple[CapturedFrame, RawStats]:
        return self.next(timeout)  # every still is a new request made after this call


class PipelineFrameSource(FrameSource):
    """Every frame the streaming pipeline captures, taken from its listener (streaming goes on meanwhile)."""

    def __init__(self, camera: CameraBackend, pipeline, keep: int = 16):
        super().__init__(camera)
        self._pipeline = pipeline
        self._frames: deque[tuple[CapturedFrame, RawStats]] = deque(maxlen=keep)
        self._cond = threading.Condition()
        pipeline.add_listener(self._on_frame)

    def frame_timeout(self) -> float:
        return max(self.min_frame_timeout, self._pipeline.capture_timeout())

    def _on_frame(self, frame: CapturedFrame, stats: RawStats) -> None:
        with self._cond:
            self._frames.append((frame, stats))
            self._cond.notify_all()

    def _next(self, timeout: float) -> tuple[CapturedFrame, RawStats]:
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._frames), timeout):
                raise CameraError(f"no frame from the camera within {timeout:g} s")
            return self._frames.popleft()

    def discard_queued(self) -> None:
        with self._cond:
            self._frames.clear()

    def close(self) -> None:
        self._pipeline.remove_listener(self._on_frame)


@dataclass
class SensorControls:
    """Quantisation of ExposureTime and AnalogueGain in the configured mode (line time, gain codes)."""

    camera: CameraBackend
    mode: SensorMode = field(init=False)

    def __post_init__(self):
        config = self.camera.configuration
        sensor = self.camera.sensor
        size = (config.get("raw") or config.get("mode") or {}).get("size")
        self.mode = sensor.mode_of_size(tuple(size)) if size else sensor.modes[0]

    @property
    def line_time_us(self) -> float:
        return self.mode.line_time_us

    def exposure_range(self, metadata: dict[str, Any] | None = None) -> tuple[float, float]:
        """(min, max) ExposureTime the STREAM can reproduce: control_ranges' maximum, and never longer than the
        stream's frame duration limit (a still-mode exposure would be clamped when streaming resumes)."""
        low, high, _ = self.camera.control_ranges()["ExposureTime"]
        limits = (metadata or {}).get("FrameDurationLimits")
        if limits:
            high = min(high, limits[1])
        return float(low), float(high)

    def gain_range(self) -> tuple[float, float]:
        low, high, _ = self.camera.control_ranges()["AnalogueGain"]
        return float(low), float(high)

    def lines(self, exposure_us: float) -> int:
        return self.camera.sensor.exposure_lines(exposure_us, self.mode)

    def exposure_of_lines(self, lines: int) -> int:
        """The ExposureTime request (integer µs) that gives exactly `lines` lines."""
        return int(math.ceil(lines * self.line_time_us - 1e-6))

    def nearest_gain(self, gain: float) -> float:
        """The achievable analogue gain nearest to `gain` (gain codes truncate, so also try the next code)."""
        sensor = self.camera.sensor
        low = sensor.quantise_gain(gain)
        step = self.gain_step(gain)
        high = sensor.quantise_gain(low + step * 1.0001) if low + step <= sensor.gain_max + 1e-9 else low
        return high if abs(high - gain) < abs(low - gain) else low

    def gain_step(self, gain: float) -> float:
        """The difference between neighbouring gain codes at `gain`."""
        kind, k, _ = self.camera.sensor.gain_code
        if kind == "inverse":
            code = k - k / max(gain, 1e-9)
            return k / (k - code - 1) - k / (k - code) if code + 1 < k else gain
        return 1.0 / k


def in_force(metadata: dict[str, Any], wanted: dict[str, Any], controls: SensorControls) -> bool:
    """Whether a frame's metadata shows the `wanted` controls: ExposureTime within one line, AnalogueGain
    within one gain code, ColourGains within 0.1 %."""
    if "ExposureTime" in wanted:
        if abs(float(metadata.get("ExposureTime", -1e9)) - float(wanted["ExposureTime"])) > controls.line_time_us + 1.0:
            return False
    if "AnalogueGain" in wanted:
        gain = float(wanted["AnalogueGain"])
        if abs(float(metadata.get("AnalogueGain", -1e9)) - gain) > controls.gain_step(gain) * 1.01 + 1e-6:
            return False
    if "ColourGains" in wanted:
        got = metadata.get("ColourGains") or (-1.0, -1.0)
        if any(abs(float(g) - float(w)) > 1e-3 * max(float(w), 1e-3) for g, w in zip(got, wanted["ColourGains"])):
            return False
    return True


def settle(source: FrameSource, wanted: dict[str, Any], controls: SensorControls,
           check_cancelled: Callable[[], None] = lambda: None,
           max_frames: int = SETTLE_FRAMES) -> tuple[CapturedFrame, RawStats]:
    """The first frame whose metadata shows `wanted` (values already requested with set_controls);
    CalibrationError after `max_frames` frames without it."""
    source.discard_queued()
    for _ in range(max_frames):
        check_cancelled()
        frame, stats = source.next()
        if in_force(frame.metadata, wanted, controls):
            return frame, stats
    shown = {k: frame.metadata.get(k) for k in wanted}
    raise CalibrationError(f"the camera did not show the requested controls {wanted} within {max_frames} frames "
                           f"(metadata shows {shown})")
