"""Helper process for test_atomic: forks writers that save a JSON file over and over, SIGKILLs each at a
random moment, and after every kill tells the test (one JSON line on stdout) which saves the writer had
started, then waits for a line on stdin before the next round. Runs as `python -m tests.kill_during_save`.

A separate, single-threaded process does the forking so the writers are cheap (no interpreter start-up per
kill) and safe to fork (no other threads holding locks).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sys
import time

from pi_agent.atomic import atomic_write_json


def content(n: int) -> dict:
    """Save number n: a size that changes from save to save, and a checksum over the body."""
    body = (f"{n:08d}" * (50 + (n * 7919) % 4000))
    return {"n": n, "body": body, "sha256": hashlib.sha256(body.encode()).hexdigest()}


def writer(path: str, start: int, announce_fd: int) -> None:
    n = start
    while True:
        os.write(announce_fd, f"{n}\n".encode())  # "save n begins"
        atomic_write_json(path, content(n), indent=None)
        n += 1


def main() -> None:
    path, rounds, seed, max_delay = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    rng = random.Random(seed)
    for i in range(rounds):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                writer(path, (i + 1) * 1_000_000, w)
            finally:
                os._exit(1)
        os.close(w)
        time.sleep(rng.uniform(0.0, max_delay))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        chunks = []
        while chunk := os.read(r, 65536):
            chunks.append(chunk)
        os.close(r)
        announced = [int(x) for x in b"".join(chunks).split()]
        sys.stdout.write(json.dumps({"round": i, "announced": announced[-2:], "saves_begun": len(announced)}) + "\n")
        sys.stdout.flush()
        if not sys.stdin.readline():
            return


if __name__ == "__main__":
    main()
