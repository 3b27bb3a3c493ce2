"""picamlink wire protocol: sans-IO message types, envelope and msgpack codec shared by agent and viewer.

No sockets, no threads: bytes in, messages out (in the spirit of h11). See docs/protocol.md.
"""

from .clock import ClockOffset, ClockSample, clock_sample
from .codec import Envelope, Sequencer, decode, encode, pack_array, unpack_array
from .errors import ErrorCode, ProtocolError
from .limits import MAX_INBOUND_TO_AGENT, MAX_INBOUND_TO_VIEWER, PROTOCOL_VERSION
from .messages import (
    MESSAGE_TYPES, Bye, Command, Credit, Error, Event, Frame, Hello, Message, Ping, Pong, Progress, Result, Welcome,
)

__all__ = [
    "Bye", "ClockOffset", "ClockSample", "Command", "Credit", "Envelope", "Error", "ErrorCode", "Event",
    "Frame", "Hello", "MAX_INBOUND_TO_AGENT", "MAX_INBOUND_TO_VIEWER", "MESSAGE_TYPES", "Message",
    "PROTOCOL_VERSION", "Ping", "Pong", "Progress", "ProtocolError", "Result", "Sequencer", "Welcome",
    "clock_sample", "decode", "encode", "pack_array", "unpack_array",
]
