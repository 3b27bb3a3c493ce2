"""Helper for test_state: saves on a really full or really read-only filesystem, inside a private mount.

Run by test_state as `unshare --user --map-root-user --mount sh -c 'mount -t tmpfs ... DIR && python -m
tests.state_disk_faults MODE DIR'`: a small tmpfs of our own (no privileges needed beyond a user
namespace) that can be filled to the last page or remounted read-only. Prints one JSON line of findings;
the test asserts on it (the tmpfs vanishes with the namespace).

Modes:
  sweep  save unit B over unit A with 0, 1, 2, ... free pages left: each save succeeds or fails, and
         in every case the unit on disk is A or B whole, and the two names agree.
  agent  a real agent calibrates lens shading on this filesystem, then again with it full, then with it
         read-only, then tries clear_calibration read-only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

PAGE = 4096


def fill(directory: str, leave: int) -> None:
    """Take all free space of the filesystem except `leave` bytes (a filler file, written for real)."""
    stats = os.statvfs(directory)
    free = stats.f_bavail * stats.f_frsize - leave
    with open(os.path.join(directory, "filler"), "wb") as f:
        while free > 0:
            try:
                free -= f.write(b"\0" * min(free, 1 << 16))
            except OSError:
                break


def unit_of(directory: str) -> dict:
    """Which unit the names show (by the table's colour temperature) and whether the two agree."""
    from pi_agent.camera.tuning import table_from_tuning
    from pi_agent.state import StateStore, table_from_json

    store = StateStore(directory)
    loaded = store.load()
    out = {"loaded": None, "names_agree": None}
    if loaded is None:
        return out
    table = table_from_json(loaded["lens_shading_table"])
    out["loaded"] = table.colour_temperature
    with open(store.path) as f:
        by_name = table_from_json(json.load(f)["lens_shading_table"]).colour_temperature
    with open(store.tuning_path) as f:
        tuned = table_from_tuning(json.load(f)).colour_temperature
    out["names_agree"] = by_name == tuned == table.colour_temperature
    return out


def sweep(directory: str) -> list[dict]:
    from pi_agent.state import StateStore
    from tests.kill_during_state_save import A, B

    results = []
    for pages in range(0, 12):
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
        StateStore(directory).save(*A)
        fill(directory, pages * PAGE)
        row = {"pages": pages, "saved": True, "error": None}
        try:
            StateStore(directory).save(*B)
        except OSError as exc:
            row.update(saved=False, error=exc.strerror)
        os.unlink(os.path.join(directory, "filler"))
        row.update(unit_of(directory))
        row["leftovers"] = sorted(os.listdir(os.path.join(directory, "generations")))
        results.append(row)
    return results


def agent_run(directory: str) -> dict:
    from host_viewer.client import AgentClient, CommandFailed
    from pi_agent.agent import Agent
    from pi_agent.camera.sim import SimulatedCamera

    camera = SimulatedCamera(sensor="imx219", scene="white", seed=2)
    agent = Agent(camera, "127.0.0.1:0", size=(320, 240), fps=30, state_dir=directory)
    agent.start()
    out: dict = {}
    client = AgentClient(f"127.0.0.1:{agent.port}").start()
    try:
        client.wait_connected(10)
        first = client.command("calibrate", {"what": "lens_shading"}, timeout=120)
        out["first"] = {"state_file": first.get("state_file"), **unit_of(directory)}
        saved_table = camera.lens_shading

        def attempt(name: str, command: str, args: dict | None = None) -> None:
            before = camera.lens_shading
            try:
                value = client.command(command, args, timeout=120)
                out[name] = {"ok": True, "value": value}
            except CommandFailed as exc:
                out[name] = {"ok": False, "code": exc.code, "message": exc.message,
                             "detail_keys": sorted(exc.detail or {})}
            out[name]["table_changed"] = camera.lens_shading is not before
            out[name]["table_is_saved_one"] = camera.lens_shading is saved_table
            out[name]["status"] = client.command("status")["calibration"]
            out[name].update(unit_of(directory))

        fill(directory, 0)
        attempt("full", "calibrate", {"what": "lens_shading"})
        os.unlink(os.path.join(directory, "filler"))
        subprocess.run(["mount", "-o", "remount,ro", directory], check=True)
        attempt("read_only", "calibrate", {"what": "lens_shading"})
        attempt("clear_read_only", "clear_calibration")
        out["files"] = sorted(os.listdir(directory))
    finally:
        client.close()
        agent.stop()
    return out


def main() -> None:
    mode, directory = sys.argv[1], sys.argv[2]
    result = sweep(directory) if mode == "sweep" else agent_run(directory)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
