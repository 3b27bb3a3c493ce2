"""Saving a snapshot result on the laptop: JPEG, raw Bayer data as DNG, and a JSON sidecar.

The DNG is written by PiDNG (the library picamera2 itself uses for `save_dng`): the mosaic stored unpacked
at 16 bits per sample with the sensor's values (LSB-aligned, black level and white level of the mode's bit
depth in the tags), the CFA pattern of the Bayer order, AsShotNeutral from ColourGains, ExposureTime and
ISO (100 × AnalogueGain). Its ColorMatrix1 assumes the white-balanced camera RGB is linear sRGB (the agent
sends no calibrated colour matrix), so a raw converter's colours are approximate; the pixel data are exact.
LibRaw (rawpy), dcraw and exiftool read it.

A snapshot is a full-resolution still by default (3280x2464 on an IMX219: a 16 MB DNG, PiDNG writes it
uncompressed in well under a second); `full_resolution` in the sidecar says whether the agent could.
The JSON sidecar has every metadata value of the request, the raw statistics the agent computed for that
very frame (histograms as lists), the Bayer order, bit depth, black level and camera configuration.
If PiDNG is not importable the mosaic is saved as a .npy (uint16, shape (h, w)) instead, with the same JSON.
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from protocol import unpack_array

from .files import atomic_write_bytes, safe_name

log = logging.getLogger(__name__)

# XYZ (D65) -> linear sRGB: used as ColorMatrix1 on the assumption above.
XYZ_TO_SRGB = (
    (3.2406, -1.5372, -0.4986),
    (-0.9689, 1.8758, 0.0415),
    (0.0557, -0.2040, 1.0570),
)


@dataclass
class SnapshotFiles:
    jpeg: Path
    raw: Path | None
    sidecar: Path

    def as_dict(self) -> dict[str, str | None]:
        return {"jpeg": str(self.jpeg), "raw": str(self.raw) if self.raw else None, "sidecar": str(self.sidecar)}


def _rational(value: float, denominator_limit: int = 1_000_000) -> list[int]:
    f = Fraction(value).limit_denominator(denominator_limit)
    return [f.numerator, f.denominator]


def dng_bytes(raw: np.ndarray, bayer_order: str, bit_depth: int, black_level: int, metadata: dict,
              model: str = "camera") -> bytes:
    """A DNG file (bytes) of a uint16 mosaic, via PiDNG."""
    from pidng.core import RAW2DNG, DNGTags, Tag
    from pidng.defs import (
        CalibrationIlluminant, CFAPattern, DNGVersion, Orientation, PhotometricInterpretation, PreviewColorSpace,
    )

    height, width = raw.shape
    gains = metadata.get("ColourGains") or (1.0, 1.0)
    tags = DNGTags()
    tags.set(Tag.ImageWidth, width)
    tags.set(Tag.ImageLength, height)
    tags.set(Tag.TileWidth, width)
    tags.set(Tag.TileLength, height)
    tags.set(Tag.Orientation, Orientation.Horizontal)
    tags.set(Tag.SamplesPerPixel, 1)
    tags.set(Tag.BitsPerSample, 16)
    if bayer_order == "MONO":  # a monochrome sensor: one linear plane, no colour filter, no colour calibration
        tags.set(Tag.PhotometricInterpretation, PhotometricInterpretation.Linear_Raw)
    else:
        tags.set(Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array)
        tags.set(Tag.CFARepeatPatternDim, [2, 2])
        tags.set(Tag.CFAPattern, getattr(CFAPattern, bayer_order))
        tags.set(Tag.ColorMatrix1, [_rational(v, 10000) for row in XYZ_TO_SRGB for v in row])
        tags.set(Tag.CalibrationIlluminant1, CalibrationIlluminant.D65)
        tags.set(Tag.AsShotNeutral, [_rational(1.0 / float(gains[0])), [1, 1], _rational(1.0 / float(gains[1]))])
    tags.set(Tag.BlackLevel, [int(black_level)])
    tags.set(Tag.WhiteLevel, [(1 << bit_depth) - 1])
    if "ExposureTime" in metadata:
        tags.set(Tag.ExposureTime, [[int(metadata["ExposureTime"]), 1_000_000]])
    if "AnalogueGain" in metadata:
        tags.set(Tag.PhotographicSensitivity, [int(round(100 * float(metadata["AnalogueGain"])))])
    tags.set(Tag.Make, "picamlink")
    tags.set(Tag.Model, model)
    tags.set(Tag.UniqueCameraModel, f"picamlink {model}")
    tags.set(Tag.DNGVersion, DNGVersion.V1_4)
    tags.set(Tag.DNGBackwardVersion, DNGVersion.V1_2)
    tags.set(Tag.PreviewColorSpace, PreviewColorSpace.sRGB)
    converter = RAW2DNG()
    converter.options(tags, path="", compress=False)
    return bytes(converter.convert(np.ascontiguousarray(raw, dtype=np.uint16)))


def _stats_for_json(stats: dict) -> dict:
    out = dict(stats)
    if "hist" in out:
        try:
            out["hist"] = unpack_array(out["hist"], "hist").tolist()
        except Exception:
            out.pop("hist")
    return out


def sidecar(value: dict, agent: dict | None = None) -> dict[str, Any]:
    return {
        "frame": value.get("frame"),
        "width": value.get("width"),
        "height": value.get("height"),
        "quality": value.get("quality"),
        "full_resolution": value.get("full_resolution"),
        **({"reason": value["reason"]} if value.get("reason") else {}),
        "bayer_order": value.get("bayer_order"),
        "bit_depth": value.get("bit_depth"),
        "black_level": value.get("black_level"),
        "metadata": value.get("metadata", {}),
        "stats": _stats_for_json(value.get("stats", {})),
        "configuration": value.get("configuration", {}),
        "agent": agent or {},
    }


def save_snapshot(value: dict, directory: str | Path, stem: str | None = None, agent: dict | None = None,
                  model: str = "camera") -> SnapshotFiles:
    """Write the files of one snapshot result into `directory` (created if needed); returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if stem is None:
        name = safe_name(str((agent or {}).get("name", "camera")))
        stem = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{int(value.get('frame', 0)):06d}"
    jpeg_path = atomic_write_bytes(directory / f"{stem}.jpg", value["jpeg"])
    raw_path = None
    if value.get("raw") is not None:
        raw = unpack_array(value["raw"], "raw")
        try:
            data = dng_bytes(raw, value["bayer_order"], int(value["bit_depth"]), int(value["black_level"]),
                             value.get("metadata", {}), model=model)
            raw_path = atomic_write_bytes(directory / f"{stem}.dng", data)
        except ImportError:
            log.warning("PiDNG is not installed; saving the raw mosaic as .npy")
            buffer = io.BytesIO()
            np.save(buffer, raw)
            raw_path = atomic_write_bytes(directory / f"{stem}.npy", buffer.getvalue())
    text = json.dumps(sidecar(value, agent), indent=2, default=str)
    sidecar_path = atomic_write_bytes(directory / f"{stem}.json", text.encode())
    return SnapshotFiles(jpeg=jpeg_path, raw=raw_path, sidecar=sidecar_path)
