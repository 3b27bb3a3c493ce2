"""Is this a calibration target? Checks that refuse a bad one with a sentence saying what is wrong.

Why: a lens shading table or a white balance fitted on a chart, a dark or clipped frame, or a strongly
coloured surface is wrong everywhere, and would be saved and reapplied at every start. Each check looks
at every Bayer site (a warm 2000 K white on a BGGR sensor has its blue sites at a sixth of green: a
check on site (0,0) alone calls that "too dark"), and raises CalibrationError naming the fault:
non-uniform, too dark, clipped, too coloured. Nothing is changed or saved when one fails.

Thresholds (fractions of the range above black, raw units):
- LST: the brightest channel's 99th percentile ≥ 10 % (exposure is sane) and every channel's ≥ 2 %
  (≥ 19 DN on 10-bit: the table's noise stays ≪ 0.1 % per cell).
- LST: after the fitted table, each channel's 32×24 block means vary ≤ 3 % (std): a smooth fall-off is
  flattened to ≈ 0.5 %, a chart is not.
- White balance: green mean ≥ 2 % and red/blue ≥ 0.5 % of range; per-block colour (R/G, B/G, shading
  gains applied) varies ≤ 8 % and brightness ≤ 25 % over the region (a strong lens's colour shading alone
  reaches ≈ 4 % over the centre 20 %; the chart's patches and gaps far more); colour gains within 0.5–8 (every
  blackbody light from 2000 K to 10000 K needs gains inside that on Pi sensors; a red or blue paper does not).
"""

from __future__ import annotations

import cv2
import numpy as np

from ..bayer import plane_offsets
from .frames import CalibrationError

LST_MIN_BRIGHTEST = 0.10
LST_MIN_CHANNEL = 0.02
LST_MAX_NONUNIFORM = 0.03
WB_MIN_GREEN = 0.02
WB_MIN_CHANNEL = 0.005
WB_MAX_COLOUR_SPREAD = 0.08
WB_MAX_BRIGHTNESS_SPREAD = 0.25
COLOUR_GAIN_RANGE = (0.5, 8.0)
BLOCKS = (32, 24)


def site_levels(mean_raw: np.ndarray, bayer_order: str, black_level: int, percentile: float = 99.0) -> dict[str, float]:
    """Black-subtracted `percentile` of each Bayer site (R, Gr, Gb, B), from every 4th pixel of its plane."""
    out = {}
    for name, (y, x) in plane_offsets(bayer_order).items():
        out[name] = float(np.percentile(mean_raw[y::2, x::2][::4, ::4], percentile)) - black_level
    return out


def check_white_brightness(mean_raw: np.ndarray, bayer_order: str, black_level: int, bit_depth: int) -> dict[str, float]:
    """Refuse a white target too dark in any channel; returns the per-site levels."""
    span = float((1 << bit_depth) - 1 - black_level)
    levels = site_levels(mean_raw, bayer_order, black_level)
    brightest = max(levels.values())
    text = ", ".join(f"{k} {v:.0f}" for k, v in levels.items())
    if brightest < LST_MIN_BRIGHTEST * span:
        raise CalibrationError(f"the white target is too dark: its brightest channel reaches {brightest / span:.1%} "
                               f"of the range (99th percentiles above black: {text}); calibrate exposure first")
    darkest = min(levels, key=levels.get)
    if levels[darkest] < LST_MIN_CHANNEL * span:
        raise CalibrationError(f"the white target is too dark in {darkest}: {levels[darkest] / span:.1%} of the range "
                               f"(99th percentiles above black: {text}); the light is too coloured for a table, "
                               "use a whiter light or a longer exposure")
    return levels


def block_means(image: np.ndarray, blocks: tuple[int, int] = BLOCKS) -> np.ndarray:
    """(rows, cols) means of a 2-D image over `blocks` = (columns, rows) nearly equal blocks."""
    return cv2.resize(np.ascontiguousarray(image, dtype=np.float32), blocks, interpolation=cv2.INTER_AREA)


def check_flattened(corrected: dict[str, np.ndarray]) -> float:
    """Refuse a target the fitted table cannot flatten: {channel: corrected plane} → worst block std (fraction)."""
    worst, which = 0.0, ""
    for name, plane in corrected.items():
        means = block_means(plane)
        spread = float(means.std() / max(means.mean(), 1e-9))
        if spread > worst:
            worst, which = spread, name
    if worst > LST_MAX_NONUNIFORM:
        raise CalibrationError(f"the target is not uniform: after the best table its {which} channel still varies by "
                               f"{worst:.1%} (std of {BLOCKS[0]}x{BLOCKS[1]} block means; a white target leaves < 1 %). "
                               "Aim at a uniform white field (a diffuser, blank slide or white card filling the view)")
    return worst


def check_neutral_region(channels: dict[str, np.ndarray], span: float) -> None:
    """Refuse a white balance region that is dark or not one uniform colour.

    channels: black-subtracted (R, G, B) site values of the region (each 2-D, shading gains applied)."""
    means = {k: float(v.mean()) for k, v in channels.items()}
    text = f"R {means['R']:.1f}, G {means['G']:.1f}, B {means['B']:.1f}"
    if means["G"] < WB_MIN_GREEN * span or min(means["R"], means["B"]) < WB_MIN_CHANNEL * span:
        raise CalibrationError(f"the neutral region is too dark for white balance (black-subtracted means {text}); "
                               "calibrate exposure first")
    blocks = {k: block_means(v, (8, 8)).astype(np.float64) for k, v in channels.items()}
    g = np.maximum(blocks["G"], 1e-6)
    brightness = float(blocks["G"].std() / blocks["G"].mean())
    colour = max(float((blocks[c] / g).std() / (blocks[c] / g).mean()) for c in ("R", "B"))
    if colour > WB_MAX_COLOUR_SPREAD or brightness > WB_MAX_BRIGHTNESS_SPREAD:
        raise CalibrationError(f"the neutral region is not uniform: its colour varies by {colour:.1%} and its "
                               f"brightness by {brightness:.1%} across it; aim it at one grey or white surface")


def check_colour_gains(gains: tuple[float, float]) -> None:
    """Refuse colour gains no ordinary light needs: the target itself is coloured."""
    low, high = COLOUR_GAIN_RANGE
    if not all(low <= g <= high for g in gains):
        raise CalibrationError(f"the neutral region is too coloured: it would need colour gains {gains[0]:.2f}, "
                               f"{gains[1]:.2f} (a grey or white under any light from 2000 K to 10000 K needs "
                               f"{low}..{high}); aim it at a grey or white surface")
