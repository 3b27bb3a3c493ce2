"""Size limits: the largest message of each type a receiver accepts, and container bounds for decoding."""

from __future__ import annotations

KiB = 1024
MiB = 1024 * KiB

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)

# Largest encoded message of each type (bytes). Frames carry a JPEG (a 4056x3040 q95 JPEG is ~8 MiB);
# results may carry a full-resolution snapshot (JPEG plus 16-bit raw, 4056x3040x2 = 24 MiB).
MAX_MESSAGE_SIZE = {
    "hello": 64 * KiB,
    "welcome": 1 * MiB,
    "frame": 32 * MiB,
    "credit": 1 * KiB,
    "command": 256 * KiB,
    "result": 64 * MiB,
    "error": 64 * KiB,
    "progress": 1 * MiB,
    "event": 64 * KiB,
    "ping": 1 * KiB,
    "pong": 1 * KiB,
    "bye": 1 * KiB,
}

# The largest message a viewer may send (its largest type, `command`): anything bigger gets `too_large`.
MAX_VIEWER_MESSAGE = 256 * KiB
# The agent socket's MAXMSGSIZE: a message above this is not even read (ZeroMQ drops the connection and the
# viewer's socket reconnects). It lies above MAX_VIEWER_MESSAGE so that an oversized command between the
# two is answered with a `too_large` error a client can see, instead of a silent disconnect.
MAX_INBOUND_TO_AGENT = 1 * MiB
# What a viewer accepts from an agent.
MAX_INBOUND_TO_VIEWER = 64 * MiB

# Container bounds for msgpack decoding (defence against small messages claiming huge containers).
MAX_ARRAY_LEN = 65536
MAX_MAP_LEN = 4096
MAX_STR_LEN = 1 * MiB

# Arrays travel as {"dtype", "shape", "data"}; only these little-endian dtypes are accepted.
ARRAY_DTYPES = frozenset({"|u1", "<u2", "<u4", "<i4", "<f4", "<f8"})
MAX_ARRAY_DIMS = 4
