"""The built-in simulator and the Pi path (real picamera2 on the simulated libcamera) agree on what a lens shading
table does: it covers the full pixel array and a mode uses the part under its crop (libcamera's rpi.alsc,
alsc.cpp `resampleCalTable`). Same scene, same table, same exposure: the corrected raw (black subtracted, lens
shading applied) has the same shape on both, in a cropped and in a full-field mode."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pi_agent.camera.base import LensShadingTable
from pi_agent.camera.isp import upsample_table
from pi_agent.camera.sim import SimulatedCamera
from tests.conftest import wait_until
from tests.fakes.libcamera._machine import CameraModule

CONTROLS = {"ExposureTime": 3000, "AnalogueGain": 1.0, "ColourGains": (1.0, 1.0), "AeEnable": False,
            "AwbEnable": False}


def a_table(grid) -> LensShadingTable:
    """A smooth, off-centre, channel-dependent table (what a calibration might produce)."""
    cols, rows = grid
    y, x = np.mgrid[0:rows, 0:cols]
    r2 = ((x + 0.5) / cols - 0.45) ** 2 + ((y + 0.5) / rows - 0.55) ** 2
    return LensShadingTable(grid=grid, luminance=1.0 + 3.0 * r2, cr=1.3 + 0.8 * r2, cb=1.1 + 0.5 * r2)


def green_cells(corrected: np.ndarray, shape=(9, 16)) -> np.ndarray:
    """Cell means of the green sites (BGGR: (0,1), (1,0)) of a corrected mosaic, normalised to their mean."""
    g = (corrected[0::2, 1::2].astype(np.float64) + corrected[1::2, 0::2]) / 2
    cells = cv2.resize(g, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    return cells / cells.mean()


# VC4 spreads the 16x12 table over a corner-sampled grid of whole 16..256-pixel cells that may overhang the
# image (vc4.cpp applyLS: 1640 px → 52 cells of 32 = 1664 px), stretching it by up to ~1.5 %; PiSP's 33x33
# vertices span the image exactly. The simulator models neither grid, hence the looser VC4 tolerance.
@pytest.mark.parametrize("platform, grid, tolerance", [("pisp", (32, 32), 0.01), ("vc4", (16, 12), 0.025)])
@pytest.mark.parametrize("raw_size", [(1920, 1080), (1640, 1232)], ids=["cropped", "full-field"])
def test_the_simulator_and_the_pi_give_the_same_corrected_image_for_the_same_table(picamera2_camera, raw_size,
                                                                                    platform, grid, tolerance):
    table = a_table(grid)
    sim = SimulatedCamera(sensor="imx219", scene="white", seed=9, pacing=False)
    sim.configure((640, 360), 30.0, raw_size=raw_size)
    sim.apply_lens_shading(table)
    sim.set_controls(CONTROLS)
    sim.start()
    frames = [sim.capture() for _ in range(6)]
    sim_corrected = sim._isp.corrected_mosaic(frames[-1].raw, (1.0, 1.0))

    cam, pi = picamera2_camera(CameraModule("imx219", scene="white", seed=9), platform, size=(640, 360),
                               raw_size=raw_size)
    cam.set_controls(CONTROLS)
    cam.apply_lens_shading(table)
    frame = wait_until(lambda: (f := cam.capture(timeout=30)).metadata["ExposureTime"] == frames[-1].metadata["ExposureTime"]
                       and f, timeout=60)
    pipe = pi.pipeline(0)
    pi_corrected = pipe.isp.corrected(frame.raw, (1.0, 1.0))

    sim_cells, pi_cells = green_cells(sim_corrected), green_cells(pi_corrected)
    assert np.abs(sim_cells / pi_cells - 1).max() < tolerance, np.abs(sim_cells / pi_cells - 1).max()
    # ... and the discrimination: stretching the table over the mode (the old simulator) would differ in the
    # cropped mode, by far more than the tolerance above
    h, w = frame.raw.shape
    stretched = frame.raw.astype(np.float64) - 64
    stretched *= upsample_table(table.luminance, (h, w))
    diff = np.abs(green_cells(stretched) / pi_cells - 1).max()
    if raw_size == (1920, 1080):
        assert diff > 0.05, diff
    else:
        assert diff < tolerance, diff
