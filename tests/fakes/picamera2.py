"""A fake `picamera2` module on top of the simulated sensor, for testing the Picamera2 backend without a Pi.

`make_fake_picamera2(...)` returns a fresh module-like object (its own "process": camera manager, tuning
environment variable, cameras) so tests do not share state. It reproduces the checklist of
shared/reference/picamera2.md §10:

- statics `global_camera_info`, `load_tuning_file` (stock-like tuning per sensor, target by platform),
  `find_tuning_algo`; `platform` "vc4" (Pi 4) or "pisp" (Pi 5);
- open errors (IndexError in 0.3.36, RuntimeError("No camera number N found") in 0.3.38); a second open
  of an acquired camera → RuntimeError("Camera __init__ sequence did not complete.");
- `Picamera2(tuning=...)` only sets the (per-fake) LIBCAMERA_RPI_TUNING_FILE; the tuning is read when the
  libcamera CameraManager singleton is created. That singleton is weakly held: picamera2's CameraManager
  wrapper drops it when the last camera closes, `global_camera_info()` creates it (and keeps it), and
  anything else holding it keeps it alive — so a new tuning is silently ignored unless every holder let go
  (#886, #595). A tuning that fails to load (bad version, wrong target, wrong LSC table length) hides the
  camera, so opening it fails as with no camera;
- 12-key configuration dicts with ValueError("Bad key ...") and RuntimeError checks in configure();
  configure-while-running error; mode choice; raw forced to the mode size (Pi 4: also depth); formats
  (Pi 4 CSI2P or unpacked LSB-aligned; Pi 5 S****16 MSB-aligned, packed → PISP_COMP1); Bayer order of the
  configured raw reordered for Rotation and transform flips; padded strides (32 / 64 bytes) and framesize
  written back; `sensor_modes`, `camera_properties`, mode-dependent `camera_controls`;
- switch_mode_and_capture_request / switch_mode_capture_request_and_stop / switch_mode: stop, configure,
  start; the frames of a switched-to configuration are the simulator's capture_still in its mode (raw forced to
  that mode, the platform's format and stride), while the simulator keeps its streaming configuration and
  its AGC/AWB state (configuring the same mode again does not reset it, as libcamera's IPA keeps its state);
- capture_request → CompletedRequest with make_array (raw as uint8 (h, stride) with garbage padding),
  get_metadata, release; unknown stream → RuntimeError("Stream 'x' is not defined"); requests held past
  buffer_count stall (TimeoutError after `stall_timeout` instead of hanging); Job/wait with TimeoutError;
  flush; queue=True holds one frame back; capture_arrays with a str iterates its characters (#1261);
- controls: unknown → RuntimeError("Control X is not advertised by libcamera"); FrameRate; 0 = auto;
  clamping to camera_controls; exposure quantisation (the simulator's); a control set while running reaches
  the sensor `buffer_count - 1 + queue_latency` frames later, then the sensor's own delay (the simulator's),
  a control set before start() is in force from the first frame; startup frames dropped;
- metadata from the simulator per §4 plus AeState (libcamera ≥ 0.5) or AeLocked (older).

Ground truth for tests is on `module.world` (FakeWorld): the simulator of each open camera (`sim_of(num)`),
the tunings each camera manager loaded, outstanding requests, the raw mosaic of the last delivered frame.
"""

from __future__ import annotations

import copy
import enum
import json
import logging
import threading
import time
import types
import weakref
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from pi_agent.camera.base import LensShadingTable
from pi_agent.camera.sensors import SENSORS, SensorInfo, SensorMode
from pi_agent.camera.sim import SimulatedCamera
from pi_agent.camera.tuning import TuningError, find_algo, table_from_tuning

from .raw_layouts import STRIDE_ALIGN, align, decompress_comp1, raw_buffer, stock_tuning

logger = logging.getLogger(__name__)

TARGETS = {"vc4": "bcm2835", "pisp": "pisp"}
CFA = {"RGGB": 0, "GRBG": 1, "GBRG": 2, "BGGR": 3}
MAIN_FORMATS = {"XBGR8888": 4, "XRGB8888": 4, "BGR888": 3, "RGB888": 3, "YUV420": 1}
STREAM_KEYS = ("format", "size", "stride", "preserve_ar")
RAW_IGNORE = ("bit_depth", "crop_limits", "exposure_limits", "fps", "unpacked")
CONFIG_KEYS = ("use_case", "transform", "colour_space", "buffer_count", "queue", "main", "lores", "raw", "controls",
               "sensor", "display", "encode")
STARTUP_FRAMES = 2


def hflip_order(order: str) -> str:
    return order[1] + order[0] + order[3] + order[2]


def vflip_order(order: str) -> str:
    return order[2] + order[3] + order[0] + order[1]


class Platform(enum.Enum):
    VC4 = "vc4"
    PISP = "pisp"


class Transform:
    """libcamera.Transform(hflip=0, vflip=0)."""

    def __init__(self, hflip: int = 0, vflip: int = 0, transpose: int = 0):
        if transpose:
            raise ValueError("transpose is not supported by Raspberry Pi cameras")
        self.hflip, self.vflip = int(bool(hflip)), int(bool(vflip))

    def __repr__(self) -> str:
        return f"<libcamera.Transform 'hflip={self.hflip} vflip={self.vflip}'>"


class SensorFormat:
    """picamera2.sensor_format.SensorFormat: str() is the name."""

    def __init__(self, name: str):
        self.name = name
        self.packing = "CSI2P" if name.endswith("_CSI2P") else None
        core = name[:-6] if self.packing else name
        self.bayer_order = core[1:5]
        self.bit_depth = int(core[5:])

    @property
    def unpacked(self) -> str:
        return f"S{self.bayer_order}{self.bit_depth}"

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"SensorFormat({self.name!r})"


@dataclass
class CameraSpec:
    """One camera connected to the fake Pi."""

    sensor: str = "imx477"
    rotation: int | None = None  # None: 180 for the HQ camera (imx477), 0 otherwise
    scene: str = "chart"
    colour_temperature: float = 5000.0
    lux: float = 500.0
    corner_shading: float = 0.5

    @property
    def info(self) -> SensorInfo:
        return SENSORS[self.sensor]

    @property
    def rot(self) -> int:
        return self.rotation if self.rotation is not None else (180 if self.sensor == "imx477" else 0)

    @property
    def native_order(self) -> str:
        """The sensor's own CFA order: the simulator renders the upright image, so undo the rotation flips."""
        order = self.info.bayer_order
        return hflip_order(vflip_order(order)) if self.rot == 180 else order


class FakeWorld:
    """The state of one fake "process + Pi": connected cameras, the tuning environment variable, the live
    libcamera CameraManager (weakly referenced), and ground truth for tests."""

    def __init__(self, cameras, platform: str, seed: int, pacing: bool, version: str, queue_latency: int,
                 stall_timeout: float, libcamera_version: str, startup_frames: int):
        if platform not in TARGETS:
            raise ValueError(f"platform must be 'vc4' or 'pisp', got {platform!r}")
        self.cameras = [c if isinstance(c, CameraSpec) else CameraSpec(sensor=c) for c in cameras]
        self.platform = platform
        self.target = TARGETS[platform]
        self.seed = seed
        self.pacing = pacing
        self.version = tuple(int(x) for x in version.split("."))
        self.queue_latency = queue_latency
        self.stall_timeout = stall_timeout
        self.libcamera_version = tuple(int(x) for x in libcamera_version.split("."))
        self.startup_frames = startup_frames
        self.env_tuning: Any = None  # what LIBCAMERA_RPI_TUNING_FILE would point at (dict, path or None)
        self._manager_ref = None
        self.managers_created: list[dict] = []  # per libcamera CameraManager: {"source", "tunings", "errors"}
        self.acquired: set[int] = set()
        self.sims: dict[int, SimulatedCamera] = {}
        self.outstanding: dict[int, int] = {}
        self.frames_dropped = 0
        self.last_raw: dict[int, tuple[int, np.ndarray]] = {}  # camera → (frame number, sim mosaic)
        self.still_configs: list[dict] = []  # camera_configuration() of each switch_mode_* configuration
        self.lock = threading.Condition()

    # -- the libcamera CameraManager singleton ---------------------------------------------------------
    def libcamera_manager(self) -> "LibcameraManager":
        live = self._manager_ref() if self._manager_ref else None
        if live is not None:
            return live
        manager = LibcameraManager(self)
        self._manager_ref = weakref.ref(manager)
        return manager

    @property
    def manager_alive(self) -> bool:
        return bool(self._manager_ref and self._manager_ref() is not None)

    def resolve_tuning(self, spec: CameraSpec, source: Any) -> dict:
        """The tuning a camera's IPA loads: the env variable's file, else the stock file; TuningError if bad."""
        if source is None:
            return stock_tuning(spec.sensor, self.target)
        if isinstance(source, dict):
            tuning = copy.deepcopy(source)
        else:
            try:
                with open(source) as f:
                    tuning = json.load(f)
            except (OSError, ValueError) as exc:
                raise TuningError(f"cannot read tuning file {source}: {exc}") from None
        check_tuning(tuning, self.target)
        return tuning

    def sim_of(self, num: int = 0) -> SimulatedCamera:
        return self.sims[num]


def check_tuning(tuning: Any, target: str) -> None:
    """What the Raspberry Pi IPA refuses: a non-dict, an unknown version, another platform's target, an LSC
    table of the wrong length, colour temperatures not increasing."""
    if not isinstance(tuning, dict):
        raise TuningError("tuning file is not a JSON object")
    version = tuning.get("version", 1.0)
    if version not in (1, 1.0, 2, 2.0):
        raise TuningError(f"unsupported tuning file version {version!r}")
    if version in (2, 2.0):
        if tuning.get("target", "bcm2835") != target:
            raise TuningError(f"tuning file target {tuning.get('target')!r} does not match platform {target!r}")
        if not isinstance(tuning.get("algorithms"), list):
            raise TuningError("tuning file has no algorithms list")
    elif target != "bcm2835":
        raise TuningError("version 1 tuning files are VC4 only")
    alsc = find_algo(tuning, "rpi.alsc")
    if alsc:
        table_from_tuning(tuning)  # raises "Invalid number of entries in LSC table"
        for key in ("calibrations_Cr", "calibrations_Cb"):
            cts = [c.get("ct") for c in alsc.get(key, [])]
            if any(b <= a for a, b in zip(cts, cts[1:])):
                raise TuningError(f"{key}: ct must increase strictly")


def lens_shading_in_force(tuning: dict, colour_temperature: float) -> LensShadingTable | None:
    """The table the ISP applies for a tuning's rpi.alsc (static model: the calibration nearest the colour
    temperature, luminance strength applied; adaptation (n_iter > 0) is not modelled)."""
    table = table_from_tuning(tuning, int(colour_temperature))
    if table is None:
        return None
    strength = float(find_algo(tuning, "rpi.alsc").get("luminance_strength", 1.0))
    lum = (table.luminance - 1.0) * strength + 1.0
    return LensShadingTable(table.grid, lum, table.cr, table.cb, table.colour_temperature)


class LibcameraManager:
    """libcamera.CameraManager: enumerates the cameras once, each with the tuning read at creation."""

    def __init__(self, world: FakeWorld):
        self.world = world
        record = {"source": copy.deepcopy(world.env_tuning), "tunings": {}, "errors": {}}
        self.cameras: list[LibcameraCamera] = []
        for hw, spec in enumerate(world.cameras):
            try:
                tuning = world.resolve_tuning(spec, world.env_tuning)
            except TuningError as exc:
                error = str(exc)  # a string: a logged exception's traceback would keep this manager alive
                logger.error("fake libcamera: camera %d (%s): tuning rejected: %s", hw, spec.sensor, error)
                record["errors"][hw] = error
                continue
            record["tunings"][hw] = tuning
            self.cameras.append(LibcameraCamera(self, hw, spec, tuning))
        world.managers_created.append(record)


class LibcameraCamera:
    def __init__(self, manager: LibcameraManager, hw: int, spec: CameraSpec, tuning: dict):
        self.manager = weakref.ref(manager)  # no reference cycle: the manager dies as soon as nobody holds it
        self.hw = hw
        self.spec = spec
        self.tuning = tuning
        self.id = f"/base/soc/i2c0mux/i2c@{hw}/{spec.sensor}@1a"


class CameraManagerBase:
    """picamera2.picamera2.CameraManager: holds the libcamera manager while cameras are open and drops it
    when the last one closes (picamera2 ≥ 0.3.20)."""

    _world: FakeWorld

    def __init__(self):
        self._cms = None
        self.cameras: dict[int, Any] = {}
        self._lock = threading.Lock()

    @property
    def cms(self) -> LibcameraManager:
        if self._cms is None:
            self._cms = self._world.libcamera_manager()
        return self._cms

    def add(self, index: int, camera) -> None:
        with self._lock:
            self.cameras[index] = camera

    def cleanup(self, index: int) -> None:
        with self._lock:
            self.cameras.pop(index, None)
            if not self.cameras:
                self._cms = None

    def reset(self) -> None:
        self._cms = None


class Job:
    """picamera2.job.Job: the work runs when waited for (the fake has no event loop)."""

    def __init__(self, fn):
        self._fn = fn

    def get_result(self, timeout: float | None = None):
        return self._fn(timeout)


class CompletedRequest:
    def __init__(self, picam2: "Picamera2Base", frame, arrays: dict[str, np.ndarray], metadata: dict):
        self._picam2 = picam2
        self._arrays = arrays
        self._metadata = metadata
        self.config = copy.deepcopy(picam2.camera_config)
        self.stream_map = {name: name for name in arrays}
        self.ref_count = 1
        self.frame = frame

    def acquire(self) -> None:
        with self._picam2._world.lock:
            if self.ref_count == 0:
                raise RuntimeError("CompletedRequest: acquiring lock with ref_count 0")
            self.ref_count += 1

    def release(self) -> None:
        world = self._picam2._world
        with world.lock:
            self.ref_count -= 1
            if self.ref_count < 0:
                raise RuntimeError("CompletedRequest: request released too many times")
            if self.ref_count == 0:
                idx = self._picam2.camera_idx
                world.outstanding[idx] -= 1
                world.lock.notify_all()

    def _check(self, name: str) -> np.ndarray:
        if self.ref_count <= 0:
            raise RuntimeError("CompletedRequest: buffers used after release()")
        if not isinstance(name, str) or name not in self._arrays:
            raise RuntimeError(f"Stream {name!r} is not defined")
        return self._arrays[name]

    def make_buffer(self, name: str) -> np.ndarray:
        return self._check(name).reshape(-1).copy()

    def make_array(self, name: str) -> np.ndarray:
        return self._check(name).copy()

    def get_metadata(self) -> dict:
        if self.ref_count <= 0:
            raise RuntimeError("CompletedRequest: metadata used after release()")
        return copy.deepcopy(self._metadata)


class _ControlsProxy:
    def __init__(self, picam2):
        object.__setattr__(self, "_picam2", picam2)
        object.__setattr__(self, "_pending", {})

    def __setattr__(self, name, value):
        self._pending[name] = value

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self._picam2.set_controls(dict(self._pending))
        self._pending.clear()


class Picamera2Base:
    """picamera2.Picamera2 as the backend sees it. Subclassed per fake world by make_fake_picamera2."""

    _world: FakeWorld
    _cm: CameraManagerBase
    platform: Platform

    # -- statics ---------------------------------------------------------------------------------------
    @classmethod
    def global_camera_info(cls) -> list[dict]:
        cms = cls._cm.cms  # creates (and keeps) the libcamera manager: the #886 trap
        out = []
        for num, cam in enumerate(cms.cameras):
            out.append({"Model": cam.spec.sensor, "Location": 2, "Rotation": cam.spec.rot, "Id": cam.id, "Num": num})
        return out

    @classmethod
    def load_tuning_file(cls, tuning_file: str, dir: str | None = None) -> dict:
        name = str(tuning_file)
        model = name[:-5] if name.endswith(".json") else name
        if model not in SENSORS:
            raise RuntimeError("Tuning file not found")
        return stock_tuning(model, cls._world.target)

    @staticmethod
    def find_tuning_algo(tuning: dict, name: str) -> dict:
        version = tuning.get("version", 1)
        if version == 1:
            return tuning[name]
        return next(algo for algo in tuning["algorithms"] if name in algo)[name]

    # -- open / close ----------------------------------------------------------------------------------
    def __init__(self, camera_num: int = 0, verbose_console=None, tuning=None, allocator=None):
        world = self._world
        self.camera = None
        self.started = False
        self.camera_properties: dict = {}
        self.camera_config = None
        self._sensor_modes = None
        self.options = {"quality": 90, "compress_level": 1}
        world.env_tuning = copy.deepcopy(tuning) if isinstance(tuning, dict) else tuning  # set_tuning()
        cms = type(self)._cm.cms
        if not 0 <= camera_num < len(cms.cameras):
            if world.version < (0, 3, 37):
                raise IndexError("list index out of range")
            raise RuntimeError(f"No camera number {camera_num} found: {len(cms.cameras)} cameras available")
        cam = cms.cameras[camera_num]
        with world.lock:
            if cam.hw in world.acquired:
                logger.error("Camera in Acquired state trying acquire() which requires state Available")
                raise RuntimeError("Camera __init__ sequence did not complete.")
            world.acquired.add(cam.hw)
        self.camera = cam
        self._libcamera_manager = cms  # an open camera keeps libcamera's manager alive
        self.camera_idx = camera_num
        type(self)._cm.add(camera_num, self)
        spec = cam.spec
        self._spec = spec
        self._sim = SimulatedCamera(sensor=spec.sensor, scene=spec.scene, colour_temperature=spec.colour_temperature,
                                    seed=world.seed, pacing=world.pacing, corner_shading=spec.corner_shading,
                                    lux=spec.lux)
        self._sim.apply_lens_shading(lens_shading_in_force(cam.tuning, spec.colour_temperature))
        world.sims[camera_num] = self._sim
        world.outstanding.setdefault(camera_num, 0)
        info = spec.info
        self.camera_properties = {
            "Model": spec.sensor,
            "UnitCellSize": (info.unit_cell_nm, info.unit_cell_nm),
            "Location": 2,
            "Rotation": spec.rot,
            "ColorFilterArrangement": CFA[spec.native_order],
            "PixelArraySize": info.full_array,
            "PixelArrayActiveAreas": [(0, 0, *info.full_array)],
            "ScalerCropMaximum": (0, 0, *info.full_array),
            "SystemDevices": (20749, 20737, 20738, 20739),
        }
        self.camera_controls = self._unconfigured_controls()
        self._pending: list[tuple[int, dict]] = []
        self._produced = 0
        self._to_drop = 0
        self._held = None
        self._sim_key = None  # (main size, fps, mode size) the simulator streams in
        self._still_controls: dict | None = None  # set while a switch_mode configuration is in force
        self.controls = _ControlsProxy(self)

    @property
    def is_open(self) -> bool:
        return self.camera is not None

    def close(self) -> None:
        if self.camera is None:
            return
        if self.started:
            self.stop()
        world = self._world
        with world.lock:
            world.acquired.discard(self.camera.hw)
        self.camera = None
        self._libcamera_manager = None
        self.camera_properties = {}
        type(self)._cm.cleanup(self.camera_idx)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- modes ------------------------------------------------------------------------------------------
    def _modes(self) -> list[SensorMode]:
        return list(self._spec.info.modes)

    @property
    def sensor_modes(self) -> list[dict]:
        if self._sensor_modes is None:
            if self.started:
                raise RuntimeError("Camera must be stopped before configuring")
            info, order = self._spec.info, self._spec.native_order
            self._sensor_modes = [
                {
                    "format": SensorFormat(f"S{order}{m.bit_depth}_CSI2P"),
                    "unpacked": f"S{order}{m.bit_depth}",
                    "bit_depth": m.bit_depth,
                    "size": tuple(m.size),
                    "fps": m.fps_max,
                    "crop_limits": tuple(m.crop),
                    "exposure_limits": (info.quantise_exposure(0, m), int(info.exposure_max_us), None),
                }
                for m in self._modes()
            ]
        return copy.deepcopy(self._sensor_modes)

    @property
    def sensor_resolution(self) -> tuple[int, int]:
        m = max(self._modes(), key=lambda m: (m.size[0] * m.size[1], m.bit_depth))
        return tuple(m.size)

    @property
    def sensor_format(self) -> str:
        m = max(self._modes(), key=lambda m: (m.size[0] * m.size[1], m.bit_depth))
        return f"S{self._spec.native_order}{m.bit_depth}_CSI2P"

    # -- configurations --------------------------------------------------------------------------------
    @staticmethod
    def _stream(defaults: dict, updates: dict | None, ignore=()) -> dict | None:
        if updates is None:
            return None
        out = dict(defaults)
        for key, value in updates.items():
            if isinstance(value, SensorFormat):
                value = str(value)
            if key in STREAM_KEYS:
                out[key] = value
            elif key in ignore:
                pass  # lets a sensor_modes entry be passed as the raw stream
            else:
                raise ValueError(f"Bad key '{key}': valid stream keys are {STREAM_KEYS}")
        return out

    def _make_config(self, use_case, main, lores, raw, transform, colour_space, buffer_count, controls, display,
                     encode, queue, sensor, main_default, injected) -> dict:
        if self.camera is None:
            raise RuntimeError("Camera is not open")
        main = self._stream(main_default, main)
        lores = self._stream({"format": "YUV420", "size": main["size"]}, lores)
        raw = self._stream({"format": self.sensor_format, "size": main["size"]}, raw, RAW_IGNORE)
        ctrls = {k: v for k, v in injected.items() if k in self.camera_controls}
        ctrls.update(controls or {})
        if colour_space is None:
            colour_space = "Smpte170m" if main["size"][0] * main["size"][1] < 1280 * 720 else "Rec709"
        return {
            "use_case": use_case, "transform": transform if transform is not None else Transform(),
            "colour_space": colour_space, "buffer_count": buffer_count, "queue": queue, "main": main,
            "lores": lores, "raw": raw, "controls": ctrls, "sensor": dict(sensor or {}), "display": display,
            "encode": encode,
        }

    def create_preview_configuration(self, main={}, lores=None, raw={}, transform=None, colour_space=None,
                                     buffer_count=4, controls={}, display="main", encode="main", queue=True,
                                     sensor={}, use_case="preview") -> dict:
        return self._make_config(use_case, main, lores, raw, transform, colour_space, buffer_count, controls, display,
                                 encode, queue, sensor, {"format": "XBGR8888", "size": (640, 480)},
                                 {"NoiseReductionMode": 1, "FrameDurationLimits": (100, 83333)})

    def create_still_configuration(self, main={}, lores=None, raw={}, transform=None, colour_space=None,
                                   buffer_count=1, controls={}, display=None, encode=None, queue=True, sensor={},
                                   use_case="still") -> dict:
        return self._make_config(use_case, main, lores, raw, transform, colour_space, buffer_count, controls, display,
                                 encode, queue, sensor, {"format": "BGR888", "size": self.sensor_resolution},
                                 {"NoiseReductionMode": 2, "FrameDurationLimits": (100, 1000000000)})

    def create_video_configuration(self, main={}, lores=None, raw={}, transform=None, colour_space=None,
                                   buffer_count=6, controls={}, display="main", encode="main", queue=True,
                                   sensor={}, use_case="video") -> dict:
        return self._make_config(use_case, main, lores, raw, transform, colour_space, buffer_count, controls, display,
                                 encode, queue, sensor, {"format": "XBGR8888", "size": (1280, 720)},
                                 {"NoiseReductionMode": 3, "FrameDurationLimits": (33333, 33333)})

    @staticmethod
    def _check_size(name: str, size) -> tuple[int, int]:
        if not isinstance(size, (tuple, list)) or len(size) != 2:
            raise RuntimeError(f"{name} stream size must be a 2-tuple")
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0 or w % 2 or h % 2:
            raise RuntimeError(f"{name} stream dimensions must be even and positive, got {size}")
        return w, h

    def _choose_mode(self, size, bit_depth) -> SensorMode:
        """Score: size error + 1500 × aspect-ratio error + 500 × |depth difference| (picamera2.md §2)."""
        w, h = size

        def score(m):
            mw, mh = m.size
            return abs(mw - w) + abs(mh - h) + 1500 * abs(mw / mh - w / h) + 500 * abs(m.bit_depth - bit_depth)

        return min(self._modes(), key=score)

    def configure(self, camera_config=None) -> None:
        self._configure(camera_config, still=False)

    def _configure(self, camera_config, still: bool) -> None:
        """configure(); with `still` (switch_mode_*), the simulator keeps streaming its own configuration and
        the frames of this one are rendered by its capture_still in this configuration's mode."""
        if self.camera is None:
            raise RuntimeError("Camera is not open")
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        if camera_config is None:
            camera_config = self.create_preview_configuration()
        if not isinstance(camera_config, dict) or set(camera_config) != set(CONFIG_KEYS):
            raise RuntimeError(f"camera configuration must be a dict with keys {CONFIG_KEYS}")
        cfg = copy.deepcopy({k: v for k, v in camera_config.items() if k != "transform"})
        cfg["transform"] = camera_config["transform"] or Transform()
        main = cfg["main"]
        if main is None:
            raise RuntimeError("main stream is required")
        if main.get("format") not in MAIN_FORMATS:
            raise RuntimeError(f"Unrecognised main stream format {main.get('format')}")
        main_size = self._check_size("main", main["size"])
        lores = cfg["lores"]
        if lores is not None:
            lw, lh = self._check_size("lores", lores["size"])
            if lw > main_size[0] or lh > main_size[1]:
                raise RuntimeError("lores stream dimensions may not exceed main stream")
            if self._world.platform == "vc4" and lores.get("format") != "YUV420":
                raise RuntimeError("lores stream must be YUV")
        raw = cfg["raw"]
        raw_bits = None
        if raw is not None:
            try:
                requested = SensorFormat(str(raw["format"]))
                if requested.bayer_order not in CFA or requested.bit_depth not in (8, 10, 12, 16):
                    raise ValueError
            except (ValueError, KeyError):
                raise RuntimeError(f"Unrecognised raw format {raw.get('format')}") from None
            self._check_size("raw", raw["size"])
            raw_bits = requested.bit_depth
        if not isinstance(cfg["buffer_count"], int) or cfg["buffer_count"] < 1:
            raise RuntimeError("buffer_count must be a positive integer")
        sensor = cfg["sensor"] or {}
        if "output_size" in sensor or "bit_depth" in sensor:
            target = tuple(sensor.get("output_size", self.sensor_resolution))
            depth = sensor.get("bit_depth", self._spec.info.bit_depth)
        elif raw is not None:
            target, depth = tuple(raw["size"]), raw_bits
        else:
            target, depth = main_size, self._spec.info.bit_depth
        mode = self._choose_mode(target, depth)
        order = self._spec.info.bayer_order
        t = cfg["transform"]
        if t.hflip:
            order = hflip_order(order)
        if t.vflip:
            order = vflip_order(order)
        platform = self._world.platform
        requested_ctrls = dict(cfg["controls"] or {})
        for name in requested_ctrls:
            if name != "FrameRate" and name not in self._unconfigured_controls():
                raise RuntimeError(f"Control {name} is not advertised by libcamera")
        if "FrameRate" in requested_ctrls:
            rate = requested_ctrls["FrameRate"]
            lo = 1e6 / (max(rate) if isinstance(rate, (tuple, list)) else rate)
        else:
            lo = requested_ctrls.get("FrameDurationLimits", (mode.min_frame_duration_us,) * 2)[0]
        fps = min(1e6 / max(lo, 1.0), mode.fps_max)
        key = (main_size, fps, mode.size)
        if not still and key != self._sim_key:
            # like libcamera's IPA, the simulator keeps its AGC/AWB state across a configure of the same mode
            self._sim.configure(main_size, fps, raw_size=mode.size)
            self._sim_key = key
        self.camera_controls = self._configured_controls()
        ctrls = self._checked_controls(requested_ctrls)
        # validated values written back
        bpp = MAIN_FORMATS[main["format"]]
        main["size"] = main_size
        main["stride"] = align(main_size[0] * bpp, 64)
        main["framesize"] = main["stride"] * main_size[1] * (3 if bpp == 1 else 2) // 2
        if lores is not None:
            lores["size"] = tuple(lores["size"])
            lores["stride"] = align(lores["size"][0], 64)
            lores["framesize"] = lores["stride"] * lores["size"][1] * 3 // 2
        if raw is not None:
            packed = str(raw["format"]).endswith("_CSI2P")
            if platform == "vc4":
                name = f"S{order}{mode.bit_depth}" + ("_CSI2P" if packed else "")
            else:
                name = f"{order}_PISP_COMP1" if packed else f"S{order}16"
            from pi_agent.camera.raw_unpack import parse_raw_format  # only for bytes_per_row arithmetic

            row = parse_raw_format(name).bytes_per_row(mode.size[0])
            raw.update(format=name, size=tuple(mode.size), stride=align(row, STRIDE_ALIGN[platform]))
            raw["framesize"] = raw["stride"] * mode.size[1]
        cfg["sensor"] = {"bit_depth": mode.bit_depth, "output_size": tuple(mode.size)}
        self.camera_config = cfg
        self._mode = mode
        self._order = order
        self._pending = []
        self._held = None
        if still:
            self._still_controls = self._to_sim(ctrls)
        else:
            self._still_controls = None
            self._sim.set_controls(self._to_sim(ctrls))
        logger.info("fake picamera2: configured %s mode %s raw %s", self._spec.sensor, mode.size,
                    raw and raw["format"])

    def camera_configuration(self) -> dict:
        return copy.deepcopy(self.camera_config)

    # -- controls --------------------------------------------------------------------------------------
    def _unconfigured_controls(self) -> dict:
        return {
            "ExposureTime": (1, 66666, 20000), "AnalogueGain": (1.0, 16.0, 1.0), "ColourGains": (0.0, 32.0, None),
            "AeEnable": (False, True, None), "AwbEnable": (False, True, None),
            "FrameDurationLimits": (33333, 120000, None), "NoiseReductionMode": (0, 4, 0),
            "ExposureTimeMode": (0, 1, 0), "AnalogueGainMode": (0, 1, 0), "ScalerCrop": ((0, 0, 64, 64),) * 3,
        }

    def _configured_controls(self) -> dict:
        ranges = self._sim.control_ranges()
        out = self._unconfigured_controls()
        out["ExposureTime"] = ranges["ExposureTime"]
        out["AnalogueGain"] = (ranges["AnalogueGain"][0], ranges["AnalogueGain"][1], 1.0)
        fdl = ranges["FrameDurationLimits"]
        out["FrameDurationLimits"] = (fdl[0], fdl[1], None)
        return out

    def _checked_controls(self, controls: dict) -> dict:
        """Names checked against camera_controls, FrameRate turned into FrameDurationLimits, values clamped
        (libcamera clamps; picamera2 only checks names)."""
        out = {}
        for name, value in dict(controls or {}).items():
            if name == "FrameRate":
                lo, hi = value if isinstance(value, (tuple, list)) else (value, value)
                name, value = "FrameDurationLimits", (int(1e6 / hi), int(1e6 / lo))
            if name not in self.camera_controls:
                raise RuntimeError(f"Control {name} is not advertised by libcamera")
            low, high, _ = self.camera_controls[name]
            if name in ("ExposureTime", "AnalogueGain"):
                value = 0 if value == 0 else min(max(value, low), high)
            elif name == "ColourGains":
                value = tuple(min(max(float(v), 0.0), 32.0) for v in value)
            elif name == "FrameDurationLimits":
                value = tuple(min(max(int(v), low), high) for v in value)
            out[name] = value
        return out

    @staticmethod
    def _to_sim(controls: dict) -> dict:
        return {k: v for k, v in controls.items()
                if k in ("ExposureTime", "AnalogueGain", "ColourGains", "AeEnable", "AwbEnable", "FrameDurationLimits")}

    def set_controls(self, controls: dict) -> None:
        checked = self._checked_controls(controls)
        with self._world.lock:
            if not self.started:
                self._sim.set_controls(self._to_sim(checked))  # goes with start(): in force from the first frame
            else:
                delay = self.camera_config["buffer_count"] - 1 + self._world.queue_latency
                self._pending.append((self._produced + delay, checked))

    # -- running ---------------------------------------------------------------------------------------
    def start(self, config=None, show_preview=False) -> None:
        if self.camera_config is None:
            self.configure(config)
        if self.started:
            return
        self._sim.start()
        self.started = True
        self._to_drop = self._world.startup_frames

    def stop(self) -> None:
        if self.started:
            self._sim.stop()
            self.started = False
            self._held = None

    def _produce(self, timeout: float):
        """Run the sensor for one frame: controls whose request has come round reach it first."""
        due = [c for at, c in self._pending if at <= self._produced]
        self._pending = [(at, c) for at, c in self._pending if at > self._produced]
        for c in due:
            self._sim.set_controls(self._to_sim(c))
        frame = self._sim.capture(timeout=timeout)
        self._produced += 1
        return frame

    def _next_frame(self, timeout: float, flush):
        """The next frame picamera2 would return (startup frames dropped, one held back when queueing)."""
        if self._still_controls is not None:  # a switch_mode configuration: the sensor runs in its mode
            return self._sim.capture_still(timeout=timeout, mode=self._mode, controls=self._still_controls)
        threshold = None
        if flush:
            threshold = time.monotonic_ns() if flush is True else int(flush)
        queue = self.camera_config["queue"] and self.camera_config["buffer_count"] > 1
        for _ in range(64):
            if queue and self._held is not None:
                frame, self._held = self._held, None
            else:
                frame = self._produce(timeout)
            if self._to_drop > 0:
                self._to_drop -= 1
                self._world.frames_dropped += 1
                continue
            if threshold is not None and frame.metadata["SensorTimestamp"] < threshold:
                continue
            if queue:
                self._held = self._produce(timeout)
            return frame
        raise RuntimeError("fake picamera2: no frame satisfied flush")

    def _arrays(self, frame) -> dict[str, np.ndarray]:
        cfg = self.camera_config
        t = cfg["transform"]
        main_bgr, mosaic = frame.main, frame.raw
        if t.hflip:
            main_bgr, mosaic = main_bgr[:, ::-1], mosaic[:, ::-1]
        if t.vflip:
            main_bgr, mosaic = main_bgr[::-1], mosaic[::-1]
        if main_bgr.shape[1::-1] != tuple(cfg["main"]["size"]):  # the ISP scales the mode to the main size
            main_bgr = cv2.resize(np.ascontiguousarray(main_bgr), tuple(cfg["main"]["size"]),
                                  interpolation=cv2.INTER_AREA)
        arrays = {"main": self._main_array(main_bgr, cfg["main"]["format"])}
        if cfg["lores"] is not None:
            small = cv2.resize(np.ascontiguousarray(main_bgr), tuple(cfg["lores"]["size"]), interpolation=cv2.INTER_AREA)
            arrays["lores"] = cv2.cvtColor(small, cv2.COLOR_BGR2YUV_I420)
        if cfg["raw"] is not None:
            buf, stride = raw_buffer(np.ascontiguousarray(mosaic), cfg["raw"]["format"], self._mode.bit_depth,
                                     self._world.platform, garbage_seed=frame.sequence)
            assert stride == cfg["raw"]["stride"]
            arrays["raw"] = buf
            self._world.last_raw[self.camera_idx] = (frame.sequence, np.ascontiguousarray(mosaic).copy())
        return arrays

    @staticmethod
    def _main_array(bgr: np.ndarray, fmt: str) -> np.ndarray:
        """DRM fourcc names: RGB888 is B,G,R in memory, BGR888 is R,G,B, XRGB8888 is BGRX, XBGR8888 is RGBX."""
        bgr = np.ascontiguousarray(bgr)
        if fmt == "RGB888":
            return bgr.copy()
        if fmt == "BGR888":
            return np.ascontiguousarray(bgr[:, :, ::-1])
        if fmt == "XRGB8888":
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
        if fmt == "XBGR8888":
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGBA)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)

    def _metadata(self, frame) -> dict:
        md = dict(frame.metadata)
        if self._world.libcamera_version < (0, 5):
            md["AeLocked"] = md.pop("AeState", 0) == 2
        md["ColourCorrectionMatrix"] = (1.6, -0.45, -0.15, -0.3, 1.5, -0.2, -0.05, -0.55, 1.6)
        md["FocusFoM"] = 1000
        return md

    def _capture_request(self, timeout: float | None, flush) -> CompletedRequest:
        world = self._world
        if not self.started:
            raise RuntimeError("Camera must be started before capturing")
        limit = world.stall_timeout if timeout is None else min(timeout, world.stall_timeout)
        with world.lock:
            if not world.lock.wait_for(lambda: world.outstanding[self.camera_idx] < self.camera_config["buffer_count"],
                                       limit):
                raise TimeoutError(
                    f"fake picamera2: all {self.camera_config['buffer_count']} buffers are held by unreleased "
                    "requests; the real pipeline would stall here")
            frame = self._next_frame(timeout if timeout is not None else 10.0, flush)
            request = CompletedRequest(self, frame, self._arrays(frame), self._metadata(frame))
            world.outstanding[self.camera_idx] += 1
            return request

    # -- mode switches (picamera2's switch_mode_ = stop_, configure_, start_; functions run in order) -------
    def _switch_mode_(self, camera_config, still: bool = True) -> None:
        self.stop()
        self._configure(camera_config, still)
        if still:
            self._world.still_configs.append(self.camera_configuration())
        self.start()

    def switch_mode(self, camera_config, wait=None, signal_function=None):
        def run(timeout):
            self._switch_mode_(camera_config, still=False)
            return self.camera_configuration()

        return Job(run) if wait is False else run(None)

    def switch_mode_and_capture_request(self, camera_config, wait=None, signal_function=None, delay=0):
        """Switch to camera_config, capture one request in it, switch back to the configuration in force
        (its own controls); the caller must release the request."""
        preview_config = copy.deepcopy(self.camera_config)

        def run(timeout):
            self._switch_mode_(camera_config)
            request = self._capture_request(timeout, None)
            self._switch_mode_(preview_config, still=False)
            return request

        return Job(run) if wait is False else run(None)

    def switch_mode_capture_request_and_stop(self, camera_config, wait=None, signal_function=None):
        """Switch to camera_config, capture one request in it and stop the camera (still configured so)."""
        def run(timeout):
            self._switch_mode_(camera_config)
            request = self._capture_request(timeout, None)
            self.stop()
            return request

        return Job(run) if wait is False else run(None)

    def capture_request(self, wait=None, signal_function=None, flush=None):
        if wait is False:
            return Job(lambda timeout: self._capture_request(timeout, flush))
        return self._capture_request(None, flush)

    def wait(self, job: Job, timeout: float | None = None):
        return job.get_result(timeout)

    def captured_request(self, wait=None, flush=None):
        picam2 = self

        class _Ctx:
            def __enter__(self):
                self.request = picam2.capture_request(wait=wait, flush=flush)
                return self.request

            def __exit__(self, *exc):
                self.request.release()

        return _Ctx()

    def capture_arrays(self, names=("main",), wait=None, signal_function=None):
        request = self.capture_request()
        try:
            return [request.make_array(name) for name in names], request.get_metadata()
        finally:
            request.release()

    def capture_array(self, name="main", wait=None, signal_function=None):
        arrays, _ = self.capture_arrays([name])
        return arrays[0]

    def capture_metadata(self, wait=None, signal_function=None):
        request = self.capture_request()
        try:
            return request.get_metadata()
        finally:
            request.release()

    def drop_frames(self, num_frames: int, wait=None, signal_function=None):
        for _ in range(num_frames):
            self.capture_request().release()


def make_fake_picamera2(cameras=("imx477",), platform: str = "vc4", *, seed: int = 0, pacing: bool = False,
                        version: str = "0.3.38", queue_latency: int = 1, stall_timeout: float = 1.0,
                        libcamera_version: str = "0.5.0", startup_frames: int = STARTUP_FRAMES) -> types.ModuleType:
    """A fresh fake `picamera2` module. cameras: sensor names or CameraSpec; platform "vc4" (Pi 4) or "pisp"
    (Pi 5); version "0.3.36" raises IndexError for a missing camera, later ones RuntimeError."""
    world = FakeWorld(cameras, platform, seed, pacing, version, queue_latency, stall_timeout, libcamera_version,
                      startup_frames)
    CameraManager = type("CameraManager", (CameraManagerBase,), {"_world": world})
    Picamera2 = type("Picamera2", (Picamera2Base,), {"_world": world, "_cm": CameraManager(),
                                                    "platform": Platform(platform)})
    module = types.ModuleType("picamera2")
    module.Picamera2 = Picamera2
    module.CameraManager = CameraManager
    module.Platform = Platform
    module.Transform = Transform
    module.SensorFormat = SensorFormat
    module.CompletedRequest = CompletedRequest
    module.picamera2 = types.SimpleNamespace(Picamera2=Picamera2, CameraManager=CameraManager)
    module.helpers = types.SimpleNamespace(decompress=decompress_comp1)
    module.world = world
    module.__version__ = version
    return module
