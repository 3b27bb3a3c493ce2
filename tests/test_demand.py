"""Work in proportion to what is delivered (issue 15): no encode and no stream statistics while no viewer
holds credit, and, when the camera outruns the viewers, encode only frames that are sent. Judged by the
counters `status` reports (frames_captured, frames_encoded, stream_stats, frames_sent), never by time."""

from __future__ import annotations

import time

import pytest
import zmq

from protocol import Command, Credit, Frame, Hello, Result, decode, encode
from pi_agent.camera.replay import ReplayCamera
from scripts.make_replay import render, write_replay

from .conftest import wait_until


def status(agent) -> dict:
    """The agent's `status` reply, asked through its command router (no viewer session involved)."""
    replies = []
    agent.router.handle(Command(id=1, name="status"), replies.append)
    assert isinstance(replies[0], Result)
    return replies[0].value


class RawViewer:
    """A viewer that holds `credit` frames in flight and returns a credit only when told to: a viewer (or
    link) much slower than the camera."""

    def __init__(self, port: int, credit: int):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"tcp://127.0.0.1:{port}")
        self.sock.send(encode(Hello(versions=[1], client="test raw viewer", credit=credit)))
        self.frames: list[int] = []

    def receive(self, timeout: float = 5.0) -> None:
        """Read messages until one more frame arrived."""
        deadline = time.monotonic() + timeout
        want = len(self.frames) + 1
        while len(self.frames) < want:
            left = deadline - time.monotonic()
            assert left > 0 and self.sock.poll(left * 1000), "no frame arrived"
            message = decode(self.sock.recv()).message
            if isinstance(message, Frame):
                self.frames.append(message.frame)

    def credit(self) -> None:
        self.sock.send(encode(Credit(n=1)))

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def test_an_agent_nobody_watches_captures_but_encodes_nothing(start_agent, connect):
    agent = start_agent(size=(320, 240), fps=30)
    wait_until(lambda: status(agent)["frames_captured"] >= 15, timeout=10, message="15 captured frames")
    idle = status(agent)
    assert idle["viewers"] == 0 and idle["frames_encoded"] == 0 and idle["stream_stats"] == 0
    assert idle["stats"]["sample_step"] == 1  # status itself still reports the newest frame (a full count)

    client = connect(agent)
    client.wait_frame(timeout=10)
    watched = status(agent)
    assert watched["frames_encoded"] >= 1 and watched["stream_stats"] == watched["frames_encoded"]
    client.close()
    wait_until(lambda: status(agent)["viewers"] == 0, timeout=10, message="the viewer's session to end")
    gone = status(agent)["frames_captured"]  # a frame claimed just before the bye may still be encoded
    wait_until(lambda: status(agent)["frames_captured"] >= gone + 2, timeout=10, message="two more frames")
    left = status(agent)
    wait_until(lambda: status(agent)["frames_captured"] >= left["frames_captured"] + 15, timeout=10,
               message="15 more captured frames")
    assert status(agent)["frames_encoded"] == left["frames_encoded"]  # the camera ran on; nothing encoded


def test_a_camera_outrunning_a_slow_viewer_encodes_only_frames_that_are_sent(start_agent):
    """A 30 fps camera and a viewer that takes one frame at a time and returns its credit after each:
    every frame encoded is a frame sent (the one on its way at the moment of reading aside)."""
    agent = start_agent(size=(320, 240), fps=30)
    viewer = RawViewer(agent.port, credit=1)
    try:
        for _ in range(12):
            viewer.receive()
            before = status(agent)["frames_captured"]
            wait_until(lambda: status(agent)["frames_captured"] >= before + 2, timeout=10,
                       message="the camera to run ahead")  # two frames the viewer cannot take
            viewer.credit()
        viewer.receive()  # the last credit was spent: nothing is on its way now
        # (the socket thread counts a frame just after sending it)
        s = wait_until(lambda: (lambda s: s if s["frames_sent"] >= 13 else None)(status(agent)), timeout=10)
    finally:
        viewer.close()
    assert s["frames_sent"] == len(viewer.frames) == 13
    assert s["frames_encoded"] == s["frames_sent"] and s["stream_stats"] == s["frames_encoded"]
    assert s["frames_captured"] >= s["frames_sent"] + 24


@pytest.fixture(scope="module")
def replay_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("replay") / "sim.npz"
    write_replay(path, render((320, 240), 3, warmup=2))
    return path


def test_free_running_capture_encodes_only_frames_that_are_sent(start_agent, connect, replay_file):
    """`--fps 0`: the camera could deliver frames as fast as they are taken; frames are analysed and encoded
    only against a viewer's credit, and a camera nobody watches does not spin."""
    agent = start_agent(camera=ReplayCamera(replay_file), size=(320, 240), fps=0)
    wait_until(lambda: status(agent)["frames_captured"] >= 3, timeout=10, message="a few idle captures")
    assert status(agent)["frames_encoded"] == 0
    client = connect(agent, credit=2)
    last = client.wait_frame(timeout=10).sequence
    for _ in range(60):
        last = client.wait_frame(timeout=10, newer_than=last).sequence
    client.close()
    wait_until(lambda: status(agent)["viewers"] == 0, timeout=10, message="the viewer's session to end")
    # a frame claimed just before the viewer left may still be on the capture thread: wait for it to finish
    s = wait_until(lambda: (lambda s: s if s["frames_encoded"] == s["stream_stats"] else None)(status(agent)),
                   timeout=10, message="the capture thread at rest")
    assert s["frames_sent"] >= 61 and s["stream_stats"] == s["frames_encoded"]
    assert 0 <= s["frames_encoded"] - s["frames_sent"] <= 2  # at most the credit in flight when it left
