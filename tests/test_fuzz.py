"""Fuzzing both directions: whatever a peer sends, the agent answers (or drops and logs) and goes on, and
the viewer's frame path (decode, histograms, overlay text, session figures) never raises.

Hypothesis builds structured garbage (envelopes with the right keys and wrong values, commands with
deep, wrongly typed arguments, huge ints, NaN, unhashable ids); random bytes and mutated valid messages
cover the rest. Most messages go straight to AgentServer._handle_bytes / AgentClient._handle (fast); one
test sends a batch over a real socket while a good viewer keeps streaming.
"""

from __future__ import annotations

import functools
import random
import time

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocol as p
from host_viewer.client import AgentClient, BadFrame
from host_viewer.display import basic_lines, draw_text_block
from host_viewer.session import ViewingSession
from pi_agent.agent import Agent
from pi_agent.camera.sim import SimulatedCamera
from protocol.limits import ARRAY_DTYPES, MAX_INBOUND_TO_AGENT, MAX_INBOUND_TO_VIEWER

from .conftest import wait_until

FINAL = (p.Result, p.Error)

# ---------------------------------------------------------------------------------------------- values
ints = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.sampled_from([0, 1, -1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63)]),
)
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([float("nan"), 1e308, -0.0]))
scalars = st.one_of(st.none(), st.booleans(), ints, floats, st.text(max_size=20), st.binary(max_size=20))
values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)),
    max_leaves=12,
)
CONTROL_NAMES = ["ExposureTime", "AnalogueGain", "ColourGains", "AeEnable", "AwbEnable", "Brightness", ""]
COMMAND_NAMES = ["status", "get_controls", "set_controls", "cancel", "calibrate", "snapshot", "x" * 300, ""]


def array_map():
    return st.fixed_dictionaries({
        "dtype": st.one_of(st.sampled_from(sorted(ARRAY_DTYPES)), values),
        "shape": st.one_of(st.lists(ints, max_size=5), values),
        "data": st.one_of(st.binary(max_size=64), values),
    })


command_args = st.one_of(
    values,
    st.fixed_dictionaries({"controls": st.one_of(values, st.dictionaries(st.sampled_from(CONTROL_NAMES), values, max_size=4))}),
    st.fixed_dictionaries({"id": values}),
)


@st.composite
def envelope(draw, types: list[str]):
    """A map with a plausible envelope and the body keys of a random type, values of random types."""
    t = draw(st.one_of(st.sampled_from(types), values))
    payload = {"v": draw(st.one_of(st.just(1), values)), "t": t, "seq": draw(st.one_of(ints, values)),
               "ts": draw(st.one_of(ints, values))}
    cls = p.MESSAGE_TYPES.get(t) if isinstance(t, str) else None
    if cls is not None:
        import dataclasses
        for f in dataclasses.fields(cls):
            if draw(st.integers(0, 4)):
                payload[f.name] = draw(values)
    payload.update(draw(st.dictionaries(st.text(max_size=8), values, max_size=3)))
    return payload


@st.composite
def command_message(draw):
    payload = {"v": 1, "t": "command", "seq": 1, "ts": 0,
               "id": draw(st.one_of(ints, st.text(max_size=80), values)),
               "name": draw(st.one_of(st.sampled_from(COMMAND_NAMES), values)),
               "args": draw(command_args)}
    if draw(st.booleans()):
        payload["expires_ns"] = draw(st.one_of(st.just(0), ints, values))
    return payload


# Hypothesis explores cleverly but slowly; this cheap generator produces the same kinds of structured
# garbage by the thousand.
SPECIAL = [0, 1, -1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), float("nan"), float("inf"),
           -float("inf"), 1e308, -0.0, True, False, None, "", "ExposureTime", b"", b"\xff\xd8\xff"]


def random_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(9 if depth < 3 else 7)
    if kind == 0:
        return rng.choice(SPECIAL)
    if kind == 1:
        return rng.randint(-(2**63), 2**64 - 1)
    if kind == 2:
        return rng.uniform(-1e6, 1e6)
    if kind == 3:
        return "".join(rng.choice("aZ_é\x00 ") for _ in range(rng.randrange(12)))
    if kind == 4:
        return rng.randbytes(rng.randrange(16))
    if kind == 5:
        return rng.choice(CONTROL_NAMES + COMMAND_NAMES)
    if kind == 6:
        return rng.randint(-3, 3)
    if kind == 7:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(CONTROL_NAMES + ["id", "controls", "hist", "dtype", "shape", "data"]): random_value(rng, depth + 1)
            for _ in range(rng.randrange(4))}


def random_payload(rng: random.Random, types: list[str]) -> dict:
    import dataclasses
    t = rng.choice(types) if rng.random() < 0.9 else random_value(rng)
    payload = {"v": 1 if rng.random() < 0.9 else random_value(rng), "t": t, "seq": rng.randrange(2**32), "ts": 0}
    cls = p.MESSAGE_TYPES.get(t) if isinstance(t, str) else None
    for f in dataclasses.fields(cls) if cls else ():
        if rng.random() < 0.8:
            payload[f.name] = random_value(rng)
    if t == "command" and rng.random() < 0.7:
        payload.update(id=rng.choice([rng.randrange(2**64), "c1", random_value(rng)]),
                       name=rng.choice(COMMAND_NAMES), args=rng.choice([
                           {"controls": {rng.choice(CONTROL_NAMES): random_value(rng) for _ in range(rng.randrange(1, 4))}},
                           {"id": random_value(rng)}, {"controls": random_value(rng)}, random_value(rng)]))
        payload.pop("expires_ns", None)
    if t == "frame" and rng.random() < 0.7:
        payload.update(jpeg=rng.choice([small_jpeg(), small_jpeg()[:50], random_value(rng)]),
                       stats={"hist": {"dtype": rng.choice(sorted(ARRAY_DTYPES) + [random_value(rng)]),
                                       "shape": [random_value(rng) for _ in range(rng.randrange(4))],
                                       "data": rng.randbytes(rng.choice([0, 4, 16, 4096]))}},
                       metadata={k: random_value(rng) for k in ("ExposureTime", "AnalogueGain") if rng.random() < 0.7})
    return payload


def packed(payload) -> bytes:
    return msgpack.packb(payload, use_bin_type=True)


def mutate(data: bytes, rng: random.Random) -> bytes:
    """Bit flips, truncation, duplication or random splices of a valid message."""
    data = bytearray(data)
    kind = rng.randrange(4)
    if kind == 0 and data:
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == 1:
        data = data[: rng.randrange(len(data) + 1)]
    elif kind == 2:
        data = data + data[: rng.randrange(len(data) + 1)]
    else:
        at = rng.randrange(len(data) + 1)
        data[at:at] = rng.randbytes(rng.randint(1, 16))
    return bytes(data)


# ---------------------------------------------------------------------------------------------- agent side
class RecordingSocket:
    """Stands in for the ROUTER in AgentServer._handle_bytes: keeps what would have been sent."""

    def __init__(self):
        self.sent: list[tuple[bytes, bytes]] = []

    def send_multipart(self, parts, flags=0, copy=True):
        self.sent.append((bytes(parts[0]), bytes(parts[1])))


class AgentHarness:
    def __init__(self):
        self.agent = Agent(SimulatedCamera(seed=3), "127.0.0.1:0", size=(320, 240))
        self.server = self.agent.server
        self.sock = RecordingSocket()
        self.identity = b"\x00fuzz"
        self.messages = 0

    def replies(self) -> list:
        """Everything the agent sent (directly or through its mailbox), decoded as a viewer would."""
        out = [payload for _, payload in self.sock.sent]
        self.sock.sent.clear()
        for item in self.server.mailbox.drain():
            if item[0] == "send":
                out.append(p.encode(item[2]))
            elif item[0] == "broadcast":
                out.append(p.encode(item[1]))
        decoded = []
        for payload in out:
            # Whatever the agent says must be a valid message for any viewer.
            decoded.append(p.decode(payload, max_size=MAX_INBOUND_TO_VIEWER).message)
        return decoded

    def ensure_session(self) -> None:
        if self.identity not in self.server.sessions:
            self.feed(p.encode(p.Hello(versions=[1], client="fuzz", credit=2)))
            self.replies()

    def feed(self, data: bytes, identity: bytes | None = None) -> list:
        self.messages += 1
        self.server._handle_bytes(self.sock, identity or self.identity, data, "")
        return self.replies()

    def close(self):
        self.server.mailbox.close()
        self.agent.camera.close()


@pytest.fixture(scope="module")
def harness():
    h = AgentHarness()
    yield h
    h.close()


def check_command_reply(payload: dict, replies: list) -> None:
    """A decodable command from a viewer with a session gets exactly one final reply, with its id."""
    try:
        message = p.decode(packed(payload), max_size=MAX_INBOUND_TO_AGENT).message
    except (p.ProtocolError, Exception):
        assert len(replies) == 1 and isinstance(replies[0], p.Error) and replies[0].id is None
        return
    finals = [r for r in replies if isinstance(r, FINAL)]
    assert len(finals) == 1, f"{len(finals)} final replies to {payload!r}: {replies!r}"
    reply = finals[0]
    assert reply.id == message.id or (reply.id is None and reply.code == "protocol"), (payload, reply)
    if isinstance(reply, p.Error):
        assert reply.code in p.ErrorCode.ALL and reply.message
        assert reply.code != "internal", f"a handler crashed on {payload!r}: {reply.message}"


TOTAL = {"agent": 0, "viewer": 0}


def feed_payload(harness, payload: dict) -> list:
    """Pack and feed one fuzzed map (skipped if msgpack cannot encode it); check a command's one final reply."""
    try:
        data = packed(payload)
    except (OverflowError, ValueError, TypeError):
        return []
    replies = harness.feed(data)
    TOTAL["agent"] += 1
    if payload.get("t") == "command" and harness.identity in harness.server.sessions:
        check_command_reply(payload, replies)
    return replies


def test_fuzz_agent_command_path(harness):
    """Structured garbage (hypothesis) plus random and mutated bytes: at least 10,000 messages, each
    answered with one valid error or result (never an internal error), and the agent keeps its session."""
    agent_types = ["hello", "credit", "command", "ping", "bye", "frame", "welcome", "result"]

    @settings(max_examples=300, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(batch=st.lists(st.one_of(command_message(), envelope(agent_types)), min_size=1, max_size=8))
    def run(batch):
        for payload in batch:
            harness.ensure_session()
            for reply in feed_payload(harness, payload):
                if isinstance(reply, p.Error):
                    assert reply.code != "internal", f"internal error for {payload!r}: {reply.message}"

    run()
    rng = random.Random(7)
    valid = [p.encode(m) for m in (
        p.Hello(), p.Credit(n=1), p.Ping(t0=5), p.Bye(reason="x"),
        p.Command(id=1, name="set_controls", args={"controls": {"ExposureTime": 5000}}),
        p.Command(id="a", name="cancel", args={"id": 3}), p.Command(id=2, name="status"),
    )]
    for i in range(12000):
        harness.ensure_session()
        if i % 3 == 0:
            feed_payload(harness, random_payload(rng, agent_types))
            continue
        data = rng.randbytes(rng.randint(0, 64)) if i % 3 == 1 else mutate(rng.choice(valid), rng)
        for reply in harness.feed(data):
            if isinstance(reply, p.Error):
                assert reply.code != "internal", f"internal error for {data!r}: {reply.message}"
        TOTAL["agent"] += 1
    assert TOTAL["agent"] >= 10_000
    # Still a working agent: a plain status command from the same viewer is answered.
    harness.ensure_session()
    (reply,) = [r for r in harness.feed(p.encode(p.Command(id=99, name="status"))) if isinstance(r, FINAL)]
    assert isinstance(reply, p.Result) and reply.id == 99 and "controls" in reply.value


@pytest.mark.parametrize("args,code", [
    ({"id": [1, 2]}, "bad_argument"),                    # unhashable id to cancel
    ({"id": {"a": 1}}, "bad_argument"),
    ({"controls": {"ExposureTime": 2**64 - 1}}, "out_of_range"),
    ({"controls": {"ExposureTime": 1e308}}, "out_of_range"),
    ({"controls": {"ExposureTime": float("nan")}}, "bad_argument"),
    ({"controls": {"AnalogueGain": float("inf")}}, "bad_argument"),
    ({"controls": {"ColourGains": [2**64 - 1, 1.0]}}, "out_of_range"),
    ({"controls": {"ColourGains": [[1], 1.0]}}, "bad_argument"),
    ({"controls": {"ColourGains": {"r": 1}}}, "bad_argument"),
    ({"controls": [1, 2]}, "bad_argument"),
    ({"controls": {"AeEnable": 1}}, "bad_argument"),
])
def test_wrongly_typed_arguments_get_clear_errors(harness, args, code):
    name = "cancel" if "id" in args else "set_controls"
    harness.ensure_session()
    before = harness.agent.camera.controls()
    replies = harness.feed(p.encode(p.Command(id=5, name=name, args=args)))
    (reply,) = replies
    assert isinstance(reply, p.Error) and reply.id == 5 and reply.code == code, reply
    assert harness.agent.camera.controls() == before


def test_overlong_command_id_gets_a_protocol_error_not_an_undeliverable_reply(harness):
    harness.ensure_session()
    (reply,) = harness.feed(p.encode(p.Command(id="x" * 100_000, name="status")))
    assert isinstance(reply, p.Error) and reply.id is None and reply.code == "protocol" and "id" in reply.message


# ---------------------------------------------------------------------------------------------- viewer side
class SendSink:
    def send(self, data, flags=0, copy=True):
        p.decode(data, max_size=MAX_INBOUND_TO_AGENT)  # the viewer only ever sends valid messages


def exercise_viewer(client: AgentClient, session: ViewingSession) -> None:
    """What the window loop and the headless loop do with the newest frame, plus the summary."""
    frame = client.latest()
    if frame is None:
        return
    try:
        image = frame.decode()
    except BadFrame:
        image = np.zeros((48, 64, 3), np.uint8)
    hist = frame.histograms()
    assert hist is None or (isinstance(hist, np.ndarray) and hist.ndim == 2 and hist.shape[0] == 4)
    age = session.record(frame, image)
    lines = basic_lines(frame, session.fps_meter.rate(), age, client.state)
    assert all(isinstance(line, str) for line in lines)
    draw_text_block(image, lines)
    session.summary()


@functools.lru_cache(maxsize=1)
def small_jpeg() -> bytes:
    import simplejpeg
    return simplejpeg.encode_jpeg(np.full((16, 16, 3), 128, np.uint8), colorspace="BGR")


def test_fuzz_viewer_frame_path():
    """Garbage frames, stats, metadata, welcomes, pongs and replies from an 'agent': the client, decode,
    histograms, overlay text and session summary never raise; 10,000+ messages."""
    client = AgentClient("127.0.0.1:9")  # never started: _handle is driven directly
    session = ViewingSession(client)
    sink = SendSink()
    jpeg = small_jpeg()
    viewer_types = ["frame", "welcome", "pong", "result", "error", "progress", "event", "bye", "hello"]

    @st.composite
    def garbage_frame(draw):
        payload = {"v": 1, "t": "frame", "seq": 1, "ts": 0, "frame": draw(ints), "capture_ns": draw(ints),
                   "width": draw(ints), "height": draw(ints),
                   "jpeg": draw(st.one_of(st.just(jpeg), st.binary(max_size=64), st.just(jpeg[:40]))),
                   "metadata": draw(st.dictionaries(st.sampled_from(["ExposureTime", "AnalogueGain", "ColourGains",
                                                                      "SensorTimestamp", "Lux", "x"]), values, max_size=5)),
                   "stats": draw(st.dictionaries(st.sampled_from(["hist", "mean", "level", "clipped", "channels",
                                                                   "bit_depth", "black_level"]),
                                                  st.one_of(values, array_map()), max_size=5))}
        return payload

    @settings(max_examples=250, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(batch=st.lists(st.one_of(garbage_frame(), envelope(viewer_types)), min_size=1, max_size=10))
    def run(batch):
        for payload in batch:
            try:
                data = packed(payload)
            except (OverflowError, ValueError, TypeError):
                continue
            client._handle(sink, zmq.Frame(data))
            TOTAL["viewer"] += 1
            exercise_viewer(client, session)

    run()
    rng = random.Random(11)
    valid = [p.encode(m) for m in (
        p.Frame(frame=1, capture_ns=time.monotonic_ns(), width=16, height=16, jpeg=jpeg,
                metadata={"ExposureTime": 1000, "AnalogueGain": 1.0},
                stats={"hist": p.pack_array(np.ones((4, 256), np.uint32))}),
        p.Pong(t0=1, t1=2), p.Welcome(), p.Error(id=1, code="x", message="y"), p.Event(name="e"),
    )]
    for i in range(12000):
        if i % 3 == 0:
            try:
                data = packed(random_payload(rng, viewer_types))
            except (OverflowError, ValueError, TypeError):
                continue
        else:
            data = rng.randbytes(rng.randint(0, 64)) if i % 3 == 1 else mutate(rng.choice(valid), rng)
        client._handle(sink, zmq.Frame(data))
        TOTAL["viewer"] += 1
        exercise_viewer(client, session)
    assert TOTAL["viewer"] >= 10_000
    # After all that, the client still computes sane command expiries (a garbage pong must not poison
    # the clock offset) and can encode a command.
    pending = client.send_command("status")
    command = client._outbox.popleft()
    p.decode(p.encode(command), max_size=MAX_INBOUND_TO_AGENT)
    assert not pending.future.done()


def test_histograms_refuse_shapes_that_overflow():
    from host_viewer.client import ReceivedFrame
    for shape in ([2**32, 2**32], [0, 2**64 - 1], [2**62, 4, 0], [-1, 4]):
        frame = ReceivedFrame(1, 0, 0, 1, 1, b"", {}, {"hist": {"dtype": "<u4", "shape": shape, "data": b""}}, 0)
        assert frame.histograms() is None


def test_unencodable_command_arguments_fail_the_command_not_the_client(start_agent, connect):
    agent = start_agent()
    client = connect(agent)
    for args in ({"controls": {"ExposureTime": 2**70}}, {"controls": {"x": object()}}):
        with pytest.raises(Exception) as info:
            client.command("set_controls", args, timeout=2)
        assert getattr(info.value, "code", None) == "bad_argument", info.value
    assert client.command("status")["agent"]["instance"] == client.welcome.agent["instance"]  # I/O thread alive


# ---------------------------------------------------------------------------------------------- real socket
def test_fuzz_over_a_real_socket_while_a_viewer_streams(start_agent, connect):
    """2,000 garbage messages from a raw DEALER: each answered or dropped, the agent keeps streaming to a
    good viewer without a gap it would not have anyway, and still answers the fuzzer's ping."""
    agent = start_agent()
    viewer = connect(agent)
    rng = random.Random(3)
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(f"tcp://127.0.0.1:{agent.port}")
    valid = [p.encode(m) for m in (p.Hello(), p.Credit(n=1), p.Command(id=1, name="status"), p.Ping(t0=1))]
    first = viewer.wait_frame().sequence
    try:
        errors = 0
        for i in range(2000):
            data = rng.randbytes(rng.randint(0, 40)) if i % 2 else mutate(rng.choice(valid), rng)
            raw.send(data)
            while raw.poll(0):
                message = p.decode(raw.recv(), max_size=MAX_INBOUND_TO_VIEWER).message
                errors += isinstance(message, p.Error)
        raw.send(p.encode(p.Hello(credit=0)))

        def pong():
            # The agent never blocks on a peer: a reply to a peer whose pipe is full of our garbage's
            # answers is dropped, so ask again until the answer comes.
            raw.send(p.encode(p.Ping(t0=424242)))
            while raw.poll(100):
                message = p.decode(raw.recv(), max_size=MAX_INBOUND_TO_VIEWER).message
                errors_seen.append(message)
                if isinstance(message, p.Pong) and message.t0 == 424242:
                    return True
            return False

        errors_seen: list = []
        wait_until(pong, timeout=10, message="the agent's pong after the fuzz")
    finally:
        raw.close()
    # The agent answers a peer in order, so every answer it did not drop came before the pong: count the
    # ones read during the fuzz and those drained while waiting for the pong (a slow machine shifts them).
    errors += sum(isinstance(m, p.Error) for m in errors_seen)
    assert errors > 100  # most garbage got an error reply
    assert agent.server.counters["bad_messages"] > 500
    viewer.wait_frame(newer_than=first + 30, timeout=10)  # the stream went on
    assert all(not (isinstance(m, p.Error) and m.code == "internal") for m in errors_seen)
