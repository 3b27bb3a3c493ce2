"""Client library: connect to an agent, receive the newest frame, send commands, follow events.

    with AgentClient("pi.local:5555") as client:
        frame = client.wait_frame(timeout=5)
        image = frame.decode()                       # BGR ndarray
        client.command("set_controls", {"controls": {"ExposureTime": 10000}})

One DEALER socket carries everything. An I/O thread owns it: it returns a credit for every frame it
receives and keeps only the newest, so however slowly the application takes frames, the one it gets is
fresh. It pings twice a second to estimate the clock offset (frame age across machines) and to notice a
dead agent; after `silence_timeout` without a word it rebuilds the socket and says hello again.
Commands carry an expiry, and with IMMEDIATE set nothing is queued for an agent that is not there.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import math
import secrets
import socket
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import simplejpeg
import zmq
from zmq.utils.monitor import recv_monitor_message

from protocol.address import is_ipv6_literal, parse_address, tcp_endpoint
from protocol import (
    MAX_INBOUND_TO_AGENT, MAX_INBOUND_TO_VIEWER, Bye, ClockOffset, Command, Credit, Error, ErrorCode, Event,
    Frame, Hello, Ping, Pong, Progress, ProtocolError, Result, Sequencer, Welcome, clock_sample, decode, encode,
    unpack_array,
)
from protocol.limits import MAX_MESSAGE_SIZE

from .api import TypedCommands
from .credit import CreditGovernor
from .errors import CommandFailed, command_error  # noqa: F401  (CommandFailed: the base of every command error)
from .security import how_to_authorize, how_to_trust
from .shared import ConnectionState, RecentItems

log = logging.getLogger(__name__)

MONITORED_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                    | zmq.EVENT_CONNECTED | zmq.EVENT_CONNECT_RETRIED)
# What the TCP connection says before any ZeroMQ handshake (the state's detail while connecting): nothing
# listens (the connect was refused and is being retried), or something listens that does not greet as ZMTP
# within NOT_ZMTP_AFTER_S of accepting us (measured on loopback: an agent greets in about a millisecond).
CONNECTION_REFUSED = "connection refused"
CANNOT_RESOLVE = "cannot resolve host"  # ZeroMQ retries a name that does not resolve just like a refusal
NOT_ZMTP = "no ZeroMQ greeting"
NOT_ZMTP_AFTER_S = 1.0

CLIENT_NAME = "host-viewer 0.1.0"
_MONITOR_IDS = itertools.count(1)
# ZeroMQ reports a wrong CURVE key and a peer that hangs up before its greeting alike (no detail; measured:
# a key mismatch and a TCP listener that accepts and closes both give HANDSHAKE_FAILED_NO_DETAIL), so the
# hint names the second case too: an SSH tunnel or proxy whose agent is down looks exactly like this.
_BEHIND_A_TUNNEL = "if this address is a tunnel or proxy, check that the agent behind it is running"


class BadFrame(ValueError):
    """A frame's JPEG could not be decoded (a corrupt or hostile frame): skip it, the stream goes on."""


@dataclass(frozen=True)
class ReceivedFrame:
    """A frame as received: JPEG bytes (decode on demand), metadata and raw statistics of its request.

    Made by the I/O thread and handed to the application whole (frozen; its metadata and stats dicts are
    never changed after it is published), so both threads may read it without a lock."""

    sequence: int
    capture_ns: int  # agent clock
    received_ns: int  # viewer clock
    width: int
    height: int
    jpeg: bytes
    metadata: dict
    stats: dict
    offset_ns: int  # agent clock minus viewer clock, as estimated when it arrived
    wire_bytes: int = 0  # size of the whole frame message (JPEG, metadata, statistics, envelope)

    def decode(self) -> np.ndarray:
        """The BGR image; raises BadFrame (a ValueError) when the JPEG is corrupt."""
        try:
            return simplejpeg.decode_jpeg(self.jpeg, colorspace="BGR")
        except Exception as exc:  # simplejpeg raises ValueError or RuntimeError depending on the damage
            raise BadFrame(f"frame {self.sequence}: undecodable JPEG of {len(self.jpeg)} bytes ({exc})") from None

    def age_ms(self, viewer_now_ns: int | None = None) -> float:
        """Capture (agent clock) to `viewer_now_ns` (viewer clock, default now), corrected by the offset."""
        now = time.monotonic_ns() if viewer_now_ns is None else viewer_now_ns
        return (now + self.offset_ns - self.capture_ns) / 1e6

    def histograms(self) -> np.ndarray | None:
        """(4, bins) raw histograms of R, Gr, Gb, B, or None if the frame carries none."""
        hist = self.stats.get("hist")
        if hist is None:
            return None
        try:
            array = unpack_array(hist, "hist")
        except ProtocolError:
            return None
        if array.ndim != 2 or array.shape[0] != 4 or array.shape[1] == 0:
            return None
        return array


@dataclass
class PendingCommand:
    id: int
    name: str
    future: Future
    on_progress: Callable[[Progress], None] | None = None
    progress: list = field(default_factory=list)
    # Written by the I/O thread only (issue 17: nothing waits forever across a link outage):
    deadline: float = 0.0  # local monotonic s: no word about it by then means its fate is settled (expired)
    connection: int = 0  # the socket generation it was sent (or last heard of) on
    instance: str | None = None  # the agent instance it was sent to
    next_probe: float = 0.0  # when to ask the agent (status) whether a job cut off by an outage still runs
    finished_at: float | None = None  # when a probe found the agent idle again (its reply may still come)
    probe_state: dict = field(default_factory=dict)  # what that probe said (the agent's calibration state)
    command: Command | None = None  # the message as sent: a read-only command is sent again after a reconnection


REPLY_GRACE_S = 1.0  # a reply may arrive this long after the command's expiry (round trip, scheduling)
MAX_TTL_S = 7 * 24 * 3600.0  # the longest a command may wait for its reply (a week: "as long as it takes")
PROBE_EVERY_S = 2.0  # how often to ask about a job cut off by a reconnection
LOST_AFTER_IDLE_S = 2.0  # agent idle this long with no final reply: the reply was lost in the outage
# Commands that change nothing on the agent: one cut off by a reconnection is asked again on the new
# connection (its answer describes the agent now, which is what the caller asked for) instead of failing
# with reply_lost. Everything else is asked after, never repeated: running it twice could do harm.
READ_ONLY_COMMANDS = frozenset({"status", "get_controls"})


def _call_back(callback: Callable | None, message, what: str) -> None:
    """Run an application callback on the I/O thread; its exceptions are logged, never fatal to the thread."""
    if callback is None:
        return
    try:
        callback(message)
    except Exception:
        log.exception("%s callback failed", what)


def _agent_instance(welcome: Welcome | None) -> str | None:
    """The agent instance a welcome names (it changes when the agent restarts); None if it names none."""
    agent = welcome.agent if welcome is not None else None
    return agent.get("instance") if isinstance(agent, dict) else None


class AgentClient(TypedCommands):
    """A connection to one agent. Thread-safe for the application; one internal I/O thread.

    Typed commands (set_controls, get_controls, calibrate, snapshot, status) and the `frames()` iterator come
    from TypedCommands; `command()` sends any command by name."""

    def __init__(self, address: str, *, credit: int = 2, context: zmq.Context | None = None,
                 silence_timeout: float = 1.5, ping_interval: float = 0.5, security=None,
                 client_name: str = CLIENT_NAME, on_event: Callable[[Event], None] | None = None,
                 config_dir=None, adaptive_credit: bool = True, full_stats: bool = False):
        self.address = address
        host, port = parse_address(address)
        self.endpoint = tcp_endpoint(host, port)
        self._host = host
        self._unresolvable: str | None = None  # why the host name does not resolve (set once, by a helper thread)
        self.credit = max(1, credit)
        # The window follows the link's bandwidth-delay product (host_viewer/credit.py); `credit` is where it
        # starts, and all it ever is with adaptive_credit=False.
        self._governor = CreditGovernor(initial=self.credit, adaptive=adaptive_credit)
        self._full_stats = full_stats  # ask for full statistics and metadata in every frame (≈ 2.5 kB more)
        self._frame_period_ms: float | None = None
        self._outstanding = 0  # credits granted and not yet used by a frame
        self._ctx = context or zmq.Context.instance()
        self._silence_timeout = silence_timeout
        self._ping_interval = ping_interval
        self._security = security  # applies CURVE client options, or None for plain text
        self._config_dir = config_dir if config_dir is not None else getattr(security, "config_dir", None)
        self._client_name = client_name
        self._on_event = on_event
        self._sequencer = Sequencer(time.monotonic_ns)
        self._outbox: deque = deque()
        # Wakes the I/O thread at once for a queued command or close(); otherwise it sleeps until its next
        # deadline (ping, hello, silence): no timer ticks while frames flow or nothing happens. Made by start().
        self._wake_reader: socket.socket | None = None
        self._wake_writer: socket.socket | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, PendingCommand] = {}
        self._lock = threading.Lock()
        self._frame_cond = threading.Condition(self._lock)
        self._latest: ReceivedFrame | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.clock = ClockOffset()
        self.welcome: Welcome | None = None
        # Shared with the application thread (issue 16 audit): the connection state is one immutable value
        # replaced whole; events and errors are snapshot containers; counters are ints written only here.
        self.connection = ConnectionState(since=time.monotonic())
        self.events: RecentItems[Event] = RecentItems(maxlen=100)
        self.errors: RecentItems[Error] = RecentItems(maxlen=100)
        # every event received, by name (events keeps only the last 100): a dict replaced whole, never mutated
        self.event_counts: dict[str, int] = {}
        self.frames_received = 0
        self.frames_dropped = 0  # gaps in the agent's frame numbers (frames not sent to us)
        self.bytes_received = 0
        self.reconnects = 0
        self._last_sequence: int | None = None
        self._welcome_event = threading.Event()
        self._tcp_connected_at: float | None = None  # TCP up, ZeroMQ handshake not yet done (I/O thread only)
        self._pings_sent: deque[int] = deque(maxlen=16)  # t0 of recent pings, to match pongs
        # One routing id for every socket this client makes: after a reconnection the agent's ROUTER hands
        # the session over to the new connection (ROUTER_HANDOVER), so replies to commands sent before an
        # outage still reach us. ZeroMQ reserves ids starting with a zero byte for its own.
        self._routing_id = b"v" + secrets.token_bytes(15)
        self._connection = 0  # socket generation (I/O thread only)
        self._probes: dict[str, list[int]] = {}  # status probe id -> the commands it asks about (I/O thread)
        self._probe_ids = itertools.count(1)
        self._handshake_done = False  # set by the socket monitor: say hello at once

    # lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> "AgentClient":
        self._wake_reader, self._wake_writer = socket.socketpair()
        for end in (self._wake_reader, self._wake_writer):
            end.setblocking(False)
        self._thread = threading.Thread(target=self._run, name=f"client-{self.address}", daemon=True)
        self._thread.start()
        threading.Thread(target=self._check_resolves, name=f"resolve-{self.address}", daemon=True).start()
        return self

    def _check_resolves(self) -> None:
        """Tell a host name that does not resolve (a typo such as raspberrypi.lcoal) from an agent that is
        not running: ZeroMQ reports both as a connect retried. Off the I/O thread: a lookup can be slow."""
        try:
            ipaddress.ip_address(self._host.split("%")[0])
            return  # an address literal: nothing to resolve
        except ValueError:
            pass
        try:
            socket.getaddrinfo(self._host, None, type=socket.SOCK_STREAM)
            return
        except (OSError, UnicodeError) as exc:
            self._unresolvable = getattr(exc, "strerror", None) or str(exc)
        if self.state in ("connecting", "reconnecting"):
            self._set_state(self.state, CANNOT_RESOLVE, self._unresolvable_hint())

    def _unresolvable_hint(self) -> str:
        return (f"the name {self._host!r} does not resolve here ({self._unresolvable}): check its spelling, or "
                f"give the Pi's IP address (`hostname -I` on the Pi)")

    def close(self) -> None:
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.state = "closed"
        if self._wake_reader is not None and not self._thread.is_alive():
            self._wake_reader.close()
            self._wake_writer.close()
        with self._lock:
            pending = list(self._pending.values())
            self._pending.clear()
        for p in pending:
            if not p.future.done():
                p.future.set_exception(command_error("closed", "the client was closed before a reply came"))

    def __enter__(self) -> "AgentClient":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def status_text(self) -> str:
        """The connection state as the window shows it, e.g. "reconnecting" or "refused: not authorised"."""
        return self.connection.text

    def _set_state(self, state: str, detail: str = "", hint: str = "") -> None:
        """Replace the connection state in one assignment (readers on other threads see old or new, whole)."""
        current = self.connection
        if (state, detail, hint) != (current.state, current.detail, current.hint):
            since = current.since if (state, detail) == (current.state, current.detail) else time.monotonic()
            self.connection = ConnectionState(state, detail, hint, since)

    @property
    def state(self) -> str:
        return self.connection.state

    @state.setter
    def state(self, value: str) -> None:
        self._set_state(value)

    @property
    def state_detail(self) -> str:
        return self.connection.detail

    @property
    def state_hint(self) -> str:
        return self.connection.hint

    def wait_connected(self, timeout: float = 5.0) -> Welcome:
        if not self._welcome_event.wait(timeout):
            raise TimeoutError(f"no welcome from {self.address} within {timeout} s (state: {self.state})")
        return self.welcome

    # frames ------------------------------------------------------------------------------------------
    def latest(self) -> ReceivedFrame | None:
        with self._lock:
            return self._latest

    def wait_frame(self, timeout: float = 5.0, newer_than: int | None = None,
                   after: ReceivedFrame | None = None) -> ReceivedFrame:
        """The newest frame, once there is one with a sequence above `newer_than` and (`after`) other than
        the frame `after`, i.e. received since it; TimeoutError otherwise. Loops that take frame after frame
        pass `after`: a restarted agent numbers its frames from 0 again, so "a higher number" would wait for
        the new agent to pass the old one's count."""
        def ready() -> bool:
            latest = self._latest
            return (latest is not None and (newer_than is None or latest.sequence > newer_than)
                    and latest is not after)

        with self._frame_cond:
            if not self._frame_cond.wait_for(ready, timeout):
                raise TimeoutError(f"no new frame from {self.address} within {timeout} s (state: {self.state})")
            return self._latest

    # commands ----------------------------------------------------------------------------------------
    def send_command(self, name: str, args: dict | None = None, *, ttl: float = 5.0,
                     on_progress: Callable[[Progress], None] | None = None) -> PendingCommand:
        """Send a command; the returned PendingCommand's future resolves to the Result's value dict or
        raises CommandFailed. The command expires `ttl` seconds from now (on the agent's clock).

        Raises ValueError for a `ttl` that is not a finite number of seconds up to MAX_TTL_S (a negative one
        makes a command that has already expired). Before start() it waits in the outbox; on a closed client
        the future fails at once (ClientClosed)."""
        if not isinstance(ttl, (int, float)) or not math.isfinite(ttl) or ttl > MAX_TTL_S:
            raise ValueError(f"a command's timeout must be a finite number of seconds up to {MAX_TTL_S:g}, "
                             f"not {ttl!r}")
        command_id = next(self._ids)
        expires = 0  # no expiry until the clock offset is known
        if self.clock.known:  # a deadline before the agent's clock began is already past, never "none" (0)
            expires = min(max(self.clock.to_agent(time.monotonic_ns() + int(ttl * 1e9)), 1), 2**64 - 1)
        command = Command(id=command_id, name=name, args=args or {}, expires_ns=expires)
        pending = PendingCommand(id=command_id, name=name, future=Future(), on_progress=on_progress,
                                 deadline=time.monotonic() + max(ttl, 0.0) + REPLY_GRACE_S, command=command)
        if self._stop.is_set():
            problem = "closed", f"the client for {self.address} is closed; {name} was not sent"
        else:
            problem = self._unsendable(command)
        if problem is not None:
            pending.future.set_exception(command_error(*problem))
            return pending
        with self._lock:
            self._pending[command_id] = pending
        self._outbox.append(command)
        self._wake()
        return pending

    def _wake(self) -> None:
        if self._wake_writer is None:  # not started: the outbox is read when it starts
            return
        try:
            self._wake_writer.send(b"\0")
        except OSError:  # a wake-up is already pending (full buffer), or the client is closed
            pass

    @staticmethod
    def _unsendable(command: Command) -> tuple[str, str] | None:
        """(code, sentence) when `command` cannot go on the wire (unencodable, unreadable by the agent, or too
        large), else None. Unreadable: what the agent's strict decoding refuses (e.g. a map key that is not
        text); the agent's answer to that is a protocol error without the command's id, which would leave
        the command waiting for a reply until its expiry."""
        try:
            data = encode(command)
        except (TypeError, ValueError, OverflowError) as exc:
            return ErrorCode.BAD_ARGUMENT, f"{command.name}: arguments cannot be encoded ({exc})"
        if len(data) > MAX_MESSAGE_SIZE["command"]:
            return ErrorCode.TOO_LARGE, (f"{command.name}: {len(data)} bytes exceeds the command limit of "
                                         f"{MAX_MESSAGE_SIZE['command']} bytes")
        try:
            decode(data, max_size=MAX_INBOUND_TO_AGENT)
        except ProtocolError as exc:
            return ErrorCode.BAD_ARGUMENT, f"{command.name!r}: the agent could not read it ({exc.message})"
        return None

    def command(self, name: str, args: dict | None = None, *, timeout: float = 5.0,
                on_progress: Callable[[Progress], None] | None = None) -> dict:
        """Send a command and wait for its final reply (value dict), raising CommandFailed on error.
        Not from a callback (on_progress, on_event): those run on the client's I/O thread, which carries the
        reply; RuntimeError says so (use send_command there, and do not wait on its future)."""
        self._not_on_io_thread(name)
        pending = self.send_command(name, args, ttl=timeout, on_progress=on_progress)
        try:
            return pending.future.result(timeout=timeout + 1.0)
        except TimeoutError:
            raise command_error("timeout", f"no reply to {name} within {timeout} s") from None
        finally:
            self._forget(pending)

    def _not_on_io_thread(self, name: str) -> None:
        """RuntimeError when called on the I/O thread, which would wait for a reply only it can receive."""
        if threading.current_thread() is self._thread:
            raise RuntimeError(f"{name}: a command cannot wait for its reply on the client's I/O thread (in a "
                               f"callback); use send_command() and do not wait for its future there")

    def _forget(self, pending: PendingCommand) -> None:
        """The caller stopped waiting for `pending`: no longer track it (a late reply is dropped)."""
        with self._lock:
            self._pending.pop(pending.id, None)

    # the I/O thread ----------------------------------------------------------------------------------
    def _make_socket(self, connect: bool = True) -> zmq.Socket:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, self._routing_id)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # never queue commands for an agent that is not there
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_INBOUND_TO_VIEWER)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 500)  # a restarted agent is found within a second
        sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
        sock.setsockopt(zmq.HANDSHAKE_IVL, 5000)
        if is_ipv6_literal(self._host):
            sock.setsockopt(zmq.IPV6, 1)  # "[IPv6]:PORT": libzmq connects over IPv4 only otherwise
        if self._security is not None:
            self._security.apply_client(sock)
        if connect:
            sock.connect(self.endpoint)
        return sock

    def _open_connected(self) -> tuple[zmq.Socket, zmq.Socket]:
        """The socket and its monitor, the monitor listening before the connection starts: a handshake
        completed before the monitor's reader connects would be lost, and the first hello would wait for
        its retry (issue 15: 255–297 ms to the first frame)."""
        sock = self._make_socket(connect=False)
        monitor = self._open_monitor(sock)
        sock.connect(self.endpoint)
        return sock, monitor

    def _open_monitor(self, sock: zmq.Socket) -> zmq.Socket:
        """Handshake outcomes from the socket monitor: the only way to learn that an agent refused us.

        pyzmq's get_monitor_socket names the inproc endpoint after the socket's file descriptor, which the
        next socket reuses while libzmq's reaper may still hold the old endpoint (EADDRINUSE on a quick
        reconnect); a name of our own is unique for the process."""
        address = f"inproc://picamlink-monitor-{next(_MONITOR_IDS)}"
        sock.monitor(address, MONITORED_EVENTS)
        monitor = self._ctx.socket(zmq.PAIR)
        monitor.setsockopt(zmq.LINGER, 0)
        monitor.connect(address)
        return monitor

    def _viewer_public_key(self) -> str:
        return getattr(getattr(self._security, "keys", None), "public", "VIEWER_PUBLIC_KEY")

    def _on_monitor(self, monitor: zmq.Socket) -> None:
        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return
            kind, value = event["event"], event["value"]
            if kind == zmq.EVENT_CONNECTED:
                self._tcp_connected_at = time.monotonic()
                continue
            if kind == zmq.EVENT_CONNECT_RETRIED:
                self._tcp_connected_at = None
                if self._unresolvable is not None:
                    if self.state in ("connecting", "reconnecting"):
                        self._set_state(self.state, CANNOT_RESOLVE, self._unresolvable_hint())
                elif self.state in ("connecting", "reconnecting") and self.state_detail != CONNECTION_REFUSED:
                    self._set_state(self.state, CONNECTION_REFUSED,
                                    f"nothing accepts connections at {self.address}: is pi-agent running there, "
                                    f"listening on that port (pi-agent --listen 0.0.0.0:PORT for the network)?")
                continue
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._tcp_connected_at = None
                self._handshake_done = True  # the first hello goes now, not after a retry interval
                if self.state == "refused":
                    self._set_state("connecting")
                continue
            if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                detail = "not authorised"
                hint = (f"the agent at {self.address} does not know this viewer's key: on the Pi run "
                        f"`{how_to_authorize(self._viewer_public_key())}`" if self._security is not None else
                        f"the agent at {self.address} refused this viewer")
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                if self._security is None:
                    detail = "the agent requires encryption"
                    hint = (f"the agent at {self.address} is encrypted and its key is unknown here: "
                            f"{how_to_trust(self.address, self._config_dir)}")
                else:
                    detail = "the agent is not encrypted"
                    hint = (f"the agent at {self.address} streams in plain text although its key is known here; "
                            f"refusing (pass --insecure to accept plain text)")
            elif kind in (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
                if self.state == "refused" and self.state_detail and self.state_detail != "handshake failed":
                    continue  # a retry's vaguer event must not hide the specific reason already known
                if self._security is None:
                    detail = "handshake failed"
                    hint = (f"the ZeroMQ handshake with {self.address} failed; if the agent requires encryption, "
                            f"{how_to_trust(self.address, self._config_dir)}; {_BEHIND_A_TUNNEL}")
                else:
                    detail = "agent key mismatch"
                    hint = (f"the agent at {self.address} does not hold the key this viewer trusts for it (another "
                            f"machine, or new keys): compare with `pi-agent keys` on the Pi before changing "
                            f"--agent-key or `host-viewer trust`; {_BEHIND_A_TUNNEL}")
            else:
                continue
            self._tcp_connected_at = None
            if self.state != "refused" or self.state_detail != detail:
                log.info("%s", hint)  # the state carries it; the window and the CLI show it once
            self._set_state("refused", detail, hint)

    def _run(self) -> None:
        sock, monitor = self._open_connected()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        poller.register(self._wake_reader, zmq.POLLIN)
        last_heard = time.monotonic()
        next_ping = 0.0
        next_hello = 0.0
        hello_sent = False
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if self.welcome is None or self.state != "connected":
                    if self._handshake_done and not hello_sent:
                        next_hello = now  # the connection is up: the hello that IMMEDIATE refused goes now
                    if now >= next_hello:
                        hello_sent = self._send(sock, Hello(versions=[1], client=self._client_name,
                                                            credit=self.credit, capabilities=self._capabilities()))
                        # Sent but unanswered: again in 250 ms. Refused (no connection yet): again when the
                        # socket monitor reports the handshake, or 5 ms after it did (the pipe attaches
                        # an instant later).
                        next_hello = now + (0.005 if self._handshake_done and not hello_sent else 0.25)
                    deadline = next_hello
                else:
                    if now >= next_ping:
                        self._ping(sock)
                        next_ping = now + self._ping_interval
                        if self._outstanding <= 0:  # a credit could not be sent: reopen the window
                            self._grant(sock, 1)
                    deadline = next_ping
                while self._outbox:
                    command = self._outbox.popleft()
                    # After a bye or silence the old pipe may linger a moment and swallow the command: fail
                    # it now rather than let it wait for a reply that cannot come.
                    lost = self.state in ("reconnecting", "refused")
                    if lost or not self._send(sock, command):
                        self._fail(command.id, "not_connected",
                                   f"not connected to {self.address}; {command.name} was not sent")
                    else:
                        self._sent(command.id)
                deadline = min(deadline, last_heard + self._silence_timeout, self._check_pending(sock))
                events = dict(poller.poll(max(0.0, deadline - time.monotonic()) * 1000 + 1))
                if events.get(self._wake_reader):
                    try:
                        while self._wake_reader.recv(4096):
                            pass
                    except OSError:  # drained
                        pass
                if events.get(monitor):
                    self._on_monitor(monitor)
                if events.get(sock):
                    last_heard = time.monotonic()
                    for _ in range(100):
                        try:
                            data = sock.recv(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._handle(sock, data)
                self._check_greeting()
                if time.monotonic() - last_heard > self._silence_timeout:
                    # Nothing heard: the agent died or restarted. A fresh socket and a new hello.
                    if self.state == "connected":
                        log.info("agent %s silent for %.1f s; reconnecting", self.address, self._silence_timeout)
                    if self.state != "refused":  # keep saying why until an agent takes us
                        self._set_state("reconnecting" if self.welcome is not None else "connecting",
                                        self.state_detail, self.state_hint)
                    self.reconnects += 1
                    poller.unregister(sock)
                    poller.unregister(monitor)
                    self._close_socket(sock, monitor)
                    sock, monitor = self._open_connected()
                    self._connection += 1  # replies to what was sent before now come only by handover
                    poller.register(sock, zmq.POLLIN)
                    poller.register(monitor, zmq.POLLIN)
                    last_heard = time.monotonic()
                    next_hello = 0.0
                    self._tcp_connected_at = None
                    hello_sent = self._handshake_done = False
        finally:
            try:
                sock.send(self._sequencer.encode(Bye(reason="viewer closing")), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            self._close_socket(sock, monitor)

    def _check_greeting(self) -> None:
        """A TCP peer that accepted us but has not completed a ZeroMQ handshake after NOT_ZMTP_AFTER_S is not
        a picamlink agent (an SSH or web server, a wrong port): say so while retrying."""
        since = self._tcp_connected_at
        if (since is not None and time.monotonic() - since > NOT_ZMTP_AFTER_S
                and self.state in ("connecting", "reconnecting") and self.state_detail != NOT_ZMTP):
            self._set_state(self.state, NOT_ZMTP,
                            f"something at {self.address} accepted the connection but did not answer as a ZeroMQ "
                            f"peer within {NOT_ZMTP_AFTER_S:g} s: is this pi-agent's port?")

    @staticmethod
    def _close_socket(sock: zmq.Socket, monitor: zmq.Socket) -> None:
        try:
            sock.disable_monitor()
        except zmq.ZMQError:
            pass
        monitor.close(linger=0)
        sock.close(linger=0)

    def _send(self, sock: zmq.Socket, message) -> bool:
        try:
            data = self._sequencer.encode(message)
        except (TypeError, ValueError, OverflowError) as exc:  # never let one message kill the I/O thread
            log.error("cannot encode %s for %s: %s", message.TYPE, self.address, exc)
            return False
        try:
            sock.send(data, zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            log.warning("send to %s failed: %s", self.address, exc)
            return False

    def _ping(self, sock: zmq.Socket) -> None:
        t0 = time.monotonic_ns()
        self._pings_sent.append(t0)
        self._send(sock, Ping(t0=t0))

    def _handle(self, sock: zmq.Socket, data: zmq.Frame) -> None:
        received_ns = time.monotonic_ns()
        self.bytes_received += len(data)
        try:
            envelope = decode(data.buffer, max_size=MAX_INBOUND_TO_VIEWER)
        except ProtocolError as exc:
            log.warning("bad message from agent %s: %s", self.address, exc.message)
            return
        message = envelope.message
        if isinstance(message, Frame):
            self._frame(sock, message, received_ns, len(data))
        elif isinstance(message, Pong):
            # Only an answer to a ping we sent counts, with an agent clock reading a monotonic clock can
            # give: a stray or forged pong must not move the clock offset (frame ages, command expiry).
            if message.t0 in self._pings_sent and 0 <= message.t1 < 2**63:
                self._pings_sent.remove(message.t0)
                self.clock.add(clock_sample(message.t0, message.t1, received_ns))
                self._governor.on_rtt((received_ns - message.t0) / 1e6)
        elif isinstance(message, Welcome):
            # The welcome's envelope time gives a first clock estimate (hello → welcome round trip).
            self._agent_changed(message)
            self.welcome = message
            self._governor.reset()
            self._outstanding = self.credit  # the session starts with hello's credit
            fps = message.stream.get("fps") if isinstance(message.stream, dict) else None
            valid = isinstance(fps, (int, float)) and not isinstance(fps, bool) and 0 < fps < 10_000
            self._frame_period_ms = 1000.0 / fps if valid else None  # free-running (0): no adaptation
            self._set_state("connected")
            self._welcome_event.set()
            self._ping(sock)
        elif isinstance(message, Result):
            if isinstance(message.id, str) and message.id in self._probes:
                self._probed(message.id, message.value)
                return
            self._resolve(message.id, message.value, None)
        elif isinstance(message, Error):
            if message.code == ErrorCode.NO_SESSION:
                self.state = "reconnecting"  # agent restarted: hello again at once
            elif message.code == ErrorCode.VERSION:
                self._set_state("refused", message.message)
            if message.id is None:
                self.errors.append(message)
            else:
                self._resolve(message.id, None, message)
        elif isinstance(message, Progress):
            with self._lock:
                pending = self._pending.get(message.id)
            if pending is not None:
                pending.progress.append(message)
                pending.connection = self._connection  # it runs, and its news reach this connection
                pending.finished_at = None
                _call_back(pending.on_progress, message, "progress")
        elif isinstance(message, Event):
            self.events.append(message)
            self.event_counts = {**self.event_counts, message.name: self.event_counts.get(message.name, 0) + 1}
            _call_back(self._on_event, message, "event")
        elif isinstance(message, Bye):
            self.state = "reconnecting"

    def _capabilities(self) -> list[str]:
        return ["credit", "ping"] + (["full_stats"] if self._full_stats else [])

    def _grant(self, sock: zmq.Socket, n: int) -> None:
        """Send `n` credits at once (the agent may then send the newest frame); count them as outstanding."""
        if n > 0 and self._send(sock, Credit(n=n)):
            self._outstanding += n

    def _frame(self, sock: zmq.Socket, message: Frame, received_ns: int, wire_bytes: int = 0) -> None:
        self.clock.note_frame(message.capture_ns, received_ns)  # causality bounds the clock offset (clock.py)
        arrival_age_ms = ((received_ns + self.clock.offset_ns - message.capture_ns) / 1e6
                          if self.clock.known else None)
        self._outstanding -= 1
        last = self._last_sequence
        skipped = message.frame - last - 1 if last is not None and message.frame > last else 0
        credits = self._governor.on_frame(arrival_age_ms, self._frame_period_ms, received_ns / 1e6, skipped)
        # Never let the window close: with no credit outstanding the agent would send nothing, ever again.
        self._grant(sock, max(credits, 1 - self._outstanding))
        metadata = message.metadata
        if "SensorTimestamp" not in metadata:  # compact frames leave it out: it is capture_ns
            metadata["SensorTimestamp"] = message.capture_ns
        frame = ReceivedFrame(
            sequence=message.frame, capture_ns=message.capture_ns, received_ns=received_ns,
            width=message.width, height=message.height, jpeg=message.jpeg, metadata=metadata,
            stats=message.stats, offset_ns=self.clock.offset_ns, wire_bytes=wire_bytes,
        )
        with self._frame_cond:
            if self._last_sequence is not None and frame.sequence > self._last_sequence + 1:
                self.frames_dropped += frame.sequence - self._last_sequence - 1
            self._last_sequence = frame.sequence  # (a restarted agent counts from 0 again)
            self.frames_received += 1
            self._latest = frame
            self._frame_cond.notify_all()

    def _resolve(self, command_id, value, error: Error | None) -> None:
        with self._lock:
            pending = self._pending.pop(command_id, None) if not isinstance(command_id, str) else None
        if pending is None or pending.future.done():
            return
        if error is None:
            pending.future.set_result(value)
        else:
            pending.future.set_exception(command_error(error.code, error.message, error.detail))

    def _fail(self, command_id: int, code: str, message: str, detail: dict | None = None) -> None:
        with self._lock:
            pending = self._pending.pop(command_id, None)
        if pending is not None and not pending.future.done():
            pending.future.set_exception(command_error(code, message, detail))

    # commands across outages (I/O thread) ------------------------------------------------------------
    def _sent(self, command_id: int) -> None:
        with self._lock:
            pending = self._pending.get(command_id)
        if pending is not None:
            pending.connection = self._connection
            pending.instance = _agent_instance(self.welcome)

    def _agent_changed(self, welcome: Welcome) -> None:
        """A welcome from another agent instance (it restarted): what ran on the old one never replies. A
        read-only command is asked again of the new one instead (by _check_pending, on this connection)."""
        instance = _agent_instance(welcome)
        with self._lock:
            orphans = [p for p in self._pending.values() if p.instance is not None and p.instance != instance]
        for pending in orphans:
            if pending.name in READ_ONLY_COMMANDS and pending.command is not None:
                pending.instance, pending.connection = instance, -1  # -1: no connection, so sent again
                continue
            self._fail(pending.id, "agent_restarted",
                       f"the agent at {self.address} restarted while {pending.name} was pending; it did not "
                       f"finish there (check the agent's state before sending it again)")

    def _check_pending(self, sock: zmq.Socket) -> float:
        """Settle commands whose fate is known by now; returns when to look again (monotonic s).

        A command nobody has heard of by its expiry (plus REPLY_GRACE_S) did not run if it never reached the
        agent (the agent refuses expired commands) or its reply was lost: either way it fails now, not never.
        A read-only command (READ_ONLY_COMMANDS) sent on an earlier connection is sent again on this one.
        A job that sent progress but was cut off by a reconnection is asked after (a `status` probe): while
        the agent is busy we wait; once it is idle and no final reply came, the reply was lost in the outage
        and the command fails with the agent's calibration state as the error's detail."""
        now = time.monotonic()
        with self._lock:
            pending = list(self._pending.values())
        if not pending:
            return now + 3600.0
        connected = self.state == "connected"
        probe: list[PendingCommand] = []
        for p in pending:
            if p.future.done():
                continue
            if not p.progress and now > p.deadline:
                self._fail(p.id, "timeout",
                           f"no reply to {p.name} by its expiry: if it reached {self.address} its reply was "
                           f"lost (link outage?), otherwise it did not run")
                continue
            if not connected and now > p.deadline:  # issue 17.5: its fate is known by its expiry
                self._fail(p.id, "unreachable",
                           f"{p.name} was still running when the link to {self.address} went down, and the agent "
                           f"stayed unreachable past the command's expiry: its outcome is unknown (is pi-agent "
                           f"still running there?)")
                continue
            # Sent (or last heard of) on an earlier connection, with or without progress yet: ask the agent.
            if p.connection == self._connection or not connected:
                continue
            if p.name in READ_ONLY_COMMANDS and p.command is not None:
                if self._send(sock, p.command):  # the same id and expiry: a reply to either copy settles it
                    p.connection = self._connection
                continue
            if p.finished_at is not None and now - p.finished_at > LOST_AFTER_IDLE_S:
                how = ("ended on the agent while the link to {a} was down and its reply was lost" if p.progress else
                       "got no reply across an outage of the link to {a} and the agent is idle: it ended there and "
                       "its reply was lost, or it never reached the agent").format(a=self.address)
                self._fail(p.id, "reply_lost", f"{p.name} {how}; the agent's state is in this error's detail",
                           detail=p.probe_state)
            elif now >= p.next_probe:
                p.next_probe = now + PROBE_EVERY_S
                probe.append(p)
        if probe:
            probe_id = f"~probe-{next(self._probe_ids)}"
            if self._send(sock, Command(id=probe_id, name="status", args={})):
                self._probes[probe_id] = [p.id for p in probe]
        return now + 0.25

    def _probed(self, probe_id: str, value) -> None:
        """A probe's status: a job no longer holding the agent (busy empty) has ended there."""
        ids = self._probes.pop(probe_id, [])
        busy = value.get("busy") if isinstance(value, dict) else None
        state = value.get("calibration") if isinstance(value, dict) else None
        now = time.monotonic()
        with self._lock:
            pending = [self._pending[i] for i in ids if i in self._pending]
        for p in pending:
            if not busy and p.finished_at is None:
                p.finished_at = now
                p.probe_state = {"agent_state": state} if isinstance(state, dict) else {}
