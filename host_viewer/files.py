"""Writing files so that none is ever half-written: a temp file in the same directory, fsync, os.replace."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _user_mode(path: str) -> None:
    """mkstemp makes files 0600 on POSIX; a saved picture gets the usual 0666 & ~umask. By path, not fd:
    Windows has no os.fchmod (and its files follow the folder's ACL, nothing to do there)."""
    if os.name == "posix":
        os.chmod(path, 0o666 & ~_umask())


def atomic_write_bytes(path: str | os.PathLike, data: bytes | bytearray | memoryview) -> Path:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        _user_mode(tmp)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def temp_path_beside(path: str | os.PathLike) -> Path:
    """A fresh temp file name in the directory of `path` (for writers that need a name, not bytes)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix + ".tmp", dir=path.parent)
    os.close(fd)
    _user_mode(tmp)
    return Path(tmp)


def fsync_and_replace(tmp: Path, path: str | os.PathLike) -> Path:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return Path(path)


def safe_name(text: str) -> str:
    """`text` usable as part of a file name on any system (agent names come from the network)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")[:60] or "camera"
