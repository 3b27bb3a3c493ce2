"""The persisted calibration under faults: corrupt files, kill -9 at every step of a save, a full or
read-only state directory. The agent always starts and serves; calibration.json and tuning.json agree."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pi_agent.agent import Agent
from pi_agent.camera.base import LensShadingTable
from pi_agent.camera.sim import SimulatedCamera
from pi_agent.camera.tuning import table_from_tuning
from pi_agent.state import StateStore, table_from_json, table_to_json

from .kill_during_state_save import A, B

ROOT = Path(__file__).resolve().parent.parent
FLAT = table_to_json(LensShadingTable.flat((16, 12)))


def _with(**fields) -> str:
    """A calibration file: a valid one with `fields` changed, as JSON text (Infinity/NaN allowed here)."""
    return json.dumps({"format": 1, "sensor": "imx219", "controls": {"ExposureTime": 5000},
                       "results": {"exposure": {"level": 700.0}}, "lens_shading_table": FLAT, **fields})


def _table(**fields) -> str:
    return _with(lens_shading_table={**FLAT, **fields})


CORRUPT: dict[str, str | bytes] = {
    "controls a string": _with(controls="fast"),
    "controls a list": _with(controls=[["ExposureTime", 5000]]),
    "a control of the wrong type": _with(controls={"ExposureTime": "long"}),
    "an unknown control": _with(controls={"Sharpness": 2.0}),
    "ColourGains one value": _with(controls={"ColourGains": [1.5]}),
    "an infinite exposure": _with(controls={"ExposureTime": float("inf")}),
    "results a string": _with(results="good"),
    "results a list": _with(results=[1, 2]),
    "a NaN residual": _with(results={"lens_shading": {"residual_pct": float("nan")}}),
    "an infinite grid": _table(grid=[float("inf"), 12]),
    "a huge grid": _table(grid=[100000, 12]),
    "an infinite colour temperature": _table(colour_temperature=float("inf")),
    "a table of the wrong shape": _table(luminance=[[1.0] * 16] * 11),
    "a NaN gain": _table(cr=[[float("nan")] * 16] * 12),
    "a negative gain": _table(cb=[[-1.0] * 16] * 12),
    "a table that is a string": _with(lens_shading_table="flat"),
    "sensor a number": _with(sensor=219),
    "format missing": json.dumps({"controls": {}}),
    "format 2": _with(format=2),
    "a JSON list": "[]",
    "null": "null",
    "not JSON": "{not json",
    "empty": "",
    "truncated": _with()[:200],
    "not UTF-8": b"\xff\xfe\x00{",
}


def _write_raw(path: Path, content: str | bytes) -> None:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())


def _bad_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("calibration.json.bad-*"))


@pytest.mark.parametrize("layout", ["generations", "legacy"])
@pytest.mark.parametrize("case", list(CORRUPT))
def test_a_corrupt_calibration_is_moved_aside_and_the_next_save_works(tmp_path, case, layout):
    store = StateStore(tmp_path)
    if layout == "generations":
        store.save(*A)
        _write_raw(store.path, CORRUPT[case])  # through the link: the file of the unit in force
    else:
        _write_raw(store.path, CORRUPT[case])
    assert store.load() is None
    bad = _bad_files(tmp_path)
    assert len(bad) == 1 and bad[0].read_bytes() == (CORRUPT[case] if isinstance(CORRUPT[case], bytes)
                                                     else CORRUPT[case].encode())
    assert not store.path.exists()
    assert store.load() is None  # and stays quietly uncalibrated
    store.save(*B)
    assert table_from_json(store.load()["lens_shading_table"]).colour_temperature == 6000


def test_every_field_of_a_valid_file_survives_a_round_trip_including_unknown_ones(tmp_path):
    store = StateStore(tmp_path)
    state = {**A[0], "stale": {"lens_shading": "the sensor mode changed"}}  # a field a newer agent adds
    store.save(state, A[1])
    loaded = store.load()
    assert loaded["stale"] == state["stale"] and loaded["controls"] == state["controls"]
    assert json.loads(store.tuning_path.read_text()) == A[1]


@pytest.mark.parametrize("case", list(CORRUPT))
def test_the_agent_starts_and_serves_whatever_calibration_file_it_finds(tmp_path, start_agent, connect, case):
    _write_raw(tmp_path / "calibration.json", CORRUPT[case])
    agent = start_agent(camera=SimulatedCamera(seed=3), size=(160, 120), state_dir=str(tmp_path))
    client = connect(agent)
    first = client.wait_frame(timeout=10).sequence
    client.wait_frame(newer_than=first + 2, timeout=10)
    assert client.welcome.calibration["in_force"] is False
    assert len(_bad_files(tmp_path)) == 1
    assert np.all(agent.camera.lens_shading is None or agent.camera.lens_shading.luminance == 1.0)


def test_a_calibration_directory_that_cannot_be_read_does_not_stop_the_agent(tmp_path, start_agent, connect):
    (tmp_path / "calibration.json").mkdir()  # a directory where the file should be
    agent = start_agent(camera=SimulatedCamera(seed=3), size=(160, 120), state_dir=str(tmp_path))
    client = connect(agent)
    client.wait_frame(timeout=10)
    assert client.welcome.calibration["in_force"] is False


def _table_of(path: Path) -> int:
    return table_from_json(json.loads(path.read_text())["lens_shading_table"]).colour_temperature


def _tuning_of(path: Path) -> int:
    return table_from_tuning(json.loads(path.read_text())).colour_temperature


@pytest.mark.parametrize("layout", ["generations", "legacy"])
def test_kill_9_at_every_step_of_a_save_never_leaves_the_files_disagreeing(tmp_path, layout):
    helper = subprocess.run([sys.executable, "-m", "tests.kill_during_state_save", str(tmp_path), layout],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert helper.returncode == 0, helper.stderr[-2000:]
    steps = json.loads(helper.stdout)
    assert {"write calibration", "write tuning", "flip current"} <= set(steps), steps
    outcomes = []
    for k, step in enumerate(steps + ["(not killed)"]):
        directory = tmp_path / str(k)
        store = StateStore(directory)
        if layout == "generations":
            # Even before any repair, the two names show one unit.
            assert _table_of(store.path) == _tuning_of(store.tuning_path), f"killed at {step!r}"
        loaded = store.load()
        assert loaded is not None, f"killed at {step!r}: the calibration was lost"
        unit = table_from_json(loaded["lens_shading_table"]).colour_temperature
        assert unit in (3000, 6000), step
        assert _table_of(store.path) == _tuning_of(store.tuning_path) == unit, f"killed at {step!r}"
        generations = directory / "generations"
        left = sorted(p.name for p in generations.iterdir()) if generations.exists() else []
        assert left == ([str(loaded["generation"])] if "generation" in loaded else []), step  # no half a save left
        outcomes.append(unit)
    # The unit flips exactly once, at the rename of `current`, and never flips back.
    flip = steps.index("flip current")
    assert outcomes == [3000] * (flip + 1) + [6000] * (len(outcomes) - flip - 1), list(zip(steps, outcomes))


def _in_private_tmpfs(mode: str, directory: Path, size: str) -> dict | list:
    """Run tests.state_disk_faults in a user+mount namespace on a tmpfs of `size` mounted at `directory`."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is needed for a private tmpfs")
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"user namespaces are not available here: {probe.stderr.decode()[:200]}")
    directory.mkdir(exist_ok=True)
    script = (f'mount -t tmpfs -o size={size} tmpfs "{directory}" && '
              f'exec "{sys.executable}" -m tests.state_disk_faults {mode} "{directory}"')
    run = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                         cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_saving_on_a_nearly_full_disk_keeps_one_whole_unit_at_every_free_space(tmp_path):
    rows = _in_private_tmpfs("sweep", tmp_path / "state", "256k")
    for row in rows:
        assert row["loaded"] == (6000 if row["saved"] else 3000), row
        assert row["names_agree"] is True, row
        assert len(row["leftovers"]) == 1, row  # no half-written generation left behind
    assert not rows[0]["saved"] and rows[0]["error"]  # no room at all: refused, A intact
    assert rows[-1]["saved"]  # enough room: saved
    print("free pages → saved:", [(r["pages"], r["saved"]) for r in rows])


def test_calibrate_with_a_full_and_a_read_only_state_directory_says_not_persisted(tmp_path):
    out = _in_private_tmpfs("agent", tmp_path / "state", "1m")
    first = out["first"]
    assert first["state_file"] and first["names_agree"] is True
    saved_ct = first["loaded"]
    for name in ("full", "read_only"):
        attempt = out[name]
        assert attempt["ok"] is False and attempt["code"] == "failed", attempt
        assert "not persisted" in attempt["message"].lower() and "in force" in attempt["message"], attempt
        assert "state_file" not in attempt["detail_keys"] and "lens_shading" in attempt["detail_keys"]
        assert attempt["table_changed"] is True  # the new calibration is in force ...
        assert attempt["status"]["in_force"] is True and attempt["status"]["persisted"] is False
        assert attempt["status"]["state_file"] is None  # ... and nothing claims it was saved
        assert attempt["loaded"] == saved_ct and attempt["names_agree"] is True  # the previous files, intact
    clear = out["clear_read_only"]
    assert clear["ok"] is False and "stays saved and in force" in clear["message"], clear
    assert clear["table_changed"] is False  # camera and files keep agreeing
    assert clear["loaded"] == saved_ct and clear["names_agree"] is True
