"""Bytes ⇄ messages. One msgpack map per ZeroMQ frame: envelope keys `v`, `t`, `seq`, `ts`, then the body.

Pure functions, no I/O. Decoding is bounded (size limits per type, container limits, no ext types) and
strict about types: anything else is a `ProtocolError` with a code and a sentence saying what was wrong.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from . import limits
from .errors import ErrorCode, ProtocolError
from .messages import MESSAGE_TYPES, Message, body_of

ENVELOPE_KEYS = ("v", "t", "seq", "ts")


@dataclass(frozen=True)
class Envelope:
    """A decoded message with its envelope: sender's sequence number and clock (monotonic ns)."""

    version: int
    seq: int
    ts: int
    message: Message


def encode(message: Message, seq: int = 0, ts: int = 0) -> bytes:
    """Encode one message into the bytes of one ZeroMQ frame."""
    payload = {"v": limits.PROTOCOL_VERSION, "t": message.TYPE, "seq": seq, "ts": ts}
    payload.update(body_of(message))
    return msgpack.packb(payload, use_bin_type=True)


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(ErrorCode.PROTOCOL, f"msgpack extension type {code} is not part of the protocol")


# Python types accepted for each annotation used in messages.py. `bool` is excluded from int fields
# explicitly, since bool is a subclass of int.
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "str": (str,),
    "float": (float, int),
    "bool": (bool,),
    "bytes": (bytes,),
    "dict": (dict,),
    "list": (list,),
    "CommandId": (int, str),
    "CommandId | None": (int, str, type(None)),
}


def _type_name(value: Any) -> str:
    return {dict: "map", list: "array", bytes: "bin", str: "str", type(None): "nil"}.get(
        type(value), type(value).__name__
    )


def _check_field(msg_type: str, name: str, annotation: str, value: Any) -> Any:
    allowed = _FIELD_TYPES[annotation]
    if isinstance(value, bool) and bool not in allowed:
        ok = False
    else:
        ok = isinstance(value, allowed)
    if not ok:
        raise ProtocolError(
            ErrorCode.PROTOCOL,
            f"field '{name}' of a '{msg_type}' message must be {annotation}, not {_type_name(value)}",
        )
    if annotation == "float":
        return float(value)
    return value


def decode(data: bytes | memoryview, max_size: int = limits.MAX_INBOUND_TO_VIEWER) -> Envelope:
    """Decode the bytes of one ZeroMQ frame into an `Envelope`, or raise `ProtocolError`."""
    size = len(data)
    if size > max_size:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"message of {size} bytes exceeds the limit of {max_size} bytes")
    try:
        payload = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_refuse_ext,
            max_ext_len=0,  # msgpack decodes the timestamp ext (-1) itself, anywhere, without ext_hook
            max_str_len=limits.MAX_STR_LEN,
            max_bin_len=size,
            max_array_len=limits.MAX_ARRAY_LEN,
            max_map_len=limits.MAX_MAP_LEN,
        )
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises several types (ValueError, ExtraData, FormatError, ...)
        if "max_ext_len" in str(exc) or "timestamp" in str(exc):
            raise ProtocolError(ErrorCode.PROTOCOL, "msgpack extension types (timestamps too) are not part of the "
                                                    "protocol, anywhere in a message") from None
        raise ProtocolError(ErrorCode.PROTOCOL, f"not a valid msgpack message: {exc}") from None
    if not isinstance(payload, dict):
        raise ProtocolError(ErrorCode.PROTOCOL, f"a message must be a msgpack map, not {_type_name(payload)}")

    version = payload.get("v")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ProtocolError(ErrorCode.PROTOCOL, "the envelope key 'v' (protocol version) is missing or not an int")
    if version not in limits.SUPPORTED_VERSIONS:
        raise ProtocolError(
            ErrorCode.VERSION,
            f"protocol version {version} is not supported (this side speaks {list(limits.SUPPORTED_VERSIONS)})",
        )
    msg_type = payload.get("t")
    if not isinstance(msg_type, str):
        raise ProtocolError(ErrorCode.PROTOCOL, "the envelope key 't' (message type) is missing or not a str")
    cls = MESSAGE_TYPES.get(msg_type)
    if cls is None:
        raise ProtocolError(ErrorCode.PROTOCOL, f"unknown message type '{msg_type[:40]}'")
    type_limit = limits.MAX_MESSAGE_SIZE[msg_type]
    if size > type_limit:
        raise ProtocolError(
            ErrorCode.TOO_LARGE, f"a '{msg_type}' message of {size} bytes exceeds its limit of {type_limit} bytes"
        )
    # The envelope has no defaults: a message without `seq` or `ts` is malformed (docs/protocol.md, Envelope).
    seq = payload.get("seq")
    ts = payload.get("ts")
    for key, value in (("seq", seq), ("ts", ts)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ProtocolError(ErrorCode.PROTOCOL, f"the envelope key '{key}' is missing or not an int")

    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in payload:
            kwargs[f.name] = _check_field(msg_type, f.name, f.type, payload[f.name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ProtocolError(ErrorCode.PROTOCOL, f"a '{msg_type}' message lacks the required field '{f.name}'")
    return Envelope(version=version, seq=seq, ts=ts, message=cls(**kwargs))


def pack_array(array: np.ndarray) -> dict[str, Any]:
    """An ndarray as the protocol's array map: dtype string, shape, raw little-endian bytes."""
    array = np.ascontiguousarray(array)
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    array = array.astype(dtype, copy=False)
    if dtype.str not in limits.ARRAY_DTYPES:
        raise ValueError(f"dtype {dtype.str} is not in the protocol's array allowlist")
    return {"dtype": dtype.str, "shape": list(array.shape), "data": array.tobytes()}


def unpack_array(value: Any, name: str = "array") -> np.ndarray:
    """The inverse of `pack_array`, refusing dtypes outside the allowlist and sizes that do not add up."""
    if not isinstance(value, dict):
        raise ProtocolError(ErrorCode.PROTOCOL, f"'{name}' must be an array map, not {_type_name(value)}")
    dtype, shape, data = value.get("dtype"), value.get("shape"), value.get("data")
    if not isinstance(dtype, str) or dtype not in limits.ARRAY_DTYPES:
        raise ProtocolError(ErrorCode.PROTOCOL, f"'{name}' has a dtype outside the allowlist: {str(dtype)[:20]}")
    if (
        not isinstance(shape, list)
        or len(shape) > limits.MAX_ARRAY_DIMS
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise ProtocolError(ErrorCode.PROTOCOL, f"'{name}' has an invalid shape")
    if not isinstance(data, bytes):
        raise ProtocolError(ErrorCode.PROTOCOL, f"'{name}' data must be bin")
    itemsize = np.dtype(dtype).itemsize
    # Exact integer product (numpy's int64 product wraps: [2**32, 2**32] would "match" 0 bytes), and no
    # dimension beyond the data's length (a zero elsewhere would let [0, 2**64-1] through).
    if math.prod(shape) * itemsize != len(data) or any(n > max(len(data), 1) for n in shape):
        raise ProtocolError(ErrorCode.PROTOCOL, f"'{name}' shape {str(shape)[:60]} does not match its {len(data)} bytes")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


class Sequencer:
    """Numbers outgoing messages and stamps them with the sender's clock; the only state in encoding."""

    def __init__(self, clock_ns):
        self._clock_ns = clock_ns
        self._seq = 0

    def encode(self, message: Message) -> bytes:
        self._seq += 1
        return encode(message, seq=self._seq, ts=self._clock_ns())
