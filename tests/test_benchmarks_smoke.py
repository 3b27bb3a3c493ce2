"""The benchmark scripts' machinery works (no timing is asserted: speed lives in docs/benchmarks.md)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

from scripts.bench_stats import numpy_route, ours
from scripts.bench_stream import run_pair, summarise
from scripts.make_replay import render, write_replay
from scripts.shaped_link import LoopbackShaper, NamespaceLink, namespaces_available


def test_stats_routes_agree_on_a_simulated_frame():
    raw = render((320, 240), 1, warmup=1)["raw"][0]
    want, got = numpy_route(raw, "BGGR", 10, 64), ours(raw, "BGGR", 10, 64)
    assert got["level"] == [round(v, 3) for v in want["level"]]
    assert np.allclose(got["mean"], want["mean"], atol=1e-3)
    assert got["clipped"] == want["clipped"]


def test_loopback_shaper_forwards_both_ways_intact():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    payload = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    received = bytearray()

    def serve():
        conn, _ = server.accept()
        with conn:
            assert conn.recv(5) == b"hello"
            conn.sendall(payload)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    proxy = LoopbackShaper(server.getsockname()[1], rate=20e6, delay_ms=2, jitter_ms=1)
    try:
        with socket.create_connection(("127.0.0.1", proxy.port)) as client:
            client.sendall(b"hello")
            client.settimeout(10)
            while len(received) < len(payload):
                chunk = client.recv(65536)
                if not chunk:
                    break
                received += chunk
        assert bytes(received) == payload
    finally:
        proxy.close()
        server.close()
    thread.join(5)


def test_one_picamlink_run_measures_frames_ages_and_cpu(tmp_path):
    replay = tmp_path / "replay.npz"
    write_replay(replay, render((320, 240), 2, warmup=1))
    # a long lead: on a busy machine the two processes' imports alone can take seconds
    result = summarise(run_pair("picamlink", replay, (320, 240), fps=30.0, duration=3.0, warmup=0.3, quality=80,
                                lead=10.0))
    assert result["send_fps"] > 0 and result["fps"] > 0
    assert 0 < result["age_p50"] <= result["age_p99"]
    assert result["send_ms"] > 0 and result["recv_ms"] > 0


@pytest.mark.skipif(namespaces_available() is not None, reason=f"network namespaces: {namespaces_available()}")
def test_a_namespace_link_carries_tcp_intact_and_loses_what_it_is_told_to():
    """Two namespaces joined by the user-space TAP shaper: 300 kB across TCP arrive intact (TCP repairs the
    2 % loss the link applies), the link counts the frames it dropped, and the namespaces are gone after."""
    payload = np.random.default_rng(1).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    with NamespaceLink(rate=20e6, delay_ms=1, jitter_ms=0.5, loss=0.02) as link:
        server = subprocess.Popen(link.prefix("a") + [sys.executable, "-c", f"""
import socket
import numpy as np
payload = np.random.default_rng(1).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("{link.address('a')}", 9000)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); c.sendall(payload); c.close()
"""], stdout=subprocess.PIPE)
        assert server.stdout.readline().strip() == b"ready"
        client = subprocess.run(link.prefix("b") + [sys.executable, "-c", f"""
import socket, sys
s = socket.create_connection(("{link.address('a')}", 9000), timeout=20)
while True:
    d = s.recv(65536)
    if not d:
        break
    sys.stdout.buffer.write(d)
"""], capture_output=True, timeout=60)
        server.wait(timeout=20)
        names = list(link.names.values())
        lost = sum(d.counts["lost"] for d in link.directions.values())
    assert client.stdout == payload
    assert lost > 0
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listed for name in names)
