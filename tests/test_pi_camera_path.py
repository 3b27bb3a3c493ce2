"""Issue 12 on the Pi path: the REAL picamera2 on the simulated libcamera (tests/fakes/libcamera), under
picamlink's Picamera2 backend and the agent.

Ground truth is the simulated libcamera's own state (`pi.pipeline(0)`: the IPA's exposure/gain/AWB modes, the
last raw mosaic, the tuning each camera manager read), never the backend's idea of it.
"""

from __future__ import annotations

import dataclasses
import sys
import threading

import numpy as np
import pytest
import simplejpeg

from host_viewer.client import CommandFailed
from pi_agent.camera.base import CameraError, LensShadingTable, capture_timeout
from pi_agent.camera.picamera2_backend import Picamera2Camera
from pi_agent.camera.sensors import get_sensor

from .conftest import frames_until, wait_until
from .test_controls_in_force import cancel_at_first_progress

MANUAL = {"AeEnable": False, "AwbEnable": False, "ExposureTime": 4000, "AnalogueGain": 2.0, "ColourGains": (1.7, 1.4)}


def _module(sensor, **kwargs):
    """A CameraModule of the simulated libcamera: imported as `libcamera._machine`, the very module the harness
    uses (tests/fakes/simulated_pi.py puts tests/fakes on sys.path the same way), so the Machine accepts it."""
    from tests.fakes.simulated_pi import FAKES_DIR

    if FAKES_DIR not in sys.path:
        sys.path.append(FAKES_DIR)
    from libcamera._machine import CameraModule

    return CameraModule(sensor=sensor, **kwargs)


def _frames_until(camera, predicate, frames=30):
    return frames_until(camera, predicate, frames, timeout=5.0)


def _in_auto(pipe) -> bool:
    return pipe.exposure_auto and pipe.gain_auto and pipe.awb_auto


# ------------------------------------------------------------------------------- 1. controls in force
def test_auto_back_on_survives_a_still_and_a_tuning_reopen(picamera2_camera):
    """The case: manual 4 ms / gain 2 / gains (1.7, 1.4) → AeEnable and AwbEnable true → still: in auto.
    Before the fix, the still's configuration re-sent ExposureTime with AeEnable and libcamera ≥ 0.5 went manual."""
    cam, pi = picamera2_camera("imx219", "vc4")
    cam.set_controls(MANUAL)
    _frames_until(cam, lambda md: abs(md["ExposureTime"] - 4000) < 30 and md["ColourGains"][0] == pytest.approx(1.7))
    cam.set_controls({"AeEnable": True, "AwbEnable": True})
    assert cam.controls() == {"AeEnable": True, "AwbEnable": True}
    _frames_until(cam, lambda md: _in_auto(pi.pipeline(0)))
    still = cam.capture_still(timeout=20)
    assert still.extra.get("still") and _in_auto(pi.pipeline(0))  # the still's configuration kept AE/AWB on
    stream = _frames_until(cam, lambda md: abs(md["ExposureTime"] - 4000) > 200)  # AGC moves it again
    assert _in_auto(pi.pipeline(0)) and stream.metadata["ColourGains"][0] != pytest.approx(1.7)
    cam.apply_lens_shading(LensShadingTable.flat((16, 12)))  # reopen with a new tuning: configure re-sends
    assert _in_auto(pi.pipeline(0))


def test_agent_snapshot_after_auto_back_on_is_in_auto_and_cancel_restores_exactly(simulated_pi, start_agent,
                                                                                   connect):
    # the IMX296 (1456x1088, one mode) keeps the simulated full-resolution still quick
    pi = simulated_pi([_module("imx296", scene="white", seed=2)], "vc4")
    agent = start_agent(camera=Picamera2Camera(picamera2_module=pi.picamera2), size=(320, 240), fps=30.0)
    client = connect(agent)
    client.command("set_controls", {"controls": {"ExposureTime": 4000, "AnalogueGain": 2.0,
                                                 "ColourGains": [1.7, 1.4]}})
    wait_until(lambda: client.latest() and abs(client.latest().metadata.get("ExposureTime", 0) - 4000) < 30,
               timeout=10, message="manual exposure in force")
    client.command("set_controls", {"controls": {"AeEnable": True, "AwbEnable": True}})
    value = client.command("get_controls")
    assert value["controls"] == {"AeEnable": True, "AwbEnable": True}
    still = client.command("snapshot", {"raw": False}, timeout=60)
    assert still["full_resolution"] is True and _in_auto(pi.pipeline(0))
    wait_until(lambda: abs(client.latest().metadata["ExposureTime"] - 4000) > 200, timeout=10,
               message="the stream's exposure under AGC again")
    # a cancelled calibration puts the requested set back exactly (no ExposureTime next to AeEnable=true)
    pending = cancel_at_first_progress(client, "calibrate", {"what": "exposure"})
    with pytest.raises(CommandFailed) as cancelled:
        pending.future.result(timeout=60)
    assert cancelled.value.code == "cancelled"
    assert client.command("get_controls")["controls"] == {"AeEnable": True, "AwbEnable": True}
    wait_until(lambda: _in_auto(pi.pipeline(0)), timeout=10, message="camera back in auto")


# ------------------------------------------------------------------------------- 2. modes from the camera
def _one_mode_imx708():
    imx708 = get_sensor("imx708")
    hdr = dataclasses.replace([m for m in imx708.modes if m.size == (2304, 1296)][0], fps_max=30.0)
    return dataclasses.replace(imx708, modes=(hdr,))


def test_modes_come_from_the_camera_and_a_one_mode_camera_streams_and_takes_stills(simulated_pi):
    pi = simulated_pi([_module(_one_mode_imx708())], "pisp")
    cam = Picamera2Camera(picamera2_module=pi.picamera2)
    try:
        assert [m.size for m in cam.sensor.modes] == [(2304, 1296)]  # not the table's three IMX708 modes
        with pytest.raises(ValueError) as err:
            cam.configure((640, 360), 60.0)
        assert "2304x1296" in str(err.value) and "30 fps" in str(err.value)
        cam.configure((640, 360), 30.0)
        cam.start()
        frame = cam.capture(timeout=10)
        assert frame.raw.shape == (1296, 2304) and frame.main.shape == (360, 640, 3)
        still = cam.capture_still(timeout=20)
        assert still.raw.shape == (1296, 2304) and still.main.shape == (1296, 2304, 3)
        frame = cam.capture(timeout=10)
        np.testing.assert_array_equal(frame.raw, pi.pipeline(0).raw_of(frame.metadata))
    finally:
        cam.close()


# ------------------------------------------------------------------------------- 3. long exposures, stalls
def test_a_2_5_s_frame_period_is_not_a_camera_error(picamera2_camera):
    cam, pi = picamera2_camera("imx219", "vc4", size=(320, 240), fps=0.4, start=False)
    # manual exposure, gain and colour gains before start: no startup frames are hidden (ipa_base.cpp start)
    cam.set_controls({"AeEnable": False, "AwbEnable": False, "ExposureTime": 100_000, "AnalogueGain": 1.0,
                      "ColourGains": (1.5, 1.5)})
    cam.start()
    metadata: dict = {}
    for _ in range(2):
        frame = cam.capture(timeout=capture_timeout(cam.configuration, cam.controls(), metadata))
        metadata = frame.metadata
    assert metadata["FrameDuration"] == pytest.approx(2_500_000, rel=0.01)


def _finishes(fn, within: float) -> bool:
    done = threading.Event()

    def run():
        try:
            fn()
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    return done.wait(within)


def test_a_stalled_camera_never_blocks_controls_or_stop(picamera2_camera):
    cam, pi = picamera2_camera("imx219", "vc4")
    cam.capture(timeout=5)
    pi.pipeline(0).disconnect()  # no frame completes any more (one already being made may still arrive)
    for _ in range(3):
        try:
            cam.capture(timeout=0.5)
        except CameraError:
            break
    else:
        raise AssertionError("frames kept coming from a stalled camera")
    outcome: dict = {}

    def waiting_capture():
        try:
            cam.capture(timeout=3.0)
        except CameraError as exc:
            outcome["error"] = str(exc)

    waiter = threading.Thread(target=waiting_capture, daemon=True)
    waiter.start()
    # while a capture waits for a frame that will not come, the camera lock is free
    assert _finishes(lambda: cam.set_controls({"ExposureTime": 5000, "AeEnable": False}), within=2.0)
    waiter.join(15)
    assert "no frame" in outcome.get("error", "")
    # the timed-out capture job must not sit in front of stop() in picamera2's queue
    assert _finishes(cam.stop, within=10.0), "stop() waited behind the timed-out capture job"
    pi.pipeline(0).reconnect()
    cam.start()
    frame = cam.capture(timeout=10)
    np.testing.assert_array_equal(frame.raw, pi.pipeline(0).raw_of(frame.metadata))


def test_the_agent_recovers_from_a_stalled_camera(simulated_pi, start_agent, connect):
    pi = simulated_pi(["imx219"], "vc4")
    agent = start_agent(camera=Picamera2Camera(picamera2_module=pi.picamera2), size=(320, 240), fps=30.0)
    client = connect(agent)
    wait_until(client.latest, timeout=10, message="a frame")
    pi.pipeline(0).disconnect()
    wait_until(lambda: client.event_counts.get("camera_error"), timeout=20, message="the stall reported")
    assert _finishes(lambda: client.command("get_controls", timeout=5), within=6.0)
    pi.pipeline(0).reconnect()
    wait_until(lambda: client.event_counts.get("camera_recovered"), timeout=30, message="recovered")
    seq = client.latest().sequence
    wait_until(lambda: client.latest().sequence > seq, timeout=10, message="frames flow again")


# ------------------------------------------------------------------------------- 4. monochrome sensors
@pytest.mark.parametrize("platform, packed, raw_format", [("vc4", False, "R10"), ("vc4", True, "R10_CSI2P"),
                                                           ("pisp", False, "R16")])
def test_a_mono_camera_opens_streams_and_edits_its_mono_tuning(picamera2_camera, platform, packed, raw_format):
    cam, pi = picamera2_camera("ov9281", platform, size=(640, 400), packed_raw=packed)
    assert cam.is_mono and cam.sensor.bayer_order == "MONO"
    assert cam.configuration["raw"]["format"] == raw_format
    frame = cam.capture(timeout=10)
    assert frame.bayer_order == "MONO"
    np.testing.assert_array_equal(frame.raw, pi.pipeline(0).raw_of(frame.metadata))
    assert "ColourGains" not in frame.metadata and "ColourGains" not in cam.control_ranges()
    assert cam.tuning_file_name == "ov9281_mono.json"
    stock = pi.machine.managers_created[-1]["tunings"][0]
    assert cam.tuning() == stock  # the file libcamera loaded for this camera, which the LST export edits
    grid = (16, 12) if platform == "vc4" else (32, 32)
    cam.apply_lens_shading(LensShadingTable.flat(grid))
    assert pi.machine.managers_created[-1]["source"] is not None  # reopened with the edited mono tuning
    assert cam.capture(timeout=10).bayer_order == "MONO"


def test_imx296_mono_and_colour_are_told_apart(simulated_pi):
    pi = simulated_pi(["imx296_mono", "imx296"], "vc4")
    seen = {}
    for num in (0, 1):
        cam = Picamera2Camera(num, picamera2_module=pi.picamera2)
        try:
            seen[cam.is_mono] = (cam.tuning_file_name, cam.sensor.black_level, [m.size for m in cam.sensor.modes],
                                 cam.sensor.bayer_order)
        finally:
            cam.close()
    assert seen[True] == ("imx296_mono.json", 60, [(1456, 1088)], "MONO")
    assert seen[False] == ("imx296.json", 60, [(1456, 1088)], "RGGB")


def test_the_agent_streams_a_mono_pi_camera_and_calibrates_its_exposure(simulated_pi, start_agent, connect):
    pi = simulated_pi([_module("ov9281", scene="white", seed=3)], "vc4")
    agent = start_agent(camera=Picamera2Camera(picamera2_module=pi.picamera2), size=(640, 400), fps=30.0)
    client = connect(agent)
    assert client.welcome.sensor["bayer_order"] == "MONO"
    frame = wait_until(client.latest, timeout=10, message="a frame")
    assert frame.stats["channels"] == ["Y"]
    assert simplejpeg.decode_jpeg_header(frame.jpeg)[2] == "Gray"
    with pytest.raises(CommandFailed) as refused:
        client.command("calibrate", {"what": "white_balance"})
    assert "monochrome" in refused.value.message
    result = client.command("calibrate", {"what": "exposure"}, timeout=90)["exposure"]
    assert result["converged"]
    pipe = pi.pipeline(0)
    wait_until(lambda: not pipe.exposure_auto and pipe.last_raw is not None
               and abs(np.percentile(pipe.last_raw, 99.9) - agent.camera.sensor.black_level - result["target"])
               <= 0.06 * result["target"], timeout=10, message="the raw level on target (ground truth)")
