"""The exceptions a command can end with: one type per error code, all rooted in `CommandFailed`.

Wire codes come from docs/protocol.md ("Error codes"); six more are the client's own (`timeout`: no reply
in time, `not_connected`: the command could not be sent, `closed`: the client closed first; across a link
outage: `reply_lost`, `agent_restarted`, `unreachable`, see AgentClient._check_pending). Catch
`CommandFailed` for any failure, or a subclass for one cause:

    try:
        client.set_controls(ExposureTime=10**9)
    except OutOfRange as exc:
        print(exc.code, exc.message)      # "out_of_range", "ExposureTime 1000000000 µs is outside ..."

Exceptions are immutable once raised (safe to pass between threads).
"""

from __future__ import annotations


class CommandFailed(Exception):
    """A command did not succeed: the agent answered with an error, or it could not be sent or answered.

    `code` is the error code (a protocol code such as "busy", or "timeout" / "not_connected" / "closed"),
    `message` the agent's human sentence, `detail` its detail map (e.g. a failed calibration's partial result).
    """

    CODE = ""

    def __init__(self, code: str, message: str, detail: dict | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.detail = detail or {}


class MessageRejected(CommandFailed):
    """`protocol`: the agent could not read the message (malformed, wrong type, an id over 64 characters)."""
    CODE = "protocol"


class VersionMismatch(CommandFailed):
    """`version`: agent and client share no protocol version."""
    CODE = "version"


class TooLarge(CommandFailed):
    """`too_large`: the command (over 256 KiB) or its result (over 64 MiB; ask a snapshot with raw=False)."""
    CODE = "too_large"


class NoSession(CommandFailed):
    """`no_session`: the agent does not know this connection (it restarted); the client says hello again."""
    CODE = "no_session"


class UnknownCommand(CommandFailed):
    """`unknown_command`: the agent has no such command."""
    CODE = "unknown_command"


class BadArgument(CommandFailed):
    """`bad_argument`: an argument the command does not take, or of the wrong type."""
    CODE = "bad_argument"


class OutOfRange(CommandFailed):
    """`out_of_range`: a value outside the camera's range (see `get_controls().ranges`)."""
    CODE = "out_of_range"


class Busy(CommandFailed):
    """`busy`: a calibration holds the camera, or a full-resolution still is being taken; try again later."""
    CODE = "busy"


class Expired(CommandFailed):
    """`expired`: the command reached the agent after its deadline and was not run."""
    CODE = "expired"


class Cancelled(CommandFailed):
    """`cancelled`: a long command was cancelled; the camera is as it was before it."""
    CODE = "cancelled"


class CameraFailed(CommandFailed):
    """`camera`: the camera failed or is not streaming."""
    CODE = "camera"


class Failed(CommandFailed):
    """`failed`: the command ran and did not reach its goal (`detail` holds a calibration's partial result)."""
    CODE = "failed"


class Unauthorised(CommandFailed):
    """`unauthorised`: this viewer's key may not do this."""
    CODE = "unauthorised"


class AgentInternalError(CommandFailed):
    """`internal`: a bug in the agent (it keeps running)."""
    CODE = "internal"


class Timeout(CommandFailed, TimeoutError):
    """`timeout` (client side): no final reply within the command's timeout."""
    CODE = "timeout"


class NotConnected(CommandFailed):
    """`not_connected` (client side): not connected to the agent, so the command was not sent."""
    CODE = "not_connected"


class ClientClosed(CommandFailed):
    """`closed` (client side): the client was closed before the reply came."""
    CODE = "closed"


class ReplyLost(CommandFailed):
    """`reply_lost` (client side): a command that changes the agent was cut off by a link outage and the
    agent is idle again without its reply reaching us: it ran there, or never arrived (`detail` holds the
    agent's calibration state). It is never sent twice."""
    CODE = "reply_lost"


class AgentRestarted(CommandFailed):
    """`agent_restarted` (client side): the agent restarted while the command was pending; it did not finish
    there. (`status` and `get_controls` are asked of the new agent instead.)"""
    CODE = "agent_restarted"


class Unreachable(CommandFailed):
    """`unreachable` (client side): the link went down while the command ran, and the agent stayed
    unreachable past the command's expiry: its outcome is unknown."""
    CODE = "unreachable"


ERRORS: dict[str, type[CommandFailed]] = {
    cls.CODE: cls for cls in (
        MessageRejected, VersionMismatch, TooLarge, NoSession, UnknownCommand, BadArgument, OutOfRange, Busy,
        Expired, Cancelled, CameraFailed, Failed, Unauthorised, AgentInternalError, Timeout, NotConnected,
        ClientClosed, ReplyLost, AgentRestarted, Unreachable,
    )
}


def command_error(code: str, message: str, detail: dict | None = None) -> CommandFailed:
    """The exception for `code` (its own subclass; plain CommandFailed for a code this client does not know)."""
    return ERRORS.get(code, CommandFailed)(code, message, detail)
