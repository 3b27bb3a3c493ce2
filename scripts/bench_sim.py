"""Frames per second of the simulated camera, free-running (capture = sensor physics + ISP), per sensor and size.

Why: the simulator is the default camera and must never be what limits a 30 fps 640x480 stream. Run:
    python scripts/bench_sim.py [--seconds 1.5] [--no-write]
Prints a table and writes the "sim" section of docs/benchmarks.md. The "1 thread" column pins OpenCV to one
thread (numpy is single-threaded), i.e. what one core delivers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pi_agent.camera.sim import SimulatedCamera  # noqa: E402
from scripts.benchdoc import table, write_section  # noqa: E402

CASES = [
    # sensor, main size, raw size (None: the camera's choice for main at 30 fps)
    ("imx219", (640, 480), None),
    ("imx219", (640, 480), (1640, 1232)),
    ("imx219", (1640, 1232), (1640, 1232)),
    ("imx477", (640, 480), None),
    ("imx477", (640, 480), (2028, 1520)),
    ("imx477", (2028, 1520), (2028, 1520)),
]


def measure(sensor: str, size, raw_size, seconds: float) -> tuple[tuple[int, int], float, float]:
    cam = SimulatedCamera(sensor=sensor, scene="chart", pacing=False)
    cfg = cam.configure(size, 30, raw_size=raw_size)
    cam.start()
    for _ in range(5):
        cam.capture()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        cam.capture()
        n += 1
    elapsed = time.perf_counter() - t0
    # the ISP alone on the last raw frame
    frame = cam.capture()
    k, t1 = 0, time.perf_counter()
    while time.perf_counter() - t1 < seconds / 3:
        cam._isp.process(frame.raw, frame.metadata["ColourGains"])
        k += 1
    isp_ms = (time.perf_counter() - t1) / k * 1e3
    cam.close()
    return cfg["raw"]["size"], n / elapsed, isp_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--no-write", action="store_true", help="print the table, leave docs/benchmarks.md alone")
    ap.add_argument("--quick", action="store_true", help="0.3 s per case and no docs/benchmarks.md update")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.no_write = 0.3, True
    default_threads = cv2.getNumThreads()
    rows = []
    for sensor, size, raw_size in CASES:
        cv2.setNumThreads(default_threads)
        raw, fps, isp_ms = measure(sensor, size, raw_size, args.seconds)
        cv2.setNumThreads(1)
        _, fps1, isp1 = measure(sensor, size, raw_size, args.seconds)
        cv2.setNumThreads(default_threads)
        rows.append([sensor, f"{size[0]}x{size[1]}", f"{raw[0]}x{raw[1]}" + ("" if raw_size else " (chosen)"),
                     f"{fps:.1f}", f"{fps1:.1f}", f"{isp_ms:.1f}", f"{1e3 / fps1:.1f}"])
        print(" | ".join(rows[-1]), flush=True)
    md = (
        "Simulated camera, free-running (`pacing=False`, chart scene, AGC/AWB on): `capture()` = sensor physics "
        "(electrons, shot + read noise, gain, pedestal, clipping) + ISP to the main BGR stream.\n\n"
        + table(["sensor", "main", "raw mode", "fps", "fps (cv2 1 thread)", "ISP ms", "ms/frame (1 thread)"], rows)
        + "\nA 30 fps stream needs 33 ms per frame; the default 640x480 configuration leaves most of a core free.\n"
    )
    print(md)
    if not args.no_write:
        write_section("sim", md)


if __name__ == "__main__":
    main()
