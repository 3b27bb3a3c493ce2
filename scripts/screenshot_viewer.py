"""Take docs/viewer.png: the viewer window with every overlay on, under a private Xvfb.

    .venv/bin/python -m scripts.screenshot_viewer [--out-dir DIR]            # writes docs/viewer.png, docs/viewer-help.png

An agent on the simulated camera (chart scene) runs in this process; `host-viewer --overlays all` runs in a
subprocess on the Xvfb display. Keys are sent as a user would: `s` (a snapshot: the progress overlay shows
the command finishing and the status line the saved files), `r` (recording: REC on the status line), then
the screenshot; then `h` for the help overlay and a second screenshot.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file or with -m

from pi_agent.agent import Agent  # noqa: E402
from pi_agent.camera.sim import SimulatedCamera  # noqa: E402
from scripts.xdisplay import XServer, missing_tools  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", type=Path, default=ROOT / "docs", help="where viewer.png and viewer-help.png go")
    args = p.parse_args(argv)
    out_dir = args.out_dir
    missing = missing_tools()
    if missing:
        print(f"screenshot_viewer: needs {', '.join(missing)} (scripts/ensure_apt.sh, pip install mss)", file=sys.stderr)
        return 1
    agent = Agent(SimulatedCamera(scene="chart", seed=7), "127.0.0.1:0", size=(800, 600), fps=30.0, name="bench-pi")
    agent.start()
    with XServer() as x, tempfile.TemporaryDirectory() as saved:
        viewer = subprocess.Popen([sys.executable, "-m", "host_viewer.cli", f"127.0.0.1:{agent.port}",
                                   "--overlays", "all", "--save-dir", saved], cwd=ROOT, env=x.env)
        try:
            window = x.find_window("picamlink")
            geometry = wait_for(lambda: (g := x.window_geometry(window))[2:] == (800, 600) and g, 15, "the window")
            x.remap(window)  # a fresh Expose so Qt paints (no window manager here)
            time.sleep(2.0)  # let the rates settle: this is a picture for people, not a test
            x.send_key(window, "s")
            wait_for(lambda: list(Path(saved).glob("*.dng")), 15, "the snapshot")
            x.send_key(window, "r")
            time.sleep(1.0)
            cv2.imwrite(str(out_dir / "viewer.png"), x.screenshot(geometry))
            x.send_key(window, "h")
            time.sleep(0.5)
            cv2.imwrite(str(out_dir / "viewer-help.png"), x.screenshot(geometry))
            x.send_key(window, "q")
            viewer.wait(10)
        finally:
            if viewer.poll() is None:
                viewer.terminate()
                viewer.wait(5)
            agent.stop()
    print(f"wrote {out_dir / 'viewer.png'} and {out_dir / 'viewer-help.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
