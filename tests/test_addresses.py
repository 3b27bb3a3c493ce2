"""Addresses a viewer is given: malformed ones are refused with the forms that work, a name that does not
resolve is reported as such, not as "connection refused" (breaker F6)."""

from __future__ import annotations

import pytest

from host_viewer import cli
from host_viewer.client import CANNOT_RESOLVE, CONNECTION_REFUSED, AgentClient
from protocol.address import parse_address

from .conftest import wait_until


@pytest.mark.parametrize("text, says", [
    ("127.0.0.1:56101:7", "neither HOST:PORT nor an IPv6 address"),
    ("pi.local:5555:", "neither HOST:PORT nor an IPv6 address"),
    ("127.0.0.1:0", "must be a number from 1 to 65535"),
])
def test_malformed_addresses_and_port_0_are_refused(text, says, capsys):
    with pytest.raises(ValueError) as refused:
        parse_address(text)
    assert says in str(refused.value) and "HOST:PORT" in str(refused.value)
    assert cli.main([text, "--headless", "--duration", "1", "--insecure"]) == 2
    assert says in capsys.readouterr().err


def test_an_agent_may_listen_on_port_0_and_ipv6_still_parses():
    assert parse_address("127.0.0.1:0", listening=True) == ("127.0.0.1", 0)
    assert parse_address("fe80::1%eth0") == ("fe80::1%eth0", 5555)


@pytest.mark.parametrize("address, detail", [
    ("nosuchhost.invalid:5555", CANNOT_RESOLVE),  # RFC 6761: .invalid never resolves
    ("localhost:1", CONNECTION_REFUSED),  # resolves; nothing listens on port 1
])
def test_a_name_that_does_not_resolve_is_not_called_connection_refused(address, detail):
    client = AgentClient(address).start()
    try:
        wait_until(lambda: client.connection.detail == detail, timeout=20,
                   message=f"the connection state saying {detail!r}")
        if detail == CANNOT_RESOLVE:
            assert "does not resolve" in client.connection.hint and "nosuchhost.invalid" in client.connection.hint
    finally:
        client.close()


def _ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_an_ipv6_address_streams_both_ways(start_agent, connect):
    """The documented `[IPv6]:PORT` form: the agent listens on ::1 and a viewer connects to it (breaker B5:
    libzmq sockets are IPv4-only unless ZMQ_IPV6 is set: "No such device" on the agent, "connection refused"
    on the viewer)."""
    agent = start_agent(listen="[::1]:0")
    client = connect(f"[::1]:{agent.port}")
    frame = client.wait_frame(timeout=10)
    assert frame.decode().shape[:2] == (240, 320)
    assert client.command("status", timeout=10)["viewers"] == 1
