"""Clock offset between agent and viewer from ping/pong round trips (NTP's idea, minimum-RTT filter).

The viewer sends `t0` (its clock), the agent answers with `t1` (its clock on arrival), the viewer notes
`t3` on receipt. Assuming symmetric paths, agent_clock - viewer_clock = t1 - (t0 + t3) / 2, with an error
of at most RTT/2; the sample with the smallest RTT among the recent ones is the most trustworthy.

On a loaded viewer the pong waits in its queue behind frames, so t3 is late, the paths are not symmetric and
the estimate comes out low, by up to RTT/2: frames then looked captured after they arrived (a negative age).
Causality bounds it (Cristian's interval): every frame was captured before it was received, so
offset ≥ capture_ns − received_ns, and the agent answered a ping after it was sent, so offset ≤ t1 − t0.
The reported offset is the min-RTT estimate moved into that interval.
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

    def __init__(self, window: int = 16, frames_window: int = 32):
        if window < 1 or frames_window < 1:
            raise ValueError(f"windows must be at least 1, not {window}, {frames_window}")
        self._window = window
        self._frames_window = frames_window
        self._lock = threading.Lock()
        self._state: tuple[tuple[ClockSample, ...], ClockSample | None] = ((), None)
        self._floors: tuple[int, ...] = ()  # capture_ns − received_ns of recent frames (lower bounds)

    def note_frame(self, capture_ns: int, received_ns: int) -> None:
        """A frame captured at `capture_ns` (agent clock) arrived at `received_ns` (viewer clock): the
        offset is at least their difference. Only recent frames count (the two clocks may drift apart)."""
        with self._lock:
            self._floors = (self._floors + (capture_ns - received_ns,))[-self._frames_window:]

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
        """The min-RTT estimate, raised to the recent frames' lower bound but never above that sample's upper
        bound t1 − t0 (so a frame with a forged timestamp moves it by at most RTT/2). 0 while unknown."""
        best, floors = self._state[1], self._floors
        if best is None:
            return 0
        if floors and max(floors) > best.offset_ns:
            return min(max(floors), best.offset_ns + (best.rtt_ns + 1) // 2)
        return best.offset_ns

    def to_agent(self, viewer_ns: int) -> int:
        """A viewer clock reading expressed on the agent's clock."""
        return viewer_ns + self.offset_ns

    def to_viewer(self, agent_ns: int) -> int:
        """An agent clock reading expressed on the viewer's clock."""
        return agent_ns - self.offset_ns
