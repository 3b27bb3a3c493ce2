"""The raw byte layouts real picamera2 delivers (picamera2.md §3), written from the CSI-2 / V4L2 format
descriptions and independently of pi_agent/camera/raw_unpack.py, for unit tests of the unpacking (the
simulated libcamera under tests/fakes/libcamera has its own writer).

Every layout ends in a uint8 (h, stride) array whose row padding is filled with garbage, as a real DMA buffer
may hold, so a missing crop shows up as wrong values instead of passing by luck.
"""

from __future__ import annotations

import numpy as np

STRIDE_ALIGN = {"vc4": 32, "pisp": 64}


def align(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def pad_rows(data: np.ndarray, stride: int, garbage_seed: int = 0) -> np.ndarray:
    """(h, n) uint8 → (h, stride) uint8 with bytes n..stride filled with garbage (0xFF and noise)."""
    h, n = data.shape
    out = np.empty((h, stride), dtype=np.uint8)
    out[:, :n] = data
    if stride > n:
        rng = np.random.default_rng(garbage_seed)
        out[:, n:] = rng.integers(0, 256, size=(h, stride - n), dtype=np.uint8) | np.uint8(0x81)
    return out


def little_endian_bytes(values: np.ndarray) -> np.ndarray:
    """uint16 (h, w) → its little-endian bytes (h, 2w): low byte first, as the ARM memory holds them."""
    h, w = values.shape
    out = np.empty((h, w, 2), dtype=np.uint8)
    out[:, :, 0] = values & 0xFF
    out[:, :, 1] = values >> 8
    return out.reshape(h, 2 * w)


def pack_raw10_csi2p(values: np.ndarray) -> np.ndarray:
    """V4L2 SxxxX10P: per 4 pixels, 4 bytes of bits 9..2 then one byte {p3[1:0] p2[1:0] p1[1:0] p0[1:0]}
    (p0 in the lowest bits). A width not a multiple of 4 is completed with zero pixels."""
    h, w = values.shape
    if values.max(initial=0) > 1023:
        raise ValueError("RAW10 values must be < 1024")
    groups = (w + 3) // 4
    px = np.zeros((h, groups * 4), dtype=np.uint16)
    px[:, :w] = values
    px = px.reshape(h, groups, 4)
    out = np.empty((h, groups, 5), dtype=np.uint8)
    out[:, :, :4] = (px >> 2).astype(np.uint8)
    low = np.zeros((h, groups), dtype=np.uint16)
    for i in range(4):
        low |= (px[:, :, i] & 3) << (2 * i)
    out[:, :, 4] = low.astype(np.uint8)
    return out.reshape(h, groups * 5)


def pack_raw12_csi2p(values: np.ndarray) -> np.ndarray:
    """V4L2 SxxxX12P: per 2 pixels, 2 bytes of bits 11..4 then one byte {p1[3:0] p0[3:0]}."""
    h, w = values.shape
    if values.max(initial=0) > 4095:
        raise ValueError("RAW12 values must be < 4096")
    groups = (w + 1) // 2
    px = np.zeros((h, groups * 2), dtype=np.uint16)
    px[:, :w] = values
    px = px.reshape(h, groups, 2)
    out = np.empty((h, groups, 3), dtype=np.uint8)
    out[:, :, 0] = (px[:, :, 0] >> 4).astype(np.uint8)
    out[:, :, 1] = (px[:, :, 1] >> 4).astype(np.uint8)
    out[:, :, 2] = ((px[:, :, 0] & 0xF) | ((px[:, :, 1] & 0xF) << 4)).astype(np.uint8)
    return out.reshape(h, groups * 3)


def compress_comp1(values16: np.ndarray) -> np.ndarray:
    """A stand-in for PiSP COMP1 (1 byte per pixel, lossy): square-root companding of the 16-bit
    MSB-aligned value. The real PiSP scheme is not reproduced; what matters is that it is lossy and
    1 B/px, so a backend must refuse it or decompress it."""
    return np.rint(np.sqrt(values16.astype(np.float64) / 65535.0) * 255.0).astype(np.uint8)


def decompress_comp1(codes: np.ndarray) -> np.ndarray:
    """Inverse of compress_comp1 → uint16 (h, w) MSB-aligned (like picamera2.helpers.decompress(...).view(uint16))."""
    return np.rint((codes.astype(np.float64) / 255.0) ** 2 * 65535.0).astype(np.uint16)


def raw_buffer(mosaic: np.ndarray, fmt: str, bit_depth: int, platform: str, garbage_seed: int = 0) -> tuple[np.ndarray, int]:
    """The simulator's (h, w) mosaic of `bit_depth` codes → (uint8 (h, stride) buffer, stride) for the configured
    format name `fmt` on `platform` ("vc4" or "pisp")."""
    if fmt.endswith("_PISP_COMP1"):
        data = compress_comp1(mosaic.astype(np.uint16) << (16 - bit_depth))
    elif fmt.endswith("10_CSI2P"):
        data = pack_raw10_csi2p(mosaic)
    elif fmt.endswith("12_CSI2P"):
        data = pack_raw12_csi2p(mosaic)
    elif fmt.endswith("16"):
        data = little_endian_bytes(mosaic.astype(np.uint16) << (16 - bit_depth))
    else:  # Pi 4 unpacked: LSB-aligned sensor codes
        data = little_endian_bytes(mosaic.astype(np.uint16))
    stride = align(data.shape[1], STRIDE_ALIGN[platform])
    return pad_rows(data, stride, garbage_seed), stride
