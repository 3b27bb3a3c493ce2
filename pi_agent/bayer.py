"""Bayer mosaics: where each colour sits in the 2x2 cell, and views of the four planes.

Names follow libcamera's SensorBlackLevels order (R, Gr, Gb, B): Gr is the green on the red rows, Gb the
green on the blue rows. The order string ("BGGR", ...) lists the 2x2 cell row-major, as in SBGGR10.
"""

from __future__ import annotations

import numpy as np

CHANNELS = ("R", "Gr", "Gb", "B")
BAYER_ORDERS = ("BGGR", "GBRG", "GRBG", "RGGB")


MONO = "MONO"  # a monochrome sensor: no colour cell (raw R8/R10/R12)


def plane_offsets(order: str) -> dict[str, tuple[int, int]]:
    """(row, column) of R, Gr, Gb and B inside the 2x2 cell of a Bayer `order`. For MONO the four sites of
    the 2x2 cell under the same names (one colour: block statistics per site stay valid)."""
    if order == MONO:
        return {"R": (0, 0), "Gr": (0, 1), "Gb": (1, 0), "B": (1, 1)}
    if order not in BAYER_ORDERS:
        raise ValueError(f"unknown Bayer order {order!r}; expected one of {', '.join(BAYER_ORDERS)}")
    cells = {(0, 0): order[0], (0, 1): order[1], (1, 0): order[2], (1, 1): order[3]}
    r_pos = next(pos for pos, c in cells.items() if c == "R")
    b_pos = next(pos for pos, c in cells.items() if c == "B")
    greens = [pos for pos, c in cells.items() if c == "G"]
    gr = next(pos for pos in greens if pos[0] == r_pos[0])
    gb = next(pos for pos in greens if pos[0] == b_pos[0])
    return {"R": r_pos, "Gr": gr, "Gb": gb, "B": b_pos}


def planes(raw: np.ndarray, order: str) -> dict[str, np.ndarray]:
    """Views (no copy) of the four colour planes of a mosaic, keyed R, Gr, Gb, B."""
    return {name: raw[y::2, x::2] for name, (y, x) in plane_offsets(order).items()}


def channel_index_map(shape: tuple[int, int], order: str) -> np.ndarray:
    """uint8 map of the mosaic giving each pixel's channel index in CHANNELS order."""
    index = np.empty(shape, dtype=np.uint8)
    for i, name in enumerate(CHANNELS):
        y, x = plane_offsets(order)[name]
        index[y::2, x::2] = i
    return index
