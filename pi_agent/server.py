"""The agent's socket side: one ROUTER on the user's `host:port`, sessions, credit-based frame delivery.

Viewers connect with a DEALER and say hello; each then holds a few credits (frames it allows in flight).
When a frame is encoded (once), the socket thread sends it to every viewer that has credit and has not
had it yet; a viewer returns a credit for every frame it receives. So the newest frame goes out as soon as
a viewer can take it, a slow viewer or slow link simply gets fewer frames, and nothing piles up in kernel
buffers (see reference/streaming.md). Credits, pings and commands are also signs of life: a viewer silent
for `session_timeout` seconds is forgotten.

Only this thread touches the socket; other threads hand it messages through a Mailbox.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field

import zmq

from protocol import (
    MAX_INBOUND_TO_AGENT, Bye, Command, Credit, Error, ErrorCode, Hello, Message, Ping, Pong, ProtocolError,
    Sequencer, decode, encode,
)
from protocol.address import is_ipv6_literal, parse_address, tcp_endpoint
from protocol.limits import MAX_VIEWER_MESSAGE, SUPPORTED_VERSIONS

from .commands import CommandRouter
from .mailbox import Mailbox
from .pipeline import Demand, EncodedFrame
from .ratelog import RateLimitedLog

log = logging.getLogger(__name__)

MAX_CREDIT = 8
MAX_SESSIONS = 64  # viewers served at once; more get a clear "busy" error (each costs a send per frame)
MAX_COMMAND_ID_LEN = 64
STALE_FRAME_S = 0.1  # an encoded frame older than this is not offered to a new or re-credited viewer
BYE_LINGER_MS = 500  # how long a stopping agent waits for its `bye` messages to leave (bounded)


@dataclass
class Session:
    identity: bytes
    client: str
    credit: int
    last_seen: float
    sent_sequence: int = -1
    frames_sent: int = 0
    user: str = ""  # the viewer's CURVE public key when encryption is on
    address: str = ""  # the viewer's IP address (ZeroMQ's Peer-Address), for the log
    capabilities: list = field(default_factory=list)
    full_stats: bool = False  # hello asked for full statistics and metadata in every frame
    # The session's own message numbering (1 = welcome, +1 per message to this viewer), so that a viewer
    # sees a gap when a message to it was dropped. Frames are encoded once for all viewers and carry the
    # camera frame number instead; `frames_sent` (echoed in each pong) lets a viewer count lost frames.
    sequencer: Sequencer = field(default_factory=lambda: Sequencer(time.monotonic_ns))


def _load_malloc_trim():
    """glibc's malloc_trim, or None elsewhere (musl, macOS, Windows)."""
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
        trim.argtypes = [ctypes.c_size_t]
        return trim
    except (OSError, AttributeError):
        return None


_malloc_trim = _load_malloc_trim()


def _peer_address(frame: zmq.Frame) -> str:
    try:
        return frame.get("Peer-Address") or ""
    except Exception:  # not every transport sets it
        return ""


class AgentServer:
    """Owns the ROUTER socket and the viewer sessions; runs on its own thread (`start`/`stop`)."""

    def __init__(
        self,
        listen: str,
        router: CommandRouter,
        welcome: callable,
        *,
        context: zmq.Context | None = None,
        session_timeout: float = 5.0,
        security=None,
        max_sessions: int = MAX_SESSIONS,
        demand: Demand | None = None,
    ):
        self.host, self.port = parse_address(listen, listening=True)
        self.router = router
        self._welcome = welcome  # () -> Welcome, the current state for a new viewer
        # A context of its own unless given one: an encrypted server's ZAP authenticator binds the context-wide
        # inproc://zeromq.zap.01, which must not collide with another one in the same process; and stopping
        # terminates it, which waits (up to BYE_LINGER_MS) until the `bye` messages have left.
        self._own_context = context is None
        self._ctx = context or (zmq.Context() if self._own_context else zmq.Context.instance())
        self._session_timeout = session_timeout
        self.max_sessions = max_sessions
        # A peer flooding bad messages gets a few log lines per window, not one per message (per address).
        self._peer_log = RateLimitedLog(log, interval=10.0, burst=5)
        self._peer_address = ""  # Peer-Address of the message being handled (socket thread only)
        self._peak_sessions = 0  # since the last time freed memory was handed back (socket thread only)
        self._last_trim = 0.0
        self._trims_left = 0
        self._security = security  # applies CURVE server options to the socket, or None for plain text
        self.mailbox = Mailbox()
        self.demand = demand or Demand()  # what the capture thread may encode: kept current by this thread
        self.sessions: dict[bytes, Session] = {}
        self._latest: EncodedFrame | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._bind_error: Exception | None = None
        self.bound_port: int | None = None
        # handler_errors: exceptions in handling one message or mailbox item; the thread logged it and went on
        self.counters = {"received": 0, "bad_messages": 0, "frames_sent": 0, "frames_skipped": 0,
                         "handler_errors": 0, "sessions_refused": 0}

    # called from other threads -----------------------------------------------------------------------
    def publish(self, frame: EncodedFrame) -> None:
        """A new encoded frame is ready (called by the encode thread)."""
        self.mailbox.put(("frame", frame))

    def send_to(self, identity: bytes, message: Message) -> None:
        self.mailbox.put(("send", identity, message))

    def broadcast(self, message: Message) -> None:
        self.mailbox.put(("broadcast", message))

    @property
    def viewer_count(self) -> int:
        return len(self.sessions)

    @property
    def thread(self) -> threading.Thread | None:
        """The socket thread (for the agent's watchdog); None before `start`."""
        return self._thread

    # lifecycle ---------------------------------------------------------------------------------------
    def start(self, timeout: float = 5.0) -> int:
        """Bind and start serving; returns the bound port (useful with port 0)."""
        self._thread = threading.Thread(target=self._run, name="agent-server", daemon=True)
        self._thread.start()
        if not self._bound.wait(timeout):
            raise RuntimeError("the agent's socket did not come up")
        if self._bind_error is not None:
            raise self._bind_error
        return self.bound_port

    def stop(self) -> None:
        self._stop.set()
        self.mailbox.put(("stop",))
        if self._thread is not None:
            self._thread.join(timeout=5)

    # the socket thread -------------------------------------------------------------------------------
    def _make_socket(self) -> zmq.Socket:
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unroutable sends raise instead of vanishing
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting viewer reclaims its identity
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_INBOUND_TO_AGENT)
        sock.setsockopt(zmq.SNDHWM, 64)
        sock.setsockopt(zmq.RCVHWM, 256)
        sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
        sock.setsockopt(zmq.HANDSHAKE_IVL, 5000)
        if is_ipv6_literal(self.host):
            sock.setsockopt(zmq.IPV6, 1)  # "[::]:PORT" and "[::1]:PORT" (libzmq listens on IPv4 only otherwise)
        if self._security is not None:
            self._security.apply_server(sock)
        return sock

    def _run(self) -> None:
        sock = None
        try:
            sock = self._make_socket()
            if self.port == 0:
                self.bound_port = sock.bind_to_random_port(tcp_endpoint(self.host, "*").rsplit(":", 1)[0])
            else:
                sock.bind(tcp_endpoint(self.host, self.port))
                self.bound_port = self.port
        except Exception as exc:
            self._bind_error = RuntimeError(f"cannot listen on {self.host}:{self.port}: {exc}")
            if sock is not None:
                sock.close(linger=0)
            self._release()
            self._bound.set()
            return
        self._bound.set()
        log.info("listening on %s:%d", self.host, self.bound_port)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self.mailbox.fileno(), zmq.POLLIN)
        next_sweep = time.monotonic() + 1.0
        try:
            while not self._stop.is_set():
                try:
                    events = dict(poller.poll(250))
                except zmq.ContextTerminated:
                    log.error("the ZeroMQ context was terminated; the socket thread ends")
                    break
                if events.get(sock):
                    self._drain_socket(sock)
                if events.get(self.mailbox.fileno()):
                    for item in self.mailbox.drain():
                        self._guarded(self._handle_item, sock, item, what=f"a {item[0]!r} item")
                self.demand.update(*self._wanted())
                now = time.monotonic()
                if now >= next_sweep:
                    self._guarded(self._forget_silent, now, what="the sweep of silent viewers")
                    self._guarded(self._release_memory, now, what="returning freed memory")
                    next_sweep = now + 1.0
        finally:
            for identity in list(self.sessions):
                self._send(sock, identity, Bye(reason="agent stopping"))
            sock.close(linger=BYE_LINGER_MS)  # the context's termination (_release) waits for them, bounded
            self.mailbox.close()
            self._release()

    def _release(self) -> None:
        """Stop the ZAP authenticator (if encrypted) and drop a context of our own."""
        if self._security is not None and hasattr(self._security, "close"):
            self._security.close()
        if self._own_context:
            self._ctx.destroy(linger=0)

    def _drain_socket(self, sock: zmq.Socket) -> None:
        for _ in range(1000):  # bounded, so the mailbox (frames) is served too
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            except zmq.ContextTerminated:
                raise
            except zmq.ZMQError as exc:
                self.counters["handler_errors"] += 1
                log.warning("receiving failed: %s; the agent goes on", exc)
                return
            self.counters["received"] += 1
            self._peer_address = _peer_address(parts[-1])
            if len(parts) != 2:
                self.counters["bad_messages"] += 1
                self._peer_log.warning(self._peer_address or parts[0].bytes,
                                       "dropped a message of %d parts from %s (one identity and one body expected)",
                                       len(parts), self._name(parts[0].bytes))
                if parts:
                    self._send(sock, parts[0].bytes, Error(id=None, code=ErrorCode.PROTOCOL,
                               message="a message must be exactly one ZeroMQ frame"))
                continue
            identity, body = parts[0].bytes, parts[1]
            user = ""
            try:
                user = body.get("User-Id") or ""
            except Exception:
                pass
            if not self._guarded(self._handle_bytes, sock, identity, body.buffer, user,
                                 what=f"a message from viewer {self._name(identity)}"):
                self._send(sock, identity, Error(id=None, code=ErrorCode.INTERNAL,
                           message="the agent failed to handle your last message (logged); it goes on serving"))

    def _name(self, identity: bytes, session: Session | None = None) -> str:
        """A viewer as the log names it: address, full ZeroMQ identity (consecutive viewers' generated
        identities share their first bytes) and the client it says it is."""
        session = session or self.sessions.get(identity)
        address = (session.address if session else self._peer_address) or "?"
        client = f" ({session.client})" if session and session.client else ""
        return f"{address}#{identity.hex()}{client}"

    def _guarded(self, handler, *args, what: str) -> bool:
        """Run one unit of the socket thread's work; an exception is logged and counted, never fatal to the
        thread (it serves every other viewer). Any session may be gone afterwards. False if it raised."""
        try:
            handler(*args)
            return True
        except zmq.ContextTerminated:
            raise
        except Exception:
            self.counters["handler_errors"] += 1
            # a peer that triggers the same bug with every message must not flood the log either
            self._peer_log.log(logging.ERROR, ("handler", self._peer_address), "error while handling %s; the agent "
                               "goes on", what, exc_info=True)
            return False

    def _handle_bytes(self, sock: zmq.Socket, identity: bytes, data, user: str) -> None:
        try:
            envelope = decode(data, max_size=MAX_VIEWER_MESSAGE)
        except ProtocolError as exc:
            self.counters["bad_messages"] += 1
            self._peer_log.warning(self._peer_address or identity, "bad message from viewer %s: %s",
                                   self._name(identity), exc.message)
            self._send(sock, identity, Error(id=None, code=exc.code, message=exc.message))
            return
        message = envelope.message
        session = self.sessions.get(identity)
        if session is not None:
            session.last_seen = time.monotonic()
        if isinstance(message, Hello):
            self._hello(sock, identity, message, user)
            return
        if session is None:
            if isinstance(message, Bye):
                return
            self._send(sock, identity, Error(id=getattr(message, "id", None), code=ErrorCode.NO_SESSION,
                       message="no session: send hello first (the agent may have restarted)"))
            return
        if isinstance(message, Credit):
            session.credit = max(0, min(MAX_CREDIT, session.credit + message.n))
            self._offer_latest(sock, session)
        elif isinstance(message, Ping):
            self._send(sock, identity, Pong(t0=message.t0, t1=time.monotonic_ns(), frames_sent=session.frames_sent))
        elif isinstance(message, Command):
            self._command(identity, message)
        elif isinstance(message, Bye):
            self.sessions.pop(identity, None)
            log.info("viewer %s left (%s)", self._name(identity, session), message.reason)
        else:
            self.counters["bad_messages"] += 1
            self._send(sock, identity, Error(id=None, code=ErrorCode.PROTOCOL,
                       message=f"a viewer may not send '{message.TYPE}' messages"))

    def _hello(self, sock: zmq.Socket, identity: bytes, hello: Hello, user: str) -> None:
        common = [v for v in hello.versions if v in SUPPORTED_VERSIONS]
        if not common:
            self._send(sock, identity, Error(id=None, code=ErrorCode.VERSION,
                       message=f"no common protocol version: viewer speaks {hello.versions[:8]}, "
                               f"agent speaks {list(SUPPORTED_VERSIONS)}"))
            return
        if identity not in self.sessions and len(self.sessions) >= self.max_sessions:
            self.counters["sessions_refused"] += 1
            self._peer_log.warning("sessions full", "refused viewer %s: already serving %d viewers (the limit)",
                                   self._name(identity), len(self.sessions))
            self._send(sock, identity, Error(id=None, code=ErrorCode.BUSY,
                       message=f"the agent already serves {len(self.sessions)} viewers, its limit; try again later"))
            return
        credit = hello.credit if isinstance(hello.credit, int) else 2
        welcome = self._welcome()
        session = Session(
            identity=identity, client=hello.client[:80], credit=max(0, min(MAX_CREDIT, credit)),
            last_seen=time.monotonic(), user=user, capabilities=hello.capabilities[:32], address=self._peer_address,
            full_stats="full_stats" in hello.capabilities[:32],
        )
        self.sessions[identity] = session
        self._peak_sessions = max(self._peak_sessions, len(self.sessions))
        log.info("viewer %s connected%s; %d viewer(s)", self._name(identity, session),
                 f", key {user}" if user else "", len(self.sessions))
        # The viewer may already have gone (hello, then close): the send forgets the session, so
        # continue only with this very session, if it is still there.
        # welcome.version: the highest version both sides speak
        if self._send(sock, identity, dataclasses.replace(welcome, version=max(common))):
            self._offer_latest(sock, session)

    def _command(self, identity: bytes, command: Command) -> None:
        if isinstance(command.id, str) and len(command.id) > MAX_COMMAND_ID_LEN:
            # Echoing a huge id would make an error no viewer accepts: answer without it.
            self.send_to(identity, Error(id=None, code=ErrorCode.PROTOCOL,
                         message=f"a command id must be an int or a string of at most {MAX_COMMAND_ID_LEN} "
                                 f"characters (got {len(command.id)}); not run"))
            return
        if command.expires_ns and time.monotonic_ns() > command.expires_ns:
            late_ms = (time.monotonic_ns() - command.expires_ns) / 1e6
            self.send_to(identity, Error(id=command.id, code=ErrorCode.EXPIRED,
                         message=f"command {command.name[:40]!r} arrived {late_ms:.0f} ms after its expiry; not run"))
            return
        self.router.handle(command, lambda message: self.send_to(identity, message))

    def _handle_item(self, sock: zmq.Socket, item: tuple) -> None:
        kind = item[0]
        if kind == "frame":
            self._latest = item[1]
            for session in list(self.sessions.values()):
                self._offer_latest(sock, session)
            self.demand.handled(*self._wanted())
        elif kind == "send":
            self._send(sock, item[1], item[2])
        elif kind == "broadcast":
            for identity in list(self.sessions):
                self._send(sock, identity, item[1])

    def _wanted(self) -> tuple[int, bool]:
        """(the largest credit a session holds, whether a session with credit wants full statistics)."""
        credit, full = 0, False
        for session in self.sessions.values():
            if session.credit > 0:
                credit = max(credit, session.credit)
                full = full or session.full_stats
        return credit, full

    def _offer_latest(self, sock: zmq.Socket, session: Session) -> None:
        frame = self._latest
        if frame is None or session.credit <= 0 or session.sent_sequence >= frame.sequence:
            return
        if time.monotonic() - frame.encoded_at > STALE_FRAME_S:
            return  # encoded before a pause in demand: the capture thread encodes a fresh one for this credit
        if self.sessions.get(session.identity) is not session:
            return  # forgotten (or replaced by a new hello) since the caller looked it up
        if session.sent_sequence >= 0 and frame.sequence > session.sent_sequence + 1:
            self.counters["frames_skipped"] += frame.sequence - session.sent_sequence - 1
        if session.full_stats and frame.payload_full is None:
            return  # packed before this viewer asked for full statistics: the next frame will carry them
        payload = frame.payload_full if session.full_stats else frame.payload
        if self._send_bytes(sock, session.identity, payload):
            session.credit -= 1
            session.sent_sequence = frame.sequence
            session.frames_sent += 1
            self.counters["frames_sent"] += 1

    def _send(self, sock: zmq.Socket, identity: bytes, message: Message) -> bool:
        """Numbered in the viewer's session; a peer without one (an error before hello) gets seq 0."""
        session = self.sessions.get(identity)
        if session is not None:
            data = session.sequencer.encode(message)
        else:
            data = encode(message, seq=0, ts=time.monotonic_ns())
        return self._send_bytes(sock, identity, data)

    def _send_bytes(self, sock: zmq.Socket, identity: bytes, payload: bytes) -> bool:
        """Never blocks: an unroutable or full peer loses this message (and a vanished one its session)."""
        try:
            sock.send_multipart([identity, payload], zmq.NOBLOCK, copy=len(payload) < 65536)
            return True
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                gone = self.sessions.pop(identity, None)
                if gone is not None:
                    log.info("viewer %s is gone; session forgotten", self._name(identity, gone))
                return False
            log.warning("send failed: %s", exc)
            return False

    def _release_memory(self, now: float) -> None:
        """Hand the memory of departed sessions back to the system once they are gone.

        Each session's frames queued in ZeroMQ (up to MAX_CREDIT JPEGs, plus kernel buffers) are freed when
        its connection closes, but glibc keeps freed heap, most of it in the arenas of libzmq's I/O threads:
        1,000 non-reading viewers left the agent 50-110 MB larger for good. malloc_trim(0) returns free
        pages of every arena. Runs every 10 s for a minute after the number of sessions fell by 8 or more
        (a few ms each)."""
        if self._peak_sessions - len(self.sessions) >= 8:
            self._peak_sessions = len(self.sessions)
            # A forgotten session's connection may close much later (a silent viewer is forgotten after
            # session_timeout, its socket closed whenever it goes): keep trimming for a minute.
            self._trims_left = 6
        if self._trims_left <= 0 or now - self._last_trim < 10.0:
            return
        self._trims_left -= 1
        self._last_trim = now
        if _malloc_trim is not None:
            _malloc_trim(0)

    def _forget_silent(self, now: float) -> None:
        for identity, session in list(self.sessions.items()):
            if now - session.last_seen > self._session_timeout:
                del self.sessions[identity]
                log.info("viewer %s silent for %.1f s; session forgotten", self._name(identity, session),
                         now - session.last_seen)
