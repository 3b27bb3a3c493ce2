"""Soak: one agent (its own process), three viewers of which one is slow, for N minutes; prints the
agent's memory (RSS) and the frame age each viewer sees, interval by interval.

    python scripts/soak.py --minutes 10 --write-doc     # the figures in docs/benchmarks.md ("soak")
    python scripts/soak.py --minutes 0.25 --interval 2 --json -   # what CI runs (tests/test_soak.py)

Memory growth is measured after a warm-up (allocators, caches and the socket buffers settle in the first
minute): growth = (last RSS − RSS at the end of warm-up) / RSS at the end of warm-up.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from host_viewer.client import AgentClient, BadFrame  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Viewer:
    """Decodes frames on its own thread; `period` > 0 makes it slow (takes the newest frame that often)."""

    def __init__(self, name: str, address: str, period: float = 0.0):
        self.name = name
        self.period = period
        self.client = AgentClient(address).start()
        self.ages: list[float] = []  # since the last report
        self.frames = 0
        self.decode_errors = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"soak-{name}", daemon=True)

    def start(self) -> None:
        self.client.wait_connected(30)
        self._thread.start()

    def _run(self) -> None:
        last = None
        while not self._stop.is_set():
            if self.period:
                self._stop.wait(self.period)
                frame = self.client.latest()
                if frame is None or frame is last:
                    continue
            else:
                try:
                    frame = self.client.wait_frame(timeout=0.5, after=last)
                except TimeoutError:
                    continue
            last = frame
            try:
                frame.decode()
            except BadFrame:
                self.decode_errors += 1
                continue
            age = frame.age_ms()
            with self._lock:
                self.ages.append(age)
                self.frames += 1

    def take(self) -> tuple[list[float], int]:
        with self._lock:
            ages, frames = self.ages, self.frames
            self.ages, self.frames = [], 0
        return ages, frames

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()


def run(minutes: float, interval: float, size: str, fps: float, warmup: float | None, out=sys.stdout) -> dict:
    port = free_port()
    agent = subprocess.Popen([sys.executable, "-m", "pi_agent.cli", "--camera", "sim", "--listen", f"127.0.0.1:{port}",
                              "--size", size, "--fps", str(fps), "--log-level", "WARNING"], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    process = need_psutil().Process(agent.pid)
    address = f"127.0.0.1:{port}"
    viewers = [Viewer("fast-1", address), Viewer("fast-2", address), Viewer("slow", address, period=0.2)]
    rows = []
    try:
        for v in viewers:
            v.start()
        start = time.monotonic()
        end = start + minutes * 60
        print(f"{'t s':>6} {'agent RSS MB':>12} " + " ".join(f"{v.name + ' fps':>11} {'age p50/p99 ms':>15}" for v in viewers),
              file=out, flush=True)
        next_report = start + interval
        while time.monotonic() < end:
            time.sleep(max(0.0, min(next_report, end) - time.monotonic()))
            now = time.monotonic()
            span = now - (next_report - interval)
            next_report += interval
            rss = process.memory_info().rss / 2**20
            row = {"t": round(now - start, 1), "rss_mb": round(rss, 2), "viewers": {}}
            cells = []
            for v in viewers:
                ages, frames = v.take()
                p50 = float(np.percentile(ages, 50)) if ages else None
                p99 = float(np.percentile(ages, 99)) if ages else None
                row["viewers"][v.name] = {"fps": round(frames / span, 1), "age_p50_ms": p50 and round(p50, 1),
                                          "age_p99_ms": p99 and round(p99, 1), "age_max_ms": round(max(ages), 1) if ages else None,
                                          "state": v.client.state}
                cells.append(f"{frames / span:11.1f} {(p50 or 0):7.1f}/{(p99 or 0):7.1f}")
            rows.append(row)
            print(f"{row['t']:6.0f} {rss:12.1f} " + " ".join(cells), file=out, flush=True)
    finally:
        for v in viewers:
            v.stop()
        agent.terminate()
        try:
            agent.wait(10)
        except subprocess.TimeoutExpired:
            agent.kill()
    return summarise(rows, minutes, warmup, size, fps)


def summarise(rows: list[dict], minutes: float, warmup: float | None, size: str, fps: float) -> dict:
    warmup = min(60.0, minutes * 60 * 0.2) if warmup is None else warmup
    after = [r for r in rows if r["t"] >= warmup] or rows
    base, last = after[0]["rss_mb"], rows[-1]["rss_mb"]
    summary = {
        "minutes": minutes, "size": size, "fps": fps, "warmup_s": warmup,
        "rss_start_mb": rows[0]["rss_mb"] if rows else None, "rss_after_warmup_mb": base, "rss_end_mb": last,
        "rss_max_mb": max(r["rss_mb"] for r in rows),
        "rss_growth_after_warmup_pct": round((last - base) / base * 100, 2),
        "viewers": {},
        "rows": rows,
    }
    for name in rows[0]["viewers"]:
        p99s = [r["viewers"][name]["age_p99_ms"] for r in after if r["viewers"][name]["age_p99_ms"] is not None]
        p50s = [r["viewers"][name]["age_p50_ms"] for r in after if r["viewers"][name]["age_p50_ms"] is not None]
        maxes = [r["viewers"][name]["age_max_ms"] for r in after if r["viewers"][name]["age_max_ms"] is not None]
        third = max(1, len(p50s) // 3)
        summary["viewers"][name] = {
            "fps_mean": round(float(np.mean([r["viewers"][name]["fps"] for r in after])), 1),
            "age_p50_first_third_ms": round(float(np.median(p50s[:third])), 1) if p50s else None,
            "age_p50_last_third_ms": round(float(np.median(p50s[-third:])), 1) if p50s else None,
            "age_p99_worst_ms": max(p99s) if p99s else None,
            "age_max_ms": max(maxes) if maxes else None,
        }
    return summary


def markdown(summary: dict) -> str:
    from scripts.benchdoc import table

    rows = summary["rows"]
    step = max(1, len(rows) // 12)
    shown = rows[::step] + ([rows[-1]] if rows[-1] not in rows[::step] else [])
    names = list(rows[0]["viewers"])
    text = (f"One agent ({summary['size']} at {summary['fps']:g} fps, simulated camera, its own process) and three "
            f"viewers on loopback for {summary['minutes']:g} minutes: two decode every frame, one (slow) takes the "
            f"newest frame every 200 ms. Warm-up: the first {summary['warmup_s']:.0f} s.\n\n"
            f"**Agent memory (RSS):** {summary['rss_start_mb']:.1f} MB at the first report, "
            f"{summary['rss_after_warmup_mb']:.1f} MB after warm-up, {summary['rss_end_mb']:.1f} MB at the end "
            f"(max {summary['rss_max_mb']:.1f} MB): **{summary['rss_growth_after_warmup_pct']:+.2f} %** after warm-up.\n\n")
    text += table(["viewer", "fps", "age p50, first third (ms)", "age p50, last third (ms)", "worst interval p99 (ms)",
                   "max (ms)"],
                  [[n, v["fps_mean"], v["age_p50_first_third_ms"], v["age_p50_last_third_ms"], v["age_p99_worst_ms"],
                    v["age_max_ms"]] for n, v in summary["viewers"].items()])
    worst = max(rows, key=lambda r: max(v["age_p99_ms"] or 0 for v in r["viewers"].values()))
    worst_p99 = max(v["age_p99_ms"] or 0 for v in worst["viewers"].values())
    typical = float(np.median([v["age_p99_ms"] for r in rows for v in r["viewers"].values() if v["age_p99_ms"]]))
    text += (f"\nWorst interval: the one ending at t = {worst['t']:g} s (p99 {worst_p99:g} ms); the median interval "
             f"p99 over the run was {typical:.1f} ms. Ages do not accumulate: after a stall the next frame is fresh "
             f"again, because the agent only sends the newest frame against credit.\n")
    text += "\nOver time (frame age p50/p99 in ms per reporting interval):\n\n"
    text += table(["t (s)", "agent RSS (MB)"] + [f"{n} p50/p99" for n in names],
                  [[r["t"], r["rss_mb"]] + [f"{r['viewers'][n]['age_p50_ms']}/{r['viewers'][n]['age_p99_ms']}" for n in names]
                   for r in shown])
    text += ("\nFrame age is capture (sensor timestamp) to decoded on the viewer. On a machine shared with other "
             "work, absolute ages include scheduling delays; what matters is that they stay flat.\n")
    return text


def need_psutil():
    """psutil (the dev extra), imported when measuring, so that --help works after the quick start alone."""
    try:
        import psutil
    except ImportError:
        sys.exit(f"{Path(sys.argv[0]).name}: needs psutil, from the dev extra: run scripts/setup.sh dev")
    return psutil


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--interval", type=float, default=None, metavar="S", help="seconds between reports (default 10)")
    p.add_argument("--warmup", type=float, default=None, metavar="S", help="default: 20 %% of the run, at most 60 s")
    p.add_argument("--size", default="640x480")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--json", metavar="FILE", help="write the summary as JSON ('-' for stdout; the table goes to stderr)")
    p.add_argument("--write-doc", action="store_true", help="write the 'soak' section of docs/benchmarks.md")
    p.add_argument("--quick", action="store_true", help="a 12-second smoke run (2 s reports) that writes nothing")
    args = p.parse_args(argv)
    need_psutil()  # now, not minutes into the run
    if args.quick:
        args.minutes, args.interval, args.warmup = 0.2, args.interval or 2.0, args.warmup or 2.0
        if args.write_doc or (args.json and args.json != "-"):
            p.error("--quick writes nothing: leave out --write-doc and --json FILE")
    interval = args.interval or 10.0
    out = sys.stderr if args.json == "-" else sys.stdout
    summary = run(args.minutes, interval, args.size, args.fps, args.warmup, out=out)
    print(f"agent RSS after warm-up {summary['rss_after_warmup_mb']:.1f} MB → end {summary['rss_end_mb']:.1f} MB "
          f"({summary['rss_growth_after_warmup_pct']:+.2f} %)", file=out)
    for name, v in summary["viewers"].items():
        print(f"{name}: {v['fps_mean']} fps, age p50 {v['age_p50_first_third_ms']} → {v['age_p50_last_third_ms']} ms, "
              f"worst p99 {v['age_p99_worst_ms']} ms", file=out)
    if args.json:
        text = json.dumps(summary, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    if args.write_doc:
        from scripts.benchdoc import write_section
        write_section("soak", markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
