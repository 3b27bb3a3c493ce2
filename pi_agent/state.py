"""The agent's persisted calibration: calibration.json and the exported tuning.json, saved as ONE unit.

Why a unit: the two files describe one calibration (the tuning file carries the same lens shading table).
Two atomic renames are still two: a kill or a full disk between them left a new table beside an old tuning
file. So every save writes a new *generation* directory holding both files, and one atomic rename of the
`current` symlink puts the whole generation in force:

    STATE_DIR/
        calibration.json -> current/calibration.json     the names users and rpicam-apps read
        tuning.json      -> current/tuning.json          (absent while no table was calibrated)
        current          -> generations/7                flipped by rename(2): old unit or new, never a mix
        generations/7/calibration.json (0600), tuning.json (0644)

A state directory of the older layout (two regular files) is read as it is and converted by the next save.

Loading validates the whole file against `SCHEMA` (a table of field checks: a field someone adds is one
entry). Anything invalid (not JSON, wrong types, non-finite numbers, a table of the wrong shape, a tuning
file missing or unreadable) is logged and moved aside as `calibration.json.bad-<time>` (and
`tuning.json.bad-<time>`); the agent then starts uncalibrated and serving.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .atomic import atomic_write_bytes, atomic_write_json, fsync_directory, remove_stale_temporaries
from .camera.base import LensShadingTable
from .controls import validate_controls
from .errors import CommandError

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = "~/.local/state/picamlink"
STATE_FILE = "calibration.json"
TUNING_FILE = "tuning.json"
CURRENT = "current"
GENERATIONS = "generations"
FORMAT = 1
MAX_GRID = 64  # the Pi 5's 32x32 is the largest grid an ISP uses; leave room, refuse absurd ones
COLOUR_TEMPERATURE_RANGE = (1000, 20000)  # kelvin


class InvalidState(ValueError):
    """The saved state does not match the schema; the message names the field and what is wrong."""


def table_to_json(table: LensShadingTable) -> dict[str, Any]:
    return {
        "grid": list(table.grid),
        "luminance": np.asarray(table.luminance, dtype=float).round(4).tolist(),
        "cr": np.asarray(table.cr, dtype=float).round(4).tolist(),
        "cb": np.asarray(table.cb, dtype=float).round(4).tolist(),
        "colour_temperature": int(table.colour_temperature),
    }


def _finite_number(value: Any, what: str, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidState(f"{what} must be a finite number, not {str(value)[:40]}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise InvalidState(f"{what} {value} must lie in {low}..{high}")
    return value


def table_from_json(data: Any) -> LensShadingTable:
    """A LensShadingTable from its JSON form; InvalidState (a ValueError) says what is wrong."""
    if not isinstance(data, dict):
        raise InvalidState("lens_shading_table must be a map")
    grid = data.get("grid")
    if (not isinstance(grid, list) or len(grid) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_GRID for n in grid)):
        raise InvalidState(f"lens_shading_table grid must be [columns, rows], each 1..{MAX_GRID}, not {str(grid)[:40]}")
    arrays = []
    for name in ("luminance", "cr", "cb"):
        try:
            a = np.asarray(data.get(name), dtype=np.float64)
        except (TypeError, ValueError):
            raise InvalidState(f"lens shading {name} must be a {grid[1]}x{grid[0]} array of numbers") from None
        if a.shape != (grid[1], grid[0]) or not np.all(np.isfinite(a)) or a.min() <= 0:
            raise InvalidState(f"lens shading {name} must be {grid[1]}x{grid[0]} positive finite values")
        arrays.append(a)
    ct = data.get("colour_temperature", 5000)
    if isinstance(ct, float) and ct.is_integer():
        ct = int(ct)
    if not isinstance(ct, int) or isinstance(ct, bool):
        raise InvalidState(f"lens shading colour_temperature must be an integer (kelvin), not {str(ct)[:40]}")
    _finite_number(ct, "lens shading colour_temperature", *COLOUR_TEMPERATURE_RANGE)
    return LensShadingTable(grid=(grid[0], grid[1]), luminance=arrays[0], cr=arrays[1], cb=arrays[2],
                            colour_temperature=ct)


# The schema: one check per top-level field (a check raises InvalidState). Fields not listed are kept
# as they are (a newer agent's additions survive an older one); add a field's check here.
def _check_format(value: Any) -> None:
    if value != FORMAT or isinstance(value, bool):
        raise InvalidState(f"format must be {FORMAT}, not {str(value)[:40]}")


def _check_str(name: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if not isinstance(value, str):
            raise InvalidState(f"{name} must be a string, not {type(value).__name__}")
    return check


def _check_controls(value: Any) -> None:
    if not isinstance(value, dict):
        raise InvalidState(f"controls must be a map, not {type(value).__name__}")
    if value:
        try:
            validate_controls(value, {})  # names and types as set_controls takes them; ranges at apply time
        except CommandError as exc:
            raise InvalidState(f"controls: {exc.message}") from None


def _check_numbers(value: Any, where: str) -> None:
    """Every number inside `value` is finite (JSON allows Infinity and NaN in Python's reader)."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_numbers(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_numbers(item, f"{where}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise InvalidState(f"{where} must be finite, not {value}")


def _check_results(value: Any) -> None:
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise InvalidState("results must be a map of step name → map of figures")
    _check_numbers(value, "results")


def _check_generation(value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidState(f"generation must be a non-negative integer, not {str(value)[:40]}")


SCHEMA: dict[str, tuple[bool, Callable[[Any], None]]] = {
    # field: (required, check)
    "format": (True, _check_format),
    "sensor": (False, _check_str("sensor")),
    "saved": (False, _check_str("saved")),
    "controls": (False, _check_controls),
    "results": (False, _check_results),
    "lens_shading_table": (False, lambda value: None if value is None else table_from_json(value)),
    "generation": (False, _check_generation),
}


def validate_state(data: Any) -> dict[str, Any]:
    """`data` if it matches SCHEMA, else InvalidState naming the first field that does not."""
    if not isinstance(data, dict):
        raise InvalidState(f"the file must hold a JSON object, not {type(data).__name__}")
    for name, (required, check) in SCHEMA.items():
        if name not in data:
            if required:
                raise InvalidState(f"the field '{name}' is missing")
            continue
        check(data[name])
    _check_numbers(data, "calibration")
    return data


def _parse_json(text: str) -> Any:
    """JSON without NaN/Infinity: the agent never writes them, so one found here is corruption."""
    def refuse(token: str) -> Any:
        raise InvalidState(f"non-finite number {token} in the file")
    return json.loads(text, parse_constant=refuse)


class StateStore:
    """The calibration unit (calibration.json + tuning.json) of one state directory.

    Not thread-safe by itself: the agent saves from one calibration job at a time (the camera lease).
    `step_hook(name)`, when given, is called before every filesystem step of a save (tests kill the
    process there to show that no step leaves the two files disagreeing).
    """

    def __init__(self, directory: str | os.PathLike, step_hook: Callable[[str], None] | None = None):
        self.directory = Path(os.path.expanduser(str(directory)))
        self.path = self.directory / STATE_FILE
        self.tuning_path = self.directory / TUNING_FILE
        self._current = self.directory / CURRENT
        self._generations = self.directory / GENERATIONS
        self._step_hook = step_hook

    def _step(self, name: str) -> None:
        if self._step_hook is not None:
            self._step_hook(name)

    # loading ---------------------------------------------------------------------------------------
    def _current_generation(self) -> Path | None:
        """The generation directory `current` names, or None (no link: the older layout or nothing)."""
        try:
            target = os.readlink(self._current)
        except OSError:
            return None
        return self.directory / target

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none or it was invalid (then logged and moved aside).

        Never raises: bad state on disk must not stop the agent. Also removes what a killed save left
        behind (temporary files, generations not in force) and restores the two names' links."""
        try:
            return self._load()
        except OSError as exc:
            log.error("cannot read the calibration in %s (%s); starting uncalibrated", self.directory, exc)
        except Exception:  # a bug here must not keep the agent from serving either
            log.exception("loading the calibration from %s failed; starting uncalibrated", self.directory)
        return None

    def _load(self) -> dict[str, Any] | None:
        generation = self._current_generation()
        self._remove_leftovers(generation)
        if generation is None:
            calibration, tuning = self.path, self.tuning_path  # the older layout (or nothing at all)
            if self.path.is_symlink() and not self.path.exists():
                return None  # links of a cleared unit
        else:
            calibration, tuning = generation / STATE_FILE, generation / TUNING_FILE
        try:
            text = calibration.read_bytes()
        except FileNotFoundError:
            if generation is not None:
                log.error("the calibration in force (%s) is missing; starting uncalibrated", generation)
                self._move_aside(generation, f"{generation} lacks {STATE_FILE}")
            return None
        try:
            data = validate_state(_parse_json(text.decode("utf-8")))
            if generation is not None and tuning.exists():
                try:
                    _parse_json(tuning.read_text(encoding="utf-8"))
                except (OSError, ValueError) as exc:
                    raise InvalidState(f"its tuning file {tuning} is unreadable: {exc}") from None
        except (ValueError, UnicodeDecodeError) as exc:  # InvalidState and json's errors are ValueErrors
            self._move_aside(generation, str(exc))
            return None
        if generation is not None:
            self._link_names()
        return data

    def _move_aside(self, generation: Path | None, reason: str) -> None:
        """Rename the invalid unit to *.bad-<time> next to the names, and drop `current`."""
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        moved = []
        sources = ((generation / STATE_FILE, generation / TUNING_FILE) if generation is not None
                   else (self.path, self.tuning_path))
        for source, name in zip(sources, (STATE_FILE, TUNING_FILE)):
            if source.is_symlink() and generation is None:
                continue  # a link of the new layout: nothing of its own to keep
            target = self.directory / f"{name}.bad-{stamp}"
            n = 1
            while target.exists():
                n += 1
                target = self.directory / f"{name}.bad-{stamp}-{n}"
            try:
                os.replace(source, target)
                moved.append(str(target))
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("could not move the invalid %s aside: %s", source, exc)
        if generation is not None:
            for path in (self._current, self.path, self.tuning_path):
                _unlink_quietly(path)
        log.error("invalid calibration in %s: %s; moved aside as %s; the agent starts uncalibrated",
                  self.directory, reason, ", ".join(moved) or "(nothing could be moved)")

    def _remove_leftovers(self, in_force: Path | None) -> None:
        for path in (self.path, self.tuning_path):
            remove_stale_temporaries(path)
        for leftover in self.directory.glob(f".{CURRENT}.*.tmp"):
            _unlink_quietly(leftover)
        try:
            generations = list(self._generations.iterdir())
        except OSError:
            return
        for path in generations:
            if in_force is None or path.resolve() != in_force.resolve():
                shutil.rmtree(path, ignore_errors=True)  # a save killed before its flip, or a superseded one
        if in_force is not None:
            remove_stale_temporaries(in_force / STATE_FILE)
            remove_stale_temporaries(in_force / TUNING_FILE)

    def _link_names(self) -> None:
        """calibration.json and tuning.json name the files inside `current` (atomic replace each); no
        tuning.json while the unit has none (no dangling link)."""
        for name in (STATE_FILE, TUNING_FILE):
            path = self.directory / name
            target = f"{CURRENT}/{name}"
            if not (self._current / name).exists():
                if path.is_symlink():
                    self._step(f"unlink {name}")
                    _unlink_quietly(path)
                continue
            try:
                if os.readlink(path) == target:
                    continue
            except OSError:
                pass
            self._step(f"link {name}")
            _replace_with_symlink(path, target)

    # saving ----------------------------------------------------------------------------------------
    def save(self, state: dict[str, Any], tuning: dict[str, Any] | None = None) -> None:
        """Save the calibration and its tuning file as one unit: afterwards both are the new ones, or (on
        any error, or a kill at any moment) both are the previous ones. `tuning` None keeps the tuning
        file in force (a calibration without lens shading leaves the exported table as it was).
        Raises OSError (disk full, read-only, permissions) with the previous unit intact."""
        previous = self._current_generation()
        carried: bytes | None = None
        if tuning is None:
            source = previous / TUNING_FILE if previous is not None else self.tuning_path
            try:
                carried = source.read_bytes()
            except FileNotFoundError:
                carried = None
        number = self._next_generation_number(previous)
        generation = self._generations / str(number)
        body = {"format": FORMAT, **dict(sorted(state.items())), "generation": number}
        validate_state(json.loads(json.dumps(body, allow_nan=False)))  # never write what load would refuse
        try:
            self._step("make directories")
            self.directory.mkdir(parents=True, exist_ok=True)
            self._generations.mkdir(exist_ok=True)
            generation.mkdir(mode=0o755)
            self._step("write calibration")
            atomic_write_json(generation / STATE_FILE, body, indent=1)
            if tuning is not None or carried is not None:
                self._step("write tuning")
                if tuning is not None:
                    atomic_write_json(generation / TUNING_FILE, tuning, mode=0o644, indent=1)
                else:
                    atomic_write_bytes(generation / TUNING_FILE, carried, mode=0o644)
            fsync_directory(self._generations)
        except BaseException:
            shutil.rmtree(generation, ignore_errors=True)
            raise
        self._step("flip current")
        _replace_with_symlink(self._current, f"{GENERATIONS}/{number}")  # the unit changes here, at once
        self._step("link names")
        try:
            self._link_names()
        except OSError as exc:  # in force and durable through `current`; the names are fixed at next load
            log.warning("could not point %s at the saved calibration: %s", self.path, exc)
        self._step("remove the previous generation")
        if previous is not None and previous.resolve() != generation.resolve():
            shutil.rmtree(previous, ignore_errors=True)
        self._step("saved")

    def _next_generation_number(self, previous: Path | None) -> int:
        numbers = [0]
        try:
            numbers += [int(p.name) for p in self._generations.iterdir() if p.name.isdigit()]
        except OSError:
            pass
        if previous is not None and previous.name.isdigit():
            numbers.append(int(previous.name))
        return max(numbers) + 1

    def clear(self) -> bool:
        """Forget the saved calibration (and the exported tuning); True if there was one.

        Raises OSError when it cannot (read-only directory, ...), with everything as it was: the caller
        keeps the calibration in force then, so camera and files agree."""
        generation = self._current_generation()
        if generation is not None:
            self._step("unlink current")
            os.unlink(self._current)  # the one step that clears; all else is tidying
            fsync_directory(self.directory)
            for path in (self.path, self.tuning_path):
                _unlink_quietly(path)
            shutil.rmtree(self._generations, ignore_errors=True)
            return True
        removed = False
        for path in (self.path, self.tuning_path):  # the older layout
            try:
                path.unlink()
                removed = removed or path == self.path
            except FileNotFoundError:
                pass
        return removed


def _replace_with_symlink(path: Path, target: str) -> None:
    """Make `path` a symlink to `target`, atomically (a temporary link renamed over it)."""
    temporary = path.parent / f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    os.symlink(target, temporary)
    try:
        os.replace(temporary, path)
    except BaseException:
        _unlink_quietly(temporary)
        raise
    fsync_directory(path.parent)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
