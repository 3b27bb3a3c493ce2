"""Raw statistics of one frame: per-channel histogram, black-subtracted mean and percentile, clipping.

Percentiles come from the histogram (linear time, no sort). The full-depth histogram stays on the agent;
a coarser one (HIST_BINS bins) travels with each frame for the viewer's overlay.
"""

from __future__ import annotations

from dataclasses import dataclass

import functools
import threading

import cv2
import numpy as np

from .bayer import CHANNELS, channel_index_map, plane_offsets
from protocol import pack_array

HIST_BINS = 256


@dataclass
class RawStats:
    """Statistics of the four Bayer channels (CHANNELS order) of one raw frame."""

    histograms: np.ndarray  # (4, 2**bit_depth) int64 counts
    bit_depth: int
    black_level: int
    percentile: float = 99.9

    @property
    def white_level(self) -> int:
        return (1 << self.bit_depth) - 1

    @property
    def pixels(self) -> np.ndarray:
        return self.histograms.sum(axis=1)

    def mean(self) -> np.ndarray:
        """Black-subtracted mean per channel (the level sum is exact in int64, so this equals plane.mean())."""
        levels = np.arange(self.histograms.shape[1], dtype=np.int64)
        sums = (self.histograms.astype(np.int64) * levels).sum(axis=1)
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
        return {
            "channels": list(CHANNELS),
            "bit_depth": self.bit_depth,
            "black_level": self.black_level,
            "white_level": self.white_level,
            "hist": pack_array(coarse.astype(np.uint32)),
            "mean": [round(float(v), 3) for v in self.mean()],
            "percentile": self.percentile,
            "level": [round(float(v), 3) for v in self.level_at(self.percentile)],
            "clipped": [float(v) for v in self.clipped_fraction()],
        }


def histogram_percentile(histograms: np.ndarray, percentile: float) -> np.ndarray:
    """The level (bin index) at which each row's cumulative count first reaches `percentile` %."""
    cumulative = np.cumsum(histograms, axis=1)
    totals = cumulative[:, -1]
    wanted = np.ceil(totals * (percentile / 100.0)).clip(min=1)
    return np.array([np.searchsorted(c, w) for c, w in zip(cumulative, wanted)], dtype=np.float64)


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
    offsets = plane_offsets(bayer_order)
    out = np.empty((4, levels), dtype=np.int64)
    for i, name in enumerate(CHANNELS):
        y, x = offsets[name]
        plane = np.minimum(raw[y::2, x::2], levels - 1)
        out[i] = np.bincount(plane.ravel(), minlength=levels)[:levels]
    return out


def compute_stats(raw: np.ndarray, bayer_order: str, bit_depth: int, black_level: int,
                  percentile: float = 99.9) -> RawStats:
    return RawStats(channel_histograms(raw, bayer_order, bit_depth), bit_depth, black_level, percentile)
