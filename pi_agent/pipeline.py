"""Capture → (only when a viewer will take it) statistics + JPEG → one frame message, off the socket thread.

The capture thread takes every request from the camera (so auto exposure stays settled and listeners such
as calibration and snapshots see every frame), and does per-frame stream work only for frames that will be
sent: it asks the socket thread's `Demand` (how many frames the viewers hold credit for, minus frames already
on their way) before encoding, so an agent nobody watches encodes nothing and computes no stream statistics,
and a camera that outruns its viewers costs one encode per frame sent. Encoding runs on the capture thread
itself: one thread hand-off per frame (to the socket thread), as a bare ZeroMQ sender has. A free-running
camera (`fps` 0, benchmarks) waits for demand instead of spinning.

Each frame message is packed once for every viewer: with compact statistics and the stream's metadata keys
(the default), and, only while a viewer asked for them in hello, once more with the full statistics and
metadata (docs/protocol.md, "frame").
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
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


# The metadata a streamed frame carries by default: what the viewer shows and steers by. The full set
# (DigitalGain, ColourTemperature, Lux, ScalerCrop, SensorBlackLevels, FrameDurationLimits, ...) goes to viewers that ask for full statistics, and
# with snapshots and `status`. SensorTimestamp is the frame's `capture_ns`.
STREAM_METADATA = ("ExposureTime", "AnalogueGain", "ColourGains", "FrameDuration", "AeEnable", "AwbEnable")
IDLE_WAIT = 0.1  # s a free-running capture thread waits for demand before taking a frame anyway


class Demand:
    """How many more frames the viewers will take now; guarded by a condition (the socket thread updates it,
    the capture thread claims from it).

    `credit` is the largest credit any session holds (one encoded frame goes to every session with credit);
    `pending` counts frames claimed and not yet handled by the socket thread, so that a camera faster than
    the socket thread never encodes a frame that no credit will carry."""

    def __init__(self):
        self._cond = threading.Condition()
        self._credit = 0
        self._pending = 0
        self._full = False

    def update(self, credit: int, full: bool = False) -> None:
        """The sessions' state after the socket thread handled everything it knows (socket thread)."""
        with self._cond:
            self._credit, self._full = credit, full
            if credit > self._pending:
                self._cond.notify_all()

    def handled(self, credit: int, full: bool = False) -> None:
        """One claimed frame reached the socket thread and was offered; `credit` is the state after it."""
        with self._cond:
            self._pending = max(0, self._pending - 1)
            self._credit, self._full = credit, full
            if credit > self._pending:
                self._cond.notify_all()

    def claim(self, timeout: float = 0.0) -> tuple[bool, bool]:
        """(encode this frame?, with full statistics too?); waits up to `timeout` s for demand."""
        with self._cond:
            if timeout > 0 and self._credit <= self._pending:
                self._cond.wait(timeout)
            if self._credit > self._pending:
                self._pending += 1
                return True, self._full
            return False, False

    def release(self) -> None:
        """Give back a claim whose frame will not come (a failed capture or encode)."""
        with self._cond:
            self._pending = max(0, self._pending - 1)
            self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


class AlwaysDemand:
    """Encode every frame (a pipeline with no socket server behind it, e.g. in tests and benchmarks)."""

    def claim(self, timeout: float = 0.0) -> tuple[bool, bool]:
        return True, False

    def release(self) -> None:
        pass

    def wake(self) -> None:
        pass


class PendingStats:
    """The full raw statistics of one frame, computed once, on first request (guarded by a lock: `status`
    asks on a command thread while the capture thread may compute them for listeners)."""

    def __init__(self, frame: CapturedFrame):
        self._frame = frame
        self._lock = threading.Lock()
        self._full: RawStats | None = None

    @property
    def frame(self) -> CapturedFrame:
        return self._frame

    def full(self) -> RawStats:
        with self._lock:
            if self._full is None:
                f = self._frame
                self._full = compute_stats(f.raw, f.bayer_order, f.bit_depth, f.black_level)
            return self._full

    def computed(self) -> RawStats | None:
        return self._full


@dataclass
class EncodedFrame:
    sequence: int
    capture_ns: int
    payload: bytes  # the encoded frame message (compact statistics), ready to send
    jpeg_bytes: int
    payload_full: bytes | None = None  # the same frame with full statistics and metadata, when asked for
    encoded_at: float = 0.0  # time.monotonic() when it was packed


class CapturePipeline:
    """Runs the camera and produces encoded frame messages; `on_frame` is called with each EncodedFrame.

    Counters (read by `status`; each written by the capture thread only): frames_captured, frames_encoded,
    stream_stats (frames whose stream statistics were computed), frames_idle (captured with no demand)."""

    def __init__(
        self,
        camera: CameraBackend,
        on_frame: Callable[[EncodedFrame], None],
        on_event: Callable[[str, str, dict], None] | None = None,
        quality: int = 80,
        demand: Demand | AlwaysDemand | None = None,
        free_running: bool = False,
    ):
        self.camera = camera
        self.quality = quality
        self.demand = demand or AlwaysDemand()
        self.free_running = free_running
        self._on_frame = on_frame
        self._on_event = on_event or (lambda name, message, detail: None)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listeners: list[Callable[[CapturedFrame, RawStats], None]] = []
        self._listeners_lock = threading.Lock()
        self.frames_captured = 0
        self.frames_encoded = 0
        self.stream_stats = 0
        self.frames_idle = 0
        self.last_metadata: dict = {}
        self._last: PendingStats | None = None
        self._last_stream_stats: RawStats | None = None
        self.camera_failures = 0  # failed captures since start (each reported as a camera_error event)
        self._fps_window: deque[float] = deque(maxlen=31)

    @property
    def last_sequence(self) -> int | None:
        """The camera's frame number of the newest frame captured (None before the first). Read from any
        thread: one reference read of an object the capture thread replaces whole."""
        last = self._last
        return None if last is None else last.frame.sequence

    # listeners -------------------------------------------------------------------------------------
    def add_listener(self, listener: Callable[[CapturedFrame, RawStats], None]) -> None:
        """Call `listener(frame, stats)` on the capture thread for every frame; it must be quick."""
        with self._listeners_lock:
            self._listeners.append(listener)
        self.demand.wake()  # a free-running capture thread waiting for viewers takes frames again

    def remove_listener(self, listener) -> None:
        with self._listeners_lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    # lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        self.camera.start()
        self._stop.clear()
        self._threads = [threading.Thread(target=self._capture_loop, name="capture", daemon=True)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        self.demand.wake()
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
        window = list(self._fps_window)
        if len(window) < 2:
            return 0.0
        return (len(window) - 1) / max(window[-1] - window[0], 1e-9)

    def capture_timeout(self, startup: bool = False) -> float:
        """Seconds before a capture counts as a camera failure: follows the frame duration and exposure in
        force and requested (camera.base.capture_timeout), so a 2.5 s frame period is not a stall; `startup`:
        the first frame after (re)starting the camera, which libcamera may precede by hidden startup frames."""
        camera = self.camera
        return capture_timeout(camera.configuration, camera.controls(), self.last_metadata, startup)

    @property
    def last_stats(self) -> RawStats | None:
        """Statistics of the newest frame: full ones if already computed, else the last streamed frame's
        sample, else (nobody watching) a full count of the newest frame, computed now (by `status`)."""
        last = self._last
        if last is None:
            return None
        return last.computed() or self._last_stream_stats or last.full()

    # the capture thread ----------------------------------------------------------------------------
    def _capture_loop(self) -> None:
        failures = 0  # consecutive failed captures; reset by the first good frame
        startup = True  # no frame yet since the camera (re)started
        while not self._stop.is_set():
            with self._listeners_lock:
                listeners = list(self._listeners)
            wanted, full = self.demand.claim(IDLE_WAIT if self.free_running and not listeners else 0.0)
            if self._stop.is_set():
                return
            if not wanted and self.free_running and not listeners:
                wanted, full = self.demand.claim()  # still nobody: take one frame (metadata stays current)
            try:
                frame = self.camera.capture(timeout=self.capture_timeout(startup))
            except Exception as exc:  # CameraError, or a backend bug: either way report and reopen
                if wanted:
                    self.demand.release()
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
            if not wanted:  # the frame was taken before a credit came: take it now if one has since
                wanted, full = self.demand.claim()
            self._frame(frame, listeners, wanted, full)

    def _frame(self, frame: CapturedFrame, listeners: list, wanted: bool, full: bool) -> None:
        pending = PendingStats(frame)
        self.frames_captured += 1
        self.last_metadata = frame.metadata
        self._last = pending
        self._fps_window.append(time.monotonic())
        if listeners:
            try:
                stats = pending.full()  # listeners get every pixel; the stream reuses the count
            except Exception:  # a malformed raw buffer: skip this frame, keep the stream
                log.exception("raw statistics failed for frame %s; frame skipped", frame.sequence)
                if wanted:
                    self.demand.release()
                return
            for listener in listeners:
                try:
                    listener(frame, stats)
                except Exception:
                    log.exception("frame listener failed")
        if not wanted:
            self.frames_idle += 1
            return
        try:
            self._encode(frame, pending, full)
        except Exception:  # one bad frame must not stop the stream
            self.demand.release()
            log.exception("encoding frame %s failed; frame skipped", frame.sequence)

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

    def _encode(self, frame: CapturedFrame, pending: PendingStats, full: bool) -> None:
        """Statistics, JPEG and the frame message(s) of one frame that a viewer will take."""
        f = frame
        stats = pending.computed() or compute_stream_stats(f.raw, f.bayer_order, f.bit_depth, f.black_level)
        self._last_stream_stats = stats
        jpeg = encode_main(f, self.quality, "420")  # greyscale for a monochrome sensor
        height, width = f.main.shape[:2]
        metadata = f.metadata
        capture_ns = int(metadata.get("SensorTimestamp", time.monotonic_ns()))
        now_ns = time.monotonic_ns()
        compact = Frame(frame=f.sequence, capture_ns=capture_ns, width=width, height=height, jpeg=jpeg,
                        metadata=plain({k: metadata[k] for k in STREAM_METADATA if k in metadata}),
                        stats=stats.to_compact_wire())
        payload_full = None
        if full:
            payload_full = encode(Frame(frame=f.sequence, capture_ns=capture_ns, width=width, height=height,
                                        jpeg=jpeg, metadata=plain(metadata), stats=stats.to_wire()),
                                  seq=f.sequence, ts=now_ns)
        payload = encode(compact, seq=f.sequence, ts=now_ns)
        self.stream_stats += 1  # counted together, so that `status` never sees one without the other
        self.frames_encoded += 1
        self._on_frame(EncodedFrame(f.sequence, capture_ns, payload, len(jpeg), payload_full, time.monotonic()))
