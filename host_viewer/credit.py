"""How many frames to allow in flight: the configured credit, or one while the link is the bottleneck.

Two credits hide the round trip, so a fast link carries the full frame rate; but when frames spend longer
in flight than the camera takes to make them (a slow link), the second frame in flight only waits behind the
first and doubles the age on arrival. So: watch the age of frames on arrival (capture on the agent → here,
clock-offset corrected); above two frame periods (median of the last few) the link is the bottleneck and one
credit is kept in flight; below one frame period the configured credit comes back. Pure logic, no sockets.
"""

from __future__ import annotations

from collections import deque
from statistics import median


class CreditGovernor:
    def __init__(self, max_credit: int, window: int = 8):
        self.max_credit = max(1, max_credit)
        self.target = self.max_credit
        self._ages: deque[float] = deque(maxlen=window)

    def reset(self) -> None:
        """A new session: the agent starts from the credit given in hello (max_credit)."""
        self.target = self.max_credit
        self._ages.clear()

    def on_frame(self, arrival_age_ms: float | None, frame_period_ms: float | None) -> int:
        """Credits to return for one received frame: 1 normally, 0 to shrink the window by one, more to
        grow it back. Without a clock offset or a known frame period nothing adapts."""
        if arrival_age_ms is None or not frame_period_ms or self.max_credit == 1:
            return 1
        self._ages.append(arrival_age_ms)
        if len(self._ages) < self._ages.maxlen:
            return 1
        typical = median(self._ages)
        if typical > 2 * frame_period_ms and self.target > 1:
            self.target -= 1
            self._ages.clear()
            return 0
        if typical < frame_period_ms and self.target < self.max_credit:
            grow = self.max_credit - self.target
            self.target = self.max_credit
            self._ages.clear()
            return 1 + grow
        return 1
