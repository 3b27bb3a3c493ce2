"""Quick-start command 1, `scripts/demo.sh`, headless: its first words are not an error (breaker F1: the viewer
started before the agent listened and always printed "connection refused ... is pi-agent running there?")."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_demo_waits_for_the_agent_before_the_viewer_connects():
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    env["PORT"] = str(_free_port())
    result = subprocess.run([str(ROOT / "scripts" / "demo.sh"), "2"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "connection refused" not in result.stderr and "is pi-agent running" not in result.stderr, result.stderr
    summary = json.loads(result.stdout)
    assert summary["frames"] > 0 and summary["state"] == "connected"


def test_the_demo_refuses_a_port_already_in_use():
    with socket.socket() as taken:  # the port is in use: the agent says so and the demo does not hang
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
        env["PORT"] = str(taken.getsockname()[1])
        result = subprocess.run([str(ROOT / "scripts" / "demo.sh"), "2"], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=300)
    assert result.returncode != 0
    assert "already listens" in result.stderr and "host-viewer" not in result.stderr  # no viewer on a foreign port
