"""What the typed client methods return: small frozen dataclasses over a command's result map.

Each keeps the agent's whole result map in `value` (fields the agent adds later are never lost) and gives
the fields a script needs typed, with units (libcamera's: ExposureTime µs, gains as multipliers). Frozen:
safe to hand between threads. Field meanings are specified in docs/protocol.md ("Commands").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import simplejpeg

from protocol import unpack_array


@dataclass(frozen=True)
class ControlRange:
    """One camera control's range: `min`, `max` and `default` (None when the camera has none)."""

    min: Any
    max: Any
    default: Any = None


@dataclass(frozen=True)
class Controls:
    """`get_controls()`: the controls requested (shared by every viewer of the agent), those in force in
    the newest frame's metadata (ExposureTime µs, AnalogueGain, ColourGains (r, b), DigitalGain), and the
    ranges. Only ExposureTime, AnalogueGain, ColourGains, AeEnable and AwbEnable are settable; other ranges
    (FrameRate, FrameDurationLimits) describe the stream."""

    requested: dict[str, Any]
    in_force: dict[str, Any]
    ranges: dict[str, ControlRange]

    @classmethod
    def from_value(cls, value: dict) -> "Controls":
        ranges = {name: ControlRange(*(list(r) + [None] * 3)[:3]) for name, r in value.get("ranges", {}).items()
                  if isinstance(r, (list, tuple))}
        return cls(requested=dict(value.get("controls", {})), in_force=dict(value.get("in_force", {})),
                   ranges=ranges)


@dataclass(frozen=True)
class Status:
    """`status()`: `busy` is the name of the job holding the camera ("calibrate") or None; `fps` the capture
    rate (frames/s); `uptime_s` seconds since the agent started; `metadata`/`stats` of the newest frame."""

    busy: str | None
    fps: float
    viewers: int
    uptime_s: float
    frames_captured: int
    frames_encoded: int
    controls: dict[str, Any]
    metadata: dict[str, Any]
    stats: dict[str, Any]
    calibration: dict[str, Any]
    agent: dict[str, Any]
    value: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_value(cls, value: dict) -> "Status":
        return cls(busy=value.get("busy"), fps=float(value.get("fps", 0.0)), viewers=int(value.get("viewers", 0)),
                   uptime_s=float(value.get("uptime_s", 0.0)), frames_captured=int(value.get("frames_captured", 0)),
                   frames_encoded=int(value.get("frames_encoded", 0)), controls=dict(value.get("controls", {})),
                   metadata=dict(value.get("metadata", {})), stats=dict(value.get("stats", {})),
                   calibration=dict(value.get("calibration", {})), agent=dict(value.get("agent", {})), value=value)


@dataclass(frozen=True)
class CalibrationResult:
    """`calibrate()`: one map per part run (None for parts not run), and where the agent saved it.

    exposure: `level`/`target` (black-subtracted raw units), `ExposureTime` µs, `AnalogueGain`, `converged`,
    `measurements`, `history`, ...; white_balance: `colour_gains` (r, b), `neutral_error_pct` (%);
    lens_shading: `grid` [columns, rows], `residual_pct`, `worst_cell_pct` (%), tables (see `tables()`).
    """

    exposure: dict[str, Any] | None
    white_balance: dict[str, Any] | None
    lens_shading: dict[str, Any] | None
    state_file: str | None
    value: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_value(cls, value: dict) -> "CalibrationResult":
        return cls(exposure=value.get("exposure"), white_balance=value.get("white_balance"),
                   lens_shading=value.get("lens_shading"), state_file=value.get("state_file"), value=value)

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(p for p in ("exposure", "white_balance", "lens_shading") if getattr(self, p) is not None)

    @property
    def exposure_time_us(self) -> int | None:
        return None if self.exposure is None else int(self.exposure["ExposureTime"])

    @property
    def colour_gains(self) -> tuple[float, float] | None:
        """(red, blue) gains relative to green, or None when white balance did not run."""
        return None if self.white_balance is None else tuple(self.white_balance["colour_gains"])

    def tables(self) -> dict[str, np.ndarray]:
        """The lens shading tables `luminance`, `cr`, `cb` as float32 arrays of shape (rows, columns); {} when
        lens shading did not run. Raises protocol.ProtocolError if the agent sent a malformed array."""
        if self.lens_shading is None:
            return {}
        return {name: unpack_array(self.lens_shading[name], name) for name in ("luminance", "cr", "cb")
                if name in self.lens_shading}


@dataclass(frozen=True)
class Snapshot:
    """`snapshot()`: the JPEG (bytes, width × height), the raw Bayer mosaic and the metadata of one request.

    `raw` is a uint16 ndarray of shape (raw height, raw width), the sensor's values LSB-aligned at
    `bit_depth` bits with the pedestal `black_level` (raw units) in; its colour order is `bayer_order`
    (e.g. "BGGR"); None when asked with raw=False. `metadata` uses libcamera's names and units
    (ExposureTime µs, AnalogueGain, ColourGains, SensorTimestamp ns, ScalerCrop). `full_resolution` says
    whether it is a still in the sensor's full-resolution mode; when one was asked for and not possible,
    `reason` says why.
    """

    jpeg: bytes
    raw: np.ndarray | None
    metadata: dict[str, Any]
    width: int
    height: int
    bayer_order: str
    bit_depth: int
    black_level: int
    full_resolution: bool
    frame: int
    stats: dict[str, Any]
    reason: str | None = None
    value: dict[str, Any] = field(repr=False, default_factory=dict)
    agent: dict[str, Any] = field(repr=False, default_factory=dict)  # the welcome's agent: names the files
    model: str = "camera"  # the sensor model, for the DNG

    @classmethod
    def from_value(cls, value: dict, agent: dict | None = None, model: str | None = None) -> "Snapshot":
        """Raises protocol.ProtocolError when the raw array map is malformed."""
        raw = unpack_array(value["raw"], "raw") if value.get("raw") is not None else None
        return cls(jpeg=value["jpeg"], raw=raw, metadata=dict(value.get("metadata", {})), width=int(value["width"]),
                   height=int(value["height"]), bayer_order=str(value.get("bayer_order", "")),
                   bit_depth=int(value.get("bit_depth", 0)), black_level=int(value.get("black_level", 0)),
                   full_resolution=bool(value.get("full_resolution", False)), frame=int(value.get("frame", 0)),
                   stats=dict(value.get("stats", {})), reason=value.get("reason"), value=value,
                   agent=dict(agent or {}), model=model or "camera")

    def image(self) -> np.ndarray:
        """The JPEG decoded: BGR uint8 array of shape (height, width, 3)."""
        return simplejpeg.decode_jpeg(self.jpeg, colorspace="BGR")

    def save(self, directory: str | Path, stem: str | None = None):
        """Write `stem`.jpg, the raw as `stem`.dng (or .npy without PiDNG) and a `stem`.json sidecar into
        `directory`; returns their paths (SnapshotFiles). Raises OSError when they cannot be written.
        Named `<agent>-<time>-<frame>` like the viewer's snapshots unless `stem` is given."""
        from .snapshot import save_snapshot

        return save_snapshot(self.value, directory, stem=stem, agent=self.agent or None, model=self.model)
