"""Capture → statistics → JPEG → one encoded frame message, on two threads off the socket thread.

The capture thread takes a request from the camera and hands it to the encode thread at once, then computes
the frame's sampled raw statistics (and their wire map) while the encoder JPEG-encodes (both release the GIL);
the encoder then packs the frame message once for every viewer. The statistics are a fraction of an encode,
so the capture thread computes them for every frame, also those a busy encoder will skip: the encoder's
critical path is the JPEG alone. Only listeners (calibration, snapshots) make it count every pixel. Each stage
keeps only the newest item (a slow encoder drops frames rather than building latency). Listeners (the
calibration worker, snapshots) receive every CapturedFrame from the capture thread.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from protocol import ErrorCode, Frame, encode

from .camera.base import CameraBackend, CameraError, CapturedFrame, capture_timeout
from .errors import CommandError
from .jpeg import encode_main
from .stats import RawStats, compute_stats, compute_stream_stats
from .wire import plain

log = logging.getLogger(__name__)

MAX_BACKOFF = 2.0  # s between attempts to reopen a failing camera


class LatestSlot:
    """A one-item mailbox between threads: put replaces, take waits for something newer."""

    def __init__(self):
        self._cond = threading.Condition()
        self._item = None
        self._version = 0

    def put(self, item) -> None:
        with self._cond:
            self._item = item
            self._version += 1
            self._cond.notify_all()

    def take(self, after_version: int, timeout: float) -> tuple[int, object] | None:
        """The item once its version is newer than `after_version`, or None after `timeout` seconds."""
        with self._cond:
            if self._cond.wait_for(lambda: self._version > after_version, timeout):
                return self._version, self._item
            return None

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


class PendingStats:
    """The raw statistics of one frame, computed once by whichever thread asks first (the other waits).

    `full()` counts every pixel (listeners: calibration, snapshots); `for_stream()` is the sampled overlay
    statistic, or the full one if a listener already paid for it."""

    def __init__(self, frame: CapturedFrame):
        self._frame = frame
        self._lock = threading.Lock()
        self._full: RawStats | None = None
        self._stream: tuple[RawStats, dict] | None = None

    def full(self) -> RawStats:
        with self._lock:
            if self._full is None:
                f = self._frame
                self._full = compute_stats(f.raw, f.bayer_order, f.bit_depth, f.black_level)
            return self._full

    def for_stream(self) -> tuple[RawStats, dict]:
        """The statistics for the frame message and their wire map (both built beside the JPEG encode)."""
        with self._lock:
            if self._stream is None:
                f = self._frame
                stats = self._full or compute_stream_stats(f.raw, f.bayer_order, f.bit_depth, f.black_level)
                self._stream = stats, stats.to_wire()
            return self._stream


@dataclass
class EncodedFrame:
    sequence: int
    capture_ns: int
    payload: bytes  # the encoded frame message, ready to send
    jpeg_bytes: int


class CapturePipeline:
    """Runs the camera and produces encoded frame messages; `on_frame` is called with each EncodedFrame."""

    def __init__(
        self,
        camera: CameraBackend,
        on_frame: Callable[[EncodedFrame], None],
        on_event: Callable[[str, str, dict], None] | None = None,
        quality: int = 80,
    ):
        self.camera = camera
        self.quality = quality
        self._on_frame = on_frame
        self._on_event = on_event or (lambda name, message, detail: None)
        self._captured = LatestSlot()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listeners: list[Callable[[CapturedFrame, RawStats], None]] = []
        self._listeners_lock = threading.Lock()
        self.frames_captured = 0
        self.frames_encoded = 0
        self.last_metadata: dict = {}
        self.last_stats: RawStats | None = None
        self.camera_failures = 0  # failed captures since start (each reported as a camera_error event)
        self._fps_window: list[float] = []

    # listeners -------------------------------------------------------------------------------------
    def add_listener(self, listener: Callable[[CapturedFrame, RawStats], None]) -> None:
        """Call `listener(frame, stats)` on the capture thread for every frame; it must be quick."""
        with self._listeners_lock:
            self._listeners.append(listener)

    def remove_listener(self, listener) -> None:
        with self._listeners_lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    # lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        self.camera.start()
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._capture_loop, name="capture", daemon=True),
            threading.Thread(target=self._encode_loop, name="encode", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        self._captured.wake()
        for t in self._threads:
            t.join(timeout=5)
        self._threads = []
        try:
            self.camera.stop()
        except Exception:  # stopping a failed camera must not prevent shutdown
            log.exception("camera stop failed")

    @property
    def running(self) -> bool:
        """True while the capture thread runs (frames flow, unless the camera is failing)."""
        return any(t.is_alive() for t in self._threads)

    def require_running(self, what: str) -> None:
        """Refuse at once a command that needs frames when none can come (rather than time out later)."""
        if not self.running:
            raise CommandError(ErrorCode.CAMERA, f"{what}: the camera is not streaming, so no frame can come")

    @property
    def fps(self) -> float:
        window = self._fps_window
        if len(window) < 2:
            return 0.0
        return (len(window) - 1) / max(window[-1] - window[0], 1e-9)

    def capture_timeout(self, startup: bool = False) -> float:
        """Seconds before a capture counts as a camera failure: follows the frame duration and exposure in
        force and requested (camera.base.capture_timeout), so a 2.5 s frame period is not a stall; `startup`:
        the first frame after (re)starting the camera, which libcamera may precede by hidden startup frames."""
        camera = self.camera
        return capture_timeout(camera.configuration, camera.controls(), self.last_metadata, startup)

    # threads ---------------------------------------------------------------------------------------
    def _capture_loop(self) -> None:
        failures = 0  # consecutive failed captures; reset by the first good frame
        startup = True  # no frame yet since the camera (re)started
        while not self._stop.is_set():
            try:
                frame = self.camera.capture(timeout=self.capture_timeout(startup))
            except Exception as exc:  # CameraError, or a backend bug: either way report and reopen
                if self._stop.is_set():
                    return
                failures += 1
                self.camera_failures += 1
                if isinstance(exc, CameraError):
                    log.warning("capture failed (%s); reopening the camera", exc)
                else:
                    log.exception("unexpected capture error; reopening the camera")
                self._on_event("camera_error", f"capture failed: {exc}; reopening the camera",
                               {"failures": failures, "error": str(exc)[:200]})
                self._recover(failures)
                startup = True
                continue
            startup = False
            if failures:
                log.info("camera recovered after %d failed capture(s)", failures)
                self._on_event("camera_recovered", f"frames are flowing again after {failures} failed capture(s)",
                               {"failures": failures})
                failures = 0
            pending = PendingStats(frame)
            self._captured.put((frame, pending))  # the encoder starts on the JPEG while stats run here
            with self._listeners_lock:
                listeners = list(self._listeners)
            stats = None
            try:
                full = pending.full() if listeners else None  # listeners get every pixel; the stream reuses it
                stream, _ = pending.for_stream()  # here, beside the encode, so that the encoder only encodes
                stats = full or stream
            except Exception:  # a malformed raw buffer: skip this frame, keep the stream
                log.exception("raw statistics failed for frame %s; frame skipped", frame.sequence)
                continue
            self.frames_captured += 1
            self.last_metadata = frame.metadata
            if stats is not None:
                self.last_stats = stats
            now = time.monotonic()
            self._fps_window = (self._fps_window + [now])[-31:]
            for listener in listeners:
                try:
                    listener(frame, stats)
                except Exception:
                    log.exception("frame listener failed")

    def _recover(self, failures: int) -> None:
        """Reopen the camera after a failure: stop, back off (50 ms doubling to 2 s with consecutive
        failures, so a dead camera neither spins nor floods viewers with events), start again.
        "camera_recovered" is announced by the capture loop once a frame actually arrives."""
        try:
            self.camera.stop()
        except Exception:
            log.debug("stop during recovery failed", exc_info=True)
        backoff = min(MAX_BACKOFF, 0.05 * 2 ** min(failures - 1, 10))
        while not self._stop.wait(backoff):
            try:
                self.camera.start()
                return
            except Exception as exc:
                log.warning("camera restart failed: %s", exc)
                backoff = min(MAX_BACKOFF, backoff * 2)

    def _encode_loop(self) -> None:
        version = 0
        while not self._stop.is_set():
            got = self._captured.take(version, timeout=0.5)
            if got is None:
                continue
            version, (frame, pending) = got
            try:
                self._encode(frame, pending)
            except Exception:  # one bad frame must not stop the stream
                log.exception("encoding frame %s failed; frame skipped", frame.sequence)

    def _encode(self, frame: CapturedFrame, pending: "PendingStats") -> None:
        """JPEG-encode one frame (while its raw statistics are computed on the capture thread) and pack
        its message once for every viewer."""
        jpeg = encode_main(frame, self.quality, "420")  # greyscale for a monochrome sensor
        stats, wire_stats = pending.for_stream()
        self.last_stats = stats
        height, width = frame.main.shape[:2]
        capture_ns = int(frame.metadata.get("SensorTimestamp", time.monotonic_ns()))
        message = Frame(
            frame=frame.sequence,
            capture_ns=capture_ns,
            width=width,
            height=height,
            jpeg=jpeg,
            metadata=plain(frame.metadata),
            stats=wire_stats,
        )
        payload = encode(message, seq=frame.sequence, ts=time.monotonic_ns())
        self.frames_encoded += 1
        self._on_frame(EncodedFrame(frame.sequence, capture_ns, payload, len(jpeg)))
