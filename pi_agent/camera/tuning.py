"""libcamera tuning files: reading and rewriting the rpi.alsc (lens shading) section, as pure functions.

Tuning files come in two layouts: version 1 (algorithms as top-level keys) and version 2
(`{"version": 2.0, "target": "bcm2835"|"pisp", "algorithms": [{"rpi.alsc": {...}}, ...]}`). The table
grid follows the target: 16×12 on VC4 (`bcm2835`, Pi 0–4), 32×32 on PiSP (`pisp`, Pi 5). Every function
returns a new dict and leaves its input alone.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from .base import LensShadingTable

ALSC = "rpi.alsc"
GRIDS = {"bcm2835": (16, 12), "pisp": (32, 32)}
# Largest gain the hardware can hold: VC4 u4.10 (≈ 15.999), PiSP 10 bits per vertex in [0, 8).
MAX_GAIN = {"bcm2835": 15.999, "pisp": 7.99}


class TuningError(ValueError):
    """A tuning file that cannot be used (unknown layout, wrong table size, gains out of range)."""


def target_of(tuning: dict) -> str:
    target = tuning.get("target", "bcm2835")
    if target not in GRIDS:
        raise TuningError(f"unknown tuning target {target!r}; expected one of {', '.join(GRIDS)}")
    return target


def grid_for_target(target: str) -> tuple[int, int]:
    """(columns, rows) of the lens shading table for a tuning target."""
    if target not in GRIDS:
        raise TuningError(f"unknown tuning target {target!r}; expected one of {', '.join(GRIDS)}")
    return GRIDS[target]


def find_algo(tuning: dict, name: str) -> dict | None:
    """The section of algorithm `name` (e.g. "rpi.alsc") in a v1 or v2 tuning dict, or None."""
    if "algorithms" in tuning:
        if not isinstance(tuning["algorithms"], list):
            raise TuningError("tuning 'algorithms' must be a list")
        for entry in tuning["algorithms"]:
            if isinstance(entry, dict) and name in entry:
                return entry[name]
        return None
    if tuning.get("version", 1) not in (1, 1.0):
        raise TuningError(f"unsupported tuning version {tuning.get('version')!r}")
    return tuning.get(name)


def alsc_section(table: LensShadingTable, target: str = "bcm2835") -> dict[str, Any]:
    """A static rpi.alsc section for `table` (n_iter 0: no adaptation; strength 1: gains as given)."""
    columns, rows = grid_for_target(target)
    if table.grid != (columns, rows):
        raise TuningError(f"a {target} tuning needs a {columns}x{rows} table, not {table.grid[0]}x{table.grid[1]}")
    limit = MAX_GAIN[target]
    arrays = {"luminance": table.luminance, "Cr": table.cr, "Cb": table.cb}
    for name, values in arrays.items():
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (rows, columns) or not np.all(np.isfinite(values)):
            raise TuningError(f"{name} table must be {rows}x{columns} finite values")
        if values.min() <= 0 or values.max() > limit:
            raise TuningError(f"{name} gains {values.min():.3f}..{values.max():.3f} are outside (0, {limit}] for {target}")

    def flat(values) -> list[float]:
        return [round(float(v), 3) for v in np.asarray(values, dtype=np.float64).ravel()]

    ct = int(table.colour_temperature)
    return {
        "n_iter": 0,
        "luminance_strength": 1.0,
        "omega": 1.3,
        "luminance_lut": flat(table.luminance),
        "calibrations_Cr": [{"ct": ct, "table": flat(table.cr)}],
        "calibrations_Cb": [{"ct": ct, "table": flat(table.cb)}],
    }


def with_lens_shading(tuning: dict, table: LensShadingTable) -> dict:
    """A copy of `tuning` whose rpi.alsc section holds `table` (inserted if the file had none)."""
    target = target_of(tuning)
    section = alsc_section(table, target)
    out = copy.deepcopy(tuning)
    if "algorithms" in out:
        for entry in out["algorithms"]:
            if isinstance(entry, dict) and ALSC in entry:
                entry[ALSC] = section
                return out
        out["algorithms"].append({ALSC: section})
        return out
    out[ALSC] = section
    return out


def table_from_tuning(tuning: dict, colour_temperature: int | None = None) -> LensShadingTable | None:
    """The lens shading table a tuning's rpi.alsc section holds (first calibration, or the one nearest
    `colour_temperature`), or None when the section has no tables."""
    section = find_algo(tuning, ALSC)
    if not section or "luminance_lut" not in section:
        return None
    columns, rows = grid_for_target(target_of(tuning))

    def grid(values, what: str) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        if values.size != columns * rows:
            raise TuningError(f"Invalid number of entries in LSC table: {what} has {values.size}, "
                              f"expected {columns * rows}")
        return values.reshape(rows, columns)

    def pick(calibrations: list) -> dict:
        if not calibrations:
            return {"ct": 5000, "table": [1.0] * (columns * rows)}
        if colour_temperature is None:
            return calibrations[0]
        return min(calibrations, key=lambda c: abs(c["ct"] - colour_temperature))

    cr, cb = pick(section.get("calibrations_Cr", [])), pick(section.get("calibrations_Cb", []))
    return LensShadingTable(
        grid=(columns, rows),
        luminance=grid(section["luminance_lut"], "luminance_lut"),
        cr=grid(cr["table"], "calibrations_Cr"),
        cb=grid(cb["table"], "calibrations_Cb"),
        colour_temperature=int(cr.get("ct", 5000)),
    )


def minimal_tuning(target: str = "bcm2835") -> dict:
    """A v2 tuning skeleton (no algorithms) for places where no stock file is at hand (the simulator)."""
    grid_for_target(target)
    return {"version": 2.0, "target": target, "algorithms": []}
