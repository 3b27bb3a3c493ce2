"""The agent's persisted calibration: one JSON file in the state directory, written atomically.

Why atomic: the Pi may lose power at any moment; a half-written calibration file would either fail to load
or, worse, load wrong tables. Every write goes to a temporary file in the same directory, is fsynced, and
replaces the old file with os.replace (atomic on POSIX), then the directory is fsynced too.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_json, remove_stale_temporaries
from .camera.base import LensShadingTable

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = "~/.local/state/picamlink"
STATE_FILE = "calibration.json"
TUNING_FILE = "tuning.json"
FORMAT = 1


def table_to_json(table: LensShadingTable) -> dict[str, Any]:
    return {
        "grid": list(table.grid),
        "luminance": np.asarray(table.luminance, dtype=float).round(4).tolist(),
        "cr": np.asarray(table.cr, dtype=float).round(4).tolist(),
        "cb": np.asarray(table.cb, dtype=float).round(4).tolist(),
        "colour_temperature": int(table.colour_temperature),
    }


def table_from_json(data: dict[str, Any]) -> LensShadingTable:
    grid = (int(data["grid"][0]), int(data["grid"][1]))
    arrays = [np.asarray(data[k], dtype=np.float64) for k in ("luminance", "cr", "cb")]
    for name, a in zip(("luminance", "cr", "cb"), arrays):
        if a.shape != (grid[1], grid[0]) or not np.all(np.isfinite(a)) or a.min() <= 0:
            raise ValueError(f"lens shading {name} must be {grid[1]}x{grid[0]} positive finite values")
    return LensShadingTable(grid=grid, luminance=arrays[0], cr=arrays[1], cb=arrays[2],
                            colour_temperature=int(data.get("colour_temperature", 5000)))


class StateStore:
    """The calibration file (and the exported tuning file) of one state directory."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(os.path.expanduser(str(directory)))
        self.path = self.directory / STATE_FILE
        self.tuning_path = self.directory / TUNING_FILE

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none; a corrupt file is logged and ignored (not deleted).
        Temporary files of a save that was killed midway are removed."""
        for path in (self.path, self.tuning_path):
            remove_stale_temporaries(path)
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("ignoring unreadable calibration file %s: %s", self.path, exc)
            return None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            log.error("ignoring calibration file %s: unknown format", self.path)
            return None
        return data

    def save(self, state: dict[str, Any]) -> None:
        """Write the calibration atomically (old or new file, never a broken one; owner-only)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, {"format": FORMAT, **dict(sorted(state.items()))}, indent=1)

    def save_tuning(self, tuning: dict[str, Any]) -> None:
        """The exported tuning file, readable by rpicam-apps run as another user."""
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.tuning_path, tuning, mode=0o644, indent=1)

    def clear(self) -> bool:
        """Remove the calibration and the exported tuning; True if there was a calibration file."""
        removed = False
        for path in (self.path, self.tuning_path):
            try:
                path.unlink()
                removed = removed or path == self.path
            except FileNotFoundError:
                pass
        return removed
