"""An agent that dies for good mid-command (Pi unplugged, kill -9): the command's fate is known by its expiry.

Breaker F3: a headless `--calibrate` whose agent died waited forever, silently. Here the link to a real agent
is cut for good (the relay closes every connection and its listening port, which is what a viewer sees when
the agent process is killed), while a calibration is running."""

from __future__ import annotations

import json
import re
import threading

import pytest

import host_viewer.calibration
from host_viewer import cli
from host_viewer.client import AgentClient, CommandFailed
from pi_agent.camera.sim import SimulatedCamera

from .conftest import wait_until
from .test_outage import relay_to  # noqa: F401  (fixture)


def test_a_running_command_fails_clearly_once_the_agent_stays_gone_past_its_expiry(start_agent, relay_to):
    agent = start_agent(camera=SimulatedCamera(sensor="imx219", scene="white", seed=2))
    relay = relay_to(agent)
    client = AgentClient(f"127.0.0.1:{relay.port}").start()
    try:
        client.wait_connected(10)
        progress = threading.Event()
        pending = client.send_command("calibrate", {"what": "all"}, ttl=3.0, on_progress=lambda p: progress.set())
        assert progress.wait(30)
        relay.close()  # the agent is gone and stays gone
        with pytest.raises(CommandFailed) as failed:
            pending.future.result(timeout=60)  # a generous bound; the client itself settles it at its expiry
        assert failed.value.code == "unreachable"
        assert "unreachable" in failed.value.message and "calibrate" in failed.value.message
    finally:
        client.close()


def test_headless_calibrate_ends_with_a_clear_error_when_the_agent_dies(start_agent, relay_to, tmp_path,
                                                                        monkeypatch, capsys):
    monkeypatch.setattr(host_viewer.calibration, "TIMEOUT", 4.0)  # the calibrate command's expiry
    agent = start_agent(camera=SimulatedCamera(sensor="imx219", scene="white", seed=2))
    relay = relay_to(agent)

    def kill_when_calibrating():
        wait_until(lambda: agent.lease.holder == "calibrate", timeout=30, message="the calibration running")
        relay.close()

    killer = threading.Thread(target=kill_when_calibrating, daemon=True)
    killer.start()
    summary = tmp_path / "summary.json"
    rc = cli.main([f"127.0.0.1:{relay.port}", "--headless", "--calibrate", "all", "--summary-json", str(summary),
                   "--config-dir", str(tmp_path)])
    killer.join(5)
    err = capsys.readouterr().err
    assert rc == 1, err[-2000:]
    # "unreachable" once progress had come, "timeout" if the link died before the first progress: both clear
    assert re.search(r"calibration failed: (unreachable|timeout): .*expiry", err), err[-2000:]
    written = json.loads(summary.read_text())
    assert written["state"] != "connected"
    assert written["calibration"]["error"]["code"] in ("unreachable", "timeout")  # breaker F2: in the summary too
