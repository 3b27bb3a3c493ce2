"""A frame's age is never negative (breaker F11: the README example printed `age -13 ms` on a loaded machine).

Cause: the pong waited in the viewer's queue behind frames, so its receipt time was late, the round trip
looked asymmetric and the offset estimate came out low by up to RTT/2. Fix: causality bounds the offset
(protocol/clock.py)."""

from __future__ import annotations

from protocol.clock import ClockOffset, clock_sample

from host_viewer.client import AgentClient

MS = 1_000_000


def test_a_frame_raises_a_low_estimate_but_only_up_to_the_pings_upper_bound():
    clock = ClockOffset()
    # true offset 0; the ping took 1 ms out, its pong 79 ms back (queued on a busy viewer)
    clock.add(clock_sample(t0=0, t1=1 * MS, t3=80 * MS))
    assert clock.offset_ns == -39 * MS  # the symmetric assumption: 39 ms low
    clock.note_frame(capture_ns=100 * MS, received_ns=102 * MS)  # captured 2 ms before it arrived
    assert clock.offset_ns == -2 * MS  # at least capture − receipt
    clock.note_frame(capture_ns=10_000 * MS, received_ns=110 * MS)  # a timestamp from the future (forged)
    assert clock.offset_ns <= 1 * MS + 1  # never beyond t1 − t0: the agent answered after the ping left


def test_a_consistent_estimate_is_left_alone():
    clock = ClockOffset()
    clock.add(clock_sample(t0=0, t1=5 * MS + 1 * MS, t3=2 * MS))  # offset 5 ms, rtt 2 ms
    clock.note_frame(capture_ns=50 * MS, received_ns=60 * MS)  # bound -10 ms: already satisfied
    assert clock.offset_ns == 5 * MS


def test_ages_of_a_real_stream_are_not_negative_with_a_skewed_clock_sample(start_agent):
    agent = start_agent(fps=30.0)
    client = AgentClient(f"127.0.0.1:{agent.port}", ping_interval=3600).start()  # no pings after the first
    try:
        client.wait_connected(10)
        first = client.wait_frame(timeout=10)
        skewed = ClockOffset()  # what a loaded viewer measured: same machine (offset 0) but 40 ms low
        now = first.received_ns
        skewed.add(clock_sample(t0=now - 81 * MS, t1=now - 80 * MS, t3=now))
        assert skewed.offset_ns < -30 * MS
        client.clock = skewed
        frame = client.wait_frame(timeout=10, newer_than=first.sequence)
        for _ in range(5):
            frame = client.wait_frame(timeout=10, newer_than=frame.sequence)
            assert frame.age_ms(frame.received_ns) >= 0
        assert client.clock.offset_ns > -30 * MS
    finally:
        client.close()
