"""The Raspberry Pi pipeline handler, IPA and sensor of the simulated libcamera: one `RPiCameraData` per camera.

Behaviour and where it comes from (raspberrypi/libcamera):
- sensor formats and modes: src/libcamera/pipeline/rpi/common/pipeline_base.cpp (`generateConfiguration` lists
  the sensor's media-bus codes as CSI2-packed formats with their sizes; `findBestFormat`/`scoreFormat` pick a
  mode; a mono sensor would load `<model>_mono.json`, `loadIPA`); modes and delays are the facts of
  pi_agent/camera/sensors.py (a table of published numbers, not an ISP helper);
- `validate`: pipeline_base.cpp `RPiCameraConfiguration::validate` (sensor configuration must match a mode
  exactly, the transform combined with the module's Rotation, the raw stream's Bayer order from that combined
  transform) and the platform part: src/libcamera/pipeline/rpi/vc4/vc4.cpp `platformValidate` (raw at the mode's
  depth, CSI2-packed or unpacked, outputs bounded by output 0) and pisp/pisp.cpp `platformValidate` (raw always
  16-bit: unpacked `S<order>16` or `<order>_PISP_COMP1` for a packed request); strides padded to 32 bytes (VC4)
  or 64 bytes (PiSP), as picamera2's `align_stream` says the hardware does;
- `configure`: the ISP crop of each output = the mode bounded to the output's aspect ratio, centred
  (vc4.cpp `platformConfigure`, pisp.cpp `platformConfigure`), reported as ScalerCrop in sensor coordinates
  (`scaleIspCrop`, `fillRequestMetadata`); control limits for the mode (src/ipa/rpi/common/ipa_base.cpp
  `configure`); rpi.alsc tables resampled to the mode (see _isp.py);
- requests: `queueRequestDevice`, frames completed in order at the frame duration through the manager's event fd
  (src/py/libcamera/py_camera_manager.cpp); startup frames flagged non-Success after a cold start
  (ipa_base.cpp `start`: mistrusted frames + AGC/AWB convergence frames, none when exposure and gain are
  manual; cam_helper.cpp), frames without a queued request dropped;
- controls: src/libcamera/camera.cpp `patchControlList` turns AeEnable into ExposureTimeMode/AnalogueGainMode
  unless the request sets those itself; ipa_base.cpp `applyControls` handles the modes first, ignores a manual
  ExposureTime/AnalogueGain while that mode is Auto, turns AWB manual for non-zero ColourGains (auto for 0);
  sensor values reach the sensor through DelayedControls with the sensor's delays
  (pipeline/rpi/common/delayed_controls.cpp), so metadata reports the values really in force for each frame.
"""

from __future__ import annotations

import collections
import logging
import math
import mmap
import threading
import time
import weakref

import numpy as np

from pi_agent.camera.scene import neutral_colour_gains
from pi_agent.camera.sensors import SensorMode
from pi_agent.camera.sim import SimulatedCamera

from . import _isp
from ._controls import ControlInfo, controls, properties
from ._geometry import ORIENTATION_FLIPS, Orientation, PixelFormat, Rectangle, Size

log = logging.getLogger(__name__)
_GAIN_MAPS: dict = {}  # per-pixel hardware gain maps by (platform, mode size, order, tables): costly to rebuild

RAW_DEFAULT_BIT_DEPTH = 12  # pipeline_base.cpp defaultRawBitDepth
OUTPUT_FORMATS = {"YUV420": 1, "YVU420": 1, "NV12": 1, "NV21": 1, "RGB888": 3, "BGR888": 3, "XRGB8888": 4,
                  "XBGR8888": 4}
STRIDE_ALIGN = {"vc4": 32, "pisp": 64}
AGC_TARGET_Y = 0.16  # rpi.agc's default "y_target" (about 16 % of white for a mid-grey scene)
AGC_MAX_EXPOSURE_US = 66_666  # rpi.agc "normal" exposure mode's longest shutter
CONVERGENCE_FRAMES = {"agc": 6, "awb": 3}  # agc_channel.cpp / awb.cpp "convergence_frames" defaults
MISTRUST_FRAMES_STARTUP = 1  # cam_helper.cpp mistrustFramesStartup


def hflip_order(order: str) -> str:
    if order == "MONO":  # no colour cell: flips change nothing
        return order
    return order[1] + order[0] + order[3] + order[2]


def vflip_order(order: str) -> str:
    if order == "MONO":
        return order
    return order[2] + order[3] + order[0] + order[1]


def flipped_order(order: str, hflip: bool, vflip: bool) -> str:
    if hflip:
        order = hflip_order(order)
    if vflip:
        order = vflip_order(order)
    return order


def align(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def parse_raw(name: str) -> tuple[str, int, str]:
    """(order, bit depth, packing "" | "CSI2P" | "PISP_COMP1") of a raw pixel format name (order MONO for R*)."""
    if name.endswith("_PISP_COMP1"):
        return name[:4], 16, "PISP_COMP1"
    packing = ""
    if name.endswith("_CSI2P"):
        name, packing = name[:-6], "CSI2P"
    if name.startswith("R") and name[1:].isdigit():  # mono: R8, R10, R12, R16 (src/libcamera/formats.yaml)
        return "MONO", int(name[1:]), packing
    if not (name.startswith("S") and name[1:5].isalpha()):
        raise ValueError(name)
    return name[1:5], int(name[5:]), packing


def is_raw(name: str) -> bool:
    try:
        parse_raw(name)
        return True
    except (ValueError, IndexError):
        return False


def raw_bytes_per_line(name: str, width: int) -> int:
    order, bits, packing = parse_raw(name)
    if packing == "PISP_COMP1":
        return width
    if packing == "CSI2P":
        return width * bits // 8
    return width * (1 if bits == 8 else 2)


class StreamParams:
    def __init__(self, index: int, cfg):
        self.index, self.cfg = index, cfg


class RPiCameraData:
    """Sensor + pipeline handler + IPA + ISP of one camera, as one manager's libcamera sees it."""

    def __init__(self, manager, index: int, module, machine, tuning: dict, tuning_source: str):
        self._manager = weakref.ref(manager)  # the C++ pipeline outlives no manager: no strong reference
        self.index = index
        self.module = module
        self.machine = machine
        self.platform = machine.platform
        self.sensor = module.info
        self.mono = self.sensor.is_mono  # pipeline_base.cpp isMonoSensor: the sensor's Bayer order is MONO
        self.rotation = module.rot
        rot = self.rotation == 180
        self.native_order = flipped_order(self.sensor.bayer_order, rot, rot)  # the readout without any flip
        self.tuning = tuning
        self.tuning_source = tuning_source
        grid = _isp.VC4_GRID if self.platform == "vc4" else _isp.PISP_GRID
        params = _isp.find_algo(tuning, "rpi.alsc")
        self.alsc = _isp.Alsc(params, grid) if params is not None else None
        self._physics: dict[SensorMode, SimulatedCamera] = {}  # one per mode: each caches its mode's maps
        self.rng = np.random.default_rng([module.seed, index])
        self.lock = threading.RLock()
        self.camera_state = "Available"  # camera.cpp: Available → Acquired → Configured → Running
        self.running = False
        self.first_start = True
        self.mode: SensorMode | None = None
        self.config = None
        self.queue: collections.deque = collections.deque()
        self.thread: threading.Thread | None = None
        self.stop_event = threading.Event()
        self.sequence = 0
        self.sim_time = 0.0
        self.last_raw: np.ndarray | None = None  # ground truth: the mosaic of the last completed frame
        self.raws: collections.OrderedDict = collections.OrderedDict()  # SensorTimestamp → mosaic, last 16 frames
        self.connected = True  # False: the sensor stops sending frames (a dislodged cable)
        self._lsc_key = None  # (mode size, gains) of the table the ISP should have; built when a frame needs it
        self.frames_dropped = 0
        self.configurations: list[dict] = []  # ground truth: every configuration applied, in order
        self._init_ipa_state()
        self.control_info = self._unconfigured_controls()

    def physics_for(self, mode: SensorMode | None) -> SimulatedCamera:
        """The simulator's sensor physics for `mode` (scene, illuminant, true lens shading, noise); one instance
        per mode, as each caches its mode's maps."""
        sim = self._physics.get(mode)
        if sim is None:
            m = self.module
            sim = self._physics[mode] = SimulatedCamera(
                sensor=self.sensor, scene=m.scene, colour_temperature=m.colour_temperature, seed=m.seed, pacing=False,
                corner_shading=m.corner_shading, lux=m.lux, optical_centre=m.optical_centre)
        return sim

    @property
    def physics(self) -> SimulatedCamera:
        """The sensor physics (any mode: `physics.true_shading(mode)`), for ground truth in tests."""
        return self.physics_for(None)

    def true_shading(self, mode: SensorMode | None = None) -> dict:
        """Ground truth: {"R", "G", "B": (h, w)} true lens shading of `mode` (default: the configured mode) in
        the simulator's upright orientation."""
        return self.physics.true_shading(mode or self.mode)

    # ================================================================ identity
    @property
    def id(self) -> str:
        if self.platform == "vc4":
            return f"/base/soc/i2c0mux/i2c@{self.index}/{self.sensor.model}@10"
        return f"/base/axi/pcie@1000120000/rp1/i2c@{88000 + 4000 * self.index:x}/{self.sensor.model}@1a"

    def properties(self) -> dict:
        fw, fh = self.sensor.full_array
        cfa = {"RGGB": 0, "GRBG": 1, "GBRG": 2, "BGGR": 3, "MONO": 5}[self.native_order]
        crop_max = Rectangle(*self.mode.crop) if self.mode else Rectangle()
        return {
            properties.Model: self.sensor.model,
            properties.Location: 2,
            properties.Rotation: self.rotation,
            properties.UnitCellSize: Size(self.sensor.unit_cell_nm, self.sensor.unit_cell_nm),
            properties.PixelArraySize: Size(fw, fh),
            properties.PixelArrayActiveAreas: (Rectangle(0, 0, fw, fh),),
            properties.ScalerCropMaximum: crop_max,
            properties.SensorSensitivity: 1.0,
            properties.SystemDevices: (20749, 20750, 20751),
            properties.draft.ColorFilterArrangement: cfa,
        }

    # ================================================================ controls
    def _unconfigured_controls(self) -> dict:
        """ipa_base.cpp ipaControls + ipaColourControls before configure()."""
        c = controls
        info = {
            c.AeEnable: ControlInfo(False, True, True),
            c.ExposureTimeMode: ControlInfo(0, 1, 0, values=[0, 1]),
            c.ExposureTime: ControlInfo(1, 66666, 20000),
            c.AnalogueGainMode: ControlInfo(0, 1, 0, values=[0, 1]),
            c.AnalogueGain: ControlInfo(1.0, 16.0, 1.0),
            c.AeMeteringMode: ControlInfo(0, 3, 0),
            c.AeConstraintMode: ControlInfo(0, 3, 0),
            c.AeExposureMode: ControlInfo(0, 3, 0),
            c.ExposureValue: ControlInfo(-8.0, 8.0, 0.0),
            c.Brightness: ControlInfo(-1.0, 1.0, 0.0),
            c.Contrast: ControlInfo(0.0, 32.0, 1.0),
            c.Sharpness: ControlInfo(0.0, 16.0, 1.0),
            c.ScalerCrop: ControlInfo(Rectangle(), Rectangle(65535, 65535, 65535, 65535), Rectangle()),
            c.FrameDurationLimits: ControlInfo(33333, 250000000, (33333, 33333)),
            c.draft.NoiseReductionMode: ControlInfo(0, 4, 0),
            c.AwbEnable: ControlInfo(False, True, None),
            c.AwbMode: ControlInfo(0, 7, 0),
            c.ColourGains: ControlInfo(0.0, 32.0, None),
            c.ColourTemperature: ControlInfo(100, 100000, None),
            c.Saturation: ControlInfo(0.0, 32.0, 1.0),
        }
        if self.mono:  # ipa_base.cpp: ipaColourControls are declared only for a sensor that is not mono
            for cid in (c.AwbEnable, c.AwbMode, c.ColourGains, c.ColourTemperature, c.Saturation):
                info.pop(cid)
        return info

    def _configured_controls(self) -> dict:
        m, s = self.mode, self.sensor
        info = self._unconfigured_controls()
        c = controls
        info[c.ExposureTime] = ControlInfo(s.quantise_exposure(0, m), int(s.exposure_max_us), 20000)
        info[c.AnalogueGain] = ControlInfo(float(np.float32(s.gain_min)), float(np.float32(s.gain_max)), 1.0)
        info[c.FrameDurationLimits] = ControlInfo(int(m.min_frame_duration_us), int(s.exposure_max_us),
                                                  (33333, 33333))
        crop0, min_size = self.isp_crops[0], self.isp_min_crop
        info[c.ScalerCrop] = ControlInfo(self.scale_isp_crop(Rectangle(0, 0, *min_size)), Rectangle(*m.crop),
                                         self.scale_isp_crop(crop0))
        if len(self.isp_crops) == 2:
            info[c.rpi.ScalerCrops] = ControlInfo(self.scale_isp_crop(self.isp_crops[0]),
                                                  self.scale_isp_crop(self.isp_crops[1]),
                                                  info[c.ScalerCrop].default)
        return info

    # ================================================================ modes
    def sensor_formats(self) -> dict[str, list[SensorMode]]:
        """{CSI2-packed format name: modes} as the pipeline lists the sensor's media-bus codes."""
        out: dict[str, list[SensorMode]] = {}
        for m in sorted(self.sensor.modes, key=lambda m: (m.bit_depth, m.size)):
            name = f"R{m.bit_depth}_CSI2P" if self.mono else f"S{self.native_order}{m.bit_depth}_CSI2P"
            out.setdefault(name, []).append(m)
        return out

    def find_best_mode(self, req: Size, bit_depth: int) -> SensorMode:
        """pipeline_base.cpp findBestFormat / scoreFormat."""
        def score_format(desired, actual):
            score = desired - actual
            if score < 0:
                score = -score / 8
            if actual != desired:
                score *= 2
            return score

        best, best_score = None, math.inf
        for modes in self.sensor_formats().values():
            for m in modes:
                w, h = m.size
                score = score_format(req.width, w) + score_format(req.height, h)
                score += 1500.0 * score_format(req.width / req.height, w / h)
                score += abs(m.bit_depth - bit_depth) * 500.0
                if score <= best_score:
                    best, best_score = m, score
        return best

    # ================================================================ validate
    def combined_flips(self, orientation: Orientation) -> tuple[bool, bool]:
        h, v, _ = ORIENTATION_FLIPS[orientation]
        rot = self.rotation == 180
        return bool(h) ^ rot, bool(v) ^ rot

    def validate(self, config) -> str:
        """RPiCameraConfiguration::validate + platformValidate. Returns "Valid" | "Adjusted" | "Invalid"."""
        from ._libcamera import CameraConfiguration

        Status = CameraConfiguration.Status
        if not config._configs:
            return Status.Invalid
        status = Status.Valid
        sc = config.sensor_config
        if sc is not None and (not sc.bit_depth or not sc.output_size.width or not sc.output_size.height):
            return Status.Invalid
        if ORIENTATION_FLIPS[config.orientation][2]:  # no transpose on these sensors: computeTransform drops it
            h, v, _ = ORIENTATION_FLIPS[config.orientation]
            config.orientation = next(o for o, f in ORIENTATION_FLIPS.items() if f == (h, v, 0))
            status = Status.Adjusted
        raws = [c for c in config._configs if is_raw(str(c.pixel_format))]
        outs = [c for c in config._configs if not is_raw(str(c.pixel_format))]
        raws.sort(key=lambda c: (c.size.width, c.size.height), reverse=True)
        outs.sort(key=lambda c: (c.size.width, c.size.height), reverse=True)
        if len(raws) > 1 or len(outs) > 2:
            return Status.Invalid
        if sc is not None:
            bit_depth, sensor_size = sc.bit_depth, sc.output_size
        elif raws:
            bit_depth, sensor_size = parse_raw(str(raws[0].pixel_format))[1], raws[0].size
        else:
            bit_depth, sensor_size = RAW_DEFAULT_BIT_DEPTH, outs[0].size
        mode = self.find_best_mode(sensor_size, bit_depth)
        if sc is not None and (mode.bit_depth != sc.bit_depth or Size(*mode.size) != sc.output_size):
            log.error("Invalid sensor configuration: bitDepth/size mismatch")
            return Status.Invalid
        hflip, vflip = self.combined_flips(config.orientation)
        order = flipped_order(self.native_order, hflip, vflip)
        align_to = STRIDE_ALIGN[self.platform]
        for raw in raws:
            _, bits, packing = parse_raw(str(raw.pixel_format))
            if self.platform == "vc4":
                bits = mode.bit_depth
                packing = packing if packing in ("", "CSI2P") else "CSI2P"
                if bits in (8, 16):
                    packing = ""
                name = (f"R{bits}" if self.mono else f"S{order}{bits}") + ("_CSI2P" if packing else "")
            else:
                name = f"{order}_PISP_COMP1" if packing else ("R16" if self.mono else f"S{order}16")
            if str(raw.pixel_format) != name or raw.size != Size(*mode.size):
                raw.pixel_format, raw.size = PixelFormat(name), Size(*mode.size)
                status = Status.Adjusted
            stride = align(raw_bytes_per_line(name, mode.size[0]), align_to)
            if raw.stride and raw.stride != stride:
                status = Status.Adjusted
            raw.stride, raw.frame_size = stride, stride * mode.size[1]
        for i, out in enumerate(outs):
            fmt = str(out.pixel_format)
            if fmt not in OUTPUT_FORMATS:
                out.pixel_format, fmt = PixelFormat("YUV420"), "YUV420"
                status = Status.Adjusted
            w = min(out.size.width, outs[0].size.width)
            h = min(out.size.height, outs[0].size.height)
            if self.platform == "pisp":  # no more than 64x downscaling (pisp.cpp platformValidate)
                bounded = Size(*mode.size).bounded_to_aspect_ratio(Size(w, h))
                min_w = ((bounded.width + 63) // 64 + 1) & ~1
                min_h = ((bounded.height + 63) // 64 + 1) & ~1
                w, h = max(w, min_w), max(h, min_h)
            w, h = w & ~1, h & ~1
            if Size(w, h) != out.size:
                out.size = Size(w, h)
                status = Status.Adjusted
            bpp = OUTPUT_FORMATS[fmt]
            if bpp == 1:  # planar YUV: picamera2's align_stream doubles the alignment for the luma plane
                stride = align(w, 2 * align_to)
                frame_size = stride * h * 3 // 2
            else:
                stride = align(w * bpp, align_to)
                frame_size = stride * h
            if out.stride and out.stride != stride:
                status = Status.Adjusted
            out.stride, out.frame_size = stride, frame_size
        config._validated = (mode, (hflip, vflip), order, raws, outs)
        return status

    # ================================================================ configure
    def configure(self, config) -> None:
        from ._libcamera import CameraConfiguration, Stream

        if self.validate(config) != CameraConfiguration.Status.Valid:
            raise RuntimeError("Failed to configure camera: Invalid argument")
        mode, flips, order, raws, outs = config._validated
        self.mode, self.flips, self.order = mode, flips, order
        self.config = config
        self.configurations.append({"sensor": {"bit_depth": mode.bit_depth, "output_size": tuple(mode.size)},
                                    **{("raw" if c in raws else f"out{outs.index(c)}"): {
                                        "format": str(c.pixel_format), "size": (c.size.width, c.size.height),
                                        "stride": c.stride, "frame_size": c.frame_size} for c in config._configs}})
        for cfg in config._configs:
            cfg._stream = Stream(cfg)
        self.raw_cfg = raws[0] if raws else None
        self.out_cfgs = outs
        mw, mh = mode.size
        # the ISP crop: vc4 one crop from the largest output; pisp one per output (aspect ratio kept)
        sizes = [(c.size.width, c.size.height) for c in outs] or [(mw, mh)]
        crops = []
        for i, (w, h) in enumerate(sizes):
            ref = sizes[0] if self.platform == "vc4" else (w, h)
            b = Size(mw, mh).bounded_to_aspect_ratio(Size(*ref))
            r = b.centered_to(mw / 2, mh / 2)
            crops.append(Rectangle(r.x & ~1, r.y & ~1, b.width & ~1, b.height & ~1))
        self.isp_crops = crops
        self.isp_min_crop = (16, 16) if self.platform == "vc4" else (32, 32)
        self.control_info = self._configured_controls()
        bits = mode.bit_depth
        s = self.sensor
        self.black = s.black_level >> (s.bit_depth - bits) if bits < s.bit_depth else s.black_level
        self.isp = _isp.IspPipeline(self.tuning, bits, self.black, order,
                                    [c.as_tuple() for c in crops], sizes)
        self.camera_mode = _isp.CameraMode(s.full_array, mode.crop, mode.size, *self._user_flips(config))
        self._switch_mode_ipa()

    def _user_flips(self, config) -> tuple[bool, bool]:
        h, v, _ = ORIENTATION_FLIPS[config.orientation]
        return bool(h), bool(v)

    def scale_isp_crop(self, crop: Rectangle) -> Rectangle:
        """pipeline_base.cpp scaleIspCrop: ISP (mode pixel) coordinates → native sensor coordinates."""
        cx, cy, cw, ch = self.mode.crop
        native = crop.scaled_by(Size(cw, ch), Size(*self.mode.size))
        return native.translated_by(cx, cy)

    # ================================================================ IPA state
    def _init_ipa_state(self) -> None:
        self.exposure_auto = True
        self.gain_auto = True
        self.awb_auto = not self.sensor.is_mono  # a mono tuning has no rpi.awb
        self.manual_exposure_us: float | None = None
        self.manual_gain: float | None = None
        self.manual_colour_gains: tuple[float, float] | None = None
        self.frame_limits = (33333, 33333)
        self.agc_exposure_us = 20000.0  # what AGC (or manual) wants on the sensor
        self.agc_gain = 1.0
        self.awb_gains = (1.0, 1.0)
        self.ae_state = 1
        self.pending: list[tuple[int, int, str, float]] = []  # DelayedControls: (effective frame, push, name, value)
        self._push_count = 0
        self.in_force = {"exposure_lines": None, "gain": 1.0, "frame_duration": 33333.0}

    def _switch_mode_ipa(self) -> None:
        """IpaBase::configure: mode limits; the sensor starts from the values AGC holds."""
        s, m = self.sensor, self.mode
        self.pending.clear()
        self.in_force["exposure_lines"] = s.exposure_lines(min(self.agc_exposure_us, self._max_exposure()), m)
        self.in_force["gain"] = s.quantise_gain(self.agc_gain)
        self.in_force["frame_duration"] = self._frame_duration(self.in_force["exposure_lines"] * m.line_time_us)
        self._update_lens_shading()

    def _update_lens_shading(self) -> None:
        """The IPA's tables for the mode (cheap); the per-pixel hardware map is built when a frame needs it."""
        if self.alsc is None:
            self._lsc_key = None
            self.isp.set_lens_shading(None)
            return
        gains = self.alsc.gains_for_mode(self.colour_temperature(), self.camera_mode)
        self._lsc_key = (self.platform, tuple(self.mode.size), self.order, gains.tobytes(), gains.shape)
        self._lsc_gains = gains

    @property
    def lens_shading_in_force(self) -> np.ndarray | None:
        """(3, h, w) per-pixel R, G, B gains the ISP applies now (None: no rpi.alsc in the tuning)."""
        if self._lsc_key is None:
            return None
        per_pixel = _GAIN_MAPS.get(self._lsc_key)
        if per_pixel is None:
            per_pixel = _isp.hardware_gain_map(self._lsc_gains, self.mode.size, self.platform)
            while len(_GAIN_MAPS) >= 6:
                _GAIN_MAPS.pop(next(iter(_GAIN_MAPS)))
            _GAIN_MAPS[self._lsc_key] = per_pixel
        if self.isp.lsc_key != self._lsc_key:
            self.isp.set_lens_shading(per_pixel)
            self.isp.lsc_key = self._lsc_key
        return per_pixel

    def colour_temperature(self) -> float:
        gains = self.manual_colour_gains if not self.awb_auto and self.manual_colour_gains else self.awb_gains
        return _ct_of_gains(gains)

    def _max_exposure(self) -> float:
        return float(self.frame_limits[1])

    def _frame_duration(self, exposure_us: float) -> float:
        lo, hi = self.frame_limits
        lo = max(lo, self.mode.min_frame_duration_us)
        return float(min(max(lo, exposure_us + 2 * self.mode.line_time_us), max(hi, lo)))

    def apply_controls(self, ctrls: dict, frame: int) -> None:
        """ipa_base.cpp applyControls for the request of `frame` (AeEnable already patched by Camera)."""
        c = controls
        s, m = self.sensor, self.mode
        if c.AnalogueGainMode in ctrls:
            self.gain_auto = int(ctrls[c.AnalogueGainMode]) == 0
        if c.ExposureTimeMode in ctrls:
            self.exposure_auto = int(ctrls[c.ExposureTimeMode]) == 0
        if c.AwbEnable in ctrls:
            self.awb_auto = bool(ctrls[c.AwbEnable])
            if not self.awb_auto and self.manual_colour_gains is None:
                self.manual_colour_gains = self.awb_gains  # disableAuto freezes the gains in force
        if c.ColourGains in ctrls:
            r, b = ctrls[c.ColourGains]
            if r != 0.0 and b != 0.0:
                self.manual_colour_gains = (float(r), float(b))
                self.awb_auto = False
            else:
                self.awb_auto = True
        if c.FrameDurationLimits in ctrls:
            lo, hi = (int(v) for v in ctrls[c.FrameDurationLimits])
            info = self.control_info[c.FrameDurationLimits]
            lo = min(max(lo, info.min), info.max)
            hi = min(max(hi, lo), info.max)
            self.frame_limits = (lo, hi)
        if c.ExposureTime in ctrls and not self.exposure_auto:
            info = self.control_info[c.ExposureTime]
            self.manual_exposure_us = float(min(max(int(ctrls[c.ExposureTime]), info.min), info.max))
        if c.AnalogueGain in ctrls and not self.gain_auto:
            info = self.control_info[c.AnalogueGain]
            self.manual_gain = float(min(max(float(ctrls[c.AnalogueGain]), info.min), info.max))
        if c.ScalerCrop in ctrls and self.out_cfgs:
            self._apply_scaler_crop(ctrls[c.ScalerCrop])
        # sensor values follow from the modes: manual values, or what AGC holds now
        if not self.exposure_auto and self.manual_exposure_us is not None:
            self.agc_exposure_us = self.manual_exposure_us
        if not self.gain_auto and self.manual_gain is not None:
            self.agc_gain = self.manual_gain
        if any(k in ctrls for k in (c.ExposureTime, c.AnalogueGain, c.ExposureTimeMode, c.AnalogueGainMode,
                                    c.FrameDurationLimits)):
            self._push_sensor(frame)
        if c.AwbEnable in ctrls or c.ColourGains in ctrls:
            self._update_lens_shading_if_ct_changed()

    def _update_lens_shading_if_ct_changed(self) -> None:
        if self.alsc is not None and (len(self.alsc.cr) > 1 or len(self.alsc.cb) > 1):
            self._update_lens_shading()

    def _apply_scaler_crop(self, native: Rectangle) -> None:
        """pipeline_base.cpp applyScalerCrop (one crop for all outputs)."""
        cx, cy, cw, ch = self.mode.crop
        if not native.width or not native.height:
            native = Rectangle(0, 0, 1, 1)
        isp = native.translated_by(-cx, -cy).scaled_by(Size(*self.mode.size), Size(cw, ch))
        mw, mh = self.mode.size
        w = min(max(isp.width, self.isp_min_crop[0]), mw)
        h = min(max(isp.height, self.isp_min_crop[1]), mh)
        x = min(max(int(isp.x + isp.width / 2 - w / 2), 0), mw - w)
        y = min(max(int(isp.y + isp.height / 2 - h / 2), 0), mh - h)
        crop = Rectangle(x & ~1, y & ~1, w & ~1, h & ~1)
        self.isp_crops = [crop] * len(self.isp_crops)
        self.isp.crops = [crop.as_tuple()] * len(self.isp.crops)

    def _push_sensor(self, frame: int) -> None:
        """Queue the sensor values AGC/manual want now; DelayedControls applies them with the sensor's delays
        (a later push overrides an earlier one only from its own effective frame on)."""
        s, m = self.sensor, self.mode
        exposure = min(self.agc_exposure_us, self._max_exposure())
        lines = s.exposure_lines(exposure, m)
        gain = s.quantise_gain(self.agc_gain)
        for delay, name, value in ((s.exposure_delay, "exposure_lines", lines), (s.gain_delay, "gain", gain),
                                   (s.vblank_delay, "frame_duration", self._frame_duration(lines * m.line_time_us))):
            self._push_count += 1
            self.pending.append((frame + delay, self._push_count, name, value))

    def _values_for_frame(self, frame: int) -> None:
        due = sorted(p for p in self.pending if p[0] <= frame)
        self.pending = [p for p in self.pending if p[0] > frame]
        for _, _, name, value in due:
            self.in_force[name] = value

    def _run_agc_awb(self, stats: np.ndarray, frame: int) -> None:
        """A simple AGC (exposure first, then gain, up to the 'normal' mode's shutter) and grey-world AWB."""
        if self.awb_auto and stats[1] > 0.002 and stats[0] > 0.0005 and stats[2] > 0.0005:
            self.awb_gains = (float(np.clip(stats[1] / stats[0], 0.25, 8.0)), float(np.clip(stats[1] / stats[2], 0.25, 8.0)))
        if not (self.exposure_auto or self.gain_auto):
            self.ae_state = 0
            return
        cr, cb = self.colour_gains()
        y = 0.299 * stats[0] * cr + 0.587 * stats[1] + 0.114 * stats[2] * cb
        ratio = AGC_TARGET_Y / max(y, 1e-4)
        ratio = min(max(ratio, 0.3 if y > 0.8 else 0.5), 8.0)
        converged = abs(ratio - 1) < 0.03
        self.ae_state = 2 if converged else 1
        if converged:
            ratio = 1.0
        if any(p[2] in ("exposure_lines", "gain") for p in self.pending):
            return  # let the change in flight show in the statistics first
        # rpi.agc divideUpExposure: the total exposure split as shutter first (up to the exposure mode's
        # longest), then gain — also when the level is right but the split is not (e.g. just back from manual)
        s, m = self.sensor, self.mode
        total = self.in_force["exposure_lines"] * m.line_time_us * self.in_force["gain"] * ratio
        longest = min(self._max_exposure(), AGC_MAX_EXPOSURE_US)
        exposure, gain = self.agc_exposure_us, self.agc_gain
        if self.exposure_auto:
            exposure = total / gain if not self.gain_auto else min(total, longest)
            exposure = min(max(exposure, s.exposure_min_us), longest)
        if self.gain_auto:
            gain = min(max(total / exposure, s.gain_min), s.gain_max)
        same = (s.exposure_lines(exposure, m) == self.in_force["exposure_lines"]
                and abs(s.quantise_gain(gain) - self.in_force["gain"]) < 1e-6)
        self.agc_exposure_us, self.agc_gain = exposure, gain
        if not same:
            self._push_sensor(frame)

    def colour_gains(self) -> tuple[float, float]:
        if not self.awb_auto and self.manual_colour_gains is not None:
            return self.manual_colour_gains
        return self.awb_gains

    # ================================================================ running
    def start(self, ctrls: dict) -> None:
        with self.lock:
            self.sequence = 0
            self.apply_controls(ctrls, 0)
            self._push_sensor(-100)  # start() writes the sensor before streaming: in force from frame 0
            self._values_for_frame(0)
            manual = not self.exposure_auto and not self.gain_auto
            if self.first_start:
                agc = 0 if manual else CONVERGENCE_FRAMES["agc"] + MISTRUST_FRAMES_STARTUP
                awb = CONVERGENCE_FRAMES["awb"] + MISTRUST_FRAMES_STARTUP if self.awb_auto else 0
                self.startup_frames = max(agc, awb)
            else:
                self.startup_frames = 0  # hideFramesModeSwitch / mistrustFramesModeSwitch: 0
            self.first_start = False
            self.running = True
            self.stop_event.clear()
            self.thread = threading.Thread(target=self._frame_loop, name=f"libcamera-sim-{self.index}", daemon=True)
            self.thread.start()

    def stop(self) -> list:
        """Stop streaming; returns the requests still queued (to be completed as Cancelled)."""
        self.stop_event.set()
        thread, self.thread = self.thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self.lock:
            self.running = False
            pending = list(self.queue)
            self.queue.clear()
        return pending

    def queue_request(self, request) -> None:
        with self.lock:
            self.queue.append(request)

    def _frame_loop(self) -> None:
        next_tick = time.monotonic() + self.in_force["frame_duration"] * 1e-6  # the first frame is exposed first
        while not self.stop_event.is_set():
            delay = next_tick - time.monotonic()
            if delay > 0 and self.stop_event.wait(delay):
                break
            started = time.monotonic()
            try:
                duration = self._one_frame()
            except Exception:  # a bug in the double must not hang the test: log it and stop streaming
                log.exception("simulated libcamera: frame failed")
                break
            next_tick = max(started + duration * 1e-6, time.monotonic())

    def raw_of(self, metadata: dict) -> np.ndarray:
        """Ground truth: the mosaic the sensor read for the frame with this metadata (by SensorTimestamp), in
        the delivered orientation and the mode's bit depth."""
        with self.lock:
            return self.raws[int(metadata["SensorTimestamp"])]

    def disconnect(self) -> None:
        """Fault: the sensor stops sending frames; queued requests wait (pipeline_base.cpp cameraTimeout only
        logs)."""
        self.connected = False

    def reconnect(self) -> None:
        self.connected = True

    def _one_frame(self) -> float:
        if not self.connected:
            return 1e5
        with self.lock:
            frame = self.sequence
            self.sequence += 1
            self._values_for_frame(frame)
            request = self.queue.popleft() if self.queue else None
            if request is not None:
                self.apply_controls(request._controls, frame)
            lines = self.in_force["exposure_lines"]
            gain = self.in_force["gain"]
            duration = self.in_force["frame_duration"]
            colour_gains = self.colour_gains()
            ct = self.colour_temperature()
            mode = self.mode
            exposure_us = lines * mode.line_time_us
            sim_time = self.sim_time
            self.sim_time += duration * 1e-6
        timestamp = time.monotonic_ns()
        if request is not None:
            self.lens_shading_in_force  # noqa: B018 - puts the table of this mode into the ISP if not there yet
        if request is None:  # no buffer to fill: the frame is dropped (no statistics either)
            self.frames_dropped += 1
            return duration
        raw, _black = self.physics_for(mode).expose(mode, exposure_us, gain, sim_time, self.rng)
        hflip, vflip = self._user_flips(self.config)
        if hflip:
            raw = raw[:, ::-1]
        if vflip:
            raw = raw[::-1]
        raw = np.ascontiguousarray(raw)
        stats = self._stats(raw)
        images = self.isp.outputs(raw, colour_gains, ct) if self.out_cfgs else []
        with self.lock:
            self._run_agc_awb(stats, frame)
            ae_state = self.ae_state
            startup = self.startup_frames > 0
            if startup:
                self.startup_frames -= 1
            crop = self.scale_isp_crop(self.isp_crops[0]) if self.isp_crops else Rectangle(*mode.crop)
            metadata = self._metadata(request, timestamp, exposure_us, gain, duration, colour_gains, ct, stats,
                                      ae_state, crop)
        self._fill_buffers(request, raw, images)
        self.last_raw = raw
        with self.lock:
            self.raws[int(timestamp)] = raw
            while len(self.raws) > 16:
                self.raws.popitem(last=False)
        manager = self._manager()
        if manager is not None:
            manager._complete(request, frame, metadata, success=not startup)
        return duration

    def _stats(self, raw: np.ndarray) -> np.ndarray:
        """Black-subtracted R, G, B means (white = 1) of a subsample: the statistics AGC/AWB see."""
        sites = _isp.channel_sites(self.order)
        sums, counts = np.zeros(3), np.zeros(3)
        white = 2**self.mode.bit_depth - 1
        for dy in (0, 1):
            for dx in (0, 1):
                c = sites[dy, dx]
                sums[c] += float(raw[dy::16, dx::16].mean())
                counts[c] += 1
        if self.mono:  # one channel: AGC's luminance is its mean (there is no AWB to feed)
            sums[:], counts[:] = sums[1], counts[1]
        return (sums / counts - self.black) / (white - self.black)

    def _metadata(self, request, timestamp, exposure_us, gain, duration, colour_gains, ct, stats, ae_state, crop):
        c = controls
        black16 = self.black << (16 - self.mode.bit_depth)
        g = max(float(stats[1]), 0.0)
        lux = g * self.sensor.full_well_e / max(exposure_us * gain, 1e-6) / (self.sensor.full_well_e / 10_000.0) * 500 / 0.18
        md = {
            c.SensorTimestamp: int(timestamp),
            c.FrameDuration: int(round(duration)),
            c.ExposureTime: int(math.ceil(exposure_us - 1e-6)),
            c.AnalogueGain: float(np.float32(gain)),
            c.DigitalGain: 1.0,
            c.ColourGains: (float(np.float32(colour_gains[0])), float(np.float32(colour_gains[1]))),
            c.ColourTemperature: int(ct),
            c.Lux: float(np.float32(lux)),
            c.SensorBlackLevels: (black16,) * 4,
            c.ScalerCrop: crop,
            c.FrameDurationLimits: tuple(int(v) for v in self.frame_limits),
            c.AeState: int(ae_state),
            c.ColourCorrectionMatrix: tuple(float(np.float32(v)) for v in self.isp.ccm_for(ct).ravel()),
            c.FocusFoM: 1000,
            c.SensorTemperature: 40.0,
        }
        if self.mono:  # ipa_base.cpp reportMetadata: no awb.status or ccm.status without rpi.awb / rpi.ccm
            for cid in (c.ColourGains, c.ColourTemperature, c.ColourCorrectionMatrix):
                md.pop(cid)
        # ipa_base.cpp applyControls echoes the modes and manual values the request carried
        for cid in (c.ExposureTimeMode, c.AnalogueGainMode, c.AwbEnable):
            if cid in request._controls:
                md[cid] = request._controls[cid]
        return md

    def _fill_buffers(self, request, raw: np.ndarray, images: list) -> None:
        for stream, fb in request.buffers.items():
            cfg = stream.configuration
            data = self._encode(cfg, raw, images)
            view = fb._mapped()
            view[: len(data)] = data
            fb.metadata._set_bytes_used(cfg.frame_size)

    def _encode(self, cfg, raw: np.ndarray, images: list) -> bytes:
        fmt = str(cfg.pixel_format)
        if is_raw(fmt):
            return raw_bytes(raw, fmt, self.mode.bit_depth, cfg.stride, cfg.frame_size)
        image = images[self.out_cfgs.index(cfg)]
        return image_bytes(image, fmt, cfg.stride, cfg.frame_size)


def _ct_of_gains(gains) -> float:
    """The colour temperature whose neutral gains are nearest (AWB's CT estimate; physics of scene.py)."""
    table = getattr(_ct_of_gains, "table", None)
    if table is None:
        cts = np.arange(2000.0, 10001.0, 100.0)
        table = _ct_of_gains.table = (cts, np.log(np.array([neutral_colour_gains(c) for c in cts])))
    cts, g = table
    r, b = (max(float(x), 1e-3) for x in gains)
    d = (g[:, 0] - math.log(r)) ** 2 + (g[:, 1] - math.log(b)) ** 2
    return float(cts[int(np.argmin(d))])


def raw_bytes(raw: np.ndarray, fmt: str, bit_depth: int, stride: int, frame_size: int) -> bytes:
    """A mosaic of `bit_depth` codes → the bytes of one buffer of raw format `fmt` (little-endian memory).

    vc4 unpacked: uint16 LSB-aligned; CSI2P: V4L2's 10-bit (4 px in 5 bytes) and 12-bit (2 px in 3 bytes)
    packings; PiSP S*16: uint16 MSB-aligned (codes << (16 - depth)); PISP_COMP1: the PiSP compressed format in
    its coarsest quantisation mode (qmode 3, 8 px in two 32-bit words), which picamera2's own
    `helpers.decompress` decodes (picamera2/request.py `Helpers.decompress`). Row padding holds garbage, as a
    DMA buffer may."""
    h, w = raw.shape
    order, bits, packing = parse_raw(fmt)
    if packing == "CSI2P" and bits == 10:
        px = np.zeros((h, align(w, 4)), dtype=np.uint16)
        px[:, :w] = raw
        px = px.reshape(h, -1, 4)
        out = np.empty((h, px.shape[1], 5), dtype=np.uint8)
        out[:, :, :4] = (px >> 2).astype(np.uint8)
        out[:, :, 4] = ((px[:, :, 0] & 3) | ((px[:, :, 1] & 3) << 2) | ((px[:, :, 2] & 3) << 4)
                        | ((px[:, :, 3] & 3) << 6)).astype(np.uint8)
        rows = out.reshape(h, -1)
    elif packing == "CSI2P" and bits == 12:
        px = np.zeros((h, align(w, 2)), dtype=np.uint16)
        px[:, :w] = raw
        px = px.reshape(h, -1, 2)
        out = np.empty((h, px.shape[1], 3), dtype=np.uint8)
        out[:, :, 0] = (px[:, :, 0] >> 4).astype(np.uint8)
        out[:, :, 1] = (px[:, :, 1] >> 4).astype(np.uint8)
        out[:, :, 2] = ((px[:, :, 0] & 15) | ((px[:, :, 1] & 15) << 4)).astype(np.uint8)
        rows = out.reshape(h, -1)
    elif packing == "PISP_COMP1":
        rows = _comp1_encode(raw.astype(np.uint32) << (16 - bit_depth), stride)
    elif bits == 16:
        rows = (raw.astype(np.uint16) << (16 - bit_depth)).astype("<u2").view(np.uint8).reshape(h, 2 * w)
    else:
        rows = raw.astype("<u2").view(np.uint8).reshape(h, 2 * w)
    buf = np.empty((h, stride), dtype=np.uint8)
    n = rows.shape[1]
    buf[:, :n] = rows
    if stride > n:
        buf[:, n:] = 0xA5  # padding is not pixel data
    return buf.tobytes()[:frame_size]


def _comp1_encode(values16: np.ndarray, stride: int) -> np.ndarray:
    """16-bit values → PISP_COMP1 rows in qmode 3: each value v ↦ q with 2048 + max(256q, 512(q − 47)) ≈ v."""
    h, w = values16.shape
    t = values16.astype(np.float64) - 2048.0
    q = np.where(t <= 94 * 256, np.round(t / 256.0), np.round(t / 512.0) + 47)
    q = np.clip(q, 0, 175).astype(np.int64)
    width = align(w, 8)
    qq = np.zeros((h, width), dtype=np.int64)
    qq[:, :w] = q
    groups = qq.reshape(h, width // 8, 4, 2)  # (pixel k of the word, word c): pixel 2k + c of the group
    words = np.zeros((h, width // 8, 2), dtype=np.int64)
    for c in range(2):
        q0, q1, q2, q3 = (groups[:, :, k, c] for k in range(4))
        code01 = (11 * (q0 >> 4) + (q1 >> 4)) * 256 + (q1 & 15) * 16 + (q0 & 15)
        code23 = (11 * (q2 >> 4) + (q3 >> 4)) * 256 + (q3 & 15) * 16 + (q2 & 15)
        words[:, :, c] = 3 | (code01 << 2) | (code23 << 17)
    rows = words.astype(np.uint32).astype("<u4").view(np.uint8).reshape(h, width)
    out = np.zeros((h, max(stride, width)), dtype=np.uint8)
    out[:, :width] = rows
    return out[:, :stride] if stride >= w else out


def image_bytes(bgr: np.ndarray, fmt: str, stride: int, frame_size: int) -> bytes:
    """An (h, w, 3) B, G, R uint8 image → one buffer of DRM-fourcc format `fmt` (RGB888 is B, G, R in memory,
    BGR888 R, G, B; XRGB8888 B, G, R, X; XBGR8888 R, G, B, X; YUV420 planar I420)."""
    import cv2

    h, w = bgr.shape[:2]
    if fmt == "RGB888":
        rows = bgr.reshape(h, 3 * w)
    elif fmt == "BGR888":
        rows = bgr[:, :, ::-1].reshape(h, 3 * w)
    elif fmt in ("XRGB8888", "XBGR8888"):
        four = np.empty((h, w, 4), dtype=np.uint8)
        four[:, :, :3] = bgr if fmt == "XRGB8888" else bgr[:, :, ::-1]
        four[:, :, 3] = 255
        rows = four.reshape(h, 4 * w)
    else:
        yuv = cv2.cvtColor(np.ascontiguousarray(bgr), cv2.COLOR_BGR2YUV_I420)  # (h * 3 / 2, w)
        if fmt in ("YVU420",):
            y, u, v = yuv[:h], yuv[h:h + h // 4], yuv[h + h // 4:]
            yuv = np.concatenate([y, v, u])
        buf = np.zeros(frame_size, dtype=np.uint8)
        ys = stride
        buf[: ys * h].reshape(h, ys)[:, :w] = yuv[:h]
        cs = stride // 2
        chroma = yuv[h:].reshape(2, h // 2, w // 2)
        off = ys * h
        for plane in chroma:
            buf[off: off + cs * (h // 2)].reshape(h // 2, cs)[:, : w // 2] = plane
            off += cs * (h // 2)
        return buf.tobytes()
    buf = np.zeros((h, stride), dtype=np.uint8)
    buf[:, : rows.shape[1]] = rows
    return buf.tobytes()[:frame_size]
