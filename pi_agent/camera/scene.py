"""Scene radiance for the simulated sensor: what lies in front of the lens, and the light falling on it.

Why in physical terms: calibration is judged against ground truth, so the simulator must form raw pixels the
way a sensor does (reflectance × illuminant × channel response × lens shading × time), not paint a picture.
Scenes are defined on normalised coordinates of the FULL pixel array (u, v in [0, 1]), so a cropped mode
sees a crop of the same scene and a binned mode sees all of it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

SCENES = ("chart", "white", "dark")

# Channel spectral sensitivities (Gaussian-ish, nm) and peak quantum efficiencies of a typical RGB-Bayer
# CMOS sensor with an IR-cut filter; only their ratios matter.
_CHANNELS = {"R": (600.0, 38.0, 0.62), "G": (535.0, 40.0, 0.90), "B": (462.0, 30.0, 0.78)}
_WAVELENGTHS = np.arange(380.0, 721.0, 2.0)

# ColorChecker-like patches, sRGB 8-bit (published reference values), converted to linear reflectance.
_CHECKER_SRGB = [
    (115, 82, 68), (194, 150, 130), (98, 122, 157), (87, 108, 67), (133, 128, 177), (103, 189, 170),
    (214, 126, 44), (80, 91, 166), (193, 90, 99), (94, 60, 108), (157, 188, 64), (224, 163, 46),
    (56, 61, 150), (70, 148, 73), (175, 54, 60), (231, 199, 31), (187, 86, 149), (8, 133, 161),
    (243, 243, 242), (200, 200, 200), (160, 160, 160), (122, 122, 121), (85, 85, 85), (52, 52, 52),
]


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, dtype=np.float64) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


CHECKER_REFLECTANCE = _srgb_to_linear(np.array(_CHECKER_SRGB)).astype(np.float32)  # (24, 3) R, G, B
CHECKER_REFLECTANCE[18:] = CHECKER_REFLECTANCE[18:, 1:2]  # the grey row is spectrally flat: exactly neutral
GREY_PATCH = 21  # index of a neutral patch (reflectance ≈ 0.19)


def planck(wavelength_nm: np.ndarray, ct: float) -> np.ndarray:
    """Blackbody spectral radiance (arbitrary scale) at colour temperature `ct` K."""
    lam = wavelength_nm * 1e-9
    c2 = 1.4388e-2  # h·c/k, m·K
    return 1.0 / (lam**5 * np.expm1(c2 / (lam * ct)))


def illuminant_rgb(ct: float) -> tuple[float, float, float]:
    """Camera (R, G, B) response to a blackbody at `ct` K, normalised to G = 1: Planck's law integrated
    against the channel sensitivities. Lower ct → larger R, smaller B (redder light)."""
    if not (1000.0 <= ct <= 20000.0):
        raise ValueError(f"colour temperature must be within 1000–20000 K, got {ct}")
    spd = planck(_WAVELENGTHS, ct)
    resp = {}
    for ch, (mu, sigma, qe) in _CHANNELS.items():
        sens = qe * np.exp(-0.5 * ((_WAVELENGTHS - mu) / sigma) ** 2)
        resp[ch] = float(np.sum(spd * sens))
    g = resp["G"]
    return resp["R"] / g, 1.0, resp["B"] / g


def neutral_colour_gains(ct: float) -> tuple[float, float]:
    """The true (r, b) colour gains that make a neutral surface neutral: (G/R, G/B) of the illuminant."""
    r, g, b = illuminant_rgb(ct)
    return g / r, g / b


@dataclass
class Region:
    """A rectangle (y0, y1, x0, x1) in mode pixels."""

    y0: int
    y1: int
    x0: int
    x1: int


class Scene:
    """Per-channel reflectance planes (R, G, B) at a mode's resolution, plus a cheap moving element.

    `reflectance()` is rendered once per mode; `moving(t)` returns the small region that changes with the
    frame time t (seconds) and its reflectance, so a frame only re-renders that region.
    """

    def __init__(self, kind: str, size: tuple[int, int], crop: tuple[int, int, int, int], full: tuple[int, int]):
        if kind not in SCENES:
            raise ValueError(f"unknown scene {kind!r}; known scenes: {', '.join(SCENES)}")
        self.kind = kind
        self.size = size
        w, h = size
        cx, cy, cw, ch = crop
        # pixel centres in normalised full-array coordinates
        self.u = ((cx + (np.arange(w, dtype=np.float64) + 0.5) * cw / w) / full[0]).astype(np.float32)
        self.v = ((cy + (np.arange(h, dtype=np.float64) + 0.5) * ch / h) / full[1]).astype(np.float32)

    # -- static part ----------------------------------------------------------------------------------
    def reflectance(self) -> np.ndarray:
        """(3, h, w) float32 reflectance for channels R, G, B."""
        w, h = self.size
        out = np.zeros((3, h, w), dtype=np.float32)
        if self.kind == "dark":
            return out
        if self.kind == "white":
            out[:] = 0.9
            return out
        out[:] = 0.12  # chart background: dark grey board
        u, v = self.u, self.v
        # 6 × 4 patches in u 0.12–0.88, v 0.08–0.60, with gaps
        for i in range(4):
            for j in range(6):
                u0, u1 = 0.12 + j * 0.1267 + 0.01, 0.12 + (j + 1) * 0.1267 - 0.01
                v0, v1 = 0.08 + i * 0.13 + 0.01, 0.08 + (i + 1) * 0.13 - 0.01
                xs = np.nonzero((u >= u0) & (u < u1))[0]
                ys = np.nonzero((v >= v0) & (v < v1))[0]
                if len(xs) and len(ys):
                    out[:, ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1] = CHECKER_REFLECTANCE[i * 6 + j][:, None, None]
        # grey ramp: reflectance 0.02 → 0.95 linearly in u, v 0.66–0.76
        ys = np.nonzero((v >= 0.66) & (v < 0.76))[0]
        xs = np.nonzero((u >= 0.05) & (u < 0.95))[0]
        if len(xs) and len(ys):
            ramp = 0.02 + 0.93 * (u[xs] - 0.05) / 0.9
            out[:, ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1] = ramp[None, None, :]
        return out

    def patch_region(self, index: int, margin: float = 0.25) -> Region | None:
        """The inner part of chart patch `index` (0–23) in mode pixels, or None if outside the crop."""
        i, j = divmod(index, 6)
        u0, u1 = 0.12 + j * 0.1267 + 0.01, 0.12 + (j + 1) * 0.1267 - 0.01
        v0, v1 = 0.08 + i * 0.13 + 0.01, 0.08 + (i + 1) * 0.13 - 0.01
        du, dv = (u1 - u0) * margin, (v1 - v0) * margin
        xs = np.nonzero((self.u >= u0 + du) & (self.u < u1 - du))[0]
        ys = np.nonzero((self.v >= v0 + dv) & (self.v < v1 - dv))[0]
        if len(xs) < 2 or len(ys) < 2:
            return None
        return Region(int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1)

    # -- moving part ----------------------------------------------------------------------------------
    def moving(self, t: float) -> tuple[Region, np.ndarray] | None:
        """The moving element at time t: a bright square sliding along the bottom band (period 4 s).

        Returns (region, (3, rh, rw) reflectance) or None for scenes without motion / outside the crop."""
        if self.kind != "chart":
            return None
        uc = 0.5 + 0.4 * math.sin(2 * math.pi * t / 4.0)
        vc, half_u, half_v = 0.88, 0.03, 0.04
        xs = np.nonzero(np.abs(self.u - uc) < half_u)[0]
        ys = np.nonzero(np.abs(self.v - vc) < half_v)[0]
        if len(xs) == 0 or len(ys) == 0:
            return None
        reg = Region(int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1)
        refl = np.empty((3, reg.y1 - reg.y0, reg.x1 - reg.x0), dtype=np.float32)
        refl[:] = np.array([0.85, 0.8, 0.3], dtype=np.float32)[:, None, None]  # a yellow tile
        return reg, refl
