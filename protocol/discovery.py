"""How agents announce themselves on the local network (mDNS / DNS-SD): the service type and TXT record.

Pure data and parsing: the agent registers `SERVICE_TYPE` with its port and the TXT keys below (python-
zeroconf, pi_agent/announce.py); a viewer browses for it (host_viewer/discovery.py). TXT values are short
strings; anything malformed is dropped, never trusted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

SERVICE_TYPE = "_picamlink._tcp.local."
TXT_KEYS = ("instance", "name", "sensor", "protocol", "software")
MAX_TXT_VALUE = 100


def instance_label(name: str, instance: str) -> str:
    """The DNS-SD instance label (≤ 63 bytes, no dots): agent name plus its instance id, unique per run."""
    clean = re.sub(r"[^A-Za-z0-9 _-]+", "-", name).strip("- ") or "picamlink"
    return f"{clean[:40]}-{instance[:16]}"


def txt_record(info: dict) -> dict[str, str]:
    """The TXT properties an agent announces, from its identity (welcome's `agent`) plus extras."""
    return {key: str(info[key])[:MAX_TXT_VALUE] for key in TXT_KEYS if info.get(key) is not None}


def parse_txt(properties: dict) -> dict[str, str]:
    """Decode TXT properties (bytes → str), keeping known keys with printable, short values only."""
    out: dict[str, str] = {}
    for key, value in (properties or {}).items():
        key = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        if key not in TXT_KEYS or value is None:
            continue
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        if len(text) <= MAX_TXT_VALUE and text.isprintable():
            out[key] = text
    return out


@dataclass(frozen=True)
class DiscoveredAgent:
    """An agent found on the network: where to connect and what it says about itself."""

    service: str  # the full DNS-SD service name
    host: str  # an address to connect to
    port: int
    properties: dict = field(default_factory=dict)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def describe(self) -> str:
        p = self.properties
        label = p.get("name") or self.service.split(".")[0]
        extra = ", ".join(v for v in (p.get("sensor"), p.get("software")) if v)
        return f"{label} at {self.address}" + (f" ({extra})" if extra else "")
