"""Monochrome sensors (issue 12, item 4) through the simulator and the agent: OV9281, IMX296 mono.

Ground truth: the simulator's exposure/gain in force and its raw pixels; the raw packings are built here
bit by bit from the CSI-2 layout (not with the unpacker under test).
"""

from __future__ import annotations

import numpy as np
import pytest
import simplejpeg

from host_viewer.client import CommandFailed
from pi_agent.camera.raw_unpack import parse_raw_format, unpack_raw
from pi_agent.camera.sensors import get_sensor, sensor_for
from pi_agent.camera.sim import SimulatedCamera
from pi_agent.stats import compute_stats, compute_stream_stats

from .conftest import wait_until


def _pack_csi2p10(values: np.ndarray, stride: int) -> np.ndarray:
    """CSI-2 RAW10 by the book: per 4 pixels, 4 bytes of bits 9:2, then one byte of the 4 low bit pairs."""
    h, w = values.shape
    out = np.zeros((h, stride), dtype=np.uint8)
    for y in range(h):
        row = bytearray()
        for x in range(0, w, 4):
            group = [int(v) for v in values[y, x:x + 4]] + [0] * (4 - len(values[y, x:x + 4]))
            row += bytes(v >> 2 for v in group)
            row.append(sum((v & 3) << (2 * i) for i, v in enumerate(group)))
        out[y, :len(row)] = np.frombuffer(bytes(row), dtype=np.uint8)
    return out


@pytest.mark.parametrize("name, bits, packing", [("R8", 8, "unpacked"), ("R10", 10, "unpacked"),
                                                 ("R10_CSI2P", 10, "CSI2P"), ("R12", 12, "unpacked"),
                                                 ("R12_CSI2P", 12, "CSI2P"), ("R16", 16, "unpacked")])
def test_mono_raw_formats_parse(name, bits, packing):
    fmt = parse_raw_format(name)
    assert (fmt.bayer_order, fmt.container_bits, fmt.packing) == ("MONO", bits, packing)


def test_mono_raw_unpacks_r10_r10_csi2p_and_pi5_r16():
    rng = np.random.default_rng(5)
    values = rng.integers(0, 1024, size=(6, 20), dtype=np.uint16)
    stride = 32
    unpacked = np.zeros((6, 64), dtype=np.uint8)
    unpacked[:, :40] = values.astype("<u2").view(np.uint8).reshape(6, 40)
    np.testing.assert_array_equal(unpack_raw(unpacked, "R10", (20, 6), 10), values)
    np.testing.assert_array_equal(unpack_raw(_pack_csi2p10(values, stride), "R10_CSI2P", (20, 6), 10), values)
    msb = np.zeros((6, 64), dtype=np.uint8)
    msb[:, :40] = (values << 6).astype("<u2").view(np.uint8).reshape(6, 40)
    np.testing.assert_array_equal(unpack_raw(msb, "R16", (20, 6), 10), values)


def test_sensor_table_has_mono_facts_and_picks_the_mono_variant():
    assert get_sensor("ov9281").is_mono and get_sensor("ov9281").black_level == 64
    mono = sensor_for("imx296", mono=True)
    assert mono.is_mono and mono.model == "imx296" and mono.black_level == 60
    assert not sensor_for("imx296").is_mono and sensor_for("imx296").bayer_order == "RGGB"
    assert sensor_for("imx219", mono=True) is None
    # IMX296 gain codes are 0.1 dB steps (cam_helper_imx296.cpp): 10^(code/200), truncated
    assert mono.quantise_gain(2.0) == pytest.approx(10 ** (60 / 200))
    assert mono.quantise_gain(100.0) == pytest.approx(10 ** (239 / 200))


def test_mono_statistics_are_one_channel_of_every_pixel():
    camera = SimulatedCamera(sensor="ov9281", pacing=False, seed=3)
    camera.configure((640, 400), 30.0)
    camera.start()
    frame = camera.capture()
    stats = compute_stats(frame.raw, frame.bayer_order, frame.bit_depth, frame.black_level)
    assert stats.histograms.shape == (1, 1024)
    np.testing.assert_array_equal(stats.histograms[0], np.bincount(frame.raw.ravel(), minlength=1024))
    assert stats.mean()[0] == pytest.approx(frame.raw.mean() - frame.black_level)
    wire = compute_stream_stats(frame.raw, frame.bayer_order, frame.bit_depth, frame.black_level).to_wire()
    assert wire["channels"] == ["Y"] and len(wire["mean"]) == 1


@pytest.mark.parametrize("sensor", ["ov9281", "imx296_mono"])
def test_a_mono_sensor_streams_grey_with_one_histogram(start_agent, connect, sensor):
    camera = SimulatedCamera(sensor=sensor, seed=1)
    agent = start_agent(camera=camera, size=(640, 400))
    client = connect(agent)
    assert client.welcome.sensor["bayer_order"] == "MONO"
    frame = wait_until(client.latest, timeout=5, message="a frame")
    assert frame.stats["channels"] == ["Y"]
    assert simplejpeg.decode_jpeg_header(frame.jpeg)[2] == "Gray"  # a greyscale JPEG, not grey-in-colour
    assert "ColourGains" not in frame.metadata
    controls = client.command("get_controls")
    assert "ColourGains" not in controls["ranges"] and "AwbEnable" not in controls["controls"]
    with pytest.raises(CommandFailed) as refused:
        client.command("set_controls", {"controls": {"ColourGains": [1.5, 1.5]}})
    assert "ColourGains" in refused.value.message
    snapshot = client.command("snapshot", {"raw": False}, timeout=30)
    assert simplejpeg.decode_jpeg_header(snapshot["jpeg"])[2] == "Gray"


def test_mono_exposure_calibrates_and_colour_calibrations_are_refused(start_agent, connect):
    camera = SimulatedCamera(sensor="ov9281", scene="white", seed=2)
    agent = start_agent(camera=camera, size=(640, 400))
    client = connect(agent)
    for what in ("white_balance", "lens_shading", "all"):
        with pytest.raises(CommandFailed) as refused:
            client.command("calibrate", {"what": what})
        assert refused.value.code == "bad_argument"
        assert "monochrome" in refused.value.message and "exposure" in refused.value.message
    value = client.command("calibrate", {"what": "exposure"}, timeout=60)["exposure"]
    assert value["converged"]
    # ground truth: the raw level of the frames now streamed, measured here on the simulator's own pixels
    exposure = value["ExposureTime"]
    wait_until(lambda: camera.exposure_in_force == pytest.approx(exposure, abs=camera.mode.line_time_us + 1),
               timeout=5, message="calibrated exposure in force")
    level = []

    def listener(frame, stats):
        level.append(np.percentile(frame.raw, 99.9) - frame.black_level)

    agent.pipeline.add_listener(listener)
    wait_until(lambda: len(level) >= 2, timeout=5, message="two frames")
    agent.pipeline.remove_listener(listener)
    assert abs(level[-1] - value["target"]) <= 0.06 * value["target"]


def test_a_mono_snapshot_saves_as_a_monochrome_dng(start_agent, connect, tmp_path):
    rawpy = pytest.importorskip("rawpy")
    from host_viewer.snapshot import save_snapshot
    from protocol import unpack_array

    agent = start_agent(camera=SimulatedCamera(sensor="ov9281", seed=1), size=(640, 400))
    client = connect(agent)
    value = client.command("snapshot", {"raw": True}, timeout=30)
    files = save_snapshot(value, tmp_path)
    with rawpy.imread(str(files.raw)) as dng:
        assert dng.num_colors == 1  # no colour filter pattern claimed
        np.testing.assert_array_equal(dng.raw_image, unpack_array(value["raw"], "raw"))
        assert dng.white_level == 1023 and list(dng.black_level_per_channel)[0] == 64
