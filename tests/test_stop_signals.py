"""A stop signal is never lost in its own handler (the kind of fault: `pi-agent` once ignored SIGTERM for
9 minutes, its handler blocked in Event.set() on the lock that the main thread's Event.wait() held).

Python runs a signal handler on the main thread between two bytecodes; the case is reproduced exactly by
calling the installed handler on the main thread while that thread holds the stop event's internal lock, as
it does inside wait(). With a handler that calls Event.set() this test never returns (pytest-timeout ends it).
Then a real signal, delivered while the main thread waits, ends the wait.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest

from host_viewer.stopping import StopRequest
from pi_agent.stopping import StopSignals

from .conftest import wait_until


@pytest.fixture
def restore_handlers():
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _handler_under_the_events_lock(event: threading.Event, signum: int) -> None:
    handler = signal.getsignal(signum)
    with event._cond:  # what the main thread holds inside Event.wait()
        handler(signum, None)


def test_the_agents_handler_takes_no_lock_and_a_real_sigterm_ends_the_wait(restore_handlers):
    stop = StopSignals()
    stop.install()
    _handler_under_the_events_lock(stop.event, signal.SIGTERM)
    assert stop.is_set() and stop.received == ["SIGTERM"]
    again = StopSignals()
    again.install()
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
    assert again.wait(30), "SIGTERM did not end the wait"
    assert again.received == ["SIGTERM"]


def test_a_stop_asked_by_another_thread_ends_the_agents_wait():
    stop = StopSignals()
    threading.Timer(0.2, stop.set).start()
    assert stop.wait(30) and stop.received == []
    assert not StopSignals().wait(0.3)


def test_the_viewers_handler_takes_no_lock_and_a_real_sigterm_ends_the_wait(restore_handlers):
    with StopRequest() as stop:
        _handler_under_the_events_lock(stop.event, signal.SIGTERM)
        assert stop.is_set() and stop.signal_name == "SIGTERM"
    with StopRequest() as stop:
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
        wait_until(stop.is_set, timeout=30, message="SIGTERM seen by the viewer's loops")
        assert stop.signal_name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C gives up waiting for a clean exit
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
