"""A control value that would silently change the camera's mode is refused, on the wire and on disk (breaker F7).

libcamera reads a manual value of 0 as "automatic" (ColourGains [0, 0] puts AWB back on): the agent used to
take it while its requested set still said AwbEnable false."""

from __future__ import annotations

import json

import pytest

from host_viewer.client import CommandFailed
from pi_agent.camera.sim import SimulatedCamera
from pi_agent.state import StateStore

from .conftest import wait_until


@pytest.mark.parametrize("controls, says", [
    ({"ColourGains": [0.0, 0.0]}, "send AwbEnable true"),
    ({"ColourGains": [0.0, 1.5]}, "ColourGains 0 must be above 0"),
    ({"ExposureTime": 0}, "send AeEnable true"),
    ({"ExposureTime": 1e308}, "longer than any camera exposes"),
])
def test_a_value_that_means_automatic_is_refused_and_the_mode_kept(start_agent, connect, controls, says):
    agent = start_agent(camera=SimulatedCamera(sensor="imx219", scene="white", seed=4))
    client = connect(agent)
    client.set_controls(AwbEnable=False, ColourGains=(1.4, 1.9))
    with pytest.raises(CommandFailed) as refused:
        client.set_controls(**controls)
    assert refused.value.code == "out_of_range" and says in refused.value.message
    requested = client.get_controls().requested
    assert requested["AwbEnable"] is False
    # ... and the frames agree: white balance is still manual, at the gains set
    def manual_gains() -> bool:
        metadata = client.wait_frame(timeout=10).metadata
        return metadata.get("AwbEnable") is False and metadata["ColourGains"] == pytest.approx([1.4, 1.9], abs=0.01)

    wait_until(manual_gains, timeout=20, message="frames with AWB off at the gains set")
    assert manual_gains()  # and it stays so (not switched back to automatic by the refused request)


@pytest.mark.parametrize("controls", [
    {"ColourGains": [0, 0], "AwbEnable": False}, {"ExposureTime": -5}, {"ExposureTime": 1e308},
])
def test_a_saved_calibration_with_such_a_value_is_moved_aside(tmp_path, controls):
    (tmp_path / "calibration.json").write_text(json.dumps({"format": 1, "sensor": "imx219", "controls": controls}))
    assert StateStore(tmp_path).load() is None
    assert len(list(tmp_path.glob("calibration.json.bad-*"))) == 1
