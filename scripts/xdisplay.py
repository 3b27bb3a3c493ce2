"""A private X server (Xvfb) for real-window tests and screenshots, and the X tools that drive it.

`XServer` starts `Xvfb :N -screen 0 1280x1024x24` on a free display number and waits until it answers a
request (its socket file appears before it accepts: a client started in between fails to open the display);
`find_window`, `window_geometry`, `send_key` wrap xdotool; `screenshot` reads pixels with mss.
Used by tests/test_window.py and scripts/screenshot_viewer.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

SCREEN = "1280x1024x24"


def missing_tools(window_manager: bool = False) -> list[str]:
    tools = ("Xvfb", "xdotool") + (("openbox", "wmctrl") if window_manager else ())
    missing = [tool for tool in tools if shutil.which(tool) is None]
    try:
        import mss  # noqa: F401
    except ImportError:
        missing.append("mss (pip)")
    return missing


def _poll(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class XServer:
    def __init__(self, screen: str = SCREEN):
        self.screen = screen
        self.process: subprocess.Popen | None = None
        self.display = ""
        self._children: list[subprocess.Popen] = []

    def start(self, timeout: float = 10.0) -> "XServer":
        for number in range(91, 160):
            if Path(f"/tmp/.X11-unix/X{number}").exists() or Path(f"/tmp/.X{number}-lock").exists():
                continue
            self.display = f":{number}"
            self.process = subprocess.Popen(
                ["Xvfb", self.display, "-screen", "0", self.screen, "-nolisten", "tcp"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            try:
                _poll(lambda: Path(f"/tmp/.X11-unix/X{number}").exists() or self.process.poll() is not None,
                      timeout, f"Xvfb {self.display}")
            except TimeoutError:
                self.stop()
                raise
            if self.process.poll() is None:
                try:
                    _poll(self._answers, timeout, f"Xvfb {self.display} to answer")
                except TimeoutError:
                    self.stop()
                    raise
                return self
        raise RuntimeError("no free X display number for Xvfb")

    def _answers(self) -> bool:
        result = subprocess.run(["xdotool", "getdisplaygeometry"], env=self.env, capture_output=True, timeout=20)
        return result.returncode == 0

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["DISPLAY"] = self.display
        env["QT_QPA_PLATFORM"] = "xcb"
        return env

    def xdotool(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(["xdotool", *args], env=self.env, capture_output=True, text=True, timeout=20)
        if check and result.returncode != 0:
            raise RuntimeError(f"xdotool {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def find_window(self, name: str, timeout: float = 30.0) -> str:
        def search():
            out = self.xdotool("search", "--onlyvisible", "--name", name, check=False).split()
            return out[-1] if out else None

        return _poll(search, timeout, f"a visible window named {name!r}")

    def window_geometry(self, window: str) -> tuple[int, int, int, int]:
        values = dict(line.split("=", 1) for line in self.xdotool("getwindowgeometry", "--shell", window).split())
        return int(values["X"]), int(values["Y"]), int(values["WIDTH"]), int(values["HEIGHT"])

    def remap(self, window: str) -> None:
        """Unmap and map a window: a fresh Expose, so the toolkit paints it (what a window manager causes)."""
        self.xdotool("windowunmap", "--sync", window)
        self.xdotool("windowmap", "--sync", window)

    def send_key(self, window: str, key: str) -> None:
        self.xdotool("windowfocus", "--sync", window)
        self.xdotool("key", "--clearmodifiers", key)

    def screenshot(self, region: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """BGR pixels of `region` (x, y, w, h) of the screen, or the whole screen."""
        import mss

        factory = getattr(mss, "MSS", None) or mss.mss
        with factory(display=self.display) as grabber:
            if region is None:
                monitor = grabber.monitors[1]
            else:
                x, y, w, h = region
                monitor = {"left": x, "top": y, "width": w, "height": h}
            shot = np.asarray(grabber.grab(monitor))
        return np.ascontiguousarray(shot[:, :, :3])

    def start_window_manager(self, timeout: float = 15.0, attempts: int = 3) -> subprocess.Popen:
        """Run openbox on this display (a window manager: decorations, the close button, Alt+F4) and wait
        until it answers `wmctrl -m`; stopped with the server. Openbox now and then exits with status 1 and
        no message just after connecting to a fresh Xvfb (seen 1 in 5 starts on this machine); it is started
        again, up to `attempts` times, and RuntimeError names its last exit status and stderr."""
        for _attempt in range(attempts):
            with tempfile.TemporaryFile() as errors:  # openbox keeps its own descriptor of it
                manager = subprocess.Popen(["openbox", "--sm-disable"], env=self.env, stdout=subprocess.DEVNULL,
                                           stderr=errors)
                _poll(lambda: manager.poll() is not None or subprocess.run(
                    ["wmctrl", "-m"], env=self.env, capture_output=True, timeout=10).returncode == 0, timeout,
                    "openbox")
                if manager.poll() is None:
                    self._children.append(manager)
                    return manager
                errors.seek(0)
                failure = f"openbox exited at start ({manager.returncode}): {errors.read().decode(errors='replace')}"
        raise RuntimeError(failure)

    def close_window(self, window: str) -> None:
        """Ask the window manager to close `window` gracefully, as its close button does (_NET_CLOSE_WINDOW,
        which the manager turns into WM_DELETE_WINDOW)."""
        subprocess.run(["wmctrl", "-i", "-c", window], env=self.env, check=True, timeout=20)

    def stop(self) -> None:
        for child in getattr(self, "_children", []):
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(5)
                except subprocess.TimeoutExpired:
                    child.kill()
        self._children = []
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def __enter__(self) -> "XServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
