"""The calibration report picture: the fitted lens shading tables as heat maps, and the white target
before and after, from a `calibrate` result's lens_shading part (tables as protocol arrays, JPEG thumbnails).
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from protocol import unpack_array

PANEL = (320, 240)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _label(image: np.ndarray, text: str, y: int = 18) -> None:
    """White text once, on a solid dark band as wide as the text: a black outline drawn under anti-aliased
    white text (the former way) left a grey double of every glyph on light panels."""
    (w, h), baseline = cv2.getTextSize(text, FONT, 0.5, 1)
    cv2.rectangle(image, (2, y - h - 4), (min(image.shape[1] - 1, 10 + w), y + baseline), (24, 24, 24), -1)
    cv2.putText(image, text, (6, y), FONT, 0.5, (255, 255, 255), 1, cv2.LINE_AA)


def heat_map(values: np.ndarray, title: str) -> np.ndarray:
    """One table as a colour-mapped panel (nearest-neighbour cells), labelled with its range."""
    v = np.asarray(values, dtype=np.float64)
    low, high = float(v.min()), float(v.max())
    scaled = np.zeros_like(v) if high - low < 1e-9 else (v - low) / (high - low)
    image = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
    image = cv2.resize(image, PANEL, interpolation=cv2.INTER_NEAREST)
    _label(image, f"{title} {low:.3f}..{high:.3f}")
    return image


def thumbnail(jpeg: bytes, title: str) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        image = np.zeros((PANEL[1], PANEL[0], 3), np.uint8)
    image = cv2.resize(image, PANEL, interpolation=cv2.INTER_LINEAR)
    _label(image, title)
    return image


def report_image(lens_shading: dict[str, Any]) -> np.ndarray:
    """A 3x2 picture: luminance, Cr, Cb heat maps on top; white target before, after, and the figures."""
    tables = [heat_map(unpack_array(lens_shading[k], k), name)
              for k, name in (("luminance", "luminance"), ("cr", "Cr"), ("cb", "Cb"))]
    before = lens_shading.get("before", {})
    thumbs = [thumbnail(lens_shading["before_jpeg"], f"before: {before.get('residual_pct', float('nan')):.2f} %"),
              thumbnail(lens_shading["after_jpeg"], f"after: {lens_shading['residual_pct']:.2f} %")]
    text = np.full((PANEL[1], PANEL[0], 3), 32, np.uint8)
    lines = [f"grid {lens_shading['grid'][0]}x{lens_shading['grid'][1]} ({lens_shading.get('target', '')})",
             f"residual {lens_shading['residual_pct']:.3f} % (was {before.get('residual_pct', float('nan')):.2f})",
             f"worst cell {lens_shading['worst_cell_pct']:.3f} % (was {before.get('worst_cell_pct', float('nan')):.2f})",
             "16x12 per-channel cell means,", "processed image, linear light"]
    for i, line in enumerate(lines):
        _label(text, line, 24 + 24 * i)
    return np.vstack([np.hstack(tables), np.hstack(thumbs + [text])])


def save_report(lens_shading: dict[str, Any], directory: str | os.PathLike) -> Path:
    """Write the report picture as PNG into `directory` (created if needed); returns its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = directory / f"calibration-report-{stamp}.png"
    ok, data = cv2.imencode(".png", report_image(lens_shading))
    if not ok:
        raise OSError("could not encode the report picture")
    tmp = path.with_suffix(".png.tmp")
    tmp.write_bytes(data.tobytes())
    os.replace(tmp, path)
    return path
