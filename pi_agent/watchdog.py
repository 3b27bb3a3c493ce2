"""A watchdog over the threads the agent cannot serve without (socket, capture, encode, ZAP).

Every thread already survives what it handles (a bad message, a camera error, a bad frame). If one ends
anyway while the agent is meant to run, the process is alive but serves no one, and a service manager
would never restart it. The watchdog notices within `interval` seconds and calls `on_death` once with the
names of the dead threads; `pi-agent` then exits non-zero so that systemd (Restart=on-failure) restarts it.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger(__name__)


class Watchdog:
    """Polls `threads()` ({name: Thread or None}) every `interval` s from its own daemon thread.

    A name mapped to None (not started, or not used in this configuration) is not watched. Thread-safe:
    `start`/`stop` may be called from any thread; `on_death` runs on the watchdog's thread, at most once.
    """

    def __init__(self, threads: Callable[[], dict[str, threading.Thread | None]],
                 on_death: Callable[[list[str]], None], interval: float = 0.5):
        self._threads = threads
        self._on_death = on_death
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dead: list[str] = []  # set once, when the watchdog fires

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (call before stopping the watched threads on purpose)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            dead = sorted(name for name, thread in self._threads().items()
                          if thread is not None and not thread.is_alive())
            if dead and not self._stop.is_set():
                self.dead = dead
                log.critical("thread(s) %s ended while the agent runs; it can no longer serve", ", ".join(dead))
                try:
                    self._on_death(dead)
                except Exception:
                    log.exception("the watchdog's on_death handler failed")
                return
