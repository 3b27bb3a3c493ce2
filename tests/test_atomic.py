"""Atomic saves: a SIGKILL at any moment of saving leaves the old file or the new one, never a broken one."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pi_agent.atomic import atomic_write_bytes, atomic_write_json, remove_stale_temporaries

from .kill_during_save import content

ROOT = Path(__file__).resolve().parent.parent


def test_atomic_write_replaces_content_with_owner_only_permissions(tmp_path):
    target = tmp_path / "state.json"
    atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    atomic_write_bytes(target, b"second", mode=0o644)
    assert target.read_bytes() == b"second" and stat.S_IMODE(target.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["state.json"]  # no temporary left behind


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "state.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(ValueError):
        atomic_write_json(target, {"a": float("nan")})  # not valid JSON: refused before anything is written
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert json.loads(target.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["state.json"]


def test_stale_temporaries_are_removed(tmp_path):
    target = tmp_path / "state.json"
    (tmp_path / ".state.json.abc123.tmp").write_text("half a fi")
    (tmp_path / ".other.json.abc123.tmp").write_text("not ours")
    assert remove_stale_temporaries(target) == 1
    assert sorted(os.listdir(tmp_path)) == [".other.json.abc123.tmp"]


def test_sigkill_at_random_moments_of_saving_leaves_old_or_new_file(tmp_path):
    """200 writers, each SIGKILLed at a random moment while it saves the same file over and over. After
    every kill the file parses, its checksum holds, and it is the save in progress or the one before."""
    rounds = 200
    target = tmp_path / "state.json"
    atomic_write_json(target, content(0), indent=None)
    previous = 0
    killed_mid_save = stray_temporaries = 0
    helper = subprocess.Popen(
        [sys.executable, "-m", "tests.kill_during_save", str(target), str(rounds), "6", "0.012"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        for _ in range(rounds):
            line = helper.stdout.readline()
            assert line, "the helper died"
            report = json.loads(line)
            announced = report["announced"]
            saved = json.loads(target.read_text())  # must parse
            body = saved["body"]
            assert saved == content(saved["n"]), "file content does not match its save number"
            assert len(body) > 0
            allowed = {announced[-1], announced[-2] if len(announced) > 1 else previous} if announced else {previous}
            assert saved["n"] in allowed, f"round {report['round']}: file holds save {saved['n']}, expected one of {allowed}"
            if announced and saved["n"] != announced[-1]:
                killed_mid_save += 1  # killed after the save began and before its rename
            stray_temporaries += remove_stale_temporaries(target)
            previous = saved["n"]
            helper.stdin.write("next\n")
            helper.stdin.flush()
    finally:
        helper.stdin.close()
        helper.wait(timeout=10)
    print(f"kills inside a save: {killed_mid_save}/{rounds}; stray temporaries removed: {stray_temporaries}")
    # The test is only worth something if the kills really landed inside saves.
    assert killed_mid_save >= 20, f"only {killed_mid_save} of {rounds} kills landed inside a save"
    assert stray_temporaries >= 10
    assert os.listdir(tmp_path) == ["state.json"]
