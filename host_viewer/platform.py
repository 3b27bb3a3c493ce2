"""What differs between the laptops the viewer runs on (Linux, macOS, Windows): where its configuration
lives, how a file is made readable by its owner only, and how that is checked.

POSIX: mode bits (0600 files, 0700 directories). Windows has no meaningful mode bits (os.chmod only sets the
read-only flag, and os.fchmod does not exist): there the access control list is set and read with icacls,
which every Windows since Vista ships (`icacls PATH /inheritance:r /grant:r USER:F` leaves the owner alone
with full access; `icacls PATH` lists the entries). `SYSTEM` and `Administrators` may keep access, as
OpenSSH for Windows allows for its private keys.

`PLATFORM` is read at call time so tests can take the Windows branch on Linux.
"""

from __future__ import annotations

import getpass
import logging
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

PLATFORM = sys.platform
APP = "picamlink"
# Principals that may hold access to an owner-only file on Windows besides its owner (OpenSSH's rule).
WINDOWS_TRUSTED = ("NT AUTHORITY\\SYSTEM", "BUILTIN\\Administrators", "SYSTEM", "Administrators")


def is_windows() -> bool:
    return PLATFORM.startswith("win")


def config_dir() -> Path:
    """$PICAMLINK_CONFIG_DIR, else the platform's per-user configuration directory (platformdirs):
    ~/.config/picamlink (or $XDG_CONFIG_HOME) on Linux, ~/Library/Application Support/picamlink on macOS,
    %APPDATA%\\picamlink on Windows. A ~/.config/picamlink made by an earlier version is kept in use."""
    explicit = os.environ.get("PICAMLINK_CONFIG_DIR")
    if explicit:
        return Path(explicit).expanduser()
    if PLATFORM.startswith("linux"):
        base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
        return Path(base) / APP
    legacy = Path(os.path.expanduser("~")) / ".config" / APP
    if legacy.is_dir():
        return legacy
    if PLATFORM == "darwin":
        from platformdirs.macos import MacOS

        return Path(MacOS(APP, appauthor=False).user_config_dir)
    if is_windows():
        from platformdirs.windows import Windows

        return Path(Windows(APP, appauthor=False, roaming=True).user_config_dir)
    import platformdirs

    return Path(platformdirs.user_config_dir(APP, appauthor=False))


def _icacls(*args: str) -> str:
    """Run icacls (Windows); its output as text. Replaced in tests that take the Windows branch on Linux."""
    result = subprocess.run(["icacls", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise PermissionError(f"icacls {' '.join(args)} failed: {(result.stderr or result.stdout).strip()}")
    return result.stdout


def _windows_user() -> str:
    domain = os.environ.get("USERDOMAIN")
    user = os.environ.get("USERNAME") or getpass.getuser()
    return f"{domain}\\{user}" if domain else user


def restrict_to_owner(path: Path, directory: bool = False) -> None:
    """Make `path` readable and writable by its owner only (0600 / 0700, or an owner-only ACL on Windows)."""
    if is_windows():
        grant = f"{_windows_user()}:{'(OI)(CI)F' if directory else 'F'}"
        _icacls(str(path), "/inheritance:r", "/grant:r", grant)
    else:
        os.chmod(path, 0o700 if directory else 0o600)


def others_can_read(path: Path) -> str | None:
    """None when only the owner (and, on Windows, SYSTEM/Administrators) can read `path`; otherwise a
    sentence naming who else can, and the command that fixes it."""
    if is_windows():
        listing = _icacls(str(path))
        me = _windows_user().lower()
        others = []
        for line in listing.splitlines():
            entry = line.replace(str(path), "", 1).strip()
            match = re.match(r"^(?P<who>[^:()]+?):", entry)
            if not match or entry.lower().startswith("successfully processed"):
                continue
            who = match.group("who").strip()
            if who.lower() == me or who.lower().split("\\")[-1] == me.split("\\")[-1]:
                continue
            if who in WINDOWS_TRUSTED:
                continue
            others.append(who)
        if others:
            return (f"{path} can be read by {', '.join(others)}; make it yours alone with: "
                    f"icacls \"{path}\" /inheritance:r /grant:r \"{_windows_user()}:F\"")
        return None
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return f"{path} is readable by others (mode {mode:o}); run chmod 600 '{path}'"
    return None
