"""Choosing a camera backend from the `--camera` flag."""

from __future__ import annotations

import logging

from .base import CameraBackend

log = logging.getLogger(__name__)

CAMERA_CHOICES = ("auto", "sim", "picamera2", "replay:FILE")


def check_camera_kind(kind: str) -> str:
    """The `--camera` value if valid (one of CAMERA_CHOICES, `replay:` followed by a file), else ValueError."""
    if kind in CAMERA_CHOICES[:-1] or (kind.startswith("replay:") and len(kind) > len("replay:")):
        return kind
    raise ValueError(f"unknown camera {kind!r}; choose one of {', '.join(CAMERA_CHOICES)}")


def make_camera(kind: str, *, sensor: str = "imx219", scene: str = "chart", colour_temperature: float = 5000.0,
                seed: int = 0) -> CameraBackend:
    """`sim`: the simulated sensor; `picamera2`: a real camera (error if none);
    `auto`: picamera2 when it imports and a camera is present, else the simulator (logged);
    `replay:FILE`: the frames of a replay file (scripts/make_replay.py), in a cycle."""
    if kind.startswith("replay:"):
        from .replay import ReplayCamera

        return ReplayCamera(check_camera_kind(kind)[len("replay:"):])
    if kind == "sim":
        from .sim import SimulatedCamera

        return SimulatedCamera(sensor=sensor, scene=scene, colour_temperature=colour_temperature, seed=seed)
    if kind in ("picamera2", "auto"):
        try:
            from .picamera2_backend import Picamera2Camera, picamera2_available
        except ImportError:
            picamera2_available = None
        if picamera2_available is not None and picamera2_available():
            camera = Picamera2Camera()
            log.info("camera %s: using picamera2 (%s)", kind, camera.sensor.model)
            return camera
        if kind == "picamera2":
            raise RuntimeError("--camera picamera2: picamera2 is not installed or no camera is connected "
                               "(on a Pi: sudo apt install python3-picamera2, venv with --system-site-packages)")
        log.info("camera auto: picamera2 unavailable or no camera found; using the simulated camera")
        return make_camera("sim", sensor=sensor, scene=scene, colour_temperature=colour_temperature, seed=seed)
    raise ValueError(f"unknown camera {kind!r}; choose one of {', '.join(CAMERA_CHOICES)}")
