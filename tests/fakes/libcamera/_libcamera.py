"""The Python API of the simulated libcamera: the names picamera2 uses, shaped as libcamera's pybind11 bindings.

Sources: src/py/libcamera/py_main.cpp (classes, properties, errors raised as RuntimeError from
std::system_error), py_camera_manager.cpp (the weak singleton, the eventfd written once per completed request,
`get_ready_requests`), py_helpers.cpp (control values), src/libcamera/camera.cpp (state machine
Available → Acquired → Configured → Running, `configure` refusing a configuration that does not validate as
Valid, `patchControlList` for AeEnable, `queueRequest` only while running), src/libcamera/request.cpp
(`reuse`), src/libcamera/ipa_proxy.cpp (LIBCAMERA_RPI_TUNING_FILE read when the IPA of each camera is
created, i.e. when a CameraManager starts).
"""

from __future__ import annotations

import enum
import json
import logging
import mmap
import os
import threading
import weakref

from . import _machine
from ._controls import ControlId, ControlInfo, ControlType, controls, properties, to_control_value  # noqa: F401
from ._geometry import ColorSpace, Orientation, PixelFormat, Rectangle, Size, Transform  # noqa: F401

log = logging.getLogger(__name__)


class StreamRole(enum.IntEnum):
    StillCapture = 0
    Raw = 1
    VideoRecording = 2
    Viewfinder = 3


class Stream:
    def __init__(self, cfg):
        self._cfg = weakref.ref(cfg)

    @property
    def configuration(self):
        return self._cfg()


class StreamFormats:
    def __init__(self, formats: dict):
        self._formats = formats  # {PixelFormat: [Size]}

    @property
    def pixel_formats(self) -> list:
        return list(self._formats)

    def sizes(self, pixel_format) -> list:
        return list(self._formats.get(pixel_format, []))

    def range(self, pixel_format):
        sizes = self._formats.get(pixel_format, [])
        return (min(sizes), max(sizes)) if sizes else None


class StreamConfiguration:
    def __init__(self, formats: StreamFormats, size: Size, pixel_format: PixelFormat, color_space, buffer_count):
        self._formats = formats
        self.size, self.pixel_format, self.color_space, self.buffer_count = size, pixel_format, color_space, buffer_count
        self.stride = 0
        self.frame_size = 0
        self._stream: Stream | None = None

    @property
    def formats(self) -> StreamFormats:
        return self._formats

    @property
    def stream(self):
        return self._stream

    def __str__(self):
        return f"{self.size}-{self.pixel_format}"


class SensorConfiguration:
    def __init__(self):
        self.bit_depth = 0
        self.output_size = Size()
        self.analog_crop = Rectangle()
        self.binning = (1, 1)
        self.skipping = (1, 1, 1, 1)

    def is_valid(self) -> bool:
        return bool(self.bit_depth and self.output_size.width and self.output_size.height)


class CameraConfiguration:
    class Status(enum.IntEnum):
        Valid = 0
        Adjusted = 1
        Invalid = 2

    def __init__(self, pipe):
        self._pipe = pipe
        self._configs: list[StreamConfiguration] = []
        self.sensor_config: SensorConfiguration | None = None
        self.orientation = Orientation.Rotate0
        self._validated = None

    def at(self, index: int) -> StreamConfiguration:
        return self._configs[index]

    def __iter__(self):
        return iter(self._configs)

    def __len__(self):
        return len(self._configs)

    @property
    def size(self) -> int:
        return len(self._configs)

    @property
    def empty(self) -> bool:
        return not self._configs

    def validate(self):
        return self._pipe.validate(self)


class FrameMetadata:
    class Status(enum.IntEnum):
        Success = 0
        Error = 1
        Cancelled = 2
        Startup = 3  # FrameMetadata::FrameStartup (not bound by name in py_main.cpp)

    class Plane:
        def __init__(self, bytes_used: int = 0):
            self.bytes_used = bytes_used

    def __init__(self, nplanes: int):
        self.status = FrameMetadata.Status.Success
        self.sequence = 0
        self.timestamp = 0
        self._planes = [FrameMetadata.Plane() for _ in range(nplanes)]

    @property
    def planes(self) -> list:
        return [FrameMetadata.Plane(p.bytes_used) for p in self._planes]  # copies, as the binding makes

    def _set_bytes_used(self, n: int) -> None:
        for p in self._planes:
            p.bytes_used = n


class FrameBuffer:
    class Plane:
        def __init__(self, fd: int = -1, offset: int = 0, length: int = 0):
            self.fd, self.offset, self.length = fd, offset, length

    def __init__(self, planes, cookie: int = 0):
        self._planes = [FrameBuffer.Plane(p.fd, p.offset, p.length) for p in planes]
        self.cookie = cookie
        self._metadata = FrameMetadata(len(self._planes))
        self._map: mmap.mmap | None = None

    @property
    def planes(self) -> list:
        return [FrameBuffer.Plane(p.fd, p.offset, p.length) for p in self._planes]

    @property
    def metadata(self) -> FrameMetadata:
        return self._metadata

    def _mapped(self) -> memoryview:
        """The pipeline's view of the buffer memory (the dmabuf/memfd the application allocated)."""
        if self._map is None:
            p = self._planes[0]
            self._map = mmap.mmap(p.fd, p.offset + p.length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        p = self._planes[0]
        return memoryview(self._map)[p.offset: p.offset + p.length]


class FrameBufferAllocator:
    """libcamera's own allocator (picamera2's LibcameraAllocator): memfd buffers of each stream's frame_size."""

    def __init__(self, camera: "Camera"):
        self._camera = camera
        self._buffers: dict = {}

    def allocate(self, stream: Stream) -> int:
        cfg = stream.configuration
        bufs = []
        for i in range(cfg.buffer_count):
            fd = os.memfd_create(f"libcamera-sim-{i}", os.MFD_CLOEXEC)
            os.ftruncate(fd, cfg.frame_size)
            bufs.append(FrameBuffer([FrameBuffer.Plane(fd, 0, cfg.frame_size)]))
        self._buffers[stream] = bufs
        return len(bufs)

    @property
    def allocated(self) -> bool:
        return bool(self._buffers)

    def buffers(self, stream: Stream) -> list:
        return list(self._buffers.get(stream, []))


class Request:
    class Status(enum.IntEnum):
        Pending = 0
        Complete = 1
        Cancelled = 2

    class Reuse(enum.IntEnum):
        Default = 0
        ReuseBuffers = 1

    def __init__(self, camera: "Camera", cookie: int):
        self._camera = weakref.ref(camera)  # a Camera* in C++: no keep-alive
        self.cookie = cookie
        self._buffers: dict = {}
        self._controls: dict = {}
        self._metadata: dict = {}
        self.status = Request.Status.Pending
        self.sequence = 0

    def add_buffer(self, stream: Stream, buffer: FrameBuffer) -> None:
        if stream is None or buffer is None:
            raise RuntimeError("Failed to add buffer: Invalid argument")
        self._buffers[stream] = buffer

    @property
    def buffers(self) -> dict:
        return dict(self._buffers)

    @property
    def has_pending_buffers(self) -> bool:
        return self.status == Request.Status.Pending

    @property
    def metadata(self) -> dict:
        return dict(self._metadata)

    def set_control(self, cid: ControlId, value) -> None:
        self._controls[cid] = to_control_value(cid, value)

    def reuse(self) -> None:
        self.status = Request.Status.Pending
        self._controls = {}
        self._metadata = {}
        for fb in self._buffers.values():
            fb.metadata.status = FrameMetadata.Status.Success

    def __str__(self):
        return f"Request({self.sequence}:{self.status.name[0]}:{self.cookie})"


class Camera:
    """libcamera.Camera of the RPi pipeline (one per connected module)."""

    def __init__(self, manager: "CameraManager", pipe):
        self._manager = manager  # keep-alive: a camera keeps its CameraManager (py_camera_manager.cpp)
        self._pipe = pipe

    @property
    def id(self) -> str:
        return self._pipe.id

    @property
    def properties(self) -> dict:
        return self._pipe.properties()

    @property
    def controls(self) -> dict:
        return dict(self._pipe.control_info)

    @property
    def streams(self) -> set:
        cfg = self._pipe.config
        return {c.stream for c in cfg} if cfg is not None else set()

    def acquire(self) -> None:
        machine = self._pipe.machine
        with machine.lock:
            if self._pipe.camera_state != "Available" or self._pipe.index in machine.acquired:
                raise RuntimeError("Failed to acquire camera: Device or resource busy")
            machine.acquired.add(self._pipe.index)
            self._pipe.camera_state = "Acquired"

    def release(self) -> None:
        if self._pipe.camera_state == "Running":
            raise RuntimeError("Failed to release camera: Device or resource busy")
        machine = self._pipe.machine
        with machine.lock:
            if self._pipe.camera_state != "Available":
                machine.acquired.discard(self._pipe.index)
            self._pipe.camera_state = "Available"

    def generate_configuration(self, roles) -> CameraConfiguration:
        pipe = self._pipe
        config = CameraConfiguration(pipe)
        full = Size(*pipe.sensor.full_array)
        full_mode = max(pipe.sensor.modes, key=lambda m: m.size[0] * m.size[1])
        raw_formats = {PixelFormat(name): [Size(*m.size) for m in modes]
                       for name, modes in pipe.sensor_formats().items()}
        isp_formats = {PixelFormat(name): [Size(64, 64), Size(*full_mode.size)] for name in
                       ("YUV420", "YVU420", "NV12", "NV21", "RGB888", "BGR888", "XRGB8888", "XBGR8888")}
        for role in roles:
            role = StreamRole(role)
            if role == StreamRole.Raw:
                mode = pipe.find_best_mode(Size(*full_mode.size), 12)
                name = f"S{pipe.native_order}{mode.bit_depth}_CSI2P"
                cfg = StreamConfiguration(StreamFormats(raw_formats), Size(*mode.size), PixelFormat(name),
                                          ColorSpace.Raw(), 2)
            elif role == StreamRole.StillCapture:
                cfg = StreamConfiguration(StreamFormats(isp_formats), Size(*full_mode.size), PixelFormat("YUV420"),
                                          ColorSpace.Sycc(), 1)
            elif role == StreamRole.VideoRecording:
                cfg = StreamConfiguration(StreamFormats(isp_formats), Size(1920, 1080), PixelFormat("YUV420"),
                                          ColorSpace.Rec709(), 4)
            else:
                cfg = StreamConfiguration(StreamFormats(isp_formats), Size(800, 600), PixelFormat("XRGB8888"),
                                          ColorSpace.Sycc(), 4)
            config._configs.append(cfg)
        del full
        return config

    def configure(self, config: CameraConfiguration) -> None:
        if self._pipe.camera_state not in ("Acquired", "Configured"):
            raise RuntimeError("Failed to configure camera: Device or resource busy" if self._pipe.camera_state == "Running"
                               else "Failed to configure camera: Permission denied")
        self._pipe.configure(config)
        self._pipe.camera_state = "Configured"

    def create_request(self, cookie: int = 0) -> Request:
        if self._pipe.camera_state not in ("Configured", "Running"):
            raise RuntimeError("Failed to create request: Cannot allocate memory")
        return Request(self, cookie)

    def start(self, controls: dict | None = None) -> None:
        if self._pipe.camera_state != "Configured":
            raise RuntimeError("Failed to start camera: Permission denied")
        patched = {cid: to_control_value(cid, v) for cid, v in dict(controls or {}).items()}
        self._patch_controls(patched)
        self._pipe.start(patched)
        self._pipe.camera_state = "Running"

    def stop(self) -> None:
        if self._pipe.camera_state != "Running":
            return
        cancelled = self._pipe.stop()
        for request in cancelled:  # completed as Cancelled through the manager, like the pipeline's stop
            self._manager._complete(request, request.sequence, {}, success=False, cancelled=True)
        self._pipe.camera_state = "Configured"

    def queue_request(self, request: Request) -> None:
        if self._pipe.camera_state != "Running":
            raise RuntimeError("Failed to queue request: Permission denied")
        if request.status != Request.Status.Pending:
            raise RuntimeError("Failed to queue request: Device or resource busy")
        self._patch_controls(request._controls)
        self._pipe.queue_request(request)

    def _patch_controls(self, ctrls: dict) -> None:
        """camera.cpp patchControlList: AeEnable becomes ExposureTimeMode/AnalogueGainMode, unless the same
        list already sets those (then they win)."""
        ae = ctrls.get(controls.AeEnable)
        if ae is None:
            return
        mode = 0 if ae else 1
        ctrls.setdefault(controls.AnalogueGainMode, mode)
        ctrls.setdefault(controls.ExposureTimeMode, mode)

    def __str__(self):
        return f"<libcamera.Camera '{self.id}'>"


_g_manager = None  # weakref.ref to the live CameraManager (py_main.cpp gCameraManager is a weak_ptr)
_g_lock = threading.Lock()


class CameraManager:
    """libcamera.CameraManager: `singleton()` returns the live manager or starts a new one, which enumerates the
    machine's cameras and loads each camera's tuning (LIBCAMERA_RPI_TUNING_FILE, else the stock file)."""

    version = "v0.5.1+rpt-simulated"

    def __init__(self):
        from ._pipeline import RPiCameraData

        machine = _machine.current()
        self._machine = machine
        self._event_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._completed: list[Request] = []
        self._lock = threading.Lock()
        source = os.environ.get("LIBCAMERA_RPI_TUNING_FILE") or None
        record = {"source": source, "tunings": {}, "errors": {}}
        # The C++ manager owns the cameras; Python Camera objects only keep the manager alive (keep_alive in
        # py_camera_manager.cpp), so nothing here refers back to them strongly: when picamera2 drops its last
        # Camera and its CameraManager wrapper, this manager is gone at once (no cycle waiting for the GC).
        self._pipes: list = []
        self._camera_objects: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        for index, module in enumerate(machine.cameras):
            path = source or machine.stock_tuning_path(module.tuning_model)
            try:
                with open(path) as f:
                    tuning = json.load(f)
                from ._isp import check_tuning

                check_tuning(tuning, machine.target)
            except Exception as exc:  # the IPA fails to init: the camera is not registered
                error = f"{type(exc).__name__}: {exc}"
                log.error("simulated libcamera: camera %d (%s): tuning %s rejected: %s", index, module.info.model,
                          path, error)
                record["errors"][index] = error
                continue
            record["tunings"][index] = tuning
            pipe = RPiCameraData(self, index, module, machine, tuning, path)
            machine.register(index, pipe)
            self._pipes.append(pipe)
        with machine.lock:
            machine.managers_created.append(record)

    def __del__(self):
        try:
            os.close(self._event_fd)
        except (OSError, AttributeError):
            pass

    @staticmethod
    def singleton() -> "CameraManager":
        global _g_manager
        with _g_lock:
            cm = _g_manager() if _g_manager is not None else None
            if cm is None:
                cm = CameraManager()
                _g_manager = weakref.ref(cm)
            return cm

    @property
    def cameras(self) -> list:
        out = []
        for pipe in self._pipes:
            cam = self._camera_objects.get(pipe.index)
            if cam is None:
                cam = Camera(self, pipe)
                self._camera_objects[pipe.index] = cam
            out.append(cam)
        return out

    def get(self, camera_id: str):
        return next((c for c in self.cameras if c.id == camera_id), None)

    @property
    def event_fd(self) -> int:
        return self._event_fd

    def get_ready_requests(self) -> list:
        try:
            os.eventfd_read(self._event_fd)
        except BlockingIOError:
            return []
        with self._lock:
            ready, self._completed = self._completed, []
        return ready

    def _complete(self, request: Request, sequence: int, metadata: dict, success: bool,
                  cancelled: bool = False) -> None:
        """PyCameraManager::handleRequestCompleted: queue the request and write the eventfd."""
        status = FrameMetadata.Status
        for fb in request._buffers.values():
            fb.metadata.status = status.Cancelled if cancelled else (status.Success if success else status.Startup)
            fb.metadata.sequence = sequence
            fb.metadata.timestamp = metadata.get(controls.SensorTimestamp, 0)
        request._metadata = metadata
        request.sequence = sequence
        request.status = Request.Status.Cancelled if cancelled else Request.Status.Complete
        with self._lock:
            self._completed.append(request)
        os.eventfd_write(self._event_fd, 1)
