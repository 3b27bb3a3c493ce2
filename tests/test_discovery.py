"""Finding agents: the agent announces `_picamlink._tcp.local.` with mDNS, a viewer's browser finds it on
loopback, and loses it when the agent stops. Skipped (with the reason) where multicast is unavailable."""

from __future__ import annotations

import json
import re

import pytest

from host_viewer import cli
from host_viewer.discovery import AgentBrowser, choose
from pi_agent.camera.sim import SimulatedCamera
from protocol.discovery import DiscoveredAgent, instance_label, parse_txt

from .conftest import wait_until


def test_txt_parsing_keeps_known_printable_values_only():
    parsed = parse_txt({b"instance": b"abc123", b"name": b"bench\x00pi", b"sensor": b"imx219", b"junk": b"x",
                        b"software": b"y" * 500, b"protocol": None})
    assert parsed == {"instance": "abc123", "sensor": "imx219"}
    assert instance_label("my.pi/zero", "0123456789abcdef99") == "my-pi-zero-0123456789abcdef"


def test_choose_takes_the_only_agent_or_asks_for_a_number():
    a = DiscoveredAgent("a._picamlink._tcp.local.", "10.0.0.2", 5555, {"name": "a"})
    b = DiscoveredAgent("b._picamlink._tcp.local.", "10.0.0.3", 5556, {"name": "b"})
    assert choose([], None) is None
    assert choose([a], None) is a
    assert choose([a, b], None) is None  # no terminal to ask
    answers = iter(["9", "x", "2"])
    assert choose([a, b], lambda prompt: next(answers)) is b
    assert b.address == "10.0.0.3:5556" and "b at 10.0.0.3:5556" in b.describe()


def test_agent_announces_itself_and_the_viewer_finds_it(start_agent, capsys, tmp_path):
    try:
        browser = AgentBrowser()
    except OSError as exc:
        pytest.skip(f"no multicast socket here: {exc}")
    with browser:
        agent = start_agent(camera=SimulatedCamera(seed=2), announce=True, name="bench-pi")
        if not agent.announcer.registered.wait(10):
            pytest.skip(f"mDNS announcement failed here: {agent.announcer.error}")
        found = wait_until(lambda: [a for a in browser.agents() if a.port == agent.port], 10,
                           message="the agent in the browser's list")[0]
        assert found.properties["instance"] == agent.info["instance"]
        assert found.properties["name"] == "bench-pi" and found.properties["sensor"] == "imx219"
        assert found.host == "127.0.0.1"
        # The CLI lists it; with no address and it the only agent around, connects to it.
        assert cli.main(["--list", "--discover-timeout", "2.5"]) == 0
        listing = capsys.readouterr().err
        assert f"bench-pi at 127.0.0.1:{agent.port}" in listing
        if len(browser.agents()) == 1:  # other agents on this network would make the choice interactive
            summary = tmp_path / "summary.json"
            code = cli.main(["--headless", "--duration", "0.5", "--discover-timeout", "2.5",
                             "--summary-json", str(summary)])
            said = capsys.readouterr().err
            listed = re.findall(r"^\d+\. .+ at (\S+) \(", said, re.MULTILINE)
            if code == 1 and "several agents found" in said:
                # Another agent (a second test run on this machine) announced itself meanwhile: the CLI must
                # then refuse to guess, as documented, and list ours among them.
                assert len(listed) >= 2 and f"127.0.0.1:{agent.port}" in listed
            else:
                assert code == 0
                result = json.loads(summary.read_text())
                assert result["agent"] == "bench-pi" and result["frames"] > 0
        agent.stop()  # unregisters: a goodbye removes it from the list at once
        wait_until(lambda: not [a for a in browser.agents() if a.port == agent.port], 10,
                   message="the agent gone from the list after stop")


def test_pi_agent_announces_unless_told_not_to():
    from pi_agent.cli import build_parser

    assert build_parser().parse_args([]).no_announce is False
    assert build_parser().parse_args(["--no-announce"]).no_announce is True
