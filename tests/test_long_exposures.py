"""Long exposures work (issue 12, item 3): the capture timeout follows the frame duration and exposure in force.

The case: `pi-agent --camera sim --fps 0.4` + `host-viewer --headless --summary-json` reports frames and no
camera_error event (the summary counts the agent's events by name).
"""

from __future__ import annotations

import json

import pytest

from host_viewer import cli as viewer_cli
from pi_agent.camera.base import MIN_CAPTURE_TIMEOUT_S, capture_timeout
from pi_agent.camera.sim import SimulatedCamera

from .conftest import wait_until


def test_capture_timeout_follows_frame_duration_and_exposure():
    fast = capture_timeout({"FrameDurationLimits": (33333, 33333)}, {}, {"FrameDuration": 33333, "ExposureTime": 20000})
    assert MIN_CAPTURE_TIMEOUT_S < fast < MIN_CAPTURE_TIMEOUT_S + 0.5
    slow = capture_timeout({"FrameDurationLimits": (2_500_000, 2_500_000)}, {}, {})
    assert slow > 2 * 2.5  # several 2.5 s frames, not the 30 fps figure
    # a long exposure requested but not yet in force already lengthens the wait (free-running limits)
    coming = capture_timeout({"FrameDurationLimits": (47_000, 11_767_556)}, {"ExposureTime": 3_000_000},
                             {"FrameDuration": 47_000, "ExposureTime": 20_000})
    assert coming > 2 * 3.0
    # the free-running maximum (the sensor's longest exposure) is not a frame that is coming
    assert capture_timeout({"FrameDurationLimits": (47_000, 11_767_556)}, {}, {"FrameDuration": 47_000}) < 3.0


def test_fps_0_4_streams_with_frames_and_no_camera_error_events(start_agent, tmp_path):
    """The issue's case, in process: the agent at 0.4 fps (2.5 s frames), the headless viewer CLI's summary."""
    agent = start_agent(camera=SimulatedCamera(seed=1), fps=0.4, size=(640, 480))
    summary_file = tmp_path / "summary.json"
    code = viewer_cli.main([f"127.0.0.1:{agent.port}", "--headless", "--duration", "6", "--summary-json",
                            str(summary_file)])
    summary = json.loads(summary_file.read_text())
    assert code == 0
    assert summary["frames"] >= 2
    assert "events" in summary and summary["events"].get("camera_error", 0) == 0
    assert agent.pipeline.camera_failures == 0
    assert summary["fps"] == pytest.approx(0.4, abs=0.2)


def test_the_summary_counts_events_by_name(start_agent, connect):
    camera = SimulatedCamera(seed=1)
    agent = start_agent(camera=camera)
    client = connect(agent)
    camera.inject_fault("raise", 2)
    wait_until(lambda: client.event_counts.get("camera_recovered"), timeout=10, message="recovered event")
    assert client.event_counts["camera_error"] == 2


def test_calibration_waits_for_a_frame_as_long_as_the_frame_period_needs(start_agent):
    """A 5.6 s frame period (0.18 fps) is longer than calibration's old fixed 5 s wait for a frame: the wait
    now follows the frame duration in force. Asked right after a frame arrived, the next one is a whole
    period away, so a 5 s wait would fail every time."""
    from pi_agent.calibration.frames import PipelineFrameSource

    agent = start_agent(camera=SimulatedCamera(seed=1), fps=0.18, size=(320, 240))
    source = PipelineFrameSource(agent.camera, agent.pipeline)
    try:
        assert source.frame_timeout() > 2 * 5.5
        source.next(timeout=60)  # a frame has just arrived: the next is one frame period away
        source.discard_queued()
        frame, stats = source.next()  # no timeout given: the camera's own
        assert frame.metadata["FrameDuration"] == pytest.approx(5_555_556, rel=0.01)
        assert stats.pixels.sum() > 0
    finally:
        source.close()


def test_a_direct_calibration_source_also_waits_as_long_as_the_frame_period_needs():
    """The same for calibration that reads the camera itself (scripts, the OpenFlexure drop-in): a 5.6 s
    frame period, the next frame asked for right after one arrived, no timeout given."""
    from pi_agent.calibration.frames import CameraFrameSource

    camera = SimulatedCamera(seed=1)
    camera.configure((320, 240), 0.18)
    camera.start()
    try:
        source = CameraFrameSource(camera)
        source.next(timeout=60)
        frame, stats = source.next()  # the camera's own wait: the old fixed 5 s failed here
        assert source.frame_timeout() > 2 * 5.5
        assert frame.metadata["FrameDuration"] == pytest.approx(5_555_556, rel=0.01)
        assert stats.pixels.sum() > 0
    finally:
        camera.close()
