"""Modes come from the camera (issue 12, item 2), the simulator's side: limits named in errors, one-mode cameras.

The Pi side (picamera2's sensor_modes) is in tests/test_pi_camera_path.py.
"""

from __future__ import annotations

import dataclasses

import pytest

from pi_agent.camera.sensors import get_sensor
from pi_agent.camera.sim import SimulatedCamera

from .conftest import wait_until


def one_mode_imx708():
    """IMX708 with HDR on lists one mode only: 2304x1296, 30 fps max (rpicam-apps #570)."""
    imx708 = get_sensor("imx708")
    hdr = dataclasses.replace([m for m in imx708.modes if m.size == (2304, 1296)][0], fps_max=30.0)
    return dataclasses.replace(imx708, modes=(hdr,))


def test_an_unmeetable_request_names_the_cameras_own_limits():
    camera = SimulatedCamera(sensor=one_mode_imx708(), pacing=False)
    with pytest.raises(ValueError) as fast:
        camera.configure((640, 480), 60.0)
    text = str(fast.value)
    assert "60" in text and "2304x1296" in text and "30 fps" in text
    with pytest.raises(ValueError) as slow:
        SimulatedCamera(sensor="imx219", pacing=False).configure((640, 480), 0.05)
    assert "longest frame" in str(slow.value) and "11.8 s" in str(slow.value)


def test_a_fast_request_names_every_mode_and_its_rate():
    with pytest.raises(ValueError) as err:
        SimulatedCamera(sensor="imx477", pacing=False).configure((640, 480), 200.0)
    text = str(err.value)
    assert "120.05 fps" in text and "1332x990" in text  # the fastest mode that delivers 640x480


def test_a_camera_listing_one_mode_streams_and_takes_stills(start_agent, connect):
    sensor = one_mode_imx708()
    camera = SimulatedCamera(sensor=sensor, seed=1)
    agent = start_agent(camera=camera, size=(640, 360), fps=30.0)
    client = connect(agent)
    assert [m["size"] for m in client.welcome.modes] == [[2304, 1296]]
    frame = wait_until(client.latest, timeout=5, message="a frame")
    assert (frame.width, frame.height) == (640, 360)
    still = client.command("snapshot", {"raw": True}, timeout=30)
    assert still["full_resolution"] is True and (still["width"], still["height"]) == (2304, 1296)
    assert still["raw"]["shape"] == [1296, 2304]


def test_the_still_uses_the_largest_mode_listed():
    sensor = get_sensor("imx219")
    fewer = dataclasses.replace(sensor, modes=tuple(m for m in sensor.modes if m.size != (3280, 2464)))
    camera = SimulatedCamera(sensor=fewer, pacing=False, seed=1)
    camera.configure((640, 480), 30.0)
    camera.start()
    camera.capture()
    still = camera.capture_still()
    assert still.raw.shape == (1080, 1920)  # the largest left (by pixels, as picamera2.sensor_resolution), not 3280x2464
