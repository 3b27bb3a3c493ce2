"""Finding agents on the local network: browse mDNS / DNS-SD for `_picamlink._tcp.local.` (python-zeroconf).

`discover(timeout)` browses for a while and returns what answered; `AgentBrowser` keeps a live list (agents
that stop are removed when their goodbye arrives). `choose(agents, ask)` picks the only one or asks for a
number.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from protocol.discovery import SERVICE_TYPE, DiscoveredAgent, parse_txt

log = logging.getLogger(__name__)


class AgentBrowser:
    """A running browse; `agents()` is the current list. Close it (or use `with`)."""

    def __init__(self, zeroconf=None, resolve_timeout_ms: int = 2000):
        from zeroconf import IPVersion, ServiceBrowser, Zeroconf

        self._own = zeroconf is None
        self._zc = zeroconf or Zeroconf(ip_version=IPVersion.V4Only)
        self._resolve_timeout_ms = resolve_timeout_ms
        self._lock = threading.Lock()
        self._agents: dict[str, DiscoveredAgent] = {}
        self.changed = threading.Event()
        self._browser = ServiceBrowser(self._zc, SERVICE_TYPE, handlers=[self._on_change])

    def _on_change(self, zeroconf, service_type: str, name: str, state_change) -> None:
        from zeroconf import ServiceStateChange

        if state_change is ServiceStateChange.Removed:
            with self._lock:
                self._agents.pop(name, None)
            self.changed.set()
            return
        # Resolving waits on the network: never on zeroconf's own event loop thread.
        threading.Thread(target=self._resolve, args=(service_type, name), daemon=True).start()

    def _resolve(self, service_type: str, name: str) -> None:
        try:
            info = self._zc.get_service_info(service_type, name, timeout=self._resolve_timeout_ms)
        except Exception as exc:
            log.debug("resolving %s failed: %s", name, exc)
            return
        if info is None or not info.port:
            return
        addresses = info.parsed_addresses()
        if not addresses:
            return
        agent = DiscoveredAgent(service=name, host=addresses[0], port=int(info.port),
                                properties=parse_txt(info.properties))
        with self._lock:
            self._agents[name] = agent
        self.changed.set()

    def agents(self) -> list[DiscoveredAgent]:
        with self._lock:
            return sorted(self._agents.values(), key=lambda a: (a.properties.get("name", ""), a.address))

    def close(self) -> None:
        self._browser.cancel()
        if self._own:
            self._zc.close()

    def __enter__(self) -> "AgentBrowser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def discover(timeout: float = 2.0) -> list[DiscoveredAgent]:
    """Browse for `timeout` seconds and return the agents that answered."""
    with AgentBrowser() as browser:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            browser.changed.wait(max(0.0, deadline - time.monotonic()))
            browser.changed.clear()
        return browser.agents()


def choose(agents: list[DiscoveredAgent], ask: Callable[[str], str] | None) -> DiscoveredAgent | None:
    """The only agent, or the one whose number the user types (`ask(prompt)`); None if none or no answer."""
    if not agents:
        return None
    if len(agents) == 1:
        return agents[0]
    if ask is None:
        return None
    while True:
        answer = ask(f"connect to which agent? [1-{len(agents)}] ").strip()
        if not answer:
            return None
        if answer.isdigit() and 1 <= int(answer) <= len(agents):
            return agents[int(answer) - 1]
