"""Issue 13.2: a lens shading table is a property of the whole pixel array.

Calibrated while streaming in IMX219's cropped 1920x1080 mode, on the real picamera2 over the simulated
libcamera, the table must be right in every mode when libcamera applies it (resampled to each mode's crop,
tests/fakes/libcamera/_isp.py, from alsc.cpp). The judge is ground truth computed here, sharing nothing with
the fit: the simulated sensor's true shading of the mode times the per-pixel gains the simulated ISP put in
force, in 16x12 cell means per channel, computed with plain numpy below.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from pi_agent.calibration.exposure import calibrate_exposure
from pi_agent.calibration.lens_shading import calibrate_lens_shading, fit_lens_shading
from pi_agent.calibration.service import table_geometry_problem
from pi_agent.camera.sensors import get_sensor
from pi_agent.camera.tuning import MAX_GAIN, table_from_tuning
from tests.conftest import frame_source


def white_module(**kwargs):
    """A libcamera._machine.CameraModule with a uniform white target in front of an IMX219."""
    from tests.fakes.simulated_pi import FAKES_DIR

    added = FAKES_DIR not in sys.path
    if added:
        sys.path.append(FAKES_DIR)
    try:
        from libcamera._machine import CameraModule
    finally:
        if added:
            sys.path.remove(FAKES_DIR)
    return CameraModule(sensor="imx219", scene="white", **kwargs)


def residual_in_force(pi) -> dict[str, float]:
    """Per channel: std/mean (%) of 16x12 cell means of (true shading × ISP gain in force) in the current mode."""
    pipe = pi.pipeline(0)
    gains = pipe.lens_shading_in_force  # (3, h, w) R, G, B as the simulated ISP applies them
    truth = pipe.physics.true_shading(pipe.mode)  # ground truth of the sensor model, this mode's pixels
    h, w = gains.shape[1:]
    out = {}
    for i, name in enumerate("RGB"):
        corrected = gains[i].astype(np.float64) * truth[name]
        ch, cw = h // 12, w // 16
        cells = corrected[: ch * 12, : cw * 16].reshape(12, ch, 16, cw).mean(axis=(1, 3))
        out[name] = 100.0 * float(cells.std() / cells.mean())
    return out


def switch_mode(cam, raw_size) -> None:
    cam.stop()
    cam.configure((320, 240), 30.0, raw_size)
    cam.start()
    cam.capture()


def test_a_table_calibrated_in_the_cropped_1080p_mode_is_right_in_every_mode(picamera2_camera):
    cam, pi = picamera2_camera(white_module(seed=3), size=(320, 180), raw_size=(1920, 1080))
    assert cam.configuration["raw"]["size"] == (1920, 1080)
    source = frame_source(cam)
    assert calibrate_exposure(source)["converged"]
    report, table, tuning = calibrate_lens_shading(source)
    # it said where it measured, and the table records that geometry
    assert report["measured_in"]["switched"] and "1920x1080" in report["measured_in"]["why"]
    assert report["geometry"]["measured_crop"] == [0, 0, 3280, 2464]
    assert table_geometry_problem(report["geometry"], get_sensor("imx219")) is None
    assert report["residual_pct"] <= 0.5  # measured on the stills, the tuning's gamma undone
    # the exported tuning holds this very table (rpicam-apps resamples it the same way)
    np.testing.assert_allclose(table_from_tuning(tuning).luminance, table.luminance)
    # right when libcamera applies it: back in the streaming mode, and in the full-field modes
    assert cam.configuration["raw"]["size"] == (1920, 1080)
    for raw_size in ((1920, 1080), (1640, 1232), (640, 480)):
        if raw_size != (1920, 1080):
            switch_mode(cam, raw_size)
        residual = residual_in_force(pi)
        assert max(residual.values()) <= 1.0, (raw_size, residual)


def test_a_table_fitted_on_the_crop_would_be_wrong_in_the_full_field(picamera2_camera):
    """The kind of fault the full-field measurement removes: the crop's raw fitted as if it were the array."""
    cam, pi = picamera2_camera(white_module(seed=4), size=(320, 180), raw_size=(1920, 1080))
    source = frame_source(cam)
    calibrate_exposure(source)
    frame = cam.capture()
    mean = np.mean([cam.capture().raw.astype(np.float32) for _ in range(2)], axis=0)
    wrong = fit_lens_shading(mean, frame.bayer_order, frame.black_level, (16, 12), MAX_GAIN["bcm2835"])
    cam.apply_lens_shading(wrong)
    switch_mode(cam, (1640, 1232))
    assert max(residual_in_force(pi).values()) > 5.0


@pytest.mark.parametrize("geometry,ok", [
    ({"coordinates": "full pixel array", "full_array": [3280, 2464], "measured_crop": [0, 0, 3280, 2464]}, True),
    ({"coordinates": "full pixel array", "full_array": [3280, 2464], "measured_crop": [680, 692, 1920, 1080]}, False),
    ({"coordinates": "full pixel array", "full_array": [4056, 3040], "measured_crop": [0, 0, 4056, 3040]}, False),
    (None, False),
])
def test_a_saved_table_is_reapplied_only_when_its_geometry_is_the_whole_array(geometry, ok):
    problem = table_geometry_problem(geometry, get_sensor("imx219"))
    assert (problem is None) == ok, problem


def test_clear_on_a_pi_brings_back_the_stock_adaptive_table(picamera2_camera):
    """Issue 13.4: clearing reopens the camera with its stock tuning (adaptive rpi.alsc), not a flat table."""
    from pi_agent.camera.base import LensShadingTable

    cam, pi = picamera2_camera(white_module(seed=5), size=(320, 240), raw_size=(1640, 1232))
    stock = pi.picamera2.Picamera2.find_tuning_algo(pi.picamera2.Picamera2.load_tuning_file("imx219.json"), "rpi.alsc")
    assert stock.get("n_iter", 1) != 0  # the stock table adapts
    cam.apply_lens_shading(LensShadingTable.flat((16, 12)))
    assert pi.picamera2.Picamera2.find_tuning_algo(pi.pipeline(0).tuning, "rpi.alsc")["n_iter"] == 0
    cam.clear_lens_shading()
    cam.capture()
    assert pi.picamera2.Picamera2.find_tuning_algo(pi.pipeline(0).tuning, "rpi.alsc") == stock
    assert cam.lens_shading is None and cam.tuning() == pi.picamera2.Picamera2.load_tuning_file("imx219.json")
