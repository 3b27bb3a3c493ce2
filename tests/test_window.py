"""The real window under Xvfb: overlays are drawn on screen and keys pressed in the window reach the agent.

The test starts its own Xvfb, an in-process agent on the simulated camera looking at the dark scene (so the
video is known to be nearly black everywhere), and `host-viewer` as a subprocess with every overlay on. It
reads the window's pixels with an X screenshot (mss) and sends keys with xdotool (XTEST, focused window).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from host_viewer.overlays import HIST_SIZE, Style
from pi_agent.camera.sim import SimulatedCamera

from .conftest import wait_until
from scripts.xdisplay import XServer, missing_tools

pytestmark = pytest.mark.skipif(bool(missing_tools()), reason=f"needs {', '.join(missing_tools())} "
                                "(scripts/ensure_apt.sh installs xvfb and xdotool; pip install mss)")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def xserver():
    with XServer() as server:
        yield server


def histogram_region(width: int, height: int) -> tuple[int, int, int, int]:
    from host_viewer.overlays import histogram_box

    return histogram_box(np.zeros((height, width, 3), np.uint8))


def test_window_draws_overlays_and_keys_reach_the_agent(xserver, start_agent, tmp_path):
    agent = start_agent(camera=SimulatedCamera(scene="dark", seed=3), size=(640, 480), fps=30.0)
    received: list[tuple[str, dict]] = []
    handle = agent.router.handle

    def spy(command, reply):
        received.append((command.name, dict(command.args)))
        handle(command, reply)

    agent.router.handle = spy
    log = open(tmp_path / "viewer.log", "w")
    viewer = subprocess.Popen(
        [sys.executable, "-m", "host_viewer.cli", f"127.0.0.1:{agent.port}", "--overlays", "all",
         "--save-dir", str(tmp_path / "saved"), "--log-level", "INFO"],
        cwd=ROOT, env={**xserver.env, "PYTHONFAULTHANDLER": "1"}, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        window = xserver.find_window("picamlink")
        # The window takes the video's size once the first frame is shown.
        x, y, w, h = wait_until(lambda: (g := xserver.window_geometry(window))[2:] == (640, 480) and g, 15,
                                message="a 640x480 window")

        # Map the window afresh, as a window manager would: without one, Qt under Xvfb sometimes misses the
        # Expose of its first resize on a loaded machine and never paints (seen: a black window for 30 s).
        xserver.remap(window)

        def shot() -> np.ndarray:
            """The window's pixels (its position is read each time: Qt may move it after resizing)."""
            return xserver.screenshot(xserver.window_geometry(window)).astype(np.int16)

        hx0, hy0, hx1, hy1 = histogram_region(w, h)
        centre = (slice(h // 2 - 40, h // 2 + 40), slice(w // 2 - 120, w // 2 + 120))

        # The video of the dark scene is black; the histogram panel is drawn over it (curves, clip marker).
        try:
            first = wait_until(lambda: (s := shot())[hy0:hy1, hx0:hx1].max() > 150 and [s], 30,
                               message="histogram panel on screen")[0]
        except AssertionError:
            cv2.imwrite(str(tmp_path / "failed.png"), shot().astype(np.uint8))
            viewer.send_signal(signal.SIGABRT)  # PYTHONFAULTHANDLER: the viewer's threads go to its log
            viewer.wait(5)
            raise
        video_level = first[centre].mean()
        assert video_level < 20, "the dark scene's video should be nearly black"
        panel = first[hy0:hy1, hx0:hx1]
        assert (panel.max(axis=2) > 100).sum() > 200  # lines and text, not video
        pad = Style.for_height(h).pad
        red_clip_line = first[hy0 + pad + 2 : hy0 + pad + HIST_SIZE[1] - 2, hx0 + pad + HIST_SIZE[0] - 1, :]  # clip level
        assert (red_clip_line[:, 2] > 200).mean() > 0.9 and red_clip_line[:, 0].mean() < 60

        # The histogram key turns the panel off: the same place now shows the video.
        xserver.send_key(window, "3")
        wait_until(lambda: (shot()[hy0:hy1 - 30, hx0:hx1].max(axis=2) > 100).sum() < 20, 10,
                   message="histogram panel gone after key 3")

        # The help overlay appears in the middle after h, listing the keys.
        assert (first[centre].max(axis=2) > 150).sum() < 20
        xserver.send_key(window, "h")
        wait_until(lambda: (shot()[centre].max(axis=2) > 150).sum() > 300, 10, message="help overlay after h")

        # Exposure up (]) becomes a set_controls the agent receives; s a snapshot, saved by the viewer.
        xserver.send_key(window, "bracketright")
        wait_until(lambda: any(name == "set_controls" and "ExposureTime" in args["controls"]
                               for name, args in received), 10, message="set_controls from ]")
        xserver.send_key(window, "s")
        wait_until(lambda: any(name == "snapshot" for name, _ in received), 10, message="snapshot from s")
        saved = wait_until(lambda: sorted(p.suffix for p in (tmp_path / "saved").glob("*")) or None, 15,
                           message="snapshot files")
        wait_until(lambda: {".dng", ".jpg", ".json"} <= {p.suffix for p in (tmp_path / "saved").glob("*")}, 15,
                   message=f"snapshot files (so far {saved})")

        xserver.send_key(window, "q")
        assert viewer.wait(10) == 0
    finally:
        if viewer.poll() is None:
            viewer.terminate()
            viewer.wait(5)
        log.close()


@pytest.fixture
def managed_xserver():
    """Xvfb with a window manager (openbox): the close button and Alt+F4 exist only with one."""
    if missing_tools(window_manager=True):
        pytest.skip(f"needs {', '.join(missing_tools(window_manager=True))} (scripts/ensure_apt.sh)")
    with XServer() as server:
        server.start_window_manager()
        yield server


def start_viewer(server: XServer, agent, tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, Path, Path]:
    log_path, summary = tmp_path / "viewer.log", tmp_path / "summary.json"
    viewer = subprocess.Popen(
        [sys.executable, "-m", "host_viewer.cli", f"127.0.0.1:{agent.port}", "--summary-json", str(summary), *extra],
        cwd=ROOT, env={**server.env, "PYTHONFAULTHANDLER": "1"}, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
    )
    return viewer, log_path, summary


def press_alt_f4_until_closed(server: XServer, window: str, viewer: subprocess.Popen, attempts: int = 3) -> None:
    """Press Alt+F4 in `window`; press it again while that same window is still up after 3 s. XTEST key events
    now and then do not reach openbox's key grab (seen 1 in 10 on this machine: the window stayed active and
    focused, the same X window id, and a second press closed it). A viewer that let its window "come back"
    shows a NEW window id instead, which ends the retries and fails the test's checks."""
    for _attempt in range(attempts):
        server.send_key(window, "alt+F4")
        try:
            viewer.wait(3.0)
            return
        except subprocess.TimeoutExpired:
            pass
        shown = server.xdotool("search", "--onlyvisible", "--name", "picamlink", check=False).split()
        if shown != [window]:
            return  # closed (a new or no window now): the caller's wait and checks judge what followed


@pytest.mark.parametrize("how", ["close button", "Alt+F4", "Ctrl-C"])
def test_closing_the_window_quits_cleanly(managed_xserver, start_agent, tmp_path, how):
    agent = start_agent(size=(320, 240), fps=30.0)
    viewer, log_path, summary = start_viewer(managed_xserver, agent, tmp_path)
    try:
        window = managed_xserver.find_window("picamlink")
        wait_until(lambda: managed_xserver.window_geometry(window)[2:] == (320, 240), 15, message="the video shown")
        if how == "close button":
            managed_xserver.close_window(window)
        elif how == "Alt+F4":
            press_alt_f4_until_closed(managed_xserver, window, viewer)
        else:
            viewer.send_signal(signal.SIGINT)
        assert viewer.wait(15) == 0
    finally:
        if viewer.poll() is None:
            viewer.kill()
            viewer.wait(5)
    output = log_path.read_text()
    assert "Traceback" not in output, output
    written = json.loads(summary.read_text())
    assert written["frames"] >= 1
    assert written.get("stopped_by") == ("SIGINT" if how == "Ctrl-C" else None)


def test_small_window_overlays_never_overlap_and_the_window_resizes(managed_xserver, start_agent, tmp_path):
    """At 320x240 with every overlay on, the boxes drawn on screen are separate rectangles (two boxes that
    overlapped would merge into one non-rectangular darkened region); resized by the window manager, the
    picture is drawn at the new size, its aspect kept."""
    server = managed_xserver
    agent = start_agent(camera=SimulatedCamera(scene="white", seed=3), size=(320, 240), fps=30.0)
    viewer, log_path, _summary = start_viewer(server, agent, tmp_path, "--overlays", "all")
    try:
        window = server.find_window("picamlink")
        wait_until(lambda: server.window_geometry(window)[2:] == (320, 240), 15, message="a 320x240 window")

        def shot() -> np.ndarray:
            return server.screenshot(server.window_geometry(window)).astype(np.float32)

        wait_until(lambda: shot().mean() > 60, 15, message="video on screen")
        time.sleep(1.0)  # let the meters fill their boxes (the overlays' sizes follow their text)
        with_overlays = shot()
        server.send_key(window, "o")  # all overlays off
        without = wait_until(lambda: (s := shot()).mean() > with_overlays.mean() + 5 and [s], 10,
                             message="overlays off")[0]
        dimmed = ((with_overlays.max(axis=2) < 0.6 * without.max(axis=2)) & (without.max(axis=2) > 40))
        mask = cv2.morphologyEx(dimmed.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8))
        count, _labels, stats, _ = cv2.connectedComponentsWithStats(mask)
        boxes = [stats[i] for i in range(1, count) if stats[i][cv2.CC_STAT_AREA] > 150]
        cv2.imwrite(str(tmp_path / "small.png"), with_overlays.astype(np.uint8))
        assert len(boxes) >= 2, f"overlay boxes seen: {len(boxes)} (screenshot in {tmp_path})"
        for x, y, w, h, area in boxes:
            assert area >= 0.85 * w * h, f"a darkened region at {x},{y} {w}x{h} is not one rectangle: overlap"

        server.send_key(window, "o")  # overlays back on
        server.xdotool("windowmove", window, "0", "0")  # room on the 1280x1024 screen for the larger window
        server.xdotool("windowsize", window, "960", "720")
        wait_until(lambda: server.window_geometry(window)[2:] == (960, 720), 15, message="resized to 960x720")
        big = wait_until(lambda: (s := shot())[600:700, 400:560].mean() > 60 and [s], 15,
                         message="the picture drawn at the new size")[0]
        assert big.shape[:2] == (720, 960)  # 4:3 video filling the 4:3 window: drawn at 960x720, not 320x240
    finally:
        if viewer.poll() is None:
            viewer.send_signal(signal.SIGINT)
            try:
                viewer.wait(10)
            except subprocess.TimeoutExpired:
                viewer.kill()
    assert "Traceback" not in log_path.read_text()
