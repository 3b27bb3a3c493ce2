"""CURVE key text, shared by agent and viewer: checking a public key a user pasted, and the certificate
file format (ZeroMQ's, as `zmq.auth.create_certificates` writes and `load_certificate` reads).

Pure string functions, no sockets and no file I/O; each side keeps its own key files (pi_agent/security.py,
host_viewer/security.py).
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

# Z85 (ZeroMQ RFC 32): 5 characters per 4 bytes, so a 32-byte CURVE key is 40 characters.
Z85_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
_Z85_VALUE = {c: i for i, c in enumerate(Z85_ALPHABET)}
KEY_LENGTH = 40


def check_public_key(text: str) -> str:
    """The key stripped of spaces and quotes, or a ValueError saying what a key looks like."""
    key = text.strip().strip("'\"")
    problem = None
    if len(key) != KEY_LENGTH:
        problem = f"it has {len(key)} characters"
    elif any(c not in _Z85_VALUE for c in key):
        problem = "it contains characters outside the Z85 alphabet"
    else:
        for i in range(0, KEY_LENGTH, 5):
            value = 0
            for c in key[i:i + 5]:
                value = value * 85 + _Z85_VALUE[c]
            if value >= 2**32:
                problem = "it does not decode to 32 bytes"
                break
    if problem:
        raise ValueError(f"not a CURVE public key ({problem}): a key is 40 Z85 characters, as printed by "
                         f"`pi-agent keys` or `host-viewer keys`")
    return key


def render_certificate(public_key: str, secret_key: str | None = None, comment: str = "") -> bytes:
    """A ZeroMQ certificate file: public key only, or with the secret key (then keep it 0600)."""
    kind = "**Secret** Certificate" if secret_key else "Public Certificate"
    lines = [
        f"#   ****  Generated on {datetime.datetime.now():%Y-%m-%d %H:%M:%S} by picamlink  ****",
        f"#   ZeroMQ CURVE {kind}",
    ]
    if secret_key:
        lines.append("#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.")
    if comment:
        lines.append(f"#   {comment}")
    lines += ["", "metadata", "curve", f'    public-key = "{public_key}"']
    if secret_key:
        lines.append(f'    secret-key = "{secret_key}"')
    return ("\n".join(lines) + "\n").encode("utf-8")


def parse_certificate(text: str) -> tuple[str, str | None]:
    """(public key, secret key or None) from certificate text; ValueError when there is no valid public key."""
    public = secret = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#") or "=" not in line:
            continue
        name, value = (part.strip() for part in line.split("=", 1))
        if name == "public-key":
            public = check_public_key(value)
        elif name == "secret-key":
            secret = check_public_key(value)  # same shape
    if public is None:
        raise ValueError("no public-key line in the certificate")
    return public, secret


def public_key_from_text(text: str) -> str:
    """A key pasted by a user, or the contents of a .key file (certificate) holding one."""
    if "public-key" in text:
        return parse_certificate(text)[0]
    words = [w for w in text.split() if not w.startswith("#")]
    if len(words) != 1:
        raise ValueError("expected one CURVE public key (40 Z85 characters) or a .key certificate file")
    return check_public_key(words[0])


def default_config_dir() -> Path:
    """$PICAMLINK_CONFIG_DIR, else $XDG_CONFIG_HOME/picamlink, else ~/.config/picamlink."""
    explicit = os.environ.get("PICAMLINK_CONFIG_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "picamlink"


def quoted_key(key: str) -> str:
    """`key` quoted for a POSIX shell, PowerShell and cmd alike: Z85 has `&`, `$`, `#`, `(`, `<`... but never a
    single quote, so single quotes keep it one literal word."""
    return f"'{key}'"


def key_arguments(argv: list[str], value_options: tuple[str, ...] = ()) -> list[str]:
    """`argv` with every CURVE public key that starts with '-' (about 1 key in 85) made safe from argparse,
    which would read it as an option: after one of `value_options` it becomes `--option=KEY`; as a
    positional it moves behind a `--` at the end (positionals keep their order)."""
    out: list[str] = []
    tail: list[str] = []
    for token in argv:
        looks_like_key = token.startswith("-") and len(token.strip("'\"")) == KEY_LENGTH
        if looks_like_key:
            try:
                check_public_key(token)
            except ValueError:
                looks_like_key = False
        if looks_like_key and out and out[-1] in value_options:
            out[-1] = f"{out[-1]}={token}"
        elif looks_like_key:
            tail.append(token)
        else:
            out.append(token)
    if not tail:
        return out
    if "--" in out:
        return out + tail
    return out + ["--"] + tail
