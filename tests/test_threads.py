"""Objects shared between the client's I/O thread and the application thread, read and written at once.

Issue 16: the window died with "deque mutated during iteration" (the UI read the clock-offset samples while
the I/O thread appended). Each test below runs a writer and readers together with the interpreter switching
threads as often as it can, and asserts that no reader ever raised or saw a value that was never written.
"""

from __future__ import annotations

import sys
import threading
import time

import pytest

from host_viewer.client import AgentClient
from host_viewer.shared import ConnectionState, RecentItems
from host_viewer.tile import CameraTile
from protocol.clock import ClockOffset, ClockSample

from .conftest import wait_until


@pytest.fixture
def fast_switching():
    """Switch threads every microsecond (default 5 ms) so that races show up in a short run."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def hammer(readers, writer, *, until, timeout=20.0) -> list[BaseException]:
    """Run `writer()` in a loop on one thread and each reader in a loop on its own until `until()`; returns
    every exception raised on any of them."""
    failures: list[BaseException] = []
    stop = threading.Event()

    def loop(body):
        try:
            while not stop.is_set():
                body()
        except BaseException as exc:  # noqa: BLE001 - the test reports whatever a thread raised
            failures.append(exc)
            stop.set()

    threads = [threading.Thread(target=loop, args=(body,), daemon=True) for body in [writer, *readers]]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: until() or stop.is_set(), timeout, message="the contention run to finish")
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
    return failures


def test_clock_offset_read_while_samples_are_added(fast_switching):
    clock = ClockOffset(window=16)
    added = [0]

    def writer():
        n = added[0]
        clock.add(ClockSample(offset_ns=n, rtt_ns=1000 + (n * 7919) % 1000))
        added[0] = n + 1

    seen_best = []

    def reader():
        best = clock.best
        if best is not None:
            seen_best.append(best.rtt_ns)
        clock.offset_ns, clock.known, clock.to_agent(5), list(clock.samples)

    failures = hammer([reader, reader], writer, until=lambda: added[0] >= 20_000)
    assert failures == []
    assert seen_best and all(1000 <= rtt < 2000 for rtt in seen_best)
    samples = clock.samples  # the window holds the last 16 and the best is the minimum of exactly those
    assert [s.offset_ns for s in samples] == list(range(added[0] - 16, added[0]))
    assert clock.best == min(samples, key=lambda s: s.rtt_ns)


def test_recent_items_iterated_while_appended(fast_switching):
    items: RecentItems[int] = RecentItems(maxlen=100)
    count = [0]

    def writer():
        items.append(count[0])
        count[0] += 1

    def reader():
        snapshot = list(items)
        assert snapshot == sorted(snapshot) and len(snapshot) <= 100  # in order, never more than maxlen
        if snapshot:
            assert snapshot[-1] - snapshot[0] == len(snapshot) - 1  # a contiguous run: nothing half-applied

    failures = hammer([reader, reader], writer, until=lambda: count[0] >= 50_000)
    assert failures == []
    assert list(items) == list(range(count[0] - 100, count[0]))


def test_connection_state_is_read_whole(fast_switching):
    client = AgentClient("127.0.0.1:9")  # never started: only its state is exercised
    client._set_state("connected")  # before any reader runs (a reader may start before the writer)
    flips = [0]
    valid = {"connected", "refused: not authorised"}

    def writer():
        if flips[0] % 2:
            client._set_state("refused", "not authorised", "run pi-agent authorize KEY")
        else:
            client._set_state("connected")
        flips[0] += 1

    def reader():
        assert client.status_text in valid
        state = client.connection
        assert (state.state == "refused") == bool(state.hint)

    failures = hammer([reader, reader], writer, until=lambda: flips[0] >= 20_000)
    assert failures == []
    assert isinstance(client.connection, ConnectionState)


def test_a_live_client_under_contention(start_agent, fast_switching):
    """A real agent floods events and answers fast pings while application threads read everything the
    client shares, send commands and draw the tile's overlays."""
    from host_viewer.app import ViewerApp

    agent = start_agent(size=(160, 120), fps=60.0)
    client = AgentClient(f"127.0.0.1:{agent.port}", ping_interval=0.002).start()
    try:
        client.wait_connected(10)
        app = ViewerApp(client)
        sent = [0]

        def writer():  # the agent broadcasts events; the client's I/O thread appends them
            agent._on_event("test", f"event {sent[0]}", {"n": sent[0]})
            sent[0] += 1
            time.sleep(0.0005)

        def read_shared():
            list(client.events), list(client.errors), client.status_text, client.connection.hint
            best = client.clock.best
            client.clock.offset_ns, client.clock.known, list(client.clock.samples)
            frame = client.latest()
            if frame is not None:
                frame.age_ms()
            assert best is None or best.rtt_ns >= 0

        def use_like_a_window():
            app.poll_frames()
            app.tile.sample_counters()
            app.compose()

        def send_commands():
            client.command("status", timeout=10)

        names = lambda: {e.detail.get("n") for e in client.events}  # noqa: E731
        failures = hammer([read_shared, use_like_a_window, send_commands], writer,
                          until=lambda: len(client.clock.samples) >= 16 and len(client.events) >= 100
                          and app.tile.last_frame is not None, timeout=60)
        assert failures == []
        assert len(names()) == 100  # the last 100 events, each once
    finally:
        client.close()
