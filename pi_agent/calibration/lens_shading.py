"""Lens shading table from a uniform white target, fitted for the ISP's bilinear interpolation.

The published method (OpenFlexure, the libcamera CTT) takes each cell's mean and uses 1/mean as the table
value. But the ISP does not apply a cell's value across its cell: it treats it as the gain AT THE CELL
CENTRE and interpolates bilinearly between centres, flat beyond the outermost ones. A curved fall-off
sampled at centres and interpolated linearly is corrected too little between centres and, worse, at the
edge half-cells, where the corner shading keeps falling but the gain stays flat: ≈ 1 % residual and −8 %
corners at 50 % corner shading. Here the table is the least-squares solution of
    upsample_table(t)[site pixels] · shading(site pixels) ≈ 1
over every pixel of the channel — a linear problem in t (the interpolation is linear and separable:
upsample(t) = Wy · t · Wxᵀ), solved exactly through its normal equations. Green uses both green sites.

Tables are returned the way libcamera's rpi.alsc takes them: luminance (≥ 1, the green gain), Cr and Cb
(red and blue relative to green; only their shape matters, the absolute level goes to ColourGains), all
within the hardware's gain limit, rounded to the tuning file's 3 decimals.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import cv2
import numpy as np
import simplejpeg
from protocol import pack_array

from ..bayer import plane_offsets
from ..camera.base import LensShadingTable
from ..camera.isp import upsample_table
from ..camera.tuning import GRIDS, MAX_GAIN, minimal_tuning, with_lens_shading
from .frames import CalibrationError, FrameSource, SensorControls, StillFrameSource, settle
from .targets import check_flattened, check_white_brightness
from .white_balance import SRGB_TO_LINEAR, linear_neutral_ratios, linearising_lut, raw_channel_means, shading_gain_maps

log = logging.getLogger(__name__)

FRAMES = 8  # white frames averaged (shot noise per cell ≪ 0.1 % already at one frame; 8 also averages flicker)
CHECK_FRAMES = 4
STILL_FRAMES = 2  # full-resolution stills have 4x the pixels of a binned frame: 2 average as much noise as 8
STILL_CHECK_FRAMES = 2
THUMBNAIL = (160, 120)
MEASURE_GRID = (16, 12)  # the accuracy figures are per-channel cell means on this grid (the definition)


# ---------------------------------------------------------------------------------------------- capture
def average_white(source: FrameSource, frames: int = FRAMES, check_cancelled: Callable[[], None] = lambda: None,
                  progress: Callable[[float], None] = lambda f: None) -> tuple[np.ndarray, Any]:
    """The mean raw mosaic of `frames` frames (float32, black level NOT yet subtracted) and the last frame."""
    total = None
    last = None
    for i in range(frames):
        check_cancelled()
        frame, stats = source.next()
        last = frame
        clipped = float(stats.histograms[:, -1].sum() / max(stats.pixels.sum(), 1))
        if clipped > 0.001:
            raise CalibrationError(f"{clipped:.2%} of the white target is clipped; calibrate exposure first")
        total = frame.raw.astype(np.float32) if total is None else total + frame.raw
        progress((i + 1) / frames)
    mean = total / np.float32(frames)
    check_white_brightness(mean, last.bayer_order, last.black_level, last.bit_depth)
    return mean, last


# ---------------------------------------------------------------------------------------------- fitting
def interpolation_weights(n_cells: int, n_pixels: int, extent: int | None = None) -> np.ndarray:
    """(n_pixels, n_cells) weights of upsample_table along one axis: row p gives pixel p's mix of cells.
    `extent` (≥ n_pixels): the table is spread over that many pixels, of which the image is the first
    n_pixels (see isp_extent)."""
    eye = np.eye(n_cells, dtype=np.float32)
    return upsample_table(eye, (extent or n_pixels, n_cells))[:n_pixels].astype(np.float64)


def isp_gain_map(cells: np.ndarray, raw_shape: tuple[int, int], extent: tuple[int, int] | None = None) -> np.ndarray:
    """Per-pixel gains of a cell table as the ISP applies it over an image of `raw_shape` (h, w), the table
    spread over `extent` (h, w) pixels (None: the image)."""
    h, w = raw_shape
    eh, ew = extent or raw_shape
    return upsample_table(cells, (eh, ew))[:h, :w]


VC4_CELL_SIZES = (16, 32, 64, 128, 256)


def isp_extent(camera, size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) pixels the ISP spreads the table over for an image of `size` (w, h).

    The Pi 4's ISP (libcamera src/ipa/rpi/vc4/vc4.cpp applyLS/resampleTable) takes a corner-sampled grid of
    the smallest cell of 16..256 px with < 64 × ≤ 48 cells, and spreads the 16×12 table over its vertices:
    over ceil(w/cell)·cell pixels, e.g. 1664 for 1640 (1.5 % wider than the image; the same ratio in IMX219's
    two full-field modes). A fit that ignores it leaves ≈ 1 % at the far edges. The Pi 5 (pisp.cpp) spreads
    its 32×32 table over the image exactly, and so does the simulator's ISP (camera/isp.py), whose backend
    has no libcamera tuning."""
    w, h = int(size[0]), int(size[1])
    if camera.tuning_target != "bcm2835" or camera.tuning() is None:
        return h, w
    for cell in VC4_CELL_SIZES:
        cw, ch = -(-w // cell), -(-h // cell)
        if cw < 64 and ch <= 48:
            return ch * cell, cw * cell
    return h, w


def fit_table(planes: list[tuple[np.ndarray, int, int]], raw_shape: tuple[int, int],
              grid: tuple[int, int], extent: tuple[int, int] | None = None) -> np.ndarray:
    """Table t (rows, columns) minimising Σ (isp_gain_map(t)·s − 1)² over the site pixels of one channel.

    planes: (black-subtracted plane, row offset, column offset) for each Bayer site of the channel;
    extent: (h, w) the table is spread over (isp_extent; None: the image).
    """
    cols, rows = grid
    h, w = raw_shape
    eh, ew = extent or raw_shape
    wy, wx = interpolation_weights(rows, h, eh), interpolation_weights(cols, w, ew)
    normal = np.zeros((rows * cols, rows * cols))
    rhs = np.zeros((rows, cols))
    for plane, dy, dx in planes:
        s = plane.astype(np.float64)
        a, b = wy[dy::2][: s.shape[0]], wx[dx::2][: s.shape[1]]
        bb = (b[:, :, None] * b[:, None, :]).reshape(b.shape[0], cols * cols)
        aa = (a[:, :, None] * a[:, None, :]).reshape(a.shape[0], rows * rows)
        c = (s * s) @ bb  # (H, cols²): Σ_x s² B[x,j] B[x,l] per row
        m = aa.T @ c  # (rows², cols²)
        normal += m.reshape(rows, rows, cols, cols).transpose(0, 2, 1, 3).reshape(rows * cols, rows * cols)
        rhs += a.T @ s @ b
    normal += np.eye(rows * cols) * (1e-9 * np.trace(normal) / (rows * cols))
    return np.linalg.solve(normal, rhs.ravel()).reshape(rows, cols)


def channel_planes(mean_raw: np.ndarray, bayer_order: str, black_level: int) -> dict[str, list]:
    """{"R"|"G"|"B": [(black-subtracted plane, dy, dx), ...]}; G has both green sites."""
    out: dict[str, list] = {"R": [], "G": [], "B": []}
    for name, (dy, dx) in plane_offsets(bayer_order).items():
        plane = mean_raw[dy::2, dx::2] - np.float32(black_level)
        if not np.all(np.isfinite(plane)) or float(plane.min()) <= 0:
            raise CalibrationError(f"the {name} plane has pixels at or below black: the target is not a lit, "
                                   "uniform white")
        out["G" if name.startswith("G") else name].append((plane, dy, dx))
    return out


def tables_from_gains(t_r: np.ndarray, t_g: np.ndarray, t_b: np.ndarray, grid: tuple[int, int],
                      limit: float, colour_temperature: int = 5000) -> tuple[LensShadingTable, dict[str, Any] | None]:
    """Per-channel gain tables → (luminance ≥ 1, Cr, Cb with min 1, rounded to 3 decimals; clamping).

    Every gain the ISP will apply (luminance, luminance·Cr, luminance·Cb) stays ≤ `limit` AFTER rounding
    (rounded down where rounding to nearest would cross it: 15.9996 must not be saved as 16.000 on vc4).
    The second value is None, or {"max_gain": the largest gain wanted, "limit", "cells": how many cells were
    clamped} when the shading needs more gain than the hardware holds."""
    if min(t_r.min(), t_g.min(), t_b.min()) <= 0 or not all(np.all(np.isfinite(t)) for t in (t_r, t_g, t_b)):
        raise CalibrationError("the fitted gains are not positive and finite: the target is not a lit, uniform white")
    lum = t_g / t_g.min()
    cr = (t_r / t_g) / (t_r / t_g).min()
    cb = (t_b / t_g) / (t_b / t_g).min()
    wanted = np.maximum(lum, np.maximum(lum * cr, lum * cb))
    over = wanted > limit + 5e-4  # beyond what rounding to the limit explains
    clamped = None
    if over.any():
        clamped = {"max_gain": round(float(wanted.max()), 3), "limit": limit, "cells": int(over.sum())}
        log.warning("lens shading gains reach %.2f; clamped to the hardware limit %.3f in %d cells",
                    wanted.max(), limit, int(over.sum()))

    def r3(a: np.ndarray) -> np.ndarray:
        return np.maximum(np.round(a, 3), 1.0)  # the minimum stays exactly 1 after rounding

    def floor3(a: np.ndarray) -> np.ndarray:
        return np.floor(a * 1000.0 + 1e-6) / 1000.0

    lum = r3(np.minimum(lum, limit))
    lum = np.where(lum > limit, floor3(np.full_like(lum, limit)), lum)
    cr, cb = r3(np.minimum(cr, limit / lum)), r3(np.minimum(cb, limit / lum))
    cr = np.where(lum * cr > limit, floor3(limit / lum), cr)
    cb = np.where(lum * cb > limit, floor3(limit / lum), cb)
    table = LensShadingTable(grid=grid, luminance=lum, cr=cr, cb=cb, colour_temperature=colour_temperature)
    return table, clamped


def fit_gains(mean_raw: np.ndarray, bayer_order: str, black_level: int, grid: tuple[int, int],
              extent: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Per-channel gain tables {R, G, B} that flatten a mean white raw mosaic through the ISP's interpolation
    (table spread over `extent`, see isp_extent); CalibrationError when the target is not uniform enough for
    any table to flatten it."""
    planes = channel_planes(mean_raw, bayer_order, black_level)
    t = {c: fit_table(planes[c], mean_raw.shape, grid, extent) for c in ("R", "G", "B")}
    corrected = {}
    for c in ("R", "G", "B"):
        gain = isp_gain_map(t[c], mean_raw.shape, extent)
        for plane, dy, dx in planes[c][:1]:
            corrected[c] = gain[dy::2, dx::2][: plane.shape[0], : plane.shape[1]] * plane
    check_flattened(corrected)
    return t


def fit_lens_shading(mean_raw: np.ndarray, bayer_order: str, black_level: int, grid: tuple[int, int],
                     limit: float) -> LensShadingTable:
    """The table that flattens a mean white raw mosaic through the ISP's interpolation (clamped if need be)."""
    t = fit_gains(mean_raw, bayer_order, black_level, grid)
    return tables_from_gains(t["R"], t["G"], t["B"], grid, limit)[0]


# ---------------------------------------------------------------------------------------------- checking
def cell_means(image: np.ndarray, grid: tuple[int, int] = MEASURE_GRID) -> np.ndarray:
    """(rows, cols, channels) means of an image over an even grid of cells."""
    cols, rows = grid
    h, w = image.shape[:2]
    ys = np.linspace(0, h, rows + 1).round().astype(int)
    xs = np.linspace(0, w, cols + 1).round().astype(int)
    sums = np.add.reduceat(np.add.reduceat(image.astype(np.float64), ys[:-1], axis=0), xs[:-1], axis=1)
    counts = np.diff(ys)[:, None, None] * np.diff(xs)[None, :, None]
    return sums / counts


def uniformity(linear_bgr: np.ndarray, grid: tuple[int, int] = MEASURE_GRID) -> dict[str, float]:
    """residual_pct: largest over channels of std/mean of the channel's cell means, in %; worst_cell_pct:
    largest deviation of any cell of any channel from its channel's mean, in %."""
    means = cell_means(linear_bgr, grid)
    rel = means / means.mean(axis=(0, 1), keepdims=True) - 1.0
    return {
        "residual_pct": round(float(100.0 * rel.std(axis=(0, 1)).max()), 4),
        "worst_cell_pct": round(float(100.0 * np.abs(rel).max()), 4),
        "corner_pct": round(float(100.0 * rel[[0, 0, -1, -1], [0, -1, 0, -1]].mean()), 4),
    }


def processed_white(source: FrameSource, frames: int, check_cancelled: Callable[[], None],
                    lut: np.ndarray = SRGB_TO_LINEAR) -> tuple[np.ndarray, np.ndarray]:
    """Mean linear-light processed image (the ISP's gamma undone per pixel with `lut`, see
    white_balance.linearising_lut) of `frames` fresh frames, and the last processed frame (uint8 BGR)."""
    frame, _ = source.fresh()
    total = lut[frame.main].astype(np.float64)
    for _ in range(frames - 1):
        check_cancelled()
        frame, _ = source.next()
        total += lut[frame.main]
    return total / frames, frame.main


def thumbnail_jpeg(main: np.ndarray) -> bytes:
    small = cv2.resize(main, THUMBNAIL, interpolation=cv2.INTER_AREA)
    return simplejpeg.encode_jpeg(np.ascontiguousarray(small), quality=85, colorspace="BGR")


def put_back_table(camera, table: LensShadingTable | None) -> None:
    """Put `table` back in force; None: the camera's own (stock) lens shading."""
    if table is None:
        camera.clear_lens_shading()
    else:
        camera.apply_lens_shading(table)


# ---------------------------------------------------------------------------------------------- white balance kept
def kept_colour_gains(camera, mean_raw: np.ndarray, frame, table: LensShadingTable,
                      region: str) -> dict[str, Any] | None:
    """ColourGains that keep the white balance in force neutral once `table` replaces the table in force.

    Why: libcamera divides Cr and Cb by their minimum, so a new table adds red and blue gain where its
    Cr/Cb are above their minimum (10-20 % at the centre for ordinary lenses); a white balance measured
    under the old table would then be wrong. The processed R/G in `region` is ColourGains_r x (the
    shading-weighted raw R mean / the weighted G mean), so the gains are rescaled by the change of that
    ratio, computed from the white frames just averaged. None when AWB runs (it adapts by itself) or no
    manual ColourGains are requested."""
    requested = camera.controls()
    gains = requested.get("ColourGains")
    if requested.get("AwbEnable", True) or not gains:
        return None
    shape = mean_raw.shape
    old = raw_channel_means(mean_raw, frame.bayer_order, frame.black_level, region,
                            shading_gain_maps(camera.lens_shading, shape))
    new = raw_channel_means(mean_raw, frame.bayer_order, frame.black_level, region,
                            shading_gain_maps(table, shape))
    g_old, g_new = 0.5 * (old["Gr"] + old["Gb"]), 0.5 * (new["Gr"] + new["Gb"])
    r = float(gains[0]) * (old["R"] / g_old) / (new["R"] / g_new)
    b = float(gains[1]) * (old["B"] / g_old) / (new["B"] / g_new)
    return {"colour_gains_before": [round(float(gains[0]), 5), round(float(gains[1]), 5)],
            "colour_gains": [round(r, 5), round(b, 5)], "region": region}


# ---------------------------------------------------------------------------------------------- geometry
def full_field_source(source: FrameSource) -> tuple[FrameSource, dict[str, Any]]:
    """A source that sees the whole pixel array, and a note of where the table was measured.

    Why: libcamera's rpi.alsc table covers the FULL pixel array and is resampled to each mode's crop
    (alsc.cpp resampleCalTable). A table fitted over a cropped mode's raw (IMX219 1920x1080 reads the centre
    1920x1080 of 3280x2464) would put the crop's fall-off at the array's edges: wrong in every mode. So in
    a cropped mode the table is measured on full-resolution stills instead, and the report says so."""
    camera = source.camera
    sensor = camera.sensor
    mode = SensorControls(camera).mode
    full = sensor.full_array
    if sensor.full_field(mode):
        geometry = {"coordinates": "full pixel array", "full_array": list(full), "measured_size": list(mode.size),
                    "measured_crop": list(mode.crop)}
        return source, {"switched": False, "mode": list(mode.size), "geometry": geometry}
    still_mode = sensor.full_resolution_mode
    why = (f"the stream's mode {mode.size[0]}x{mode.size[1]} reads only {mode.crop[2]}x{mode.crop[3]} of the "
           f"{full[0]}x{full[1]} pixel array, and a lens shading table covers the whole array: measured on "
           f"full-resolution {still_mode.size[0]}x{still_mode.size[1]} stills")
    log.info("lens shading: %s", why)
    geometry = {"coordinates": "full pixel array", "full_array": list(full), "measured_size": list(still_mode.size),
                "measured_crop": list(still_mode.crop)}
    still = StillFrameSource(camera, source.min_frame_timeout)
    return still, {"switched": True, "mode": list(still_mode.size), "stream_mode": list(mode.size), "why": why,
                   "geometry": geometry}


# ---------------------------------------------------------------------------------------------- the step
def calibrate_lens_shading(source: FrameSource, frames: int = FRAMES,
                           progress: Callable[[str, float, dict], None] = lambda s, f, d: None,
                           check_cancelled: Callable[[], None] = lambda: None,
                           white_balance_region: str = "centre") -> tuple[dict[str, Any], LensShadingTable, dict]:
    """Average white frames, fit, apply through the backend, measure the processed result.

    With manual ColourGains in force (a white balance), they are rescaled so that the white balance stays
    neutral under the new table (`kept_colour_gains`), and its neutral error is measured again on the
    white target in `white_balance_region`; the report's "white_balance" holds it.

    Returns (report, table, tuning): the report for the viewer, the table now in force, and the tuning
    dict to export (the backend's stock tuning with rpi.alsc rewritten, else a minimal one)."""
    camera = source.camera
    target = camera.tuning_target
    grid, limit = GRIDS[target], MAX_GAIN[target]
    started = time.monotonic()
    stream_source, source, measured_in = source, *full_field_source(source)
    if measured_in.get("switched"):
        frames, check_frames = min(frames, STILL_FRAMES), STILL_CHECK_FRAMES
        progress("lens_shading", 0.0, {"stage": measured_in["why"]})
    else:
        check_frames = CHECK_FRAMES
    lut = linearising_lut(camera)
    before_linear, before_main = processed_white(source, check_frames, check_cancelled, lut)
    before = uniformity(before_linear)
    progress("lens_shading", 0.1, {"stage": "measured before", **before})
    mean_raw, last = average_white(source, frames, check_cancelled,
                                   lambda f: progress("lens_shading", 0.1 + 0.4 * f, {"stage": "averaging white frames"}))
    check_cancelled()
    extent = isp_extent(camera, (mean_raw.shape[1], mean_raw.shape[0]))
    t = fit_gains(mean_raw, last.bayer_order, last.black_level, grid, extent)
    table, clamped = tables_from_gains(t["R"], t["G"], t["B"], grid, limit)
    progress("lens_shading", 0.6, {"stage": "fitted", "grid": list(grid)})
    kept = kept_colour_gains(camera, mean_raw, last, table, white_balance_region)
    previous_table, previous_gains = camera.lens_shading, camera.controls().get("ColourGains")
    camera.apply_lens_shading(table)
    if kept is not None:
        camera.set_controls({"AwbEnable": False, "ColourGains": tuple(kept["colour_gains"])})
        settle(stream_source, {"ColourGains": tuple(kept["colour_gains"])}, SensorControls(camera), check_cancelled)
    after_linear, after_main = processed_white(source, check_frames, check_cancelled, lut)
    after = uniformity(after_linear)
    if clamped is not None:
        put_back_table(camera, previous_table)
        if kept is not None:
            camera.set_controls({"AwbEnable": False, "ColourGains": tuple(previous_gains)})
        raise CalibrationError(
            f"the lens shading is too strong for this ISP: the table needs gains up to {clamped['max_gain']:g}, "
            f"the hardware holds {limit:g}; clamped in {clamped['cells']} cells it leaves {after['residual_pct']:.2f} % "
            f"residual (worst cell {after['worst_cell_pct']:.1f} %) on the processed image. Nothing was saved and "
            "the previous table is back in force; use more even illumination or a lens with less vignetting")
    if kept is not None:
        # measured on the result now in force: the white target's processed colour in the region the
        # white balance was measured on
        rg, bg = linear_neutral_ratios(after_linear, white_balance_region)
        kept["neutral_error_pct"] = round(100.0 * max(abs(rg - 1.0), abs(bg - 1.0)), 3)
        kept["processed_rg"], kept["processed_bg"] = round(rg, 5), round(bg, 5)
    stock = camera.tuning()
    tuning = with_lens_shading(stock if stock is not None else minimal_tuning(target), table)
    progress("lens_shading", 1.0, {"stage": "applied", **after})
    report = {
        "grid": list(grid),
        "target": target,
        "residual_pct": after["residual_pct"],
        "worst_cell_pct": after["worst_cell_pct"],
        "corner_pct": after["corner_pct"],
        "before": before,
        "measured_on": ("processed " + ("full-resolution stills" if measured_in.get("switched") else "main stream")
                        + ", the ISP's gamma undone (linear light), per-channel 16x12 cell means"),
        "measured_in": measured_in,
        "geometry": measured_in["geometry"],
        "frames_averaged": frames,
        "tuning_base": "stock" if stock is not None else "minimal",
        "seconds": round(time.monotonic() - started, 3),
        "luminance": pack_array(table.luminance.astype(np.float32)),
        "cr": pack_array(table.cr.astype(np.float32)),
        "cb": pack_array(table.cb.astype(np.float32)),
        "gain_range": [float(table.luminance.min()), float(max((table.luminance * table.cr).max(),
                                                                  (table.luminance * table.cb).max()))],
        "white_balance": kept,
        "before_jpeg": thumbnail_jpeg(before_main),
        "after_jpeg": thumbnail_jpeg(after_main),
    }
    log.info("lens shading %dx%d: residual %.3f %% (before %.3f %%), worst cell %.3f %%",
             grid[0], grid[1], after["residual_pct"], before["residual_pct"], after["worst_cell_pct"])
    return report, table, tuning
