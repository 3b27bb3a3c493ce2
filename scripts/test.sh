#!/usr/bin/env bash
# Quick-start command 2: set up everything the tests need on a fresh machine, then run them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure_apt.sh
scripts/setup.sh dev
echo "test.sh: set up in ${SECONDS} s; running the tests" >&2
exec .venv/bin/python -m pytest -q "$@"
