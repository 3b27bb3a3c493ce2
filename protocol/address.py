"""The one address a user gives (`host:port`) and the ZeroMQ endpoint it means.

Understood: `host:port`, `host` alone (port 5555, the agent's default), `tcp://host:port` (a ZeroMQ endpoint,
as pasted from a log), `[ipv6]:port`, `[ipv6]` and a bare IPv6 address (then without a port). Anything else is
a ValueError whose sentence shows the accepted forms.
"""

from __future__ import annotations

import ipaddress

DEFAULT_PORT = 5555
_FORMS = "HOST:PORT, HOST (port 5555) or tcp://HOST:PORT, for example raspberrypi.local:5555 or [fe80::1]:5555"


def _refuse(address: str, why: str) -> ValueError:
    return ValueError(f"address {address!r}: {why}; give {_FORMS}")


def parse_address(address: str, default_port: int = DEFAULT_PORT, *, listening: bool = False) -> tuple[str, int]:
    """'host:port' (or the other forms above) → (host, port); ValueError saying what is expected.
    Port 0 (the system picks a free port) only when `listening`: nothing can be reached at port 0."""
    if not isinstance(address, str):
        raise _refuse(str(address), "not text")
    text = address.strip()
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme.lower() != "tcp":
            raise _refuse(address, f"{scheme}:// is not a transport picamlink uses (only tcp://)")
        text = rest.rstrip("/")
    port_text: str | None
    if text.startswith("["):
        host, close, tail = text[1:].partition("]")
        if not close or (tail and not tail.startswith(":")):
            raise _refuse(address, "an IPv6 address in brackets must be followed by nothing or :PORT")
        port_text = tail[1:] if tail else None
    elif text.count(":") > 1:  # a bare IPv6 address: no port can be told apart from its last group
        host, port_text = text, None
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _refuse(address, f"{host!r} is neither HOST:PORT nor an IPv6 address (too many ':')") from None
    else:
        host, colon, port_text = text.partition(":")
        port_text = port_text if colon else None
    if not host or any(c.isspace() or c in "/@?#" for c in host):
        raise _refuse(address, "no host name" if not host else f"{host!r} is not a host name or IP address")
    if port_text is None:
        return host, default_port
    lowest = 0 if listening else 1
    if not port_text.isdigit() or not lowest <= int(port_text) <= 65535:
        raise _refuse(address, f"the port {port_text!r} must be a number from {lowest} to 65535"
                               + (" (0: any free port)" if listening else ""))
    return host, int(port_text)


def tcp_endpoint(host: str, port: int | str) -> str:
    return f"tcp://[{host}]:{port}" if is_ipv6_literal(host) else f"tcp://{host}:{port}"


def is_ipv6_literal(host: str) -> bool:
    """True for an IPv6 address (parse_address's host, brackets removed): a ZeroMQ socket binds or connects
    to it only with the IPV6 socket option set (libzmq's ZMQ_IPV6 defaults to 0, IPv4 only)."""
    return ":" in host


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")
