"""Logging that a peer cannot flood: at most `burst` lines per key (a peer, a key file) per `interval`.

A viewer sending 25,000 invalid messages a second used to write one warning each (14.9 MiB of log for
129k messages, and the logging itself slowed every reply). Now each key gets `burst` lines per window;
the rest are counted, and the next line that gets through says how many were left out.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Hashable

MAX_KEYS = 4096  # forget the oldest windows beyond this many keys (a flood of new identities)


class RateLimitedLog:
    """Thread-safe (one lock). `clock` is injectable for tests."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0, burst: int = 5,
                 clock: Callable[[], float] = time.monotonic):
        self._log = logger
        self._interval = interval
        self._burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[Hashable, list] = {}  # key -> [window start, lines in window, suppressed]
        self.suppressed = 0  # lines left out in all, since start

    def log(self, level: int, key: Hashable, message: str, *args, exc_info: bool = False) -> bool:
        """Log `message % args` under `key` if its window allows; True if it was written (with the
        current exception's traceback when `exc_info`)."""
        now = self._clock()
        with self._lock:
            window = self._windows.get(key)
            if window is None or now - window[0] >= self._interval:
                left_out = window[2] if window is not None else 0
                self._windows.pop(key, None)
                if len(self._windows) >= MAX_KEYS:
                    self._windows.pop(next(iter(self._windows)))
                window = self._windows[key] = [now, 0, 0]
            else:
                left_out = 0
            if window[1] >= self._burst:
                window[2] += 1
                self.suppressed += 1
                return False
            window[1] += 1
            if window[1] == self._burst:
                message += " (further lines like this from the same source are held back for %.0f s)"
                args = (*args, self._interval - (now - window[0]))
        if left_out:
            message += " [%d similar line(s) were left out]"
            args = (*args, left_out)
        self._log.log(level, message, *args, exc_info=exc_info)
        return True

    def warning(self, key: Hashable, message: str, *args) -> bool:
        return self.log(logging.WARNING, key, message, *args)

    def forget(self, key: Hashable) -> None:
        """Drop `key`'s window (its peer is gone)."""
        with self._lock:
            self._windows.pop(key, None)
