"""The simulated libcamera under the real picamera2: picamera2 comes from site-packages, and what it reports
matches libcamera's Raspberry Pi pipeline (modes, formats, strides, metadata) and the simulator's physics."""

from __future__ import annotations

import os
import sysconfig

import numpy as np
import pytest


def test_picamera2_is_the_real_package_from_site_packages(simulated_pi):
    pi = simulated_pi(["imx219"], "vc4")
    site = sysconfig.get_paths()["purelib"]
    assert os.path.realpath(pi.picamera2.__file__).startswith(os.path.realpath(site))
    assert "tests/fakes" not in pi.picamera2.__file__
    assert pi.libcamera.__file__.endswith(os.path.join("tests", "fakes", "libcamera", "__init__.py"))
    from pi_agent.camera import picamera2_backend

    assert picamera2_backend._import_picamera2() is pi.picamera2


@pytest.mark.parametrize("platform", ["vc4", "pisp"])
def test_a_bare_picamera2_streams_frames_whose_raw_is_the_sensor_mosaic(simulated_pi, platform):
    pi = simulated_pi(["imx219"], platform)
    picam2 = pi.picamera2.Picamera2(0)
    assert [m["size"] for m in picam2.sensor_modes] == [(640, 480), (1640, 1232), (1920, 1080), (3280, 2464)]
    config = picam2.create_video_configuration(main={"size": (320, 240), "format": "RGB888"},
                                               raw={"format": "SBGGR10", "size": (640, 480)}, buffer_count=3,
                                               queue=False)
    picam2.configure(config)
    raw_cfg = picam2.camera_configuration()["raw"]
    assert raw_cfg["format"] == ("SBGGR10" if platform == "vc4" else "SBGGR16")
    assert raw_cfg["stride"] == 1280 and raw_cfg["framesize"] == 1280 * 480
    picam2.start()
    with picam2.captured_request() as request:
        metadata = request.get_metadata()
        raw = request.make_array("raw").view(np.uint16)
        truth = pi.pipeline(0).raw_of(metadata)  # the mosaic the sensor read for this frame
    picam2.close()
    shift = 0 if platform == "vc4" else 6
    np.testing.assert_array_equal(raw >> shift, truth)
    assert metadata["SensorBlackLevels"] == (4096,) * 4
    assert metadata["ScalerCrop"] == (1000, 752, 1280, 960)  # the 640x480 mode's crop of the sensor
