#!/usr/bin/env bash
# Quick-start command 2: set up everything the tests need on a fresh machine, then run them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure_apt.sh
scripts/setup.sh dev
exec .venv/bin/python -m pytest -q "$@"
