"""The one address a user gives (`host:port`) and the ZeroMQ endpoint it means."""

from __future__ import annotations


def parse_address(address: str) -> tuple[str, int]:
    """'host:port' → (host, port), or a ValueError saying what is expected. IPv6 as [addr]:port."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"address must be HOST:PORT (for example 127.0.0.1:5555), not {address!r}")
    return host.strip("[]"), int(port)


def tcp_endpoint(host: str, port: int | str) -> str:
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")
