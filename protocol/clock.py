"""Clock offset between agent and viewer from ping/pong round trips (NTP's idea, minimum-RTT filter).

The viewer sends `t0` (its clock), the agent answers with `t1` (its clock on arrival), the viewer notes
`t3` on receipt. Assuming symmetric paths, agent_clock - viewer_clock = t1 - (t0 + t3) / 2, with an error
of at most RTT/2; the sample with the smallest RTT among the recent ones is the most trustworthy.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class ClockSample:
    offset_ns: int  # agent clock minus viewer clock
    rtt_ns: int


def clock_sample(t0: int, t1: int, t3: int) -> ClockSample:
    """One offset estimate from a ping sent at t0, answered at t1 (agent clock), received at t3."""
    return ClockSample(offset_ns=t1 - (t0 + t3) // 2, rtt_ns=max(0, t3 - t0))


class ClockOffset:
    """Keeps the last `window` samples and reports the offset of the one with the smallest RTT.

    Thread-safe: one thread adds (the client's I/O thread) while others read (the application). `add`
    builds a new immutable tuple of samples and the best of them under a lock and publishes both as one
    reference; readers take that reference once and never iterate a container another thread changes
    (a deque read while appended raised "deque mutated during iteration", issue 16).
    """

    def __init__(self, window: int = 16):
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        self._window = window
        self._lock = threading.Lock()
        self._state: tuple[tuple[ClockSample, ...], ClockSample | None] = ((), None)

    def add(self, sample: ClockSample) -> None:
        with self._lock:
            samples = (self._state[0] + (sample,))[-self._window:]
            self._state = (samples, min(samples, key=lambda s: s.rtt_ns))

    @property
    def samples(self) -> tuple[ClockSample, ...]:
        """The recent samples, oldest first (an immutable snapshot)."""
        return self._state[0]

    @property
    def known(self) -> bool:
        return self._state[1] is not None

    @property
    def best(self) -> ClockSample | None:
        return self._state[1]

    @property
    def offset_ns(self) -> int:
        best = self._state[1]
        return best.offset_ns if best else 0

    def to_agent(self, viewer_ns: int) -> int:
        """A viewer clock reading expressed on the agent's clock."""
        return viewer_ns + self.offset_ns

    def to_viewer(self, agent_ns: int) -> int:
        """An agent clock reading expressed on the viewer's clock."""
        return agent_ns - self.offset_ns
