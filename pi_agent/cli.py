"""`pi-agent`: stream the camera (simulated by default when no Pi camera is present) to viewers.

`pi-agent keys` creates/shows the agent's key; `pi-agent authorize VIEWER_KEY_OR_FILE` allows a viewer in;
`pi-agent service install|uninstall|status` runs it as a systemd service."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from protocol.keys import key_arguments, quoted_key
from protocol.options import LOG_LEVELS, number_type

from .camera.factory import CAMERA_CHOICES, check_camera_kind, make_camera
from .state import DEFAULT_STATE_DIR, StateStore
from .stopping import StopSignals

log = logging.getLogger("pi_agent")

EXIT_THREAD_DIED = 3  # a thread the agent needs ended (see pi_agent/watchdog.py)


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, for example 640x480, not {text!r}") from None
    if w <= 0 or h <= 0 or w % 2 or h % 2:
        raise argparse.ArgumentTypeError(f"size {text} must be positive and even in both dimensions")
    return w, h


def camera_kind(text: str) -> str:
    try:
        return check_camera_kind(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def limit_opencv_threads(camera) -> None:
    """One OpenCV thread unless the simulator renders with OpenCV: on the agent, OpenCV is only the raw
    statistics' calcHist, and its thread pool spinning between frames cost ≈ 15 % more CPU per frame
    (scripts/bench_stream.py) for no gain at stream rates."""
    if getattr(camera, "name", "") != "simulated":
        import cv2

        cv2.setNumThreads(1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pi-agent", description=__doc__)
    p.add_argument("--camera", default="auto", type=camera_kind, metavar="|".join(CAMERA_CHOICES),
                   help="camera backend; auto = picamera2 if a camera is present, else the simulator; "
                        "replay:FILE serves the frames of a replay file (scripts/make_replay.py)")
    p.add_argument("--listen", default="127.0.0.1:5555", metavar="HOST:PORT",
                   help="address to listen on (default 127.0.0.1:5555; 0.0.0.0:5555 for the network)")
    p.add_argument("--size", type=parse_size, default=(640, 480), metavar="WxH", help="main stream size")
    p.add_argument("--fps", type=number_type(float, 0, finite=True), default=30.0, help="frame rate (0 = as fast as possible)")
    p.add_argument("--quality", type=int, default=80, help="JPEG quality 1-100")
    p.add_argument("--name", default=None, help="the agent's name shown to viewers (default: the hostname)")
    p.add_argument("--max-viewers", type=number_type(int, 1), default=64, metavar="N",
                   help="viewers served at once (default 64); more are refused with a 'busy' error and logged")
    p.add_argument("--no-announce", action="store_true",
                   help="do not announce the agent on the local network (mDNS/zeroconf)")
    sim = p.add_argument_group("simulated camera")
    sim.add_argument("--sensor", default="imx219",
                     help="imx219, imx477, imx708, ov5647, imx296; monochrome: ov9281, imx296_mono")
    sim.add_argument("--scene", default="chart", help="chart, white or dark")
    sim.add_argument("--colour-temperature", type=float, default=5000.0, metavar="K", help="illuminant, kelvin")
    sim.add_argument("--seed", type=int, default=0, help="random seed (determinism)")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, metavar="DIR",
                   help=f"where the calibration is kept and reloaded at start (default {DEFAULT_STATE_DIR})")
    p.add_argument("--clear-calibration", action="store_true",
                   help="forget the saved calibration (and exported tuning) before starting")
    p.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS)
    sec = p.add_argument_group("security (see `pi-agent keys` and `pi-agent authorize`)")
    sec.add_argument("--secure", action="store_true",
                     help="encrypt (CURVE) and admit only authorised viewers, also on loopback; the default "
                          "for any non-loopback --listen")
    sec.add_argument("--insecure", action="store_true",
                     help="plain text, anyone may connect: needed to listen beyond loopback without keys")
    sec.add_argument("--config-dir", metavar="DIR", help="keys live in DIR/agent (default ~/.config/picamlink)")
    return p


def build_keys_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pi-agent keys", description="Create (first time) and show the agent's key.")
    p.add_argument("--config-dir", metavar="DIR", help="default ~/.config/picamlink")
    return p


def build_authorize_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pi-agent authorize",
                                description="Allow a viewer to connect: its public key (from `host-viewer keys`) "
                                            "or a file holding it.")
    p.add_argument("key", metavar="VIEWER_PUBLIC_KEY_OR_FILE")
    p.add_argument("--name", help="a name for this viewer (the file name in authorized_keys)")
    p.add_argument("--config-dir", metavar="DIR", help="default ~/.config/picamlink")
    return p


def keys_main(argv: list[str]) -> int:
    from .security import create_or_load_keys, read_allowlist

    args = build_keys_parser().parse_args(argv)
    try:
        keys, created = create_or_load_keys(args.config_dir)
    except (OSError, ValueError) as exc:
        print(f"pi-agent keys: {exc}", file=sys.stderr)
        return 1
    allowlist = read_allowlist(args.config_dir)
    allowed = allowlist.allowed
    print(keys.public)
    print(f"# {'created' if created else 'the agent key in'} {keys.directory} (secret: agent.key_secret, 0600)",
          file=sys.stderr)
    print(f"# viewers trust it with: host-viewer trust HOST:PORT {quoted_key(keys.public)}", file=sys.stderr)
    print(f"#   or once: host-viewer HOST:PORT --agent-key={quoted_key(keys.public)}", file=sys.stderr)
    print(f"# {len(allowed)} authorised viewer(s) in {keys.authorized_dir}"
          + (f": {', '.join(sorted(allowed.values()))}" if allowed else "; add one with `pi-agent authorize KEY`"),
          file=sys.stderr)
    for path, reason in sorted(allowlist.refused.items()):
        print(f"# REFUSED {path}: {reason}", file=sys.stderr)
    return 0


def authorize_main(argv: list[str]) -> int:
    from .security import authorize, read_allowlist

    args = build_authorize_parser().parse_args(argv)
    try:
        key, path, added = authorize(args.key, name=args.name, config_dir=args.config_dir)
    except (OSError, ValueError) as exc:
        print(f"pi-agent authorize: {exc}", file=sys.stderr)
        return 2
    print(f"{'authorised' if added else 'already authorised'}: {quoted_key(key)} ({path}); takes effect at its "
          f"next connection")
    for refused, reason in sorted(read_allowlist(args.config_dir).refused.items()):
        print(f"pi-agent authorize: note: {quoted_key(refused)} is REFUSED: {reason}", file=sys.stderr)
    return 0


def startup_checks(args: argparse.Namespace):
    """The checks on parsed options that need no camera and no socket; run at start and by `service install`
    (so a unit is never written that can only fail). Returns the CURVE server security (None: plain text).
    Raises ValueError (InsecureListen is one) or OSError with the sentence to show."""
    from .security import server_security

    if not 1 <= args.quality <= 100:
        raise ValueError("--quality must be between 1 and 100")
    return server_security(args.listen, secure=args.secure, insecure=args.insecure, config_dir=args.config_dir)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    argv = key_arguments(argv)  # `pi-agent authorize -KEY...`: a key starting with '-' is a key, not an option
    if argv[:1] == ["service"]:
        from .service import main as service_main

        return service_main(argv[1:])
    if argv[:1] == ["keys"]:
        return keys_main(argv[1:])
    if argv[:1] == ["authorize"]:
        return authorize_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        security = startup_checks(args)
    except (OSError, ValueError) as exc:
        print(f"pi-agent: {exc}", file=sys.stderr)
        return 2
    from .agent import Agent, raise_open_file_limit, tune_allocator

    tune_allocator()  # before the camera, encoder and ZeroMQ threads start
    if args.clear_calibration:
        try:
            removed = StateStore(args.state_dir).clear()
        except OSError as exc:
            print(f"pi-agent: --clear-calibration: cannot remove the saved calibration: {exc}", file=sys.stderr)
            return 2
        log.info("calibration %s", f"cleared from {args.state_dir}" if removed else "was not saved; nothing to clear")
    try:
        camera = make_camera(args.camera, sensor=args.sensor, scene=args.scene,
                             colour_temperature=args.colour_temperature, seed=args.seed)
        limit_opencv_threads(camera)
        stop = StopSignals()
        fatal: list[str] = []
        raise_open_file_limit()
        # Before the socket is up: a stop request that comes as soon as viewers can connect still stops
        # cleanly (every viewer gets its `bye`) instead of killing the process.
        stop.install()
        agent = Agent(camera, args.listen, size=args.size, fps=args.fps, quality=args.quality,
                      state_dir=args.state_dir, name=args.name, announce=not args.no_announce, security=security,
                      max_viewers=args.max_viewers,
                      on_fatal=lambda reason: (fatal.append(reason), stop.set()))
        port = agent.start()
    except (ValueError, RuntimeError) as exc:
        print(f"pi-agent: {exc}", file=sys.stderr)
        return 2
    log.info("streaming %s %dx%d at %g fps on port %d, %s (Ctrl-C to stop)",
             camera.sensor.model, args.size[0], args.size[1], args.fps, port,
             f"encrypted, agent key {security.keys.public}" if security else "plain text")
    stop.wait()  # polls: wakes for signals on every platform
    if fatal:
        # A thread the agent needs is dead: exit non-zero so that the service manager restarts it. The stop
        # is bounded (threads are joined with timeouts); os._exit skips waiting on anything left hanging.
        log.critical("%s; exiting with status %d so that the service restarts the agent", fatal[0], EXIT_THREAD_DIED)
        agent.stop()
        logging.shutdown()
        os._exit(EXIT_THREAD_DIED)
    log.info("stopping")
    agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
