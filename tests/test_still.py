"""Full-resolution stills (CameraBackend.capture_still) against ground truth, while the stream keeps its mode.

Simulator: the still's black-subtracted level at a chart patch equals the stream's at the same field position
scaled by the exposure ratio (the simulator's binning averages, so the binning factor is 1), its ISP output
is the ISP's rendering of its raw with the table and colour gains in force, and the stream's frames are
exactly those of an identical camera that took no still. Picamera2 backend (the real picamera2 on the
simulated libcamera): the still's raw equals the mosaic the sensor read for that very frame on Pi 4 and Pi 5
layouts, and the stream resumes in its mode with the controls requested since the configure.
"""

from __future__ import annotations

import numpy as np
import pytest

from pi_agent.camera.base import LensShadingTable
from pi_agent.camera.isp import Isp, bayer_channel_index
from pi_agent.camera.picamera2_backend import Picamera2Camera
from pi_agent.camera.scene import GREY_PATCH, Scene
from pi_agent.camera.sensors import get_sensor
from pi_agent.camera.sim import SimulatedCamera

MANUAL = {"ExposureTime": 6000, "AnalogueGain": 2.0, "ColourGains": (1.6, 1.9)}


def channel_levels(raw: np.ndarray, region, bayer_order: str, black: int, bit_depth: int) -> np.ndarray:
    """Mean black-subtracted level of R, G, B in a region, normalised to white − black = 1."""
    sites = bayer_channel_index(bayer_order)
    block = raw[region.y0 & ~1 : region.y1 & ~1, region.x0 & ~1 : region.x1 & ~1].astype(np.float64)
    sums, counts = np.zeros(3), np.zeros(3)
    for dy in (0, 1):
        for dx in (0, 1):
            c = sites[dy, dx]
            sums[c] += block[dy::2, dx::2].mean()
            counts[c] += 1
    return (sums / counts - black) / ((1 << bit_depth) - 1 - black)


def settled_sim(sensor: str, raw_size=None, seed: int = 4) -> SimulatedCamera:
    cam = SimulatedCamera(sensor, seed=seed, pacing=False)
    cam.configure((640, 480), 30.0, raw_size=raw_size)
    cam.set_controls(MANUAL)
    cam.start()
    for _ in range(4):  # past the sensor's control delays
        cam.capture()
    return cam


@pytest.mark.parametrize("sensor, raw_size", [("imx219", None), ("imx477", (1332, 990))])
def test_the_simulators_still_is_the_full_mode_with_the_controls_in_force(sensor, raw_size):
    cam = settled_sim(sensor, raw_size)
    info = get_sensor(sensor)
    full = info.full_resolution_mode
    stream = [cam.capture() for _ in range(3)]
    assert stream[-1].metadata["ExposureTime"] == pytest.approx(MANUAL["ExposureTime"], abs=cam.mode.line_time_us)
    table = LensShadingTable(grid=(16, 12), luminance=np.linspace(1.0, 2.0, 192).reshape(12, 16),
                             cr=np.full((12, 16), 1.1), cb=np.full((12, 16), 1.3))
    cam.apply_lens_shading(table)
    still = cam.capture_still()

    # The full array, the sensor's Bayer order, the full mode's bit depth and black level (IMX477: 12-bit
    # 256 while the 1332x990 stream is 10-bit 64).
    assert still.raw.shape == (full.size[1], full.size[0]) == (info.full_array[1], info.full_array[0])
    assert still.main.shape == (full.size[1], full.size[0], 3)
    assert still.bayer_order == info.bayer_order and still.bit_depth == full.bit_depth
    assert still.black_level == info.black_level >> (info.bit_depth - full.bit_depth)
    assert still.raw.max() < 1 << full.bit_depth
    md = still.metadata
    assert md["ScalerCrop"] == full.crop and md["AnalogueGain"] == stream[-1].metadata["AnalogueGain"]
    assert md["ColourGains"] == MANUAL["ColourGains"]
    # The exposure in µs carries over, re-quantised to whole lines of the full mode.
    lines = info.exposure_lines(cam.exposure_in_force, full)
    assert md["ExposureTime"] == int(np.ceil(lines * full.line_time_us - 1e-6))
    assert abs(md["ExposureTime"] - stream[-1].metadata["ExposureTime"]) < full.line_time_us + 1

    # Physics: at a grey patch the normalised level of each channel is the stream's (binning averages here)
    # times the exposure ratio, at the same field position.
    stream_patch = cam.scene.patch_region(GREY_PATCH)
    still_patch = Scene("chart", full.size, full.crop, info.full_array).patch_region(GREY_PATCH)
    stream_level = np.mean([channel_levels(f.raw, stream_patch, f.bayer_order, f.black_level, f.bit_depth)
                            for f in stream], axis=0)
    still_level = channel_levels(still.raw, still_patch, still.bayer_order, still.black_level, still.bit_depth)
    ratio = md["ExposureTime"] / stream[-1].metadata["ExposureTime"]
    np.testing.assert_allclose(still_level, stream_level * ratio, rtol=0.01)
    assert still_level[1] > 0.05  # a real signal, not clipped or black
    # The ISP: the still's main is the ISP's rendering of its own raw with the table and gains in force.
    isp = Isp(full.size, still.bayer_order, still.bit_depth, still.black_level, full.size)
    isp.set_lens_shading(table)
    np.testing.assert_array_equal(still.main, isp.process(still.raw, MANUAL["ColourGains"]))


def test_a_still_leaves_the_stream_untouched_and_is_deterministic():
    with_still, without = settled_sim("imx219"), settled_sim("imx219")
    first = with_still.capture_still()
    again = settled_sim("imx219").capture_still()
    np.testing.assert_array_equal(first.raw, again.raw)  # same seed, same history: the same still
    assert first.raw.std() > 0 and not np.array_equal(first.raw, with_still.capture_still().raw)  # fresh noise
    for _ in range(3):  # the stream goes on as if no still had been taken: same frames, same numbers
        a, b = with_still.capture(), without.capture()
        assert a.sequence == b.sequence and a.raw.shape == (1232, 1640)
        np.testing.assert_array_equal(a.raw, b.raw)
        assert a.metadata["ExposureTime"] == b.metadata["ExposureTime"]


# Full mode raw layout per platform: (packed, format, stride) for the IMX219's 3280x2464 10-bit mode.
LAYOUTS = [
    ("vc4", False, "SBGGR10", 6560),  # uint16 LSB-aligned, 32-byte aligned rows
    ("vc4", True, "SBGGR10_CSI2P", 4128),  # 4 px in 5 bytes: 4100 → 4128
    ("pisp", False, "SBGGR16", 6592),  # uint16 MSB-aligned, 64-byte aligned rows
]


@pytest.mark.parametrize("platform, packed, raw_format, stride", LAYOUTS)
def test_picamera2_still_is_the_sensors_full_mode_raw_and_the_stream_resumes(picamera2_camera, platform, packed,
                                                                              raw_format, stride):
    cam, pi = picamera2_camera("imx219", platform, size=(640, 480), start=False, packed_raw=packed)
    cam.set_controls(MANUAL)  # before start: in force from the first frame
    before = cam.configuration
    cam.start()
    frames = [cam.capture(timeout=30) for _ in range(5)]
    # After configure: must survive the mode switches (picamera2's own switch back would re-send the video
    # configuration's 6000 µs).
    cam.set_controls({"ExposureTime": 4000})
    for _ in range(12):  # the request queue, then the sensor's delay
        frames.append(cam.capture(timeout=30))
        if abs(frames[-1].metadata["ExposureTime"] - 4000) < 20:
            break
    assert frames[-1].metadata["ExposureTime"] == pytest.approx(4000, abs=20)
    still = cam.capture_still(timeout=30)

    # The still is the sensor's full-mode raw of that very request, unpacked from the platform's layout.
    pipe = pi.pipeline(0)
    mosaic = pipe.raw_of(still.metadata)
    assert mosaic.shape == (2464, 3280)
    np.testing.assert_array_equal(still.raw, mosaic)
    assert still.bit_depth == 10 and still.black_level == 64 and still.bayer_order == "BGGR"
    assert still.main.shape == (2464, 3280, 3)
    assert still.metadata["ExposureTime"] == pytest.approx(4000, abs=20)  # the controls requested now
    assert still.metadata["AnalogueGain"] == 2.0
    assert still.metadata["ColourGains"] == pytest.approx(MANUAL["ColourGains"], abs=1e-6)
    still_config = next(c for c in reversed(pipe.configurations) if c["sensor"]["output_size"] == (3280, 2464))
    assert still_config["raw"]["format"] == raw_format and still_config["raw"]["stride"] == stride
    assert still_config["sensor"] == {"bit_depth": 10, "output_size": (3280, 2464)}

    # The stream resumes in its own mode, numbering on, with the controls of now.
    assert cam.configuration == before
    assert pipe.configurations[-1]["raw"]["size"] == (1640, 1232)
    after = [cam.capture(timeout=30) for _ in range(4)]
    assert [f.sequence for f in after] == list(range(frames[-1].sequence + 1, frames[-1].sequence + 5))
    for f in after:
        assert f.raw.shape == (1232, 1640) and f.main.shape == (480, 640, 3)
        assert f.metadata["ExposureTime"] == pytest.approx(4000, abs=20)
        np.testing.assert_array_equal(f.raw, pipe.raw_of(f.metadata))
