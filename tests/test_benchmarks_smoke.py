"""The benchmark scripts' machinery works (no timing is asserted: speed lives in docs/benchmarks.md)."""

from __future__ import annotations

import socket
import threading

import numpy as np

from scripts.bench_stats import numpy_route, ours
from scripts.bench_stream import ThrottlingProxy, run_pair, summarise
from scripts.make_replay import render, write_replay


def test_stats_routes_agree_on_a_simulated_frame():
    raw = render((320, 240), 1, warmup=1)["raw"][0]
    want, got = numpy_route(raw, "BGGR", 10, 64), ours(raw, "BGGR", 10, 64)
    assert got["level"] == [round(v, 3) for v in want["level"]]
    assert np.allclose(got["mean"], want["mean"], atol=1e-3)
    assert got["clipped"] == want["clipped"]


def test_throttling_proxy_forwards_both_ways_intact():
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
    proxy = ThrottlingProxy(server.getsockname()[1], rate=20e6)
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
    result = summarise(run_pair("picamlink", replay, (320, 240), fps=30.0, duration=0.5, warmup=0.3, quality=80))
    assert result["sent"] > 0 and result["fps"] > 0
    assert 0 < result["age_p50"] <= result["age_p99"]
    assert result["send_ms"] > 0 and result["recv_ms"] > 0
