"""What a replay camera cannot do is said at once (breaker F9): calibration is refused before anything is
measured, and a stream size of another aspect ratio is cropped like the ISP crops, never squashed."""

from __future__ import annotations

import numpy as np
import pytest

from host_viewer.client import CommandFailed
from pi_agent.camera.replay import ReplayCamera
from scripts.make_replay import render, write_replay


@pytest.fixture(scope="module")
def replay_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("replay") / "sim.npz"
    write_replay(path, render((320, 240), 2, warmup=2))
    return path


@pytest.mark.parametrize("what", ["exposure", "white_balance", "lens_shading", "all"])
def test_calibration_of_a_replay_is_refused_up_front(start_agent, connect, replay_file, what):
    agent = start_agent(camera=ReplayCamera(replay_file), size=(320, 240), fps=30)
    client = connect(agent)
    progress = []
    with pytest.raises(CommandFailed) as refused:
        client.command("calibrate", {"what": what}, timeout=30, on_progress=progress.append)
    assert refused.value.code == "bad_argument"
    assert "replay camera cannot be calibrated" in refused.value.message and "recorded" in refused.value.message
    assert progress == []  # nothing was measured first
    assert agent.lease.holder is None


def test_a_wider_stream_from_a_4_3_replay_is_cropped_not_squashed(replay_file):
    with np.load(replay_file) as data:
        recorded = data["main"][0]  # 240x320, 4:3
    camera = ReplayCamera(replay_file)
    camera.configure((320, 180), 0)  # 16:9 at the recorded width: the centre 180 rows, unscaled
    camera.start()
    frame = camera.capture()
    assert frame.main.shape == (180, 320, 3)
    np.testing.assert_array_equal(frame.main, recorded[30:210])
    camera.stop()
