"""The `snapshot` command: the next captured request at full quality, while the stream goes on.

A snapshot is one CapturedFrame taken from the capture thread through `CapturePipeline.add_listener`: the
main image JPEG-encoded at the requested quality (default 95) at its configured size, the raw Bayer mosaic
of the configured sensor mode as a protocol array, and the metadata and raw statistics of that same request.
The stream is never stopped: the listener only hands the frame to a worker thread, which encodes and replies.

"Full resolution" means the sensor mode the stream runs in (its raw size, e.g. 1640x1232 binned for a
640x480 stream on an IMX219). No temporary switch to the full-array mode is made: it would stop the stream
for a reconfigure on a real Pi. Start the agent with a larger --size to get a full-array mode.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import simplejpeg

from protocol import Command, Error, ErrorCode, Result, pack_array
from protocol.limits import MAX_MESSAGE_SIZE

from .camera.base import CapturedFrame
from .commands import CommandRouter, Reply
from .errors import CommandError
from .pipeline import CapturePipeline
from .stats import RawStats
from .wire import plain

log = logging.getLogger(__name__)

DEFAULT_QUALITY = 95
FRAME_TIMEOUT_S = 5.0
# Room left in a result message for the envelope, metadata and statistics.
RESULT_HEADROOM = 1 << 20


def _arguments(args: dict) -> tuple[int, bool]:
    quality = args.get("quality", DEFAULT_QUALITY)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise CommandError(ErrorCode.BAD_ARGUMENT, f"snapshot quality must be an integer 1..100, not {str(quality)[:20]}")
    raw = args.get("raw", True)
    if not isinstance(raw, bool):
        raise CommandError(ErrorCode.BAD_ARGUMENT, "snapshot 'raw' must be true or false")
    return quality, raw


def snapshot_value(frame: CapturedFrame, stats: RawStats, quality: int, include_raw: bool,
                   configuration: dict[str, Any]) -> dict[str, Any]:
    """The result map of a snapshot (see docs/protocol.md): JPEG, raw array, metadata, stats, sensor facts."""
    jpeg = simplejpeg.encode_jpeg(frame.main, quality=quality, colorspace="BGR", colorsubsampling="444")
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
    """Registers `snapshot` on a CommandRouter; each call waits for the next frame without blocking anyone."""

    def __init__(self, pipeline: CapturePipeline, configuration: callable):
        self.pipeline = pipeline
        self._configuration = configuration  # () -> the camera configuration in force
        self.taken = 0

    def register(self, router: CommandRouter) -> None:
        router.register("snapshot", self.handle)

    def handle(self, command: Command, reply: Reply) -> None:
        quality, include_raw = _arguments(command.args)
        self.pipeline.require_running("snapshot")
        lock = threading.Lock()
        state = {"done": False}

        def claim() -> bool:
            with lock:
                if state["done"]:
                    return False
                state["done"] = True
                return True

        def finish(frame: CapturedFrame, stats: RawStats) -> None:
            try:
                value = snapshot_value(frame, stats, quality, include_raw, self._configuration())
            except CommandError as exc:
                reply(Error(id=command.id, code=exc.code, message=exc.message))
                return
            except Exception as exc:  # an encoder failure must still give one final reply
                log.exception("snapshot failed")
                reply(Error(id=command.id, code=ErrorCode.FAILED, message=f"snapshot failed: {exc}"))
                return
            self.taken += 1
            reply(Result(id=command.id, value=value))

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
                        message=f"no frame from the camera within {FRAME_TIMEOUT_S:g} s; snapshot not taken"))

        timer = threading.Timer(FRAME_TIMEOUT_S, timed_out)
        timer.daemon = True
        timer.start()
        self.pipeline.add_listener(listener)
        return None
