"""Run a command while N busy processes load the CPU (a `stress --cpu N` stand-in), then stop them.

Why: the test suite must stay green on a busy 2-core machine (issue 16 item 8); this is how that is shown:

    .venv/bin/python scripts/under_load.py --busy 4 --runs 3 -- scripts/test.sh

Each busy process is a Python loop that never sleeps (nice 0, like `stress`). With --runs K the command runs
K times in a row and stops at the first failure. Exit status: the command's (0 when every run passed; 127
when it cannot be run). The busy processes are stopped however it ends.
The load average seen during each run is printed at its end, so a report says what load the runs had.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

BUSY_LOOP = "while True:\n    pass\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="example: scripts/under_load.py --busy 4 --runs 3 -- scripts/test.sh")
    parser.add_argument("--busy", type=int, default=2 * (os.cpu_count() or 1),
                        help="busy processes to run (default: twice the core count)")
    parser.add_argument("--runs", type=int, default=1, help="run the command this many times in a row")
    parser.add_argument("--quick", action="store_true", help="a 2 s check of the load itself: runs `true`")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if args.quick:
        args.command = ["sleep", "2"]
    if not args.command:
        parser.error("give the command to run after --, e.g. -- scripts/test.sh")
    if args.busy < 0 or args.runs < 1:
        parser.error("--busy must be >= 0 and --runs >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    hogs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(args.busy)]
    status = 0
    try:
        for run in range(1, args.runs + 1):
            started = time.monotonic()
            try:
                status = subprocess.call(args.command)
            except OSError as exc:  # not found, not executable: say so, as a shell would (127)
                print(f"under_load: cannot run {args.command[0]!r}: {exc.strerror}", file=sys.stderr, flush=True)
                return 127
            load = os.getloadavg()
            print(f"under_load: run {run}/{args.runs} with {args.busy} busy processes: exit {status} after "
                  f"{time.monotonic() - started:.0f} s; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}",
                  flush=True)
            if status != 0:
                break
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait()
    return status


if __name__ == "__main__":
    sys.exit(main())
