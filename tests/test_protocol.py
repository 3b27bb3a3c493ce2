"""Protocol: round trips, golden bytes that pin the wire format, and malformed input."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

import protocol as p
from protocol.clock import ClockOffset, clock_sample
from protocol.limits import MAX_MESSAGE_SIZE

EXAMPLES = [
    p.Hello(versions=[1], client="t", credit=2, capabilities=["credit"]),
    p.Welcome(version=1, agent={"name": "pi"}, sensor={"model": "imx219"}, stream={"width": 640}, modes=[],
              capabilities=["status"], controls={"ExposureTime": 1000}, control_ranges={}, calibration={}),
    p.Frame(frame=7, capture_ns=123, width=2, height=2, jpeg=b"\xff\xd8\xff\xe0", metadata={"ExposureTime": 10},
            stats={"mean": [1.0, 2.0, 3.0, 4.0]}),
    p.Credit(n=3),
    p.Command(id=5, name="set_controls", args={"controls": {"AnalogueGain": 2.0}}, expires_ns=99),
    p.Result(id=5, value={"ok": True}),
    p.Error(id=None, code="protocol", message="bad", detail={}),
    p.Progress(id="x", step="measure", fraction=0.5, detail={"level": 700}),
    p.Event(name="camera_error", message="boom", detail={}),
    p.Ping(t0=1),
    p.Pong(t0=1, t1=2, frames_sent=3),
    p.Bye(reason="done"),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: m.TYPE)
def test_round_trip(message):
    envelope = p.decode(p.encode(message, seq=42, ts=1_000_000))
    assert envelope.message == message
    assert (envelope.version, envelope.seq, envelope.ts) == (1, 42, 1_000_000)


def test_every_type_has_an_example_and_a_limit():
    assert {m.TYPE for m in EXAMPLES} == set(p.MESSAGE_TYPES)
    assert set(MAX_MESSAGE_SIZE) == set(p.MESSAGE_TYPES)


# Golden bytes: if one of these changes, the wire format changed; bump the version or keep compatibility.
GOLDEN = {
    "credit": "85a17601a174a6637265646974a373657101a2747302a16e03",
    "ping": "85a17601a174a470696e67a373657101a2747302a2743001",
    "pong": "87a17601a174a4706f6e67a373657101a2747302a2743001a2743102ab6672616d65735f73656e7403",
    "command": "88a17601a174a7636f6d6d616e64a373657101a2747302a2696405a46e616d65ac7365745f636f6e74726f6c73"
               "a46172677381a8636f6e74726f6c7381ac416e616c6f6775654761696ecb4000000000000000aa657870697265735f6e7363",
    "frame": "8ba17601a174a56672616d65a373657101a2747302a56672616d6507aa636170747572655f6e737ba57769647468"
             "02a668656967687402a46a706567c404ffd8ffe0a86d6574616461746181ac4578706f7375726554696d650aa5"
             "737461747381a46d65616e94cb3ff0000000000000cb4000000000000000cb4008000000000000cb4010000000000000",
    "error": "88a17601a174a56572726f72a373657101a2747302a26964c0a4636f6465a870726f746f636f6ca76d657373616765"
             "a3626164a664657461696c80",
}


@pytest.mark.parametrize("type_name", sorted(GOLDEN))
def test_golden_bytes(type_name):
    message = next(m for m in EXAMPLES if m.TYPE == type_name)
    assert p.encode(message, seq=1, ts=2).hex() == GOLDEN[type_name]
    assert p.decode(bytes.fromhex(GOLDEN[type_name])).message == message


def test_unknown_fields_are_ignored_and_defaults_apply():
    data = msgpack.packb({"v": 1, "t": "credit", "seq": 1, "ts": 2, "future_field": [1, 2]})
    assert p.decode(data).message == p.Credit(n=1)


@pytest.mark.parametrize(
    "payload, code, words",
    [
        (b"\xc1", "protocol", "msgpack"),
        (msgpack.packb([1, 2, 3]), "protocol", "map"),
        (msgpack.packb({"t": "ping", "seq": 1, "ts": 2, "t0": 1}), "protocol", "'v'"),
        (msgpack.packb({"v": 2, "t": "ping", "seq": 1, "ts": 2, "t0": 1}), "version", "version 2"),
        (msgpack.packb({"v": 1, "t": "nonsense", "seq": 1, "ts": 2}), "protocol", "unknown message type"),
        (msgpack.packb({"v": 1, "t": "ping", "ts": 2, "t0": 1}), "protocol", "'seq'"),  # the envelope has no defaults
        (msgpack.packb({"v": 1, "t": "ping", "seq": 1, "t0": 1}), "protocol", "'ts'"),
        (msgpack.packb({"v": 1, "t": "ping", "seq": True, "ts": 2, "t0": 1}), "protocol", "'seq'"),
        (msgpack.packb({"v": 1, "t": "ping", "seq": 1, "ts": 2}), "protocol", "required field 't0'"),
        (msgpack.packb({"v": 1, "t": "ping", "seq": 1, "ts": 2, "t0": "soon"}), "protocol", "'t0'"),
        (msgpack.packb({"v": 1, "t": "credit", "seq": 1, "ts": 2, "n": True}), "protocol", "'n'"),
        (msgpack.packb({"v": 1, "t": "command", "seq": 1, "ts": 2, "id": [1], "name": "x"}), "protocol", "'id'"),
        (msgpack.packb({1: 2}), "protocol", "msgpack"),  # non-string keys are refused
        (msgpack.packb({"v": 1, "t": "ping", "seq": 1, "ts": 2, "t0": msgpack.ExtType(1, b"x")}), "protocol", "extension"),
        (b"\xdd\xff\xff\xff\xff", "protocol", "msgpack"),  # array32 header claiming 2**32-1 items
        (msgpack.packb({"v": 1, "t": "ping", "seq": 1, "ts": 2, "t0": 1}) + b"\x00", "protocol", "msgpack"),  # trailing bytes
    ],
)
def test_malformed_input_is_a_clear_protocol_error(payload, code, words):
    with pytest.raises(p.ProtocolError) as info:
        p.decode(payload)
    assert info.value.code == code
    assert words in info.value.message


def test_size_limits():
    big = p.encode(p.Command(id=1, name="x", args={"blob": b"\0" * 300_000}))
    with pytest.raises(p.ProtocolError) as info:
        p.decode(big)
    assert info.value.code == "too_large" and "command" in info.value.message
    with pytest.raises(p.ProtocolError) as info:
        p.decode(p.encode(p.Ping(t0=1)), max_size=4)
    assert info.value.code == "too_large"


def test_arrays_round_trip_and_refuse_bad_dtypes_and_sizes():
    a = np.arange(12, dtype=np.uint32).reshape(3, 4)
    packed = p.pack_array(a)
    back = p.unpack_array(msgpack.unpackb(msgpack.packb(packed), raw=False))
    assert back.dtype == np.uint32 and np.array_equal(back, a)
    with pytest.raises(p.ProtocolError, match="allowlist"):
        p.unpack_array({"dtype": "|O", "shape": [1], "data": b"\0" * 8})
    with pytest.raises(p.ProtocolError, match="does not match"):
        p.unpack_array({"dtype": "<u4", "shape": [1000000], "data": b"\0" * 8})
    with pytest.raises(p.ProtocolError, match="shape"):
        p.unpack_array({"dtype": "<u4", "shape": [-1], "data": b""})
    with pytest.raises(ValueError):
        p.pack_array(np.array(["x"], dtype=object))


def test_clock_offset_prefers_the_fastest_round_trip():
    clock = ClockOffset()
    # agent clock = viewer clock + 1_000_000; a slow sample with asymmetric delay gives a worse estimate
    clock.add(clock_sample(t0=0, t1=1_000_000 + 9_000, t3=10_000))  # rtt 10 us, symmetric-ish
    clock.add(clock_sample(t0=100_000, t1=1_000_000 + 190_000, t3=300_000))  # rtt 200 us, asymmetric
    assert clock.best.rtt_ns == 10_000
    assert abs(clock.offset_ns - 1_000_000) <= 5_000
    assert clock.to_viewer(clock.to_agent(123)) == 123


def test_sequencer_numbers_messages():
    seq = p.Sequencer(lambda: 77)
    first, second = (p.decode(seq.encode(p.Ping(t0=1))) for _ in range(2))
    assert (first.seq, second.seq, first.ts) == (1, 2, 77)


def _spec_table(heading_words: str) -> list[list[str]]:
    """Rows (cells) of the first table after the line starting with `heading_words` in docs/protocol.md."""
    from pathlib import Path

    lines = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading_words))
    rows, inside = [], False
    for line in lines[start + 1:]:
        if line.startswith("|"):
            inside = True
            if not set(line) <= set("|-: "):  # not the separator row
                rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
        elif inside:
            break
    return rows[1:]  # without the header


def test_the_spec_lists_every_command_with_exactly_the_arguments_the_agent_takes():
    import re

    from protocol.controls import COMMAND_ARGS

    rows = _spec_table("## Commands")
    documented = {row[0].strip("`"): set(re.findall(r"`(\w+)`", row[1])) for row in rows}
    assert documented == {name: set(args) for name, args in COMMAND_ARGS.items()}


def test_the_spec_lists_every_error_code():
    rows = _spec_table("## Error codes")
    assert {row[0].strip("`") for row in rows} == set(p.ErrorCode.ALL)
