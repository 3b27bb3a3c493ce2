"""Keys you can paste (issue 16.5) and a viewer that runs on any laptop (issue 16.6).

The Windows and macOS branches run here on Linux with `host_viewer.platform.PLATFORM` forced, os.fchmod
removed as on Windows, and icacls (which only Windows has) replaced by a stand-in that keeps an ACL per path
and prints it in icacls's own listing format.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from host_viewer import cli, platform
from host_viewer.security import create_or_load_keys, how_to_trust, known_agent_key, read_known_agents
from pi_agent import cli as agent_cli
from protocol.keys import Z85_ALPHABET, check_public_key, key_arguments

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def dash_key() -> str:
    """A valid CURVE public key that starts with '-' (about 1 key in 85 does)."""
    for _ in range(20_000):
        public = zmq.curve_keypair()[0].decode()
        if public.startswith("-"):
            return public
    key = "-" + zmq.curve_keypair()[0].decode()[1:]  # '-' leads to a first group below 2**32: still valid
    return check_public_key(key)


def test_z85_never_contains_a_single_quote():
    assert "'" not in Z85_ALPHABET and {"&", "$", "#", "("} <= set(Z85_ALPHABET)


def test_a_key_starting_with_a_dash_is_a_key_everywhere(tmp_path, capsys):
    key = dash_key()
    viewer_dir, agent_dir = tmp_path / "viewer", tmp_path / "agent"
    assert cli.main(["trust", "127.0.0.1:5599", key, "--config-dir", str(viewer_dir)]) == 0
    assert known_agent_key("127.0.0.1:5599", viewer_dir) == key
    assert agent_cli.main(["authorize", key, "--config-dir", str(agent_dir)]) == 0
    assert f"authorised: '{key}'" in capsys.readouterr().out
    # --agent-key -KEY: parsed as the key (the viewer goes on to connect, and says it cannot), not a usage error
    code = cli.main(["127.0.0.1:1", "--agent-key", key, "--headless", "--connect-timeout", "0.3",
                     "--config-dir", str(viewer_dir)])
    err = capsys.readouterr().err
    assert code == 1 and "expected one argument" not in err and "no agent answered" in err


def test_key_arguments_leave_other_dashes_alone():
    key = dash_key()
    assert key_arguments(["--agent-key", key, "-h"], ("--agent-key",)) == [f"--agent-key={key}", "-h"]
    assert key_arguments(["trust", "h:1", key, "--config-dir", "d"]) == ["trust", "h:1", "--config-dir", "d", "--", key]
    assert key_arguments(["--log-level", "INFO", "-x"]) == ["--log-level", "INFO", "-x"]


def _printed_command(text: str, start: str) -> str:
    line = next(line for line in text.splitlines() if start in line)
    return line[line.index(start):]


def test_printed_commands_paste_into_a_shell(tmp_path):
    """The commands `host-viewer keys` and `pi-agent keys` print are run as printed by bash (with the venv's
    scripts and the test's config directories): whatever characters the key holds, they arrive intact."""
    viewer_dir, agent_dir = tmp_path / "viewer dir", tmp_path / "agent"
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    shown = subprocess.run([str(VENV_BIN / "host-viewer"), "keys", "--config-dir", str(viewer_dir)],
                           capture_output=True, text=True, env=env, timeout=60, check=True)
    viewer_key = shown.stdout.strip()
    authorize = _printed_command(shown.stderr, "pi-agent authorize ")
    assert authorize == f"pi-agent authorize '{viewer_key}'"
    pasted = subprocess.run(["bash", "-c", f"{authorize} --config-dir {shlex.quote(str(agent_dir))}"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert pasted.returncode == 0, pasted.stderr
    from pi_agent.security import authorized_keys

    assert viewer_key in authorized_keys(agent_dir)
    assert f"'{viewer_key}'" in pasted.stdout

    shown = subprocess.run([str(VENV_BIN / "pi-agent"), "keys", "--config-dir", str(agent_dir)],
                           capture_output=True, text=True, env=env, timeout=60, check=True)
    agent_key = shown.stdout.strip()
    trust = _printed_command(shown.stderr, "host-viewer trust ").replace("HOST:PORT", "raspberrypi.local:5555")
    pasted = subprocess.run(["bash", "-c", f"{trust} --config-dir {shlex.quote(str(viewer_dir))}"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert pasted.returncode == 0, pasted.stderr
    assert read_known_agents(viewer_dir)["raspberrypi.local:5555"] == agent_key
    once = _printed_command(shown.stderr, "host-viewer HOST:PORT --agent-key=")
    assert shlex.split(once)[2] == f"--agent-key={agent_key}"


def test_hints_name_the_config_directory_in_use_and_the_trust_command(tmp_path):
    hint = how_to_trust("pi.local:5555", tmp_path / "my config")
    assert str(tmp_path / "my config" / "known_agents") in hint
    assert "host-viewer trust pi.local:5555 'AGENT_KEY'" in hint
    assert shlex.split(hint[hint.index("host-viewer trust"):].split("`")[0])[-1] == str(tmp_path / "my config")


class FakeIcacls:
    """icacls as Windows has it, over a dict path -> [(principal, rights)]: /inheritance:r drops inherited
    entries, /grant:r USER:RIGHTS replaces USER's entry; no arguments lists in icacls's format."""

    def __init__(self, inherited):
        self.inherited = list(inherited)
        self.acl: dict[str, list[tuple[str, str]]] = {}
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, path: str, *args: str) -> str:
        self.calls.append((path, *args))
        entries = self.acl.setdefault(path, list(self.inherited))
        if "/inheritance:r" in args:
            entries[:] = []
        if "/grant:r" in args:
            who, rights = args[args.index("/grant:r") + 1].rsplit(":", 1)
            entries[:] = [e for e in entries if e[0] != who] + [(who, f"({rights})" if "(" not in rights else rights)]
        if args:
            return "processed file: " + path + "\nSuccessfully processed 1 files; Failed processing 0 files\n"
        pad = " " * (len(path) + 1)
        lines = [f"{path if i == 0 else pad[:-1]} {who}:{rights}" for i, (who, rights) in enumerate(entries)]
        return "\n".join(lines) + "\n\nSuccessfully processed 1 files; Failed processing 0 files\n"


@pytest.fixture
def windows(monkeypatch, tmp_path):
    monkeypatch.setattr(platform, "PLATFORM", "win32")
    monkeypatch.delattr(os, "fchmod", raising=False)
    monkeypatch.setenv("USERDOMAIN", "DESKTOP-1")
    monkeypatch.setenv("USERNAME", "ann")
    fake = FakeIcacls(inherited=[("NT AUTHORITY\\SYSTEM", "(I)(F)"), ("BUILTIN\\Users", "(I)(RX)"),
                                 ("DESKTOP-1\\ann", "(I)(F)")])
    monkeypatch.setattr(platform, "_icacls", fake)
    return fake


def test_windows_keys_are_made_owner_only_with_an_acl(windows, tmp_path):
    keys, created = create_or_load_keys(tmp_path / "cfg")
    assert created
    secret = tmp_path / "cfg" / "viewer" / "viewer.key_secret"
    # The directory and each key file were stripped of inherited entries and granted to the user alone
    # (the temp file before the secret was written into it, then renamed into place).
    assert any(call[0] == str(tmp_path / "cfg" / "viewer") and "(OI)(CI)F" in call[-1] for call in windows.calls)
    assert sum(1 for call in windows.calls if call[1:] == ("/inheritance:r", "/grant:r", "DESKTOP-1\\ann:F")) == 2
    # Loading checks the ACL: the key file is the user's alone now (the fake keeps the temp file's ACL under
    # its old name; give the final name the same, as a rename keeps the ACL).
    temp_acls = [p for p in windows.acl if ".viewer.key_secret." in p]
    windows.acl[str(secret)] = windows.acl[temp_acls[-1]]
    again, created = create_or_load_keys(tmp_path / "cfg")
    assert not created and again.public == keys.public


def test_windows_refuses_a_secret_key_others_can_read(windows, tmp_path):
    create_or_load_keys(tmp_path / "cfg")
    secret = tmp_path / "cfg" / "viewer" / "viewer.key_secret"
    windows.acl[str(secret)] = [("NT AUTHORITY\\SYSTEM", "(F)"), ("BUILTIN\\Users", "(RX)"),
                                ("DESKTOP-1\\ann", "(F)"), ("Everyone", "(R)")]
    with pytest.raises(PermissionError) as error:
        create_or_load_keys(tmp_path / "cfg")
    assert "BUILTIN\\Users, Everyone" in str(error.value) and "icacls" in str(error.value)


def test_config_directory_per_platform(monkeypatch, tmp_path):
    monkeypatch.delenv("PICAMLINK_CONFIG_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(platform, "PLATFORM", "linux")
    assert platform.config_dir() == tmp_path / "xdg" / "picamlink"
    monkeypatch.setattr(platform, "PLATFORM", "darwin")
    monkeypatch.delenv("XDG_CONFIG_HOME")  # (platformdirs honours it on macOS too)
    assert platform.config_dir() == tmp_path / "Library" / "Application Support" / "picamlink"
    monkeypatch.setattr(platform, "PLATFORM", "win32")
    import platformdirs.windows

    # platformdirs asks Windows (ctypes) for %APPDATA%; here its environment-variable reader stands in.
    monkeypatch.setattr(platformdirs.windows, "get_win_folder", platformdirs.windows.get_win_folder_from_env_vars)
    monkeypatch.setenv("APPDATA", str(tmp_path / "AppData" / "Roaming"))
    assert platform.config_dir() == tmp_path / "AppData" / "Roaming" / "picamlink"
    (tmp_path / ".config" / "picamlink").mkdir(parents=True)  # made by an earlier version: kept
    assert platform.config_dir() == tmp_path / ".config" / "picamlink"
    monkeypatch.setenv("PICAMLINK_CONFIG_DIR", str(tmp_path / "explicit"))
    assert platform.config_dir() == tmp_path / "explicit"


def test_snapshot_raw_falls_back_to_npy_without_pidng(monkeypatch, tmp_path):
    import numpy as np

    from host_viewer.snapshot import save_snapshot
    from protocol import pack_array

    monkeypatch.setitem(sys.modules, "pidng", None)  # import pidng → ImportError, as on a laptop without it
    monkeypatch.setitem(sys.modules, "pidng.core", None)
    import simplejpeg

    raw = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) % 1023)
    value = {"jpeg": simplejpeg.encode_jpeg(np.zeros((48, 64, 3), np.uint8)), "raw": pack_array(raw),
             "width": 64, "height": 48, "bayer_order": "BGGR", "bit_depth": 10, "black_level": 64,
             "metadata": {"ExposureTime": 1000}, "stats": {}, "frame": 1}
    files = save_snapshot(value, tmp_path, model="imx219")
    assert files.raw.suffix == ".npy"
    assert np.array_equal(np.load(files.raw), raw)
