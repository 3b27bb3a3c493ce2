"""The simulated camera: a physical sensor model behind the CameraBackend interface (the default backend).

Why physics: it is the ground truth of every calibration test, so each raw pixel is formed the way a sensor
forms it — electrons = scene reflectance × illuminant response × true lens shading × exposure time; shot
noise and read noise in electrons; × conversion gain × analogue gain; + black pedestal; rounded and clipped
at the bit depth — and controls reach the sensor after the real frame delays, with metadata reporting the
values in force for that very frame.

Speed (it must not limit a 30 fps stream on one core): float32 throughout; the per-mode electron-rate map
(scene × illuminant × shading) is precomputed, and only the small moving region of the chart is re-rendered
per frame; the exposed-signal and noise-sigma maps are cached until exposure changes; noise comes from a
pre-generated bank of standard normals (seeded) read at a random offset per frame — pixels of successive
frames get independent draws, which is all the statistics need, and the Gaussian approximation of shot
noise (variance = mean) is exact in mean and variance at every level.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from typing import Any

import numpy as np

from .base import CameraBackend, CameraError, CapturedFrame, LensShadingTable
from .isp import Isp, bayer_channel_index
from .limits import check_stream_request, native_crop
from .scene import SCENES, Scene, illuminant_rgb, neutral_colour_gains
from .requested import merge_requested
from .sensors import SensorInfo, SensorMode, get_sensor

logger = logging.getLogger(__name__)

CONTROLS = ("ExposureTime", "AnalogueGain", "ColourGains", "AeEnable", "AwbEnable", "FrameRate", "FrameDurationLimits")
COLOUR_ONLY = ("ColourGains", "AwbEnable", "ColourTemperature")  # absent on a monochrome sensor
AGC_TARGET = 0.16  # mean luminance (white = 1) the auto exposure aims for, like libcamera's default
AGC_MAX_EXPOSURE_US = 66_666.0  # libcamera's "normal" exposure mode ceiling; manual exposures may be longer
_REF_LUX = 500.0  # at this lux a reflectance-1 surface fills the full well in _REF_TIME_US at the centre
_REF_TIME_US = 10_000.0


class SimulatedCamera(CameraBackend):
    """A simulated Raspberry Pi camera: sensor physics, control delays, a simple IPA (AGC/AWB) and an ISP."""

    name = "simulated"

    def __init__(
        self,
        sensor: str | SensorInfo = "imx219",
        scene: str = "chart",
        colour_temperature: float = 5000.0,
        seed: int = 0,
        pacing: bool = True,
        corner_shading: float = 0.5,
        lux: float = 500.0,
        optical_centre: tuple[float, float] = (0.53, 0.47),
    ):
        self._sensor = sensor if isinstance(sensor, SensorInfo) else get_sensor(sensor)
        if scene not in SCENES:
            raise ValueError(f"unknown scene {scene!r}; known scenes: {', '.join(SCENES)}")
        if not 0.05 <= corner_shading <= 1.0:
            raise ValueError(f"corner_shading must be within 0.05–1.0, got {corner_shading}")
        if lux < 0:
            raise ValueError(f"lux must be ≥ 0, got {lux}")
        self._illum = illuminant_rgb(colour_temperature)  # validates the range
        self.scene_kind = scene
        self.colour_temperature = float(colour_temperature)
        self.seed = seed
        self.pacing = pacing
        self.corner_shading = float(corner_shading)
        self.lux = float(lux)
        self.optical_centre = optical_centre
        self._rng = np.random.default_rng(seed)
        self._ctl_lock = threading.RLock()
        self._cap_lock = threading.Lock()
        self._faults: deque[str] = deque()
        self._started = False
        self._closed = False
        self._seq = 0
        self._sim_time = 0.0
        self._deadline: float | None = None
        self._table: LensShadingTable | None = None
        self._mode: SensorMode | None = None
        # controls
        mono = self._sensor.is_mono  # no colour filter: no AWB, no ColourGains (libcamera's *_mono.json has no rpi.awb)
        self._requested: dict[str, Any] = {"AeEnable": True} if mono else {"AeEnable": True, "AwbEnable": True}
        self._pending: list[tuple[int, str, Any]] = []
        self._ae_exposure = True
        self._ae_gain = True
        self._awb = not mono
        self._ae_state = 1

    # ================================================================ configuration
    @property
    def sensor(self) -> SensorInfo:
        return self._sensor

    @property
    def mode(self) -> SensorMode:
        self._ensure_configured()
        return self._mode

    def _ensure_configured(self) -> None:
        if self._mode is None:
            self.configure((640, 480), 30.0)

    def configure(self, size: tuple[int, int], fps: float, raw_size: tuple[int, int] | None = None) -> dict[str, Any]:
        if self._started:
            raise CameraError("cannot configure a started camera; stop it first")
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0 or w % 2 or h % 2:
            raise ValueError(f"main size must be positive and even, got {size}")
        if fps < 0:
            raise ValueError(f"fps must be ≥ 0 (0: free-running), got {fps}")
        s = self._sensor
        if raw_size is None:
            check_stream_request(s.model, s.modes, (w, h), fps)
        mode = s.mode_for((w, h), fps, raw_size)
        self._mode, self._main_size, self._fps = mode, (w, h), float(fps)
        if fps > 0:
            self._limits = (1e6 / fps, 1e6 / fps)
        else:
            self._limits = (mode.min_frame_duration_us, s.exposure_max_us)
        self._build_mode_maps()
        self._isp = Isp(mode.size, s.bayer_order, mode.bit_depth, self._black, (w, h), mode_crop=mode.crop,
                        full_array=s.full_array)
        self._isp.set_lens_shading(self._table)
        # controls in force: start from the defaults (libcamera's initial AGC values)
        self._exp_lines = s.exposure_lines(min(20000.0, self._limits[1]), mode)
        self._gain = 1.0
        self._frame_limits_in_force = self._limits
        self._colour_gains = (1.0, 1.0) if self._awb else tuple(self._requested.get("ColourGains", (1.0, 1.0)))
        self._pending.clear()
        self._deadline = None
        logger.info("configured %s: main %dx%d, mode %s, %.2f fps", s.model, w, h, mode.size, fps)
        return self.configuration

    @property
    def configuration(self) -> dict[str, Any]:
        if self._mode is None:
            return {}
        m = self._mode
        return {
            "main": {"size": self._main_size, "format": "BGR888"},
            "raw": {"size": m.size, "format": (f"R{m.bit_depth}" if self._sensor.is_mono else f"S{self._sensor.bayer_order}{m.bit_depth}"), "bit_depth": m.bit_depth},
            "sensor": {"output_size": m.size, "bit_depth": m.bit_depth},
            "fps": self._fps,
            "mode": {"size": m.size, "crop": m.crop, "binning": m.binning, "fps_max": m.fps_max},
            "FrameDurationLimits": tuple(int(x) for x in self._limits),
        }

    def _build_mode_maps(self) -> None:
        """Per-mode precomputation: true shading, electron-rate map, noise bank, buffers."""
        s, m = self._sensor, self._mode
        w, h = m.size
        bits = m.bit_depth
        self._white = 2**bits - 1
        self._black = s.black_level >> (s.bit_depth - bits) if bits < s.bit_depth else s.black_level
        self._cg = (self._white - self._black) / s.full_well_e  # DN per electron at gain 1
        self._sites = bayer_channel_index(s.bayer_order)
        maps = self._mode_rate_maps(m)
        self._site_map, self._shading, self._scene = maps["site_map"], maps["shading"], maps["scene"]
        self._factor = maps["factor"]
        self._base_rate = maps["base"]
        self._rate = self._base_rate.copy()
        self._moving_region = None
        # noise bank: standard normals, read at a random offset each frame
        n = w * h
        self._bank_slack = max(65536, n // 4)
        self._bank = self._rng.standard_normal(n + self._bank_slack, dtype=np.float32)
        self._e = np.empty((h, w), dtype=np.float32)
        self._sigma = np.empty((h, w), dtype=np.float32)
        self._work = np.empty((h, w), dtype=np.float32)
        self._raw_out = np.empty((h, w), dtype=np.uint16)
        self._e_key: float | None = None

    def _mode_rate_maps(self, m: SensorMode) -> dict[str, Any]:
        """The static physics of one mode: Bayer site map, true shading, scene, and the electron rate per µs
        of every pixel (reflectance × illuminant × shading × k) without the moving element."""
        s = self._sensor
        w, h = m.size
        sites = bayer_channel_index(s.bayer_order)
        site_map = np.empty((h, w), dtype=np.int8)
        for dy in (0, 1):
            for dx in (0, 1):
                site_map[dy::2, dx::2] = sites[dy, dx]
        shading = self._compute_shading(m)
        scene = Scene(self.scene_kind, m.size, m.crop, s.full_array)
        refl = scene.reflectance()
        k = s.full_well_e / _REF_TIME_US * self.lux / _REF_LUX  # e⁻/µs for reflectance 1, G, centre
        factor = np.empty((h, w), dtype=np.float32)  # illuminant × shading × k per pixel (its own channel)
        base = np.empty((h, w), dtype=np.float32)
        for dy in (0, 1):
            for dx in (0, 1):  # each Bayer site takes its own channel (strided views: no boolean masks)
                c = int(sites[dy, dx])
                name = "RGB"[c]
                np.multiply(shading[name][dy::2, dx::2], np.float32(self._illum[c] * k), out=factor[dy::2, dx::2])
                base[dy::2, dx::2] = refl[c][dy::2, dx::2]
        np.multiply(base, factor, out=base)
        return {"site_map": site_map, "shading": shading, "scene": scene, "factor": factor, "base": base}

    def _compute_shading(self, mode: SensorMode | None = None) -> dict[str, np.ndarray]:
        """True lens shading per channel over the mode's pixels, defined on the FULL pixel array.

        s(r) = 1/(1 + a·r²)² (a cos⁴-like fall-off), r = distance from the off-centre optical axis divided by
        the distance to the farthest array corner; a is chosen per channel so the far corner reaches
        G: corner_shading, R: corner_shading^1.35 (falls faster), B: corner_shading^0.85; 1 at the axis."""
        s, m = self._sensor, mode or self._mode
        fw, fh = s.full_array
        w, h = m.size
        cx, cy, cw, ch = m.crop
        ox, oy = self.optical_centre[0] * fw, self.optical_centre[1] * fh
        rmax = max(math.hypot(x - ox, y - oy) for x in (0, fw) for y in (0, fh))
        xs = (cx + (np.arange(w) + 0.5) * cw / w - ox) / rmax
        ys = (cy + (np.arange(h) + 0.5) * ch / h - oy) / rmax
        r2 = (ys[:, None] ** 2 + xs[None, :] ** 2).astype(np.float32)
        out = {}
        for name, power in (("R", 1.35), ("G", 1.0), ("B", 0.85)):
            corner = self.corner_shading**power
            a = corner**-0.5 - 1.0
            out[name] = (1.0 / (1.0 + a * r2) ** 2).astype(np.float32)
        return out

    # ================================================================ ground truth
    def true_shading(self, mode: SensorMode | None = None) -> dict[str, np.ndarray]:
        """{"R", "G", "B": float32 (h, w)} true lens shading at the raw resolution of `mode` (default: the
        configured mode), 1 at the axis."""
        if mode is not None:
            return self._compute_shading(mode)
        self._ensure_configured()
        return {k: v.copy() for k, v in self._shading.items()}

    def true_colour_gains(self) -> tuple[float, float]:
        """(r, b) colour gains that make a neutral surface neutral: G/R and G/B of the illuminant response."""
        return neutral_colour_gains(self.colour_temperature)

    def illuminant_rgb(self) -> tuple[float, float, float]:
        return self._illum

    @property
    def conversion_gain(self) -> float:
        """DN per electron at analogue gain 1 (full well ↦ white − black)."""
        self._ensure_configured()
        return self._cg

    @property
    def exposure_in_force(self) -> float:
        """The true exposure in µs of the last frame (whole lines × line time)."""
        return getattr(self, "_last_lines", self._exp_lines) * self.mode.line_time_us

    @property
    def gain_in_force(self) -> float:
        return self._gain

    @property
    def scene(self) -> Scene:
        self._ensure_configured()
        return self._scene

    # ================================================================ lifecycle
    def start(self) -> None:
        if self._closed:
            raise CameraError("camera is closed")
        self._ensure_configured()
        self._started = True
        self._deadline = None

    def stop(self) -> None:
        self._started = False

    def close(self) -> None:
        self._started = False
        self._closed = True

    def inject_fault(self, kind: str, count: int = 1) -> None:
        """Make the next `count` captures fail: "raise" (CameraError) or "hang" (block past the timeout)."""
        if kind not in ("raise", "hang"):
            raise ValueError(f"unknown fault {kind!r}; use 'raise' or 'hang'")
        self._faults.extend([kind] * int(count))

    def apply_lens_shading(self, table: LensShadingTable) -> None:
        """Put `table` into the ISP from the next frame (None removes it)."""
        with self._cap_lock:
            self._table = table
            if self._mode is not None:
                self._isp.set_lens_shading(table)

    @property
    def lens_shading(self) -> LensShadingTable | None:
        return self._table

    # ================================================================ controls
    def control_ranges(self) -> dict[str, tuple[Any, Any, Any]]:
        """ExposureTime's maximum is what this configuration can expose (the longest frame duration)."""
        self._ensure_configured()
        s, m = self._sensor, self._mode
        emin = s.quantise_exposure(0, m)
        ranges = {
            "ExposureTime": (emin, int(self._limits[1]), 20000),
            "AnalogueGain": (s.gain_min, s.gain_max, 1.0),
            "ColourGains": (0.0, 32.0, None),
            "AeEnable": (False, True, True),
            "AwbEnable": (False, True, True),
            "FrameRate": (1e6 / s.exposure_max_us, m.fps_max, self._fps),
            "FrameDurationLimits": (int(m.min_frame_duration_us), int(s.exposure_max_us), tuple(int(x) for x in self._limits)),
        }
        return self._without_colour(ranges)

    def _without_colour(self, values: dict[str, Any]) -> dict[str, Any]:
        """A monochrome sensor has no AWB: its controls and metadata carry no colour (as libcamera with a
        `*_mono.json` tuning, which has no rpi.awb and no rpi.ccm)."""
        if self._sensor.is_mono:
            for name in COLOUR_ONLY:
                values.pop(name, None)
        return values

    def controls(self) -> dict[str, Any]:
        with self._ctl_lock:
            return dict(self._requested)

    def _validate(self, controls: dict[str, Any]) -> dict[str, Any]:
        s = self._sensor
        out: dict[str, Any] = {}
        for name, value in controls.items():
            if name not in CONTROLS:
                raise ValueError(f"unknown control {name!r}; accepted controls: {', '.join(CONTROLS)}")
            if name in COLOUR_ONLY and s.is_mono:
                raise ValueError(f"{s.model} is a monochrome sensor: it has no {name} (no colour, no white balance)")
            try:
                if name == "ExposureTime":
                    v = float(value)
                    if not math.isfinite(v) or v < 0 or v > s.exposure_max_us:
                        raise ValueError(f"ExposureTime must be within 0–{int(s.exposure_max_us)} µs (0: auto), got {value}")
                elif name == "AnalogueGain":
                    v = float(value)
                    if not math.isfinite(v) or (v != 0 and not (1.0 - 1e-9 <= v <= s.gain_max * (1 + 1e-6))):
                        raise ValueError(
                            f"AnalogueGain must be within 1.0–{s.gain_max:.2f} for {s.model} (0: auto), got {value}"
                        )
                elif name == "ColourGains":
                    r, b = (float(x) for x in value)
                    if not (math.isfinite(r) and math.isfinite(b) and 0 <= r <= 32 and 0 <= b <= 32):
                        raise ValueError(f"ColourGains must be two numbers within 0–32, got {value}")
                    v = (r, b)
                elif name in ("AeEnable", "AwbEnable"):
                    if not isinstance(value, (bool, np.bool_, int)):
                        raise ValueError(f"{name} must be a boolean, got {value!r}")
                    v = bool(value)
                elif name == "FrameRate":
                    lo, hi = (value if isinstance(value, (tuple, list)) else (value, value))
                    lo, hi = float(lo), float(hi)
                    if not (0 < lo <= hi <= self.mode.fps_max + 1e-6):
                        raise ValueError(f"FrameRate must be within 0–{self.mode.fps_max} fps, got {value}")
                    name, v = "FrameDurationLimits", (1e6 / hi, 1e6 / lo)
                else:  # FrameDurationLimits
                    lo, hi = (float(x) for x in value)
                    if not (self.mode.min_frame_duration_us - 1 <= lo <= hi <= s.exposure_max_us):
                        raise ValueError(
                            f"FrameDurationLimits must satisfy {int(self.mode.min_frame_duration_us)} ≤ min ≤ max ≤ "
                            f"{int(s.exposure_max_us)} µs, got {value}"
                        )
                    v = (max(lo, self.mode.min_frame_duration_us), max(hi, self.mode.min_frame_duration_us))
            except (TypeError, ValueError) as exc:
                if isinstance(exc, ValueError) and str(exc).startswith(name):
                    raise
                raise ValueError(f"bad value for {name}: {value!r} ({exc})") from None
            out[name] = v
        return out

    def set_controls(self, controls: dict[str, Any]) -> None:
        """Queue controls; sensor controls come into force `exposure_delay` / `gain_delay` / `vblank_delay`
        frames after the next frame (set before start(): from the first frame), ISP controls from the next.

        Precisely: if frame s is the next to be produced, ExposureTime shows in the metadata of frame
        s + exposure_delay (frames s … s + delay − 1 still show the old value).

        Order within one request, as libcamera ≥ 0.5 with picamera2 does it (control_ids_core.yaml,
        src/ipa/rpi/common/ipa_base.cpp applyControls; picamera2/request.py sends ExposureTimeMode /
        AnalogueGainMode Manual with every non-zero ExposureTime / AnalogueGain): AeEnable / AwbEnable set the
        modes first, then an explicit non-zero ExposureTime, AnalogueGain or ColourGains in the same request
        wins, whatever the dict order. The requested set follows `requested.merge_requested`."""
        self._ensure_configured()
        valid = self._validate(controls)  # all or nothing: a bad control changes nothing
        with self._ctl_lock:
            s = self._sensor
            if "AeEnable" in valid:
                self._ae_exposure = self._ae_gain = valid["AeEnable"]
            if "AwbEnable" in valid:
                self._awb = valid["AwbEnable"]
            for name, v in valid.items():
                if name == "ExposureTime":
                    self._ae_exposure = v == 0
                    if v > 0:
                        self._queue("exp", s.exposure_lines(v, self._mode), s.exposure_delay)
                elif name == "AnalogueGain":
                    self._ae_gain = v == 0
                    if v > 0:
                        self._queue("gain", s.quantise_gain(v), s.gain_delay)
                elif name == "ColourGains":
                    self._awb = v == (0.0, 0.0)
                    if not self._awb:
                        self._queue("cg", v, 0)
                elif name == "FrameDurationLimits":
                    self._limits = v
                    self._queue("fdl", v, s.vblank_delay)
            # Reported as libcamera types them (control_ids_core.yaml): ExposureTime an int32 of µs.
            requested = {k: (tuple(int(x) for x in v) if k == "FrameDurationLimits" else
                             int(round(v)) if k == "ExposureTime" else v) for k, v in valid.items()}
            self._requested = merge_requested(self._requested, requested)

    def _replace_requested(self, target: dict[str, Any]) -> None:
        with self._ctl_lock:
            self._requested = dict(target)

    def _queue(self, kind: str, value: Any, delay: int) -> None:
        effective = self._seq + (delay if self._started else 0)
        self._pending.append((effective, kind, value))

    def _apply_pending(self, seq: int) -> None:
        with self._ctl_lock:
            keep = []
            for item in self._pending:
                eff, kind, value = item
                if eff > seq:
                    keep.append(item)
                elif kind == "exp":
                    self._exp_lines = value
                elif kind == "gain":
                    self._gain = value
                elif kind == "cg":
                    self._colour_gains = value
                elif kind == "fdl":
                    self._frame_limits_in_force = value
            self._pending = keep

    # ================================================================ frames
    def capture(self, timeout: float = 2.0) -> CapturedFrame:
        if not self._started:
            raise CameraError("camera not started")
        if self._faults:
            kind = self._faults.popleft()
            if kind == "raise":
                raise CameraError("simulated capture failure (injected fault)")
            time.sleep(timeout)
            raise CameraError("capture timed out")
        with self._cap_lock:
            return self._capture_locked(timeout)

    def _frame_timing(self) -> tuple[int, float]:
        """(exposure lines in force, frame duration µs) for the frame being produced."""
        m = self._mode
        lo, hi = self._frame_limits_in_force
        max_lines = max(1, math.floor(hi / m.line_time_us + 1e-6))
        lines = min(self._exp_lines, max_lines)
        duration = min(max(lines * m.line_time_us, lo, m.min_frame_duration_us), max(hi, m.min_frame_duration_us))
        return lines, duration

    def _pace(self, duration_us: float, timeout: float) -> None:
        if not (self.pacing and self._fps > 0):
            return
        now = time.monotonic()
        period = duration_us * 1e-6
        if self._deadline is None:
            self._deadline = now
        else:
            self._deadline += period
            if self._deadline < now - period:  # late by more than a frame: no backlog, restart the clock
                self._deadline = now
        wait = self._deadline - now
        if wait > timeout:
            time.sleep(timeout)
            raise CameraError("capture timed out")
        if wait > 0:
            time.sleep(wait)

    def _capture_locked(self, timeout: float) -> CapturedFrame:
        seq = self._seq
        self._apply_pending(seq)
        lines, duration = self._frame_timing()
        self._last_lines = lines
        self._pace(duration, timeout)
        raw = self._render(lines * self._mode.line_time_us, self._gain)
        colour_gains = self._colour_gains
        main = self._isp.process(raw, colour_gains)
        ts = time.monotonic_ns()
        s = self._sensor
        stats = self._site_means(raw)
        exposure_us = int(math.ceil(lines * self._mode.line_time_us - 1e-6))
        black16 = self._black << (16 - self._mode.bit_depth)
        metadata = {
            "SensorTimestamp": ts,
            "FrameDuration": int(round(duration)),
            "ExposureTime": exposure_us,
            "AnalogueGain": float(self._gain),
            "DigitalGain": 1.0,
            "ColourGains": (float(colour_gains[0]), float(colour_gains[1])),
            "ColourTemperature": int(self._estimate_ct(colour_gains)),
            "Lux": self._estimate_lux(stats, exposure_us),
            "SensorBlackLevels": (black16, black16, black16, black16),
            "ScalerCrop": native_crop(self._isp.crop, self._mode.crop, self._mode.size),
            "FrameDurationLimits": tuple(int(x) for x in self._frame_limits_in_force),
            "AeEnable": bool(self._ae_exposure or self._ae_gain),
            "AeState": self._ae_state if (self._ae_exposure or self._ae_gain) else 0,
            "AwbEnable": bool(self._awb),
        }
        self._without_colour(metadata)
        self._run_ipa(stats, lines, duration)
        self._seq += 1
        self._sim_time += duration * 1e-6
        return CapturedFrame(
            main=main,
            raw=raw.copy(),
            metadata=metadata,
            sequence=seq,
            bayer_order=s.bayer_order,
            bit_depth=self._mode.bit_depth,
            black_level=self._black,
            extra={"sim_time": self._sim_time},
        )

    def _update_moving(self) -> list:
        """Re-render only the moving element; returns the regions whose rate changed."""
        changed = []
        old = self._moving_region
        if old is not None:
            self._rate[old.y0 : old.y1, old.x0 : old.x1] = self._base_rate[old.y0 : old.y1, old.x0 : old.x1]
            changed.append(old)
        mv = self._scene.moving(self._sim_time)
        if mv is None:
            self._moving_region = None
            return changed
        reg, refl = mv
        sites = self._site_map[reg.y0 : reg.y1, reg.x0 : reg.x1]
        r = np.take_along_axis(refl, sites[None].astype(np.intp), axis=0)[0]
        self._rate[reg.y0 : reg.y1, reg.x0 : reg.x1] = r * self._factor[reg.y0 : reg.y1, reg.x0 : reg.x1]
        self._moving_region = reg
        changed.append(reg)
        return changed

    def _exposed(self, t_us: float, region=None) -> None:
        """Fill the expected-electron and noise-sigma maps (whole frame, or one region) for exposure t."""
        sl = (slice(None), slice(None)) if region is None else (slice(region.y0, region.y1), slice(region.x0, region.x1))
        e, sigma = self._e[sl], self._sigma[sl]
        np.multiply(self._rate[sl], np.float32(t_us), out=e)
        np.minimum(e, np.float32(self._sensor.full_well_e), out=e)  # the pixel saturates at full well
        np.add(e, np.float32(self._sensor.read_noise_e**2), out=sigma)
        np.sqrt(sigma, out=sigma)

    def _render(self, t_us: float, gain: float) -> np.ndarray:
        changed = self._update_moving()
        if self._e_key != t_us:
            self._exposed(t_us)
            self._e_key = t_us
        else:
            for reg in changed:
                self._exposed(t_us, reg)
        h, w = self._e.shape
        off = int(self._rng.integers(0, self._bank_slack))
        noise = self._bank[off : off + h * w].reshape(h, w)
        work = self._work
        np.multiply(self._sigma, noise, out=work)
        np.add(work, self._e, out=work)
        np.multiply(work, np.float32(self._cg * gain), out=work)
        np.add(work, np.float32(self._black + 0.5), out=work)  # + 0.5: truncation below rounds
        np.clip(work, 0.0, np.float32(self._white), out=work)
        np.copyto(self._raw_out, work, casting="unsafe")
        return self._raw_out

    # ================================================================ full-resolution still
    def capture_still(self, timeout: float = 5.0, mode: SensorMode | None = None,
                      controls: dict[str, Any] | None = None) -> CapturedFrame:
        """One frame in `mode` (default: the full-resolution mode), main at that size, with the controls in
        force for the stream's next frame (ExposureTime, AnalogueGain, ColourGains, the lens shading table);
        `controls` may override ExposureTime / AnalogueGain / ColourGains for this frame only (0: keep).

        The stream does NOT pause: the capture lock is held only to read the state in force (the stream's
        time, exposure lines, gain, colour gains, table); the frame is rendered outside it with its own
        buffers and its own noise generator (seeded by (seed, still index)), so the stream's frames are the
        same as without the still and the still is deterministic. A real Pi pauses the stream for the two
        mode switches (picamera2's switch_mode); the Picamera2 backend does. The exposure in µs carries over
        and is re-quantised to whole lines of the still's mode (its line time differs). Binning in this
        simulator averages: a binned pixel has the electron rate of one full-resolution pixel at the same field
        position, so the black-subtracted, normalised levels of stream and still agree there.
        """
        if self._closed:
            raise CameraError("camera is closed")
        s = self._sensor
        m = mode or s.full_resolution_mode
        if m not in s.modes:
            raise ValueError(f"{s.model} has no mode {m}")
        override = self._validate(controls or {})
        with self._cap_lock:
            self._ensure_configured()
            with self._ctl_lock:
                lines, _ = self._frame_timing()
                exposure_us = lines * self._mode.line_time_us
                gain = self._gain
                colour_gains = tuple(self._colour_gains)
                ae, awb, ae_state = bool(self._ae_exposure or self._ae_gain), bool(self._awb), self._ae_state
            table, sim_time, seq = self._table, self._sim_time, self._seq
            index = getattr(self, "_stills", 0)
            self._stills = index + 1
        if override.get("ExposureTime", 0) > 0:
            exposure_us = override["ExposureTime"]
        if override.get("AnalogueGain", 0) > 0:
            gain = s.quantise_gain(override["AnalogueGain"])
        if override.get("ColourGains", (0.0, 0.0)) != (0.0, 0.0):
            colour_gains = override["ColourGains"]
        still_lines = s.exposure_lines(exposure_us, m)
        t_us = still_lines * m.line_time_us
        # `timeout` is how long a camera may take to deliver; this one renders on the host's CPU, which a
        # loaded machine slows without the simulated camera being late, so it never expires here.
        raw, black = self._render_still(m, t_us, gain, sim_time, np.random.default_rng([self.seed, 0x57111, index]))
        isp = Isp(m.size, s.bayer_order, m.bit_depth, black, m.size, mode_crop=m.crop, full_array=s.full_array)
        isp.set_lens_shading(table)
        main = isp.process(raw, colour_gains)
        exposure_int = int(math.ceil(t_us - 1e-6))
        black16 = black << (16 - m.bit_depth)
        stats = self._site_means(raw, black, 2**m.bit_depth - 1)
        metadata = {
            "SensorTimestamp": time.monotonic_ns(),
            "FrameDuration": int(round(max(t_us, m.min_frame_duration_us))),
            "ExposureTime": exposure_int,
            "AnalogueGain": float(gain),
            "DigitalGain": 1.0,
            "ColourGains": (float(colour_gains[0]), float(colour_gains[1])),
            "ColourTemperature": int(self._estimate_ct(colour_gains)),
            "Lux": self._estimate_lux(stats, exposure_int, gain),
            "SensorBlackLevels": (black16, black16, black16, black16),
            "ScalerCrop": m.crop,
            "FrameDurationLimits": (int(math.ceil(m.min_frame_duration_us)), int(s.exposure_max_us)),
            "AeEnable": ae,
            "AeState": ae_state if ae else 0,
            "AwbEnable": awb,
        }
        self._without_colour(metadata)
        return CapturedFrame(main=main, raw=raw, metadata=metadata, sequence=seq, bayer_order=s.bayer_order,
                             bit_depth=m.bit_depth, black_level=black,
                             extra={"sim_time": sim_time, "still": True, "still_index": index})

    def expose(self, mode: SensorMode, exposure_us: float, gain: float, sim_time: float,
               rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """The sensor alone, for the simulated libcamera under tests/fakes: the raw mosaic (uint16 (h, w), this
        simulator's upright Bayer order) of one frame of `mode` exposed `exposure_us` at analogue `gain`, the
        scene at `sim_time` s, noise from `rng`; returns (raw, black level at the mode's depth). No ISP, no IPA:
        those are the double's own. Noise as in streaming: a bank of standard normals per mode read at a random
        offset (generating fresh normals for millions of pixels per frame would cap the double at a few fps)."""
        banks = self.__dict__.setdefault("_expose_banks", {})
        n = mode.size[0] * mode.size[1]
        bank = banks.get(mode)
        if bank is None:
            bank = banks[mode] = rng.standard_normal(n + max(65536, n // 4), dtype=np.float32)
        offset = int(rng.integers(0, bank.size - n))
        noise = bank[offset: offset + n].reshape(mode.size[1], mode.size[0])
        return self._render_still(mode, exposure_us, gain, sim_time, rng, noise=noise)

    def _render_still(self, m: SensorMode, t_us: float, gain: float, sim_time: float,
                      rng: np.random.Generator, noise: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """The raw mosaic of mode `m` exposed for t_us at `gain`: the same physics as `_render` (full-well
        saturation, Gaussian shot + read noise, conversion gain, pedestal, rounding, clipping at the mode's bit
        depth) on the mode's own maps, with fresh noise. Returns (raw uint16, black level of the mode)."""
        s = self._sensor
        bits = m.bit_depth
        white = 2**bits - 1
        black = s.black_level >> (s.bit_depth - bits) if bits < s.bit_depth else s.black_level
        cg = (white - black) / s.full_well_e
        maps = self._still_maps(m)
        rate = maps["base"].copy()
        moving = maps["scene"].moving(sim_time)
        if moving is not None:
            reg, refl = moving
            sites = maps["site_map"][reg.y0 : reg.y1, reg.x0 : reg.x1]
            r = np.take_along_axis(refl, sites[None].astype(np.intp), axis=0)[0]
            rate[reg.y0 : reg.y1, reg.x0 : reg.x1] = r * maps["factor"][reg.y0 : reg.y1, reg.x0 : reg.x1]
        e = rate  # in place from here: expected electrons, saturating at full well
        np.multiply(e, np.float32(t_us), out=e)
        np.minimum(e, np.float32(s.full_well_e), out=e)
        sigma = np.add(e, np.float32(s.read_noise_e**2))
        np.sqrt(sigma, out=sigma)
        if noise is None:
            work = rng.standard_normal(e.shape, dtype=np.float32)
            np.multiply(work, sigma, out=work)
        else:  # standard normals given (not modified)
            work = np.multiply(noise, sigma)
        del sigma
        np.add(work, e, out=work)
        np.multiply(work, np.float32(cg * gain), out=work)
        np.add(work, np.float32(black + 0.5), out=work)
        np.clip(work, 0.0, np.float32(white), out=work)
        return work.astype(np.uint16), black

    def _still_maps(self, m: SensorMode) -> dict[str, Any]:
        """The static maps of a still's mode, cached (building them costs more than rendering a frame)."""
        key = (m, self.scene_kind, self.colour_temperature, self.lux, self.corner_shading, tuple(self.optical_centre))
        cached = getattr(self, "_still_cache", None)
        if cached is None or cached[0] != key:
            if self._mode == m:  # the stream runs in this mode: its maps are the same
                maps = {"site_map": self._site_map, "shading": self._shading, "scene": self._scene,
                        "factor": self._factor, "base": self._base_rate}
            else:
                maps = self._mode_rate_maps(m)
            maps.pop("shading")
            cached = (key, maps)
            self._still_cache = cached
        return cached[1]

    # ================================================================ IPA (AGC / AWB)
    def _site_means(self, raw: np.ndarray, black: int | None = None, white: int | None = None) -> np.ndarray:
        """Black-subtracted, normalised (white = 1) means of R, G, B from a sparse subsample."""
        black = self._black if black is None else black
        white = self._white if white is None else white
        sums = np.zeros(3)
        counts = np.zeros(3)
        for dy in (0, 1):
            for dx in (0, 1):
                c = self._sites[dy, dx]
                sums[c] += float(raw[dy::16, dx::16].mean())
                counts[c] += 1
        if counts[0] == 0:  # monochrome: every site is the one panchromatic channel
            sums[:] = sums[1]
            counts[:] = counts[1]
        return (sums / counts - black) / (white - black)

    def _run_ipa(self, stats: np.ndarray, lines: int, duration: float) -> None:
        m, s = self._mode, self._sensor
        with self._ctl_lock:
            if self._awb and stats[1] > 0.002 and stats[0] > 0.0005 and stats[2] > 0.0005:
                r = float(np.clip(stats[1] / stats[0], 0.25, 8.0))
                b = float(np.clip(stats[1] / stats[2], 0.25, 8.0))
                cr, cb = self._colour_gains
                if abs(r / cr - 1) > 0.003 or abs(b / cb - 1) > 0.003:
                    self._colour_gains = (r, b)  # ISP control: in force from the next frame
            if not (self._ae_exposure or self._ae_gain):
                return
            cr, cb = self._colour_gains
            y = 0.299 * stats[0] * cr + 0.587 * stats[1] + 0.114 * stats[2] * cb
            ratio = AGC_TARGET / max(y, 1e-4)
            ratio = min(max(ratio, 0.3 if y > 0.8 else 0.5), 8.0)
            if abs(ratio - 1) < 0.03:
                self._ae_state = 2
                return
            self._ae_state = 1
            if any(kind in ("exp", "gain") for _, kind, _ in self._pending):
                return  # a change is on its way: wait to see it before correcting again
            total = lines * m.line_time_us * self._gain * ratio
            max_exp = min(self._limits[1], AGC_MAX_EXPOSURE_US)
            if self._ae_exposure:
                exp = total / self._gain if not self._ae_gain else min(total, max_exp)
                exp = min(max(exp, s.exposure_min_us), max_exp)
                self._queue("exp", s.exposure_lines(exp, m), s.exposure_delay)
            else:
                exp = lines * m.line_time_us
            if self._ae_gain:
                self._queue("gain", s.quantise_gain(min(max(total / exp, s.gain_min), s.gain_max)), s.gain_delay)

    def _estimate_ct(self, gains: tuple[float, float]) -> float:
        """The colour temperature whose neutral gains are nearest the gains in force (AWB's estimate)."""
        if not hasattr(self, "_ct_table"):
            cts = np.arange(2000.0, 10001.0, 100.0)
            self._ct_table = (cts, np.array([neutral_colour_gains(c) for c in cts]))
        cts, g = self._ct_table
        d = (np.log(g[:, 0]) - math.log(max(gains[0], 1e-3))) ** 2 + (np.log(g[:, 1]) - math.log(max(gains[1], 1e-3))) ** 2
        return float(cts[int(np.argmin(d))])

    def _estimate_lux(self, stats: np.ndarray, exposure_us: int, gain: float | None = None) -> float:
        """Rough lux from the green level, exposure and gain (assumes an 18 % grey scene on average)."""
        g = max(float(stats[1]), 0.0) * self._sensor.full_well_e  # electrons (white − black ↦ full well)
        per_us = g / max(exposure_us * (self._gain if gain is None else gain), 1e-6)
        full_rate = self._sensor.full_well_e / _REF_TIME_US
        return round(per_us / full_rate * _REF_LUX / 0.18, 1)
