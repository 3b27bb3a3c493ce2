"""Every script's --help works after the quick start alone, without the dev extra (breaker F10), and writes
nothing. The dev-only packages are made unimportable in the child, as in a runtime-only venv."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.name for p in (ROOT / "scripts").glob("*.py")
                 if p.name not in ("__init__.py", "benchdoc.py") and "argparse" in p.read_text())
# the dev extra (pyproject.toml) less what the runtime also has
DEV_ONLY = ("psutil", "imagezmq", "rawpy", "mss", "tqdm", "hypothesis", "pytest")
RUN = ("import runpy, sys\n"
       "for name in {dev!r}: sys.modules[name] = None  # import fails as if not installed\n"
       "sys.argv = [{script!r}, '--help']\n"
       "runpy.run_path({script!r}, run_name='__main__')\n")


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_needs_no_dev_only_package(script, tmp_path):
    path = str(ROOT / "scripts" / script)
    result = subprocess.run([sys.executable, "-c", RUN.format(dev=DEV_ONLY, script=path)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout
    assert list(tmp_path.iterdir()) == []  # --help writes nothing
