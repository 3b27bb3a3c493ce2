"""Raw statistics of one frame: per-channel histogram, black-subtracted mean and percentile, clipping.

Percentiles come from the histogram (linear time, no sort). The full-depth histogram stays on the agent;
a coarser one (HIST_BINS bins) travels with each frame for the viewer's overlay.

Two precisions: calibration and snapshots use every pixel (`compute_stats`); the overlay of every streamed
frame uses a regular sample of whole 2×2 Bayer cells (`compute_stream_stats`, ≈ STREAM_SAMPLE_PIXELS), the way
an ISP's statistics block works on a decimated image: the figures a viewer shows do not move, and the agent
stops spending several JPEG encodes' worth of CPU per frame on them (docs/benchmarks.md, "stats").
"""

from __future__ import annotations

from dataclasses import dataclass

import functools
import threading

import cv2
import numpy as np

from .bayer import CHANNELS, MONO, channel_index_map, plane_offsets
from protocol import pack_array

HIST_BINS = 256
COMPACT_HIST_BINS = 32  # the stream's default histogram: 32 bins per channel, one byte each
STREAM_SAMPLE_PIXELS = 1 << 17  # ≈ 131k pixels (≈ 33k per channel): percentiles to 0.1 %, means far better


@dataclass
class RawStats:
    """Statistics of the four Bayer channels (CHANNELS order) of one raw frame, or of its one channel "Y"
    (a monochrome sensor: `histograms` has one row)."""

    histograms: np.ndarray  # (4, 2**bit_depth) int64 counts; (1, 2**bit_depth) for mono
    bit_depth: int
    black_level: int
    percentile: float = 99.9
    sample_step: int = 1  # 1: every pixel; n: every n-th 2×2 Bayer cell across and down

    @property
    def white_level(self) -> int:
        return (1 << self.bit_depth) - 1

    @functools.cached_property
    def pixels(self) -> np.ndarray:
        """Pixels counted per channel (the histograms are not changed after construction)."""
        return self.histograms.sum(axis=1)

    def mean(self) -> np.ndarray:
        """Black-subtracted mean per channel (the level sum is exact in int64, so this equals plane.mean())."""
        sums = self.histograms.astype(np.int64, copy=False) @ _levels(self.histograms.shape[1])
        return sums / np.maximum(self.pixels, 1) - self.black_level

    def level_at(self, percentile: float) -> np.ndarray:
        """Black-subtracted `percentile` per channel, from the cumulative histogram."""
        return histogram_percentile(self.histograms, percentile) - self.black_level

    def pooled_level_at(self, percentile: float) -> float:
        """Black-subtracted `percentile` of all four channels pooled (the exposure statistic)."""
        pooled = self.histograms.sum(axis=0, keepdims=True)
        return float(histogram_percentile(pooled, percentile)[0]) - self.black_level

    def clipped_fraction(self) -> np.ndarray:
        return self.histograms[:, -1] / np.maximum(self.pixels, 1)

    def to_wire(self) -> dict:
        """The `stats` map of a frame message (see docs/protocol.md)."""
        counts = self.histograms
        group = max(1, counts.shape[1] // HIST_BINS)
        coarse = counts.reshape(counts.shape[0], -1, group).sum(axis=2)
        fits = self.pixels.max(initial=0) <= np.iinfo(np.uint16).max  # no bin exceeds its channel's pixels
        return {
            "channels": list(CHANNELS) if counts.shape[0] == len(CHANNELS) else ["Y"],
            "bit_depth": self.bit_depth,
            "black_level": self.black_level,
            "white_level": self.white_level,
            "hist": pack_array(coarse.astype(np.uint16 if fits else np.uint32)),
            "mean": [round(v, 3) for v in self.mean().tolist()],
            "percentile": self.percentile,
            "level": [round(v, 3) for v in self.level_at(self.percentile).tolist()],
            "clipped": self.clipped_fraction().tolist(),
            "sample_step": self.sample_step,
        }

    def to_compact_wire(self) -> dict:
        """The default `stats` map of a streamed frame, ≈ 0.2 kB instead of ≈ 2.3 kB (docs/protocol.md):
        COMPACT_HIST_BINS bins per channel as relative heights 0..255 of the fullest bin (`|u1`; a bin
        holding any pixel is never 0, so clipping and tails stay visible), mean and level rounded to whole
        raw units, and no `bit_depth` or `percentile` (the white level's depth and 99.9), nor `channels` but
        for a monochrome sensor (["Y"]; otherwise always R Gr Gb B). Viewers that ask for `full_stats` in hello get `to_wire()` instead."""
        counts = self.histograms
        group = max(1, counts.shape[1] // COMPACT_HIST_BINS)
        coarse = counts.reshape(counts.shape[0], -1, group).sum(axis=2)
        top = max(int(coarse.max(initial=0)), 1)
        heights = ((coarse * 255 + top - 1) // top).astype(np.uint8)  # exact ceil: nonzero counts stay nonzero
        wire = {
            "black_level": self.black_level,
            "white_level": self.white_level,
            "hist": pack_array(heights),
            "mean": [round(v) for v in self.mean().tolist()],
            "level": [round(v) for v in self.level_at(self.percentile).tolist()],
            "clipped": [round(v, 5) or 0 for v in self.clipped_fraction().tolist()],  # 0: one byte, not nine
            "sample_step": self.sample_step,
        }
        if counts.shape[0] != len(CHANNELS):  # a monochrome sensor: one row, named (the default is R Gr Gb B)
            wire["channels"] = ["Y"]
        return wire


def histogram_percentile(histograms: np.ndarray, percentile: float) -> np.ndarray:
    """The level (bin index) at which each row's cumulative count first reaches `percentile` %."""
    cumulative = np.cumsum(histograms, axis=1)
    wanted = np.ceil(cumulative[:, -1:] * (percentile / 100.0)).clip(min=1)
    return np.count_nonzero(cumulative < wanted, axis=1).astype(np.float64)  # bins before the first reaching it


@functools.lru_cache(maxsize=4)
def _levels(count: int) -> np.ndarray:
    levels = np.arange(count, dtype=np.int64)
    levels.setflags(write=False)
    return levels


# cv2.calcHist counts in float32, exact up to 2**24 per bin; beyond that (mosaics far above full
# resolution) the straightforward route below is used.
_EXACT_FLOAT32_COUNT = 1 << 24
_scratch = threading.local()


@functools.lru_cache(maxsize=8)
def _channel_offsets(shape: tuple[int, int], bayer_order: str, bit_depth: int) -> np.ndarray:
    """uint16 map adding channel_index << bit_depth to each pixel: the four histograms become one."""
    offsets = channel_index_map(shape, bayer_order).astype(np.uint16) << np.uint16(bit_depth)
    offsets.setflags(write=False)
    return offsets


def _scratch_buffer(shape: tuple[int, int]) -> np.ndarray:
    """A per-thread uint16 buffer of `shape`, reused so that each frame does not fault in fresh pages."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.shape != shape:
        buf = _scratch.buf = np.empty(shape, dtype=np.uint16)
    return buf


def channel_histograms(raw: np.ndarray, bayer_order: str, bit_depth: int) -> np.ndarray:
    """(4, 2**bit_depth) histograms of the R, Gr, Gb, B planes of a uint16 mosaic.

    One pass instead of four strided ones: add channel_index << bit_depth from a cached map (after clipping
    to white if any value exceeds the bit depth: those count as clipped), and count everything with one cv2.calcHist over
    4·2**bit_depth bins. ≈ 8× faster than four np.bincount calls, which first widen uint16 to int64.
    """
    levels = 1 << bit_depth
    if bayer_order == MONO:
        return channel_histograms_reference(raw, bayer_order, bit_depth)
    if raw.dtype != np.uint16 or raw.ndim != 2 or raw.shape[0] % 2 or raw.shape[1] % 2 or not 1 <= bit_depth <= 14:
        return channel_histograms_reference(raw, bayer_order, bit_depth)
    if raw.size // 4 >= _EXACT_FLOAT32_COUNT:
        return channel_histograms_reference(raw, bayer_order, bit_depth)
    offsets = _channel_offsets(raw.shape, bayer_order, bit_depth)
    tagged = _scratch_buffer(raw.shape)
    if cv2.minMaxLoc(raw)[1] >= levels:  # rare (corrupt or mislabelled depth): clip first
        np.minimum(raw, np.uint16(levels - 1), out=tagged)
        np.add(tagged, offsets, out=tagged)
    else:
        np.add(raw, offsets, out=tagged)
    counts = cv2.calcHist([tagged], [0], None, [4 * levels], [0, 4 * levels])
    return counts.reshape(4, levels).astype(np.int64)


def channel_histograms_reference(raw: np.ndarray, bayer_order: str, bit_depth: int) -> np.ndarray:
    """The straightforward route (four strided planes, np.bincount each): the ground truth of the tests."""
    levels = 1 << bit_depth
    if bayer_order == MONO:  # one channel: every pixel
        return np.bincount(np.minimum(raw, levels - 1).ravel(), minlength=levels)[:levels].astype(np.int64)[None]
    offsets = plane_offsets(bayer_order)
    out = np.empty((4, levels), dtype=np.int64)
    for i, name in enumerate(CHANNELS):
        y, x = offsets[name]
        plane = np.minimum(raw[y::2, x::2], levels - 1)
        out[i] = np.bincount(plane.ravel(), minlength=levels)[:levels]
    return out


def compute_stats(raw: np.ndarray, bayer_order: str, bit_depth: int, black_level: int,
                  percentile: float = 99.9) -> RawStats:
    """Statistics of every pixel (calibration, snapshots)."""
    return RawStats(channel_histograms(raw, bayer_order, bit_depth), bit_depth, black_level, percentile)


def sample_step(shape: tuple[int, int], pixels: int = STREAM_SAMPLE_PIXELS) -> int:
    """The smallest cell step n for which every n-th 2×2 cell across and down is at most `pixels` pixels."""
    h, w = shape
    step = 1
    while -(-h // (2 * step)) * -(-w // (2 * step)) * 4 > pixels:
        step += 1
    return step


def bayer_sample(raw: np.ndarray, step: int) -> np.ndarray:
    """Every `step`-th 2×2 cell across and down, as a smaller mosaic of the same Bayer order. Skipping whole
    cell rows is what saves the memory traffic (skipping columns alone would still read every cache line)."""
    if step == 1:
        return raw
    h, w = raw.shape
    if raw.dtype == np.uint16 and raw.strides[1] == 2 and raw.strides[0] % 4 == 0:
        # each uint32 is one half-cell (two pixels): a strided copy of whole items, 15× faster than 4-D
        cells = raw.view(np.uint32).reshape(h // 2, 2, w // 2)[::step, :, ::step]
        return np.ascontiguousarray(cells).view(np.uint16).reshape(2 * cells.shape[0], 2 * cells.shape[2])
    cells = raw.reshape(h // 2, 2, w // 2, 2)[::step, :, ::step, :]
    return np.ascontiguousarray(cells).reshape(2 * cells.shape[0], 2 * cells.shape[2])


def compute_stream_stats(raw: np.ndarray, bayer_order: str, bit_depth: int, black_level: int,
                         percentile: float = 99.9, pixels: int = STREAM_SAMPLE_PIXELS) -> RawStats:
    """Statistics of a regular sample of whole Bayer cells (the overlay of every streamed frame)."""
    if raw.ndim != 2 or raw.shape[0] % 2 or raw.shape[1] % 2:
        return compute_stats(raw, bayer_order, bit_depth, black_level, percentile)
    step = sample_step(raw.shape, pixels)
    histograms = channel_histograms(bayer_sample(raw, step), bayer_order, bit_depth)
    return RawStats(histograms, bit_depth, black_level, percentile, sample_step=step)
