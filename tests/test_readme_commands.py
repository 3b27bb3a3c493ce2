"""The README's commands work as printed (issue 16.9): scripts run with the venv's Python, every benchmark
has --help and a --quick that write nothing, example files land outside the clone or are ignored."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ["bench_calibration", "bench_sim", "bench_stats", "bench_stream", "soak", "make_replay", "screenshot_viewer",
         "under_load"]


def tree_state() -> dict[str, str]:
    """Hashes of docs/ and the git status: what a command that writes nothing must leave as it was."""
    state = {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((ROOT / "docs").rglob("*")) if p.is_file()}
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    state["git status"] = status.stdout if status.returncode == 0 else "(no git)"
    return state


@pytest.mark.parametrize("tool", TOOLS)
def test_every_tool_has_help_that_writes_nothing(tool):
    before = tree_state()
    result = subprocess.run([sys.executable, f"scripts/{tool}.py", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("usage:"), result.stderr[-2000:]
    assert tree_state() == before


@pytest.mark.parametrize("tool", ["bench_calibration", "bench_sim"])
def test_quick_runs_write_nothing(tool):
    before = tree_state()
    result = subprocess.run([sys.executable, f"scripts/{tool}.py", "--quick"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "|" in result.stdout  # it printed its table
    assert tree_state() == before


def test_every_benchmark_offers_quick():
    for tool in ("bench_calibration", "bench_sim", "bench_stats", "bench_stream", "soak"):
        result = subprocess.run([sys.executable, f"scripts/{tool}.py", "--help"], cwd=ROOT, capture_output=True,
                                text=True, timeout=120)
        assert "--quick" in result.stdout, tool


def test_readme_commands_use_the_venv_and_keep_files_out_of_the_clone():
    readme = (ROOT / "README.md").read_text()
    blocks = "\n".join(re.findall(r"```sh\n(.*?)```", readme, re.S))
    for line in blocks.splitlines():
        command = line.split("#")[0]
        assert not re.search(r"(^|\s)python3? (scripts/|-m )", command) or "-m venv" in command, line
    for name in re.findall(r"make_replay\.py (\S+)", readme):
        assert name.startswith("/tmp/") or subprocess.run(["git", "check-ignore", "-q", name], cwd=ROOT).returncode == 0
    ignored = subprocess.run(["git", "check-ignore", "-q", "run.mkv"], cwd=ROOT)
    assert ignored.returncode == 0  # the recording example's file is ignored when made in the clone
    assert "127.0.0.1:${PORT}" in (ROOT / "scripts" / "demo.sh").read_text().split("pi-agent")[0]  # said first


def test_under_load_runs_the_command_and_stops_its_busy_processes():
    """scripts/under_load.py: the command's exit status, a clear error for a command that does not exist, and
    no busy process left behind either way."""
    import psutil

    from scripts.under_load import BUSY_LOOP

    def hogs() -> set[int]:  # busy processes anywhere (an orphaned one would no longer be under this test)
        return {p.pid for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [])[-1:] == [BUSY_LOOP]}

    before = hogs()
    ok = subprocess.run([sys.executable, "scripts/under_load.py", "--busy", "2", "--runs", "2", "--", "true"],
                        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.count("exit 0") == 2, ok.stdout + ok.stderr
    failed = subprocess.run([sys.executable, "scripts/under_load.py", "--busy", "1", "--runs", "3", "--", "false"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1 and "run 1/3" in failed.stdout and "run 2/3" not in failed.stdout
    missing = subprocess.run([sys.executable, "scripts/under_load.py", "--busy", "1", "--", "no-such-command-here"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 127 and "cannot run 'no-such-command-here'" in missing.stderr, missing.stderr
    assert "Traceback" not in missing.stderr
    assert hogs() <= before  # every busy process was stopped
