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
if .venv/bin/python -c "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=1)" \
    "$PORT" 2>/dev/null; then
  echo "demo: something already listens on 127.0.0.1:${PORT}; choose another port: PORT=5600 scripts/demo.sh" >&2
  exit 1
fi
.venv/bin/pi-agent --camera sim --listen "127.0.0.1:${PORT}" --size 640x480 --fps 30 --log-level WARNING &
AGENT=$!
trap 'kill -TERM $AGENT 2>/dev/null; wait $AGENT 2>/dev/null' EXIT
# Wait (up to 60 s) until the agent accepts connections, so the viewer's first words are not "connection refused".
.venv/bin/python - "$PORT" "$AGENT" <<'PY' || { wait $AGENT; exit $?; }
import os, socket, sys, time
port, agent = int(sys.argv[1]), int(sys.argv[2])
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        os.kill(agent, 0)
    except ProcessLookupError:
        sys.exit(1)  # the agent exited (it said why): the demo ends with its status
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
print(f"demo: the agent is not listening on 127.0.0.1:{port} after 60 s", file=sys.stderr)
sys.exit(1)
PY
if [ -n "${DISPLAY:-}" ]; then
  echo "demo: viewer window on 127.0.0.1:${PORT} (q quits, h shows the keys)" >&2
  .venv/bin/host-viewer "127.0.0.1:${PORT}" --summary-json -
else
  echo "no display: running the viewer headless for ${SECONDS_TO_RUN} s" >&2
  .venv/bin/host-viewer "127.0.0.1:${PORT}" --headless --duration "${SECONDS_TO_RUN}" --summary-json -
fi
