"""Ctrl-C and SIGTERM as a request to stop, which the viewer's loops poll, rather than an exception.

A KeyboardInterrupt raised at an arbitrary point (inside a lock, half way through writing a recording) cannot
clean up reliably; a flag read by the loops can: a calibration is cancelled on the agent, a recording is
finished, the summary is written, and no traceback is printed. A second Ctrl-C while the viewer is waiting
for the agent to confirm a cancel gives up waiting (KeyboardInterrupt, caught by the CLI).
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)

# SIGBREAK is Ctrl-Break in a Windows console; the others exist on every OS Python runs on.
SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGBREAK", "SIGHUP") if hasattr(signal, name))


class StopRequest:
    """Set by SIGINT/SIGTERM (and SIGHUP, SIGBREAK) while installed (`with StopRequest() as stop:`).

    Thread-safe: other threads set a threading.Event (`request()`); the signal handler only assigns
    `signal_name` (atomic under the GIL) and takes no lock, because Python runs it on the main thread between
    two bytecodes, possibly while that thread holds the Event's internal lock inside Event.wait(), where
    Event.set() would wait for itself forever (pi-agent once ignored SIGTERM that way). Handlers can only be
    installed from the main thread; on another thread only `request()` sets it."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal_name: str | None = None  # e.g. "SIGINT", once a signal asked us to stop
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                try:
                    self._previous[signum] = signal.signal(signum, self._on_signal)
                except (OSError, ValueError):  # not settable here (e.g. SIGHUP ignored by nohup is still fine)
                    pass
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _on_signal(self, signum, _frame) -> None:
        if self.is_set():
            if signum == getattr(signal, "SIGINT", None):
                raise KeyboardInterrupt  # a second Ctrl-C: stop waiting for a clean exit
            return
        self.signal_name = signal.Signals(signum).name  # the stop request itself: no lock, no logging here

    def request(self, reason: str = "requested") -> None:
        """Ask for a stop from any thread but the signal handler."""
        if not self.is_set():
            self.signal_name = reason
            log.info("%s: stopping", reason)
        self.event.set()

    def is_set(self) -> bool:
        return self.signal_name is not None or self.event.is_set()
