"""The simulated Raspberry Pi the simulated libcamera runs on: which camera modules are connected, which ISP
(VC4 on a Pi 0–4, PiSP on a Pi 5), and the ground truth the tests read.

libcamera finds cameras by enumerating the kernel's media devices; here the harness (tests/fakes/simulated_pi.py)
installs a `Machine` before picamera2 creates its CameraManager. One machine per process at a time, like the
one Pi a process runs on.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import weakref
from typing import Any

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
TARGETS = {"vc4": "bcm2835", "pisp": "pisp"}
# Device-tree rotation of the modules (the HQ camera is mounted upside down: its modes list RGGB, it delivers
# BGGR; picamera2 #797). The others are 0 in the simulated machine.
DEFAULT_ROTATION = {"imx477": 180}


@dataclasses.dataclass
class CameraModule:
    """One camera module on a CSI port, and the scene in front of it (the simulator's physics).

    sensor: a name in pi_agent.camera.sensors.SENSORS ("imx219", ..., "ov9281", "imx296_mono"), or a SensorInfo
    (e.g. a camera listing one mode only, like IMX708 with HDR on: rpicam-apps #570)."""

    sensor: Any = "imx219"
    rotation: int | None = None
    scene: str = "chart"
    colour_temperature: float = 5000.0
    lux: float = 500.0
    corner_shading: float = 0.5
    optical_centre: tuple[float, float] = (0.53, 0.47)
    seed: int = 0

    @property
    def info(self):
        """The SensorInfo of this module (pi_agent/camera/sensors.py facts)."""
        from pi_agent.camera.sensors import SENSORS

        return SENSORS[self.sensor] if isinstance(self.sensor, str) else self.sensor

    @property
    def tuning_model(self) -> str:
        """The stock tuning file's name: the sensor model, + "_mono" for a monochrome sensor
        (src/libcamera/pipeline/rpi/common/pipeline_base.cpp CameraData::loadIPA)."""
        info = self.info
        return info.model + ("_mono" if info.is_mono else "")

    @property
    def rot(self) -> int:
        return DEFAULT_ROTATION.get(self.info.model, 0) if self.rotation is None else int(self.rotation)


class Machine:
    """Connected modules + platform + what happened (camera managers created, tunings read)."""

    def __init__(self, cameras, platform: str = "vc4"):
        if platform not in TARGETS:
            raise ValueError(f"platform must be 'vc4' (Pi 4) or 'pisp' (Pi 5), got {platform!r}")
        # a CameraModule may come from this file imported under another name (tests.fakes.libcamera._machine)
        # (fields copied one level deep: a SensorInfo given as `sensor` stays a SensorInfo, which asdict would not)
        self.cameras = [CameraModule(sensor=c) if isinstance(c, str)
                        else CameraModule(**{f.name: getattr(c, f.name) for f in dataclasses.fields(c)})
                        for c in cameras]
        self.platform = platform
        self.target = TARGETS[platform]
        self.lock = threading.Lock()
        self.managers_created: list[dict[str, Any]] = []  # per CameraManager: {"source", "tunings", "errors"}
        self._pipelines: dict[int, Any] = {}  # camera index → weakref to its live pipeline (RPiCameraData)
        self.acquired: set[int] = set()  # a camera is a device node: one owner per machine, across managers

    def stock_tuning_path(self, model: str) -> str:
        return os.path.join(DATA_DIR, self.platform, model + ".json")

    def register(self, index: int, pipeline) -> None:
        self._pipelines[index] = weakref.ref(pipeline)

    def pipeline(self, index: int = 0):
        """The live pipeline (sensor + IPA + ISP) of camera `index`, for ground truth in tests."""
        ref = self._pipelines.get(index)
        pipe = ref() if ref else None
        if pipe is None:
            raise LookupError(f"camera {index} has no live pipeline (no CameraManager holds it)")
        return pipe


_current: Machine | None = None


def install(machine: Machine | None) -> None:
    global _current
    _current = machine


def current() -> Machine:
    if _current is None:
        return Machine([], "vc4")  # a Pi with nothing connected
    return _current
