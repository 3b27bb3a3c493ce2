"""The simulated ISP: raw Bayer mosaic → BGR main stream, in the order the Pi's ISP works.

black level → lens shading gains (the table covers the full pixel array and is resampled to the mode's crop, as
libcamera does; then bilinear between cell centres) → colour gains → normalisation →
demosaic → resize to the main size → colour correction matrix → sRGB-like gamma.

Why it matters: calibration is judged by what the ISP makes of its tables, so the table interpolation here
(`upsample_table`) is the one calibration fits against, and `linear=True` exposes the linear-light image
before gamma on which accuracy is measured. Speed: the per-pixel gain map is cached and rebuilt only when
the table or the colour gains change; everything else is a handful of vectorised float32/uint16 passes.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from .base import LensShadingTable
from .limits import isp_crop

logger = logging.getLogger(__name__)

# OpenCV names Bayer patterns by the 2x2 cell starting at (1, 1), so a mosaic whose top-left is B (BGGR)
# is COLOR_BayerRG2BGR. OpenCV 5 adds unambiguous aliases (COLOR_BayerBGGR2BGR == COLOR_BayerRG2BGR).
BAYER_TO_CV2 = {
    "BGGR": cv2.COLOR_BayerRG2BGR,
    "RGGB": cv2.COLOR_BayerBG2BGR,
    "GBRG": cv2.COLOR_BayerGR2BGR,
    "GRBG": cv2.COLOR_BayerGB2BGR,
}

# A mild colour correction matrix (camera RGB → sRGB primaries), rows sum to 1 so neutrals stay neutral.
DEFAULT_CCM_RGB = np.array(
    [[1.60, -0.45, -0.15], [-0.30, 1.50, -0.20], [-0.05, -0.55, 1.60]], dtype=np.float32
)


def upsample_table(cells: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
    """Per-pixel values of a cell table the way the ISP interpolates it.

    cells: (rows, cols) values at the cell CENTRES, i.e. cell (i, j) sits at pixel
    ((i + 0.5)·H/rows, (j + 0.5)·W/cols) in pixel-centre coordinates; values are bilinear between
    neighbouring centres and flat (clamped) beyond the outermost centres. This is exactly
    `cv2.resize(..., INTER_LINEAR)` (half-pixel-centre convention), which is used. Calibration code fits
    tables against this function, so it is public. Returns float32 of shape out_shape = (h, w).
    """
    h, w = int(out_shape[0]), int(out_shape[1])
    src = np.ascontiguousarray(cells, dtype=np.float32)
    if src.ndim != 2 or min(src.shape) < 1:
        raise ValueError(f"cells must be a non-empty 2-D table, got shape {src.shape}")
    return cv2.resize(src, (w, h), interpolation=cv2.INTER_LINEAR)


def resample_to_crop(cells: np.ndarray, full_array: tuple[int, int], crop: tuple[int, int, int, int]) -> np.ndarray:
    """A lens shading table over the FULL pixel array → the same-size table of a mode reading `crop`.

    libcamera's rpi.alsc treats the tuning's tables as covering the whole sensor and, at every mode switch,
    resamples them to the mode's crop (src/ipa/rpi/controller/rpi/alsc.cpp `resampleCalTable`): cell i of the
    mode's table samples the full table at x = crop_x / full_w · cols + (i + 0.5) · crop_w / full_w − 0.5 (in
    cell units, bilinear, clamped at the edges). For a full-field mode this is the identity.
    cells: (rows, cols); full_array: (w, h); crop: (x, y, w, h) on the pixel array. Returns float64 (rows, cols).
    """
    cells = np.asarray(cells, dtype=np.float64)
    rows, cols = cells.shape
    fw, fh = full_array
    cx, cy, cw, ch = crop

    def axis(n: int, offset: float, share: float, full: float):
        pos = offset / full * n + (np.arange(n) + 0.5) * share / full - 0.5
        pos = np.clip(pos, 0.0, n - 1.0)
        lo = np.minimum(np.floor(pos).astype(int), n - 1)
        hi = np.minimum(lo + 1, n - 1)
        return lo, hi, pos - lo

    xlo, xhi, xf = axis(cols, cx, cw, fw)
    ylo, yhi, yf = axis(rows, cy, ch, fh)
    top = cells[ylo][:, xlo] * (1 - xf) + cells[ylo][:, xhi] * xf
    bottom = cells[yhi][:, xlo] * (1 - xf) + cells[yhi][:, xhi] * xf
    return top * (1 - yf[:, None]) + bottom * yf[:, None]


def bayer_channel_index(bayer_order: str) -> np.ndarray:
    """2x2 array of channel indices (0 R, 1 G, 2 B) for a Bayer order string such as "BGGR"; MONO (no colour
    filter) is all G: one panchromatic channel that colour gains leave alone."""
    if bayer_order == "MONO":
        return np.ones((2, 2), dtype=np.int64)
    if sorted(bayer_order) != sorted("BGGR") or len(bayer_order) != 4:
        raise ValueError(f"unknown Bayer order {bayer_order!r}")
    idx = {"R": 0, "G": 1, "B": 2}
    return np.array([[idx[bayer_order[0]], idx[bayer_order[1]]], [idx[bayer_order[2]], idx[bayer_order[3]]]])


def srgb_gamma_lut(size: int = 65536) -> np.ndarray:
    """uint8 LUT from linear [0, size) to sRGB-encoded 8-bit."""
    x = np.arange(size, dtype=np.float64) / (size - 1)
    y = np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)
    return np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)


_GAMMA_LUT = srgb_gamma_lut()


class Isp:
    """Raw → BGR for one configuration (raw size, Bayer order, bit depth, black level, main size)."""

    def __init__(
        self,
        raw_size: tuple[int, int],
        bayer_order: str,
        bit_depth: int,
        black_level: int,
        main_size: tuple[int, int] | None = None,
        ccm: np.ndarray | None = None,
        mode_crop: tuple[int, int, int, int] | None = None,
        full_array: tuple[int, int] | None = None,
    ):
        self.raw_size = (int(raw_size[0]), int(raw_size[1]))
        self.main_size = tuple(main_size) if main_size else self.raw_size
        # The part of the sensor output scaled to the main size: the largest centred rectangle of the main
        # size's aspect ratio, as the Pi's pipeline sets it (limits.isp_crop): a 16:9 main stream from a 4:3
        # mode is cropped, never squashed.
        self.crop = isp_crop(self.raw_size, self.main_size)
        self.bayer_order = bayer_order
        self.bit_depth = bit_depth
        self.black_level = int(black_level)
        self._sites = bayer_channel_index(bayer_order)
        self.mono = bayer_order == "MONO"  # no demosaic, no colour matrix: the main stream is grey in BGR
        self._cv_code = cv2.COLOR_GRAY2BGR if self.mono else BAYER_TO_CV2[bayer_order]
        ccm_rgb = DEFAULT_CCM_RGB if ccm is None else np.asarray(ccm, dtype=np.float32)
        self.ccm_bgr = ccm_rgb[::-1, ::-1].copy()  # same matrix acting on BGR vectors
        self._table: LensShadingTable | None = None
        # where the mode reads the pixel array: tables cover the full array and are resampled to this crop
        self.full_array = tuple(full_array) if full_array else self.raw_size
        self.mode_crop = tuple(mode_crop) if mode_crop else (0, 0, *self.full_array)
        self._lst_map: np.ndarray | None = None  # per-pixel LST gain × normalisation, float32 (h, w)
        self._gain_key: tuple | None = None
        self._gain_map: np.ndarray | None = None
        w, h = self.raw_size
        self._buf = np.empty((h, w), dtype=np.float32)
        self._u16 = np.empty((h, w), dtype=np.uint16)

    # -- tables ----------------------------------------------------------------------------------------
    @property
    def lens_shading(self) -> LensShadingTable | None:
        return self._table

    def set_lens_shading(self, table: LensShadingTable | None) -> None:
        """Put a table in force (None: no lens shading correction). Rebuilds the cached gain maps."""
        self._table = table
        self._lst_map = None
        self._gain_key = None

    def mode_gains(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(R, G, B) cell gains the ISP uses in this mode, the way libcamera derives them (alsc.cpp switchMode):
        luminance, Cr and Cb resampled from the full array to the mode's crop, Cr and Cb divided by their
        minimum over that resampled table, times the luminance."""
        t = self._table
        lum, cr, cb = (resample_to_crop(v, self.full_array, self.mode_crop) for v in (t.luminance, t.cr, t.cb))
        return lum * (cr / cr.min()), lum, lum * (cb / cb.min())

    def _build_lst_map(self) -> np.ndarray:
        w, h = self.raw_size
        scale = np.float32(65535.0 / ((2**self.bit_depth - 1) - self.black_level))
        out = np.empty((h, w), dtype=np.float32)
        if self._table is None:
            out[:] = scale
            return out
        per_channel = [upsample_table(c, (h, w)) for c in self.mode_gains()]
        for dy in (0, 1):
            for dx in (0, 1):
                out[dy::2, dx::2] = per_channel[self._sites[dy, dx]][dy::2, dx::2] * scale
        return out

    def gain_map(self, colour_gains: tuple[float, float]) -> np.ndarray:
        """Per-pixel gain (LST × colour gain × 65535/(white − black)), cached on (table, colour gains)."""
        key = (id(self._table), float(colour_gains[0]), float(colour_gains[1]))
        if self._gain_map is not None and key == self._gain_key:
            return self._gain_map
        if self._lst_map is None:
            self._lst_map = self._build_lst_map()
        per = np.array([colour_gains[0], 1.0, colour_gains[1]], dtype=np.float32)[self._sites]
        w, h = self.raw_size
        if self._gain_map is None:
            self._gain_map = np.empty((h, w), dtype=np.float32)
        np.multiply(
            self._lst_map.reshape(h // 2, 2, w // 2, 2),
            per.reshape(1, 2, 1, 2),
            out=self._gain_map.reshape(h // 2, 2, w // 2, 2),
        )
        self._gain_key = key
        return self._gain_map

    # -- processing ------------------------------------------------------------------------------------
    def corrected_mosaic(self, raw: np.ndarray, colour_gains: tuple[float, float]) -> np.ndarray:
        """Black-subtracted, shading- and colour-corrected mosaic scaled so white = 65535 (uint16, clipped)."""
        if raw.shape != (self.raw_size[1], self.raw_size[0]):
            raise ValueError(f"raw shape {raw.shape} does not match the ISP's raw size {self.raw_size}")
        buf = self._buf
        np.subtract(raw, np.float32(self.black_level), out=buf, dtype=np.float32)
        np.multiply(buf, self.gain_map(colour_gains), out=buf)
        np.clip(buf, 0.0, 65535.0, out=buf)
        np.copyto(self._u16, buf, casting="unsafe")
        return self._u16

    def process(self, raw: np.ndarray, colour_gains: tuple[float, float] = (1.0, 1.0), linear: bool = False) -> np.ndarray:
        """The main stream: HxWx3 BGR uint8 at main size, or with linear=True float32 linear-light BGR
        (1.0 = white, after the colour matrix, before gamma; not clipped by the matrix)."""
        bgr = cv2.cvtColor(self.corrected_mosaic(raw, colour_gains), self._cv_code)
        x, y, w, h = self.crop
        if (w, h) != self.raw_size:
            bgr = bgr[y : y + h, x : x + w]
        if self.main_size != (w, h):
            shrink = self.main_size[0] < w and self.main_size[1] < h
            bgr = cv2.resize(bgr, self.main_size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        if linear:
            f = bgr.astype(np.float32) * np.float32(1.0 / 65535.0)
            return f if self.mono else cv2.transform(f, self.ccm_bgr)
        return _GAMMA_LUT[bgr if self.mono else cv2.transform(bgr, self.ccm_bgr)]
