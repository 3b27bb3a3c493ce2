"""The replay camera serves a replay file's frames in a cycle with fresh timestamps, through the whole agent."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pi_agent.camera.base import CameraError
from pi_agent.camera.factory import check_camera_kind, make_camera
from pi_agent.camera.replay import ReplayCamera, ReplayError
from pi_agent.cli import build_parser
from pi_agent.stats import compute_stream_stats
from protocol import unpack_array
from scripts.make_replay import render, write_replay


@pytest.fixture(scope="module")
def replay_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("replay") / "sim.npz"
    write_replay(path, render((320, 240), 3, warmup=2))
    return path


def test_frames_cycle_with_fresh_timestamps(replay_file):
    with np.load(replay_file) as data:
        main, raw = data["main"], data["raw"]
    camera = ReplayCamera(replay_file)
    camera.configure((320, 240), 0)
    camera.start()
    frames = [camera.capture() for _ in range(7)]
    assert [f.sequence for f in frames] == list(range(7))
    for k, f in enumerate(frames):
        np.testing.assert_array_equal(f.main, main[k % 3])
        np.testing.assert_array_equal(f.raw, raw[k % 3])
        assert f.bayer_order == "BGGR" and f.bit_depth == 10 and f.black_level == 64
        assert "ExposureTime" in f.metadata
    stamps = [f.metadata["SensorTimestamp"] for f in frames]
    assert all(b > a for a, b in zip(stamps, stamps[1:]))
    with pytest.raises(ValueError):
        frames[0].raw[0, 0] = 1  # served without a copy, so read-only
    camera.stop()
    with pytest.raises(CameraError):
        camera.capture()


def test_configure_resizes_the_main_frames_once(replay_file):
    camera = ReplayCamera(replay_file)
    config = camera.configure((160, 120), 15)
    camera.start()
    frame = camera.capture()
    assert frame.main.shape == (120, 160, 3)
    assert config["main"]["size"] == (160, 120)
    assert frame.metadata["FrameDuration"] == round(1e6 / 15)


def test_lens_shading_is_refused(replay_file):
    camera = ReplayCamera(replay_file)
    with pytest.raises(CameraError, match="replay"):
        camera.apply_lens_shading(None)


def test_bad_files_give_clear_errors(tmp_path, replay_file):
    with pytest.raises(ReplayError, match="cannot read"):
        ReplayCamera(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ReplayError, match="not a picamlink replay"):
        ReplayCamera(tmp_path / "other.npz")
    with np.load(replay_file) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["raw"] = arrays["raw"][:2]
    np.savez(tmp_path / "short.npz", **arrays)
    with pytest.raises(ReplayError, match="same number"):
        ReplayCamera(tmp_path / "short.npz")
    with np.load(replay_file) as data:
        arrays = {k: data[k] for k in data.files}
    info = json.loads(str(arrays["info"]))
    arrays["info"] = np.array(json.dumps({**info, "bayer_order": "XXXX"}))
    np.savez(tmp_path / "order.npz", **arrays)
    with pytest.raises(ReplayError, match="bayer_order"):
        ReplayCamera(tmp_path / "order.npz")


def test_cli_accepts_replay_and_rejects_unknown_cameras(replay_file):
    args = build_parser().parse_args(["--camera", f"replay:{replay_file}"])
    assert isinstance(make_camera(args.camera), ReplayCamera)
    with pytest.raises(ValueError):
        check_camera_kind("replay:")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--camera", "bogus"])


def test_agent_streams_a_replay(start_agent, connect, replay_file):
    with np.load(replay_file) as data:
        main, raw = data["main"], data["raw"]
    agent = start_agent(camera=ReplayCamera(replay_file), size=(320, 240), fps=30)
    client = connect(agent)
    frame = client.wait_frame(timeout=10)
    index = frame.sequence % 3
    image = frame.decode().astype(np.int16)
    assert image.shape == (240, 320, 3)
    assert np.abs(image - main[index]).mean() < 4  # JPEG at quality 80
    want = compute_stream_stats(raw[index], "BGGR", 10, 64).to_compact_wire()  # the sampled overlay statistics
    assert frame.stats["mean"] == want["mean"] and frame.stats["level"] == want["level"]
    assert frame.stats["sample_step"] == want["sample_step"]
    later = client.wait_frame(timeout=10, newer_than=frame.sequence)
    assert later.capture_ns > frame.capture_ns


def test_a_snapshot_of_a_replay_falls_back_to_a_stream_frame_and_says_why(start_agent, connect, replay_file):
    with np.load(replay_file) as data:
        raw = data["raw"]
    agent = start_agent(camera=ReplayCamera(replay_file), size=(320, 240), fps=30)
    client = connect(agent)
    client.wait_frame(timeout=10)
    value = client.command("snapshot", {}, timeout=10)
    assert value["full_resolution"] is False and "full-resolution still" in value["reason"]
    np.testing.assert_array_equal(unpack_array(value["raw"], "raw"), raw[value["frame"] % 3])
    assert (value["width"], value["height"]) == (320, 240)
