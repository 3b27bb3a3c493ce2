"""White balance from raw: ColourGains = (G/R, G/B) of black-subtracted channel means over a neutral region.

The ISP applies black level, then the lens shading gains, then ColourGains. So with a lens shading table in
force each raw pixel is weighted by the table's gain for its channel AFTER black subtraction (the published
routine multiplied before subtracting the pedestal, which tints the result). The result is checked where
it matters: R/G and B/G of the same region in the processed output (linearised), which must be 1.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np

from ..bayer import plane_offsets
from ..camera.isp import upsample_table
from ..camera.tuning import find_algo
from .frames import CalibrationError, FrameSource, SensorControls, settle
from .targets import check_colour_gains, check_neutral_region

log = logging.getLogger(__name__)

REGIONS = ("centre", "flat")
FRAMES = 2


def _srgb_to_linear_lut() -> np.ndarray:
    x = np.arange(256, dtype=np.float64) / 255.0
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


SRGB_TO_LINEAR = _srgb_to_linear_lut()


def linearising_lut(camera) -> np.ndarray:
    """(256,) float32: processed 8-bit value → linear light (1 = white), undoing the gamma the camera's ISP
    applied: the tuning's rpi.contrast `gamma_curve` (16-bit in → 16-bit out pairs) where the backend has a
    tuning (a Pi), else sRGB (the simulator's ISP). Why: accuracy measured on the processed image must undo
    the curve really used; sRGB on a Pi's curve reads a 1.25 % residual where there is 0.5 %.
    (The Pi's adaptive contrast, ce_enable, would change the curve frame by frame: leave it off.)"""
    try:
        tuning = camera.tuning()
    except Exception:  # a backend that cannot read its tuning: the simulator's sRGB
        tuning = None
    curve = None
    if tuning:
        try:
            curve = (find_algo(tuning, "rpi.contrast") or {}).get("gamma_curve")
        except ValueError:
            curve = None
    if not curve:
        return SRGB_TO_LINEAR
    points = np.asarray(curve, dtype=np.float64).reshape(-1, 2)
    order = np.argsort(points[:, 1], kind="stable")
    y = (np.arange(256, dtype=np.float64) + 0.0) / 255.0 * 65535.0
    x = np.interp(y, points[order, 1], points[order, 0])
    return (x / 65535.0).astype(np.float32)


def region_slices(shape: tuple[int, int], region: str) -> tuple[slice, slice]:
    """Rows and columns of a region: "centre" is the middle 20 % × 20 %, "flat" the whole field."""
    h, w = shape[:2]
    if region == "flat":
        return slice(0, h), slice(0, w)
    if region == "centre":
        return slice(int(h * 0.4), int(h * 0.6)), slice(int(w * 0.4), int(w * 0.6))
    raise CalibrationError(f"unknown white balance region {region!r}; use one of {', '.join(REGIONS)}")


def shading_gain_maps(table, raw_shape: tuple[int, int]) -> dict[str, np.ndarray] | None:
    """Per-pixel lens shading gains the ISP applies to R, G and B (None: no table in force)."""
    if table is None:
        return None
    r, g, b = table.channel_gains()
    return {name: upsample_table(cells, raw_shape) for name, cells in (("R", r), ("G", g), ("B", b))}


def _region_site_values(raw: np.ndarray, bayer_order: str, black_level: int, region: str,
                        gains: dict[str, np.ndarray] | None):
    """(name, black-subtracted values of that Bayer site over `region`, times its shading gain if given)."""
    rows, cols = region_slices(raw.shape, region)
    sub = raw[rows, cols].astype(np.float32) - np.float32(black_level)
    for name, (y, x) in plane_offsets(bayer_order).items():
        # keep the plane's sites inside the region (the slice may start on an odd row or column)
        oy, ox = (y - rows.start) % 2, (x - cols.start) % 2
        values = sub[oy::2, ox::2]
        if gains is not None:
            values = values * gains["G" if name.startswith("G") else name][rows, cols][oy::2, ox::2]
        yield name, values


def raw_channel_means(raw: np.ndarray, bayer_order: str, black_level: int, region: str,
                      gains: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """Black-subtracted means of R, Gr, Gb and B over `region`, each pixel times its shading gain if given."""
    return {name: float(values.mean())
            for name, values in _region_site_values(raw, bayer_order, black_level, region, gains)}


def region_sites(raw: np.ndarray, bayer_order: str, black_level: int, region: str,
                 gains: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Black-subtracted R, G (the Gr sites) and B site values of `region`, each times its shading gain if
    given, cut to one shape: the same Bayer cells for the three, so block means compare colour cell by cell."""
    out = {("G" if name == "Gr" else name): values
           for name, values in _region_site_values(raw, bayer_order, black_level, region, gains) if name != "Gb"}
    h = min(v.shape[0] for v in out.values())
    w = min(v.shape[1] for v in out.values())
    return {k: v[:h, :w] for k, v in out.items()}


def processed_neutral_error(main: np.ndarray, region: str, lut: np.ndarray = SRGB_TO_LINEAR) -> tuple[float, float]:
    """(R/G, B/G) of `region` in a processed BGR frame, on linear light (the ISP's gamma undone per pixel
    with `lut`, see linearising_lut)."""
    rows, cols = region_slices(main.shape, region)
    return linear_neutral_ratios(lut[main[rows, cols]])


def linear_neutral_ratios(linear_bgr: np.ndarray, region: str = "flat") -> tuple[float, float]:
    """(R/G, B/G) of `region` of a linear-light BGR image."""
    rows, cols = region_slices(linear_bgr.shape, region)
    linear = linear_bgr[rows, cols]
    b, g, r = (float(linear[..., i].mean()) for i in range(3))
    if g <= 0:
        raise CalibrationError("the processed image is black in the neutral region")
    return r / g, b / g


def calibrate_white_balance(source: FrameSource, region: str = "centre", frames: int = FRAMES,
                            progress: Callable[[str, float, dict], None] = lambda s, f, d: None,
                            check_cancelled: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Set ColourGains (AwbEnable off) from raw, then measure the processed result; returns the report."""
    region_slices((2, 2), region)  # validate early
    camera = source.camera
    controls = SensorControls(camera)
    sums: dict[str, float] = {}
    white = None
    for i in range(frames):
        check_cancelled()
        frame, _ = source.next()
        white = (1 << frame.bit_depth) - 1
        gains = shading_gain_maps(camera.lens_shading, frame.raw.shape)
        rows, cols = region_slices(frame.raw.shape, region)
        clipped = float(np.mean(frame.raw[rows, cols] >= white))
        if clipped > 0.001:
            raise CalibrationError(f"the neutral region is clipped ({clipped:.1%} of its pixels at white); "
                                   "calibrate exposure first")
        if i == 0:
            check_neutral_region(region_sites(frame.raw, frame.bayer_order, frame.black_level, region, gains),
                                 float(white - frame.black_level))
        for name, value in raw_channel_means(frame.raw, frame.bayer_order, frame.black_level, region, gains).items():
            sums[name] = sums.get(name, 0.0) + value / frames
        progress("white_balance", 0.5 * (i + 1) / frames, {"frame": frame.sequence})
    green = 0.5 * (sums["Gr"] + sums["Gb"])
    colour_gains = (green / sums["R"], green / sums["B"])
    check_colour_gains(colour_gains)
    low, high, _ = camera.control_ranges().get("ColourGains", (0.0, 32.0, None))
    if not all(low < g <= high for g in colour_gains):
        raise CalibrationError(f"colour gains {colour_gains[0]:.3f}, {colour_gains[1]:.3f} are outside the "
                               f"camera's range {low}..{high}: is the region really neutral?")
    colour_gains = (round(colour_gains[0], 5), round(colour_gains[1], 5))
    camera.set_controls({"AwbEnable": False, "ColourGains": colour_gains})
    frame, _ = settle(source, {"ColourGains": colour_gains}, controls, check_cancelled)
    lut = linearising_lut(camera)
    ratios = [processed_neutral_error(frame.main, region, lut)]
    for _ in range(frames - 1):
        check_cancelled()
        frame, _ = source.next()
        ratios.append(processed_neutral_error(frame.main, region, lut))
    rg = float(np.mean([r for r, _ in ratios]))
    bg = float(np.mean([b for _, b in ratios]))
    error = 100.0 * max(abs(rg - 1.0), abs(bg - 1.0))
    progress("white_balance", 1.0, {"colour_gains": list(colour_gains), "neutral_error_pct": round(error, 3)})
    log.info("white balance: ColourGains %.4f, %.4f; processed R/G %.4f B/G %.4f", *colour_gains, rg, bg)
    return {
        "colour_gains": list(colour_gains),
        "neutral_error_pct": round(error, 3),
        "processed_rg": round(rg, 5),
        "processed_bg": round(bg, 5),
        "region": region,
        "lens_shading_in_force": camera.lens_shading is not None,
        "raw_means": {k: round(v, 3) for k, v in sums.items()},
    }
