"""SIGINT and SIGTERM as a stop request that the agent's main loop polls.

Why the handler does not call Event.set(): Python runs a signal handler on the main thread between two
bytecodes, possibly while that thread holds the Event's internal lock inside Event.wait(); set() would then
wait for a lock its own thread holds, forever (seen: `pi-agent` ignored SIGTERM for 9 minutes, gdb showed the
handler blocked in Event.set on the lock its own wait held). The handler here only appends to a list, which
takes no lock; `wait()` polls it.
"""

from __future__ import annotations

import signal
import threading
import time

POLL_S = 0.2  # how soon the main loop notices a signal


class StopSignals:
    """A stop request from a signal (SIGINT, SIGTERM) or from another thread (`set()`, e.g. a fatal error).

    Thread-safe: `received` is only appended to (one bytecode, atomic under the GIL) and only by the
    handler; `event` is a threading.Event that other threads set."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.received: list[str] = []  # names of the signals received, in order

    def install(self) -> None:
        """Handle SIGINT and SIGTERM (main thread only, as Python requires)."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        self.received.append(signal.Signals(signum).name)  # no lock, no logging, nothing that can wait

    def set(self) -> None:
        """Ask for a stop from another thread."""
        self.event.set()

    def is_set(self) -> bool:
        return bool(self.received) or self.event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """True once a stop was asked for; False after `timeout` seconds without one (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            left = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
            if left <= 0:
                return False
            self.event.wait(left)
        return True
