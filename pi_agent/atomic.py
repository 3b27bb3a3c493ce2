"""Saving files so that a crash or SIGKILL at any moment leaves the old file or the new one, never half of one.

The new bytes go to a temporary file in the same directory (same filesystem, so the rename is atomic), the
file is fsynced, renamed over the target with os.replace, and the directory is fsynced so the rename itself
survives a power cut. A writer killed midway leaves only a stray temporary file, which
`remove_stale_temporaries` cleans up (the agent calls it at start).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def fsync_directory(directory: Path) -> None:
    """Make a rename or unlink in `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # some platforms cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` atomically and durably; the file gets permissions `mode` (owner-only
    by default: calibration state and keys are nobody else's business)."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    fd, temp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=directory)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(temp)
        raise
    os.close(fd)
    try:
        os.replace(temp, path)
    except BaseException:
        _unlink_quietly(temp)
        raise
    fsync_directory(directory)


def atomic_write_json(path: str | os.PathLike, value: Any, mode: int = 0o600, indent: int | None = 2) -> None:
    """`value` as JSON (UTF-8, trailing newline), written with `atomic_write_bytes`."""
    text = json.dumps(value, indent=indent, sort_keys=False, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def remove_stale_temporaries(path: str | os.PathLike) -> int:
    """Delete temporary files left next to `path` by writers that were killed; returns how many."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    removed = 0
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    prefix = _temp_prefix(path)
    for name in names:
        if name.startswith(prefix) and name.endswith(TEMP_SUFFIX):
            if _unlink_quietly(directory / name):
                removed += 1
    if removed:
        log.info("removed %d stale temporary file(s) next to %s", removed, path)
    return removed


def _unlink_quietly(path: str | os.PathLike) -> bool:
    try:
        os.unlink(path)
        return True
    except OSError:
        return False
