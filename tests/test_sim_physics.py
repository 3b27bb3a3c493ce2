"""Physics and behaviour of the simulated sensor — the ground truth that calibration tests rely on."""

import numpy as np
import pytest

from pi_agent.camera.base import CameraError, LensShadingTable
from pi_agent.camera.isp import Isp
from pi_agent.camera.scene import GREY_PATCH
from pi_agent.camera.sim import SimulatedCamera


def manual_camera(sensor="imx219", scene="chart", exposure=5000, gain=1.0, raw_size=None, size=(320, 240), **kw):
    cam = SimulatedCamera(sensor=sensor, scene=scene, pacing=False, **kw)
    cam.configure(size, 0, raw_size=raw_size)
    cam.set_controls({"AeEnable": False, "AwbEnable": False, "ExposureTime": exposure, "AnalogueGain": gain,
                      "ColourGains": (1.0, 1.0)})
    cam.start()
    return cam


def planes(raw: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    return {(dy, dx): raw[dy::2, dx::2] for dy in (0, 1) for dx in (0, 1)}


@pytest.mark.parametrize("sensor", ["imx219", "imx477"])
def test_dark_frame_black_level_and_read_noise(sensor):
    cam = manual_camera(sensor, "dark", exposure=10000, gain=4.0, raw_size=(640, 480) if sensor == "imx219" else (1332, 990))
    f = cam.capture()
    assert f.metadata["AnalogueGain"] == pytest.approx(4.0)
    raw = f.raw.astype(np.float64)
    assert abs(raw.mean() - f.black_level) < 1.0
    s = cam.sensor
    read_dn = s.read_noise_e * cam.conversion_gain * 4.0
    expected = np.sqrt(read_dn**2 + 1 / 12)  # + the ADC's rounding
    assert raw.std() == pytest.approx(expected, rel=0.10)
    assert f.metadata["SensorBlackLevels"] == (4096,) * 4


def test_signal_linear_in_exposure():
    cam = manual_camera("imx219", "white", exposure=2000, raw_size=(640, 480))
    t1 = cam.capture().metadata["ExposureTime"]
    lines = cam.sensor.exposure_lines(t1, cam.mode)

    def level(exposure):
        cam.set_controls({"ExposureTime": exposure})
        frames = [cam.capture() for _ in range(6)][3:]  # past the exposure delay
        assert frames[-1].metadata["ExposureTime"] == cam.sensor.quantise_exposure(exposure, cam.mode)
        return np.mean([f.raw.mean() for f in frames]) - frames[0].black_level

    one = level(lines * cam.mode.line_time_us)
    two = level(2 * lines * cam.mode.line_time_us)
    assert one < 0.5 * (1023 - 64)
    assert two / one == pytest.approx(2.0, rel=0.02)
    # and in gain
    cam.set_controls({"ExposureTime": lines * cam.mode.line_time_us, "AnalogueGain": 2.0})
    frames = [cam.capture() for _ in range(6)][3:]
    assert np.mean([f.raw.mean() for f in frames]) - 64 == pytest.approx(2 * one, rel=0.02)


@pytest.mark.parametrize("sensor", ["imx219", "imx477"])
def test_bright_scene_clips_at_white(sensor):
    cam = manual_camera(sensor, "white", exposure=30000, gain=4.0)
    raw = cam.capture().raw
    white = 2**cam.mode.bit_depth - 1
    assert raw.max() == white
    assert (raw == white).mean() > 0.5


@pytest.mark.parametrize("sensor", ["imx219", "imx477"])
@pytest.mark.parametrize("control,new", [("ExposureTime", 8000), ("AnalogueGain", 2.0)])
def test_control_delay(sensor, control, new):
    cam = manual_camera(sensor, "chart", exposure=4000, gain=1.0)
    s = cam.sensor
    delay = s.exposure_delay if control == "ExposureTime" else s.gain_delay
    first = cam.capture()
    old = first.metadata[control]
    assert old == (s.quantise_exposure(4000, cam.mode) if control == "ExposureTime" else 1.0)
    for _ in range(2):
        cam.capture()
    cam.set_controls({control: new})
    values = [cam.capture().metadata[control] for _ in range(delay + 3)]
    expected_new = s.quantise_exposure(new, cam.mode) if control == "ExposureTime" else s.quantise_gain(new)
    assert values[:delay] == [old] * delay
    assert values[delay:] == [expected_new] * 3


def test_controls_set_before_start_apply_to_first_frame():
    cam = manual_camera("imx477", exposure=7000, gain=3.0)
    f = cam.capture()
    assert f.metadata["ExposureTime"] == cam.sensor.quantise_exposure(7000, cam.mode)
    assert f.metadata["AnalogueGain"] == pytest.approx(cam.sensor.quantise_gain(3.0))


def test_exposure_limited_by_frame_duration():
    cam = SimulatedCamera(pacing=False)
    cam.configure((640, 480), 30)
    cam.set_controls({"AeEnable": False, "ExposureTime": 100000})
    cam.start()
    md = cam.capture().metadata
    assert md["ExposureTime"] <= 33334 and md["FrameDuration"] == 33333


def white_cell_means(raw, black, grid=(16, 12)):
    """(rows, cols) cell means of one Bayer plane, black subtracted."""
    h, w = raw.shape
    gx, gy = grid
    ys = np.linspace(0, h, gy + 1).astype(int)
    xs = np.linspace(0, w, gx + 1).astype(int)
    return np.array([[raw[ys[i]:ys[i + 1], xs[j]:xs[j + 1]].mean() - black for j in range(gx)] for i in range(gy)])


@pytest.mark.parametrize("sensor,raw_size", [("imx219", (1640, 1232)), ("imx219", (640, 480)), ("imx477", (2028, 1520))])
def test_white_scene_follows_true_shading(sensor, raw_size):
    cam = manual_camera(sensor, "white", exposure=6000, raw_size=raw_size, corner_shading=0.4)
    acc = None
    for _ in range(3):
        raw = cam.capture().raw.astype(np.float64)
        acc = raw if acc is None else acc + raw
    acc /= 3
    truth = cam.true_shading()
    sites = cam.sensor.bayer_order
    for (dy, dx), plane in planes(acc).items():
        ch = sites[dy * 2 + dx]
        measured = white_cell_means(plane, cam.capture().black_level)
        expected = white_cell_means(truth[ch][dy::2, dx::2], 0.0)
        ratio = measured / expected
        assert np.abs(ratio / ratio.mean() - 1).max() < 0.01, (ch, ratio.min(), ratio.max())


def test_true_shading_shape():
    cam = SimulatedCamera(corner_shading=0.5)
    cam.configure((640, 480), 30)
    t = cam.true_shading()
    assert t["G"].shape == (1232, 1640) and t["G"].dtype == np.float32
    assert t["G"].max() <= 1.0 and t["G"].max() > 0.999
    # far corner of the full array (the optical axis is at 0.53 W, 0.47 H: bottom-left is farthest)
    assert t["G"][-1, 0] == pytest.approx(0.5, abs=0.01)
    assert t["R"][-1, 0] < t["G"][-1, 0] < t["B"][-1, 0]
    # a cropped mode sees only its crop: less fall-off
    cam.configure((640, 480), 100)
    assert cam.mode.size == (640, 480) and cam.true_shading()["G"].min() > 0.75


def test_colour_temperature_changes_balance():
    ratios = {}
    for ct in (3000, 6500):
        cam = manual_camera("imx219", "white", exposure=3000, raw_size=(640, 480), colour_temperature=ct)
        p = planes(cam.capture().raw.astype(np.float64))
        ratios[ct] = (p[(1, 1)].mean() - 64) / (p[(0, 0)].mean() - 64)  # BGGR: R / B
        r, b = cam.true_colour_gains()
        rr, gg, bb = cam.illuminant_rgb()
        assert (r, b) == pytest.approx((gg / rr, gg / bb))
    assert ratios[3000] > 1.5 * ratios[6500]


@pytest.mark.parametrize("ct", [2800, 5000, 7500])
def test_true_colour_gains_neutralise_grey(ct):
    cam = SimulatedCamera(scene="chart", colour_temperature=ct, pacing=False, corner_shading=1.0)
    cam.configure((820, 616), 0, raw_size=(1640, 1232))
    cam.set_controls({"AeEnable": False, "ExposureTime": 8000, "ColourGains": cam.true_colour_gains()})
    cam.start()
    f = cam.capture()
    reg = cam.scene.patch_region(GREY_PATCH)
    isp = Isp((1640, 1232), "BGGR", 10, 64, main_size=(820, 616))
    lin = isp.process(f.raw, f.metadata["ColourGains"], linear=True)
    b, g, r = lin[reg.y0 // 2 : reg.y1 // 2, reg.x0 // 2 : reg.x1 // 2].reshape(-1, 3).mean(axis=0)
    assert r / g == pytest.approx(1.0, abs=0.02) and b / g == pytest.approx(1.0, abs=0.02)
    bm, gm, rm = f.main[reg.y0 // 2 : reg.y1 // 2, reg.x0 // 2 : reg.x1 // 2].reshape(-1, 3).mean(axis=0)
    assert rm / gm == pytest.approx(1.0, abs=0.02) and bm / gm == pytest.approx(1.0, abs=0.02)


def test_lens_shading_table_from_truth_flattens_white():
    cam = manual_camera("imx219", "white", exposure=5000, raw_size=(1640, 1232), size=(1640, 1232))
    truth = cam.true_shading()
    cells = {c: white_cell_means(truth[c], 0.0) for c in "RGB"}
    g = cells["G"]
    table = LensShadingTable(grid=(16, 12), luminance=g.max() / g, cr=g / cells["R"], cb=g / cells["B"])
    f0 = cam.capture()
    cam.apply_lens_shading(table)
    r, b = table.cr.min(), table.cb.min()
    cam.set_controls({"ColourGains": (r * cam.true_colour_gains()[0], b * cam.true_colour_gains()[1])})
    f1 = cam.capture()
    isp = Isp((1640, 1232), "BGGR", 10, 64)
    before = isp.process(f0.raw, (1.0, 1.0), linear=True)[..., 1]
    isp.set_lens_shading(table)
    after = isp.process(f1.raw, f1.metadata["ColourGains"], linear=True)
    inner = (slice(123, -123), slice(164, -164))
    assert before.min() / before.max() < 0.6
    for c in range(3):
        cm = white_cell_means(after[..., c], 0.0)
        assert cm.max() / cm.min() < 1.10
        inner_cm = white_cell_means(after[inner][..., c], 0.0)
        assert inner_cm.max() / inner_cm.min() < 1.05
    assert cam.lens_shading is table


def test_agc_and_awb_converge():
    cam = SimulatedCamera(scene="chart", colour_temperature=4000, pacing=False)
    cam.configure((320, 240), 30)
    cam.start()
    frames = [cam.capture() for _ in range(25)]
    md = frames[-1].metadata
    assert md["AeState"] == 2
    r, b = md["ColourGains"]
    tr, tb = cam.true_colour_gains()
    assert r == pytest.approx(tr, rel=0.15) and b == pytest.approx(tb, rel=0.15)
    assert 1000 < md["ColourTemperature"] < 10000 and md["Lux"] > 0 and md["DigitalGain"] == 1.0
    # in the dark, AGC opens exposure up to the frame duration, then gain
    dark = SimulatedCamera(scene="dark", pacing=False, lux=1.0)
    dark.configure((320, 240), 30)
    dark.start()
    for _ in range(30):
        md = dark.capture().metadata
    assert md["ExposureTime"] > 30000 and md["AnalogueGain"] > 10


def test_seed_makes_sequence_deterministic():
    def run(seed):
        cam = SimulatedCamera(seed=seed, pacing=False)
        cam.configure((320, 240), 30)
        cam.start()
        out = []
        for i in range(6):
            if i == 2:
                cam.set_controls({"ExposureTime": 5000})
            f = cam.capture()
            out.append((f.raw.copy(), f.metadata["ExposureTime"], f.metadata["ColourGains"], f.sequence))
        return out

    a, b, c = run(3), run(3), run(4)
    for x, y in zip(a, b):
        assert np.array_equal(x[0], y[0]) and x[1:] == y[1:]
    assert not np.array_equal(a[-1][0], c[-1][0])
    assert [x[3] for x in a] == list(range(6))


def test_captured_frame_contents():
    cam = SimulatedCamera(sensor="imx477", pacing=False)
    cfg = cam.configure((640, 480), 30)
    assert cfg["raw"]["size"] == (2028, 1520)
    cam.start()
    f = cam.capture()
    assert f.main.shape == (480, 640, 3) and f.main.dtype == np.uint8
    assert f.raw.shape == (1520, 2028) and f.raw.dtype == np.uint16 and f.raw.max() <= 4095
    assert (f.bayer_order, f.bit_depth, f.black_level) == ("BGGR", 12, 256)
    md = f.metadata
    assert md["FrameDuration"] == 33333 and isinstance(md["ExposureTime"], int) and isinstance(md["SensorTimestamp"], int)
    assert cam.capture().metadata["SensorTimestamp"] > md["SensorTimestamp"]
    # the moving element moves: the chart's bottom band changes between distant frames
    frames = [cam.capture() for _ in range(20)]
    assert not np.array_equal(frames[0].main[400:], frames[-1].main[400:])


def test_bad_controls_raise_and_change_nothing():
    cam = SimulatedCamera(pacing=False)
    cam.configure((320, 240), 30)
    before = cam.controls()
    with pytest.raises(ValueError, match="unknown control 'Brightness'"):
        cam.set_controls({"ExposureTime": 1000, "Brightness": 1})
    with pytest.raises(ValueError, match="AnalogueGain must be within"):
        cam.set_controls({"AnalogueGain": 50})
    with pytest.raises(ValueError, match="ExposureTime"):
        cam.set_controls({"ExposureTime": -5})
    with pytest.raises(ValueError, match="ColourGains"):
        cam.set_controls({"ColourGains": (1.0,)})
    assert cam.controls() == before
    ranges = cam.control_ranges()
    assert ranges["AnalogueGain"][1] == pytest.approx(10.67, abs=0.01) and ranges["ExposureTime"][1] == 33333
    cam.set_controls({"FrameRate": 10})
    assert cam.controls()["FrameDurationLimits"] == (100000, 100000)


def test_faults():
    cam = SimulatedCamera(pacing=False)
    with pytest.raises(CameraError, match="not started"):
        cam.capture()
    cam.configure((320, 240), 30)
    cam.start()
    cam.inject_fault("raise")
    with pytest.raises(CameraError):
        cam.capture()
    cam.inject_fault("hang")
    with pytest.raises(CameraError, match="capture timed out"):
        cam.capture(timeout=0.01)
    assert cam.capture().sequence == 0
    with pytest.raises(ValueError):
        cam.inject_fault("explode")


def test_pacing_keeps_sequence_and_timestamps_monotonic():
    cam = SimulatedCamera(pacing=True)
    cam.configure((320, 240), 200, raw_size=(640, 480))
    cam.start()
    ts = [cam.capture().metadata["SensorTimestamp"] for _ in range(5)]
    assert all(b > a for a, b in zip(ts, ts[1:]))
