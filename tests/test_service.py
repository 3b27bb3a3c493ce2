"""`pi-agent service` (issue 16.7): the systemd unit it writes is valid (systemd-analyze verify), runs this
venv's agent with the options given, restarts on failure, and keeps state where a service's state goes."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pi_agent import cli as agent_cli

from .conftest import wait_until

VERIFY = shutil.which("systemd-analyze")


def unit_values(text: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


def verify(path: Path) -> None:
    if VERIFY is None:
        pytest.skip("systemd-analyze not installed")
    result = subprocess.run([VERIFY, "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and path.name not in result.stderr, result.stderr


def test_user_unit_runs_this_venvs_agent_and_restarts_on_failure(tmp_path, capsys):
    args = ["--listen", "127.0.0.1:0", "--camera", "sim", "--no-announce", "--name", "bench pi 50%"]
    assert agent_cli.main(["service", "install", "--no-enable", "--unit-dir", str(tmp_path), "--", *args]) == 0
    unit = tmp_path / "picamlink-agent.service"
    values = unit_values(unit.read_text())
    assert values["Restart"] == ["on-failure"] and values["WantedBy"] == ["default.target"]
    assert "User" not in values  # a user unit runs as its user
    exec_start = values["ExecStart"][0]
    assert '"bench pi 50%%"' in exec_start  # systemd's quoting: the name stays one word, % escaped
    verify(unit)
    # The command runs as systemd would run it (its quoting parses like a shell's here) and stops cleanly on
    # SIGTERM, systemd's stop signal.
    command = [word.replace("%%", "%") for word in shlex.split(exec_start)]
    assert Path(command[0]).parent == Path(sys.executable).parent
    agent = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines: list[str] = []
        wait_until(lambda: (line := agent.stdout.readline()) and (lines.append(line) or "streaming" in line), 60,
                   message="the agent streaming")
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(20) == 0
    finally:
        if agent.poll() is None:
            agent.kill()


def test_system_unit_runs_as_the_user_with_state_in_var_lib(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SUDO_USER", "root")
    assert agent_cli.main(["service", "install", "--print", "--system"]) == 0
    text = capsys.readouterr().out
    values = unit_values(text)
    assert values["User"] == ["root"] and values["StateDirectory"] == ["picamlink"]
    assert "--state-dir /var/lib/picamlink" in values["ExecStart"][0]
    assert values["WantedBy"] == ["multi-user.target"] and values["Restart"] == ["on-failure"]
    unit = tmp_path / "picamlink-agent.service"
    unit.write_text(text)
    verify(unit)


def test_options_the_agent_would_refuse_are_refused_at_install(tmp_path, capsys):
    code = agent_cli.main(["service", "install", "--unit-dir", str(tmp_path), "--", "--size", "huge"])
    assert code == 2 and not (tmp_path / "picamlink-agent.service").exists()
    assert "WIDTHxHEIGHT" in capsys.readouterr().err


def test_install_enables_and_uninstall_removes(tmp_path, monkeypatch):
    """systemctl is a recording stand-in on PATH (no systemd manager runs in this container)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "systemctl.log"
    (bin_dir / "systemctl").write_text(f"#!/bin/sh\necho \"$@\" >> {shlex.quote(str(log))}\n")
    (bin_dir / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    units = tmp_path / "units"
    assert agent_cli.main(["service", "install", "--unit-dir", str(units)]) == 0
    assert (units / "picamlink-agent.service").exists()
    assert log.read_text().splitlines() == ["--user daemon-reload", "--user enable --now picamlink-agent.service"]
    assert agent_cli.main(["service", "uninstall", "--unit-dir", str(units)]) == 0
    assert not (units / "picamlink-agent.service").exists()
    assert log.read_text().splitlines()[2:] == ["--user disable --now picamlink-agent.service", "--user daemon-reload"]


def test_options_that_cannot_start_the_agent_are_refused_at_install(tmp_path, capsys, monkeypatch):
    """Breaker F8: a network --listen with no agent key wrote a unit whose ExecStart always exits 2."""
    monkeypatch.setenv("PICAMLINK_CONFIG_DIR", str(tmp_path / "config"))  # no keys made there
    code = agent_cli.main(["service", "install", "--unit-dir", str(tmp_path), "--", "--listen", "0.0.0.0:5555"])
    assert code == 2 and not (tmp_path / "picamlink-agent.service").exists()
    assert "pi-agent keys" in capsys.readouterr().err
    assert agent_cli.main(["keys"]) == 0  # with the key made, the same options install
    assert agent_cli.main(["service", "install", "--no-enable", "--unit-dir", str(tmp_path), "--",
                           "--listen", "0.0.0.0:5555"]) == 0
    assert (tmp_path / "picamlink-agent.service").exists()


@pytest.mark.parametrize("systemctl", ["fails", "missing"])
def test_no_unit_is_left_behind_when_systemctl_fails(tmp_path, capsys, monkeypatch, systemctl):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if systemctl == "fails":
        (bin_dir / "systemctl").write_text("#!/bin/sh\necho 'Failed to connect to bus' >&2\nexit 1\n")
        (bin_dir / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))  # the stand-in, or no systemctl at all
    units = tmp_path / "units"
    assert agent_cli.main(["service", "install", "--unit-dir", str(units)]) == 1
    assert not (units / "picamlink-agent.service").exists()
    assert "nothing installed" in capsys.readouterr().err
