"""Loopback end to end: agent on the simulated camera, real ZeroMQ sockets, one or several viewers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import msgpack
import numpy as np
import pytest
import zmq

import protocol as p
from host_viewer.client import CommandFailed
from pi_agent.stats import sample_step

from .conftest import wait_until


def collect(client, count: int, timeout: float = 10.0):
    frames, last = [], None
    deadline = time.monotonic() + timeout
    while len(frames) < count and time.monotonic() < deadline:
        try:
            frame = client.wait_frame(timeout=1.0, newer_than=last)
        except TimeoutError:
            continue
        last = frame.sequence
        frames.append(frame)
    return frames


def test_two_viewers_receive_decodable_frames_with_rising_sequence(start_agent, connect):
    agent = start_agent(size=(320, 240))
    a, b = connect(agent), connect(agent, full_stats=True)  # compact statistics (the default), full ones
    assert a.welcome.sensor["model"] == "imx219" and a.welcome.sensor["black_level"] == 64
    for client in (a, b):
        frames = collect(client, 15)
        assert len(frames) == 15
        sequences = [f.sequence for f in frames]
        assert all(y > x for x, y in zip(sequences, sequences[1:]))
        image = frames[-1].decode()
        assert image.shape == (240, 320, 3) and image.dtype == np.uint8
        assert image.std() > 5  # a real picture, not a blank
        stats = frames[-1].stats
        assert stats["black_level"] == 64 and stats["white_level"] == 1023
        hist = frames[-1].histograms()
        step = stats["sample_step"]  # every step-th 2×2 cell of the 1640x1232 mode, across and down
        assert step == sample_step((1232, 1640))  # every step-th cell of the 1640x1232 mode (4)
        if client is b:
            assert stats["channels"] == ["R", "Gr", "Gb", "B"]
            assert hist.shape == (4, 256) and hist.sum() == -(-616 // step) * -(-820 // step) * 4
            assert "ScalerCrop" in frames[-1].metadata
        else:  # one byte per bin, the fullest bin 255, every occupied bin non-zero
            assert hist.shape == (4, 32) and hist.dtype == np.uint8 and hist.max() == 255
            assert "channels" not in stats and "ScalerCrop" not in frames[-1].metadata
        assert "ExposureTime" in frames[-1].metadata and "SensorTimestamp" in frames[-1].metadata
    # each frame is encoded once however many viewers there are
    assert agent.server.counters["frames_sent"] >= 30
    assert agent.pipeline.frames_encoded <= agent.pipeline.frames_captured


def test_listeners_get_every_pixel_while_the_stream_carries_a_sample(start_agent, connect):
    """Calibration and snapshots (pipeline listeners) count the whole 1640x1232 mosaic; a viewer's frames
    carry the sampled statistics, also while a listener is attached."""
    agent = start_agent()
    client = connect(agent)
    before = client.wait_frame(timeout=10)
    assert before.stats["sample_step"] == sample_step((1232, 1640))
    seen = []

    def listener(frame, stats):
        seen.append((frame.raw.size, stats, frame.sequence))

    agent.pipeline.add_listener(listener)
    try:
        wait_until(lambda: len(seen) >= 10, timeout=10, message="ten frames at the listener")
    finally:
        agent.pipeline.remove_listener(listener)
    for size, stats, _ in seen:
        assert stats.sample_step == 1 and stats.pixels.sum() == size == 1640 * 1232
    after = client.wait_frame(timeout=10, newer_than=seen[-1][2] + 2)  # captured after the listener left
    assert after.stats["sample_step"] == sample_step((1232, 1640))


def test_slow_viewer_sees_fresh_frames_while_the_other_keeps_full_rate(start_agent, connect):
    """The slow viewer takes one frame every 200 ms from a 30 fps stream, 40 times: the frame it gets is
    always among the newest the agent captured (no queue builds up), while the fast viewer gets several
    frames for each one the slow one reads.

    Measured in frames, not milliseconds: the lag is how many frames the agent captured after the one the
    viewer holds, so a slower (busy) machine, which captures fewer frames, does not change the outcome;
    a queue would make the lag grow by every frame captured in each 200 ms."""
    agent = start_agent(size=(320, 240), fps=30)
    fast, slow = connect(agent), connect(agent)
    slow.wait_frame(timeout=30)
    fast.wait_frame(timeout=30)
    received_before = fast.frames_received
    lags: list[int] = []
    for _ in range(40):  # the slow consumer
        frame = slow.latest()
        frame.decode()
        lags.append(agent.pipeline.last_sequence - frame.sequence)
        time.sleep(0.2)  # the slowness under test, not synchronisation
    third = len(lags) // 3
    first, last = np.median(lags[:third]), np.median(lags[-third:])
    # the credit window (2) plus frames captured while the viewer's I/O thread was not running
    assert np.median(lags) <= 4, f"slow viewer: frames held were {lags} behind the newest"
    assert last <= first + 3, f"the slow viewer's lag grew from {first} to {last} frames: {lags}"
    # The fast viewer was not held to the slow one's pace.
    received = fast.frames_received - received_before
    assert received >= 3 * len(lags), f"the fast viewer got {received} frames while the slow one read {len(lags)}"


def test_agent_never_queues_frames_for_a_viewer_that_reads_slowly(start_agent):
    """A protocol-level viewer with one credit that reads (and returns the credit for) one message every
    200 ms: each frame it gets was captured after its previous credit went back, because the agent only sends
    against credit and never queues. Measured in frames (see the test above): the lag is the frames captured
    during one read period, and does not grow. (With N credits a reader this slow lags N read periods.)"""
    agent = start_agent(size=(320, 240), fps=30)
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{agent.port}")
    lags: list[int] = []
    periods: list[int] = []  # frames the agent captured in each read period
    try:
        sock.send(p.encode(p.Hello(versions=[1], client="slow reader", credit=1)))
        deadline = time.monotonic() + 120.0  # a deadline for a busy machine, not the expected time
        while len(lags) < 40 and time.monotonic() < deadline:
            if not sock.poll(1000):
                continue
            message = p.decode(sock.recv()).message
            if isinstance(message, p.Frame):
                lags.append(agent.pipeline.last_sequence - message.frame)
                before = agent.pipeline.last_sequence
                sock.send(p.encode(p.Credit(n=1)))
                time.sleep(0.2)  # the slow reader (the behaviour under test, not synchronisation)
                periods.append(agent.pipeline.last_sequence - before)
    finally:
        sock.close()
    assert len(lags) == 40, f"only {len(lags)} frames in 120 s"
    third = len(lags) // 3
    # the frame read was captured after the previous credit went back: at most one read period's frames
    # behind (+2: the frame in capture when the credit arrived, and one captured while the reader woke)
    assert all(lag <= period + 2 for lag, period in zip(lags[1:], periods)), list(zip(lags[1:], periods))
    assert np.median(lags[-third:]) <= np.median(lags[:third]) + 3, f"the lag grew over the run: {lags}"


def test_command_round_trip_and_controls_show_in_metadata(start_agent, connect):
    agent = start_agent()
    client = connect(agent)
    status = client.command("status")
    assert status["agent"]["instance"] == client.welcome.agent["instance"]
    ranges = client.command("get_controls")["ranges"]
    assert "ExposureTime" in ranges and "AnalogueGain" in ranges
    result = client.command("set_controls", {"controls": {"ExposureTime": 5000, "AnalogueGain": 2.0}})
    assert result["controls"]["AeEnable"] is False

    def applied():
        md = client.wait_frame(timeout=2).metadata
        return abs(md["ExposureTime"] - 5000) < 40 and md["AnalogueGain"] == pytest.approx(2.0, abs=0.05)

    wait_until(applied, timeout=5, message="the new controls in the frame metadata")


def test_bad_commands_get_clear_errors_and_the_stream_goes_on(start_agent, connect):
    agent = start_agent()
    client = connect(agent)
    with pytest.raises(CommandFailed) as info:
        client.command("self_destruct")
    assert info.value.code == "unknown_command" and "self_destruct" in info.value.message
    with pytest.raises(CommandFailed) as info:
        client.command("set_controls", {"controls": {"ExposureTime": 10**9}})
    assert info.value.code == "out_of_range" and "ExposureTime" in info.value.message
    with pytest.raises(CommandFailed) as info:
        client.command("set_controls", {"controls": {"AnalogueGain": "lots"}})
    assert info.value.code == "bad_argument"
    with pytest.raises(CommandFailed) as info:
        client.command("set_controls", {"controls": {"Brightness": 1}})
    assert info.value.code == "bad_argument" and "Brightness" in info.value.message
    before = client.wait_frame().sequence
    client.wait_frame(newer_than=before + 5, timeout=5)  # still streaming


def test_malformed_bytes_get_an_error_and_do_not_disturb_other_viewers(start_agent, connect):
    agent = start_agent()
    viewer = connect(agent)
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.setsockopt(zmq.RCVTIMEO, 3000)
    raw.connect(f"tcp://127.0.0.1:{agent.port}")
    try:
        for junk in (b"", b"\xc1garbage", msgpack.packb({"v": 99, "t": "hello"}), msgpack.packb([1, 2])):
            raw.send(junk)
            reply = p.decode(raw.recv())
            assert isinstance(reply.message, p.Error) and reply.message.code in ("protocol", "version")
        raw.send(p.encode(p.Credit(n=1)))  # no hello yet
        assert p.decode(raw.recv()).message.code == "no_session"
    finally:
        raw.close()
    assert agent.server.counters["bad_messages"] >= 4
    before = viewer.wait_frame().sequence
    viewer.wait_frame(newer_than=before + 3, timeout=5)


def test_expired_command_is_refused_not_run(start_agent, connect):
    agent = start_agent()
    client = connect(agent)
    wait_until(lambda: client.clock.known, message="a clock offset")
    pending = client.send_command("set_controls", {"controls": {"ExposureTime": 1234}}, ttl=-1.0)
    with pytest.raises(CommandFailed) as info:
        pending.future.result(timeout=5)
    assert info.value.code == "expired"
    assert agent.camera.controls().get("ExposureTime") != 1234


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_command_line_agent_and_headless_viewer():
    """The programs as a user runs them: pi-agent, then host-viewer --headless --summary-json -."""
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    agent = subprocess.Popen([sys.executable, "-m", "pi_agent.cli", "--camera", "sim", "--listen",
                              f"127.0.0.1:{port}", "--size", "320x240", "--fps", "30"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        out = subprocess.run([sys.executable, "-m", "host_viewer.cli", f"127.0.0.1:{port}", "--headless",
                              "--frames", "11", "--summary-json", "-"],
                             capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 0, out.stderr
        summary = json.loads(out.stdout)
        for key in ("frames", "fps", "width", "height", "age_ms_p50", "age_ms_p99", "sensor"):
            assert key in summary
        assert summary["frames"] == 11 and (summary["width"], summary["height"]) == (320, 240)
        assert summary["sensor"] == "imx219"
    finally:
        agent.terminate()
        assert agent.wait(timeout=10) == 0  # clean shutdown on SIGTERM


def test_viewer_without_agent_exits_with_a_clear_message():
    out = subprocess.run([sys.executable, "-m", "host_viewer.cli", f"127.0.0.1:{free_port()}", "--headless",
                          "--duration", "1", "--connect-timeout", "1"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "no agent answered" in out.stderr
