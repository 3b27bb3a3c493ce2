"""Shared fixtures: an in-process agent on the simulated camera (loopback, ephemeral port) and clients."""

from __future__ import annotations

import time
from typing import Callable

import pytest

from host_viewer.client import AgentClient
from pi_agent.agent import Agent
from pi_agent.camera.sim import SimulatedCamera


def wait_until(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.01, message: str = ""):
    """Poll `predicate` until it returns something truthy (returned) or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message or predicate}")
        time.sleep(interval)


def frames_until(camera, predicate, frames: int, timeout: float):
    """The first of the next `frames` captures whose metadata satisfies `predicate` (AssertionError if none):
    a bound in frames, not seconds, so a slow machine only makes it slower."""
    for _ in range(frames):
        frame = camera.capture(timeout=timeout)
        if predicate(frame.metadata):
            return frame
    raise AssertionError(f"no frame within {frames} frames satisfied {predicate}")


# The simulated cameras render each frame on this machine's CPU, so a loaded machine makes their frames late
# without any camera being late: calibration in tests waits this long for one frame (a real camera gets the
# product's own bound, pi_agent.calibration.frames.MIN_FRAME_TIMEOUT_S or what its frame duration needs).
HOST_RENDERED_FRAME_TIMEOUT_S = 60.0


def frame_source(camera):
    """A CameraFrameSource for calibrating a simulated camera directly (see HOST_RENDERED_FRAME_TIMEOUT_S)."""
    from pi_agent.calibration.frames import CameraFrameSource

    return CameraFrameSource(camera, min_frame_timeout=HOST_RENDERED_FRAME_TIMEOUT_S)


@pytest.fixture
def start_agent():
    """start_agent(**kwargs) -> running Agent (default 127.0.0.1:<ephemeral>); stopped after the test."""
    agents: list[Agent] = []

    def start(camera=None, size=(320, 240), fps=30.0, listen="127.0.0.1:0", **kwargs) -> Agent:
        camera = camera or SimulatedCamera(sensor=kwargs.pop("sensor", "imx219"), seed=kwargs.pop("seed", 1))
        agent = Agent(camera, listen, size=size, fps=fps, **kwargs)
        agent.start()
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.stop()


@pytest.fixture
def connect():
    """connect(agent_or_address, **kwargs) -> a started, connected AgentClient; closed after the test."""
    clients: list[AgentClient] = []

    def make(target, **kwargs) -> AgentClient:
        address = target if isinstance(target, str) else f"127.0.0.1:{target.port}"
        client = AgentClient(address, **kwargs).start()
        clients.append(client)
        client.wait_connected(10)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def simulated_pi():
    """simulated_pi(cameras=("imx219",), platform="vc4") -> tests.fakes.simulated_pi.SimulatedPi

    A simulated Raspberry Pi running the REAL picamera2 (site-packages) on the simulated libcamera
    (tests/fakes/libcamera). cameras: sensor names ("imx219", "imx477", "imx708", "ov5647") or
    libcamera._machine.CameraModule(sensor, rotation, scene="chart"|"white"|"dark", colour_temperature, lux,
    corner_shading, seed); platform: "vc4" (Pi 4) or "pisp" (Pi 5). One per test. Use:

        pi = simulated_pi(["imx477"], "pisp")
        picam2 = pi.picamera2.Picamera2(0)            # a bare picamera2 object
        cam = Picamera2Camera(picamera2_module=pi.picamera2)   # picamlink's backend on it
        pi.pipeline(0).last_raw                        # ground truth: the mosaic of the last frame

    Everything opened is closed after the test."""
    import contextlib

    from tests.fakes.simulated_pi import simulated_pi as context

    stack = contextlib.ExitStack()

    def make(cameras=("imx219",), platform: str = "vc4"):
        return stack.enter_context(context(cameras, platform))

    yield make
    stack.close()


@pytest.fixture
def picamera2_camera(simulated_pi):
    """picamera2_camera(sensor="imx219", platform="vc4", size=(320, 240), fps=30.0, raw_size=None, start=True,
    **Picamera2Camera kwargs) -> (Picamera2Camera, SimulatedPi)

    picamlink's Picamera2 backend, configured (and started unless start=False), on a simulated Pi with one
    camera. `sensor` may be a libcamera._machine.CameraModule for a scene, illuminant or rotation. Closed after
    the test. Example: `cam, pi = picamera2_camera("imx708", "pisp", raw_size=(2304, 1296))`."""
    from pi_agent.camera.picamera2_backend import Picamera2Camera

    cameras = []

    def make(sensor="imx219", platform: str = "vc4", size=(320, 240), fps: float = 30.0, raw_size=None,
             start: bool = True, **kwargs):
        pi = simulated_pi([sensor], platform)
        cam = Picamera2Camera(picamera2_module=pi.picamera2, **kwargs)
        cameras.append(cam)
        cam.configure(size, fps, raw_size)
        if start:
            cam.start()
            cam.capture(timeout=60)  # the first frame: startup frames and the ISP's tables on a busy machine
        return cam, pi

    yield make
    for cam in cameras:
        cam.close()
