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


@pytest.mark.parametrize("platform, sensor, asked, mode, configured, stride", [
    ("vc4", "imx219", "SBGGR10_CSI2P", (3280, 2464), "SBGGR10_CSI2P", 4128),  # 4 px in 5 bytes, 32-byte rows
    ("vc4", "imx477", "SBGGR12", (2028, 1520), "SBGGR12", 4064),  # uint16, 32-byte rows
    ("vc4", "imx477", "SBGGR12", (1332, 990), "SBGGR10", 2688),  # the raw takes the mode's depth
    ("pisp", "imx477", "SBGGR12", (2028, 1520), "SBGGR16", 4096),  # always 16-bit, 64-byte rows
    ("pisp", "imx477", "SBGGR12_CSI2P", (1332, 990), "BGGR_PISP_COMP1", 1344),  # packed → compressed, 1 B/px
])
def test_validate_gives_the_platforms_raw_format_and_stride(simulated_pi, platform, sensor, asked, mode, configured,
                                                            stride):
    """vc4.cpp / pisp.cpp platformValidate, strides as the hardware pads them (picamera2 align_stream)."""
    pi = simulated_pi([sensor], platform)
    picam2 = pi.picamera2.Picamera2(0)
    picam2.configure(picam2.create_still_configuration(raw={"format": asked}, buffer_count=1,
                                                       sensor={"output_size": mode,
                                                               "bit_depth": 10 if mode == (1332, 990) else
                                                               (10 if sensor == "imx219" else 12)}))
    raw = picam2.camera_configuration()["raw"]
    picam2.close()
    assert (raw["format"], raw["size"], raw["stride"], raw["framesize"]) == (configured, mode, stride,
                                                                             stride * mode[1])


def test_a_main_stream_of_another_aspect_ratio_is_cropped_from_the_mode_and_reported_as_scaler_crop(simulated_pi):
    """vc4.cpp platformConfigure: ispCrop = the mode bounded to the output's aspect ratio, centred;
    pipeline_base.cpp scaleIspCrop reports it in sensor pixels; a ScalerCrop control zooms (applyScalerCrop)."""
    pi = simulated_pi(["imx219"], "vc4")
    picam2 = pi.picamera2.Picamera2(0)
    picam2.configure(picam2.create_video_configuration(main={"size": (640, 360), "format": "RGB888"}, queue=False,
                                                       sensor={"output_size": (1640, 1232), "bit_depth": 10}))
    # 1640x1232 bounded to 16:9 → 1640x922, centred at row 155 → even 154; ×2 binning in sensor pixels
    assert picam2.camera_controls["ScalerCrop"][2] == (0, 308, 3280, 1844)
    assert picam2.camera_controls["ScalerCrop"][1] == (0, 0, 3280, 2464)
    picam2.start()
    assert picam2.capture_metadata()["ScalerCrop"] == (0, 308, 3280, 1844)
    picam2.set_controls({"ScalerCrop": (820, 616, 1640, 1232)})  # the centre quarter: 2x digital zoom

    def zoomed():
        return picam2.capture_metadata()["ScalerCrop"] == (820, 616, 1640, 1232)

    from tests.conftest import wait_until

    wait_until(zoomed, timeout=60)
    picam2.close()


@pytest.mark.parametrize("platform, asked, in_force", [("pisp", 12.0, 7.99), ("vc4", 12.0, 12.0), ("vc4", 20.0, 15.999)])
def test_lens_shading_gains_are_clamped_to_the_platforms_limit(simulated_pi, platform, asked, in_force):
    """pisp.cpp packLscLut: 10-bit fields in [0, 8); vc4.cpp resampleTable: u4.10, at most 16383/1024."""
    pi = simulated_pi(["imx219"], platform)
    P = pi.picamera2.Picamera2
    tuning = P.load_tuning_file("imx219.json")
    alsc = P.find_tuning_algo(tuning, "rpi.alsc")
    n = len(alsc["luminance_lut"])
    alsc.update(n_iter=0, luminance_strength=1.0, luminance_lut=[1.0] * (n - 1) + [asked],
                calibrations_Cr=[{"ct": 5000, "table": [1.0] * n}], calibrations_Cb=[{"ct": 5000, "table": [1.0] * n}])
    picam2 = P(0, tuning=tuning)
    picam2.configure(picam2.create_video_configuration(main={"size": (320, 240)}, queue=False,
                                                       sensor={"output_size": (1640, 1232), "bit_depth": 10}))
    picam2.start()
    picam2.capture_metadata()
    gains = pi.pipeline(0).lens_shading_in_force
    picam2.close()
    assert in_force - 0.05 <= gains.max() <= in_force + 0.001  # per pixel: between vertices, never above


def test_frames_come_at_the_frame_duration_and_startup_frames_are_not_delivered(simulated_pi):
    pi = simulated_pi(["imx219"], "vc4")
    picam2 = pi.picamera2.Picamera2(0)
    picam2.configure(picam2.create_video_configuration(main={"size": (320, 240)}, queue=False,
                                                       controls={"FrameRate": 20.0},
                                                       sensor={"output_size": (640, 480), "bit_depth": 10}))
    picam2.start()
    sequences, metadata = [], []
    for _ in range(6):
        with picam2.captured_request() as request:
            sequences.append(request.request.sequence)
            metadata.append(request.get_metadata())
    picam2.stop()
    picam2.start()  # a restart is not a cold start: no startup frames (ipa_base.cpp start)
    with picam2.captured_request() as request:
        restarted = request.request.sequence
    picam2.close()
    assert sequences[0] >= 7  # AGC (6) + AWB convergence + 1 mistrusted frame after a cold start
    assert restarted == 0
    durations = [md["FrameDuration"] for md in metadata]
    assert all(d == 50000 for d in durations)
    stamps = [md["SensorTimestamp"] for md in metadata]
    gaps = [(b - a) / 1000 / (sb - sa) for a, b, sa, sb in zip(stamps, stamps[1:], sequences, sequences[1:])]
    assert min(gaps) >= 0.9 * 50000  # never faster than the frame duration (slower only on a busy machine)
