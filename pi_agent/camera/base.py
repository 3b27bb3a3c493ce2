"""The camera backend interface: what the server, statistics and calibration may ask of a camera.

A backend knows nothing of sockets. Calibration drives a camera only through this interface, so the same
calibration code runs on the simulator, on the fake Picamera2 and on a real Pi.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .requested import restore_command
from .sensors import SensorInfo

# A capture waits this long at least, plus CAPTURE_TIMEOUT_FRAMES frame periods of the longest frame that can be
# coming: a stalled camera is declared after a few frames' time, and a long exposure is not mistaken for one.
# Why several frames: after start() or a mode switch libcamera drops its startup frames (status not Success,
# never delivered by picamera2), and a request already in flight may carry the previous, longer exposure.
MIN_CAPTURE_TIMEOUT_S = 2.0
CAPTURE_TIMEOUT_FRAMES = 4
# Frames libcamera may hide after a cold start() before the first one is delivered: 1 mistrusted frame plus
# AGC's 6 convergence frames (src/ipa/rpi/cam_helper/cam_helper.cpp mistrustFramesStartup; rpi.agc
# "convergence_frames" default), none when exposure and gain are manual. At 0.4 fps that is 17.5 s.
STARTUP_FRAMES = 7


def capture_timeout(configuration: dict[str, Any], requested: dict[str, Any], metadata: dict[str, Any],
                    startup: bool = False) -> float:
    """Seconds a capture may take before the camera counts as stalled, from the frame duration and exposure
    in force and on their way: the last frame's FrameDuration and ExposureTime (µs, metadata), the requested
    ExposureTime, and the shortest frame the configured FrameDurationLimits (µs) allow (the longest limit is
    not used: free-running it is the sensor's maximum exposure, tens of seconds, not a frame that is coming).

    MIN_CAPTURE_TIMEOUT_S + CAPTURE_TIMEOUT_FRAMES × the longest of them: a 30 fps stream gets ≈ 2.1 s,
    a 2.5 s frame period (0.4 fps) 12 s; `startup` (the first frame after start()) adds STARTUP_FRAMES."""
    candidates = [0.0]
    for source, key in ((metadata, "FrameDuration"), (metadata, "ExposureTime"), (requested, "ExposureTime")):
        value = source.get(key) if isinstance(source, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            candidates.append(float(value))
    limits = configuration.get("FrameDurationLimits") if isinstance(configuration, dict) else None
    if limits:
        candidates.append(float(limits[0]))
    frames = CAPTURE_TIMEOUT_FRAMES + (STARTUP_FRAMES if startup else 0)
    return MIN_CAPTURE_TIMEOUT_S + frames * max(candidates) * 1e-6


class CameraError(RuntimeError):
    """The camera failed (no camera, busy, broken tuning, capture error); the message says which."""


@dataclass
class CapturedFrame:
    """Pixels and metadata of ONE request: never mix a frame's pixels with another frame's metadata.

    main: HxWx3 uint8 BGR (the ISP output, what gets JPEG-encoded).
    raw: (h, w) uint16 Bayer mosaic, unpacked to the sensor's bit depth (LSB-aligned, padding removed).
    metadata: libcamera names and units (ExposureTime µs, AnalogueGain, ColourGains (r, b),
      SensorBlackLevels (R, Gr, Gb, B) on the 16-bit scale, SensorTimestamp ns on the monotonic clock,
      FrameDuration µs, Lux, ColourTemperature, DigitalGain).
    """

    main: np.ndarray
    raw: np.ndarray
    metadata: dict[str, Any]
    sequence: int
    bayer_order: str  # "BGGR", "RGGB", "GRBG" or "GBRG": the colour of the 2x2 cell, row-major
    bit_depth: int
    black_level: int  # raw units at bit_depth (SensorBlackLevels >> (16 - bit_depth))
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LensShadingTable:
    """A lens shading table the way libcamera's rpi.alsc takes it (row-major, `grid` = (columns, rows)).

    luminance: gains ≥ 1 applied to all channels; cr, cb: red and blue gains relative to green, whose
    absolute level libcamera moves into ColourGains (only their shape matters to the ISP).
    """

    grid: tuple[int, int]
    luminance: np.ndarray  # shape (rows, columns)
    cr: np.ndarray
    cb: np.ndarray
    colour_temperature: int = 5000

    def channel_gains(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-cell gains for (R, G, B) as the ISP applies them: G = lum, R = lum·Cr, B = lum·Cb,
        with Cr and Cb divided by their minimum as libcamera does."""
        cr = self.cr / float(np.min(self.cr))
        cb = self.cb / float(np.min(self.cb))
        return self.luminance * cr, self.luminance, self.luminance * cb

    @staticmethod
    def flat(grid: tuple[int, int]) -> "LensShadingTable":
        ones = np.ones((grid[1], grid[0]), dtype=np.float64)
        return LensShadingTable(grid=grid, luminance=ones, cr=ones.copy(), cb=ones.copy(), colour_temperature=1234)


class CameraBackend(abc.ABC):
    """open → configure → start → capture … → stop → close. Thread-safe: `capture` runs on the capture
    thread while `set_controls` may be called from another."""

    name: str = "camera"
    # Why calibrating this camera cannot work (None: it can); the agent refuses `calibrate` with it up front.
    calibration_refusal: str | None = None

    @property
    @abc.abstractmethod
    def sensor(self) -> SensorInfo:
        """The sensor's facts (model, Bayer order, bit depth, black level, modes, delays, limits)."""

    @abc.abstractmethod
    def configure(self, size: tuple[int, int], fps: float, raw_size: tuple[int, int] | None = None) -> dict[str, Any]:
        """Choose a sensor mode for a main stream of `size` (w, h) at `fps` (0: free-running, as fast as
        possible); returns the configuration in force (main and raw sizes, mode, frame duration)."""

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def capture(self, timeout: float = 2.0) -> CapturedFrame:
        """Block until the next frame; raise CameraError on failure or after `timeout` seconds."""

    def capture_still(self, timeout: float = 5.0) -> CapturedFrame:
        """ONE frame in the sensor's full-resolution mode (its largest: IMX219 3280x2464, IMX477 4056x3040),
        main at that size, with the controls in force (ExposureTime, AnalogueGain, ColourGains, the lens
        shading table), leaving the streaming configuration as it was: `capture` goes on in its own mode
        afterwards (a real camera pauses the stream for the mode switch). Raise CameraError on failure;
        NotImplementedError where the backend cannot (callers fall back to a frame of the stream)."""
        raise NotImplementedError(f"the {self.name} camera cannot take a full-resolution still")

    @abc.abstractmethod
    def set_controls(self, controls: dict[str, Any]) -> None:
        """Queue controls (libcamera names); they take effect after the sensor's delays, as on real hardware:
        watch the metadata to know when."""

    @abc.abstractmethod
    def control_ranges(self) -> dict[str, tuple[Any, Any, Any]]:
        """{name: (min, max, default)} for the configured mode, like picamera2's camera_controls."""

    @abc.abstractmethod
    def controls(self) -> dict[str, Any]:
        """The requested set: the controls the camera is asked to keep (not necessarily in force yet), kept
        by `controls.merge_requested` so that sending it again changes nothing (turning AeEnable/AwbEnable on
        forgets the manual values they override)."""

    def restore_controls(self, target: dict[str, Any]) -> None:
        """Make the requested set exactly `target` (an earlier `controls()`), e.g. after a cancelled
        calibration: sends `controls.restore_command` (AeEnable/AwbEnable back on where `target` has no manual
        values), then forgets anything `target` does not hold. ValueError/CameraError as `set_controls`."""
        send = restore_command(self.controls(), target)
        if send:
            self.set_controls(send)
        self._replace_requested(dict(target))

    def _replace_requested(self, target: dict[str, Any]) -> None:
        """Backends keep the requested set; this replaces it (the camera already does what it says)."""
        raise NotImplementedError(f"the {self.name} camera cannot restore its controls")

    @abc.abstractmethod
    def apply_lens_shading(self, table: LensShadingTable) -> None:
        """Put a lens shading table in force (on a Pi: rewrite rpi.alsc and reopen the camera)."""

    def clear_lens_shading(self) -> None:
        """Put back the lens shading the camera had before any table was applied: the stock tuning's own
        (adaptive) table on a Pi, none on the simulator. Not a flat table: that would switch off the
        correction the stock tuning does."""
        self.apply_lens_shading(None)

    @property
    def configuration(self) -> dict[str, Any]:
        return {}

    @property
    def lens_shading(self) -> LensShadingTable | None:
        """The lens shading table this backend put in force (None: the tuning's own table, or none)."""
        return None

    @property
    def tuning_target(self) -> str:
        """The ISP the tables are for: "bcm2835" (VC4, Pi 0-4: 16x12 grid) or "pisp" (Pi 5: 32x32 grid).
        The simulator models a VC4 ISP."""
        return "bcm2835"

    def tuning(self) -> dict | None:
        """The stock libcamera tuning dict in use, if the backend has one (None: no tuning file at hand)."""
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
