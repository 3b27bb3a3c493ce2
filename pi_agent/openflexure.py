"""The OpenFlexure picamera2 calibration API, as a drop-in, implemented with picamlink's calibration.

Users of the OpenFlexure microscope's `picamera_recalibrate_utils` (openflexure-microscope-server,
`things/camera/picamera_recalibrate_utils.py`; labthings-picamera2 `recalibrate_utils.py`) call these names on
their own `Picamera2` object. The signatures are theirs; the work is ours: exposure from one unclipped
measurement with a noise model and metadata-confirmed frames (no fixed pauses), white balance from
black-subtracted raw means with the lens shading in force accounted for, and a lens shading table fitted for the
ISP's interpolation over the whole pixel array. The seed's example:

    picamera = picamera2.Picamera2()
    sensor_info = IMX219_SENSOR_INFO
    adjust_shutter_and_gain_from_raw(picamera, sensor_info,
                                     target_white_level=sensor_info.default_target_white_level)
    adjust_white_balance_from_raw(picamera, sensor_info)
    lst = lst_from_camera(picamera, sensor_info)
    picamera.lens_shading_table = lst      # picamera2 has no such attribute: this does nothing

runs unchanged against this module; its last line is replaced by `apply_lens_shading_table(picamera, lst)`,
which rewrites rpi.alsc, recreates the CameraManager and reopens THE SAME Picamera2 object with the new tuning
(so `picamera` keeps working, with the table in force), keeping exposure, gain and white balance.

Differences a user should know: the functions configure the camera in the sensor's smallest full-field mode
(IMX219 1640x1232), not a full-resolution still (same field of view, a quarter of the pixels, the same exposure
in µs); a target that cannot be calibrated raises (RuntimeError for exposure that does not converge, as the
FAST-OFM fork does; ValueError for a bad target: non-uniform, too dark, clipped, too coloured) instead of
returning a wrong value; `adjust_white_balance_from_raw` measures the table really in force, so its
`luminance`/`Cr`/`Cb` arguments are accepted and not needed; `lst_from_camera` returns Cr and Cb normalised to a
minimum of 1 (libcamera divides by the minimum anyway).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import weakref
from typing import Any, Literal, Optional

import numpy as np

from .calibration.exposure import ExposureSettings, calibrate_exposure
from .calibration.frames import CalibrationError, CameraFrameSource, SensorControls, settle
from .calibration.lens_shading import (average_white, fit_gains, full_field_source, isp_extent, kept_colour_gains,
                                       tables_from_gains)
from .calibration.white_balance import calibrate_white_balance
from .camera.base import CameraError, LensShadingTable
from .camera.picamera2_backend import Picamera2Camera, _fresh_camera_manager
from .camera.tuning import GRIDS, MAX_GAIN

log = logging.getLogger(__name__)

LensShadingTables = tuple[np.ndarray, np.ndarray, np.ndarray]
"""(luminance, Cr, Cb), each (rows, columns): (12, 16) on a Pi 4, (32, 32) on a Pi 5."""


@dataclasses.dataclass(frozen=True)
class SensorInfo:
    """Information about the sensor used for calibration (the OpenFlexure fields and values).

    blacklevel and bit_depth are only defaults: the black level and depth of the frames themselves are used.
    short_pause / long_pause are kept for compatibility and not used: frames are taken when their metadata
    shows the requested controls."""

    sensor_model: str
    unpacked_pixel_format: str
    bit_depth: int
    blacklevel: int
    default_target_white_level: int
    short_pause: float
    long_pause: float


IMX219_SENSOR_INFO = SensorInfo(sensor_model="imx219", unpacked_pixel_format="SBGGR10", bit_depth=10, blacklevel=64,
                                default_target_white_level=400, short_pause=0.2, long_pause=0.5)
IMX477_SENSOR_INFO = SensorInfo(sensor_model="imx477", unpacked_pixel_format="SBGGR12", bit_depth=12, blacklevel=256,
                                default_target_white_level=1600, short_pause=0.2, long_pause=1.0)


class _OwnPicamera2:
    """Stands for the Picamera2 class inside the backend: "opening a camera" hands back the caller's object,
    re-initialised with the new tuning when the backend closed it to reload the tuning. Everything else
    (the class's _cm, load_tuning_file, ...) is the real class's."""

    def __init__(self, cls, obj):
        object.__setattr__(self, "_cls", cls)
        object.__setattr__(self, "_obj", obj)

    def __call__(self, camera_num: int = 0, tuning=None):
        obj = self._obj
        if not getattr(obj, "is_open", False):
            obj.__init__(camera_num, tuning=tuning)  # the same object, opened afresh (picamera2 __init__)
        return obj

    def __getattr__(self, name):
        return getattr(self._cls, name)

    def __setattr__(self, name, value):
        setattr(self._cls, name, value)

    def __delattr__(self, name):
        delattr(self._cls, name)


class _OwnModule:
    """The picamera2 module as the backend sees it: Picamera2 is _OwnPicamera2 around the caller's object."""

    def __init__(self, module, obj):
        self._module = module
        self.Picamera2 = _OwnPicamera2(module.Picamera2, obj)

    def __getattr__(self, name):
        return getattr(self._module, name)


class _UserCamera(Picamera2Camera):
    """picamlink's Picamera2 backend driving the caller's own Picamera2 object: reopening it (for a new tuning)
    re-initialises that same object, so the caller's variable stays the camera in use."""

    def __init__(self, picam2, module):
        if getattr(picam2, "started", False):
            picam2.stop()  # sensor_modes (read when opening) configures every mode: not while started
        self._white: tuple[np.ndarray, Any] | None = None  # the last white target averaged by lst_from_camera
        super().__init__(camera_num=int(getattr(picam2, "camera_idx", 0)), picamera2_module=_OwnModule(module, picam2))


_BACKENDS: "weakref.WeakKeyDictionary[Any, _UserCamera]" = weakref.WeakKeyDictionary()


def _picamera2_module(camera):
    return sys.modules[type(camera).__module__.split(".")[0]]


def _backend(camera) -> _UserCamera:
    """The backend around `camera`, configured in the sensor's smallest full-field mode and started."""
    backend = _BACKENDS.get(camera)
    if backend is None or backend._cam is not camera or not getattr(camera, "is_open", False):
        backend = _UserCamera(camera, _picamera2_module(camera))
        _BACKENDS[camera] = backend
    if backend._config_args is None or not backend._started:
        sensor = backend._camera_sensor  # the modes the camera lists
        mode = min((m for m in sensor.modes if sensor.full_field(m)), key=lambda m: m.size[0] * m.size[1])
        backend.stop()
        backend.configure((mode.size[0] // 2 // 2 * 2, mode.size[1] // 2 // 2 * 2), 0.0, mode.size)
        backend.start()
    return backend


def _check_sensor(backend: _UserCamera, sensor_info: SensorInfo) -> None:
    if sensor_info.sensor_model.lower() != backend._model.lower():
        log.warning("sensor_info is for %s but the camera is %s: using the camera's own facts",
                    sensor_info.sensor_model, backend._model)


def adjust_shutter_and_gain_from_raw(camera, sensor_info: SensorInfo, target_white_level: Optional[int] = None,
                                     max_iterations: int = 20, tolerance: float = 0.05,
                                     percentile: float = 99.9) -> float:
    """Set ExposureTime and AnalogueGain (AeEnable off) so the raw `percentile` reaches `target_white_level`.

    target_white_level: raw level WITH the black level pedestal, as in the OpenFlexure code (None: the sensor
    info's default). Returns the level reached (raw units, pedestal included). Raises ValueError for a target
    that a clipped image would meet, RuntimeError when it does not converge (too dark at the maximum exposure
    and gain, too bright at the minimum) — the published routine only logged a warning."""
    target = sensor_info.default_target_white_level if target_white_level is None else target_white_level
    max_level = 2**sensor_info.bit_depth - 1 - sensor_info.blacklevel
    if target * (tolerance + 1) >= max_level:
        raise ValueError("The target level is too high - a saturated image would be considered successful. "
                         f"target_white_level * (tolerance + 1) must be less than {max_level}.")
    backend = _backend(camera)
    _check_sensor(backend, sensor_info)
    settings = ExposureSettings(target=float(target), tolerance=tolerance, percentile=percentile,
                                max_measurements=max(1, int(max_iterations)))
    try:
        report = calibrate_exposure(CameraFrameSource(backend), settings)
    except CalibrationError as exc:
        raise ValueError(str(exc)) from None
    if not report["converged"]:
        raise RuntimeError(f"Failed to reach target brightness of {target}: {report['reason'].replace('_', ' ')}, "
                           f"brightness reached {report['level'] + report['black_level']:.1f} after "
                           f"{report['measurements']} measurements.")
    return float(report["level"] + report["black_level"])


def adjust_white_balance_from_raw(camera, sensor_info: SensorInfo, percentile: float = 99,
                                  luminance: Optional[np.ndarray] = None, Cr: Optional[np.ndarray] = None,
                                  Cb: Optional[np.ndarray] = None, luminance_power: float = 1.0,
                                  method: Literal["percentile", "centre"] = "centre") -> tuple[float, float]:
    """Set ColourGains (AwbEnable off) from black-subtracted raw means; returns (red gain, blue gain).

    method "centre": the middle 20 % × 20 %; "percentile" (the whole field in the seed): the whole field,
    which then needs a lens shading table in force (else colour shading makes it non-uniform and it is
    refused). The lens shading table really in force is accounted for, so luminance/Cr/Cb/luminance_power
    are accepted for compatibility and not needed; `percentile` is not used (means are less noisy).
    Raises ValueError for a target that is non-uniform, too dark, clipped or too coloured."""
    backend = _backend(camera)
    _check_sensor(backend, sensor_info)
    if luminance is not None or Cr is not None or Cb is not None:
        log.info("adjust_white_balance_from_raw: the table in force is used, the given tables are not needed")
    try:
        report = calibrate_white_balance(CameraFrameSource(backend), region="centre" if method == "centre" else "flat")
    except CalibrationError as exc:
        raise ValueError(str(exc)) from None
    return float(report["colour_gains"][0]), float(report["colour_gains"][1])


def lst_from_camera(camera, sensor_info: SensorInfo) -> LensShadingTables:
    """Average white frames of a uniform white target and fit (luminance, Cr, Cb) for the ISP that will apply
    them (grid of the camera's platform, gains within its limit). Nothing is applied: pass the result to
    apply_lens_shading_table. Raises ValueError for a bad target or a shading the ISP cannot hold."""
    backend = _backend(camera)
    _check_sensor(backend, sensor_info)
    target = backend.tuning_target
    grid, limit = GRIDS[target], MAX_GAIN[target]
    source, _ = full_field_source(CameraFrameSource(backend))
    try:
        mean_raw, last = average_white(source)
        extent = isp_extent(backend, (mean_raw.shape[1], mean_raw.shape[0]))
        t = fit_gains(mean_raw, last.bayer_order, last.black_level, grid, extent)
        table, clamped = tables_from_gains(t["R"], t["G"], t["B"], grid, limit)
    except CalibrationError as exc:
        raise ValueError(str(exc)) from None
    if clamped is not None:
        raise ValueError(f"the lens shading needs gains up to {clamped['max_gain']:g}; this ISP holds {limit:g}")
    backend._white = (mean_raw, last)
    return table.luminance.copy(), table.cr.copy(), table.cb.copy()


def apply_lens_shading_table(camera, lst: LensShadingTables, colour_temperature: int = 5000) -> dict[str, Any]:
    """Put (luminance, Cr, Cb) in force on `camera` — what `camera.lens_shading_table = lst` never did.

    Rewrites rpi.alsc of the camera's tuning (static: n_iter 0, strength 1), recreates the CameraManager and
    re-initialises the same Picamera2 object with it; exposure, gain and colour gains stay as requested. When
    manual colour gains are in force they are rescaled for the new table's Cr/Cb normalisation, so an earlier
    white balance stays neutral. Returns {"colour_gains_before", "colour_gains"} (or {} without manual gains)."""
    backend = _backend(camera)
    lum, cr, cb = (np.asarray(a, dtype=np.float64) for a in lst)
    table = LensShadingTable(grid=(lum.shape[1], lum.shape[0]), luminance=lum, cr=cr, cb=cb,
                             colour_temperature=int(colour_temperature))
    kept = None
    if backend._white is not None:
        mean_raw, frame = backend._white
        kept = kept_colour_gains(backend, mean_raw, frame, table, "centre")
    backend.apply_lens_shading(table)
    if kept is None:
        return {}
    gains = tuple(kept["colour_gains"])
    backend.set_controls({"AwbEnable": False, "ColourGains": gains})
    settle(CameraFrameSource(backend), {"ColourGains": gains}, SensorControls(backend))
    return {"colour_gains_before": kept["colour_gains_before"], "colour_gains": list(gains)}


def recreate_camera_manager() -> None:
    """Delete and recreate picamera2's CameraManager, so the next camera opened reads its tuning afresh
    (picamera2 #886). Refused (RuntimeError) while a camera of this process is open."""
    import picamera2  # noqa: PLC0415 - Pi-only

    try:
        _fresh_camera_manager(picamera2)
    except CameraError as exc:
        raise RuntimeError(str(exc)) from None
