"""The Picamera2 backend against the fake picamera2 (tests/fakes), whose sensor is the simulator.

Ground truth: the simulator's raw of the very frame delivered, an independent simulator with the same seed,
the fake's libcamera CameraManager records (which tuning it read), and the simulator's ISP state.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pi_agent.camera import picamera2_backend
from pi_agent.camera.base import CameraError, LensShadingTable
from pi_agent.camera.picamera2_backend import Picamera2Camera, picamera2_available
from pi_agent.camera.sim import SimulatedCamera
from pi_agent.camera.tuning import TuningError, find_algo, table_from_tuning
from tests.conftest import wait_until
from tests.fakes.picamera2 import CameraSpec, make_fake_picamera2

SEED = 7


def open_backend(fake, size=(320, 240), fps=30.0, raw_size=None, **kwargs) -> Picamera2Camera:
    cam = Picamera2Camera(picamera2_module=fake, **kwargs)
    cam.configure(size, fps, raw_size)
    return cam


@pytest.mark.parametrize("sensor, raw_size, platform, packed, expected_format", [
    ("imx477", (2028, 1520), "vc4", False, "SBGGR12"),
    ("imx477", (2028, 1520), "vc4", True, "SBGGR12_CSI2P"),
    ("imx477", (1332, 990), "vc4", True, "SBGGR10_CSI2P"),
    ("imx477", (2028, 1520), "pisp", False, "SBGGR16"),
    ("imx219", (640, 480), "vc4", False, "SBGGR10"),
    ("imx219", (640, 480), "pisp", False, "SBGGR16"),
])
def test_unpacked_raw_equals_the_simulators_raw_exactly(sensor, raw_size, platform, packed, expected_format):
    fake = make_fake_picamera2([sensor], platform, seed=SEED)
    cam = open_backend(fake, raw_size=raw_size, packed_raw=packed)
    assert cam.configuration["raw"]["format"] == expected_format
    cam.start()
    frames = [cam.capture() for _ in range(4)]
    cam.close()
    # An independent simulator: same sensor, seed, mode and controls; the fake dropped its startup frames.
    ref = SimulatedCamera(sensor=sensor, seed=SEED, pacing=False)
    ref.configure((320, 240), 30.0, raw_size=raw_size)
    ref.set_controls({"FrameDurationLimits": (33333, 33333)})
    ref.start()
    expected = [ref.capture().raw.copy() for _ in range(fake.world.startup_frames + 4)][fake.world.startup_frames:]
    bits = ref.mode.bit_depth
    for frame, want in zip(frames, expected):
        assert frame.raw.dtype == np.uint16 and frame.raw.shape == (raw_size[1], raw_size[0])
        assert frame.bit_depth == bits and frame.bayer_order == "BGGR"
        np.testing.assert_array_equal(frame.raw, want)
    assert frames[-1].raw.max() < 2**bits  # not left-aligned, no padding garbage
    assert len({f.raw.tobytes()[:4096] for f in frames}) > 1  # noise: really different frames
    assert fake.world.outstanding[0] == 0  # every request released


def test_the_raw_delivered_is_the_one_the_fake_rendered_for_that_request():
    fake = make_fake_picamera2(["imx219"], "pisp", seed=3)
    cam = open_backend(fake, raw_size=(640, 480))
    cam.start()
    for _ in range(3):
        frame = cam.capture()
        np.testing.assert_array_equal(frame.raw, fake.world.last_raw[0][1])
    cam.close()


def test_bayer_order_comes_from_the_configured_raw_format_not_the_sensor_modes():
    fake = make_fake_picamera2([CameraSpec("imx477", rotation=180)], "vc4")
    cam = open_backend(fake, raw_size=(2028, 1520))
    picam2 = cam._cam
    assert picam2.sensor_format == "SRGGB12_CSI2P"  # what picamera2 lists (unrotated sensor)
    assert all(str(m["format"]).startswith("SRGGB") for m in picam2.sensor_modes)
    assert picam2.camera_configuration()["raw"]["format"] == "SBGGR12"  # what the rotated readout delivers
    cam.start()
    frame = cam.capture()
    cam.close()
    assert frame.bayer_order == "BGGR" == cam.sensor.bayer_order == fake.world.sim_of(0).sensor.bayer_order


def test_black_level_comes_from_metadata_at_the_mode_bit_depth():
    fake = make_fake_picamera2(["imx477"], "pisp")
    cam = open_backend(fake, raw_size=(1332, 990))  # the 10-bit mode of a 12-bit sensor
    cam.start()
    frame = cam.capture()
    cam.close()
    assert frame.metadata["SensorBlackLevels"] == (4096,) * 4
    assert frame.bit_depth == 10 and frame.black_level == 64
    assert cam.sensor.black_level == 64 and cam.sensor.bit_depth == 10
    dark = frame.raw[frame.raw < 64 + 40]
    assert dark.size == 0 or dark.min() >= 0


def test_control_ranges_come_from_the_camera_for_the_configured_mode():
    fake = make_fake_picamera2(["imx477"], "vc4")
    cam = Picamera2Camera(picamera2_module=fake)
    before = cam.control_ranges()
    assert before["AnalogueGain"][:2] == (1.0, 16.0)  # libcamera's defaults before configure
    cam.configure((320, 240), 30.0)
    after = cam.control_ranges()
    assert after["AnalogueGain"][1] == pytest.approx(22.26, abs=0.01)
    assert after["ExposureTime"][1] <= 33333
    assert set(after) <= set(picamera2_backend.SUPPORTED_CONTROLS)
    with pytest.raises(ValueError, match="Brightness"):
        cam.set_controls({"Brightness": 0.5})
    with pytest.raises(ValueError, match="outside"):
        cam.set_controls({"AnalogueGain": 40.0})
    assert cam.controls() == {}
    cam.close()


def test_a_control_change_shows_in_metadata_after_the_queue_and_sensor_delay_not_before():
    fake = make_fake_picamera2(["imx477"], "vc4", queue_latency=1)
    cam = open_backend(fake, raw_size=(1332, 990), buffer_count=3)
    cam.start()
    for _ in range(3):
        cam.capture()
    cam.set_controls({"ExposureTime": 5000, "AnalogueGain": 2.0, "AeEnable": False})
    frames = [cam.capture() for _ in range(10)]
    cam.close()
    sensor = fake.world.sim_of(0).sensor
    queued = 3 - 1 + 1  # requests already queued ahead (buffer_count - 1) + the fake's queue latency
    exposures = [f.metadata["ExposureTime"] for f in frames]
    gains = [f.metadata["AnalogueGain"] for f in frames]
    first_exposure = queued + sensor.exposure_delay
    first_gain = queued + sensor.gain_delay
    assert all(abs(e - 5000) > 40 for e in exposures[:first_exposure]), exposures
    assert all(abs(e - 5000) <= 40 for e in exposures[first_exposure:]), exposures
    assert all(g != pytest.approx(2.0, abs=0.01) for g in gains[:first_gain]), gains
    assert all(g == pytest.approx(2.0, abs=0.01) for g in gains[first_gain:]), gains


def _true_table(sim: SimulatedCamera, grid: tuple[int, int]) -> LensShadingTable:
    """The table that flattens the simulator's true shading: cell means of each channel's fall-off."""
    cols, rows = grid
    shading = sim.true_shading()
    cells = {k: cv2.resize(v, (cols, rows), interpolation=cv2.INTER_AREA).astype(np.float64) for k, v in shading.items()}
    g = cells["G"]
    return LensShadingTable(grid=grid, luminance=g.max() / g, cr=g / cells["R"], cb=g / cells["B"])


def _corner_to_centre(main: np.ndarray) -> float:
    g = main[:, :, 1].astype(np.float64)
    h, w = g.shape
    centre = g[h // 2 - h // 10: h // 2 + h // 10, w // 2 - w // 10: w // 2 + w // 10].mean()
    corner = g[: h // 8, : w // 8].mean()
    return corner / centre


@pytest.mark.parametrize("platform, grid", [("vc4", (16, 12)), ("pisp", (32, 32))])
def test_a_new_lens_shading_table_is_in_force_after_the_reopen_and_not_before(platform, grid):
    fake = make_fake_picamera2([CameraSpec("imx477", scene="white")], platform, seed=2)
    world = fake.world
    cam = open_backend(fake, raw_size=(2028, 1520))
    cam.start()
    cam.set_controls({"ExposureTime": 2500, "AnalogueGain": 1.0, "ColourGains": (1.0, 1.0)})
    wait_until(lambda: abs(cam.capture().metadata["ExposureTime"] - 2500) < 40, timeout=10)
    before = cam.capture()
    sim_before = world.sim_of(0)
    table = _true_table(sim_before, grid)
    stock = table_from_tuning(world.managers_created[-1]["tunings"][0])
    assert stock.grid == grid and not np.allclose(sim_before.lens_shading.luminance, table.luminance, atol=0.01)
    managers = len(world.managers_created)

    cam.apply_lens_shading(table)

    # the tuning the new camera manager read holds the table, on the platform's grid
    assert len(world.managers_created) == managers + 1
    loaded = world.managers_created[-1]["tunings"][0]
    assert len(find_algo(loaded, "rpi.alsc")["luminance_lut"]) == grid[0] * grid[1]
    in_force = world.sim_of(0).lens_shading
    assert world.sim_of(0) is not sim_before  # a reopened camera
    np.testing.assert_allclose(in_force.luminance, table.luminance, atol=1e-3)
    np.testing.assert_allclose(in_force.cr, table.cr, atol=1e-3)
    assert cam.lens_shading is table
    # the stream resumed with the same controls, and the ISP output is now flat
    after = cam.capture()
    cam.close()
    assert abs(after.metadata["ExposureTime"] - 2500) < 40 and after.metadata["ColourGains"] == (1.0, 1.0)
    assert before.main[:, :, 1].max() < 250 and after.main[:, :, 1].max() < 250  # nothing clipped
    error_before = abs(_corner_to_centre(before.main) - 1.0)  # the stock table does not fit this lens
    error_after = abs(_corner_to_centre(after.main) - 1.0)
    assert error_after < 0.03 and error_before > 0.05 and error_after < error_before / 3, (error_before, error_after)


def test_a_tuning_given_while_the_manager_is_held_is_silently_ignored_by_picamera2():
    """The #886 trap the backend works around: the fake must reproduce it, or the test above proves nothing."""
    fake = make_fake_picamera2(["imx219"], "vc4")
    P = fake.Picamera2
    P.global_camera_info()  # creates and keeps libcamera's manager with the stock tuning
    tuning = P.load_tuning_file("imx219.json")
    alsc = P.find_tuning_algo(tuning, "rpi.alsc")
    alsc["luminance_lut"] = [1.0] * 192
    picam2 = P(0, tuning=tuning)
    assert fake.world.sim_of(0).lens_shading.luminance.max() > 1.5  # still the stock table
    picam2.close()
    del picam2
    picam2 = P(0, tuning=tuning)  # all cameras closed: picamera2 dropped the manager, the new one reads it
    assert fake.world.sim_of(0).lens_shading.luminance.max() == 1.0
    picam2.close()


def test_a_held_camera_manager_is_detected_and_the_camera_keeps_working():
    fake = make_fake_picamera2(["imx477"], "vc4")
    cam = open_backend(fake, raw_size=(1332, 990))
    cam.start()
    held = fake.Picamera2._cm.cms  # something else keeps libcamera's manager alive
    stock = fake.world.sim_of(0).lens_shading
    with pytest.raises(CameraError, match="#886"):
        cam.apply_lens_shading(LensShadingTable.flat((16, 12)))
    assert fake.world.sim_of(0).lens_shading.luminance.max() == pytest.approx(stock.luminance.max())
    assert cam.capture().raw.shape == (990, 1332)
    del held
    cam.apply_lens_shading(LensShadingTable.flat((16, 12)))
    assert fake.world.sim_of(0).lens_shading.luminance.max() == 1.0
    cam.close()


@pytest.mark.parametrize("platform, wrong", [("vc4", (32, 32)), ("pisp", (16, 12))])
def test_a_table_on_the_wrong_grid_is_refused_and_nothing_changes(platform, wrong):
    fake = make_fake_picamera2(["imx219"], platform)
    cam = open_backend(fake, raw_size=(640, 480))
    cam.start()
    managers = len(fake.world.managers_created)
    with pytest.raises(TuningError, match="Pi 5" if platform == "pisp" else "Pi 4"):
        cam.apply_lens_shading(LensShadingTable.flat(wrong))
    assert len(fake.world.managers_created) == managers
    assert cam.capture().raw.shape == (480, 640)
    cam.close()


def test_a_broken_tuning_is_reported_and_the_previous_one_restored(monkeypatch):
    fake = make_fake_picamera2(["imx477"], "pisp")
    cam = open_backend(fake, raw_size=(1332, 990))
    cam.start()
    stock = fake.world.sim_of(0).lens_shading

    def broken(tuning, table):
        return {**tuning, "version": 999}

    monkeypatch.setattr(picamera2_backend, "with_lens_shading", broken)
    with pytest.raises(CameraError, match="previous tuning is back"):
        cam.apply_lens_shading(LensShadingTable.flat((32, 32)))
    assert "version" in fake.world.managers_created[-2]["errors"][0]  # libcamera rejected it
    assert fake.world.managers_created[-1]["source"] is None  # and the stock tuning was read again
    np.testing.assert_allclose(fake.world.sim_of(0).lens_shading.luminance, stock.luminance)
    assert cam.capture().raw.shape == (990, 1332)  # still streaming
    assert cam.opened_with_tuning is None and cam.lens_shading is None
    cam.close()


@pytest.mark.parametrize("version, exc_name", [("0.3.36", "IndexError"), ("0.3.38", "RuntimeError")])
def test_no_camera_is_a_clear_error(version, exc_name):
    fake = make_fake_picamera2([], "vc4", version=version)
    assert not picamera2_available(fake)
    with pytest.raises(CameraError, match="no camera 0 found") as info:
        Picamera2Camera(picamera2_module=fake)
    assert type(info.value.__cause__).__name__ == exc_name


def test_a_busy_camera_is_a_clear_error_and_the_owner_keeps_working():
    fake = make_fake_picamera2(["imx219"], "vc4")
    first = open_backend(fake, raw_size=(640, 480))
    first.start()
    with pytest.raises(CameraError, match="busy"):
        Picamera2Camera(picamera2_module=fake)
    assert first.capture().raw.shape == (480, 640)
    first.close()
    second = Picamera2Camera(picamera2_module=fake)  # free again once closed
    second.close()


def test_a_broken_tuning_file_at_open_is_a_clear_error(tmp_path):
    fake = make_fake_picamera2(["imx219"], "vc4")
    bad = tmp_path / "imx219.json"
    bad.write_text("{ not json")
    with pytest.raises(CameraError, match="tuning"):
        Picamera2Camera(picamera2_module=fake, tuning=str(bad))
    cam = Picamera2Camera(picamera2_module=fake)  # the stock tuning still works
    cam.close()


def test_compressed_pi5_raw_is_refused_unless_a_decompressor_is_given():
    fake = make_fake_picamera2(["imx477"], "pisp")
    cam = Picamera2Camera(picamera2_module=fake, packed_raw=True)
    with pytest.raises(CameraError, match="PISP_COMP1"):
        cam.configure((320, 240), 30.0, (1332, 990))
    cam.close()
    cam = Picamera2Camera(picamera2_module=fake, packed_raw=True, decompress=fake.helpers.decompress)
    cam.configure((320, 240), 30.0, (1332, 990))
    cam.start()
    frame = cam.capture()
    cam.close()
    truth = fake.world.last_raw[0][1].astype(int)
    assert frame.raw.shape == truth.shape and np.abs(frame.raw.astype(int) - truth).max() < 30  # lossy


def test_requests_are_released_even_when_reading_them_fails():
    fake = make_fake_picamera2(["imx219"], "vc4")
    cam = open_backend(fake, raw_size=(640, 480), buffer_count=2)
    cam.start()
    for _ in range(5):  # more frames than buffers: would stall if any request were held
        cam.capture()
    assert fake.world.outstanding[0] == 0
    cam._raw_format = None  # a broken state: unpacking fails after the request was read
    with pytest.raises(AttributeError):
        cam.capture()
    assert fake.world.outstanding[0] == 0
    cam.close()


def test_auto_picks_picamera2_when_a_camera_is_present_and_says_so(monkeypatch, caplog):
    from pi_agent.camera.factory import make_camera

    fake = make_fake_picamera2(["imx219"], "vc4")
    monkeypatch.setattr(picamera2_backend, "_import_picamera2", lambda: fake)
    with caplog.at_level("INFO", logger="pi_agent.camera.factory"):
        camera = make_camera("auto")
    assert isinstance(camera, Picamera2Camera) and "picamera2" in caplog.text and "imx219" in caplog.text
    camera.close()
    monkeypatch.setattr(picamera2_backend, "_import_picamera2", lambda: make_fake_picamera2([], "vc4"))
    caplog.clear()
    with caplog.at_level("INFO", logger="pi_agent.camera.factory"):
        camera = make_camera("auto")
    assert isinstance(camera, SimulatedCamera) and "simulated" in caplog.text


def test_the_agent_streams_end_to_end_over_the_fake(start_agent, connect):
    fake = make_fake_picamera2(["imx219"], "vc4", pacing=True)
    agent = start_agent(camera=Picamera2Camera(picamera2_module=fake), size=(320, 240), fps=30.0)
    client = connect(agent, full_stats=True)  # every metadata key in each frame
    frame = client.wait_frame(timeout=10)
    image = frame.decode()
    assert image.shape == (240, 320, 3) and image.std() > 5
    assert frame.metadata["SensorBlackLevels"] == [4096] * 4 or tuple(frame.metadata["SensorBlackLevels"]) == (4096,) * 4
    result = client.command("set_controls", {"controls": {"ExposureTime": 5000, "AnalogueGain": 2.0}})
    assert result["controls"]["ExposureTime"] == 5000 and result["controls"]["AeEnable"] is False

    def applied():
        md = client.wait_frame(timeout=2).metadata
        return abs(md["ExposureTime"] - 5000) < 40 and md["AnalogueGain"] == pytest.approx(2.0, abs=0.05)

    wait_until(applied, timeout=10, message="the new controls in the frame metadata")
    assert fake.world.outstanding[0] <= 1


@pytest.mark.parametrize("platform, grid", [("vc4", (16, 12)), ("pisp", (32, 32))])
def test_calibration_runs_through_the_picamera2_code_path(platform, grid):
    """The same calibration code as on the simulator, driving the Picamera2 backend over the fake: exposure,
    then a lens shading table on the platform's grid, applied by tuning rewrite + reopen, meeting the
    accuracy targets, and exported from the stock tuning."""
    from pi_agent.calibration.exposure import calibrate_exposure
    from pi_agent.calibration.frames import CameraFrameSource
    from pi_agent.calibration.lens_shading import calibrate_lens_shading

    fake = make_fake_picamera2([CameraSpec("imx477", scene="white")], platform, seed=3)
    cam = open_backend(fake, raw_size=(2028, 1520))
    cam.start()
    try:
        assert cam.tuning_target == ("pisp" if platform == "pisp" else "bcm2835")
        source = CameraFrameSource(cam)
        exposure = calibrate_exposure(source)
        assert exposure["converged"], exposure
        report, table, tuning = calibrate_lens_shading(source)
    finally:
        cam.close()
    assert table.grid == grid and report["grid"] == list(grid)
    assert report["before"]["residual_pct"] > 5
    assert report["residual_pct"] <= 0.5 and report["worst_cell_pct"] <= 2.0, report
    assert report["tuning_base"] == "stock"
    assert len(find_algo(tuning, "rpi.alsc")["luminance_lut"]) == grid[0] * grid[1]
    assert find_algo(fake.world.managers_created[-1]["tunings"][0], "rpi.alsc")["n_iter"] == 0
