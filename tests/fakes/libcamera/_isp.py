"""The Raspberry Pi ISP and the parts of the RPi IPA the tests depend on, as the simulated libcamera runs them.

Written from upstream source, independently of pi_agent/camera/isp.py and of pi_agent/calibration (a double
must not share the helpers of the code it tests):

- rpi.alsc (src/ipa/rpi/controller/rpi/alsc.cpp): `read` (luminance_lut or generated corner_strength LUT,
  calibrations_Cr/Cb, luminance_strength, n_iter), `getCalTable` (linear interpolation in colour temperature),
  `resampleCalTable` (the calibrated table covers the FULL pixel array; at every mode switch it is resampled to
  the mode's crop, sample = crop offset / sensor size + cell centre × crop share, and flipped with the user
  transform), `compensateLambdasForCal` (Cr, Cb divided by their minimum over the resampled table) and
  `addLuminanceToTables` (luminance at `luminance_strength`). The adaptive part (n_iter > 0) is modelled by
  its starting point: lambdas of 1 (what n_iter = 0 gives exactly);
- VC4 lens shading (src/ipa/rpi/vc4/vc4.cpp `applyLS`, `resampleTable`): a corner-sampled grid whose cell is the
  smallest of 16..256 px giving < 64 × ≤ 48 cells, the 16×12 table spread over its vertices, u4.10 gains
  clamped to 16383/1024;
- PiSP lens shading (src/ipa/rpi/pisp/pisp.cpp `applyLensShading`, `resampleTable`, `packLscLut`): 33×33
  vertices over the image from the 32×32 table, each vertex's R, G, B jointly coded in one of 4 ranges with
  10-bit fields, so gains clamp at (1023 − 0.5)/128 ≈ 7.99;
- then colour gains, demosaic, CCM and the tuning's gamma curve (rpi.ccm, rpi.contrast), crop to the ISP crop
  and scaling to each output (pipeline_base.cpp / vc4.cpp / pisp.cpp `ispCrop`).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

# OpenCV names a Bayer pattern by the 2x2 cell starting at pixel (1, 1).
_CV_BAYER = {"BGGR": cv2.COLOR_BayerRG2BGR, "RGGB": cv2.COLOR_BayerBG2BGR,
             "GBRG": cv2.COLOR_BayerGR2BGR, "GRBG": cv2.COLOR_BayerGB2BGR}
VC4_GRID = (16, 12)
PISP_GRID = (32, 32)
VC4_MAX_GAIN = 16383 / 1024
PISP_MAX_GAIN = (1023 - 0.5) / 128


def find_algo(tuning: dict, name: str) -> dict | None:
    if tuning.get("version", 1) in (1, 1.0) and "algorithms" not in tuning:
        return tuning.get(name)
    for entry in tuning.get("algorithms", []):
        if name in entry:
            return entry[name]
    return None


class TuningRejected(Exception):
    """The IPA refused the tuning file (its init fails, so the camera is not registered)."""


def check_tuning(tuning, target: str) -> None:
    """What the RPi IPA refuses at init (controller.cpp `read`, alsc.cpp `read`/`readCalibrations`)."""
    if not isinstance(tuning, dict):
        raise TuningRejected("tuning file is not a JSON object")
    version = tuning.get("version", 1.0)
    if version not in (1, 1.0, 2, 2.0):
        raise TuningRejected(f"Unrecognised version {version} for the tuning file")
    if version in (2, 2.0):
        if tuning.get("target", "bcm2835") != target:
            raise TuningRejected(f"Tuning data file target returned \"{tuning.get('target')}\", expected \"{target}\"")
        if not isinstance(tuning.get("algorithms"), list):
            raise TuningRejected("Tuning file has no algorithms list")
    elif target != "bcm2835":
        raise TuningRejected("Version 1 tuning files are for the VC4 only")
    alsc = find_algo(tuning, "rpi.alsc")
    if alsc is not None:
        Alsc(alsc, VC4_GRID if target == "bcm2835" else PISP_GRID)


class Alsc:
    """rpi.alsc's calibrated (static) tables for a table size (columns, rows)."""

    def __init__(self, params: dict, size: tuple[int, int]):
        self.size = size
        cols, rows = size
        n = cols * rows
        self.strength = float(params.get("luminance_strength", 1.0))
        self.n_iter = int(params.get("n_iter", cols + rows))
        if "corner_strength" in params:
            self.luminance = self._generate_lut(params)
        elif "luminance_lut" in params:
            lut = params["luminance_lut"]
            if len(lut) != n:
                raise TuningRejected("Invalid number of entries in LSC table")
            self.luminance = np.asarray(lut, dtype=np.float64).reshape(rows, cols)
        else:
            self.luminance = np.ones((rows, cols))
        self.cr = self._calibrations(params, "calibrations_Cr")
        self.cb = self._calibrations(params, "calibrations_Cb")

    def _generate_lut(self, params: dict) -> np.ndarray:
        cols, rows = self.size
        cstrength = float(params.get("corner_strength", 2.0))
        asymmetry = float(params.get("asymmetry", 1.0))
        if cstrength <= 1.0 or asymmetry < 0:
            raise TuningRejected("corner_strength must be > 1.0 and asymmetry >= 0")
        f1, f2 = cstrength - 1, 1 + math.sqrt(cstrength)
        r2_norm = cols * rows // 4 * (1 + asymmetry * asymmetry)
        y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
        dy = y - rows // 2 + 0.5
        dx = (x - cols // 2 + 0.5) * asymmetry
        r2 = (dx * dx + dy * dy) / r2_norm
        return (f1 * r2 + f2) ** 2 / (f2 * f2)

    def _calibrations(self, params: dict, key: str) -> list[tuple[float, np.ndarray]]:
        cols, rows = self.size
        out, last = [], 0.0
        for entry in params.get(key, []):
            ct = float(entry["ct"])
            if ct <= last:
                raise TuningRejected(f"{key}: entries must be in increasing ct order")
            table = entry["table"]
            if len(table) != cols * rows:
                raise TuningRejected(f"{key}: Invalid number of entries in LSC table")
            out.append((ct, np.asarray(table, dtype=np.float64).reshape(rows, cols)))
            last = ct
        return out

    @staticmethod
    def cal_table(ct: float, calibrations, shape) -> np.ndarray:
        """alsc.cpp getCalTable."""
        if not calibrations:
            return np.ones(shape)
        if ct <= calibrations[0][0]:
            return calibrations[0][1]
        if ct >= calibrations[-1][0]:
            return calibrations[-1][1]
        for (ct0, t0), (ct1, t1) in zip(calibrations, calibrations[1:]):
            if ct <= ct1:
                return (t0 * (ct1 - ct) + t1 * (ct - ct0)) / (ct1 - ct0)
        return calibrations[-1][1]

    def gains_for_mode(self, ct: float, mode: "CameraMode") -> np.ndarray:
        """(3, rows, cols) R, G, B gains of the mode (alsc.cpp switchMode with lambdas of 1)."""
        shape = self.luminance.shape
        lum = resample_cal_table(self.luminance, mode)
        lum = (lum - 1.0) * self.strength + 1.0
        out = []
        for calibrations in (self.cr, None, self.cb):
            if calibrations is None:
                out.append(lum)
                continue
            table = resample_cal_table(self.cal_table(ct, calibrations, shape), mode)
            out.append(table / table.min() * lum)  # compensateLambdasForCal, then addLuminance
        return np.stack(out)


class CameraMode:
    """The IPA's CameraMode fields resampleCalTable reads (src/ipa/rpi/controller/camera_mode.h)."""

    def __init__(self, sensor_size, crop, size, hflip=False, vflip=False):
        self.sensor_width, self.sensor_height = sensor_size
        self.crop_x, self.crop_y, crop_w, crop_h = crop
        self.width, self.height = size
        self.scale_x, self.scale_y = crop_w / size[0], crop_h / size[1]
        self.hflip, self.vflip = hflip, vflip


def resample_cal_table(table: np.ndarray, mode: CameraMode) -> np.ndarray:
    """alsc.cpp resampleCalTable: a full-array table → the table of the mode's crop (same grid)."""
    rows, cols = table.shape

    def axis(n, sensor, size, scale, offset, flip):
        s = sensor / (size * scale)
        pos = 0.5 / s + offset / sensor * n - 0.5 + np.arange(n) / s
        lo = np.floor(pos).astype(int)
        f = pos - lo
        hi = np.minimum(lo + 1, n - 1)
        lo = np.maximum(lo, 0)
        if flip:
            lo, hi = n - 1 - lo, n - 1 - hi
        return lo, hi, f

    xlo, xhi, xf = axis(cols, mode.sensor_width, mode.width, mode.scale_x, mode.crop_x, mode.hflip)
    ylo, yhi, yf = axis(rows, mode.sensor_height, mode.height, mode.scale_y, mode.crop_y, mode.vflip)
    above = table[ylo][:, xlo] * (1 - xf) + table[ylo][:, xhi] * xf
    below = table[yhi][:, xlo] * (1 - xf) + table[yhi][:, xhi] * xf
    return above * (1 - yf[:, None]) + below * yf[:, None]


def _resample_to_vertices(table: np.ndarray, dest_w: int, dest_h: int, src_w: int, src_h: int) -> np.ndarray:
    """vc4.cpp / pisp.cpp resampleTable: a centre-sampled table → corner-sampled vertices."""
    def axis(dest, src):
        pos = -0.5 + np.arange(dest) * (src / (dest - 1))
        lo = np.floor(pos).astype(int)
        f = pos - lo
        hi = np.minimum(lo + 1, src - 1)
        return np.maximum(lo, 0), hi, f

    xlo, xhi, xf = axis(dest_w, src_w)
    ylo, yhi, yf = axis(dest_h, src_h)
    above = table[ylo][:, xlo] * (1 - xf) + table[ylo][:, xhi] * xf
    below = table[yhi][:, xlo] * (1 - xf) + table[yhi][:, xhi] * xf
    return above * (1 - yf[:, None]) + below * yf[:, None]


def hardware_gain_map(gains: np.ndarray, size: tuple[int, int], platform: str) -> np.ndarray:
    """(3, h, w) per-pixel R, G, B gains the ISP applies for the IPA's (3, rows, cols) tables on a mode of
    `size`: the platform's vertex grid, quantisation and clamp, then bilinear between vertices."""
    w, h = size
    if platform == "vc4":
        for cell in (16, 32, 64, 128, 256):
            gw, gh = (w + cell - 1) // cell, (h + cell - 1) // cell
            if gw < 64 and gh <= 48:
                break
        gw, gh = gw + 1, gh + 1
        vertices = np.stack([_resample_to_vertices(g, gw, gh, *VC4_GRID) for g in gains])
        vertices = np.minimum(np.floor(1024 * vertices + 0.5), 16383) / 1024  # u4.10
        vx, vy = np.arange(gw) * cell, np.arange(gh) * cell
    else:
        n = PISP_GRID[0] + 1
        vertices = np.stack([_resample_to_vertices(g, n, n, *PISP_GRID) for g in gains])
        lo, hi = vertices.min(axis=0), vertices.max(axis=0)
        scale = np.where((lo >= 0.5) & (hi < 1.5), 1024.0, np.where(hi < 2.0, 512.0, np.where(hi < 4.0, 256.0, 128.0)))
        offset = np.where(scale == 1024.0, -511.5, 0.5)
        codes = np.clip(np.round(offset + scale * vertices), 0, 1023)
        vertices = (codes - offset) / scale  # packLscLut's 10-bit fields, as the hardware reads them back
        vx, vy = np.arange(n) * (w / (n - 1)), np.arange(n) * (h / (n - 1))
    px = np.arange(w) + 0.5
    py = np.arange(h) + 0.5
    ix = np.clip(np.searchsorted(vx, px) - 1, 0, len(vx) - 2)
    iy = np.clip(np.searchsorted(vy, py) - 1, 0, len(vy) - 2)
    fx = np.clip((px - vx[ix]) / (vx[ix + 1] - vx[ix]), 0, 1)
    fy = np.clip((py - vy[iy]) / (vy[iy + 1] - vy[iy]), 0, 1)
    out = np.empty((3, h, w), dtype=np.float32)
    for c in range(3):
        v = vertices[c]
        top = v[iy][:, ix] * (1 - fx) + v[iy][:, ix + 1] * fx
        bottom = v[iy + 1][:, ix] * (1 - fx) + v[iy + 1][:, ix + 1] * fx
        out[c] = top * (1 - fy[:, None]) + bottom * fy[:, None]
    return out


def channel_sites(order: str) -> np.ndarray:
    """2x2 channel index (0 R, 1 G, 2 B) of a Bayer order such as "BGGR"; MONO (no colour filter) is all one
    channel, which colour gains and Cr/Cb tables leave alone."""
    if order == "MONO":
        return np.ones((2, 2), dtype=np.int64)
    return np.array([["RGB".index(order[0]), "RGB".index(order[1])],
                     ["RGB".index(order[2]), "RGB".index(order[3])]])


def mosaic_gain(per_channel: np.ndarray, order: str) -> np.ndarray:
    """(3, h, w) channel gains → (h, w) gain of each pixel's own channel."""
    sites = channel_sites(order)
    _, h, w = per_channel.shape
    out = np.empty((h, w), dtype=np.float32)
    for dy in (0, 1):
        for dx in (0, 1):
            out[dy::2, dx::2] = per_channel[sites[dy, dx]][dy::2, dx::2]
    return out


class IspPipeline:
    """One configuration of the ISP: raw (h, w) of a mode → RGB outputs (float, linear, then gamma)."""

    def __init__(self, tuning: dict, bit_depth: int, black: int, order: str, crops: list, sizes: list):
        self.white = 2**bit_depth - 1
        self.black = black
        self.order = order
        self.crops, self.sizes = crops, sizes
        ccm = find_algo(tuning, "rpi.ccm") or {}
        self.ccms = [(float(c["ct"]), np.asarray(c["ccm"], dtype=np.float32).reshape(3, 3))
                     for c in ccm.get("ccms", [])] or [(5000.0, np.eye(3, dtype=np.float32))]
        contrast = find_algo(tuning, "rpi.contrast") or {}
        curve = contrast.get("gamma_curve")
        if curve:
            pts = np.asarray(curve, dtype=np.float64).reshape(-1, 2)
            x = np.arange(65536, dtype=np.float64)
            self.gamma = np.clip(np.interp(x, pts[:, 0], pts[:, 1]) / 65535 * 255 + 0.5, 0, 255).astype(np.uint8)
        else:
            x = np.arange(65536) / 65535
            self.gamma = np.clip(255 * np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055) + 0.5,
                                 0, 255).astype(np.uint8)
        self.lsc = None  # (h, w) per-pixel gain of each pixel's own channel
        self.lsc_key = None

    def set_lens_shading(self, per_pixel: np.ndarray | None) -> None:
        self.lsc = None if per_pixel is None else mosaic_gain(per_pixel, self.order)

    def ccm_for(self, ct: float) -> np.ndarray:
        return min(self.ccms, key=lambda c: abs(c[0] - ct))[1]

    def corrected(self, raw: np.ndarray, colour_gains, digital_gain: float = 1.0) -> np.ndarray:
        """Black-subtracted, lens-shading and colour-gain corrected mosaic, white = 1.0 (float32)."""
        x = (raw.astype(np.float32) - np.float32(self.black)) * np.float32(digital_gain / (self.white - self.black))
        if self.lsc is not None:
            x *= self.lsc
        sites = channel_sites(self.order)
        per = np.array([colour_gains[0], 1.0, colour_gains[1]], dtype=np.float32)
        for dy in (0, 1):
            for dx in (0, 1):
                x[dy::2, dx::2] *= per[sites[dy, dx]]
        return x

    def outputs(self, raw: np.ndarray, colour_gains, ct: float, digital_gain: float = 1.0) -> list[np.ndarray]:
        """(h, w, 3) uint8 B, G, R images, one per output (crop, then scale to the output size)."""
        x = self.corrected(raw, colour_gains, digital_gain)
        half = all(2 * w <= cw and 2 * h <= ch for (_, _, cw, ch), (w, h) in zip(self.crops, self.sizes))
        if half and self.order == "MONO":  # no colour cell: each 2x2 cell's mean, grey in every channel
            grey = (x[0::2, 0::2] + x[0::2, 1::2] + x[1::2, 0::2] + x[1::2, 1::2]) * np.float32(0.25)
            bgr = np.clip(np.repeat(grey[:, :, None], 3, axis=2) * np.float32(65535.0), 0, 65535)
            scale = 2
        elif half:  # every output is at most half the crop: a 2x2-cell demosaic, then the same downscale
            sites = channel_sites(self.order)
            cells = {c: [] for c in range(3)}
            for dy in (0, 1):
                for dx in (0, 1):
                    cells[sites[dy, dx]].append(x[dy::2, dx::2])
            bgr = np.empty((x.shape[0] // 2, x.shape[1] // 2, 3), dtype=np.float32)
            bgr[:, :, 0], bgr[:, :, 2] = cells[2][0], cells[0][0]
            np.add(cells[1][0], cells[1][1], out=bgr[:, :, 1])
            bgr[:, :, 1] *= 0.5
            bgr = np.clip(bgr * np.float32(65535.0), 0, 65535)
            scale = 2
        else:
            mosaic = np.clip(x * 65535.0, 0, 65535).astype(np.uint16)
            # a mono sensor's ISP output is grey in every channel (no demosaic; the mono tunings have no rpi.ccm)
            bgr = cv2.cvtColor(mosaic, cv2.COLOR_GRAY2BGR if self.order == "MONO" else _CV_BAYER[self.order])
            scale = 1
        ccm = self.ccm_for(ct)[::-1, ::-1].copy()  # acting on B, G, R vectors
        images = []
        for crop, (w, h) in zip(self.crops, self.sizes):
            cx, cy, cw, ch = (v // scale for v in crop)
            part = bgr[cy:cy + ch, cx:cx + cw]
            if (cw, ch) != (w, h):
                shrink = w < cw and h < ch
                part = cv2.resize(part, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            lin = cv2.transform(part.astype(np.float32), ccm)
            images.append(self.gamma[np.clip(lin, 0, 65535).astype(np.uint16)])
        return images
