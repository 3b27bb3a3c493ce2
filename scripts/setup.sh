#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install picamlink into it.
#   scripts/setup.sh            runtime only
#   scripts/setup.sh dev        with the test tools (pytest, hypothesis, imagezmq, ...)
# On a Raspberry Pi, use the system picamera2: PICAMLINK_SYSTEM_SITE=1 scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  if [ "${PICAMLINK_SYSTEM_SITE:-0}" = 1 ]; then
    "$PY" -m venv --system-site-packages .venv
  else
    "$PY" -m venv .venv
  fi
fi
extra=""
[ "${1:-}" = dev ] && extra="[dev]"
stamp=".venv/.installed${extra}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".${extra}"
  touch "$stamp"
fi
