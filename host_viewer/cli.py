"""`host-viewer HOST:PORT`: show an agent's live video, or run headless and summarise it as JSON."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from .client import AgentClient
from .stats import RateMeter, percentile

log = logging.getLogger("host_viewer")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="host-viewer", description=__doc__)
    p.add_argument("address", metavar="HOST:PORT", help="the agent's address, e.g. raspberrypi.local:5555")
    p.add_argument("--headless", action="store_true", help="no window: receive, decode and summarise")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    p.add_argument("--summary-json", metavar="FILE", help="write a JSON summary at exit ('-' for stdout)")
    p.add_argument("--credit", type=int, default=2, help="frames in flight (flow control), default 2")
    p.add_argument("--connect-timeout", type=float, default=10.0, metavar="S", help="give up if no agent answers")
    p.add_argument("--log-level", default="WARNING")
    return p


class Session:
    """What a viewing run measures: frames decoded, their ages, the stream's size and sensor."""

    def __init__(self, client: AgentClient):
        self.client = client
        self.ages: list[float] = []
        self.frames = 0
        self.first = None
        self.last = None
        self.width = self.height = 0
        self.fps_meter = RateMeter()

    def show(self, frame, image) -> float:
        """Record one decoded frame; returns its age in ms."""
        now_ns = time.monotonic_ns()
        age = (now_ns + self.client.clock.offset_ns - frame.capture_ns) / 1e6
        if self.client.clock.known:
            self.ages.append(age)
        self.frames += 1
        now = now_ns / 1e9
        self.first = self.first or now
        self.last = now
        self.height, self.width = image.shape[:2]
        self.fps_meter.add(1, now)
        return age

    def summary(self) -> dict:
        welcome = self.client.welcome
        span = (self.last - self.first) if self.first and self.last and self.last > self.first else 0.0
        best = self.client.clock.best
        return {
            "frames": self.frames,
            "fps": round((self.frames - 1) / span, 2) if span else 0.0,
            "width": self.width,
            "height": self.height,
            "age_ms_p50": _round(percentile(self.ages, 50)),
            "age_ms_p99": _round(percentile(self.ages, 99)),
            "dropped": self.client.frames_dropped,
            "sensor": welcome.sensor.get("model") if welcome else None,
            "agent": welcome.agent.get("name") if welcome else None,
            "state": self.client.state,
            "reconnects": self.client.reconnects,
            "clock_offset_ms": _round(best.offset_ns / 1e6 if best else None),
            "rtt_ms": _round(best.rtt_ns / 1e6 if best else None),
            "mbit_s": round(self.client.bytes_received * 8 / 1e6 / span, 3) if span else 0.0,
        }


def _round(value, digits: int = 2):
    return None if value is None else round(value, digits)


def run_headless(client: AgentClient, duration: float | None) -> Session:
    session = Session(client)
    end = time.monotonic() + duration if duration else float("inf")
    last = None
    while time.monotonic() < end:
        try:
            frame = client.wait_frame(timeout=min(0.5, max(0.01, end - time.monotonic())), newer_than=last)
        except TimeoutError:
            continue
        last = frame.sequence
        session.show(frame, frame.decode())
    return session


def run_window(client: AgentClient, duration: float | None) -> Session:
    import cv2

    from .display import basic_lines, draw_text_block

    session = Session(client)
    title = f"picamlink {client.address}"
    cv2.namedWindow(title, cv2.WINDOW_AUTOSIZE)
    end = time.monotonic() + duration if duration else float("inf")
    last = None
    while time.monotonic() < end:
        frame = client.latest()
        if frame is not None and frame.sequence != last:
            last = frame.sequence
            image = frame.decode()
            age = session.show(frame, image)
            draw_text_block(image, basic_lines(frame, session.fps_meter.rate(), age, client.state))
            cv2.imshow(title, image)
        key = cv2.waitKey(5) & 0xFF
        if key in (ord("q"), 27):
            break
    cv2.destroyAllWindows()
    return session


def write_summary(summary: dict, target: str) -> None:
    text = json.dumps(summary, indent=2)
    if target == "-":
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    else:
        with open(target, "w") as f:
            f.write(text + "\n")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        client = AgentClient(args.address, credit=args.credit)
    except ValueError as exc:
        print(f"host-viewer: {exc}", file=sys.stderr)
        return 2
    with client:
        try:
            client.wait_connected(args.connect_timeout)
        except TimeoutError:
            print(f"host-viewer: no agent answered at {args.address} within {args.connect_timeout:g} s "
                  f"(is pi-agent running there?)", file=sys.stderr)
            return 1
        session = run_headless(client, args.duration) if args.headless else run_window(client, args.duration)
        summary = session.summary()
    if args.summary_json:
        write_summary(summary, args.summary_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
