"""Credit adaptation: two frames in flight on a fast link, one while the link is the bottleneck."""

from __future__ import annotations

from host_viewer.credit import CreditGovernor

PERIOD = 33.3  # ms, 30 fps


def feed(governor: CreditGovernor, age_ms: float, frames: int) -> list[int]:
    return [governor.on_frame(age_ms, PERIOD) for _ in range(frames)]


def test_a_fast_link_keeps_the_configured_credit():
    governor = CreditGovernor(2)
    assert feed(governor, 8.0, 50) == [1] * 50 and governor.target == 2


def test_a_slow_link_drops_to_one_frame_in_flight_and_a_recovered_link_gets_it_back():
    governor = CreditGovernor(2)
    returned = feed(governor, 140.0, 8)  # frames spend over two frame periods in flight
    assert returned[-1] == 0 and governor.target == 1  # one credit withheld: one frame in flight
    assert feed(governor, 70.0, 20) == [1] * 20 and governor.target == 1  # hysteresis: stays at one
    returned = feed(governor, 10.0, 8)  # the link recovered: once most recent frames arrive young
    assert returned.count(2) == 1 and set(returned) == {1, 2} and governor.target == 2
    # in flight the agent now holds the configured credit again: 2 - 1 (withheld) + 2 (given back) - 1 per frame
    assert sum(feed(governor, 140.0, 8)) == 7


def test_no_adaptation_without_a_clock_or_a_frame_period_or_with_credit_one():
    assert feed(CreditGovernor(2), 500.0, 1) == [1]
    governor = CreditGovernor(2)
    assert [governor.on_frame(None, PERIOD) for _ in range(20)] == [1] * 20
    assert [governor.on_frame(500.0, None) for _ in range(20)] == [1] * 20
    assert feed(CreditGovernor(1), 500.0, 20) == [1] * 20


def test_the_client_never_closes_its_window_over_a_slow_link(start_agent):
    """Over a real socket: a client whose governor withholds credits still gets frames (the window never
    reaches zero), and its outstanding count matches what it granted."""
    from host_viewer.client import AgentClient

    from .conftest import wait_until

    agent = start_agent(size=(320, 240), fps=30)
    client = AgentClient(f"127.0.0.1:{agent.port}", credit=2).start()
    try:
        client.wait_connected(10)
        client._governor.on_frame = lambda age, period: 0  # a governor that always wants fewer in flight
        first = client.wait_frame(timeout=5).sequence
        wait_until(lambda: client.latest().sequence > first + 20, timeout=10, message="frames keep coming")
        assert 0 < client._outstanding <= 2
    finally:
        client.close()
