"""Issue 13.3: bad targets are refused with a sentence saying what is wrong, and nothing is saved.

Kinds: non-uniform (the chart), too dark, clipped, too coloured; the brightness check covers every Bayer
site (a warm 2000 K white on BGGR is NOT too dark); a table that needs more gain than the ISP holds fails
with the residual it leaves; no saved value exceeds the platform limit after rounding.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from host_viewer.client import CommandFailed
from pi_agent.agent import Agent
from pi_agent.calibration.exposure import calibrate_exposure
from pi_agent.calibration.frames import CalibrationError, CameraFrameSource
from pi_agent.calibration.lens_shading import calibrate_lens_shading, tables_from_gains
from pi_agent.calibration.white_balance import calibrate_white_balance
from pi_agent.camera.base import LensShadingTable
from pi_agent.camera.sim import SimulatedCamera
from pi_agent.camera.tuning import MAX_GAIN, minimal_tuning, with_lens_shading
from pi_agent.state import StateStore, table_from_json, table_to_json

from .conftest import wait_until


def started(scene="white", raw_size=(1640, 1232), **kwargs) -> SimulatedCamera:
    cam = SimulatedCamera("imx219", scene=scene, pacing=False, seed=kwargs.pop("seed", 4), **kwargs)
    cam.configure((320, 240), 30.0, raw_size=raw_size)
    cam.start()
    return cam


def snapshot_dir(path) -> dict[str, object]:
    """Every entry under `path`: file bytes, link targets, directory names (the state store keeps
    generations behind links)."""
    out: dict[str, object] = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, path)
            if os.path.islink(full):
                out[rel] = ("link", os.readlink(full))
            elif os.path.isfile(full):
                out[rel] = open(full, "rb").read()
            else:
                out[rel] = "dir"
    return out


def previous_table() -> LensShadingTable:
    """A plausible earlier calibration: a smooth radial table (not flat, so a change would show)."""
    yy, xx = np.mgrid[0:12, 0:16]
    r2 = ((xx - 7.5) / 8) ** 2 + ((yy - 5.5) / 6) ** 2
    lum = np.round(1 + 0.8 * r2, 3)
    return LensShadingTable((16, 12), lum, np.round(1 + 0.1 * r2, 3), np.round(1 + 0.05 * r2, 3))


def test_the_chart_is_refused_and_the_state_directory_is_unchanged(tmp_path, connect):
    state_dir = tmp_path / "state"
    store = StateStore(state_dir)
    table = previous_table()
    geometry = {"coordinates": "full pixel array", "full_array": [3280, 2464], "measured_size": [1640, 1232],
                "measured_crop": [0, 0, 3280, 2464]}
    store.save({"sensor": "imx219", "controls": {}, "lens_shading_table": {**table_to_json(table), "geometry": geometry},
                "results": {"lens_shading": {"grid": [16, 12], "residual_pct": 0.1, "worst_cell_pct": 0.3}}},
               with_lens_shading(minimal_tuning(), table))
    before = snapshot_dir(state_dir)
    camera = SimulatedCamera("imx219", scene="chart", seed=3)
    agent = Agent(camera, "127.0.0.1:0", size=(320, 240), fps=30, state_dir=str(state_dir))
    agent.start()
    try:
        client = connect(agent, full_stats=True)  # AeState is in the full metadata only
        np.testing.assert_allclose(camera.lens_shading.luminance, table.luminance)
        wait_until(lambda: client.latest() and client.latest().metadata.get("AeState") == 2, timeout=10,
                   message="auto exposure settled on the chart")
        gains_before = camera.controls().get("ColourGains")
        for what, words in (("lens_shading", "not uniform"), ("white_balance", "not uniform")):
            with pytest.raises(CommandFailed) as failed:
                client.command("calibrate", {"what": what}, timeout=60)
            assert failed.value.code == "failed" and words in str(failed.value), (what, str(failed.value))
            assert snapshot_dir(state_dir) == before, what
        # the previous calibration is still the one in force
        np.testing.assert_allclose(camera.lens_shading.luminance, table.luminance)
        assert camera.controls().get("ColourGains") == gains_before
        assert camera.controls().get("AwbEnable", True) is True
        status = client.command("status")["calibration"]
        assert status["lens_shading"]["residual_pct"] == 0.1 and "stale" not in status["lens_shading"]
    finally:
        agent.stop()
    assert snapshot_dir(state_dir) == before


def test_a_warm_white_on_bggr_is_bright_enough():
    """At 2000 K the blue sites (site (0,0) of BGGR) get a sixth of green: still a good target once the
    exposure converged, and the table flattens every channel."""
    cam = started(colour_temperature=2000.0)
    source = CameraFrameSource(cam)
    assert calibrate_exposure(source)["converged"]
    report, table, _ = calibrate_lens_shading(source, frames=4)
    assert report["residual_pct"] <= 0.5
    assert cam.lens_shading is table


def test_a_dark_target_names_the_dark_channel():
    cam = started(colour_temperature=2000.0)
    # well exposed for red and green, but the blue sites sit near black
    cam.set_controls({"AeEnable": False, "ExposureTime": 800, "AnalogueGain": 1.0})
    for _ in range(4):
        cam.capture()
    with pytest.raises(CalibrationError, match="too dark in B"):
        calibrate_lens_shading(CameraFrameSource(cam), frames=2)
    assert cam.lens_shading is None


def test_white_balance_refuses_a_coloured_target():
    cam = started()
    # a red paper: the simulator's red sites get 4x the light of a white one, the others half (ground truth
    # changed on purpose; the simulator has no coloured uniform scene)
    sites = cam._site_map == 0
    cam._base_rate[sites] *= 4.0
    cam._base_rate[~sites] *= 0.5
    cam._rate[:] = cam._base_rate
    cam._e_key = None
    source = CameraFrameSource(cam)
    assert calibrate_exposure(source)["converged"]
    requested = cam.controls()
    with pytest.raises(CalibrationError, match="too coloured"):
        calibrate_white_balance(source)
    assert cam.controls() == requested


def test_white_balance_refuses_a_clipped_region():
    cam = started()
    cam.set_controls({"AeEnable": False, "ExposureTime": 30000, "AnalogueGain": 4.0})
    for _ in range(4):
        cam.capture()
    with pytest.raises(CalibrationError, match="clipped"):
        calibrate_white_balance(CameraFrameSource(cam))


def test_a_table_the_isp_cannot_hold_fails_with_its_residual_and_changes_nothing():
    cam = started(corner_shading=0.08)
    source = CameraFrameSource(cam)
    calibrate_exposure(source)
    calibrate_white_balance(source)
    requested = cam.controls()
    with pytest.raises(CalibrationError) as failed:
        calibrate_lens_shading(source, frames=2)
    text = str(failed.value)
    assert "too strong" in text and "residual" in text and "15.999" in text
    residual = float(text.split("leaves ")[1].split(" %")[0])
    assert residual > 1.0  # the residual it would leave, measured on the processed image
    assert cam.lens_shading is None and cam.controls() == requested


@pytest.mark.parametrize("target", ["bcm2835", "pisp"])
def test_no_saved_value_exceeds_the_limit_after_rounding(target):
    limit = MAX_GAIN[target]
    grid = (16, 12) if target == "bcm2835" else (32, 32)
    shape = (grid[1], grid[0])
    t_g = np.ones(shape)
    t_g[0, 0] = limit + 0.0004  # rounds to the limit + 0.001 when rounded to nearest
    t_r = t_g.copy()
    t_r[-1, -1] = 1.0004
    t_b = t_g.copy()
    table, clamped = tables_from_gains(t_r, t_g, t_b, grid, limit)
    assert clamped is None  # within rounding: not a clamp
    for values in (table.luminance, table.luminance * table.cr, table.luminance * table.cb):
        assert values.max() <= limit
    section = with_lens_shading(minimal_tuning(target), table)["algorithms"][0]["rpi.alsc"]
    assert max(section["luminance_lut"]) <= limit
    saved = json.loads(json.dumps(table_to_json(table)))
    assert np.max(saved["luminance"]) <= limit
    back = table_from_json(saved)
    assert np.max(back.luminance * back.cr) <= limit
    # beyond rounding it is a clamp, reported
    t_g[0, 0] = limit * 1.2
    _, clamped = tables_from_gains(t_g, t_g, t_g, grid, limit)
    assert clamped and clamped["cells"] == 1 and clamped["max_gain"] == pytest.approx(limit * 1.2, abs=1e-3)
