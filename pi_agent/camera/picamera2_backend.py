"""The Picamera2 backend: a real Raspberry Pi camera behind the CameraBackend interface.

picamera2 is imported lazily (on a Pi it comes from apt); `picamera2_module=` lets tests pass the module to
use (the real picamera2 running on the simulated libcamera of tests/fakes). Facts this code relies on are in
shared/reference/picamera2.md:

- one video configuration with a main stream ("RGB888", which is B,G,R in memory: DRM fourcc naming) and
  an unpacked raw stream at the chosen sensor mode (`sensor={"output_size", "bit_depth"}`), queue=False
  (no frame held back), a small buffer_count;
- main, raw and metadata come from ONE capture_request(), released in `finally` (a held request stalls
  the pipeline); raw is unpacked by raw_unpack (stride padding, Pi 4 LSB-aligned or CSI2P, Pi 5 MSB-aligned);
- the Bayer order is read from camera_configuration()["raw"]["format"] after configure (the HQ camera
  lists SRGGB12 but delivers SBGGR12), the black level from each frame's SensorBlackLevels;
- a lens shading table goes into the rpi.alsc section of the tuning (16x12 on Pi 4, 32x32 on Pi 5) and
  takes effect only when a new libcamera CameraManager reads it: close the camera, drop picamera2's
  manager (`del Picamera2._cm; gc.collect(); Picamera2._cm = CameraManager()`), check that the old
  libcamera manager is really gone (if anything still holds it the new tuning is silently ignored, #886),
  reopen with `Picamera2(tuning=...)`, reconfigure and restart with the same controls.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import logging
import math
import threading
import time
import weakref
from concurrent.futures import CancelledError
from typing import Any, Callable

import numpy as np

from .base import CameraBackend, CameraError, CapturedFrame, LensShadingTable
from .requested import merge_requested
from .limits import check_stream_request
from .raw_unpack import RawFormatError, parse_raw_format, unpack_raw
from .sensors import MONO, SensorInfo, SensorMode, _mode, sensor_for
from .tuning import TuningError, grid_for_target, target_of, with_lens_shading

log = logging.getLogger(__name__)

# Controls the backend passes through (libcamera names); others are refused with a clear error.
SUPPORTED_CONTROLS = ("ExposureTime", "AnalogueGain", "ColourGains", "AeEnable", "AwbEnable", "FrameDurationLimits")
MAIN_FORMAT = "RGB888"  # B,G,R bytes in memory: what CapturedFrame.main and the JPEG encoder want
REOPEN_GRACE_S = 30.0  # how long a capture may wait while the camera is being reopened with a new tuning
HELD_REQUEST_WAIT_S = 10.0  # how long a stop/configure waits for a capture to give back the request it holds


def _import_picamera2():
    import picamera2  # noqa: PLC0415 - optional, Pi-only dependency

    return picamera2


def picamera2_available(module=None) -> bool:
    """True when picamera2 imports and `Picamera2.global_camera_info()` lists at least one camera.

    global_camera_info() creates libcamera's CameraManager and picamera2 keeps it; a tuning passed to a
    later `Picamera2(tuning=...)` would then be silently ignored (picamera2 #886). So after asking, the
    manager is dropped again (only when no camera of this process is open) so the next open reads its tuning.
    """
    try:
        module = module or _import_picamera2()
    except Exception as exc:  # ImportError on x86, ModuleNotFoundError('libcamera'), OSError probing devices
        log.debug("picamera2 unavailable: %s", exc)
        return False
    try:
        cameras = module.Picamera2.global_camera_info()
    except Exception as exc:
        log.info("picamera2 imports but listing cameras failed: %s", exc)
        return False
    try:
        _fresh_camera_manager(module)
    except CameraError as exc:
        log.warning("%s", exc)
    if cameras:
        log.debug("picamera2 cameras: %s", cameras)
    return bool(cameras)


def _fresh_camera_manager(module) -> None:
    """Replace picamera2's CameraManager wrapper (and with it libcamera's manager) by a new one, the
    labthings-picamera2 way. Refused while a camera of this process is open: its close() would then
    clean up in the wrong manager."""
    P = module.Picamera2
    old = getattr(P, "_cm", None)
    if old is not None and getattr(old, "cameras", None):
        raise CameraError("another camera of this process is open; close it before reloading the tuning")
    cm_class = getattr(getattr(module, "picamera2", None), "CameraManager", None) or type(old)
    try:
        del P._cm
    except AttributeError:
        pass
    del old
    gc.collect()
    P._cm = cm_class()


def _cancel_jobs(cam) -> None:
    """Empty picamera2's job queue (`cancel_all_and_flush`): a job that can never finish (its frame never
    came) stays at the head of `_job_list`, and every later job — stop() too — waits behind it
    (picamera2/picamera2.py dispatch_functions, process_requests)."""
    try:
        cam.cancel_all_and_flush()
    except Exception:  # a picamera2 without it, or a camera already closed: nothing queued to cancel
        log.debug("cancel_all_and_flush failed", exc_info=True)


def _abandon(cam, job) -> None:
    """Give up on a timed-out job: take it out of the queue, and release its request if it finished in the
    meantime (a request never released stalls the pipeline)."""
    _cancel_jobs(cam)
    try:
        late = job.get_result(timeout=0)
    except BaseException:  # cancelled, still pending, or failed: nothing to release
        return
    release = getattr(late, "release", None)
    if release is not None:
        release()


def _main_to_bgr(array: np.ndarray, fmt: str) -> np.ndarray:
    """A main-stream array in DRM fourcc naming → HxWx3 BGR."""
    if fmt == "RGB888":
        return array
    if fmt == "BGR888":
        return np.ascontiguousarray(array[:, :, ::-1])
    if fmt == "XRGB8888":
        return np.ascontiguousarray(array[:, :, :3])
    if fmt == "XBGR8888":
        return np.ascontiguousarray(array[:, :, 2::-1])
    raise CameraError(f"main stream format {fmt} cannot be delivered as BGR")


class Picamera2Camera(CameraBackend):
    """A Raspberry Pi camera through picamera2.

    camera_num: index in Picamera2.global_camera_info(). tuning: a tuning dict or file path to open with
    (None: the stock file of the sensor). packed_raw: ask for CSI2P raw (Pi 4 unpacks it here; on Pi 5 it
    becomes lossy PISP_COMP1, refused unless `decompress` is given: True for picamera2's own
    `Picamera2.helpers.decompress`, or a function of the (h, stride) uint8 buffer).
    """

    name = "picamera2"

    def __init__(self, camera_num: int = 0, *, picamera2_module=None, tuning: dict | str | None = None,
                 buffer_count: int = 3, packed_raw: bool = False,
                 decompress: Callable[[np.ndarray], np.ndarray] | bool | None = None):
        if picamera2_module is None:
            try:
                picamera2_module = _import_picamera2()
            except Exception as exc:
                raise CameraError(
                    f"picamera2 is not available ({exc}); on a Pi: sudo apt install python3-picamera2 and a venv "
                    "created with --system-site-packages"
                ) from None
        if buffer_count < 1:
            raise ValueError(f"buffer_count must be ≥ 1, got {buffer_count}")
        self._module = picamera2_module
        self._camera_num = int(camera_num)
        self._tuning = copy.deepcopy(tuning)
        self._stock_tuning = copy.deepcopy(tuning)  # what clear_lens_shading goes back to (None: the stock file)
        self._buffer_count = int(buffer_count)
        self._packed = bool(packed_raw)
        self._decompress = decompress
        self._lock = threading.RLock()  # the camera object: capture vs. reopen vs. controls
        self._cam = None
        self._started = False
        self._requested: dict[str, Any] = {}
        self._config_args: tuple | None = None
        self._configuration: dict[str, Any] = {}
        self._sequence = 0
        self._table: LensShadingTable | None = None
        self._raw_format = None
        # a delivered request being read vs. the camera being switched; notified when a capture lets go of one
        self._request_lock = threading.Condition(threading.Lock())
        self._generation = 0  # +1 whenever the camera stops or is configured: older requests are stale
        self._in_hand = 0  # captures between asking for a request and releasing it (guarded by _request_lock)
        try:
            _fresh_camera_manager(picamera2_module)  # whatever listed the cameras before must not pin the tuning
        except CameraError as exc:
            log.warning("%s", exc)
        self._open(self._tuning)

    # ================================================================ open / close
    def _open(self, tuning) -> None:
        P = self._module.Picamera2
        try:
            cam = P(self._camera_num, tuning=tuning)
        except (IndexError, RuntimeError) as exc:
            # drop the traceback: its frames hold libcamera objects (the camera manager) that would keep the
            # failed tuning alive and make the next tuning silently ignored (#886)
            raise CameraError(self._open_error(exc, tuning)) from exc.with_traceback(None)
        self._cam = cam
        if self._decompress is True or getattr(self, "_decompress_own", False):
            self._decompress_own = True
            self._decompress = cam.helpers.decompress  # picamera2/request.py Helpers.decompress
        self._properties = dict(cam.camera_properties)
        self._model = str(self._properties.get("Model", "unknown"))
        self._sensor_modes = cam.sensor_modes  # cached before start(): reading it configures every mode
        log.info("opened camera %d: %s (rotation %s)", self._camera_num, self._model, self._properties.get("Rotation"))

    def _open_error(self, exc: Exception, tuning) -> str:
        text = str(exc) or type(exc).__name__
        n = self._camera_num
        if "did not complete" in text or "busy" in text.lower():
            return (f"camera {n} is busy or failed to start ({text}): another program or another Picamera2 object "
                    "in this process holds it; close it first")
        if isinstance(exc, IndexError) or "No camera" in text:
            if tuning is not None:
                return (f"camera {n} did not open with the given tuning ({text}): libcamera drops a camera whose "
                        "tuning file it rejects (bad version, wrong target, wrong LSC table size), or none is connected")
            return (f"no camera {n} found ({text}): is a camera connected and enabled? "
                    "check with `rpicam-hello --list-cameras`")
        return f"camera {n} failed to open: {text}"

    def _close_camera(self) -> None:
        cam, self._cam = self._cam, None
        self._started = False
        self._invalidate_requests(cam)
        if cam is None:
            return
        try:
            cam.stop()
        finally:
            cam.close()

    def close(self) -> None:
        with self._lock:
            self._close_camera()

    # ================================================================ sensor facts
    @property
    def sensor(self) -> SensorInfo:
        base = self._camera_sensor
        if self._raw_format is None:
            return base
        bits = self._bit_depth
        shift = base.bit_depth - bits
        changes = {"bayer_order": self._raw_format.bayer_order, "bit_depth": bits}
        if shift:
            changes["black_level"] = base.black_level >> shift if shift > 0 else base.black_level << -shift
            changes["target_white_level"] = (base.target_white_level >> shift if shift > 0
                                             else base.target_white_level << -shift)
        return dataclasses.replace(base, **changes)

    @property
    def is_mono(self) -> bool:
        """A monochrome sensor: ColorFilterArrangement MONO (5) in camera_properties, or raw modes R8/R10/R12
        (picamera2.md §8; picamera2's own `is_mono` reads the same property)."""
        if self._properties.get("ColorFilterArrangement") == 5:
            return True
        return any(parse_raw_format(str(m["unpacked"])).bayer_order == MONO for m in self._sensor_modes[:1])

    @property
    def _camera_sensor(self) -> SensorInfo:
        """`_sensor_from_camera()` for the sensor_modes read at the last open, computed once per open."""
        key = id(self._sensor_modes)
        cached = getattr(self, "_camera_sensor_cache", None)
        if cached is None or cached[0] != key:
            cached = self._camera_sensor_cache = (key, self._sensor_from_camera())
        return cached[1]

    def _sensor_from_camera(self) -> SensorInfo:
        """The sensor as this camera lists it: its modes (size, depth, fps, crop) from picamera2's
        `sensor_modes` and its pixel array from camera_properties, over the table's facts for the model (black
        level, target, delays, gain codes) — the table only fills in what the camera does not report."""
        mono = self.is_mono
        base = sensor_for(self._model, mono) or self._generic_sensor(mono)
        known = {(m.size, m.bit_depth): m for m in base.modes}
        modes = []
        for listed in self._sensor_modes:
            size, bits, fps = tuple(int(v) for v in listed["size"]), int(listed["bit_depth"]), float(listed["fps"])
            crop = tuple(int(v) for v in listed.get("crop_limits") or (0, 0, *size))
            binning = max(1, round(crop[2] / size[0]))
            table = known.get((size, bits))
            # the line time (exposure quantum) is not listed: the table's where it has this mode, else from the rate
            line = table.line_time_us if table is not None else None
            modes.append(_mode(size, bits, fps, crop, binning, line_time_us=line))
        full = tuple(self._properties.get("PixelArraySize") or max((m.size for m in modes), key=lambda s: s[0] * s[1]))
        return dataclasses.replace(base, modes=tuple(modes), full_array=(int(full[0]), int(full[1])))

    def _generic_sensor(self, mono: bool | None = None) -> SensorInfo:
        """Facts for a sensor missing from the table, from what the camera reports (estimates where it is silent);
        `mono` defaults to what the camera says (`is_mono`)."""
        mono = self.is_mono if mono is None else mono
        modes = tuple(
            _mode(tuple(m["size"]), int(m["bit_depth"]), float(m["fps"]), tuple(m["crop_limits"]), 1)
            for m in self._sensor_modes
        )
        bits = max(m.bit_depth for m in modes)
        full = tuple(self._properties.get("PixelArraySize", max(m.size for m in modes)))
        order = MONO if mono else parse_raw_format(str(self._sensor_modes[0]["unpacked"])).bayer_order
        ranges = self._cam.camera_controls if self._cam else {}
        gmin, gmax = (ranges.get("AnalogueGain", (1.0, 16.0))[:2])
        return SensorInfo(model=self._model, bayer_order=order, bit_depth=bits, black_level=4096 >> (16 - bits),
                          target_white_level=int(0.68 * (2**bits - 1)), full_array=full, modes=modes,
                          exposure_delay=2, gain_delay=2, vblank_delay=2, gain_min=float(gmin), gain_max=float(gmax),
                          full_well_e=5000.0, read_noise_e=3.0, exposure_min_us=30.0, unit_cell_nm=0)

    # ================================================================ configuration
    def _picamera2_mode(self, mode: SensorMode) -> dict:
        for m in self._sensor_modes:
            if tuple(m["size"]) == tuple(mode.size) and int(m["bit_depth"]) == mode.bit_depth:
                return m
        raise CameraError(f"{self._model}: the camera lists no {mode.size[0]}x{mode.size[1]} {mode.bit_depth}-bit mode")

    def configure(self, size: tuple[int, int], fps: float, raw_size: tuple[int, int] | None = None) -> dict[str, Any]:
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0 or w % 2 or h % 2:
            raise ValueError(f"main size must be positive and even, got {size}")
        if fps < 0:
            raise ValueError(f"fps must be ≥ 0 (0: free-running), got {fps}")
        with self._lock:
            if self._started:
                raise CameraError("cannot configure a started camera; stop it first")
            if self._cam is None:
                raise CameraError("camera is closed")
            base = self._camera_sensor
            if raw_size is None:  # the same sentence as the simulator's, from the modes this camera lists
                check_stream_request(base.model, base.modes, (w, h), fps)
            mode = base.mode_for((w, h), fps, raw_size)  # ValueError naming the camera's own modes and rates
            pmode = self._picamera2_mode(mode)
            if fps > 0:
                limits = (int(1e6 / fps), int(1e6 / fps))
            else:
                limits = (int(math.ceil(mode.min_frame_duration_us)), int(base.exposure_max_us))
            controls = {**{k: v for k, v in self._requested.items() if k != "FrameDurationLimits"},
                        "FrameDurationLimits": limits}
            raw_format = str(pmode["format"]) if self._packed else str(pmode["unpacked"])
            cam = self._cam
            self._invalidate_requests(cam)
            try:
                config = cam.create_video_configuration(
                    main={"size": (w, h), "format": MAIN_FORMAT},
                    raw={"format": raw_format, "size": tuple(pmode["size"])},
                    sensor={"output_size": tuple(pmode["size"]), "bit_depth": int(pmode["bit_depth"])},
                    buffer_count=self._buffer_count, queue=False, controls=controls,
                )
                cam.configure(config)
            except (RuntimeError, ValueError) as exc:
                raise CameraError(f"configuring {self._model} for {w}x{h} failed: {exc}") from exc
            actual = cam.camera_configuration()
            fmt = parse_raw_format(actual["raw"]["format"])
            if fmt.packing == "PISP_COMP1" and not self._decompress:
                raise CameraError(f"the camera delivers {fmt.name} (Pi 5 compressed raw, lossy); use packed_raw=False "
                                  "or pass decompress=True (picamera2's helpers.decompress)")
            self._raw_format = fmt
            self._raw_size = tuple(actual["raw"]["size"])
            self._bit_depth = int(actual["sensor"]["bit_depth"])
            self._main_format = actual["main"]["format"]
            self._config_args = ((w, h), fps, raw_size)
            self._configuration = {
                "main": {"size": tuple(actual["main"]["size"]), "format": self._main_format},
                "raw": {"size": self._raw_size, "format": fmt.name, "stride": actual["raw"]["stride"],
                        "bit_depth": self._bit_depth},
                "sensor": {"output_size": tuple(actual["sensor"]["output_size"]), "bit_depth": self._bit_depth},
                "fps": float(fps),
                "mode": {"size": mode.size, "crop": mode.crop, "binning": mode.binning, "fps_max": mode.fps_max},
                "FrameDurationLimits": limits,
                "bayer_order": fmt.bayer_order,
            }
            log.info("configured %s: main %dx%d, raw %s %s (stride %d), %.2f fps", self._model, w, h, fmt.name,
                     self._raw_size, actual["raw"]["stride"], fps)
            return self.configuration

    @property
    def configuration(self) -> dict[str, Any]:
        return copy.deepcopy(self._configuration)

    # ================================================================ lifecycle
    def start(self) -> None:
        with self._lock:
            if self._cam is None:
                raise CameraError("camera is closed")
            if self._config_args is None:
                self.configure((640, 480), 30.0)
            if not self._started:
                try:
                    self._cam.start()
                except RuntimeError as exc:
                    raise CameraError(f"starting the camera failed: {exc}") from exc
                self._started = True

    def stop(self) -> None:
        """Stop streaming. picamera2's stop() is a job queued behind any pending one, so pending jobs are
        cancelled first (`cancel_all_and_flush`, meant for exactly this: picamera2.py), and the stop runs
        outside the camera lock: a camera that does not answer cannot freeze controls and status."""
        with self._lock:
            cam = self._cam if self._started else None
            self._started = False
            self._invalidate_requests(cam)
        if cam is not None:
            cam.stop()

    def _invalidate_requests(self, cam) -> None:
        """Before the camera is stopped or configured again: wake a waiting capture (its job is cancelled, it
        asks again), make a request it already holds stale (it releases without reading), and wait until it
        has released it. A request held across configure() breaks picamera2's DmaAllocator: the held buffer
        stays mapped while its fd is closed and the number reused, and a later configure() raises KeyError
        in DmaAllocator.cleanup (picamera2/allocators/dmaallocator.py; seen under load)."""
        if cam is not None:
            _cancel_jobs(cam)
        with self._request_lock:
            self._generation += 1
            if not self._request_lock.wait_for(lambda: self._in_hand == 0, HELD_REQUEST_WAIT_S):
                log.warning("a capture still holds a request after %.0f s; reconfiguring the camera anyway",
                            HELD_REQUEST_WAIT_S)

    # ================================================================ frames
    def capture(self, timeout: float = 2.0) -> CapturedFrame:
        """The next request's main, raw and metadata. The wait for the frame happens OUTSIDE the camera lock:
        set_controls, status and a stop are never held up by a long exposure or a stalled camera. A capture
        woken because the camera was stopped or switched meanwhile (a still, a tuning reopen) asks again, for
        up to REOPEN_GRACE_S. A timed-out capture is taken out of picamera2's job queue (`_abandon`)."""
        deadline = time.monotonic() + timeout + REOPEN_GRACE_S
        while True:
            if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise CameraError("camera busy (reopening) for too long")
            try:
                if self._cam is None or not self._started:
                    raise CameraError("camera not started")
                cam, generation = self._cam, self._generation
                try:
                    job = cam.capture_request(wait=False)
                except RuntimeError as exc:
                    raise CameraError(f"capture failed: {exc}") from exc
                with self._request_lock:
                    self._in_hand += 1  # under the camera lock: a stop/configure after this waits for us
                fmt, size, bits, main_format = self._raw_format, self._raw_size, self._bit_depth, self._main_format
            finally:
                self._lock.release()
            try:
                try:
                    request = cam.wait(job, timeout)
                except TimeoutError:
                    _abandon(cam, job)
                    raise CameraError(f"no frame from the camera within {timeout:.3g} s") from None
                except CancelledError:
                    if time.monotonic() < deadline:
                        continue  # the camera was stopped or switched meanwhile: ask the camera as it is now
                    raise CameraError("capture cancelled: the camera was stopped") from None
                except RuntimeError as exc:
                    raise CameraError(f"capture failed: {exc}") from exc
                with self._request_lock:
                    stale = generation != self._generation  # configured again since: the buffers are not ours
                    try:  # pixels and metadata of one request, and the buffers go back at once
                        if not stale:
                            main = request.make_array("main")
                            raw8 = request.make_array("raw")
                            metadata = request.get_metadata()
                            sequence = self._sequence
                            self._sequence += 1
                    finally:
                        request.release()
            finally:
                with self._request_lock:
                    self._in_hand -= 1
                    self._request_lock.notify_all()
            if not stale:
                break
        try:
            raw = unpack_raw(raw8, fmt, size, bits, self._decompress)
        except RawFormatError as exc:
            raise CameraError(f"cannot unpack raw {fmt.name}: {exc}") from exc
        levels = metadata.get("SensorBlackLevels")
        if levels:
            black = int(round(float(np.mean(levels)))) >> (16 - bits)
        else:
            black = self.sensor.black_level
        return CapturedFrame(main=_main_to_bgr(main, main_format), raw=raw, metadata=metadata, sequence=sequence,
                             bayer_order=fmt.bayer_order, bit_depth=bits, black_level=black)

    # ================================================================ full-resolution still
    def capture_still(self, timeout: float = 5.0) -> CapturedFrame:
        """One request in the sensor's full-resolution mode, then the stream back in its own mode.

        picamera2's stop, configure the still, start, take one request (what its
        switch_mode_capture_request_and_stop does, but with configure() outside its event loop: see the code);
        the request is read and released before the video configuration is configured and started again — the
        order picamera2's docstring recommends against CMA fragmentation (#154). The video configuration is rebuilt by `configure` with the controls requested now: picamera2's
        own switch back (`switch_mode_and_capture_request`) would re-send the controls the video configuration
        was created with, undoing any set_controls since. The still configuration carries the requested
        controls too; values under AGC/AWB carry over in libcamera's IPA across the mode switch. The stream
        pauses meanwhile (`capture` waits on the camera lock): two mode switches plus one frame."""
        with self._lock:
            if self._cam is None or not self._started:
                raise CameraError("camera not started")
            cam = self._cam
            full = self._camera_sensor.full_resolution_mode  # the largest mode the camera lists
            pmode = self._picamera2_mode(full)
            raw_format = str(pmode["format"]) if self._packed else str(pmode["unpacked"])
            shortest = int(math.ceil(full.min_frame_duration_us))
            stream_longest = int(self._configuration.get("FrameDurationLimits", (0, shortest))[1])
            controls = {**{k: v for k, v in self._requested.items() if k != "FrameDurationLimits"},
                        "FrameDurationLimits": (shortest, max(shortest, stream_longest))}
            job = None
            try:
                try:
                    still = cam.create_still_configuration(
                        main={"size": tuple(pmode["size"]), "format": MAIN_FORMAT},
                        raw={"format": raw_format, "size": tuple(pmode["size"])},
                        sensor={"output_size": tuple(pmode["size"]), "bit_depth": int(pmode["bit_depth"])},
                        buffer_count=1, queue=False, controls=controls,
                    )
                    self._invalidate_requests(cam)  # the stream's waiting capture asks again after the switch
                    # Stop, configure, start, take one request: not picamera2's switch_mode_capture_request_and_stop,
                    # whose configure runs as a job inside process_requests while that call still holds the
                    # frame it hands to the preview; allocate() then closes that buffer's fd, a new buffer
                    # takes the number, and a later configure raises KeyError in DmaAllocator.cleanup
                    # (picamera2.py process_requests / allocators/dmaallocator.py). cam.stop() returns only
                    # after process_requests let go of it, and configure() on a stopped camera runs here.
                    cam.stop()
                    cam.configure(still)
                    cam.start()
                    job = cam.capture_request(wait=False)
                    request = cam.wait(job, timeout)
                except TimeoutError:
                    _abandon(cam, job)  # else the stop below would queue behind it forever
                    raise CameraError(f"no full-resolution frame within {timeout:.3g} s") from None
                except (RuntimeError, ValueError) as exc:
                    raise CameraError(f"full-resolution still failed: {exc}") from exc
                try:
                    main = request.make_array("main")
                    raw8 = request.make_array("raw")
                    metadata = request.get_metadata()
                    config = request.config
                finally:
                    request.release()
            finally:
                self._restart_stream()
            sequence = self._sequence
        try:
            fmt = parse_raw_format(str(config["raw"]["format"]))
            bits = int(config["sensor"]["bit_depth"])
            raw = unpack_raw(raw8, fmt, tuple(config["raw"]["size"]), bits, self._decompress)
        except RawFormatError as exc:
            raise CameraError(f"cannot unpack the still's raw {config['raw']['format']}: {exc}") from exc
        levels = metadata.get("SensorBlackLevels")
        black = int(round(float(np.mean(levels)))) >> (16 - bits) if levels else self.sensor.black_level
        return CapturedFrame(main=_main_to_bgr(main, config["main"]["format"]), raw=raw, metadata=metadata,
                             sequence=sequence, bayer_order=fmt.bayer_order, bit_depth=bits, black_level=black,
                             extra={"still": True})

    def _restart_stream(self) -> None:
        """The video configuration back in force and running, whatever state a still left the camera in."""
        cam = self._cam
        try:
            if getattr(cam, "started", False):
                cam.stop()
        except RuntimeError:
            log.exception("stopping the camera after a still failed")
        self._started = False
        size, fps, raw_size = self._config_args
        self.configure(size, fps, raw_size)
        self.start()

    # ================================================================ controls
    def control_ranges(self) -> dict[str, tuple[Any, Any, Any]]:
        with self._lock:
            available = dict(self._cam.camera_controls) if self._cam is not None else {}
        return {k: tuple(v) for k, v in available.items() if k in SUPPORTED_CONTROLS}

    def controls(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._requested)

    def _check_controls(self, controls: dict[str, Any]) -> dict[str, Any]:
        ranges = self.control_ranges()
        checked: dict[str, Any] = {}
        for name, value in controls.items():
            if name not in SUPPORTED_CONTROLS:
                raise ValueError(f"unknown control {name!r}; the picamera2 backend accepts {', '.join(SUPPORTED_CONTROLS)}")
            if name not in ranges:
                raise ValueError(f"control {name} is not advertised by this camera ({self._model})")
            low, high, _ = ranges[name]
            if name in ("ExposureTime", "AnalogueGain"):
                v = float(value)
                if not math.isfinite(v) or (v != 0 and not low - 1e-9 <= v <= high + 1e-9):
                    raise ValueError(f"{name} {value} is outside the camera's range {low}..{high} (0: automatic)")
                value = int(v) if name == "ExposureTime" else v
            elif name == "ColourGains":
                r, b = (float(x) for x in value)
                if not all(math.isfinite(x) and 0.0 <= x <= 32.0 for x in (r, b)):
                    raise ValueError(f"ColourGains must be two numbers within 0–32, got {value}")
                value = (r, b)
            elif name in ("AeEnable", "AwbEnable"):
                if not isinstance(value, (bool, np.bool_)):
                    raise ValueError(f"{name} must be true or false, got {value!r}")
                value = bool(value)
            else:
                value = tuple(int(x) for x in value)
            checked[name] = value
        return checked

    def set_controls(self, controls: dict[str, Any]) -> None:
        """Queue controls on the camera; picamera2 sends them with the next request (metadata shows when).

        libcamera ≥ 0.5 semantics (control_ids_core.yaml, ipa_base.cpp `applyControls`): AeEnable only sets
        ExposureTimeMode/AnalogueGainMode, and an explicit mode in the same request wins — and picamera2 sends
        ExposureTimeMode=Manual with every non-zero ExposureTime (request.py, `start_`). So "back to auto"
        (AeEnable true without values) is sent as ExposureTime = AnalogueGain = 0 (picamera2 turns those into
        the Auto modes, replacing any manual value still pending in its Controls), and the manual values are
        forgotten, so that a later configure/reopen does not re-send them and silently return to manual.
        Likewise AwbEnable true is sent with ColourGains (0, 0): the RPi IPA makes AWB manual for any
        non-zero ColourGains in the request, whatever AwbEnable says."""
        checked = self._check_controls(dict(controls))
        with self._lock:
            if self._cam is None:
                raise CameraError("camera is closed")
            try:
                self._cam.set_controls(self._as_sent(checked))
            except RuntimeError as exc:
                raise ValueError(f"the camera refused the controls: {exc}") from exc
            self._requested = merge_requested(self._requested, checked)

    @staticmethod
    def _as_sent(checked: dict[str, Any]) -> dict[str, Any]:
        sent = dict(checked)
        if checked.get("AeEnable") is True:
            sent.setdefault("ExposureTime", 0)
            sent.setdefault("AnalogueGain", 0.0)
        if checked.get("AwbEnable") is True:
            sent.setdefault("ColourGains", (0.0, 0.0))
        return sent

    def _replace_requested(self, target: dict[str, Any]) -> None:
        with self._lock:
            self._requested = dict(target)

    # ================================================================ lens shading
    @property
    def lens_shading(self) -> LensShadingTable | None:
        """The table last put in force by apply_lens_shading (None: the tuning's own)."""
        return self._table

    @property
    def opened_with_tuning(self) -> dict | str | None:
        """The tuning the camera was opened with (None: the sensor's stock file)."""
        return copy.deepcopy(self._tuning)

    def tuning(self) -> dict:
        """The tuning dict in use (the stock file when none was given), for exporting a calibrated copy."""
        with self._lock:
            return self._current_tuning()

    @property
    def tuning_target(self) -> str:
        """"pisp" on a Pi 5 (32x32 tables), "bcm2835" on a Pi 0-4 (16x12), from the tuning in use."""
        return target_of(self.tuning())

    def _current_tuning(self) -> dict:
        if isinstance(self._tuning, dict):
            return copy.deepcopy(self._tuning)
        if isinstance(self._tuning, str):
            try:
                with open(self._tuning) as f:
                    return json.load(f)
            except (OSError, ValueError) as exc:
                raise CameraError(f"cannot read the tuning file {self._tuning}: {exc}") from exc
        try:
            return self._module.Picamera2.load_tuning_file(self.tuning_file_name)
        except (RuntimeError, OSError) as exc:
            raise CameraError(f"cannot load the stock tuning file {self.tuning_file_name}: {exc}") from exc

    @property
    def tuning_file_name(self) -> str:
        """The stock tuning file libcamera loads for this camera: `<model>.json`, or `<model>_mono.json` for a
        monochrome sensor (src/libcamera/pipeline/rpi/common/pipeline_base.cpp, CameraData::loadIPA)."""
        return f"{self._model}{'_mono' if self.is_mono else ''}.json"

    def apply_lens_shading(self, table: LensShadingTable) -> None:
        """Rewrite rpi.alsc with `table` and reopen the camera so a fresh CameraManager reads it.

        The table's grid must be the one the tuning's target uses (16x12 bcm2835 / Pi 4, 32x32 pisp / Pi 5):
        a table is fitted for a grid, so it is refused rather than resampled. If libcamera rejects the new
        tuning, the previous one is reopened (the camera keeps working) and CameraError says so."""
        with self._lock:
            base = self._current_tuning()
            target = target_of(base)
            grid = grid_for_target(target)
            if tuple(table.grid) != grid:
                board = "Pi 5" if target == "pisp" else "Pi 4"
                raise TuningError(f"this camera's tuning targets {target} ({board}), whose lens shading table is "
                                  f"{grid[0]}x{grid[1]}; got {table.grid[0]}x{table.grid[1]}: fit the table on that grid")
            self._reopen(with_lens_shading(base, table))
            self._table = table

    def clear_lens_shading(self) -> None:
        """Reopen with the tuning the camera was opened with (the stock file's adaptive rpi.alsc when none
        was given), forgetting any table applied since."""
        with self._lock:
            stock = self._stock_tuning
            self._reopen(copy.deepcopy(stock) if stock is not None else self._stock_tuning_dict())
            self._tuning = copy.deepcopy(stock)
            self._table = None

    def _stock_tuning_dict(self) -> dict:
        try:
            return self._module.Picamera2.load_tuning_file(self._model + ".json")
        except (RuntimeError, OSError) as exc:
            raise CameraError(f"cannot load the stock tuning file {self._model}.json: {exc}") from exc

    def _reopen(self, new_tuning: dict) -> None:
        was_started = self._started
        held = self._libcamera_manager_ref()
        self._close_camera()
        try:
            _fresh_camera_manager(self._module)
            if held is not None and held() is not None:
                raise CameraError("libcamera's CameraManager is still referenced elsewhere in this process (an open "
                                  "camera, or an object from global_camera_info()); a new tuning would be silently "
                                  "ignored (picamera2 #886)")
            self._open(new_tuning)
        except CameraError as exc:
            log.error("reopening with the new tuning failed: %s; restoring the previous tuning", str(exc))
            self._restore(was_started)
            raise CameraError(f"the new tuning could not be put in force ({exc}); the previous tuning is back "
                              "in force") from exc
        self._tuning = new_tuning
        self._resume(was_started)
        log.info("camera reopened with the new lens shading table")

    def _libcamera_manager_ref(self):
        """A weak reference to libcamera's CameraManager, to prove it was freed (None if unknowable)."""
        cm = getattr(self._module.Picamera2, "_cm", None)
        try:
            return weakref.ref(cm.cms) if cm is not None else None
        except (AttributeError, TypeError):
            log.warning("cannot check that libcamera's CameraManager is recreated; the tuning may be ignored")
            return None

    def _restore(self, was_started: bool) -> None:
        self._close_camera()
        try:
            _fresh_camera_manager(self._module)
        except CameraError:
            log.exception("cannot drop the camera manager")
        self._open(self._tuning)
        self._resume(was_started)

    def _resume(self, was_started: bool) -> None:
        if self._config_args is not None:
            size, fps, raw_size = self._config_args
            self.configure(size, fps, raw_size)
        if was_started:
            self.start()
