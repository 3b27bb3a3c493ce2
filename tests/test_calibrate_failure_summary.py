"""A failed headless --calibrate says so in the summary JSON (breaker F2): the error's code and sentence, the
steps completed before it, and that nothing of the failed run is in force or saved."""

from __future__ import annotations

import json

from host_viewer import cli
from pi_agent.camera.sim import SimulatedCamera


def test_a_failed_calibration_is_in_the_summary(start_agent, tmp_path, capsys):
    agent = start_agent(camera=SimulatedCamera(sensor="imx219", scene="chart", seed=5), state_dir=str(tmp_path / "st"))
    summary = tmp_path / "summary.json"
    rc = cli.main([f"127.0.0.1:{agent.port}", "--headless", "--calibrate", "all", "--summary-json", str(summary),
                   "--config-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1, err[-2000:]
    calibration = json.loads(summary.read_text())["calibration"]
    error = calibration["error"]
    assert error["code"] == "failed" and f"calibration failed: {error['code']}: {error['message']}" in err
    assert calibration["completed"] == {}  # the agent reports no step of a failed run as kept
    assert calibration["in_force"] is False and calibration["persisted"] is False
    # ... and that is the truth on the agent: nothing saved, not calibrated
    assert not (tmp_path / "st" / "calibration.json").exists()
    assert agent.calibration.summary()["in_force"] is False
