"""Predicting the exposure statistic (the black-subtracted 99.9th percentile of raw) at another exposure.

Why not just scale the measured percentile: the raw signal is linear in exposure × gain, but a high
percentile is signal PLUS a noise tail, and shot noise grows only as √signal. From a dark measurement the
tail is a large part of the percentile (at 1 % of the target it is ≈ 40 %), so plain scaling lands 10–20 %
low and costs another iteration. Here the frame itself tells signal from noise: 4×4 blocks of each Bayer
plane give the local signal (their mean) and the noise at that signal (their variance, a one-frame photon
transfer curve σ² = α + β·S); the percentile at a new exposure is then the percentile of the predicted
mixture, solved for the exposure that puts it on the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ..bayer import CHANNELS, plane_offsets

BLOCK = 4
_MEDIAN_CHI2_15 = (1 - 2 / (9 * 15)) ** 3  # median of χ²₁₅/15: corrects the median block variance


def _tail(z: np.ndarray) -> np.ndarray:
    """Upper tail of the standard normal, Q(z) = P(N(0,1) > z) (Abramowitz–Stegun 7.1.26, |error| < 1e-7)."""
    x = np.abs(z) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    half_erfc = 0.5 * poly * np.exp(-x * x)
    return np.where(z >= 0, half_erfc, 1.0 - half_erfc)


@dataclass
class SignalModel:
    """Block signals (black-subtracted means, raw units), pixels per block, and the noise model."""

    signal: np.ndarray  # unclipped blocks, highest first (only the top part is kept)
    pixels_total: int  # all pixels of the frame (the percentile's denominator)
    block_pixels: int
    alpha: float  # noise variance at zero signal (read noise + quantisation), raw units²
    beta: float  # noise variance per unit of signal (shot noise), raw units

    def fraction_above(self, level: float, scale: float, gain_ratio: float = 1.0) -> float:
        """Fraction of pixels above `level` once the signal is multiplied by `scale`, `gain_ratio` of it by
        analogue gain (which scales the read noise too)."""
        s = self.signal * scale
        sigma = np.sqrt(self.alpha * gain_ratio**2 + self.beta * gain_ratio * s + 1.0 / 12.0)
        return float(np.sum(_tail((level - s) / sigma)) * self.block_pixels / self.pixels_total)

    def scale_for(self, level: float, fraction: float, gain_ratio: float = 1.0) -> float:
        """The signal multiplier that puts the (1 − fraction) percentile at `level` (bisection on log scale)."""
        lo, hi = -12.0, 12.0
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            if self.fraction_above(level, math.exp(mid), gain_ratio) > fraction:
                hi = mid
            else:
                lo = mid
        return math.exp(0.5 * (lo + hi))


def signal_model(raw: np.ndarray, bayer_order: str, bit_depth: int, black_level: int,
                 keep: float = 0.15, stride: int = 2) -> SignalModel:
    """Block signals and a photon transfer fit from ONE raw frame (blocks touching white are left out).

    Every `stride`-th block row and column is used (an unbiased sample: a quarter of the work for the
    same prediction), and only the brightest `keep` of them enter the percentile prediction."""
    white = (1 << bit_depth) - 1
    means, variances, signals = [], [], []
    for name in CHANNELS:
        y, x = plane_offsets(bayer_order)[name]
        plane = raw[y::2, x::2]
        h, w = (plane.shape[0] // BLOCK) * BLOCK, (plane.shape[1] // BLOCK) * BLOCK
        small = (w // BLOCK, h // BLOCK)
        f = plane[:h, :w].astype(np.float32)
        block_means = cv2.resize(f, small, interpolation=cv2.INTER_AREA)  # exact 4x4 means
        block_sq = cv2.resize(f * f, small, interpolation=cv2.INTER_AREA)
        clipped_any = cv2.resize((f >= white).astype(np.float32), small, interpolation=cv2.INTER_AREA) > 0
        block_vars = np.maximum(block_sq - block_means * block_means, 0.0) * (BLOCK * BLOCK / (BLOCK * BLOCK - 1))
        # signal: block means smoothed over 3x3 blocks, so that their own noise (which a ×100 jump would
        # amplify into a false spread) is 12x below the pixel noise
        smooth = cv2.blur(block_means, (3, 3), borderType=cv2.BORDER_REFLECT)
        keep_blocks = ~clipped_any[::stride, ::stride].ravel()
        means.append(block_means[::stride, ::stride].ravel()[keep_blocks] - black_level)
        variances.append(block_vars[::stride, ::stride].ravel()[keep_blocks])
        signals.append(smooth[::stride, ::stride].ravel()[keep_blocks] - black_level)
    mean = np.concatenate(means).astype(np.float64)
    var = np.concatenate(variances).astype(np.float64)
    alpha, beta = _fit_noise(mean, var)
    signal = np.concatenate(signals).astype(np.float64)
    order = np.argsort(signal)[::-1]
    top = order[: max(1, int(len(order) * keep))]
    return SignalModel(signal=np.maximum(signal[top], 0.0), pixels_total=int(raw.size), block_pixels=BLOCK * BLOCK * stride**2,
                       alpha=alpha, beta=beta)


def _fit_noise(mean: np.ndarray, var: np.ndarray, bins: int = 24) -> tuple[float, float]:
    """σ² = α + β·S fitted to the median block variance in signal bins (medians ignore edges in the scene)."""
    if mean.size < 4 * bins:
        return 1.0, 0.2
    edges = np.quantile(mean, np.linspace(0.0, 1.0, bins + 1))
    index = np.clip(np.searchsorted(edges, mean, side="right") - 1, 0, bins - 1)
    xs, ys, ws = [], [], []
    for b in range(bins):
        sel = index == b
        if sel.sum() < 20:
            continue
        xs.append(float(np.median(mean[sel])))
        ys.append(float(np.median(var[sel])) / _MEDIAN_CHI2_15)
        ws.append(float(sel.sum()))
    if len(xs) < 2 or max(xs) - min(xs) < 1e-6 * max(1.0, max(xs)):
        return max(float(np.median(var)) / _MEDIAN_CHI2_15, 0.1), 0.0
    x, y, w = np.array(xs), np.array(ys), np.sqrt(np.array(ws))
    design = np.stack([np.ones_like(x), x], axis=1) * w[:, None]
    (alpha, beta), *_ = np.linalg.lstsq(design, y * w, rcond=None)
    if beta < 0:  # a flat curve: no shot-noise evidence
        return max(float(np.average(y, weights=w)), 0.1), 0.0
    return max(float(alpha), 0.0), float(beta)
