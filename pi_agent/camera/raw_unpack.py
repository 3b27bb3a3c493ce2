"""Turning picamera2's raw buffer into a Bayer mosaic: pure functions, no camera needed.

picamera2 hands raw over as a uint8 array of shape (h, stride) with the row padding kept. What the bytes
mean depends on the format libcamera configured (picamera2.md §3, calibration.md §1):

- Pi 4 `S{ORDER}{10,12}` (unpacked): little-endian uint16, LSB-aligned (the value is the sensor code).
- Pi 4 `S{ORDER}10_CSI2P`: 4 pixels in 5 bytes (four high bytes, then one byte of 2-bit LSBs, pixel 0 in
  bits 1:0). `S{ORDER}12_CSI2P`: 2 pixels in 3 bytes (two high bytes, then pixel 0's LSBs in bits 3:0).
- Pi 5 `S{ORDER}16`: little-endian uint16, MSB-aligned (a 12-bit code is stored << 4): shift right by
  16 − bit depth, which only the sensor configuration knows.
- Pi 5 `{ORDER}_PISP_COMP1`: lossy compressed, 1 byte per pixel; refused unless a decompressor (picamera2's
  `helpers.decompress`) is given, because statistics on compressed codes would be silently wrong.

Getting any of these wrong gives values 16x/64x too large, a sheared image or garbage from the padding,
the classic defects of the published calibration code; hence small separately-tested functions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

BAYER_ORDERS = ("BGGR", "GBRG", "GRBG", "RGGB")

_UNCOMPRESSED = re.compile(r"^S(BGGR|GBRG|GRBG|RGGB)(8|10|12|14|16)(_CSI2P)?$")
_COMPRESSED = re.compile(r"^(BGGR|GBRG|GRBG|RGGB|MONO)_PISP_COMP1$")
# Monochrome sensors (OV9281, IMX296 mono): libcamera's R8, R10, R12, R16 and CSI-2 packed R10_CSI2P /
# R12_CSI2P (src/libcamera/formats.yaml; pipeline/rpi/common/pipeline_base.cpp maps the sensor's
# MEDIA_BUS_FMT_Y10_1X10 to them). The same packings as the Bayer formats, without a colour cell.
_MONO = re.compile(r"^R(8|10|12|16)(_CSI2P)?$")
MONO = "MONO"


class RawFormatError(ValueError):
    """A raw format or buffer this module cannot (or will not) turn into a mosaic."""


@dataclass(frozen=True)
class RawFormat:
    """A parsed raw format name.

    container_bits: bits per stored sample as named (10/12 for Pi 4 formats, 16 for Pi 5 `S****16`, 8 for
      COMP1); the sensor's bit depth may be smaller (Pi 5) and is given separately when unpacking.
    packing: "unpacked", "CSI2P" or "PISP_COMP1".
    """

    name: str
    bayer_order: str
    container_bits: int
    packing: str

    @property
    def msb_aligned(self) -> bool:
        """Pi 5 stores every unpacked depth in 16 bits, left-aligned."""
        return self.packing == "unpacked" and self.container_bits == 16

    def bytes_per_row(self, width: int) -> int:
        """Bytes of real data in one row of `width` pixels (before stride padding)."""
        if self.packing == "CSI2P":
            if self.container_bits == 10:
                return (width + 3) // 4 * 5
            return (width + 1) // 2 * 3
        if self.packing == "PISP_COMP1":
            return width
        return width * (1 if self.container_bits == 8 else 2)


def parse_raw_format(name: str) -> RawFormat:
    """Parse `SBGGR10_CSI2P`, `SRGGB12`, `SBGGR16`, `BGGR_PISP_COMP1`, mono `R10`, `R10_CSI2P` (also a
    picamera2 SensorFormat, whose str() is its name) into Bayer order (MONO for mono), stored bits and packing."""
    text = str(name).strip()
    m = _UNCOMPRESSED.match(text)
    if m:
        order, bits, packed = m.group(1), int(m.group(2)), bool(m.group(3))
        if packed and bits not in (10, 12):
            raise RawFormatError(f"raw format {text!r}: CSI2P packing exists only for 10 and 12 bits")
        return RawFormat(text, order, bits, "CSI2P" if packed else "unpacked")
    m = _MONO.match(text)
    if m:
        bits, packed = int(m.group(1)), bool(m.group(2))
        if packed and bits not in (10, 12):
            raise RawFormatError(f"raw format {text!r}: CSI2P packing exists only for 10 and 12 bits")
        return RawFormat(text, MONO, bits, "CSI2P" if packed else "unpacked")
    m = _COMPRESSED.match(text)
    if m:
        return RawFormat(text, m.group(1), 8, "PISP_COMP1")
    raise RawFormatError(
        f"unsupported raw format {text!r}: expected a Bayer format such as SBGGR10, SRGGB12_CSI2P, SBGGR16 "
        "or BGGR_PISP_COMP1, or a monochrome one (R8, R10, R10_CSI2P, R12, R16; YUV formats carry no raw)"
    )


def _rows(buffer: np.ndarray, height: int, needed: int) -> np.ndarray:
    """The (height, needed) data bytes of a (height, stride) uint8 buffer, padding cropped."""
    buf = np.asarray(buffer)
    if buf.dtype != np.uint8 or buf.ndim != 2:
        raise RawFormatError(f"raw buffer must be a 2-D uint8 array (h, stride), got {buf.dtype} {buf.shape}")
    if buf.shape[0] != height:
        raise RawFormatError(f"raw buffer has {buf.shape[0]} rows, the configuration says {height}")
    if buf.shape[1] < needed:
        raise RawFormatError(f"raw stride {buf.shape[1]} is shorter than the {needed} bytes a row needs")
    return buf[:, :needed]


def unpack_csi2p10(rows: np.ndarray, width: int) -> np.ndarray:
    """CSI-2 RAW10: each 5 bytes hold pixels 0–3: bytes 0–3 are bits 9:2, byte 4 their bits 1:0
    (pixel 0 in bits 1:0, pixel 3 in bits 7:6). `rows` is (h, ceil(w/4)*5) uint8."""
    h = rows.shape[0]
    groups = rows.reshape(h, -1, 5).astype(np.uint16)
    out = np.empty((h, groups.shape[1], 4), dtype=np.uint16)
    low = groups[:, :, 4]
    for i in range(4):
        out[:, :, i] = (groups[:, :, i] << 2) | ((low >> (2 * i)) & 0x3)
    return out.reshape(h, -1)[:, :width]


def unpack_csi2p12(rows: np.ndarray, width: int) -> np.ndarray:
    """CSI-2 RAW12: each 3 bytes hold pixels 0–1: bytes 0–1 are bits 11:4, byte 2 their bits 3:0
    (pixel 0 in bits 3:0, pixel 1 in bits 7:4). `rows` is (h, ceil(w/2)*3) uint8."""
    h = rows.shape[0]
    groups = rows.reshape(h, -1, 3).astype(np.uint16)
    out = np.empty((h, groups.shape[1], 2), dtype=np.uint16)
    out[:, :, 0] = (groups[:, :, 0] << 4) | (groups[:, :, 2] & 0xF)
    out[:, :, 1] = (groups[:, :, 1] << 4) | (groups[:, :, 2] >> 4)
    return out.reshape(h, -1)[:, :width]


def unpack_raw(
    buffer: np.ndarray,
    raw_format: str | RawFormat,
    size: tuple[int, int],
    bit_depth: int | None = None,
    decompress: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """picamera2's raw uint8 (h, stride) buffer → uint16 (h, w) mosaic of sensor codes at `bit_depth`.

    size: the raw stream's (w, h) from camera_configuration()["raw"]["size"].
    bit_depth: the sensor's depth (camera_configuration()["sensor"]["bit_depth"]); required for Pi 5
      `S****16` and COMP1, checked against the format otherwise.
    decompress: for `*_PISP_COMP1` only, a function like picamera2.helpers.decompress returning the 16-bit
      MSB-aligned mosaic (h, w) (or its bytes (h, 2w) uint8); without one COMP1 is refused.
    """
    fmt = raw_format if isinstance(raw_format, RawFormat) else parse_raw_format(raw_format)
    w, h = int(size[0]), int(size[1])
    if w <= 0 or h <= 0:
        raise RawFormatError(f"raw size must be positive, got {size}")
    if fmt.packing == "PISP_COMP1" or fmt.msb_aligned:
        if bit_depth is None:
            raise RawFormatError(f"{fmt.name}: the sensor bit depth is needed to unpack a 16-bit left-aligned format")
        depth = int(bit_depth)
    else:
        depth = fmt.container_bits if bit_depth is None else int(bit_depth)
        if depth != fmt.container_bits:
            raise RawFormatError(f"{fmt.name} holds {fmt.container_bits}-bit samples, not {depth}-bit")
    if not 8 <= depth <= 16:
        raise RawFormatError(f"bit depth must be within 8–16, got {depth}")

    if fmt.packing == "PISP_COMP1":
        if decompress is None:
            raise RawFormatError(
                f"{fmt.name} is PiSP lossy-compressed raw; configure an unpacked raw format (e.g. "
                f"S{fmt.bayer_order}16) or pass a decompressor such as picamera2.helpers.decompress"
            )
        # the whole (h, stride) buffer: picamera2's decoder works on pairs of 32-bit words, so a row cut to an
        # arbitrary width (1332 px = 333 words) would not decode (picamera2/request.py Helpers.decompress)
        buf = np.asarray(buffer)
        _rows(buf, h, w)  # checks the buffer's shape
        whole_words = min(buf.shape[1], -(-w // 8) * 8)  # 8 px per pair of words
        full = np.asarray(decompress(np.ascontiguousarray(buf[:, :whole_words])))
        if full.dtype == np.uint8:
            full = np.ascontiguousarray(full[:, : 2 * w]).view("<u2")
        full = full[:, :w]
        if full.shape != (h, w):
            raise RawFormatError(f"decompressor returned shape {full.shape}, expected {(h, w)}")
        return (full.astype(np.uint16) >> (16 - depth)).astype(np.uint16)

    rows = _rows(buffer, h, fmt.bytes_per_row(w))
    if fmt.packing == "CSI2P":
        return unpack_csi2p10(rows, w) if fmt.container_bits == 10 else unpack_csi2p12(rows, w)
    if fmt.container_bits == 8:
        return rows.astype(np.uint16)
    mosaic = np.ascontiguousarray(rows).view("<u2").astype(np.uint16, copy=False)
    if fmt.msb_aligned and depth < 16:
        return mosaic >> np.uint16(16 - depth)
    return mosaic
