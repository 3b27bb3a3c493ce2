"""Calibration through the agent over loopback: progress, busy, cancel, persistence, the headless CLI."""

from __future__ import annotations

import json

import numpy as np
import simplejpeg
import pytest

from host_viewer import cli as viewer_cli
from host_viewer.client import CommandFailed
from host_viewer.report import report_image
from pi_agent.agent import Agent
from pi_agent.camera.sim import SimulatedCamera

from .conftest import wait_until


def white_camera(**kwargs) -> SimulatedCamera:
    return SimulatedCamera(sensor=kwargs.pop("sensor", "imx219"), scene="white", seed=2, **kwargs)


def test_calibrate_all_over_loopback_with_progress(start_agent, connect):
    agent = start_agent(camera=white_camera(colour_temperature=3200.0))
    client = connect(agent)
    assert client.welcome.calibration["in_force"] is False
    assert "calibrate" in client.welcome.capabilities and "clear_calibration" in client.welcome.capabilities
    progress = []
    value = client.command("calibrate", {"what": "all"}, timeout=120, on_progress=progress.append)
    assert {p.step for p in progress} >= {"exposure", "white_balance", "lens_shading"}
    fractions = [p.fraction for p in progress]
    assert fractions == sorted(fractions) and fractions[-1] > 0.9
    e, w, s = value["exposure"], value["white_balance"], value["lens_shading"]
    assert e["converged"] and abs(e["level"] - e["target"]) <= 0.05 * e["target"]
    assert len(e["passes"]) == 2 and e["passes"][0]["measurements"] <= 3
    assert e["measurements"] == sum(p["measurements"] for p in e["passes"])
    assert w["neutral_error_pct"] <= 1.0
    assert s["residual_pct"] <= 0.5 and s["worst_cell_pct"] <= 2.0 and s["grid"] == [16, 12]
    # the agent put it in force: table in the ISP, manual controls
    assert agent.camera.lens_shading is not None
    controls = agent.camera.controls()
    assert controls["AeEnable"] is False and controls["AwbEnable"] is False
    assert tuple(controls["ColourGains"]) == pytest.approx(tuple(w["colour_gains"]))
    status = client.command("status")
    assert status["calibration"]["in_force"] and status["calibration"]["lens_shading"]["grid"] == [16, 12]
    # the "after" thumbnail shows the white target with everything in force: neutral (3200 K light) and flat
    after = simplejpeg.decode_jpeg(s["after_jpeg"], colorspace="BGR").astype(np.float64)
    b, g, r = (after[..., i].mean() for i in range(3))
    assert s["after_picture"] == "after all steps" and abs(b / g - 1) < 0.03 and abs(r / g - 1) < 0.03
    # the report picture can be drawn from what came back
    picture = report_image(s)
    assert picture.ndim == 3 and picture.shape[0] > 200


def test_second_calibration_is_busy_and_cancel_restores_controls(start_agent, connect):
    agent = start_agent(camera=white_camera())
    client = connect(agent)
    manual = {"ExposureTime": 3000, "AnalogueGain": 2.0, "ColourGains": [1.5, 1.7]}
    client.command("set_controls", {"controls": manual})
    wait_until(lambda: client.latest() and client.latest().metadata.get("ExposureTime", 0) in range(2980, 3020),
               timeout=5, message="manual exposure in force")
    before = agent.camera.controls()
    seen = []
    pending = client.send_command("calibrate", {"what": "all"}, ttl=120, on_progress=seen.append)
    wait_until(lambda: seen, timeout=10, message="first progress event")
    with pytest.raises(CommandFailed) as busy:
        client.command("calibrate", {"what": "exposure"})
    assert busy.value.code == "busy"
    with pytest.raises(CommandFailed) as busy_controls:
        client.command("set_controls", {"controls": {"ExposureTime": 1000}})
    assert busy_controls.value.code == "busy"
    assert client.command("cancel")["cancelled"] == [pending.id]
    with pytest.raises(CommandFailed) as cancelled:
        pending.future.result(timeout=30)
    assert cancelled.value.code == "cancelled"
    after = agent.camera.controls()
    for name in ("ExposureTime", "AnalogueGain", "AeEnable", "AwbEnable"):
        assert after[name] == before[name], name
    assert tuple(after["ColourGains"]) == tuple(before["ColourGains"])
    assert agent.camera.lens_shading is None or np.all(agent.camera.lens_shading.luminance == 1.0)
    wait_until(lambda: client.latest().metadata.get("ExposureTime", 0) in range(2980, 3020)
               and client.latest().metadata.get("AnalogueGain") == pytest.approx(2.0, rel=0.01),
               timeout=5, message="controls restored in the metadata")
    # the camera is free again
    client.command("set_controls", {"controls": {"ExposureTime": 4000}})


def test_bad_calibrate_arguments_are_refused(start_agent, connect):
    client = connect(start_agent(camera=white_camera()))
    for args, code in (({"what": "everything"}, "bad_argument"), ({"what": "exposure", "target": "high"}, "bad_argument"),
                       ({"what": "exposure", "target": 5000}, "out_of_range"),
                       ({"what": "exposure", "tolerance": 0.9}, "out_of_range")):
        with pytest.raises(CommandFailed) as err:
            client.command("calibrate", args)
        assert err.value.code == code, args


def test_calibration_persists_across_restart_and_clears(tmp_path, connect):
    state_dir = tmp_path / "state"
    first = Agent(white_camera(), "127.0.0.1:0", size=(320, 240), fps=30, state_dir=str(state_dir))
    first.start()
    try:
        client = connect(first)
        value = client.command("calibrate", {"what": "all"}, timeout=120)
        table = first.camera.lens_shading
        controls = first.camera.controls()
    finally:
        first.stop()
    saved = json.loads((state_dir / "calibration.json").read_text())
    assert saved["results"]["lens_shading"]["grid"] == [16, 12]
    tuning = json.loads((state_dir / "tuning.json").read_text())
    assert len(tuning["algorithms"][0]["rpi.alsc"]["luminance_lut"]) == 192
    assert value["lens_shading"]["tuning_file"] == str(state_dir / "tuning.json")

    camera = white_camera()
    second = Agent(camera, "127.0.0.1:0", size=(320, 240), fps=30, state_dir=str(state_dir))
    second.start()
    try:
        np.testing.assert_allclose(camera.lens_shading.luminance, table.luminance, atol=1e-3)
        np.testing.assert_allclose(camera.lens_shading.cr, table.cr, atol=1e-3)
        for name in ("ExposureTime", "AeEnable", "AwbEnable"):
            assert camera.controls()[name] == controls[name]
        client = connect(second)
        assert client.welcome.calibration["in_force"] is True
        assert client.welcome.calibration["exposure"]["ExposureTime"] == controls["ExposureTime"]
        wait_until(lambda: client.latest() and client.latest().metadata["ExposureTime"] == controls["ExposureTime"],
                   timeout=5, message="saved exposure in force")
        cleared = client.command("clear_calibration")
        assert cleared["state_file_removed"] is True
        assert not (state_dir / "calibration.json").exists()
        assert camera.lens_shading is None  # the simulator's own (no correction), not a flat table
        assert camera.controls()["AeEnable"] is True and camera.controls()["AwbEnable"] is True
        assert client.command("status")["calibration"]["in_force"] is False
    finally:
        second.stop()


def test_headless_cli_calibrates_and_summarises(start_agent, capsys, tmp_path):
    agent = start_agent(camera=white_camera())
    code = viewer_cli.main([f"127.0.0.1:{agent.port}", "--headless", "--calibrate", "all",
                            "--summary-json", "-", "--report", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    cal = summary["calibration"]
    assert set(cal["exposure"]) >= {"level", "target", "measurements", "frames", "seconds"}
    passes = cal["exposure"]["passes"]  # "all" runs exposure twice: both passes, and totals over them
    assert len(passes) == 2 and cal["exposure"]["measurements"] == sum(p["measurements"] for p in passes)
    assert cal["exposure"]["frames"] == sum(p["frames"] for p in passes)
    assert cal["white_balance"]["neutral_error_pct"] <= 1.0 and len(cal["white_balance"]["colour_gains"]) == 2
    assert cal["lens_shading"]["grid"] == [16, 12] and cal["lens_shading"]["residual_pct"] <= 0.5
    assert "calibrate: exposure" in captured.err and "lens_shading" in captured.err
    assert summary["frames"] > 0  # the stream went on while it calibrated
    assert list(tmp_path.glob("calibration-report-*.png"))


def test_headless_cli_exits_non_zero_when_calibration_fails(start_agent, capsys):
    agent = start_agent(camera=SimulatedCamera(scene="dark", seed=2))
    code = viewer_cli.main([f"127.0.0.1:{agent.port}", "--headless", "--calibrate", "lens-shading",
                            "--summary-json", "-"])
    captured = capsys.readouterr()
    assert code != 0
    assert "calibration failed" in captured.err


def test_window_keys_start_calibration_and_show_progress(start_agent, connect, tmp_path):
    from host_viewer.app import ViewerApp
    from host_viewer.calibration_ui import CalibrationKeys

    client = connect(start_agent(camera=white_camera()))
    app = ViewerApp(client)
    keys = CalibrationKeys(report_dir=str(tmp_path))
    keys.install(app)
    assert {chr(k) for k in app.bindings} >= set("ewlacpq")
    assert any("calibrate lens shading" in line for line in app.help_lines())
    app.handle_key(ord("l"))
    assert keys.running == "lens_shading"
    progress = wait_until(lambda: app.tile.progress if app.tile.progress and app.tile.progress.step != "sent" else None,
                          timeout=30, message="a progress step on the progress overlay")
    assert progress.name == "calibrate" and 0.0 <= progress.fraction <= 1.0
    wait_until(lambda: keys.running is None, timeout=60, message="lens shading finished")
    assert keys.last_result["lens_shading"]["residual_pct"] <= 0.5, app.status_message
    assert "calibrated" in app.status_message
    app.handle_key(ord("p"))
    assert list(tmp_path.glob("calibration-report-*.png")), app.status_message


def test_the_cancel_key_cancels_this_viewers_calibration_only(start_agent, connect):
    """Breaker B12's kind: `c` sent `cancel` without an id, which stops every running command on the agent,
    another viewer's too. It now cancels by id what this viewer started: another viewer's calibration,
    running when `c` is pressed, ends with its result."""
    from host_viewer.app import ViewerApp
    from host_viewer.calibration_ui import CalibrationKeys

    agent = start_agent(camera=white_camera(), fps=10.0)  # paced: the exposure run takes many frame periods
    mine, other = connect(agent), connect(agent)
    app = ViewerApp(mine)
    keys = CalibrationKeys()
    keys.install(app)
    theirs = other.send_command("calibrate", {"what": "exposure"}, ttl=120)
    wait_until(lambda: other.status().busy == "calibrate", timeout=30, message="the other viewer's calibration")
    keys.running, keys._tile = "exposure", app.tile  # as if this viewer had one running too
    app.handle_key(ord("c"))
    mine.command("status")  # one round trip on this connection after whatever `c` sent: the agent has read it
    assert "exposure" in theirs.future.result(timeout=60)  # not cancelled
