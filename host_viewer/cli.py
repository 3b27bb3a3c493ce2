"""`host-viewer HOST:PORT`: show an agent's live video, or run headless and summarise it as JSON."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from .client import AgentClient, BadFrame
from .session import ViewingSession

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


def run_headless(client: AgentClient, duration: float | None) -> ViewingSession:
    session = ViewingSession(client)
    end = time.monotonic() + duration if duration else float("inf")
    last = None
    while time.monotonic() < end:
        try:
            frame = client.wait_frame(timeout=min(0.5, max(0.01, end - time.monotonic())), newer_than=last)
        except TimeoutError:
            continue
        last = frame.sequence
        try:
            image = frame.decode()
        except BadFrame as exc:  # a corrupt frame is skipped; the stream goes on
            log.warning("%s", exc)
            continue
        session.record(frame, image)
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
        if args.headless:
            session = run_headless(client, args.duration)
        else:
            from .app import ViewerApp

            session = ViewerApp(client).run(args.duration)
        summary = session.summary()
    if args.summary_json:
        write_summary(summary, args.summary_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
