"""One camera in the viewer: its client, what it measures, its running command, recording and status line.

Everything a key does to a camera goes through `CameraTile`, and never blocks the window loop: commands are
sent with `send_command`, their replies land in the status line (and their Progress in `progress`) from the
client's I/O thread; files are written on worker threads.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from protocol import Progress

from .client import AgentClient, CommandFailed, ReceivedFrame
from .files import safe_name
from .manual import stepped_exposure, stepped_gain
from .recording import Recorder, RecordingError
from .session import ViewingSession
from .stats import RateMeter

log = logging.getLogger(__name__)

FINISHED_PROGRESS_SHOWN_S = 3.0


@dataclass(frozen=True)
class CommandProgress:
    """The latest Progress of a running command (or how it ended, kept on screen for a few seconds).

    Immutable: the client's I/O thread replaces the tile's reference while the window thread draws it."""

    name: str
    step: str = "sent"
    fraction: float = 0.0
    finished: float | None = None  # monotonic time it ended
    outcome: str = ""  # "done" or the error


class CameraTile:
    def __init__(self, client: AgentClient, save_dir: str | Path = "."):
        self.client = client
        self.session = ViewingSession(client)
        self.save_dir = Path(save_dir)
        self.received_meter = RateMeter()
        self.link_meter = RateMeter()
        self._last_counts = (0, 0)
        self.last_sample: float | None = None  # when the counters were last turned into rates
        self._status: tuple[str, float] = ("", 0.0)  # (text, monotonic time): one reference, set from any thread
        self.progress: CommandProgress | None = None
        self.recorder: Recorder | None = None
        self.last_frame: ReceivedFrame | None = None
        self.last_image = None  # the decoded BGR image of last_frame
        self.last_age_ms: float = 0.0
        self.requested: dict = {}  # manual controls sent and not yet superseded by auto exposure
        self.snapshots: list[dict] = []
        self._lock = threading.Lock()
        # Commands sent and not yet answered, id -> (name, future); written by both threads under _lock.
        self._in_flight: dict[int, tuple[str, Future]] = {}

    @property
    def name(self) -> str:
        welcome = self.client.welcome
        return (welcome.agent.get("name") if welcome else None) or self.client.address

    # measurements -----------------------------------------------------------------------------------
    def sample_counters(self, now: float | None = None) -> None:
        """Turn the client's running counters into rates (frames received/s, link bytes/s)."""
        now = time.monotonic() if now is None else now
        frames, data = self.client.frames_received, self.client.bytes_received
        last_frames, last_bytes = self._last_counts
        if frames < last_frames or data < last_bytes:  # a new client object
            last_frames, last_bytes = frames, data
        self.received_meter.add(frames - last_frames, now)
        self.link_meter.add(data - last_bytes, now)
        self._last_counts = (frames, data)
        self.last_sample = now

    def shown(self, frame: ReceivedFrame, image) -> None:
        self.last_frame = frame
        self.last_age_ms = self.session.record(frame, image)
        if self.recorder is not None:
            self.write_recording(frame)

    @property
    def status(self) -> str:
        return self._status[0]

    @property
    def status_time(self) -> float:
        return self._status[1]

    def status_line(self) -> tuple[str, float]:
        """(text, when) of the last status message, read together."""
        return self._status

    def set_status(self, text: str) -> None:
        self._status = (text, time.monotonic())
        log.info("%s: %s", self.client.address, text)

    # commands ---------------------------------------------------------------------------------------
    def send(self, name: str, args: dict | None = None, *, ttl: float = 5.0,
             on_result: Callable[[dict], None] | None = None, describe: str | None = None) -> Future:
        """Send a command without waiting; progress and the outcome show on screen."""
        label = describe or name
        self.progress = CommandProgress(name=label)

        def on_progress(message: Progress) -> None:
            self.progress = CommandProgress(name=label, step=message.step, fraction=message.fraction)

        pending = self.client.send_command(name, args or {}, ttl=ttl, on_progress=on_progress)
        with self._lock:
            self._in_flight[pending.id] = (name, pending.future)

        def done(future: Future) -> None:
            with self._lock:
                self._in_flight.pop(pending.id, None)
            progress = self.progress or CommandProgress(name=label)
            try:
                value = future.result()
            except CommandFailed as exc:
                self.progress = replace(progress, finished=time.monotonic(), outcome=f"{exc.code}: {exc.message}")
                self.set_status(f"{label} failed: {exc.code}: {exc.message}")
                return
            except Exception as exc:  # cancelled future or the like
                self.set_status(f"{label} failed: {exc}")
                return
            self.progress = replace(progress, finished=time.monotonic(), outcome="done", fraction=1.0)
            if on_result is not None:
                try:
                    on_result(value)
                except Exception as exc:
                    log.exception("handling the result of %s failed", name)
                    self.set_status(f"{label}: {exc}")
            else:
                self.set_status(f"{label}: ok")

        pending.future.add_done_callback(done)
        return pending.future

    def request_cancel(self, names: tuple[str, ...] = ("calibrate",), ttl: float = 10.0) -> list[tuple]:
        """Ask the agent to cancel this tile's unanswered commands called one of `names`, by their ids (never
        another viewer's: `cancel` without an id would stop every viewer's); does not wait. Returns the
        (id, name, future) of each."""
        with self._lock:
            running = [(command_id, name, future) for command_id, (name, future) in self._in_flight.items()
                       if name in names and not future.done()]
        for command_id, name, _future in running:
            self.set_status(f"cancelling {name} on the agent")
            self.client.send_command("cancel", {"id": command_id}, ttl=ttl)
        return running

    def cancel_in_flight(self, names: tuple[str, ...] = ("calibrate",), timeout: float = 10.0) -> list[str]:
        """Cancel this tile's unanswered commands called one of `names` on the agent and wait (up to `timeout`
        seconds in all) for their final replies, so the agent has put everything back before the viewer
        leaves; returns the names of the commands it cancelled."""
        running = self.request_cancel(names, timeout)
        deadline = time.monotonic() + timeout
        for command_id, name, future in running:
            try:
                future.exception(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                log.warning("%s: no reply to the cancel of %s within %g s", self.client.address, name, timeout)
        return [name for _id, name, _future in running]

    def visible_progress(self, now: float | None = None) -> CommandProgress | None:
        now = time.monotonic() if now is None else now
        progress = self.progress
        if progress is None:
            return None
        if progress.finished is not None and now - progress.finished > FINISHED_PROGRESS_SHOWN_S:
            return None
        return progress

    # manual control ---------------------------------------------------------------------------------
    def _in_force(self, name: str, default):
        frame = self.client.latest()
        return (frame.metadata.get(name) if frame else None) or default

    def _ranges(self) -> dict:
        welcome = self.client.welcome
        return welcome.control_ranges if welcome else {}

    def step_exposure(self, steps: int) -> None:
        base = self.requested.get("ExposureTime") or self._in_force("ExposureTime", 10000)
        gain = self.requested.get("AnalogueGain") or self._in_force("AnalogueGain", 1.0)
        exposure = stepped_exposure(base, steps, self._ranges())
        self._manual({"ExposureTime": exposure, "AnalogueGain": float(gain)},
                     f"ExposureTime {exposure} µs")

    def step_gain(self, steps: int) -> None:
        base = self.requested.get("AnalogueGain") or self._in_force("AnalogueGain", 1.0)
        exposure = self.requested.get("ExposureTime") or self._in_force("ExposureTime", 10000)
        gain = stepped_gain(base, steps, self._ranges())
        self._manual({"ExposureTime": int(exposure), "AnalogueGain": gain}, f"AnalogueGain {gain:.2f}")

    def _manual(self, controls: dict, label: str) -> None:
        self.requested = dict(controls)
        self.send("set_controls", {"controls": controls}, describe=label,
                  on_result=lambda value: self.set_status(f"set {label} (manual exposure)"))

    def toggle_auto_exposure(self) -> None:
        frame = self.client.latest()
        auto_now = bool(frame.metadata.get("AeEnable")) if frame else True
        if auto_now:
            exposure = int(self._in_force("ExposureTime", 10000))
            gain = float(self._in_force("AnalogueGain", 1.0))
            self._manual({"ExposureTime": exposure, "AnalogueGain": gain, "AeEnable": False},
                         "auto exposure off")
        else:
            self.requested = {}
            self.send("set_controls", {"controls": {"AeEnable": True}}, describe="auto exposure on",
                      on_result=lambda value: self.set_status("auto exposure on"))

    # snapshot and recording -------------------------------------------------------------------------
    def snapshot(self, on_saved: Callable[[dict], None] | None = None) -> Future:
        from .snapshot import save_snapshot

        def save(value: dict) -> None:
            def work() -> None:
                try:
                    welcome = self.client.welcome
                    files = save_snapshot(value, self.save_dir, agent=welcome.agent if welcome else None,
                                          model=(welcome.sensor.get("model") if welcome else "camera") or "camera")
                except Exception as exc:
                    log.exception("saving the snapshot failed")
                    self.set_status(f"snapshot not saved: {exc}")
                    return
                self.snapshots.append(files.as_dict())
                kind = "" if value.get("full_resolution", True) else " (a stream frame: no full-resolution still)"
                self.set_status(f"snapshot {value.get('width')}x{value.get('height')}{kind} saved: {files.jpeg.name}, "
                                f"{files.raw.name if files.raw else 'no raw'}")
                if on_saved is not None:
                    on_saved(files.as_dict())

            threading.Thread(target=work, name="save-snapshot", daemon=True).start()

        return self.send("snapshot", {}, ttl=15.0, on_result=save)

    def start_recording(self, path: str | Path) -> None:
        fps = 30.0
        if self.client.welcome is not None:
            fps = float(self.client.welcome.stream.get("fps") or 30.0) or 30.0
        with self._lock:
            if self.recorder is not None:
                return
            self.recorder = Recorder(path, fps_hint=fps)
        self.set_status(f"recording to {path}")

    def write_recording(self, frame: ReceivedFrame) -> None:
        with self._lock:
            recorder = self.recorder
            if recorder is None:
                return
            if not recorder.write(frame) and recorder.frames and (frame.width, frame.height) != (recorder.width, recorder.height):
                self.set_status(f"frame size changed to {frame.width}x{frame.height}; recording keeps "
                                f"{recorder.width}x{recorder.height} frames only")

    def stop_recording(self) -> dict | None:
        with self._lock:
            recorder, self.recorder = self.recorder, None
        if recorder is None:
            return None
        summary = recorder.close().as_dict()
        self.set_status(f"recorded {summary['frames']} frames to {summary['path']}")
        return summary

    def toggle_recording(self) -> None:
        """Start a recording in the save directory, or stop the running one. A save directory that cannot be
        made or written is an error on the status line; the window goes on."""
        if self.recorder is not None:
            self.stop_recording()
            return
        path = self.save_dir / f"{safe_name(self.name)}-{time.strftime('%Y%m%d-%H%M%S')}.mkv"
        try:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            self.start_recording(path)
        except (RecordingError, OSError) as exc:
            self.set_status(f"cannot record to {self.save_dir}: {exc}")
