"""Command dispatch: name → handler, and the basic commands (status, get_controls, set_controls, cancel).

Every command gets exactly one final reply (Result or Error). A handler returns a dict for a quick reply,
or starts a `Job` (a worker thread that sends Progress and then its own final reply) and returns None.
Other modules add commands with `CommandRouter.register` (calibration, snapshot, ...).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from protocol import Command, Error, ErrorCode, Message, Progress, Result
from protocol.controls import COMMAND_ARGS

from .camera.base import CameraBackend
from .controls import in_force, validate_controls
from .errors import CommandError
from .pipeline import CapturePipeline
from .wire import plain

log = logging.getLogger(__name__)

Reply = Callable[[Message], None]


class CameraLease:
    """Who may change camera controls: nobody special (None) or one running job (e.g. a calibration).

    While a job holds the lease, other control commands get a clear "busy" error.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.holder: str | None = None

    def acquire(self, holder: str) -> None:
        with self._lock:
            if self.holder is not None:
                raise CommandError(ErrorCode.BUSY, f"the camera is busy: {self.holder} is running; cancel it or wait")
            self.holder = holder

    def release(self, holder: str) -> None:
        with self._lock:
            if self.holder == holder:
                self.holder = None

    def check_free(self) -> None:
        holder = self.holder
        if holder is not None:
            raise CommandError(ErrorCode.BUSY, f"the camera is busy: {holder} is running; cancel it or wait")


@dataclass
class Job:
    """A long command on its own thread: reports progress, can be cancelled, sends one final reply."""

    command: Command
    reply: Reply
    cancelled: threading.Event = field(default_factory=threading.Event)

    def progress(self, step: str, fraction: float, **detail: Any) -> None:
        self.reply(Progress(id=self.command.id, step=step, fraction=float(fraction), detail=plain(detail)))

    def check_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise CommandError(ErrorCode.CANCELLED, f"{self.command.name} was cancelled")


@dataclass
class AgentContext:
    """What command handlers may use."""

    camera: CameraBackend
    pipeline: CapturePipeline
    lease: CameraLease
    info: dict
    viewers: Callable[[], int] = lambda: 0
    started: float = field(default_factory=time.monotonic)
    # (name, message, detail) -> an `event` to every viewer; set by the agent
    events: Callable[[str, str, dict], None] = lambda name, message, detail: None
    extra: dict = field(default_factory=dict)


class CommandRouter:
    def __init__(self, context: AgentContext):
        self.context = context
        self._handlers: dict[str, Callable[[Command, Reply], dict | None]] = {}
        self._jobs: dict[Any, Job] = {}
        self._jobs_lock = threading.Lock()
        self.register("status", self._status)
        self.register("get_controls", self._get_controls)
        self.register("set_controls", self._set_controls)
        self.register("cancel", self._cancel)

    def register(self, name: str, handler: Callable[[Command, Reply], dict | None]) -> None:
        """Add a command. Its accepted argument names come from protocol.controls.COMMAND_ARGS (the spec's
        table); a name not listed there (a test's or a plug-in's command) gets its arguments unchecked."""
        self._handlers[name] = handler

    @property
    def names(self) -> list[str]:
        return sorted(self._handlers)

    def handle(self, command: Command, reply: Reply) -> None:
        """Run `command`; exactly one Result or Error reaches `reply` (now, or later from a Job)."""
        handler = self._handlers.get(command.name)
        if handler is None:
            reply(Error(id=command.id, code=ErrorCode.UNKNOWN_COMMAND,
                        message=f"unknown command {command.name[:40]!r}; known: {', '.join(self.names)}"))
            return
        try:
            _check_argument_names(command)
            value = handler(command, reply)
        except CommandError as exc:
            reply(Error(id=command.id, code=exc.code, message=exc.message, detail=plain(exc.detail)))
            return
        except Exception as exc:  # a handler bug must not take the agent down
            log.exception("command %s failed", command.name)
            reply(Error(id=command.id, code=ErrorCode.INTERNAL, message=f"{command.name} failed: {exc}"))
            return
        if value is not None:
            reply(Result(id=command.id, value=plain(value)))

    # jobs --------------------------------------------------------------------------------------------
    def start_job(self, command: Command, reply: Reply, holder: str, work: Callable[[Job], dict],
                  on_failure: Callable[[], None] | None = None, restore_controls: bool = True) -> None:
        """Run `work(job)` on a worker thread holding the camera lease; its dict is the final Result.

        On cancellation or failure the camera controls are put back as they were when the job started
        (`restore_controls`), then `on_failure` runs (e.g. to restore a lens-shading table), then the
        Error goes out: a viewer that sees the error can rely on the camera being as before.
        """
        self.context.lease.acquire(holder)
        try:
            controls_before = dict(self.context.camera.controls()) if restore_controls else None
        except Exception:
            self.context.lease.release(holder)
            raise
        job = Job(command=command, reply=reply)
        with self._jobs_lock:
            self._jobs[command.id] = job

        def run() -> None:
            try:
                outcome: Message = Result(id=command.id, value=plain(work(job)))
            except BaseException as exc:  # noqa: BLE001 - every outcome must produce one final reply
                # An error that says the job's effect stays in force (e.g. done but not saved) keeps the controls.
                if controls_before is not None and not getattr(exc, "in_force", False):
                    self._restore_controls(command.name, controls_before)
                if on_failure is not None:
                    try:
                        on_failure()
                    except Exception:
                        log.exception("restoring after %s failed", command.name)
                if isinstance(exc, CommandError):
                    outcome = Error(id=command.id, code=exc.code, message=exc.message, detail=plain(exc.detail))
                else:
                    log.exception("job %s failed", command.name)
                    outcome = Error(id=command.id, code=ErrorCode.FAILED, message=f"{command.name} failed: {exc}")
            finally:
                self.context.lease.release(holder)
                with self._jobs_lock:
                    self._jobs.pop(command.id, None)
            reply(outcome)  # after the release: whoever sees the reply finds the camera free

        threading.Thread(target=run, name=f"job-{command.name}", daemon=True).start()

    def _restore_controls(self, job_name: str, controls: dict) -> None:
        camera = self.context.camera
        try:
            camera.restore_controls(controls)
            log.info("controls restored after %s stopped: %s", job_name, controls)
        except Exception:
            log.exception("restoring controls after %s failed", job_name)

    def cancel_all(self) -> None:
        with self._jobs_lock:
            for job in self._jobs.values():
                job.cancelled.set()

    # basic commands ----------------------------------------------------------------------------------
    def _status(self, command: Command, reply: Reply) -> dict:
        ctx = self.context
        pipeline = ctx.pipeline
        stats = pipeline.last_stats
        return {
            "agent": ctx.info,
            "uptime_s": round(time.monotonic() - ctx.started, 3),
            "frames_captured": pipeline.frames_captured,
            "frames_encoded": pipeline.frames_encoded,
            "stream_stats": pipeline.stream_stats,  # frames whose stream statistics were computed (= encoded)
            "frames_sent": ctx.extra.get("frames_sent", lambda: None)(),
            "fps": round(pipeline.fps, 2),
            "viewers": ctx.viewers(),
            "busy": ctx.lease.holder,
            "controls": ctx.camera.controls(),
            "metadata": pipeline.last_metadata,
            "stats": stats.to_wire() if stats else {},
            "calibration": ctx.extra.get("calibration_state", lambda: {})(),
        }

    def _get_controls(self, command: Command, reply: Reply) -> dict:
        """`controls`: the requested set (what the camera is asked to keep); `in_force`: the values of the
        latest frame's metadata (what it really did), with that frame's SensorTimestamp."""
        camera = self.context.camera
        metadata = self.context.pipeline.last_metadata
        value = {"controls": camera.controls(), "in_force": in_force(metadata), "ranges": camera.control_ranges()}
        if "SensorTimestamp" in metadata:
            value["in_force_frame_ns"] = metadata["SensorTimestamp"]
        return value

    def _set_controls(self, command: Command, reply: Reply) -> dict:
        self.context.lease.check_free()
        checked = validate_controls(command.args.get("controls"), self.context.camera.control_ranges())
        try:
            self.context.camera.set_controls(checked)
        except ValueError as exc:
            raise CommandError(ErrorCode.OUT_OF_RANGE, str(exc)) from None
        controls = self.context.camera.controls()
        # Requested controls are the camera's, shared by every viewer: tell the others too.
        self.context.events("controls_changed", f"controls set: {', '.join(sorted(checked))}",
                            {"controls": controls, "changed": sorted(checked)})
        return {"controls": controls}

    def _cancel(self, command: Command, reply: Reply) -> dict:
        """Stop the running long command with args `id`, or all of them. An id that is not running (finished
        already, or never known) is not an error: a cancel always races the command's final reply on the
        wire, so it answers `cancelled: []` and the command's own reply says how it ended."""
        target = command.args.get("id")
        if "id" in command.args and (isinstance(target, bool) or not isinstance(target, (int, str))):
            # nil too: a client that sends an unset id as nil must not stop every viewer's commands
            raise CommandError(ErrorCode.BAD_ARGUMENT, "cancel's 'id' must be a command id (int or str), or absent")
        with self._jobs_lock:
            jobs = [self._jobs[target]] if target in self._jobs else ([] if target is not None else list(self._jobs.values()))
        for job in jobs:
            job.cancelled.set()
        return {"cancelled": [job.command.id for job in jobs]}


def _check_argument_names(command: Command) -> None:
    """`bad_argument` for an argument name the command does not take (a misspelt option is never ignored)."""
    allowed = COMMAND_ARGS.get(command.name)
    if allowed is None:
        return
    unknown = sorted(str(name)[:40] for name in command.args if name not in allowed)
    if unknown:
        takes = ", ".join(sorted(allowed)) or "no arguments"
        raise CommandError(ErrorCode.BAD_ARGUMENT, f"{command.name} does not take {', '.join(unknown)}; it takes {takes}",
                           detail={"unknown": unknown, "accepted": sorted(allowed)})
