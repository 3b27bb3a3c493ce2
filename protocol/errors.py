"""Protocol errors: one exception type with a machine code and a human sentence."""

from __future__ import annotations


class ErrorCode:
    """Error codes carried by `error` messages (stable strings, part of the wire format)."""

    PROTOCOL = "protocol"  # malformed bytes, wrong field types, unknown message type
    VERSION = "version"  # unsupported protocol major version
    TOO_LARGE = "too_large"  # message exceeds the size limit for its type
    NO_SESSION = "no_session"  # message from a peer that has not sent hello (agent restarted?)
    UNKNOWN_COMMAND = "unknown_command"
    BAD_ARGUMENT = "bad_argument"  # wrong argument name or type
    OUT_OF_RANGE = "out_of_range"  # a value outside the camera's control range
    BUSY = "busy"  # calibration holds the camera
    EXPIRED = "expired"  # the command arrived after its expiry
    CANCELLED = "cancelled"
    CAMERA = "camera"  # the camera failed
    FAILED = "failed"  # the command ran and did not reach its goal
    UNAUTHORISED = "unauthorised"
    INTERNAL = "internal"

    ALL = frozenset(
        {
            PROTOCOL, VERSION, TOO_LARGE, NO_SESSION, UNKNOWN_COMMAND, BAD_ARGUMENT,
            OUT_OF_RANGE, BUSY, EXPIRED, CANCELLED, CAMERA, FAILED, UNAUTHORISED, INTERNAL,
        }
    )


class ProtocolError(ValueError):
    """Raised for bytes that are not a valid message; `code` is an `ErrorCode` value."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"ProtocolError({self.code!r}, {self.message!r})"
