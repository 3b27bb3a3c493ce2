"""Calibration against the simulator's ground truth: exposure, white balance, lens shading tables and fit.

Cameras here are free-running (pacing=False) and calibration reads them directly (CameraFrameSource), so
the tests are fast; the agent/loopback path is in test_calibration_agent.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from pi_agent.camera.base import LensShadingTable
from pi_agent.camera.isp import upsample_table
from pi_agent.camera.sim import SimulatedCamera
from pi_agent.camera.tuning import MAX_GAIN, minimal_tuning, table_from_tuning, with_lens_shading
from pi_agent.calibration.exposure import ExposureSettings, calibrate_exposure, plan
from pi_agent.calibration.frames import CalibrationError, CameraFrameSource, SensorControls
from pi_agent.calibration.lens_shading import (calibrate_lens_shading, cell_means, fit_lens_shading,
                                               interpolation_weights)
from pi_agent.calibration.white_balance import calibrate_white_balance
from pi_agent.atomic import atomic_write_bytes
from pi_agent.state import StateStore, table_from_json, table_to_json

FULL_FIELD = {"imx219": (1640, 1232), "imx477": (2028, 1520)}


def started_camera(sensor="imx219", scene="white", raw_size=None, product=None, seed=7, **kwargs) -> SimulatedCamera:
    cam = SimulatedCamera(sensor, scene=scene, pacing=False, seed=seed, **kwargs)
    cam.configure((320, 240), 30.0, raw_size=raw_size or FULL_FIELD[sensor])
    if product is not None:
        exposure = min(product, 33_000.0)
        cam.set_controls({"AeEnable": False, "ExposureTime": int(exposure),
                          "AnalogueGain": min(max(product / exposure, 1.0), cam.sensor.gain_max)})
    cam.start()
    if product is not None:
        for _ in range(4):  # the requested exposure in force (the sensor's delays), as on a running stream
            cam.capture()
    return cam


def correct_product(sensor: str, scene: str, lux: float = 500.0) -> float:
    """Exposure × gain (µs) that puts the scene's brightest raw signal on the target, from ground truth:
    the simulator's electron rate of the brightest site, noise-free (so independent of our estimator)."""
    cam = started_camera(sensor, scene, lux=lux)
    target = cam.sensor.target_white_level - cam.sensor.black_level
    rate = float(np.percentile(cam._base_rate, 99.9))  # e⁻/µs; ground truth, no noise
    return target / (rate * cam.conversion_gain)


@pytest.mark.parametrize("sensor", ["imx219", "imx477"])
@pytest.mark.parametrize("factor", [0.01, 0.1, 3.0, 100.0])
def test_exposure_converges_from_far_off(sensor, factor):
    ideal = correct_product(sensor, "white")
    cam = started_camera(sensor, "white", product=ideal * factor)
    report = calibrate_exposure(CameraFrameSource(cam))
    assert report["converged"], report
    assert report["measurements"] <= 3 and report["frames"] <= 12
    assert abs(report["level"] - report["target"]) <= 0.05 * report["target"]
    assert report["target"] == cam.sensor.target_white_level - cam.sensor.black_level
    # ground truth: the exposure × gain in force is within the tolerance of the ideal one
    achieved = cam.exposure_in_force * cam.gain_in_force
    assert achieved == pytest.approx(ideal, rel=0.06)
    assert report["ExposureTime"] <= cam.control_ranges()["ExposureTime"][1]


def test_exposure_on_the_chart_prefers_exposure_then_gain():
    ideal = correct_product("imx219", "chart", lux=50.0)  # dim: needs more than one frame time
    assert ideal > 33_333 * 1.5
    cam = started_camera("imx219", "chart", product=ideal / 100, lux=50.0)
    report = calibrate_exposure(CameraFrameSource(cam))
    assert report["converged"] and report["measurements"] <= 3
    t_max = cam.control_ranges()["ExposureTime"][1]
    assert report["ExposureTime"] >= t_max - cam.mode.line_time_us - 1  # the whole frame time is used first
    assert report["AnalogueGain"] > 1.5


def test_exposure_reports_too_dark_at_the_limits():
    cam = started_camera("imx219", "white", product=1000.0, lux=0.02)
    report = calibrate_exposure(CameraFrameSource(cam))
    assert not report["converged"]
    assert report["reason"] == "too_dark_at_maximum"
    assert report["AnalogueGain"] == pytest.approx(cam.sensor.gain_max, rel=0.05)


def test_exposure_rejects_a_target_beyond_white():
    cam = started_camera("imx219", "white")
    with pytest.raises(CalibrationError):
        calibrate_exposure(CameraFrameSource(cam), ExposureSettings(target=1020))


def test_plan_is_quantisation_aware():
    cam = started_camera("imx219", "white")
    controls = SensorControls(cam)
    md = {"FrameDurationLimits": (33333, 33333)}
    exposure, gain = plan(50.0, controls, md)  # 2.6 lines: two whole lines and a gain code make up the rest
    assert controls.lines(exposure) == 2
    achieved = 2 * controls.line_time_us * cam.sensor.quantise_gain(gain + 1e-9)
    assert achieved == pytest.approx(50.0, rel=0.01)
    exposure, gain = plan(200_000.0, controls, md)  # beyond one frame: exposure capped, the rest is gain
    assert exposure <= 33333 and gain == pytest.approx(200_000 / exposure, rel=0.03)


@pytest.mark.parametrize("ct", [3200.0, 6500.0])
def test_white_balance_makes_the_processed_neutral_patch_neutral(ct):
    cam = started_camera("imx219", "white", raw_size=(1640, 1232), colour_temperature=ct)
    source = CameraFrameSource(cam)
    calibrate_exposure(source)
    report = calibrate_white_balance(source)
    true_r, true_b = cam.true_colour_gains()
    # the centre region sees a little colour shading, so the gains sit close to (not exactly on) the illuminant's
    assert report["colour_gains"][0] == pytest.approx(true_r, rel=0.02)
    assert report["colour_gains"][1] == pytest.approx(true_b, rel=0.02)
    assert report["neutral_error_pct"] <= 1.0
    # independent check through the ISP's linear output (no gamma, no uint8)
    frame = cam.capture()
    lin = cam._isp.process(frame.raw, tuple(report["colour_gains"]), linear=True)
    h, w = lin.shape[:2]
    b, g, r = (float(lin[int(h * .4):int(h * .6), int(w * .4):int(w * .6), i].mean()) for i in range(3))
    assert abs(r / g - 1) < 0.01 and abs(b / g - 1) < 0.01


def test_white_balance_accounts_for_the_lens_shading_in_force():
    cam = started_camera("imx219", "white", colour_temperature=3200.0)
    source = CameraFrameSource(cam)
    calibrate_exposure(source)
    calibrate_lens_shading(source)
    report = calibrate_white_balance(source, region="flat")
    assert report["lens_shading_in_force"] and report["neutral_error_pct"] <= 1.0


@pytest.mark.parametrize("sensor", ["imx219", "imx477"])
def test_lens_shading_meets_the_targets_at_50_percent_corner_shading(sensor):
    cam = started_camera(sensor, "white", corner_shading=0.5)
    source = CameraFrameSource(cam)
    calibrate_exposure(source)
    report, table, tuning = calibrate_lens_shading(source)
    assert report["before"]["residual_pct"] > 10  # there was real shading to correct
    assert report["residual_pct"] <= 0.5 and report["worst_cell_pct"] <= 2.0
    assert cam.lens_shading is table
    # ground truth: per channel, the ISP's per-pixel gain × the true shading, in 16x12 cell means, is flat
    h, w = cam.mode.size[1], cam.mode.size[0]
    truth = cam.true_shading()
    for gains, name in zip(table.channel_gains(), "RGB"):
        corrected = upsample_table(gains, (h, w)) * truth[name]
        cells = cell_means(corrected[..., None])[..., 0]
        rel = cells / cells.mean() - 1
        assert rel.std() < 0.005 and np.abs(rel).max() < 0.02, name
    # the exported tuning holds the same table
    assert report["tuning_base"] == "minimal"
    back = table_from_tuning(json.loads(json.dumps(tuning)))
    np.testing.assert_allclose(back.luminance, table.luminance, atol=1e-3)


@pytest.mark.parametrize("grid,target", [((16, 12), "bcm2835"), ((32, 32), "pisp")])
@pytest.mark.parametrize("shading", [0.5, 0.3])
def test_tables_have_the_right_size_and_stay_in_the_gain_limit(grid, target, shading):
    cam = started_camera("imx219", "white", raw_size=(640, 480), corner_shading=shading)
    mean = np.mean([cam.capture().raw.astype(np.float32) for _ in range(2)], axis=0)
    table = fit_lens_shading(mean, cam.sensor.bayer_order, 64, grid, MAX_GAIN[target])
    for values in (table.luminance, table.cr, table.cb):
        assert values.shape == (grid[1], grid[0]) and np.all(np.isfinite(values))
        assert values.min() >= 1.0
    r, g, b = table.channel_gains()
    assert max(r.max(), g.max(), b.max()) < MAX_GAIN[target]
    section = with_lens_shading(minimal_tuning(target), table)["algorithms"][0]["rpi.alsc"]
    assert len(section["luminance_lut"]) == grid[0] * grid[1]


def test_the_fit_beats_cell_means_where_the_isp_interpolates():
    """A synthetic shading: the fitted table, interpolated as the ISP does, flattens better than 1/cell-mean."""
    h, w = 480, 640
    yy, xx = np.mgrid[0:h, 0:w]
    r2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
    shading = 1.0 / (1.0 + 0.2 * r2) ** 2
    mosaic = (shading * 600 + 64).astype(np.float32)
    table = fit_lens_shading(mosaic, "BGGR", 64, (16, 12), 15.999)
    fitted = upsample_table(table.luminance, (h, w)) * shading
    cells = shading.reshape(12, h // 12, 16, w // 16).mean(axis=(1, 3))
    naive = upsample_table(cells.max() / cells, (h, w)) * shading

    def worst_cell(image):
        c = cell_means(image[..., None])[..., 0]
        return float(np.abs(c / c.mean() - 1).max())

    assert fitted.std() / fitted.mean() < naive.std() / naive.mean()
    assert worst_cell(fitted) < 0.5 * worst_cell(naive)


def test_interpolation_weights_reproduce_upsample_table():
    rng = np.random.default_rng(1)
    t = rng.uniform(1, 3, (12, 16)).astype(np.float32)
    wy, wx = interpolation_weights(12, 100), interpolation_weights(16, 130)
    np.testing.assert_allclose(wy @ t @ wx.T, upsample_table(t, (100, 130)), rtol=1e-5)


def test_lens_shading_refuses_a_dark_or_clipped_target():
    dark = started_camera("imx219", "white", raw_size=(640, 480), product=5.0)
    with pytest.raises(CalibrationError, match="dark"):
        calibrate_lens_shading(CameraFrameSource(dark), frames=2)
    clipped = started_camera("imx219", "white", raw_size=(640, 480), product=1e6)
    with pytest.raises(CalibrationError, match="clipped"):
        calibrate_lens_shading(CameraFrameSource(clipped), frames=2)


def test_state_store_round_trip_and_atomic_write(tmp_path):
    store = StateStore(tmp_path / "state")
    assert store.load() is None
    table = LensShadingTable.flat((16, 12))
    store.save({"sensor": "imx219", "lens_shading_table": table_to_json(table)})
    loaded = store.load()
    assert table_from_json(loaded["lens_shading_table"]).grid == (16, 12)
    # no temporary files left: the names, and the one generation they point at (pi_agent/state.py)
    assert sorted(p.name for p in store.directory.iterdir()) == ["calibration.json", "current", "generations"]
    store.path.write_text("{not json")
    assert store.load() is None  # a corrupt file is ignored, not fatal
    atomic_write_bytes(store.path, b"{}")
    assert store.clear() and not store.path.exists()
