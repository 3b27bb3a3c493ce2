"""Controls say what is in force (issue 12, item 1), through the simulated camera and the agent.

Ground truth is the simulator's own state (`_ae_exposure`, `_awb`) and each frame's metadata, never the
requested set the code under test keeps.
"""

from __future__ import annotations

import pytest

from host_viewer.client import CommandFailed
from pi_agent.camera.requested import merge_requested, restore_command
from pi_agent.camera.sim import SimulatedCamera

from .conftest import frames_until, wait_until

MANUAL = {"ExposureTime": 4000, "AnalogueGain": 2.0, "ColourGains": [1.7, 1.4]}


# -- the requested set, as pure functions ---------------------------------------------------------------
def test_turning_auto_back_on_forgets_the_manual_values_it_overrides():
    manual = merge_requested({}, {"AeEnable": False, "AwbEnable": False, "ExposureTime": 4000, "AnalogueGain": 2.0,
                                  "ColourGains": [1.7, 1.4]})
    assert manual["ColourGains"] == (1.7, 1.4)
    auto_exposure = merge_requested(manual, {"AeEnable": True})
    assert auto_exposure == {"AeEnable": True, "AwbEnable": False, "ColourGains": (1.7, 1.4)}
    assert merge_requested(auto_exposure, {"AwbEnable": True}) == {"AeEnable": True, "AwbEnable": True}
    # an explicit value in the same request wins, as in libcamera >= 0.5
    assert merge_requested(manual, {"AeEnable": True, "ExposureTime": 5000})["ExposureTime"] == 5000
    assert "AnalogueGain" not in merge_requested(manual, {"AeEnable": True, "ExposureTime": 5000})
    # 0 / (0, 0) is picamera2's "automatic" for that one control
    assert "ExposureTime" not in merge_requested(manual, {"ExposureTime": 0})
    assert "ColourGains" not in merge_requested(manual, {"ColourGains": (0, 0)})


def test_restore_command_turns_auto_back_on_where_the_target_has_no_manual_values():
    current = {"AeEnable": False, "AwbEnable": False, "ExposureTime": 900, "AnalogueGain": 3.0, "ColourGains": (2, 1)}
    assert restore_command(current, {}) == {"AeEnable": True, "AwbEnable": True}
    assert restore_command(current, {"AeEnable": True, "AwbEnable": True}) == {"AeEnable": True, "AwbEnable": True}
    target = {"AeEnable": False, "ExposureTime": 4000, "AnalogueGain": 2.0}
    assert restore_command(current, target) == {**target, "AwbEnable": True}
    assert restore_command({}, {}) == {}


# -- the simulator models libcamera's order within one request --------------------------------------------
def test_an_explicit_exposure_in_the_same_request_wins_over_aeenable_in_either_order():
    for controls in ({"AeEnable": True, "ExposureTime": 4000}, {"ExposureTime": 4000, "AeEnable": True}):
        camera = SimulatedCamera(seed=1, pacing=False)
        camera.configure((320, 240), 30.0)
        camera.set_controls(controls)
        assert camera._ae_exposure is False and camera._ae_gain is True, controls


def _frames_until(camera, predicate, frames=12):
    return frames_until(camera, predicate, frames, timeout=2.0)


def test_camera_restore_controls_puts_the_requested_set_back_exactly():
    camera = SimulatedCamera(seed=1, pacing=False)
    camera.configure((320, 240), 30.0)
    camera.start()
    before = camera.controls()
    camera.set_controls({"AeEnable": False, "ExposureTime": 1500, "AnalogueGain": 3.0})
    camera.restore_controls(before)
    assert camera.controls() == before
    assert camera._ae_exposure and camera._ae_gain  # ground truth: AGC runs again
    _frames_until(camera, lambda md: md["AeEnable"] is True)


# -- through the agent ----------------------------------------------------------------------------------
def _set_manual(client):
    client.command("set_controls", {"controls": MANUAL})
    wait_until(lambda: client.latest() and abs(client.latest().metadata.get("ExposureTime", 0) - 4000) < 20
               and client.latest().metadata.get("AnalogueGain") == pytest.approx(2.0, rel=0.01)
               and tuple(client.latest().metadata.get("ColourGains", ())) == pytest.approx((1.7, 1.4)),
               timeout=5, message="manual controls in force")


def test_manual_then_auto_then_snapshot_still_and_stream_are_both_in_auto(start_agent, connect):
    """The case of issue 12: manual 4 ms / gain 2 / gains (1.7, 1.4) → AeEnable and AwbEnable true → snapshot.
    (IMX296: its 1.6 MP still renders quickly on a loaded machine.)"""
    camera = SimulatedCamera(sensor="imx296", seed=1)
    agent = start_agent(camera=camera)
    client = connect(agent)
    _set_manual(client)
    client.command("set_controls", {"controls": {"AeEnable": True, "AwbEnable": True}})
    requested = client.command("get_controls")["controls"]
    assert requested == {"AeEnable": True, "AwbEnable": True}
    # the stream leaves the manual values: AGC (target 16 % grey) and AWB (5000 K chart) move them
    wait_until(lambda: (md := client.latest().metadata)["AeEnable"] and md["AwbEnable"]
               and abs(md["ExposureTime"] - 4000) > 200
               and abs(md["ColourGains"][0] - 1.7) > 0.05, timeout=10, message="stream back in auto")
    still = client.command("snapshot", {"raw": False}, timeout=30)
    assert still["full_resolution"] is True
    assert still["metadata"]["AeEnable"] is True and still["metadata"]["AwbEnable"] is True
    assert camera._ae_exposure and camera._ae_gain and camera._awb  # ground truth after the still
    truth = camera.true_colour_gains()
    wait_until(lambda: client.latest().metadata["ColourGains"][0] == pytest.approx(truth[0], rel=0.05),
               timeout=10, message="AWB converged on the illuminant after the still")


def test_get_controls_reports_requested_and_in_force_separately(start_agent, connect):
    agent = start_agent(camera=SimulatedCamera(seed=1))
    client = connect(agent)
    _set_manual(client)
    value = client.command("get_controls")
    assert value["controls"]["ExposureTime"] == 4000 and value["controls"]["AeEnable"] is False
    assert abs(value["in_force"]["ExposureTime"] - 4000) < 20  # line-quantised: what the sensor really did
    assert value["in_force"]["AeEnable"] is False and "FrameDuration" in value["in_force"]
    assert value["in_force_frame_ns"] > 0
    client.command("set_controls", {"controls": {"AeEnable": True}})
    value = client.command("get_controls")
    assert "ExposureTime" not in value["controls"] and "AnalogueGain" not in value["controls"]
    assert value["controls"]["ColourGains"] == [1.7, 1.4]  # AWB is still off: its manual gains stay requested


def test_cancelled_calibration_puts_the_requested_auto_set_back_exactly(start_agent, connect):
    camera = SimulatedCamera(sensor="imx219", scene="white", seed=2)
    agent = start_agent(camera=camera)
    client = connect(agent)
    before = client.command("get_controls")["controls"]
    assert before == {"AeEnable": True, "AwbEnable": True}
    pending = cancel_at_first_progress(client, "calibrate", {"what": "exposure"})
    with pytest.raises(CommandFailed) as cancelled:
        pending.future.result(timeout=60)
    assert cancelled.value.code == "cancelled"
    assert client.command("get_controls")["controls"] == before
    assert camera._ae_exposure and camera._ae_gain and camera._awb
    wait_until(lambda: client.latest().metadata["AeEnable"] is True, timeout=5, message="stream back in auto")


def test_clear_calibration_puts_the_requested_set_back_as_before_the_calibration(start_agent, connect, tmp_path):
    camera = SimulatedCamera(sensor="imx219", scene="white", seed=2)
    agent = start_agent(camera=camera, state_dir=str(tmp_path))
    client = connect(agent)
    client.command("set_controls", {"controls": {"AwbEnable": False, "ColourGains": [1.2, 1.3]}})
    before = client.command("get_controls")["controls"]
    client.command("calibrate", {"what": "exposure"}, timeout=60)
    calibrated = client.command("get_controls")["controls"]
    assert calibrated["AeEnable"] is False and "ExposureTime" in calibrated
    client.command("clear_calibration")
    assert client.command("get_controls")["controls"] == before
    assert camera._ae_exposure and camera._ae_gain and not camera._awb


def cancel_at_first_progress(client, name: str, args: dict):
    """Start a long command and cancel it as soon as its first progress event arrives (from the client's I/O
    thread, so the cancel does not race the command's end on a slow machine); returns the pending command."""
    state = {"sent": False}

    def on_progress(_progress) -> None:
        if not state["sent"]:
            state["sent"] = True
            client.send_command("cancel", {}, ttl=30)

    return client.send_command(name, args, ttl=120, on_progress=on_progress)
