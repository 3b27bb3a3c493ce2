"""Load and memory: what peers that never read, floods of bad messages and piles of idle connections cost
the agent, and whether it keeps serving a normal viewer meanwhile. The agent runs in its own process,
pinned to one core (CPU 0), on the simulated camera.

    python scripts/bench_load.py --write-doc          # the "load" section of docs/benchmarks.md
    python scripts/bench_load.py --quick              # smaller numbers, a minute or so

Runs, each against a fresh agent:
  sessions   N viewers say hello with 8 credits and never read, held, then dropped; twice. Agent RSS
             before, while held, after each round (a leak grows round over round; retained buffers show as
             "after" staying above "before"). A normal viewer's status replies meanwhile.
  flood      one peer sends M invalid messages as fast as it can; a normal viewer's status round trips
             during it, and the bytes the agent logged.
  fd-limit   the agent started with a soft open-file limit of 1024, once with a hard limit of 1024 (it
             cannot raise it) and once with a higher hard limit (it raises the soft one at start); K idle
             TCP connections held; does a new viewer get frames?
  cap        more hellos than --max-viewers: how many served, how many refused, log lines about it.
The lossy-link figures (host-viewer against a fixed-credit viewer) are a section of their own ("lossy").
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import protocol as p  # noqa: E402
from host_viewer.client import AgentClient  # noqa: E402
from pi_agent.agent import raise_open_file_limit  # noqa: E402
from scripts.benchdoc import table, write_section  # noqa: E402
from scripts.soak import free_port, need_psutil  # noqa: E402


class AgentProcess:
    """`pi-agent` in its own process on CPU 0; its log goes to a file whose size we measure."""

    def __init__(self, *extra: str, soft_fd: int | None = None, hard_fd: int | None = None, size: str = "640x480",
                 env: dict | None = None):
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.state = tempfile.TemporaryDirectory(prefix="bench-load-")
        self.log_path = Path(self.state.name) / "agent.log"
        self._log = open(self.log_path, "wb")

        def prepare() -> None:
            if hasattr(os, "sched_setaffinity"):
                os.sched_setaffinity(0, {0})
            if soft_fd is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft_fd, hard_fd or soft_fd))

        self.process = subprocess.Popen(
            [sys.executable, "-m", "pi_agent.cli", "--camera", "sim", "--listen", self.address, "--size", size,
             "--fps", "30", "--no-announce", "--state-dir", self.state.name, *extra],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=prepare, env={**os.environ, **(env or {})})
        self.ps = need_psutil().Process(self.process.pid)

    def rss_mb(self) -> float:
        return self.ps.memory_info().rss / 2**20

    def log_bytes(self) -> int:
        self._log.flush()
        return self.log_path.stat().st_size

    def log_count(self, text: str) -> int:
        return self.log_path.read_text(errors="replace").count(text)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()
        self.state.cleanup()


def viewer(address: str) -> AgentClient:
    client = AgentClient(address).start()
    client.wait_connected(30)
    client.wait_frame(timeout=30)
    return client


def status_round_trips(client: AgentClient, stop: threading.Event, period: float = 0.1) -> list[float]:
    """A normal viewer's `status` round trips (ms) every `period` s until `stop`; a failure counts as inf."""
    times = []
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            client.command("status", timeout=30)
            times.append((time.perf_counter() - t0) * 1000)
        except Exception:
            times.append(float("inf"))
        stop.wait(period)
    return times


def pct(values: list[float], q: float) -> str:
    """A percentile in ms; a failed round trip counts as the 30 s it waited (shown as ≥ 30000)."""
    if not values:
        return "–"
    v = float(np.percentile(np.where(np.isfinite(values), values, 30000.0), q))
    return "≥ 30000" if v >= 30000.0 else f"{v:.0f}"


def settle(client: AgentClient, done, timeout: float = 60) -> float:
    """Wait until `done(viewer count)`; returns the seconds it took (nan if it never came)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if done(client.command("status", timeout=10)["viewers"]):
                return time.monotonic() - start
        except Exception:  # counted by the round-trip probe; here we only wait
            pass
        time.sleep(0.2)
    return float("nan")


# --- runs ---------------------------------------------------------------------------------------------
def run_sessions(n: int, hold: float, rounds: int = 3, tuned: bool = True) -> list[list[object]]:
    agent = AgentProcess("--max-viewers", str(n + 10), env={"PICAMLINK_MALLOC_TUNING": "1" if tuned else "0"})
    variant = "allocator tuned (default)" if tuned else "glibc defaults (PICAMLINK_MALLOC_TUNING=0)"
    rows = []
    try:
        client = viewer(agent.address)
        time.sleep(5)  # warm-up: allocator, encoder, socket buffers
        before = agent.rss_mb()
        ctx = zmq.Context()
        ctx.set(zmq.MAX_SOCKETS, n + 100)
        ctx.setsockopt(zmq.LINGER, 0)
        for r in range(rounds):
            socks = []
            for _ in range(n):
                s = ctx.socket(zmq.DEALER)
                s.setsockopt(zmq.RCVHWM, 1)  # reads nothing; let the kernel buffers fill
                s.connect(f"tcp://{agent.address}")
                s.send(p.encode(p.Hello(credit=8, client="non-reading")))
                socks.append(s)
            stop = threading.Event()
            trips: list[float] = []
            probe = threading.Thread(target=lambda: trips.extend(status_round_trips(client, stop)))
            probe.start()
            held = 0.0
            end = time.monotonic() + hold
            while time.monotonic() < end:  # peak RSS while they are there (silent ones are forgotten after 5 s)
                held = max(held, agent.rss_mb())
                time.sleep(0.1)
            stop.set()
            probe.join()
            t_closed = time.monotonic()
            for s in socks:
                s.close()
            settle(client, lambda v: v == 1)
            gone = time.monotonic() - t_closed
            samples = {}
            for at in (5, 15, 30):  # the agent hands freed memory back every 10 s for a minute after a drop
                time.sleep(max(0.0, t_closed + at - time.monotonic()))
                samples[at] = agent.rss_mb()
            after = samples[30]
            frames_ok = client.wait_frame(newer_than=client.latest().sequence, timeout=10) is not None
            failed = sum(1 for t in trips if not np.isfinite(t))
            rows.append([f"{variant}, round {r + 1}", f"{before:.0f}", f"{held:.0f}",
                         f"{samples[5]:.0f} / {samples[15]:.0f} / {after:.0f}",
                         f"{after - before:+.1f}", f"{gone:.1f}", pct(trips, 50), pct(trips, 99),
                         f"{failed}/{len(trips)}", "yes" if frames_ok else "NO"])
        ctx.destroy(linger=0)
        client.close()
    finally:
        agent.stop()
    return rows


def run_flood(messages: int) -> list[list[object]]:
    agent = AgentProcess()
    try:
        client = viewer(agent.address)
        time.sleep(2)
        quiet_stop = threading.Event()
        quiet: list[float] = []
        t = threading.Thread(target=lambda: quiet.extend(status_round_trips(client, quiet_stop)))
        t.start()
        time.sleep(3)
        quiet_stop.set()
        t.join()
        log_before = agent.log_bytes()
        ctx = zmq.Context()
        flooder = ctx.socket(zmq.DEALER)
        flooder.setsockopt(zmq.LINGER, 0)
        flooder.setsockopt(zmq.SNDHWM, 0)
        flooder.setsockopt(zmq.RCVHWM, 0)
        flooder.connect(f"tcp://{agent.address}")
        bad = p.encode(p.Hello(credit=2))[:-3] + b"\xc1\xc1\xc1"  # 0xc1 is never valid msgpack
        stop = threading.Event()
        during: list[float] = []
        probe = threading.Thread(target=lambda: during.extend(status_round_trips(client, stop)))
        probe.start()
        start = time.perf_counter()
        for _ in range(messages):
            flooder.send(bad)
        sent = time.perf_counter() - start
        replies = 0
        while flooder.poll(2000):  # the agent drops replies to a peer that does not read (never blocks)
            flooder.recv()
            replies += 1
        seconds = time.perf_counter() - start
        stop.set()
        probe.join()
        time.sleep(1)
        logged = agent.log_bytes() - log_before
        ctx.destroy(linger=0)
        client.close()
        return [["quiet (no flood)", "–", "–", pct(quiet, 50), pct(quiet, 99), "–"],
                [f"{messages} invalid messages from one peer", f"{messages / sent:.0f}/s",
                 f"{replies}", pct(during, 50), pct(during, 99), f"{logged / 1024:.1f} KiB"]]
    finally:
        agent.stop()


def run_fd_limit(idle: int) -> list[list[object]]:
    rows = []
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for hard_fd in (1024, max(4096, idle * 2 if hard == resource.RLIM_INFINITY else min(hard, 65536))):
        agent = AgentProcess("--max-viewers", "8", soft_fd=1024, hard_fd=hard_fd)
        conns = []
        try:
            probe = viewer(agent.address)  # the agent is up
            probe.close()
            ctx = zmq.Context()
            ctx.set(zmq.MAX_SOCKETS, idle + 100)
            ctx.setsockopt(zmq.LINGER, 0)
            for _ in range(idle):  # connected ZeroMQ peers that never say hello (handshake done, then idle)
                s = ctx.socket(zmq.DEALER)
                s.connect(f"tcp://{agent.address}")
                conns.append(s)
            time.sleep(3)  # let the agent accept what it can
            t0 = time.monotonic()
            client = AgentClient(agent.address).start()
            try:
                client.wait_frame(timeout=15)
                served = f"yes, first frame after {time.monotonic() - t0:.2f} s"
            except Exception:
                served = "NO (no frame within 15 s)"
            client.close()
            psutil = need_psutil()
            limit = psutil.Process(agent.process.pid).rlimit(psutil.RLIMIT_NOFILE)
            rows.append([f"soft 1024, hard {hard_fd}", f"{limit[0]}", len(conns), served])
        finally:
            for c in conns:
                c.close()
            if conns:
                ctx.destroy(linger=0)
            agent.stop()
    return rows


def run_cap(cap: int, extra: int) -> list[list[object]]:
    agent = AgentProcess("--max-viewers", str(cap))
    try:
        client = viewer(agent.address)
        ctx = zmq.Context()
        socks, welcomed, busy = [], 0, 0
        for _ in range(cap - 1 + extra):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(f"tcp://{agent.address}")
            s.send(p.encode(p.Hello(credit=0)))
            socks.append(s)
        for s in socks:
            if s.poll(10000):
                message = p.decode(s.recv()).message
                if isinstance(message, p.Welcome):
                    welcomed += 1
                elif isinstance(message, p.Error) and message.code == p.ErrorCode.BUSY:
                    busy += 1
        time.sleep(1)
        lines = agent.log_count("refused viewer")
        ctx.destroy(linger=0)
        client.close()
        return [[cap, cap - 1 + extra + 1, welcomed + 1, busy, lines]]
    finally:
        agent.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller numbers")
    ap.add_argument("--write-doc", action="store_true", help="write the 'load' section of docs/benchmarks.md")
    args = ap.parse_args(argv)
    need_psutil()  # now, not minutes into the run
    raise_open_file_limit(1 << 16)  # this process holds the many connections
    n, hold, flood, idle = (200, 4, 5000, 1100) if args.quick else (1000, 8, 50000, 1100)
    out = []
    sessions = run_sessions(n, hold, tuned=False) + run_sessions(n, hold, tuned=True)
    out.append(f"Non-reading sessions: {n} viewers say hello with 8 credits and never read, three rounds, against "
               "an agent with glibc's allocator defaults and one as it starts by default (RSS of the agent, MB; "
               "peak while they are there, then 5, 15 and 30 s after they closed; status round trips of a normal "
               "viewer meanwhile, ms, a failure = no reply within 30 s)\n\n"
               + table(["run", "before", "peak", "5 / 15 / 30 s after closing", "30 s after − before",
                 "sessions gone after (s)", "status p50",
                        "status p99", "status failed", "frames after"], sessions))
    print(out[-1], flush=True)
    flood_rows = run_flood(flood)
    out.append("Flood of invalid messages (the normal viewer's status round trips in ms; what the agent logged)\n\n"
               + table(["run", "queued by the sender at", "error replies read (the agent drops replies to a peer "
                        "that does not read)", "status p50", "status p99", "agent log"], flood_rows))
    print(out[-1], flush=True)
    fd_rows = run_fd_limit(idle)
    out.append(f"Idle connections at the open-file limit ({idle} idle ZeroMQ connections that never say hello, "
               f"then a new viewer)\n\n"
               + table(["agent started with", "soft limit in force", "idle connections made", "new viewer served"],
                       fd_rows))
    print(out[-1], flush=True)
    cap_rows = run_cap(16, 20)
    out.append("Session cap (`--max-viewers 16`)\n\n"
               + table(["cap", "viewers saying hello", "served", "refused (busy)", "log lines about refusals"],
                       cap_rows))
    print(out[-1], flush=True)
    if args.write_doc:
        write_section("load", "\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
