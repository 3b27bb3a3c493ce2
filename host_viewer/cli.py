"""`host-viewer HOST:PORT`: show an agent's live video, or run headless and summarise it as JSON."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from .calibration import WHAT, calibration_summary, progress_line, start_calibration
from .client import AgentClient, CommandFailed
from .report import save_report
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
    p.add_argument("--calibrate", choices=sorted(WHAT), metavar="WHAT",
                   help="calibrate on the agent first: exposure, white-balance, lens-shading or all")
    p.add_argument("--target", type=float, default=None, help="exposure target white level (raw, pedestal included)")
    p.add_argument("--report", metavar="DIR", help="save the lens shading report picture into DIR")
    p.add_argument("--log-level", default="WARNING")
    return p


def run_headless(client: AgentClient, duration: float | None, session: ViewingSession | None = None) -> ViewingSession:
    session = session or ViewingSession(client)
    end = time.monotonic() + duration if duration else float("inf")
    last = None
    while time.monotonic() < end:
        try:
            frame = client.wait_frame(timeout=min(0.5, max(0.01, end - time.monotonic())), newer_than=last)
        except TimeoutError:
            continue
        last = frame.sequence
        session.record(frame, frame.decode())
    return session


def run_calibration(client: AgentClient, args, session: ViewingSession) -> tuple[dict | None, str | None]:
    """Run `calibrate` while receiving frames (the stream goes on); progress lines go to stderr.
    Returns (result value, None) or (None, error sentence)."""
    pending = start_calibration(client, args.calibrate, target=args.target,
                                on_progress=lambda p: print(progress_line(p), file=sys.stderr, flush=True))
    last = None
    while not pending.future.done():
        try:
            frame = client.wait_frame(timeout=0.2, newer_than=last)
        except TimeoutError:
            continue
        last = frame.sequence
        session.record(frame, frame.decode())
    try:
        return pending.future.result(), None
    except CommandFailed as exc:
        return (exc.detail or None), f"{exc.code}: {exc.message}"


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
        failure = None
        calibration = None
        if args.headless:
            session = ViewingSession(client)
            if args.calibrate:
                calibration, failure = run_calibration(client, args, session)
                if failure:
                    print(f"host-viewer: calibration failed: {failure}", file=sys.stderr)
            if args.duration or not args.calibrate:
                run_headless(client, args.duration, session)
        else:
            from .app import ViewerApp
            from .calibration_ui import CalibrationKeys

            app = ViewerApp(client)
            keys = CalibrationKeys(client, report_dir=args.report)
            keys.install(app)
            if args.calibrate:
                keys.start(WHAT[args.calibrate])
            session = app.run(args.duration)
            calibration = keys.last_result
        summary = session.summary()
    if calibration:
        summary["calibration"] = calibration_summary(calibration)
        if args.report and "lens_shading" in calibration and "luminance" in calibration["lens_shading"]:
            path = save_report(calibration["lens_shading"], args.report)
            print(f"host-viewer: calibration report saved to {path}", file=sys.stderr)
    if args.summary_json:
        write_summary(summary, args.summary_json)
    if failure:
        return 1
    if calibration and any(part.get("converged") is False for part in calibration.values() if isinstance(part, dict)):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
