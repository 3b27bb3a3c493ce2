"""The agent restarts (crash, `systemctl restart`, a new version) on the same address while a viewer runs.

A restarted agent numbers its frames from 0 again and is a new instance: the headless viewer keeps taking,
decoding and recording its frames (breaker B1: it waited for the new agent's count to pass the old one's,
so a 14 s recording held 2 s), and a `status` or `get_controls` in flight is asked of the new agent
instead of failing `agent_restarted` (breaker B2); a change in flight still fails `agent_restarted`."""

from __future__ import annotations

import pytest

from host_viewer import cli
from host_viewer.client import AgentClient, CommandFailed
from pi_agent.camera.sim import SimulatedCamera

from .conftest import wait_until
from .test_end_to_end import free_port
from .test_outage import relay_to  # noqa: F401  (fixture)

OLD_COUNT = 300  # frames the first agent numbers before it stops: far more than the new one reaches here


class Taken:
    """A recorder that keeps the sequence number of every frame written (cli.run_headless's `recorder`)."""

    def __init__(self):
        self.sequences: list[int] = []

    def write(self, frame) -> None:
        self.sequences.append(frame.sequence)


def _restart(start_agent, port: int, old, **kwargs):
    old.stop()
    return start_agent(listen=f"127.0.0.1:{port}", **kwargs)


def test_the_headless_viewer_takes_and_records_the_restarted_agents_frames(start_agent):
    port = free_port()
    old = start_agent(camera=SimulatedCamera(seed=1, pacing=False), listen=f"127.0.0.1:{port}", fps=0)
    client = AgentClient(f"127.0.0.1:{port}").start()
    try:
        client.wait_frame(timeout=60, newer_than=OLD_COUNT)  # free-running: its count climbs fast
        taken = Taken()
        session = cli.run_headless(client, duration=1.0, recorder=taken)
        before = len(taken.sequences)
        assert before and max(taken.sequences) > OLD_COUNT
        _restart(start_agent, port, old, fps=30)
        # 20 frames of the new agent, by their numbers (it counts from 0 and cannot reach OLD_COUNT in this
        # test at 30 fps); the duration only bounds a failure.
        cli.run_headless(client, duration=60, recorder=taken, session=session, frames=20)
        after = taken.sequences[before:]
        new_agents = [s for s in after if s < OLD_COUNT]
        assert len(new_agents) >= 15, after  # a few of the old agent's last frames may come first
        assert session.frames == len(taken.sequences)
    finally:
        client.close()


def test_a_read_only_command_in_flight_is_asked_of_the_restarted_agent_and_a_change_fails(start_agent,
                                                                                            relay_to):
    """The commands go out while the link is down (held, then cut, by the relay), the agent restarts
    meanwhile, and the viewer reconnects to the new instance."""
    port = free_port()
    old = start_agent(listen=f"127.0.0.1:{port}")
    relay = relay_to(old)
    client = AgentClient(f"127.0.0.1:{relay.port}").start()
    try:
        client.wait_connected(10)
        wait_until(lambda: client.clock.known, message="a clock offset")
        first = client.welcome.agent["instance"]
        relay.stall(4.0, then_cut=True)
        status = client.send_command("status", ttl=30)
        controls = client.send_command("get_controls", ttl=30)
        change = client.send_command("set_controls", {"controls": {"ExposureTime": 2345}}, ttl=30)
        new = _restart(start_agent, port, old)
        wait_until(lambda: client.welcome.agent["instance"] != first, timeout=30, message="the new agent's welcome")
        assert status.future.result(timeout=40)["viewers"] >= 1
        assert "ExposureTime" not in controls.future.result(timeout=40)["controls"]
        with pytest.raises(CommandFailed) as failed:
            change.future.result(timeout=40)
        assert failed.value.code == "agent_restarted", failed.value
        assert new.camera.controls().get("ExposureTime") != 2345
    finally:
        client.close()
