"""The agent: a camera, the capture pipeline, the command router and the socket server, wired together."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from typing import Any, Callable

from protocol import Event, Welcome
from protocol.limits import PROTOCOL_VERSION

from .camera.base import CameraBackend
from .commands import AgentContext, CameraLease, CommandRouter
from .calibration.service import CalibrationService
from .pipeline import CapturePipeline, Demand
from .server import MAX_SESSIONS, AgentServer
from .state import StateStore
from .snapshot import SnapshotCommand
from .watchdog import Watchdog
from .wire import plain

log = logging.getLogger(__name__)

SOFTWARE = "picamlink-agent 0.1.0"


def raise_open_file_limit(wanted: int = 65536) -> tuple[int, int]:
    """Raise this process's soft limit on open files towards the hard limit (at most `wanted`).

    Each viewer connection is a descriptor; at the common soft limit of 1024 an agent holding ~1000 idle
    connections could accept no new viewer. Raising the soft limit needs no privilege. Returns (before,
    after); unchanged where the platform has no such limit."""
    try:
        import resource
    except ImportError:  # Windows
        return (-1, -1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("open-file limit raised from %d to %d", soft, target)
            return soft, target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d: %s", soft, exc)
    return soft, soft


M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # glibc mallopt parameters (malloc.h)


def tune_allocator() -> bool:
    """Keep memory that departed viewers used from staying with the agent for good (glibc only).

    Measured (scripts/bench_load.py, section "load"): 1,000 viewers that say hello and never read, three
    times over, left the agent's RSS 10-30 MB higher each round with glibc's defaults, and flat with these:
    a fixed mmap threshold of 128 KiB (large buffers, such as queued JPEG frames, are mapped and unmapped
    instead of fragmenting the heap as glibc's rising dynamic threshold lets them) and two malloc arenas
    (libzmq's I/O threads otherwise each keep an arena of freed memory). Call before threads start.
    PICAMLINK_MALLOC_TUNING=0 leaves glibc's defaults. Returns True when applied."""
    if os.environ.get("PICAMLINK_MALLOC_TUNING", "1") == "0":
        return False
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, 128 * 1024)) and bool(mallopt(M_ARENA_MAX, 2))


class Agent:
    """Start with `start()`, stop with `stop()`; `port` is the bound port (handy with port 0 in tests)."""

    def __init__(self, camera: CameraBackend, listen: str, *, size=(640, 480), fps: float = 30.0, quality: int = 80,
                 name: str | None = None, security=None, session_timeout: float = 5.0, context=None,
                 state_dir: str | None = None, announce: bool = False,
                 on_fatal: Callable[[str], None] | None = None, max_viewers: int = MAX_SESSIONS):
        """`on_fatal(reason)` is called (once, from the watchdog's thread) if a thread the agent needs ends
        while it runs; `pi-agent` exits non-zero then. Without it the failure is only logged and `failed` set."""
        self.camera = camera
        self.size = tuple(size)
        self.fps = fps
        self.configuration = camera.configure(self.size, fps)
        self.info = {
            "name": name or socket.gethostname(),
            "hostname": socket.gethostname(),
            "software": SOFTWARE,
            "instance": secrets.token_hex(6),
            "pid": os.getpid(),
            "camera": camera.name,
        }
        self.lease = CameraLease()
        self.demand = Demand()  # the socket thread says how many frames viewers will take; capture encodes only those
        self.pipeline = CapturePipeline(camera, on_frame=self._on_frame, on_event=self._on_event, quality=quality,
                                        demand=self.demand, free_running=not fps or fps <= 0)
        self.context = AgentContext(camera=camera, pipeline=self.pipeline, lease=self.lease, info=self.info)
        self.router = CommandRouter(self.context)
        # calibration commands; the saved calibration (controls + lens shading) goes in force before streaming
        self.calibration = CalibrationService(self.context, self.router, StateStore(state_dir) if state_dir else None)
        self.calibration.restore()
        SnapshotCommand(self.pipeline, lambda: self.configuration).register(self.router)
        self.server = AgentServer(listen, self.router, self.welcome, security=security,
                                  session_timeout=session_timeout, context=context, max_sessions=max_viewers,
                                  demand=self.demand)
        self.context.viewers = lambda: self.server.viewer_count
        self.context.extra["frames_sent"] = lambda: self.server.counters["frames_sent"]  # status
        self.context.events = self._on_event  # e.g. controls_changed, to every viewer
        self.port: int | None = None
        self._stopped = threading.Event()
        self.announce = announce  # mDNS/zeroconf announcement (pi_agent/announce.py)
        self.announcer = None
        self._security = security
        self.failed = threading.Event()  # set when the watchdog found a needed thread dead
        self._on_fatal = on_fatal
        self.watchdog = Watchdog(self._needed_threads, self._thread_died)

    def _needed_threads(self) -> dict[str, threading.Thread | None]:
        """The threads without which the agent serves no one (None: not running in this configuration)."""
        threads: dict[str, threading.Thread | None] = {"agent-server": self.server.thread}
        for thread in getattr(self.pipeline, "_threads", []):
            threads[thread.name] = thread
        threads["zap"] = getattr(self._security, "thread", None)
        return threads

    def _thread_died(self, names: list[str]) -> None:
        if self._stopped.is_set():
            return
        self.failed.set()
        reason = f"the agent's {', '.join(names)} thread(s) ended unexpectedly"
        if self._on_fatal is not None:
            self._on_fatal(reason)

    def welcome(self) -> Welcome:
        sensor = self.camera.sensor
        config = self.configuration
        return Welcome(
            version=PROTOCOL_VERSION,
            agent=self.info,
            sensor=plain({
                "model": sensor.model,
                "bayer_order": sensor.bayer_order,
                "bit_depth": sensor.bit_depth,
                "black_level": sensor.black_level,
                "white_level": sensor.white_level,
                "target_white_level": sensor.target_white_level,
            }),
            stream=plain({
                "width": self.size[0], "height": self.size[1], "fps": self.fps,
                "quality": self.pipeline.quality, **{k: v for k, v in config.items() if k not in ("width", "height")},
            }),
            modes=plain([{"size": m.size, "bit_depth": m.bit_depth, "fps_max": m.fps_max} for m in sensor.modes]),
            capabilities=self.router.names,
            controls=plain(self.camera.controls()),
            control_ranges=plain(self.camera.control_ranges()),
            calibration=plain(self.context.extra.get("calibration_state", lambda: {})()),
        )

    def _on_frame(self, frame) -> None:
        self.server.publish(frame)

    def _on_event(self, name: str, message: str, detail: dict[str, Any]) -> None:
        self.server.broadcast(Event(name=name, message=message, detail=plain(detail)))

    def start(self) -> int:
        self.port = self.server.start()
        self.pipeline.start()
        self.watchdog.start()
        if self.announce:
            from .announce import Announcer

            self.announcer = Announcer(self.server.host, self.port, self.info, self.camera.sensor.model,
                                       PROTOCOL_VERSION)
            self.announcer.start()
        return self.port

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.watchdog.stop()
        if self.announcer is not None:
            self.announcer.stop()
        self.router.cancel_all()
        self.pipeline.stop()
        self.server.stop()
        try:
            self.camera.close()
        except Exception:
            log.exception("camera close failed")
