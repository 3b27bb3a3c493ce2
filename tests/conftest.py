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
