"""How many frames to allow in flight: the link's bandwidth-delay product in frames, bounded by frame age.

A credit pays for one frame; it is back at the agent one round trip plus the frame's time in flight after
it was spent. To carry every frame the camera makes, the window must cover that cycle in frame periods:

    window = ceil((rtt + in_flight) / period) + 1

with `rtt` the smallest recent ping round trip (the path without queues), `in_flight` the frame's age on
arrival minus half that round trip (encode + transfer, plus any queueing), and one credit more for the
wait for the next capture. Delay alone therefore widens the window (a 40 ms round trip at 30 fps needs 3)
instead of being mistaken for congestion. When the link itself is the bottleneck — frames arrive no faster
than one per frame period and each spends more than 1.5 arrival gaps in flight, i.e. waits behind another —
the window is what keeps the link busy and no more: 1 + ceil(rtt / gap), so at most about one frame queues
and the age stays bounded (about two transfer times). Otherwise, while the agent still skips frames for us
(more than one in ten: the window runs dry, e.g. while a lost packet is retransmitted), the window grows by
one per decision: more frames in flight, and more duplicate acknowledgements to repair a loss quickly.
Pure logic, no sockets.
"""

from __future__ import annotations

import math
from collections import deque
from statistics import median

MAX_WINDOW = 8  # the agent caps a session's credit at 8 (docs/protocol.md)


class CreditGovernor:
    """Decides the credit to return for each received frame (I/O thread only; not shared)."""

    def __init__(self, max_credit: int = MAX_WINDOW, initial: int = 2, window: int = 8, adaptive: bool = True):
        self.max_credit = max(1, min(max_credit, MAX_WINDOW))
        self.initial = max(1, min(initial, self.max_credit))
        self.adaptive = adaptive
        self.target = self.initial  # the window the agent currently holds for us (granted, not yet spent)
        self._ages: deque[float] = deque(maxlen=window)
        self._gaps: deque[float] = deque(maxlen=window)
        self._rtts: deque[float] = deque(maxlen=16)  # ≈ 8 s of pings: long enough to see an empty path
        self._last_arrival_ms: float | None = None
        self._skipped = 0  # frames the agent skipped for us since the last decision
        self.link_bound = False  # the last decision found the link to be the bottleneck

    def reset(self) -> None:
        """A new session: the agent starts from the credit given in hello (`initial`)."""
        self.target = self.initial
        self._ages.clear()
        self._gaps.clear()
        self._last_arrival_ms = None
        self._skipped = 0
        self.link_bound = False

    def on_rtt(self, rtt_ms: float) -> None:
        """A ping's round trip (viewer clock), ms."""
        if rtt_ms >= 0:
            self._rtts.append(rtt_ms)

    def wanted(self, frame_period_ms: float) -> int:
        """The window the measurements call for (see the module docstring)."""
        rtt = min(self._rtts) if self._rtts else 0.0
        in_flight = max(0.0, median(self._ages) - rtt / 2)
        gap = median(self._gaps) if self._gaps else frame_period_ms
        self.link_bound = gap >= 0.9 * frame_period_ms and in_flight > 1.5 * gap
        if self.link_bound:
            want = 1 + math.ceil(rtt / gap)
        else:
            want = math.ceil((rtt + in_flight) / frame_period_ms) + 1
            if self._skipped * 10 > len(self._ages):  # the window runs dry: frames are skipped for us
                want = max(want, self.target + 1)
        return max(1, min(self.max_credit, want))

    def on_frame(self, arrival_age_ms: float | None, frame_period_ms: float | None,
                 arrival_ms: float | None = None, skipped: int = 0) -> int:
        """Credits to return for one received frame: 1 keeps the window, 0 shrinks it by one, more grows
        it. Without a clock offset (age) or a known frame period (a free-running camera) it stays as is."""
        if arrival_ms is not None:
            if self._last_arrival_ms is not None:
                self._gaps.append(arrival_ms - self._last_arrival_ms)
            self._last_arrival_ms = arrival_ms
        if not self.adaptive or arrival_age_ms is None or not frame_period_ms:
            return 1
        self._skipped += max(0, skipped)
        self._ages.append(arrival_age_ms)
        if len(self._ages) < self._ages.maxlen:
            return 1
        want = self.wanted(frame_period_ms)
        self._ages.clear()
        self._skipped = 0
        if want < self.target:
            self.target -= 1  # one step at a time: withholding one credit per decision
            return 0
        if want > self.target:
            grow = want - self.target
            self.target = want
            return 1 + grow
        return 1
