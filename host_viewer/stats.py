"""Running figures a viewer shows and summarises: frame rate over a window, frame ages, link rate."""

from __future__ import annotations

import time
from collections import deque

import numpy as np


class RateMeter:
    """Events per second over the last `window` seconds."""

    def __init__(self, window: float = 2.0):
        self.window = window
        self._times: deque[float] = deque()
        self._amounts: deque[float] = deque()

    def add(self, amount: float = 1.0, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._times.append(now)
        self._amounts.append(amount)
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self.window:
            self._times.popleft()
            self._amounts.popleft()

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self._trim(now)
        if len(self._times) < 2:
            return 0.0
        span = max(now - self._times[0], 1e-6)
        return sum(list(self._amounts)[1:]) / span


def percentile(values, q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None
