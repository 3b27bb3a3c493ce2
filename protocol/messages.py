"""Message types: small frozen dataclasses, one per wire type `t`.

Each class declares its wire name in `TYPE`; its dataclass fields are the body keys, in wire order.
Field annotations are the contract the decoder enforces (see `codec.py`): a value of another type is a
protocol error, a missing field takes its default (or is an error when it has none), unknown keys are
ignored so that newer peers can add fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

# Command ids are chosen by the viewer: an int or a short string.
CommandId = int | str


@dataclass(frozen=True)
class Message:
    TYPE: ClassVar[str] = ""


@dataclass(frozen=True)
class Hello(Message):
    """Viewer → agent, first message on connect: the protocol versions it speaks and its first credit."""

    TYPE: ClassVar[str] = "hello"
    versions: list = field(default_factory=lambda: [1])
    client: str = ""
    credit: int = 2
    capabilities: list = field(default_factory=list)


@dataclass(frozen=True)
class Welcome(Message):
    """Agent → viewer, answer to hello: who the agent is and the state a viewer needs to start."""

    TYPE: ClassVar[str] = "welcome"
    version: int = 1
    agent: dict = field(default_factory=dict)  # name, hostname, software, instance
    sensor: dict = field(default_factory=dict)  # model, bayer_order, bit_depth, black_level, ...
    stream: dict = field(default_factory=dict)  # width, height, fps, quality, raw_width, raw_height
    modes: list = field(default_factory=list)
    capabilities: list = field(default_factory=list)
    controls: dict = field(default_factory=dict)
    control_ranges: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Frame(Message):
    """Agent → viewer: one camera frame as JPEG, the metadata of the same request and raw statistics."""

    TYPE: ClassVar[str] = "frame"
    frame: int  # camera frame number, rising
    capture_ns: int  # SensorTimestamp: start of exposure on the agent's monotonic clock, ns
    width: int
    height: int
    jpeg: bytes
    metadata: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Credit(Message):
    """Viewer → agent: permission to send `n` more frames (flow control; also a sign of life)."""

    TYPE: ClassVar[str] = "credit"
    n: int = 1


@dataclass(frozen=True)
class Command(Message):
    """Viewer → agent: run `name` with `args`; refused with `expired` if it arrives after `expires_ns`."""

    TYPE: ClassVar[str] = "command"
    id: CommandId
    name: str
    args: dict = field(default_factory=dict)
    expires_ns: int = 0  # agent's monotonic clock, ns; 0 means no expiry


@dataclass(frozen=True)
class Result(Message):
    """Agent → viewer: the one successful final reply to a command."""

    TYPE: ClassVar[str] = "result"
    id: CommandId
    value: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Error(Message):
    """Agent ↔ viewer: the one failed final reply to a command, or a complaint about a message (id None)."""

    TYPE: ClassVar[str] = "error"
    id: CommandId | None
    code: str
    message: str
    detail: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Progress(Message):
    """Agent → viewer: how far a long command has come (never a final reply)."""

    TYPE: ClassVar[str] = "progress"
    id: CommandId
    step: str
    fraction: float = 0.0
    detail: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Event(Message):
    """Agent → viewer: something happened that no command asked for (camera error, controls changed)."""

    TYPE: ClassVar[str] = "event"
    name: str
    message: str = ""
    detail: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Ping(Message):
    """Viewer → agent: clock probe; `t0` is the viewer's clock at sending, echoed back."""

    TYPE: ClassVar[str] = "ping"
    t0: int


@dataclass(frozen=True)
class Pong(Message):
    """Agent → viewer: `t0` echoed, `t1` the agent's clock when the ping arrived (ns), and `frames_sent`:
    frames the agent sent this viewer in this session before the pong (frames travel on the same ordered
    connection, so a viewer that has received fewer lost some)."""

    TYPE: ClassVar[str] = "pong"
    t0: int
    t1: int
    frames_sent: int = 0


@dataclass(frozen=True)
class Bye(Message):
    """Either side: I am leaving; forget my session now instead of waiting for silence."""

    TYPE: ClassVar[str] = "bye"
    reason: str = ""


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (Hello, Welcome, Frame, Credit, Command, Result, Error, Progress, Event, Ping, Pong, Bye)
}


def body_of(message: Message) -> dict[str, Any]:
    """The body fields of a message in declaration order (the wire order)."""
    return {f.name: getattr(message, f.name) for f in fields(message)}
