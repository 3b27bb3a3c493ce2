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
    sec = p.add_argument_group("security (see `host-viewer keys`)")
    sec.add_argument("--agent-key", metavar="KEY", help="the agent's public key (`pi-agent keys` on the Pi); "
                                                        "default: from known_agents")
    sec.add_argument("--insecure", action="store_true", help="connect in plain text (agent run with --insecure)")
    sec.add_argument("--config-dir", metavar="DIR", help="keys and known_agents (default ~/.config/picamlink)")
    return p


def keys_main(argv: list[str]) -> int:
    from .security import create_or_load_keys, known_agents_file, read_known_agents

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
    print(f"# allow it on the Pi with: pi-agent authorize {keys.public}", file=sys.stderr)
    print(f"# {len(read_known_agents(args.config_dir))} trusted agent(s) in {known_agents_file(args.config_dir)}; "
          f"add one with: host-viewer trust HOST:PORT AGENT_KEY", file=sys.stderr)
    return 0


def trust_main(argv: list[str]) -> int:
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
    print(f"trusting {args.address} with key {args.key.strip()} ({path})")
    return 0


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
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["keys"]:  # subcommands; anything else is HOST:PORT and options
        return keys_main(argv[1:])
    if argv[:1] == ["trust"]:
        return trust_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .security import UntrustedAgent, client_security

    try:
        security = client_security(args.address, agent_key=args.agent_key, insecure=args.insecure,
                                   config_dir=args.config_dir)
        client = AgentClient(args.address, credit=args.credit, security=security)
    except UntrustedAgent as exc:
        print(f"host-viewer: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"host-viewer: {exc}", file=sys.stderr)
        return 2
    with client:
        try:
            client.wait_connected(args.connect_timeout)
        except TimeoutError:
            if client.state == "refused":
                print(f"host-viewer: refused: {client.state_detail}: {client.state_hint}", file=sys.stderr)
                return 1
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
