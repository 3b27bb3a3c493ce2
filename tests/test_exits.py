"""Every way out of the viewer is clean (issue 16.2).

The viewer runs as a real subprocess (signals are delivered to it as a user's Ctrl-C or a service manager's
SIGTERM would be) against an in-process agent on loopback whose state directory the test owns.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from .conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent


class Viewer:
    """`host-viewer ARGS` as a subprocess; its stderr lines are collected as they come."""

    def __init__(self, args: list[str], env: dict | None = None):
        self.process = subprocess.Popen([sys.executable, "-m", "host_viewer.cli", *args], cwd=ROOT,
                                        env={**(env or os.environ), "PYTHONUNBUFFERED": "1"},
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def finish(self, timeout: float = 30.0) -> tuple[int, str]:
        out: list[str] = []  # stdout read here, stderr by the reader thread (communicate() would take both)
        drain = threading.Thread(target=lambda: out.append(self.process.stdout.read()), daemon=True)
        drain.start()
        try:
            self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
        drain.join(5)
        self._reader.join(5)
        return self.process.returncode, "".join(out)


def calibrated_state(start_agent, tmp_path: Path):
    """An agent with a saved calibration (exposure, run to completion) and the bytes of its calibration.json."""
    from host_viewer import cli

    state_dir = tmp_path / "state"
    agent = start_agent(size=(320, 240), fps=30.0, state_dir=str(state_dir))
    assert cli.main([f"127.0.0.1:{agent.port}", "--headless", "--calibrate", "exposure"]) == 0
    state_file = state_dir / "calibration.json"
    return agent, state_file, state_file.read_bytes()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_a_headless_calibration_cancels_it_and_keeps_the_previous_one(start_agent, tmp_path, signum):
    agent, state_file, before = calibrated_state(start_agent, tmp_path)
    controls_before = agent.camera.controls()
    summary = tmp_path / "summary.json"
    viewer = Viewer([f"127.0.0.1:{agent.port}", "--headless", "--calibrate", "all", "--summary-json", str(summary)])
    wait_until(lambda: "calibrate:" in viewer.stderr or viewer.process.poll() is not None, 30,
               message="the calibration's first progress line")
    assert viewer.process.poll() is None, viewer.stderr
    viewer.process.send_signal(signum)
    code, _ = viewer.finish()
    assert code == 130, viewer.stderr
    assert "Traceback" not in viewer.stderr
    assert "cancelling the calibration on the agent" in viewer.stderr, viewer.stderr
    assert "cancelled" in viewer.stderr
    written = json.loads(summary.read_text())
    assert written["stopped_by"] == signal.Signals(signum).name
    # The agent has stopped the job (its reply came before the viewer left), and nothing replaced the file.
    assert not agent.router._jobs
    assert state_file.read_bytes() == before
    assert agent.camera.controls()["ExposureTime"] == controls_before["ExposureTime"]
    assert agent.camera.controls()["AeEnable"] is False  # the saved exposure still in force


def test_sigterm_during_a_recording_finishes_the_file(start_agent, tmp_path):
    ffprobe = pytest.importorskip("shutil").which("ffprobe")
    agent = start_agent(size=(320, 240), fps=30.0)
    record = tmp_path / "rec.mkv"
    summary = tmp_path / "summary.json"
    viewer = Viewer([f"127.0.0.1:{agent.port}", "--headless", "--record", str(record), "--summary-json", str(summary)])
    wait_until(lambda: any(p.stat().st_size > 20_000 for p in tmp_path.glob("*.tmp")) or viewer.process.poll() is not None,
               30, message="frames in the recording")
    viewer.process.send_signal(signal.SIGTERM)
    code, _ = viewer.finish()
    assert code == 0, viewer.stderr
    assert "Traceback" not in viewer.stderr
    assert record.exists() and not list(tmp_path.glob("*.tmp"))
    written = json.loads(summary.read_text())
    assert written["stopped_by"] == "SIGTERM" and written["recording"]["frames"] >= 1
    if ffprobe:
        probe = subprocess.run([ffprobe, "-v", "error", "-count_packets", "-show_entries", "stream=nb_read_packets",
                                "-of", "csv=p=0", str(record)], capture_output=True, text=True, timeout=60)
        assert int(probe.stdout.strip()) == written["recording"]["frames"]


def test_ctrl_c_while_connecting_is_quiet(tmp_path):
    import socket

    with socket.socket() as listener:  # a port that accepts and never speaks: the viewer keeps waiting
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        viewer = Viewer([f"127.0.0.1:{port}", "--headless", "--connect-timeout", "60"])
        wait_until(lambda: "no ZeroMQ greeting" in viewer.stderr or viewer.process.poll() is not None, 30,
                   message="the viewer waiting for a greeting")
        viewer.process.send_signal(signal.SIGINT)
        code, _ = viewer.finish()
    assert code == 130
    assert "Traceback" not in viewer.stderr and "SIGINT while connecting" in viewer.stderr


def _alive_for(viewer: Viewer, seconds: float) -> bool:
    try:
        viewer.process.wait(seconds)
    except subprocess.TimeoutExpired:
        return True
    return False


def test_quitting_the_window_during_a_calibration_cancels_it_on_the_agent(start_agent, connect, tmp_path):
    """What ViewerApp.run does on q (or the close button, or Ctrl-C) before it returns."""
    from host_viewer.app import ViewerApp
    from host_viewer.calibration_ui import CalibrationKeys

    agent, state_file, before = calibrated_state(start_agent, tmp_path)
    app = ViewerApp(connect(agent))
    keys = CalibrationKeys()
    keys.install(app)
    app.handle_key(ord("a"))  # calibrate all
    wait_until(lambda: app.tile.progress is not None and app.tile.progress.step != "sent", 30,
               message="calibration progress")
    assert app.tile.cancel_in_flight() == ["calibrate"]
    assert not agent.router._jobs
    assert keys.running is None and keys.last_result is None
    assert "cancelled" in app.tile.status
    assert state_file.read_bytes() == before


def _listener(greeting: bytes | None):
    """A TCP port that accepts and then says `greeting` (or nothing): not a ZeroMQ peer."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held = []

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)
            if greeting:
                conn.sendall(greeting)

    threading.Thread(target=serve, daemon=True).start()
    return server, held


@pytest.mark.parametrize("kind", ["refused", "silent", "ssh"])
def test_connection_problems_are_said_at_once_and_once(kind):
    """The viewer prints what is wrong as soon as it knows (well inside --connect-timeout) and only once."""
    import socket

    held: list = []
    if kind == "refused":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]  # closed again: nothing listens there
        server = None
    else:
        server, held = _listener(None if kind == "silent" else b"SSH-2.0-OpenSSH_9.2\r\n")
        port = server.getsockname()[1]
    try:
        viewer = Viewer([f"127.0.0.1:{port}", "--headless", "--connect-timeout", "60"])
        expected = "connection refused" if kind == "refused" else "no ZeroMQ greeting"
        wait_until(lambda: expected in viewer.stderr, 30, message=f"{expected!r} said")
        assert viewer.process.poll() is None  # still waiting (an agent may be starting), as it said
        _alive_for(viewer, 2.0)  # it keeps retrying meanwhile; the sentence is not repeated
        viewer.process.send_signal(signal.SIGINT)
        code, _ = viewer.finish()
    finally:
        if server is not None:
            server.close()
        for conn in held:
            conn.close()
    assert code == 130
    assert viewer.stderr.count(expected) == 1, viewer.stderr
    assert "Traceback" not in viewer.stderr


def test_the_headless_viewer_says_when_the_agent_is_lost_and_when_it_is_back(start_agent):
    """Breaker B8: with the agent gone the headless viewer printed nothing (for minutes with --calibrate,
    for ever with --frames). Now one line when the link is lost and one when it is back."""
    from .test_end_to_end import free_port

    port = free_port()
    agent = start_agent(listen=f"127.0.0.1:{port}")
    viewer = Viewer([f"127.0.0.1:{port}", "--headless", "--frames", "1000000"])
    try:
        wait_until(lambda: agent.server.counters["frames_sent"] > 10, 30, message="frames to the viewer")
        agent.stop()
        wait_until(lambda: "lost the agent" in viewer.stderr, 30, message="a line saying the agent is lost")
        start_agent(listen=f"127.0.0.1:{port}")
        wait_until(lambda: "connected again" in viewer.stderr, 30, message="a line saying it is back")
        assert viewer.stderr.count("lost the agent") == 1, viewer.stderr
    finally:
        viewer.process.send_signal(signal.SIGTERM)
        code, _ = viewer.finish()
    assert code == 0 and "Traceback" not in viewer.stderr, viewer.stderr
