r"""The viewer's key and the agents it trusts, like SSH's ~/.ssh/id_* and known_hosts.

    CONFIG/viewer/           owner only (0700, or an owner-only ACL on Windows)
        viewer.key, viewer.key_secret     the viewer's certificate (owner only); `host-viewer keys` creates/shows it
    CONFIG/known_agents      owner only; lines "HOST:PORT AGENT_PUBLIC_KEY" (or "HOST KEY" for any port)

CONFIG is ~/.config/picamlink on Linux, ~/Library/Application Support/picamlink on macOS, %APPDATA%\picamlink
on Windows, or $PICAMLINK_CONFIG_DIR / --config-dir (platform.config_dir).

The viewer encrypts when it knows the agent's key (`--agent-key`, or known_agents); CURVE then also
proves the agent is the one holding that key. To a loopback address without a known key it connects in
plain text (the quick start); to any other address it refuses unless told `--insecure`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import zmq

from protocol.address import is_loopback, parse_address
from protocol.keys import check_public_key, parse_certificate, quoted_key, render_certificate

from . import platform

log = logging.getLogger(__name__)

KEY_NAME = "viewer"


def config_root(config_dir=None) -> Path:
    return Path(config_dir).expanduser() if config_dir else platform.config_dir()


def known_agents_file(config_dir=None) -> Path:
    return config_root(config_dir) / "known_agents"


def _private_dir(path: Path) -> Path:
    existed = path.is_dir()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not existed or platform.others_can_read(path):
        platform.restrict_to_owner(path, directory=True)
    return path


def _write_private(path: Path, data: bytes) -> None:
    """Owner-only and atomic: temp file in the same directory (mkstemp makes it 0600 on POSIX; on Windows
    its ACL is set before the secret goes in), fsync, rename. No os.fchmod: Windows has none."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if platform.is_windows():
            platform.restrict_to_owner(Path(temp))
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(temp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise


@dataclass(frozen=True)
class ViewerKeys:
    public: str
    secret: str
    directory: Path


def create_or_load_keys(config_dir=None) -> tuple[ViewerKeys, bool]:
    """(keys, created): the viewer's existing key pair, or a new one with owner-only permissions."""
    directory = config_root(config_dir) / "viewer"
    secret_file = directory / f"{KEY_NAME}.key_secret"
    if secret_file.exists():
        problem = platform.others_can_read(secret_file)
        if problem:
            raise PermissionError(problem)
        public, secret = parse_certificate(secret_file.read_text())
        if secret is None:
            raise ValueError(f"{secret_file} holds no secret key")
        return ViewerKeys(public, secret, directory), False
    _private_dir(directory)
    public, secret = (k.decode("ascii") for k in zmq.curve_keypair())
    _write_private(directory / f"{KEY_NAME}.key", render_certificate(public, comment="picamlink viewer"))
    _write_private(secret_file, render_certificate(public, secret, comment="picamlink viewer"))
    log.info("created the viewer's key in %s", directory)
    return ViewerKeys(public, secret, directory), True


def _address_key(address: str) -> str:
    host, port = parse_address(address)
    return f"{host}:{port}"


def read_known_agents(config_dir=None) -> dict[str, str]:
    """{"HOST:PORT" or "HOST": key} from known_agents; malformed lines are skipped and logged."""
    path = known_agents_file(config_dir)
    known: dict[str, str] = {}
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return known
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError("expected 'HOST:PORT KEY'")
            known[parts[0]] = check_public_key(parts[1])
        except ValueError as exc:
            log.warning("%s line %d ignored: %s", path, number, exc)
    return known


def known_agent_key(address: str, config_dir=None) -> str | None:
    known = read_known_agents(config_dir)
    host, port = parse_address(address)
    return known.get(f"{host}:{port}") or known.get(host)


def remember_agent(address: str, key: str, config_dir=None) -> Path:
    """Add (or replace) `address KEY` in known_agents."""
    key = check_public_key(key)
    entry = _address_key(address)
    path = known_agents_file(config_dir)
    _private_dir(path.parent)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        lines = ["# picamlink agents this viewer trusts: HOST:PORT AGENT_PUBLIC_KEY (see `pi-agent keys`)"]
    lines = [line for line in lines if line.split()[:1] != [entry]] + [f"{entry} {key}"]
    _write_private(path, ("\n".join(lines) + "\n").encode())
    return path


def how_to_trust(address: str, config_dir=None) -> str:
    """The one sentence that tells a user how to trust an agent (commands quoted so they paste into a shell)."""
    entry = _address_key(address)
    option = f" --config-dir {quoted_path(config_root(config_dir))}" if config_dir else ""
    return (f"run `pi-agent keys` on the Pi, then here `host-viewer trust {entry} 'AGENT_KEY'{option}` (kept in "
            f"{known_agents_file(config_dir)}), or pass --agent-key='AGENT_KEY' once")


def how_to_authorize(public_key: str) -> str:
    """The command that lets this viewer in, to run on the Pi."""
    return f"pi-agent authorize {quoted_key(public_key)}"


def quoted_path(path: Path) -> str:
    """A path quoted for a shell when it needs it (single quotes; Windows paths in double quotes)."""
    text = str(path)
    if platform.is_windows():
        return f'"{text}"' if " " in text else text
    import shlex

    return shlex.quote(text)


class CurveClient:
    """Applied to the viewer's DEALER: its own key pair and the agent's public key it expects."""

    def __init__(self, server_key: str, keys: ViewerKeys, config_dir=None):
        self.server_key = check_public_key(server_key)
        self.keys = keys
        self.config_dir = config_dir  # named in the hints the client gives

    def apply_client(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.keys.secret.encode("ascii")
        sock.curve_publickey = self.keys.public.encode("ascii")
        sock.curve_serverkey = self.server_key.encode("ascii")


class UntrustedAgent(ValueError):
    """The viewer does not know the agent's key and will not go plain text to a network address."""


def client_security(address: str, *, agent_key: str | None = None, insecure: bool = False,
                    config_dir=None) -> CurveClient | None:
    """CURVE when the agent's key is known (--agent-key or known_agents), plain text on loopback or with
    `insecure`; otherwise UntrustedAgent with the sentence to show."""
    host, _port = parse_address(address)
    if insecure:
        return None
    key = agent_key or known_agent_key(address, config_dir)
    if key is None:
        if is_loopback(host):
            return None
        raise UntrustedAgent(f"the key of the agent at {address} is unknown here: {how_to_trust(address, config_dir)} "
                             f"(or pass --insecure to connect in plain text)")
    keys, created = create_or_load_keys(config_dir)
    if created:
        log.warning("created this viewer's key; allow it on the Pi with: %s", how_to_authorize(keys.public))
    return CurveClient(key, keys, config_dir)
