"""`host-viewer [HOST:PORT ...]`: show agents' live video (tiled when several), or run headless: summarise,
take a snapshot, record. With no address it lists the agents announced on the local network and connects
to the one chosen."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from .api import CANCEL_WAIT_S
from .calibration import WHAT, calibration_summary, failure_summary, progress_line, start_calibration
from .client import CANNOT_RESOLVE, AgentClient, BadFrame, CommandFailed
from .report import save_report
from protocol.keys import key_arguments
from protocol.options import LOG_LEVELS, number_type as _number

from .session import ViewingSession
from .stopping import StopRequest

log = logging.getLogger("host_viewer")

MAX_CREDIT = 8  # the agent holds a viewer's credit to at most 8 frames in flight (pi_agent/server.py)


def overlay_list(text: str) -> list[str]:
    """--overlays: names from OVERLAY_NAMES, 'all' or 'none'; anything else is refused with the list."""
    from .overlays import OVERLAY_NAMES

    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["none"]:
        return []
    unknown = [n for n in names if n not in OVERLAY_NAMES and n != "all"]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown overlay {', '.join(map(repr, unknown)) or repr(text)}: choose from "
                                         f"{', '.join(OVERLAY_NAMES)}, 'all' or 'none'")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="host-viewer", description=__doc__)
    p.add_argument("address", metavar="HOST:PORT", nargs="*",
                   help="agent address(es), e.g. raspberrypi.local:5555; several are tiled in one window; "
                        "none: find agents on the local network (mDNS)")
    p.add_argument("--headless", action="store_true", help="no window: receive, decode and summarise")
    p.add_argument("--duration", type=_number(float, 0), default=None, metavar="S", help="stop after S seconds")
    p.add_argument("--frames", type=_number(int, 1), default=None, metavar="N",
                   help="stop after N frames shown (decoded; recorded too with --record)")
    p.add_argument("--summary-json", metavar="FILE", help="write a JSON summary at exit ('-' for stdout)")
    p.add_argument("--credit", type=_number(int, 1, high=MAX_CREDIT, what="frames in flight"), default=2,
                   help=f"frames in flight (flow control), 1 to {MAX_CREDIT}, default 2")
    p.add_argument("--connect-timeout", type=_number(float, 0, above=True), default=10.0, metavar="S", help="give up if no agent answers")
    p.add_argument("--calibrate", choices=sorted(WHAT), metavar="WHAT",
                   help="calibrate on the agent first: exposure, white-balance, lens-shading or all")
    p.add_argument("--target", type=float, default=None, help="exposure target white level (raw, pedestal included)")
    p.add_argument("--report", metavar="DIR", help="save the lens shading report picture into DIR")
    p.add_argument("--snapshot", metavar="DIR", help="take one full-resolution snapshot (JPEG + DNG + JSON) into DIR")
    p.add_argument("--record", metavar="FILE.mkv", help="record the received JPEG frames (no re-encoding) to FILE")
    p.add_argument("--save-dir", metavar="DIR", default=".", help="where the s and r keys save files (default .)")
    p.add_argument("--overlays", type=overlay_list, default="stats,controls,histogram,progress,connection",
                   metavar="LIST",
                   help="overlays on at start: comma list of stats, controls, histogram, progress, connection; "
                        "'all' or 'none'")
    p.add_argument("--list", action="store_true", help="list the agents found on the local network and exit")
    p.add_argument("--discover-timeout", type=_number(float, 0, above=True), default=2.0, metavar="S", help="how long to browse (mDNS)")
    p.add_argument("--log-level", default="WARNING", type=str.upper, choices=LOG_LEVELS)
    sec = p.add_argument_group("security (see `host-viewer keys`)")
    sec.add_argument("--agent-key", metavar="KEY", help="the agent's public key (`pi-agent keys` on the Pi); "
                                                        "default: from known_agents")
    sec.add_argument("--insecure", action="store_true", help="connect in plain text (agent run with --insecure)")
    sec.add_argument("--config-dir", metavar="DIR", help="keys and known_agents (default: ~/.config/picamlink on "
                     "Linux, ~/Library/Application Support/picamlink on macOS, %%APPDATA%%\\picamlink on Windows)")
    return p


def keys_main(argv: list[str]) -> int:
    from .security import create_or_load_keys, how_to_authorize, known_agents_file, quoted_path, read_known_agents

    p = argparse.ArgumentParser(prog="host-viewer keys", description="Create (first time) and show the viewer's key.")
    p.add_argument("--config-dir", metavar="DIR", help="default ~/.config/picamlink")
    args = p.parse_args(argv)
    try:
        keys, created = create_or_load_keys(args.config_dir)
    except (OSError, ValueError) as exc:
        print(f"host-viewer keys: {exc}", file=sys.stderr)
        return 1
    print(keys.public)
    print(f"# {'created' if created else 'the viewer key in'} {keys.directory} (secret: viewer.key_secret, 0600)",
          file=sys.stderr)
    print(f"# allow it on the Pi with: {how_to_authorize(keys.public)}", file=sys.stderr)
    option = f" --config-dir {quoted_path(keys.directory.parent)}" if args.config_dir else ""
    print(f"# {len(read_known_agents(args.config_dir))} trusted agent(s) in {known_agents_file(args.config_dir)}; "
          f"add one with: host-viewer trust HOST:PORT 'AGENT_KEY'{option}", file=sys.stderr)
    return 0


def trust_main(argv: list[str]) -> int:
    from protocol.keys import check_public_key, quoted_key

    from .security import remember_agent

    p = argparse.ArgumentParser(prog="host-viewer trust",
                                description="Remember an agent's public key (`pi-agent keys` on the Pi) in known_agents.")
    p.add_argument("address", metavar="HOST:PORT")
    p.add_argument("key", metavar="AGENT_PUBLIC_KEY")
    p.add_argument("--config-dir", metavar="DIR", help="default ~/.config/picamlink")
    args = p.parse_args(argv)
    try:
        path = remember_agent(args.address, args.key, args.config_dir)
    except (OSError, ValueError) as exc:
        print(f"host-viewer trust: {exc}", file=sys.stderr)
        return 2
    print(f"trusting {args.address} with key {quoted_key(check_public_key(args.key))} ({path})")
    return 0


class LinkReport:
    """Says on stderr, once per change, when the link to the agent is lost and when it is back: a headless
    run has no window showing the connection state, and otherwise looks like a hang (breaker B8)."""

    def __init__(self, client: AgentClient, waiting_for: str = ""):
        self.client = client
        self.waiting_for = waiting_for  # e.g. "the calibration's result (known by its expiry at the latest)"
        self.lost_at: float | None = None

    def check(self) -> None:
        connection = self.client.connection
        if connection.state == "connected":
            if self.lost_at is not None:
                print(f"host-viewer: {self.client.address}: connected again after "
                      f"{time.monotonic() - self.lost_at:.1f} s", file=sys.stderr, flush=True)
                self.lost_at = None
        elif self.lost_at is None and self.client.welcome is not None:
            self.lost_at = time.monotonic()
            then = f"; waiting for {self.waiting_for}" if self.waiting_for else ""
            print(f"host-viewer: {self.client.address}: lost the agent ({connection.text}); reconnecting{then}",
                  file=sys.stderr, flush=True)


def run_headless(client: AgentClient, duration: float | None, recorder=None,
                 session: ViewingSession | None = None, stop: StopRequest | None = None,
                 frames: int | None = None) -> ViewingSession:
    """Receive, decode and measure (and record, if `recorder`) until `duration` has passed, `frames` frames
    were decoded in this call, or `stop` is set."""
    session = session or ViewingSession(client)
    end = time.monotonic() + duration if duration is not None else float("inf")
    goal = session.frames + frames if frames is not None else None
    last = None
    link = LinkReport(client)
    while (time.monotonic() < end and not (stop is not None and stop.is_set())
           and (goal is None or session.frames < goal)):
        link.check()
        try:
            frame = client.wait_frame(timeout=min(0.2, max(0.01, end - time.monotonic())), after=last)
        except TimeoutError:
            continue
        last = frame
        try:
            image = frame.decode()
        except BadFrame as exc:  # a corrupt frame is skipped; the stream goes on
            log.warning("%s", exc)
            continue
        if recorder is not None:
            recorder.write(frame)
        session.record(frame, image)
    return session


def run_calibration(client: AgentClient, args, session: ViewingSession,
                    stop: StopRequest | None = None) -> tuple[dict | None, str | None]:
    """Run `calibrate` while receiving frames (the stream goes on); progress lines go to stderr.
    Returns (result value, None) or (partial result or None, error sentence). When `stop` is set (Ctrl-C,
    SIGTERM) the calibration is cancelled on the agent, which keeps the calibration it had, and this waits
    for the agent's final reply before returning."""
    pending = start_calibration(client, args.calibrate, target=args.target,
                                on_progress=lambda p: print(progress_line(p), file=sys.stderr, flush=True))
    last = None
    # Bound (issue 17.5): the client settles the command by its expiry when the agent is unreachable; an agent
    # still working past it is asked to cancel, so a headless --calibrate always ends.
    give_up = pending.deadline + CANCEL_WAIT_S
    link = LinkReport(client, "the calibration's result (known by its expiry at the latest)")
    while not pending.future.done():
        link.check()
        overdue = time.monotonic() > give_up
        if overdue or (stop is not None and stop.is_set()):
            if overdue:
                print("host-viewer: the calibration ran past its expiry: cancelling it on the agent", file=sys.stderr)
                if not client.cancel_pending(pending):
                    return None, (f"timeout: no result from {client.address} within the command's expiry "
                                  f"(+{CANCEL_WAIT_S:g} s) and no answer to cancel")
                break
            print(f"host-viewer: {stop.signal_name}: cancelling the calibration on the agent", file=sys.stderr)
            if not client.cancel_pending(pending):
                return None, (f"cancelled: no confirmation from the agent within {CANCEL_WAIT_S:g} s; "
                              f"it cancels the calibration when it notices the viewer left")
            break
        try:
            frame = client.wait_frame(timeout=0.2, after=last)
        except TimeoutError:
            continue
        last = frame
        try:
            session.record(frame, frame.decode())
        except BadFrame as exc:
            log.warning("%s", exc)
    try:
        return pending.future.result(), None
    except CommandFailed as exc:
        return (exc.detail or None), f"{exc.code}: {exc.message}"


def wait_for_agent(client: AgentClient, timeout: float, stop: StopRequest | None = None) -> str | None:
    """Wait for the agent's welcome; None when connected, else the sentence saying why not. A refusal by the
    agent ends the wait at once; what the connection says meanwhile (connection refused, a port that does
    not speak ZeroMQ) is printed once as soon as it is known, and the wait goes on (an agent may be starting)."""
    deadline = time.monotonic() + timeout
    reported = ""
    while True:
        try:
            client.wait_connected(min(0.05, max(0.0, deadline - time.monotonic())))
            return None
        except TimeoutError:
            pass
        connection = client.connection
        if connection.state == "refused":
            return f"refused by {client.address}: {connection.detail}: {connection.hint}"
        if connection.detail and connection.detail != reported:
            reported = connection.detail
            print(f"host-viewer: {client.address}: {connection.detail}: {connection.hint} (waiting up to "
                  f"{timeout:g} s)", file=sys.stderr, flush=True)
        if stop is not None and stop.is_set():
            return f"{stop.signal_name} while connecting to {client.address}"
        if time.monotonic() >= deadline:
            why = connection.hint if connection.detail == CANNOT_RESOLVE else "is pi-agent running there?"
            return f"no agent answered at {client.address} within {timeout:g} s ({connection.text}; {why})"


def take_snapshot(client: AgentClient, directory: str, stop: StopRequest | None = None) -> dict:
    """Ask the agent for a snapshot and save it; returns the saved files and the frame facts."""
    from .snapshot import save_snapshot

    pending = client.send_command("snapshot", {}, ttl=15.0)
    deadline = time.monotonic() + 16.0
    while not pending.future.done():
        if stop is not None and stop.is_set():
            raise CommandFailed("cancelled", f"{stop.signal_name} before the snapshot arrived")
        if time.monotonic() > deadline:
            raise CommandFailed("timeout", "no reply to snapshot within 15 s")
        try:
            pending.future.exception(timeout=0.1)
        except TimeoutError:
            pass
    value = pending.future.result()
    welcome = client.welcome
    files = save_snapshot(value, directory, agent=welcome.agent if welcome else None,
                          model=(welcome.sensor.get("model") if welcome else None) or "camera")
    return {**files.as_dict(), "frame": value.get("frame"), "width": value.get("width"),
            "height": value.get("height"), "raw_shape": value.get("raw", {}).get("shape"),
            "full_resolution": value.get("full_resolution"), **({"reason": value["reason"]} if value.get("reason") else {})}


def write_summary(summary: dict, target: str) -> None:
    text = json.dumps(summary, indent=2)
    if target == "-":
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    else:
        with open(target, "w") as f:
            f.write(text + "\n")


def find_address(args) -> str | None:
    """With no address given: browse mDNS, list what answers, pick the only one or ask for a number."""
    from .discovery import choose, discover

    agents = discover(args.discover_timeout)
    if not agents:
        print(f"host-viewer: no agent announced itself within {args.discover_timeout:g} s; give HOST:PORT "
              f"(agents announce unless started with --no-announce; mDNS needs multicast)", file=sys.stderr)
        return None
    for i, agent in enumerate(agents, 1):
        print(f"{i}. {agent.describe()}", file=sys.stderr)
    if args.list:
        return None
    ask = input if sys.stdin.isatty() else None
    chosen = choose(agents, ask)
    if chosen is None:
        print("host-viewer: several agents found; give one's HOST:PORT (or run in a terminal to choose)",
              file=sys.stderr)
    return chosen.address if chosen else None


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except KeyboardInterrupt:  # a second Ctrl-C while waiting for a clean exit
        print("host-viewer: interrupted", file=sys.stderr)
        return 130


def run(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    argv = key_arguments(argv, ("--agent-key",))  # a key starting with '-' is a key, not an option
    if argv[:1] == ["keys"]:  # subcommands; anything else is HOST:PORT and options
        return keys_main(argv[1:])
    if argv[:1] == ["trust"]:
        return trust_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    addresses = list(args.address)
    if args.list or not addresses:
        address = find_address(args)
        if args.list:
            return 0
        if address is None:
            return 1
        addresses = [address]
    if args.headless and len(addresses) > 1:
        print("host-viewer: --headless takes one agent address", file=sys.stderr)
        return 2
    if args.record and not args.record.lower().endswith(".mkv"):
        print(f"host-viewer: --record needs a .mkv file name (Matroska, MJPEG), not {args.record!r}", file=sys.stderr)
        return 2
    from .security import UntrustedAgent, client_security

    try:
        clients = [AgentClient(a, credit=args.credit, config_dir=args.config_dir,
                               security=client_security(a, agent_key=args.agent_key, insecure=args.insecure,
                                                        config_dir=args.config_dir))
                   for a in addresses]
    except UntrustedAgent as exc:
        print(f"host-viewer: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"host-viewer: {exc}", file=sys.stderr)
        return 2
    summary: dict = {}
    calibration = failure = None
    with ExitStack() as stack:
        stop = stack.enter_context(StopRequest())
        for client in clients:
            stack.enter_context(client)
        if args.headless:
            problem = wait_for_agent(clients[0], args.connect_timeout, stop)
            if problem is not None:
                print(f"host-viewer: {problem}", file=sys.stderr)
                return 130 if stop.is_set() else 1
            client = clients[0]
            session = ViewingSession(client)
            summary_snapshot = None
            if args.calibrate:
                calibration, failure = run_calibration(client, args, session, stop)
                if failure:
                    print(f"host-viewer: calibration failed: {failure}", file=sys.stderr)
            if args.snapshot and not stop.is_set():
                try:
                    summary_snapshot = take_snapshot(client, args.snapshot, stop)
                except (CommandFailed, OSError) as exc:
                    print(f"host-viewer: snapshot failed: {exc}", file=sys.stderr)
                    return 1
            recorder = None
            if args.record and not stop.is_set():
                from .recording import Recorder, RecordingError

                try:
                    recorder = Recorder(args.record, fps_hint=float(client.welcome.stream.get("fps") or 30) or 30.0)
                except (RecordingError, OSError) as exc:
                    print(f"host-viewer: cannot record: {exc}", file=sys.stderr)
                    return 2
            duration = args.duration
            if duration is None and args.frames is None and (args.snapshot or args.calibrate) and not args.record:
                duration = 0.0  # a snapshot or a calibration alone: done
            try:
                run_headless(client, duration, recorder, session, stop, frames=args.frames)
            finally:
                if recorder is not None:
                    summary["recording"] = recorder.close().as_dict()
            summary = {**session.summary(), **summary}
            if summary_snapshot is not None:
                summary["snapshot"] = summary_snapshot
        else:
            from .app import ViewerApp
            from .calibration_ui import CalibrationKeys

            if args.calibrate or args.snapshot:  # commands to send at start need the agent first
                problem = wait_for_agent(clients[0], args.connect_timeout, stop)
                if problem is not None:
                    print(f"host-viewer: {problem}", file=sys.stderr)
                    return 130 if stop.is_set() else 1
            app = ViewerApp(clients, save_dir=args.snapshot or args.save_dir, overlays=args.overlays)
            keys = CalibrationKeys(report_dir=args.report)
            keys.install(app)
            if args.calibrate:
                keys.start(WHAT[args.calibrate])
            if args.record:
                app.tile.start_recording(Path(args.record))
            if args.snapshot:
                app.tile.snapshot()
            session = app.run(args.duration, stop=stop, frames=args.frames)
            summary = session.summary()
            summary["cameras"] = [tile.session.summary() for tile in app.tiles] if len(app.tiles) > 1 else None
            summary["snapshots"] = [s for tile in app.tiles for s in tile.snapshots]
            calibration = keys.last_result
        if stop.is_set():
            summary["stopped_by"] = stop.signal_name
    if failure and args.calibrate:
        summary["calibration"] = failure_summary(failure, calibration)
    elif calibration:
        summary["calibration"] = calibration_summary(calibration)
        if args.report and "lens_shading" in calibration and "luminance" in calibration["lens_shading"]:
            path = save_report(calibration["lens_shading"], args.report)
            print(f"host-viewer: calibration report saved to {path}", file=sys.stderr)
    if args.summary_json:
        write_summary(summary, args.summary_json)
    if failure:
        return 130 if "cancelled" in failure else 1
    if calibration and any(part.get("converged") is False for part in calibration.values() if isinstance(part, dict)):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
