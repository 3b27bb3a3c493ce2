"""Sensor table facts (calibration.md §1, picamera2.md §2/§5) and the quantisation rules."""


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pi_agent.camera.sensors import SENSORS, get_sensor


def test_registry_facts():
    imx219, imx477 = get_sensor("imx219"), get_sensor("IMX477")
    assert (imx219.bit_depth, imx219.black_level, imx219.white_level, imx219.target_white_level) == (10, 64, 1023, 700)
    assert (imx477.bit_depth, imx477.black_level, imx477.white_level, imx477.target_white_level) == (12, 256, 4095, 2800)
    assert get_sensor("imx708").black_level == 64 and get_sensor("ov5647").black_level == 16
    orders = {n: s.bayer_order for n, s in SENSORS.items()}
    assert orders == {"imx219": "BGGR", "imx477": "BGGR", "imx708": "RGGB", "ov5647": "GBRG", "imx296": "RGGB",
                      "imx296_mono": "MONO", "ov9281": "MONO"}
    delays = {n: (s.exposure_delay, s.gain_delay) for n, s in SENSORS.items()}
    assert delays == {"imx219": (2, 1), "imx477": (2, 2), "imx708": (2, 2), "ov5647": (2, 2), "imx296": (2, 2),
                      "imx296_mono": (2, 2), "ov9281": (2, 2)}  # camera_sensor_properties.cpp for the last three
    assert imx477.full_well_e == pytest.approx(8180) and imx477.read_noise_e == pytest.approx(3.0)
    assert {m.size for m in imx219.modes} == {(640, 480), (1640, 1232), (1920, 1080), (3280, 2464)}
    assert {m.size for m in imx477.modes} == {(1332, 990), (2028, 1080), (2028, 1520), (4056, 3040)}
    full = [m for m in imx219.modes if m.size == (3280, 2464)][0]
    assert full.line_time_us == pytest.approx(18.9, abs=0.05)


def test_gain_quantisation_limits():
    assert get_sensor("imx219").quantise_gain(100) == pytest.approx(10.67, abs=0.005)
    assert get_sensor("imx477").quantise_gain(100) == pytest.approx(22.26, abs=0.005)
    assert get_sensor("imx708").quantise_gain(100) == pytest.approx(16.0)
    assert get_sensor("ov5647").quantise_gain(100) == pytest.approx(63.94, abs=0.005)
    assert get_sensor("imx219").quantise_gain(0.1) == 1.0
    assert get_sensor("imx219").quantise_gain(4.0) == 4.0  # exact codes survive float rounding
    assert get_sensor("imx477").quantise_gain(2.0) == 2.0


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(sorted(SENSORS)), gain=st.floats(1.0, 70.0))
def test_gain_never_exceeds_request(name, gain):
    s = get_sensor(name)
    q = s.quantise_gain(gain)
    assert s.gain_min - 1e-9 <= q <= s.gain_max + 1e-9
    if gain >= s.quantise_gain(s.gain_min):  # the smallest code may exceed gain_min (IMX708: 1.1203 for 1.12)
        assert q <= gain + 1e-9
    assert s.quantise_gain(q) == pytest.approx(q)  # idempotent


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(sorted(SENSORS)), us=st.floats(0.0, 2e6))
def test_exposure_whole_lines_floor(name, us):
    s = get_sensor(name)
    for mode in s.modes:
        q = s.quantise_exposure(us, mode)
        lines = s.exposure_lines(us, mode)
        assert isinstance(q, int) and lines >= 1
        assert q - 1 < lines * mode.line_time_us <= q + 1e-6  # the implementation rounds with a 1e-6 µs tolerance
        if us >= s.exposure_min_us + mode.line_time_us:
            assert lines * mode.line_time_us <= us + 1e-3
        assert s.quantise_exposure(q, mode) == q  # idempotent


def test_choose_mode_prefers_full_field_binned():
    imx219, imx477 = get_sensor("imx219"), get_sensor("imx477")
    assert imx219.choose_mode((640, 480), 30).size == (1640, 1232)
    assert imx219.choose_mode((640, 480), 100).size == (640, 480)  # only the crop is that fast
    assert imx219.choose_mode((1640, 1232), 0).size == (1640, 1232)
    assert imx219.choose_mode((3280, 2464), 15).size == (3280, 2464)
    assert imx477.choose_mode((640, 480), 30).size == (2028, 1520)
    assert imx477.choose_mode((1920, 1080), 50).size == (2028, 1080)
    with pytest.raises(ValueError, match="no sensor mode"):
        imx219.mode_of_size((1000, 1000))


def test_unknown_sensor_lists_names():
    with pytest.raises(ValueError, match="imx219.*imx477.*imx708.*ov5647"):
        get_sensor("imx999")
