"""A camera that replays recorded or pre-rendered frames, so that the pipeline can be measured (and a viewer
tested) without the simulator's rendering cost.

A replay file is an .npz (written by `scripts/make_replay.py`, read without pickle):
  main      (N, H, W, 3) uint8 BGR, the ISP output of each frame
  raw       (N, h, w) uint16 Bayer mosaics, LSB-aligned at `bit_depth`
  info      JSON str: {"format": "picamlink-replay", "version": 1, "sensor", "bayer_order", "bit_depth",
            "black_level", "fps"}
  metadata  JSON str: a list of N metadata dicts (libcamera names), one per frame

Frames are served in a cycle, each with a fresh SensorTimestamp (monotonic ns when served), at the configured
rate or, with fps 0, as fast as they are asked for. Controls are recorded but change nothing: the pixels are
what was recorded.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .requested import merge_requested
from .base import CameraBackend, CameraError, CapturedFrame, LensShadingTable
from .limits import isp_crop
from .sensors import SensorInfo, get_sensor

log = logging.getLogger(__name__)

FORMAT = "picamlink-replay"
VERSION = 1
BAYER_ORDERS = ("BGGR", "GBRG", "GRBG", "RGGB")


class ReplayError(ValueError):
    """The replay file is missing, unreadable or not a picamlink replay; the message says what is wrong."""


def load_replay(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any], list[dict[str, Any]]]:
    """(main, raw, info, metadata) of a replay file, validated."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"main", "raw", "info", "metadata"} - set(data.files)
            if missing:
                raise ReplayError(f"{path}: not a picamlink replay (missing {', '.join(sorted(missing))})")
            main, raw = data["main"], data["raw"]
            info = json.loads(str(data["info"]))
            metadata = json.loads(str(data["metadata"]))
    except ReplayError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise ReplayError(f"cannot read replay file {path}: {exc}") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ReplayError(f"{path}: not a picamlink replay (info.format is not {FORMAT!r})")
    if info.get("version") != VERSION:
        raise ReplayError(f"{path}: replay version {info.get('version')!r} is not supported (expected {VERSION})")
    if main.dtype != np.uint8 or main.ndim != 4 or main.shape[3] != 3:
        raise ReplayError(f"{path}: main must be (N, H, W, 3) uint8, not {main.shape} {main.dtype}")
    if raw.dtype != np.uint16 or raw.ndim != 3 or raw.shape[1] % 2 or raw.shape[2] % 2:
        raise ReplayError(f"{path}: raw must be (N, h, w) uint16 with even h and w, not {raw.shape} {raw.dtype}")
    if not (len(main) == len(raw) == len(metadata)) or len(main) == 0:
        raise ReplayError(f"{path}: main, raw and metadata must hold the same number (≥ 1) of frames: "
                          f"{len(main)}, {len(raw)}, {len(metadata)}")
    if info.get("bayer_order") not in BAYER_ORDERS:
        raise ReplayError(f"{path}: bayer_order {info.get('bayer_order')!r} is not one of {', '.join(BAYER_ORDERS)}")
    bit_depth = info.get("bit_depth")
    if not isinstance(bit_depth, int) or not 8 <= bit_depth <= 16:
        raise ReplayError(f"{path}: bit_depth must be an int within 8–16, not {bit_depth!r}")
    if not all(isinstance(m, dict) for m in metadata):
        raise ReplayError(f"{path}: metadata must be a list of maps")
    return main, raw, info, metadata


class ReplayCamera(CameraBackend):
    """Serves the frames of a replay file in a cycle (see the module docstring)."""

    name = "replay"
    calibration_refusal = ("a replay camera cannot be calibrated: its pixels were recorded, so exposure, gains and "
                           "lens shading change nothing in them; calibrate a live camera (--camera sim or picamera2)")

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._recorded_main, self._raw, self._info, self._metadata = load_replay(self.path)
        for array in (self._recorded_main, self._raw):
            array.setflags(write=False)  # served without copying: nobody may write into them
        try:
            self._sensor = get_sensor(str(self._info.get("sensor", "")))
        except ValueError as exc:
            raise ReplayError(f"{self.path}: {exc}") from None
        self._main = self._recorded_main
        self._fps = float(self._info.get("fps", 30.0))
        self._requested: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._started = False
        self._closed = False
        self._seq = 0
        self._deadline: float | None = None
        log.info("replay %s: %d frames, main %dx%d, raw %dx%d", self.path, len(self._main),
                 self._main.shape[2], self._main.shape[1], self._raw.shape[2], self._raw.shape[1])

    @property
    def sensor(self) -> SensorInfo:
        return self._sensor

    @property
    def frame_count(self) -> int:
        return len(self._raw)

    def configure(self, size: tuple[int, int], fps: float, raw_size: tuple[int, int] | None = None) -> dict[str, Any]:
        """Resize the recorded main frames once (if `size` differs) and set the serving rate (0: free-running).
        A different aspect ratio is cropped (centred, as the ISP does: limits.isp_crop), never squashed."""
        if self._started:
            raise CameraError("cannot configure a started camera; stop it first")
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise ValueError(f"main size must be positive, got {size}")
        if fps < 0:
            raise ValueError(f"fps must be ≥ 0 (0: free-running), got {fps}")
        recorded = self._recorded_main
        if (w, h) == (recorded.shape[2], recorded.shape[1]):
            self._main = recorded
        else:
            x, y, cw, ch = isp_crop((recorded.shape[2], recorded.shape[1]), (w, h))
            log.info("replay: cropping %d recorded frames to %dx%d at (%d, %d) and resizing them to %dx%d",
                     len(recorded), cw, ch, x, y, w, h)
            self._main = np.stack([cv2.resize(f[y:y + ch, x:x + cw], (w, h), interpolation=cv2.INTER_AREA)
                                   for f in recorded])
            self._main.setflags(write=False)
        self._fps = float(fps)
        self._deadline = None
        return self.configuration

    @property
    def configuration(self) -> dict[str, Any]:
        h, w = self._main.shape[1:3]
        rh, rw = self._raw.shape[1:3]
        bits = int(self._info["bit_depth"])
        return {
            "main": {"size": (w, h), "format": "BGR888"},
            "raw": {"size": (rw, rh), "format": f"S{self._info['bayer_order']}{bits}", "bit_depth": bits},
            "sensor": {"output_size": (rw, rh), "bit_depth": bits},
            "fps": self._fps,
            "replay": {"file": str(self.path), "frames": self.frame_count},
        }

    def start(self) -> None:
        if self._closed:
            raise CameraError("camera is closed")
        self._started = True
        self._deadline = None

    def stop(self) -> None:
        self._started = False

    def close(self) -> None:
        self._started = False
        self._closed = True

    def _pace(self, timeout: float) -> None:
        if self._fps <= 0:
            return
        period = 1.0 / self._fps
        now = time.monotonic()
        if self._deadline is None or self._deadline < now - period:  # first frame, or late: no backlog
            self._deadline = now
        else:
            self._deadline += period
        wait = self._deadline - now
        if wait > timeout:
            time.sleep(timeout)
            raise CameraError("capture timed out")
        if wait > 0:
            time.sleep(wait)

    def capture(self, timeout: float = 2.0) -> CapturedFrame:
        if not self._started:
            raise CameraError("camera not started")
        with self._lock:
            self._pace(timeout)
            seq = self._seq
            self._seq += 1
        index = seq % self.frame_count
        metadata = dict(self._metadata[index])
        metadata["SensorTimestamp"] = time.monotonic_ns()
        if self._fps > 0:
            metadata["FrameDuration"] = int(round(1e6 / self._fps))
        return CapturedFrame(
            main=self._main[index],
            raw=self._raw[index],
            metadata=metadata,
            sequence=seq,
            bayer_order=self._info["bayer_order"],
            bit_depth=int(self._info["bit_depth"]),
            black_level=int(self._info.get("black_level", self._sensor.black_level)),
            extra={"replay_index": index},
        )

    def set_controls(self, controls: dict[str, Any]) -> None:
        """Recorded (so `controls()` reports them) but without effect: the pixels are what was recorded."""
        if not isinstance(controls, dict):
            raise ValueError("controls must be a dict of libcamera control names to values")
        self._requested = merge_requested(self._requested, controls)

    def _replace_requested(self, target: dict[str, Any]) -> None:
        self._requested = dict(target)

    def control_ranges(self) -> dict[str, tuple[Any, Any, Any]]:
        first = self._metadata[0]
        ranges: dict[str, tuple[Any, Any, Any]] = {}
        if "ExposureTime" in first:
            ranges["ExposureTime"] = (first["ExposureTime"], first["ExposureTime"], first["ExposureTime"])
        if "AnalogueGain" in first:
            ranges["AnalogueGain"] = (first["AnalogueGain"], first["AnalogueGain"], first["AnalogueGain"])
        return ranges

    def controls(self) -> dict[str, Any]:
        return dict(self._requested)

    def apply_lens_shading(self, table: LensShadingTable) -> None:
        raise CameraError("a replay camera cannot change lens shading: its pixels were recorded")
