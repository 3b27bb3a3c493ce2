"""Recording the received JPEG frames into Matroska without re-encoding (MJPEG packets, PyAV muxer).

Each received JPEG becomes one packet as it arrived (no decode, no encode), stamped with its sensor timestamp
relative to the first recorded frame in milliseconds (Matroska's time base), so playback keeps the real
timing, including frames the link dropped. The file is written under a temp name in the same directory and
moved into place when the recording stops: an interrupted recording never leaves a half-written file under
the requested name. ffprobe/ffplay/ffmpeg read it; `ffmpeg -i rec.mkv -c copy rec.avi` remuxes it.
"""

from __future__ import annotations

import fractions
import logging
from dataclasses import dataclass
from pathlib import Path

from .files import fsync_and_replace, temp_path_beside

log = logging.getLogger(__name__)

CONTAINERS = {".mkv": "matroska"}
TIME_BASE = fractions.Fraction(1, 1000)


class RecordingError(RuntimeError):
    """The recording could not be started or continued (bad file name, size change)."""


@dataclass
class RecordingSummary:
    path: str
    frames: int
    width: int
    height: int
    duration_s: float
    skipped: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class Recorder:
    """Write frames with `write(frame)` (any object with .jpeg, .capture_ns, .width, .height, .sequence);
    `close()` finishes the file and returns a summary."""

    def __init__(self, path: str | Path, fps_hint: float = 30.0):
        import av  # PyAV: an install dependency; imported here so the rest of the viewer does not need it

        self.path = Path(path)
        container = CONTAINERS.get(self.path.suffix.lower())
        if container is None:
            raise RecordingError(f"record to a .mkv file (Matroska, MJPEG without re-encoding), not {self.path.name!r}")
        if not self.path.parent.exists():
            raise RecordingError(f"directory {self.path.parent} does not exist")
        self._tmp = temp_path_beside(self.path)
        self._av = av
        try:
            self._output = av.open(str(self._tmp), "w", format=container)
        except Exception as exc:  # PyAV's errors (permission, disk, unknown format) are OSError or its own
            raise RecordingError(f"cannot write {self._tmp.name} in {self.path.parent}: {exc}") from None
        self._fps_hint = fps_hint
        self._stream = None
        self._first_ns: int | None = None
        self._last_pts = -1
        self._last_sequence: int | None = None
        self.frames = 0
        self.skipped = 0
        self.width = self.height = 0
        self.closed = False

    def write(self, frame) -> bool:
        """Append one frame; returns False (and counts it skipped) if it is a repeat or its size differs."""
        if self.closed:
            raise RecordingError("the recording is closed")
        if self._last_sequence is not None and frame.sequence == self._last_sequence:
            return False
        if self._stream is None:
            self._stream = self._output.add_stream("mjpeg", rate=max(1, round(self._fps_hint)))
            self._stream.width, self._stream.height = frame.width, frame.height
            self._stream.pix_fmt = "yuvj420p"
            self._stream.time_base = TIME_BASE
            self.width, self.height = frame.width, frame.height
            self._first_ns = frame.capture_ns
        elif (frame.width, frame.height) != (self.width, self.height):
            self.skipped += 1
            return False
        pts = (frame.capture_ns - self._first_ns) // 1_000_000
        if pts <= self._last_pts:  # two frames inside one millisecond, or a restarted agent's clock
            pts = self._last_pts + 1
        packet = self._av.Packet(frame.jpeg)
        packet.stream = self._stream
        packet.pts = packet.dts = pts
        packet.time_base = TIME_BASE
        packet.is_keyframe = True
        self._output.mux(packet)
        self._last_pts = pts
        self._last_sequence = frame.sequence
        self.frames += 1
        return True

    def close(self) -> RecordingSummary:
        if not self.closed:
            self.closed = True
            self._output.close()
            if self.frames:
                fsync_and_replace(self._tmp, self.path)
            else:
                self._tmp.unlink(missing_ok=True)
                log.warning("recording %s stopped before any frame arrived; no file written", self.path)
        return RecordingSummary(path=str(self.path), frames=self.frames, width=self.width, height=self.height,
                                duration_s=round(max(self._last_pts, 0) / 1000.0, 3), skipped=self.skipped)
