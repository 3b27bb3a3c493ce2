#!/usr/bin/env bash
# Quick-start command 1: set up, start the agent on the simulated camera, and watch it with the viewer.
# With a display: an OpenCV window (q quits). Without one: a 10-second headless run printing a JSON summary.
#   scripts/demo.sh [seconds]      (PORT=5555 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
PORT=${PORT:-5555}
SECONDS_TO_RUN=${1:-10}
echo "demo: agent on the simulated camera at 127.0.0.1:${PORT} (another port: PORT=5600 scripts/demo.sh)" >&2
.venv/bin/pi-agent --camera sim --listen "127.0.0.1:${PORT}" --size 640x480 --fps 30 --log-level WARNING &
AGENT=$!
trap 'kill -TERM $AGENT 2>/dev/null; wait $AGENT 2>/dev/null' EXIT
if [ -n "${DISPLAY:-}" ]; then
  echo "demo: viewer window on 127.0.0.1:${PORT} (q quits, h shows the keys)" >&2
  .venv/bin/host-viewer "127.0.0.1:${PORT}" --summary-json -
else
  echo "no display: running the viewer headless for ${SECONDS_TO_RUN} s" >&2
  .venv/bin/host-viewer "127.0.0.1:${PORT}" --headless --duration "${SECONDS_TO_RUN}" --summary-json -
fi
