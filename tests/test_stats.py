"""The fast raw statistics equal the straightforward numpy route exactly, for every Bayer order and depth."""

from __future__ import annotations

import numpy as np
import pytest

from pi_agent.bayer import BAYER_ORDERS, CHANNELS, plane_offsets, planes
from pi_agent.camera.sim import SimulatedCamera
from protocol import unpack_array
from pi_agent.stats import (
    STREAM_SAMPLE_PIXELS, bayer_sample, channel_histograms, channel_histograms_reference, compute_stats,
    compute_stream_stats, sample_step,
)

PERCENTILES = (0.1, 1.0, 50.0, 99.0, 99.9, 100.0)


def random_mosaic(rng: np.random.Generator, shape: tuple[int, int], bit_depth: int, order: str) -> np.ndarray:
    """A mosaic whose four channels have different distributions, with black and white pixels in it."""
    white = (1 << bit_depth) - 1
    raw = np.empty(shape, dtype=np.uint16)
    for k, plane in enumerate(planes(raw, order).values()):
        centre = white * (0.2 + 0.2 * k)
        plane[...] = np.clip(rng.normal(centre, white * 0.15, plane.shape), 0, white).astype(np.uint16)
    raw[0, :4] = 0
    raw[-1, -4:] = white
    return raw


def straightforward(raw: np.ndarray, order: str, bit_depth: int, black: int) -> dict:
    """What one would write first: per-channel planes, np.bincount, np.percentile, plane means."""
    views = planes(raw, order)
    white = (1 << bit_depth) - 1
    out = {"hist": [], "mean": [], "clipped": [], "pct": {p: [] for p in PERCENTILES}}
    for name in CHANNELS:
        plane = views[name]
        out["hist"].append(np.bincount(plane.ravel(), minlength=1 << bit_depth))
        out["mean"].append(plane.sum(dtype=np.int64) / plane.size - black)
        out["clipped"].append(np.count_nonzero(plane == white) / plane.size)
        for p in PERCENTILES:
            out["pct"][p].append(float(np.percentile(plane, p, method="inverted_cdf")) - black)
    return out


@pytest.mark.parametrize("order", BAYER_ORDERS)
@pytest.mark.parametrize("bit_depth,black", [(10, 64), (12, 256)])
def test_fast_stats_equal_the_straightforward_route(order, bit_depth, black):
    rng = np.random.default_rng(bit_depth * 10 + BAYER_ORDERS.index(order))
    for shape in ((2, 2), (6, 10), (96, 128), (480, 642)):
        raw = random_mosaic(rng, shape, bit_depth, order)
        stats = compute_stats(raw, order, bit_depth, black)
        want = straightforward(raw, order, bit_depth, black)
        np.testing.assert_array_equal(stats.histograms, np.array(want["hist"]))
        np.testing.assert_array_equal(stats.mean(), np.array(want["mean"]))
        np.testing.assert_array_equal(stats.clipped_fraction(), np.array(want["clipped"]))
        for p in PERCENTILES:
            np.testing.assert_array_equal(stats.level_at(p), np.array(want["pct"][p]), err_msg=f"percentile {p}")
        pooled = float(np.percentile(raw, 99.9, method="inverted_cdf")) - black
        assert stats.pooled_level_at(99.9) == pooled


@pytest.mark.parametrize("order", BAYER_ORDERS)
def test_channels_land_in_their_own_histograms(order):
    """Each channel holds a distinct constant: every count must sit in its own channel's row and level."""
    raw = np.empty((8, 12), dtype=np.uint16)
    for k, plane in enumerate(planes(raw, order).values()):
        plane[...] = 100 + k
    hist = channel_histograms(raw, order, 10)
    for k in range(4):
        assert hist[k, 100 + k] == raw.size // 4
        assert hist[k].sum() == raw.size // 4


def test_values_above_the_bit_depth_count_as_white():
    raw = np.full((4, 4), 5000, dtype=np.uint16)
    raw[0, 0] = 3
    for route in (channel_histograms, channel_histograms_reference):
        hist = route(raw, "RGGB", 10)
        assert hist[:, 1023].tolist() == [3, 4, 4, 4]
        assert hist[0, 3] == 1


def test_a_non_uint16_mosaic_takes_the_reference_route():
    raw = np.arange(16, dtype=np.int32).reshape(4, 4)
    np.testing.assert_array_equal(channel_histograms(raw, "BGGR", 10),
                                  channel_histograms_reference(raw, "BGGR", 10))


def test_repeated_calls_on_other_shapes_do_not_mix_buffers():
    rng = np.random.default_rng(7)
    a = random_mosaic(rng, (64, 64), 10, "BGGR")
    b = random_mosaic(rng, (32, 48), 10, "BGGR")
    first = channel_histograms(a, "BGGR", 10)
    channel_histograms(b, "BGGR", 10)
    np.testing.assert_array_equal(channel_histograms(a, "BGGR", 10), first)


@pytest.mark.parametrize("shape", [(1232, 1640), (2464, 3280), (3040, 4056), (480, 640), (240, 320)])
def test_the_stream_sample_step_is_the_smallest_within_the_pixel_budget(shape):
    step = sample_step(shape)
    h, w = shape

    def sampled(n):
        return -(-h // (2 * n)) * -(-w // (2 * n)) * 4

    assert sampled(step) <= STREAM_SAMPLE_PIXELS
    assert step == 1 or sampled(step - 1) > STREAM_SAMPLE_PIXELS
    assert bayer_sample(np.zeros(shape, np.uint16), step).size == sampled(step)


@pytest.mark.parametrize("order", BAYER_ORDERS)
@pytest.mark.parametrize("step", [2, 3, 5])
@pytest.mark.parametrize("padded", [False, True])
def test_a_bayer_sample_keeps_every_pixel_in_its_channel(order, step, padded):
    """Each channel holds a distinct constant; the sample (also of a row-padded buffer, as a Pi delivers)
    must keep the Bayer order and take exactly every `step`-th cell."""
    buffer = np.zeros((36, 52 + (8 if padded else 0)), dtype=np.uint16)
    raw = buffer[:, :52]
    for k, plane in enumerate(planes(raw, order).values()):
        plane[...] = 100 + k
    raw[0::2 * step, 0::2 * step] += 1000  # marks the top-left pixel of every sampled cell
    sample = bayer_sample(raw, step)
    assert sample.shape == (2 * -(-18 // step), 2 * -(-26 // step))
    hist = channel_histograms(sample, order, 12)
    top_left = CHANNELS.index(next(n for n, yx in plane_offsets(order).items() if tuple(yx) == (0, 0)))
    for k in range(4):
        level = 100 + k + (1000 if k == top_left else 0)
        assert hist[k, level] == sample.size // 4, (k, level)


def test_stream_statistics_match_every_pixel_on_a_simulated_frame():
    """Ground truth: the full count of the simulator's raw frame (chart scene, 1640x1232, shading on)."""
    cam = SimulatedCamera("imx219", scene="chart", pacing=False, seed=3)
    cam.configure((320, 240), 30.0, raw_size=(1640, 1232))
    cam.set_controls({"AeEnable": False, "ExposureTime": 20_000, "AnalogueGain": 2.0})  # some highlights clip
    cam.start()
    try:
        for _ in range(4):  # past the sensor's control delay
            frame = cam.capture()
    finally:
        cam.close()
    full = compute_stats(frame.raw, frame.bayer_order, frame.bit_depth, frame.black_level)
    fast = compute_stream_stats(frame.raw, frame.bayer_order, frame.bit_depth, frame.black_level)
    assert fast.sample_step == 4 and full.sample_step == 1
    assert fast.pixels.sum() <= STREAM_SAMPLE_PIXELS
    np.testing.assert_allclose(fast.mean(), full.mean(), rtol=0.01)
    np.testing.assert_allclose(fast.level_at(99.9), full.level_at(99.9), rtol=0.02)
    np.testing.assert_allclose(fast.level_at(50), full.level_at(50), rtol=0.02)
    np.testing.assert_allclose(fast.clipped_fraction(), full.clipped_fraction(), atol=0.005)
    wire = fast.to_wire()
    assert wire["sample_step"] == 4 and wire["hist"]["dtype"] == "<u2"  # ≤ 33k counts per channel fit
    np.testing.assert_array_equal(unpack_array(wire["hist"]), fast.histograms.reshape(4, 256, -1).sum(axis=2))
