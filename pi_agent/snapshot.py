"""The `snapshot` command: a full-resolution still while the stream goes on, or the next streamed request.

With `full_resolution` (the default) the worker thread asks the camera for `capture_still()`: one frame in
the sensor's full-resolution mode (IMX219 3280x2464, IMX477 4056x3040), main at that size, with the
controls in force; the stream keeps its own mode. On a Raspberry Pi the stream pauses for the two mode
switches (a few hundred ms, every viewer sees the gap); the simulator renders the still beside the stream
without pausing it. A backend that cannot (the replay camera) falls back to the next streamed request and
the result says so (`full_resolution: false`, `reason`).

Without it (or on fallback) a snapshot is one CapturedFrame taken from the capture thread through
`CapturePipeline.add_listener`: the main image at the stream size and the raw mosaic of the sensor mode
the stream runs in (e.g. 1640x1232 binned for a 640x480 IMX219 stream). Either way the result carries the
JPEG (requested quality, default 95, 4:4:4), the raw Bayer mosaic as a protocol array, and the metadata
and raw statistics of that same frame.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from protocol import Command, Error, ErrorCode, Result, pack_array
from protocol.limits import MAX_MESSAGE_SIZE

from .camera.base import CameraError, CapturedFrame
from .commands import CommandRouter, Reply
from .errors import CommandError
from .jpeg import encode_main
from .pipeline import CapturePipeline
from .stats import RawStats, compute_stats
from .wire import plain

log = logging.getLogger(__name__)

DEFAULT_QUALITY = 95
FRAME_TIMEOUT_S = 5.0
STILL_TIMEOUT_S = 10.0  # a mode switch and back on a Pi, or rendering a 12 MP frame in the simulator
# Room left in a result message for the envelope, metadata and statistics.
RESULT_HEADROOM = 1 << 20


def _arguments(args: dict) -> tuple[int, bool, bool]:
    quality = args.get("quality", DEFAULT_QUALITY)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise CommandError(ErrorCode.BAD_ARGUMENT, f"snapshot quality must be an integer 1..100, not {str(quality)[:20]}")
    raw = args.get("raw", True)
    if not isinstance(raw, bool):
        raise CommandError(ErrorCode.BAD_ARGUMENT, "snapshot 'raw' must be true or false")
    full = args.get("full_resolution", True)
    if not isinstance(full, bool):
        raise CommandError(ErrorCode.BAD_ARGUMENT, "snapshot 'full_resolution' must be true or false")
    return quality, raw, full


def snapshot_value(frame: CapturedFrame, stats: RawStats, quality: int, include_raw: bool,
                   configuration: dict[str, Any]) -> dict[str, Any]:
    """The result map of a snapshot (see docs/protocol.md): JPEG, raw array, metadata, stats, sensor facts."""
    jpeg = encode_main(frame, quality, "444")  # greyscale for a monochrome sensor
    height, width = frame.main.shape[:2]
    value: dict[str, Any] = {
        "frame": frame.sequence,
        "width": width,
        "height": height,
        "jpeg": jpeg,
        "quality": quality,
        "metadata": plain(frame.metadata),
        "stats": stats.to_wire(),
        "bayer_order": frame.bayer_order,
        "bit_depth": frame.bit_depth,
        "black_level": frame.black_level,
        "configuration": plain(configuration),
    }
    if include_raw:
        value["raw"] = pack_array(frame.raw)
    size = len(jpeg) + (frame.raw.nbytes if include_raw else 0)
    if size > MAX_MESSAGE_SIZE["result"] - RESULT_HEADROOM:
        raise CommandError(ErrorCode.TOO_LARGE, f"a snapshot of {size} bytes exceeds the result limit; "
                                                "ask for raw=false or a lower quality")
    return value


class SnapshotCommand:
    """Registers `snapshot` on a CommandRouter; each call works on its own thread, never blocking the router."""

    def __init__(self, pipeline: CapturePipeline, configuration: callable):
        self.pipeline = pipeline
        self._configuration = configuration  # () -> the camera configuration in force
        self.taken = 0
        # One full-resolution still at a time: each holds a few hundred MB of buffers while it is made, and
        # on a Pi each pauses the stream; a second request meanwhile gets `busy` at once.
        self._still_lock = threading.Lock()

    def register(self, router: CommandRouter) -> None:
        router.register("snapshot", self.handle)

    def handle(self, command: Command, reply: Reply) -> None:
        quality, include_raw, full_resolution = _arguments(command.args)
        self.pipeline.require_running("snapshot")
        if full_resolution:
            if not self._still_lock.acquire(blocking=False):
                raise CommandError(ErrorCode.BUSY, "a full-resolution still is being taken; ask again when it is done")
            try:
                threading.Thread(target=self._still, args=(command, reply, quality, include_raw),
                                 name="snapshot-still", daemon=True).start()
            except BaseException:
                self._still_lock.release()
                raise
            return None
        self._next_frame(command, reply, quality, include_raw, {"full_resolution": False})
        return None

    def _still(self, command: Command, reply: Reply, quality: int, include_raw: bool) -> None:
        """On a worker thread: a full-resolution still from the camera, or the fallback when it cannot."""
        try:
            self._take_still(command, reply, quality, include_raw)
        finally:
            self._still_lock.release()

    def _take_still(self, command: Command, reply: Reply, quality: int, include_raw: bool) -> None:
        try:
            # two mode switches plus a frame whose exposure may be long: the stream's own timeout on top
            frame = self.pipeline.camera.capture_still(timeout=STILL_TIMEOUT_S + self.pipeline.capture_timeout())
        except NotImplementedError as exc:
            reason = str(exc) or "the camera cannot take a full-resolution still"
            log.info("snapshot: %s; taking the next streamed frame instead", reason)
            self._next_frame(command, reply, quality, include_raw, {"full_resolution": False, "reason": reason})
            return
        except CameraError as exc:
            reply(Error(id=command.id, code=ErrorCode.FAILED, message=f"full-resolution still failed: {exc}; "
                        "ask with full_resolution=false for a frame of the stream"))
            return
        except Exception as exc:
            log.exception("full-resolution still failed")
            reply(Error(id=command.id, code=ErrorCode.FAILED, message=f"full-resolution still failed: {exc}"))
            return
        self._finish(command, reply, frame, None, quality, include_raw, {"full_resolution": True})

    def _finish(self, command: Command, reply: Reply, frame: CapturedFrame, stats: RawStats | None, quality: int,
                include_raw: bool, extra: dict[str, Any]) -> None:
        try:
            if stats is None:
                stats = compute_stats(frame.raw, frame.bayer_order, frame.bit_depth, frame.black_level)
            value = snapshot_value(frame, stats, quality, include_raw, self._configuration())
        except CommandError as exc:
            reply(Error(id=command.id, code=exc.code, message=exc.message))
            return
        except Exception as exc:  # an encoder failure must still give one final reply
            log.exception("snapshot failed")
            reply(Error(id=command.id, code=ErrorCode.FAILED, message=f"snapshot failed: {exc}"))
            return
        value.update(extra)
        self.taken += 1
        reply(Result(id=command.id, value=value))

    def _next_frame(self, command: Command, reply: Reply, quality: int, include_raw: bool,
                    extra: dict[str, Any]) -> None:
        """The next request the stream captures, handed to a worker thread by a pipeline listener."""
        lock = threading.Lock()
        state = {"done": False}

        def claim() -> bool:
            with lock:
                if state["done"]:
                    return False
                state["done"] = True
                return True

        def finish(frame: CapturedFrame, stats: RawStats) -> None:
            self._finish(command, reply, frame, stats, quality, include_raw, extra)

        def listener(frame: CapturedFrame, stats: RawStats) -> None:
            if not claim():
                return
            timer.cancel()
            self.pipeline.remove_listener(listener)
            threading.Thread(target=finish, args=(frame, stats), name="snapshot", daemon=True).start()

        def timed_out() -> None:
            if not claim():
                return
            self.pipeline.remove_listener(listener)
            reply(Error(id=command.id, code=ErrorCode.FAILED,
                        message=f"no frame from the camera within {wait:.3g} s; snapshot not taken"))

        wait = max(FRAME_TIMEOUT_S, self.pipeline.capture_timeout())  # long exposures: frames come slowly
        timer = threading.Timer(wait, timed_out)
        timer.daemon = True
        timer.start()
        self.pipeline.add_listener(listener)
