"""Credit window: the link's bandwidth-delay product in frames; age bounded when the link is the bottleneck."""

from __future__ import annotations

from host_viewer.credit import CreditGovernor

PERIOD = 33.3  # ms, 30 fps


def feed(governor: CreditGovernor, age_ms: float, frames: int, gap_ms: float = PERIOD, rtt_ms: float | None = None,
         start_ms: float = 0.0) -> list[int]:
    """Frames arriving every `gap_ms` with `age_ms` on arrival (and, if given, one ping round trip first)."""
    if rtt_ms is not None:
        governor.on_rtt(rtt_ms)
    return [governor.on_frame(age_ms, PERIOD, start_ms + i * gap_ms) for i in range(frames)]


def window_after(governor: CreditGovernor, returned: list[int], start: int = 2) -> int:
    """Credits the agent holds for us once every frame's credit was returned: start + Σ(returned - 1)."""
    return start + sum(r - 1 for r in returned)


def test_a_fast_link_keeps_two_frames_in_flight():
    governor = CreditGovernor(initial=2)
    returned = feed(governor, 8.0, 50, rtt_ms=0.5)
    assert returned == [1] * 50 and governor.target == 2 and not governor.link_bound


def test_delay_alone_widens_the_window_to_the_bandwidth_delay_product():
    """40 ms round trip, frames 45 ms old on arrival but not queued (they arrive one per frame period): a
    credit is back after ≈ 40/2 + 45 ms, two frame periods, so three in flight carry every frame."""
    governor = CreditGovernor(initial=2)
    returned = feed(governor, 45.0, 40, rtt_ms=40.0)
    assert governor.target == 3 and window_after(governor, returned) == 3 and not governor.link_bound
    assert 0 not in returned  # latency is not mistaken for congestion


def test_a_bottleneck_link_keeps_about_one_frame_queued():
    """Frames arrive back to back 45 ms apart (slower than the camera) and each is 150 ms old: several wait
    behind each other. The window shrinks, one credit per decision, to 1 + ceil(rtt / gap) = 2."""
    governor = CreditGovernor(initial=5)
    returned = feed(governor, 150.0, 80, gap_ms=45.0, rtt_ms=6.0)
    assert governor.link_bound and governor.target == 2 and window_after(governor, returned, start=5) == 2
    assert feed(governor, 95.0, 40, gap_ms=45.0, start_ms=80 * 45.0) == [1] * 40  # two in flight: stays


def test_a_recovered_link_gets_its_window_back():
    governor = CreditGovernor(initial=2)
    feed(governor, 150.0, 16, gap_ms=45.0, rtt_ms=6.0)
    governor.target = 1  # as if the bottleneck had shrunk it to one
    returned = feed(governor, 9.0, 16, start_ms=16 * 45.0)
    assert governor.target == 2 and max(returned) == 2


def test_no_adaptation_without_a_clock_or_a_frame_period_or_when_fixed():
    governor = CreditGovernor(initial=2)
    assert [governor.on_frame(None, PERIOD) for _ in range(20)] == [1] * 20
    assert [governor.on_frame(500.0, None) for _ in range(20)] == [1] * 20
    fixed = CreditGovernor(initial=2, adaptive=False)
    assert feed(fixed, 500.0, 40, gap_ms=60.0, rtt_ms=50.0) == [1] * 40 and fixed.target == 2


def test_the_client_never_closes_its_window_over_a_slow_link(start_agent):
    """Over a real socket: a client whose governor withholds credits still gets frames (the window never
    reaches zero), and its outstanding count matches what it granted."""
    from host_viewer.client import AgentClient

    from .conftest import wait_until

    agent = start_agent(size=(320, 240), fps=30)
    client = AgentClient(f"127.0.0.1:{agent.port}", credit=2).start()
    try:
        client.wait_connected(10)
        client._governor.on_frame = lambda *args: 0  # a governor that always wants fewer in flight
        first = client.wait_frame(timeout=5).sequence
        wait_until(lambda: client.latest().sequence > first + 20, timeout=10, message="frames keep coming")
        assert 0 < client._outstanding <= 2
    finally:
        client.close()


def test_a_window_that_runs_dry_grows_while_frames_do_not_queue():
    """Frames arrive young and one period apart, yet every other frame is skipped for us (a window too small
    for the path, e.g. while losses are repaired): one more credit per decision, up to the agent's cap."""
    governor = CreditGovernor(initial=2)
    governor.on_rtt(2.0)
    returned = [governor.on_frame(10.0, PERIOD, i * 2 * PERIOD, skipped=1) for i in range(40)]
    assert governor.target == 7 and window_after(governor, returned) == 7 and not governor.link_bound
