"""The fake picamera2 reproduces the behaviours of shared/reference/picamera2.md §10 that the backend meets."""

from __future__ import annotations

import numpy as np
import pytest

from tests.fakes.picamera2 import CameraSpec, make_fake_picamera2


@pytest.fixture
def picam2():
    fake = make_fake_picamera2(["imx477"], "vc4")
    cam = fake.Picamera2(0)
    yield cam
    cam.close()


def test_configurations_are_12_key_dicts_with_checked_stream_keys(picam2):
    config = picam2.create_video_configuration()
    assert set(config) == {"use_case", "transform", "colour_space", "buffer_count", "queue", "main", "lores", "raw",
                           "controls", "sensor", "display", "encode"}
    assert config["main"] == {"format": "XBGR8888", "size": (1280, 720)} and config["buffer_count"] == 6
    assert config["raw"] is not None and config["controls"]["FrameDurationLimits"] == (33333, 33333)
    assert picam2.create_video_configuration(main={"size": (640, 480)})["colour_space"] == "Smpte170m"
    assert picam2.create_video_configuration(raw=None)["raw"] is None
    assert picam2.create_still_configuration()["buffer_count"] == 1
    with pytest.raises(ValueError, match="Bad key 'fps'"):
        picam2.create_video_configuration(main={"fps": 30})
    mode = picam2.sensor_modes[0]
    assert picam2.create_video_configuration(raw=mode)["raw"]["size"] == mode["size"]  # a mode is a raw stream


def test_configure_validates_and_writes_back_the_reference_still_figures(picam2):
    picam2.configure(picam2.create_still_configuration())
    raw = picam2.camera_configuration()["raw"]
    assert (raw["format"], raw["size"], raw["stride"], raw["framesize"]) == ("SBGGR12_CSI2P", (4056, 3040), 6112, 18580480)
    assert picam2.camera_configuration()["sensor"] == {"bit_depth": 12, "output_size": (4056, 3040)}
    picam2.configure(picam2.create_video_configuration(main={"size": (320, 240)}, raw={"format": "SRGGB12", "size": (640, 480)},
                                                       sensor={"output_size": (1332, 990), "bit_depth": 10}))
    raw = picam2.camera_configuration()["raw"]
    assert (raw["format"], raw["size"]) == ("SBGGR10", (1332, 990))  # forced to the mode's size and depth
    assert raw["stride"] == 2688  # 2664 bytes padded to 32
    assert picam2.camera_controls["ExposureTime"][1] <= 33334  # ranges now follow the mode and frame rate
    for bad in ({"main": {"size": (321, 240)}}, {"main": {"size": (320, 240)}, "lores": {"size": (640, 480)}},
                {"main": {"size": (320, 240)}, "lores": {"size": (160, 120), "format": "RGB888"}},
                {"raw": {"format": "YUV420"}}):
        with pytest.raises(RuntimeError):
            picam2.configure(picam2.create_video_configuration(**bad))
    picam2.start()
    with pytest.raises(RuntimeError, match="stopped"):
        picam2.configure(picam2.create_video_configuration())


def test_pi5_layouts_and_compressed_packing():
    fake = make_fake_picamera2(["imx219"], "pisp")
    with fake.Picamera2(0) as cam:
        cam.configure(cam.create_video_configuration(main={"size": (320, 240)}, raw={"format": "SBGGR10", "size": (640, 480)}))
        raw = cam.camera_configuration()["raw"]
        assert raw["format"] == "SBGGR16" and raw["stride"] % 64 == 0
        cam.configure(cam.create_video_configuration(main={"size": (320, 240)}, raw={"format": "SBGGR10_CSI2P"}))
        assert cam.camera_configuration()["raw"]["format"] == "BGGR_PISP_COMP1"


def test_requests_streams_controls_and_stalls():
    fake = make_fake_picamera2([CameraSpec("imx219")], "vc4", stall_timeout=0.2, libcamera_version="0.4.0")
    cam = fake.Picamera2(0)
    cam.configure(cam.create_video_configuration(main={"size": (320, 240), "format": "RGB888"}, buffer_count=2))
    with pytest.raises(RuntimeError, match="Control Brightnesss is not advertised by libcamera"):
        cam.set_controls({"Brightnesss": 1})
    cam.start()
    first = cam.capture_request()
    assert fake.world.frames_dropped == fake.world.startup_frames
    raw = first.make_array("raw")
    config = cam.camera_configuration()["raw"]
    assert raw.dtype == np.uint8 and raw.shape == (config["size"][1], config["stride"]) and config["format"] == "SBGGR10_CSI2P" and config["stride"] == 800  # 640 px × 1.25 B
    assert "AeLocked" in first.get_metadata() and "AeState" not in first.get_metadata()
    with pytest.raises(RuntimeError, match="Stream 'lores' is not defined"):
        first.make_array("lores")
    second = cam.capture_request()
    with pytest.raises(TimeoutError):  # both buffers held: the real pipeline would stall
        cam.capture_request()
    first.release()
    with pytest.raises(RuntimeError, match="too many times"):
        first.release()
    second_ts = second.get_metadata()["SensorTimestamp"]
    second.release()
    third = cam.capture_request()
    assert third.get_metadata()["SensorTimestamp"] > second_ts
    third.release()
    with pytest.raises(RuntimeError, match="Stream 'r' is not defined"):  # a str iterates its characters (#1261)
        cam.capture_arrays("raw")
    assert fake.world.outstanding[0] == 0
    cam.close()
    assert cam.camera_properties == {}


def test_main_formats_follow_drm_fourcc_naming():
    fake = make_fake_picamera2(["imx219"], "vc4")
    cam = fake.Picamera2(0)
    arrays = {}
    for fmt in ("RGB888", "BGR888", "XRGB8888", "XBGR8888"):
        cam.configure(cam.create_video_configuration(main={"size": (320, 240), "format": fmt}, controls={"AeEnable": False,
                                                                                                      "AwbEnable": False}))
        cam.start()
        arrays[fmt] = cam.capture_array("main")
        cam.stop()
    assert arrays["XRGB8888"].shape == (240, 320, 4)
    assert np.abs(arrays["RGB888"][..., 0].astype(int) - arrays["BGR888"][..., 2]).mean() < 3  # B first vs. last
    assert np.abs(arrays["XRGB8888"][..., 0].astype(int) - arrays["XBGR8888"][..., 2]).mean() < 3
    cam.close()


def test_open_errors_and_busy_camera():
    fake = make_fake_picamera2(["imx219"], "vc4", version="0.3.36")
    with pytest.raises(IndexError):
        fake.Picamera2(1)
    cam = fake.Picamera2(0)
    with pytest.raises(RuntimeError, match="did not complete"):
        fake.Picamera2(0)
    cam.close()
    assert fake.Picamera2.global_camera_info()[0]["Model"] == "imx219"
    with pytest.raises(RuntimeError, match="Tuning file not found"):
        fake.Picamera2.load_tuning_file("nonesuch.json")
