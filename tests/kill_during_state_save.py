"""Helper process for test_state: SIGKILLs a calibration save at each of its steps, one step per round.

`python -m tests.kill_during_state_save ROOT LAYOUT` prepares ROOT/<k>/ for every step k of a save: the
previous unit A (saved in the new layout, or as the older two plain files when LAYOUT is "legacy"), then
forks a child that saves unit B with a step hook that SIGKILLs the child at step k (the last round kills
nobody). Prints one JSON line: the step names in order. A forked, single-threaded process makes each
kill exact and cheap.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np

from pi_agent.atomic import atomic_write_json
from pi_agent.camera.base import LensShadingTable
from pi_agent.camera.tuning import minimal_tuning, with_lens_shading
from pi_agent.state import FORMAT, StateStore, table_to_json

GRID = (16, 12)


def unit(gain: float, ct: int) -> tuple[dict, dict]:
    """A calibration state and its tuning file; `gain` and `ct` tell units apart."""
    ones = np.ones((GRID[1], GRID[0]))
    table = LensShadingTable(grid=GRID, luminance=ones * gain, cr=ones * 1.05, cb=ones * 0.95, colour_temperature=ct)
    state = {"sensor": "imx219", "controls": {"ExposureTime": int(1000 * gain)}, "lens_shading_table": table_to_json(table),
             "results": {"lens_shading": {"residual_pct": 0.5}}}
    return state, with_lens_shading(minimal_tuning("bcm2835"), table)


A = unit(1.1, 3000)
B = unit(1.3, 6000)


def save_previous(directory: str, layout: str) -> None:
    os.makedirs(directory)
    if layout == "legacy":
        store = StateStore(directory)
        atomic_write_json(store.path, {"format": FORMAT, **A[0]}, indent=1)
        atomic_write_json(store.tuning_path, A[1], mode=0o644, indent=1)
    else:
        StateStore(directory).save(*A)


def step_names(root: str, layout: str) -> list[str]:
    names: list[str] = []
    directory = os.path.join(root, "dry-run")
    save_previous(directory, layout)
    StateStore(directory, step_hook=names.append).save(*B)
    return names


def main() -> None:
    root, layout = sys.argv[1], sys.argv[2]
    names = step_names(root, layout)
    for k in range(len(names) + 1):
        directory = os.path.join(root, str(k))
        save_previous(directory, layout)
        pid = os.fork()
        if pid == 0:
            seen = []

            def hook(name: str) -> None:
                seen.append(name)
                if len(seen) == k + 1:
                    os.kill(os.getpid(), signal.SIGKILL)

            try:
                StateStore(directory, step_hook=hook).save(*B)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
    sys.stdout.write(json.dumps(names) + "\n")


if __name__ == "__main__":
    main()
