"""The agent's keys and who may connect: CURVE encryption with an allowlist of viewer keys, like SSH.

    ~/.config/picamlink/agent/            0700
        agent.key, agent.key_secret       the agent's certificate (0600); `pi-agent keys` creates/shows it
        authorized_keys/                  0700; one <name>.key certificate per viewer allowed in
                                          (`pi-agent authorize VIEWER_KEY_OR_FILE`)

`CurveServer.apply_server(sock)` makes the ROUTER a CURVE server behind ZAP: a ThreadAuthenticator on the
socket's context asks `allowed(key)` for every handshake, which reads authorized_keys afresh, so
authorising or revoking (deleting the file) a viewer takes effect without restarting the agent. An
unknown key fails the handshake (HANDSHAKE_FAILED_AUTH on the viewer); nothing it sends reaches the agent.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator

from protocol.address import is_loopback, parse_address
from protocol.keys import default_config_dir, parse_certificate, public_key_from_text, render_certificate

from .atomic import atomic_write_bytes
from .ratelog import RateLimitedLog

log = logging.getLogger(__name__)

KEY_NAME = "agent"


def agent_dir(config_dir: str | os.PathLike | None = None) -> Path:
    return Path(config_dir).expanduser() / "agent" if config_dir else default_config_dir() / "agent"


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) if needed and make it owner-only (0700)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if stat.S_IMODE(path.stat().st_mode) != 0o700:
        path.chmod(0o700)
    return path


@dataclass(frozen=True)
class AgentKeys:
    public: str
    secret: str
    directory: Path

    @property
    def authorized_dir(self) -> Path:
        return self.directory / "authorized_keys"

    @property
    def public_file(self) -> Path:
        return self.directory / f"{KEY_NAME}.key"


def keys_exist(config_dir=None) -> bool:
    return (agent_dir(config_dir) / f"{KEY_NAME}.key_secret").exists()


def load_keys(config_dir=None) -> AgentKeys:
    """The agent's key pair; FileNotFoundError if `pi-agent keys` has not created it."""
    directory = agent_dir(config_dir)
    secret_file = directory / f"{KEY_NAME}.key_secret"
    mode = stat.S_IMODE(secret_file.stat().st_mode)
    if mode & 0o077:
        raise PermissionError(f"{secret_file} is readable by others (mode {mode:o}); run chmod 600 {secret_file}")
    public, secret = parse_certificate(secret_file.read_text())
    if secret is None:
        raise ValueError(f"{secret_file} holds no secret key")
    return AgentKeys(public=public, secret=secret, directory=directory)


def create_or_load_keys(config_dir=None) -> tuple[AgentKeys, bool]:
    """(keys, created): the existing pair, or a new one written with owner-only permissions."""
    if keys_exist(config_dir):
        return load_keys(config_dir), False
    directory = private_dir(agent_dir(config_dir))
    private_dir(directory / "authorized_keys")
    public, secret = (k.decode("ascii") for k in zmq.curve_keypair())
    atomic_write_bytes(directory / f"{KEY_NAME}.key", render_certificate(public, comment="picamlink agent"))
    atomic_write_bytes(directory / f"{KEY_NAME}.key_secret", render_certificate(public, secret, "picamlink agent"))
    log.info("created the agent's key in %s", directory)
    return AgentKeys(public=public, secret=secret, directory=directory), True


# --- StrictModes: an allowlist others can write to is no allowlist -----------------------------------

def _private_group(gid: int) -> bool:
    """The user's own group with no other member (Debian's sshd lets such a group write, as here)."""
    if gid != os.getegid():
        return False
    try:
        import grp
        import pwd

        me = pwd.getpwuid(os.geteuid()).pw_name
        return set(grp.getgrgid(gid).gr_mem) <= {me}
    except (ImportError, KeyError):
        return False


def _unsafe_mode(st: os.stat_result) -> str | None:
    """Why a file or directory with this stat lets someone else change it, or None."""
    if st.st_uid not in (0, os.geteuid()):
        return f"is owned by uid {st.st_uid}, not by this user or root"
    if st.st_mode & stat.S_IWOTH:
        return f"is writable by everyone (mode {stat.S_IMODE(st.st_mode):o})"
    if st.st_mode & stat.S_IWGRP and not _private_group(st.st_gid):
        return f"is writable by its group (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _directories_problem(directory: Path, via: str, holding: str | None) -> str | None:
    """Why `directory` (a real path) or one above it up to the home directory (or /) is unsafe, or None.
    A world-writable directory with the sticky bit (/tmp) is accepted above the first one."""
    home = Path(os.path.realpath(os.path.expanduser("~")))
    own_directory = True
    while True:
        try:
            st = directory.stat()
        except OSError as exc:
            return f"{directory} cannot be read: {exc.strerror}"
        problem = _unsafe_mode(st)
        sticky_shared = not own_directory and st.st_mode & stat.S_ISVTX and st.st_uid in (0, os.geteuid())
        if problem and not (sticky_shared and "writable" in problem):
            what = f" holding {holding}" if own_directory and holding else ""
            return f"the directory {directory}{what}{via} {problem}"
        if directory == home or directory.parent == directory:
            return None
        directory = directory.parent
        own_directory = False


def key_file_problem(path: Path) -> str | None:
    """Why sshd's StrictModes would refuse the authorized key `path`, or None when it is safe.

    As sshd (auth.c secure_filename / safe_path) does: the file, after following any symlink, and every
    directory above it up to the home directory (or /) must be owned by this user or root and writable
    by no one else. Unlike sshd, a world-writable directory with the sticky bit (/tmp) is accepted ABOVE
    the key's own directory: no one else can rename or replace entries in it. Debian's exception for a
    private user group applies. Not checked where there are no POSIX owners (Windows)."""
    if not hasattr(os, "geteuid"):
        return None
    real = Path(os.path.realpath(path))
    via = f" (via the symlink {path})" if real != Path(os.path.abspath(path)) else ""
    try:
        st = real.stat()
    except OSError as exc:
        return f"{real}{via} cannot be read: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return f"{real}{via} is not a regular file"
    problem = _unsafe_mode(st)
    if problem:
        return f"{real}{via} {problem}"
    return _directories_problem(real.parent, via, real.name)


# ZAP reads the allowlist at every handshake: say why a file is refused once per 5 minutes, not per handshake.
_refusals_log = RateLimitedLog(log, interval=300.0, burst=1)
# A stranger retrying (or a flood of CURVE handshakes) is logged a few times per minute and key.
_strangers_log = RateLimitedLog(log, interval=60.0, burst=2)


def _log_refusal(path: Path, reason: str) -> None:
    _refusals_log.warning((str(path), reason), "refusing the authorized key %s: %s (as sshd's StrictModes would)",
                          path, reason)


@dataclass(frozen=True)
class AllowList:
    """authorized_keys read once: `allowed` {public key: name}; `refused` {file: reason} (unsafe files)."""

    allowed: dict[str, str]
    refused: dict[str, str]


def read_allowlist(config_dir=None) -> AllowList:
    """Every key file in authorized_keys, each accepted or refused with the reason (logged, rate-limited)."""
    directory = agent_dir(config_dir) / "authorized_keys"
    allowed: dict[str, str] = {}
    refused: dict[str, str] = {}
    try:
        entries = sorted(directory.glob("*.key"))
    except OSError:
        return AllowList(allowed, refused)
    for path in entries:
        problem = key_file_problem(path)
        if problem:
            refused[str(path)] = problem
            _log_refusal(path, problem)
            continue
        try:
            allowed[parse_certificate(path.read_text())[0]] = path.stem
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            log.warning("ignoring %s: %s", path, exc)
    return AllowList(allowed, refused)


def authorized_keys(config_dir=None) -> dict[str, str]:
    """{public key: name} of every viewer allowed in (an unreadable file is skipped and logged; an unsafe
    one, writable by others, refused and logged: see `key_file_problem`)."""
    return read_allowlist(config_dir).allowed


def authorized_dir_problem(config_dir=None) -> str | None:
    """Why every key placed in authorized_keys would be refused (the directory, or one above it, is
    writable by others), or None (also when it does not exist yet: `authorize` creates it owner-only)."""
    if not hasattr(os, "geteuid"):
        return None
    directory = agent_dir(config_dir) / "authorized_keys"
    if not directory.exists():
        return None
    real = Path(os.path.realpath(directory))
    via = f" (via the symlink {directory})" if real != Path(os.path.abspath(directory)) else ""
    return _directories_problem(real, via, None)


def authorize(key_or_file: str, name: str | None = None, config_dir=None) -> tuple[str, Path, bool]:
    """Allow a viewer in: its public key as text or a file holding it. Returns (key, file, newly added)."""
    source = Path(key_or_file).expanduser()
    if len(key_or_file) != 40 and source.is_file():
        key = public_key_from_text(source.read_text())
        default_name = source.stem.removesuffix(".key")
    else:
        try:
            key = public_key_from_text(key_or_file)
        except ValueError as exc:
            if os.sep in key_or_file and not source.exists():  # meant as a file
                raise ValueError(f"no such file: {key_or_file}; read as a key instead: {exc}") from None
            raise
        default_name = "viewer-" + re.sub(r"[^A-Za-z0-9]", "", key)[:8]
    problem = authorized_dir_problem(config_dir)
    if problem:
        raise UnsafeKeyPath(f"refused: {problem}, so the agent would refuse every key in it (as sshd's "
                            f"StrictModes does); make it writable only by you (chmod go-w) and try again")
    existing = authorized_keys(config_dir)
    directory = private_dir(agent_dir(config_dir) / "authorized_keys")
    if key in existing:
        return key, directory / f"{existing[key]}.key", False
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name or default_name).strip(".") or "viewer"
    path = directory / f"{stem}.key"
    n = 2
    while path.exists():
        path = directory / f"{stem}-{n}.key"
        n += 1
    atomic_write_bytes(path, render_certificate(key, comment=f"viewer allowed to connect: {stem}"))
    problem = key_file_problem(path)
    if problem:
        path.unlink()
        raise UnsafeKeyPath(f"refused: {problem}, so the agent would refuse this key (as sshd's StrictModes "
                            f"does); fix the permissions and try again")
    return key, path, True


class UnsafeKeyPath(PermissionError):
    """authorized_keys (or a directory above it) is writable by others: keys there would be refused."""


# One ZAP authenticator per ZeroMQ context (it binds the context's inproc ZAP endpoint); each CurveServer
# registers its own ZAP domain on it, so several agents can share a context with different allowlists.
_authenticators: dict[int, tuple[ThreadAuthenticator, set[str]]] = {}
_authenticators_lock = threading.Lock()


def _started_authenticator(context: zmq.Context, timeout: float = 2.0) -> ThreadAuthenticator:
    """A running ZAP authenticator on `context`. The inproc ZAP endpoint of a just-stopped one is released
    by libzmq's reaper thread a moment later, so a bind that finds it still in use is retried briefly."""
    deadline = time.monotonic() + timeout
    while True:
        auth = ThreadAuthenticator(context, log=logging.getLogger(__name__ + ".zap"))
        try:
            auth.start()
            return auth
        except zmq.ZMQError as exc:
            if getattr(auth, "zap_socket", None) is not None:
                auth.zap_socket.close(linger=0)  # the socket whose bind failed
            if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class CurveServer:
    """Applied to the agent's ROUTER: CURVE server keys, and a ZAP allowlist read from authorized_keys."""

    def __init__(self, keys: AgentKeys):
        self.keys = keys
        self.domain = f"picamlink-{secrets.token_hex(4)}"
        self.refused = 0  # handshakes refused (for logs and tests)
        self._context: zmq.Context | None = None

    # the ZAP credentials provider interface (called on the authenticator's thread)
    def callback(self, domain: str, key: bytes) -> bool:
        text = key.decode("ascii", "replace") if isinstance(key, bytes) else str(key)
        allowed = authorized_keys(self.keys.directory.parent)
        if text in allowed:
            log.debug("viewer %s (%s) authorised", allowed[text], text)
            return True
        self.refused += 1
        _strangers_log.warning(text, "refused a viewer with an unknown key %s (allow it with: pi-agent authorize %s)",
                               text, text)
        return False

    @property
    def thread(self) -> threading.Thread | None:
        """The ZAP authenticator's thread (for the agent's watchdog): without it no handshake completes."""
        with _authenticators_lock:
            entry = _authenticators.get(id(self._context)) if self._context is not None else None
        return getattr(entry[0], "thread", None) if entry is not None else None

    def apply_server(self, sock: zmq.Socket) -> None:
        """Before bind: make `sock` a CURVE server whose clients ZAP checks against the allowlist."""
        self._start_authenticator(sock.context)
        sock.setsockopt_string(zmq.ZAP_DOMAIN, self.domain)
        sock.curve_secretkey = self.keys.secret.encode("ascii")
        sock.curve_publickey = self.keys.public.encode("ascii")
        sock.curve_server = True
        if not authorized_keys(self.keys.directory.parent):
            log.warning("no viewer is authorised yet: run `host-viewer keys` on the viewer's machine and "
                        "`pi-agent authorize VIEWER_KEY` here")

    def _start_authenticator(self, context: zmq.Context) -> None:
        with _authenticators_lock:
            entry = _authenticators.get(id(context))
            if entry is None:
                entry = _authenticators[id(context)] = (_started_authenticator(context), set())
            auth, domains = entry
            auth.configure_curve_callback(domain=self.domain, credentials_provider=self)
            domains.add(self.domain)
        self._context = context

    def close(self) -> None:
        """Unregister from the authenticator (stopped when its last agent goes)."""
        context, self._context = self._context, None
        if context is None:
            return
        with _authenticators_lock:
            entry = _authenticators.get(id(context))
            if entry is None:
                return
            auth, domains = entry
            domains.discard(self.domain)
            auth.credentials_providers.pop(self.domain, None)
            if not domains:
                del _authenticators[id(context)]
                auth.stop()


class InsecureListen(ValueError):
    """Refusing to stream in plain text to a network."""


def server_security(listen: str, *, secure: bool = False, insecure: bool = False, config_dir=None) -> CurveServer | None:
    """What `pi-agent` runs with: CURVE when asked (`secure`) or when listening beyond loopback, plain text
    on loopback (the quick start) or with `insecure`. Raises InsecureListen with the sentence to show."""
    host, _port = parse_address(listen, listening=True)
    if secure and insecure:
        raise InsecureListen("--secure and --insecure contradict each other; choose one")
    if insecure:
        if not is_loopback(host):
            log.warning("--insecure: streaming video and taking commands in plain text from anyone who can "
                        "reach %s", listen)
        return None
    if not secure and is_loopback(host):
        return None
    if not keys_exist(config_dir):
        raise InsecureListen(
            f"refusing to listen on {listen} without encryption: run `pi-agent keys` to create the agent's key "
            f"and `pi-agent authorize VIEWER_KEY` for each viewer, or pass --insecure to stream in plain text "
            f"to anyone on the network")
    return CurveServer(load_keys(config_dir))
