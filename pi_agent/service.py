"""`pi-agent service install|uninstall|status`: run the agent as a systemd service from the current venv.

    pi-agent service install [--system] [-- AGENT OPTIONS...]   write the unit, enable and start it
    pi-agent service uninstall [--system]                        stop, disable and remove it
    pi-agent service status [--system]                           systemctl status (and where the unit is)
    pi-agent service install --print [-- ...]                    show the unit only

A user unit (default) goes to ~/.config/systemd/user/picamlink-agent.service and starts at boot once
lingering is on (`loginctl enable-linger`), keeping its calibration in ~/.local/state/picamlink (the
agent's default, XDG state). A system unit (--system, as root) goes to /etc/systemd/system, runs as the user
who ran sudo (the camera needs the `video` group, which Raspberry Pi OS gives the first user), and keeps its
state in /var/lib/picamlink (StateDirectory=). Both restart on failure after 2 s, and stop with SIGTERM,
which the agent handles cleanly (systemd.kill(5): KillSignal defaults to SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import pwd
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

UNIT_NAME = "picamlink-agent.service"
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
SYSTEM_STATE_DIR = "/var/lib/picamlink"


def user_unit_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "systemd" / "user"


@dataclass(frozen=True)
class ServicePlan:
    """Where the unit goes and what it runs (pure data: `unit_text` renders it)."""

    system: bool
    unit_path: Path
    exec_start: list[str]
    user: str | None  # User= for a system unit
    group: str | None
    state_dir: str | None  # StateDirectory for a system unit

    def unit_text(self) -> str:
        lines = [
            "# Written by `pi-agent service install`; remove with `pi-agent service uninstall`.",
            "[Unit]",
            "Description=picamlink camera agent (stream and calibrate over ZeroMQ)",
            "Wants=network-online.target",
            "After=network-online.target",
            "StartLimitIntervalSec=60",
            "StartLimitBurst=10",
            "",
            "[Service]",
            "Type=simple",
            f"ExecStart={' '.join(_systemd_quote(word) for word in self.exec_start)}",
            "Restart=on-failure",
            "RestartSec=2",
            "Environment=PYTHONUNBUFFERED=1",
        ]
        if self.system:
            lines += [f"User={self.user}"] + ([f"Group={self.group}"] if self.group else [])
            lines += ["SupplementaryGroups=video", "StateDirectory=picamlink", "StateDirectoryMode=0700"]
        lines += ["", "[Install]", f"WantedBy={'multi-user.target' if self.system else 'default.target'}", ""]
        return "\n".join(lines)


def _systemd_quote(word: str) -> str:
    """A word for ExecStart: systemd splits on spaces and honours double quotes with C escapes
    (systemd.service(5), "Command lines"); '%' starts a specifier and is written '%%'."""
    word = word.replace("%", "%%")
    if word and not any(c in word for c in ' \t"\'\\;$'):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def agent_command(agent_args: list[str], state_dir: str | None) -> list[str]:
    """The agent as this venv runs it: its pi-agent script when installed beside this Python, else
    `python -m pi_agent.cli`."""
    script = Path(sys.executable).parent / "pi-agent"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "pi_agent.cli"]
    if state_dir and "--state-dir" not in agent_args:
        command += ["--state-dir", state_dir]
    return command + list(agent_args)


def plan(system: bool, agent_args: list[str], unit_dir: Path | None = None) -> ServicePlan:
    directory = unit_dir or (SYSTEM_UNIT_DIR if system else user_unit_dir())
    if system:
        user = os.environ.get("SUDO_USER") or pwd.getpwuid(os.getuid()).pw_name
        try:
            group = pwd.getpwnam(user).pw_gid
            import grp

            group_name = grp.getgrgid(group).gr_name
        except KeyError:
            group_name = None
        return ServicePlan(True, directory / UNIT_NAME, agent_command(agent_args, SYSTEM_STATE_DIR), user,
                           group_name, SYSTEM_STATE_DIR)
    return ServicePlan(False, directory / UNIT_NAME, agent_command(agent_args, None), None, None, None)


def _home(user: str | None) -> Path:
    try:
        return Path(pwd.getpwnam(user or "").pw_dir)
    except KeyError:
        return Path(os.path.expanduser("~"))


def _systemctl(system: bool, *args: str) -> subprocess.CompletedProcess:
    command = ["systemctl"] + ([] if system else ["--user"]) + list(args)
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def install(service: ServicePlan, enable: bool = True) -> int:
    if service.system and os.geteuid() != 0:
        print("pi-agent service: a system unit needs root: sudo $(which pi-agent) service install --system",
              file=sys.stderr)
        return 1
    service.unit_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = service.unit_path.with_name(f".{service.unit_path.name}.tmp")
    tmp.write_text(service.unit_text())
    os.replace(tmp, service.unit_path)
    print(f"wrote {service.unit_path}")
    if not enable:
        return 0
    if shutil.which("systemctl") is None:
        service.unit_path.unlink()
        print(f"pi-agent service: systemctl not found: nothing installed ({service.unit_path} removed; "
              f"--no-enable writes the unit only)", file=sys.stderr)
        return 1
    for args in (("daemon-reload",), ("enable", "--now", UNIT_NAME)):
        result = _systemctl(service.system, *args)
        if result.returncode != 0:
            service.unit_path.unlink()  # a unit that is not enabled is not left behind to puzzle anyone
            _systemctl(service.system, "daemon-reload")
            print(f"pi-agent service: systemctl {' '.join(args)} failed: {(result.stderr or result.stdout).strip()}; "
                  f"nothing installed ({service.unit_path} removed)", file=sys.stderr)
            return 1
    scope = "" if service.system else "--user "
    print(f"enabled and started {UNIT_NAME}; see it with: systemctl {scope}status {UNIT_NAME}, "
          f"journalctl {scope.replace('--user ', '--user-unit ') or '-u '}{UNIT_NAME}")
    if not service.system:
        print(f"to start it at boot without logging in: loginctl enable-linger {shlex.quote(pwd.getpwuid(os.getuid()).pw_name)}")
    return 0


def uninstall(service: ServicePlan) -> int:
    if shutil.which("systemctl") is not None:
        _systemctl(service.system, "disable", "--now", UNIT_NAME)
    if service.unit_path.exists():
        service.unit_path.unlink()
        print(f"removed {service.unit_path}")
    else:
        print(f"no unit at {service.unit_path}")
    if shutil.which("systemctl") is not None:
        _systemctl(service.system, "daemon-reload")
    return 0


def status(service: ServicePlan) -> int:
    print(f"unit file: {service.unit_path} ({'present' if service.unit_path.exists() else 'absent'})")
    if shutil.which("systemctl") is None:
        print("systemctl not found", file=sys.stderr)
        return 1
    result = _systemctl(service.system, "status", "--no-pager", UNIT_NAME)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pi-agent service", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("install", "uninstall", "status"))
    p.add_argument("--system", action="store_true", help="a system unit (root; starts at boot) instead of a user unit")
    p.add_argument("--print", action="store_true", help="install: print the unit and change nothing")
    p.add_argument("--no-enable", action="store_true", help="install: write the unit but do not enable or start it")
    p.add_argument("--unit-dir", type=Path, help=argparse.SUPPRESS)  # tests: where to write the unit
    return p


def main(argv: list[str]) -> int:
    if "--" in argv:
        cut = argv.index("--")
        argv, agent_args = argv[:cut], argv[cut + 1:]
    else:
        agent_args = []
    args = build_parser().parse_args(argv)
    if agent_args and args.action != "install":
        print("pi-agent service: agent options go with install only", file=sys.stderr)
        return 2
    if agent_args:  # refuse options the agent would refuse, now rather than in a restart loop
        from .cli import build_parser as agent_parser, startup_checks

        try:
            options = agent_parser().parse_args(agent_args)
        except SystemExit as exc:
            return int(exc.code or 2)
        if args.system and options.config_dir is None:  # the unit runs as the sudo user, with its home
            options.config_dir = str(_home(plan(True, []).user) / ".config" / "picamlink")
        try:
            startup_checks(options)  # e.g. no agent key for a network --listen: the unit could never start
        except (OSError, ValueError) as exc:
            print(f"pi-agent service: the agent would refuse these options: {exc}", file=sys.stderr)
            return 2
    service = plan(args.system, agent_args, args.unit_dir)
    if args.action == "install":
        if args.print:
            sys.stdout.write(service.unit_text())
            return 0
        return install(service, enable=not args.no_enable)
    if args.action == "uninstall":
        return uninstall(service)
    return status(service)
