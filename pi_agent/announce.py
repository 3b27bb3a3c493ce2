"""Announcing the agent on the local network with mDNS / DNS-SD (python-zeroconf), so viewers find it.

The agent registers `_picamlink._tcp.local.` with its port and a TXT record (instance, name, sensor, protocol,
software) on the interfaces it listens on: an agent on 127.0.0.1 is announced on loopback only (a viewer
elsewhere could not connect anyway), one on 0.0.0.0 on every interface with every IPv4 address. Probing
for a unique name takes about 1.5 s, so registration runs on its own thread and never delays streaming;
`stop()` unregisters (a goodbye packet) so viewers forget the agent at once.
"""

from __future__ import annotations

import logging
import socket
import threading

from protocol.discovery import SERVICE_TYPE, instance_label, txt_record

log = logging.getLogger(__name__)


def _interfaces_and_addresses(host: str) -> tuple[object, list[str]]:
    from zeroconf import InterfaceChoice

    if host in ("", "*", "0.0.0.0"):
        import ifaddr

        addresses = [ip.ip for adapter in ifaddr.get_adapters() for ip in adapter.ips
                     if isinstance(ip.ip, str) and not ip.ip.startswith("127.")]
        return InterfaceChoice.All, addresses or ["127.0.0.1"]
    try:
        address = socket.gethostbyname(host)
    except OSError:
        address = host
    return [address], [address]


class Announcer:
    def __init__(self, listen_host: str, port: int, info: dict, sensor: str, protocol_version: int):
        self.listen_host = listen_host
        self.port = port
        self.properties = txt_record({**info, "sensor": sensor, "protocol": protocol_version})
        self.name = f"{instance_label(str(info.get('name', 'picamlink')), str(info.get('instance', '')))}.{SERVICE_TYPE}"
        self._zeroconf = None
        self._info = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False
        self.registered = threading.Event()
        self.error: Exception | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._register, name="announce", daemon=True)
        self._thread.start()

    def _register(self) -> None:
        try:
            from zeroconf import IPVersion, ServiceInfo, Zeroconf

            interfaces, addresses = _interfaces_and_addresses(self.listen_host)
            info = ServiceInfo(
                SERVICE_TYPE, self.name, port=self.port, properties=self.properties,
                addresses=[socket.inet_aton(a) for a in addresses],
                server=f"{socket.gethostname().split('.')[0] or 'picamlink'}.local.",
            )
            zc = Zeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
            with self._lock:
                if self._stopped:
                    zc.close()
                    return
                self._zeroconf, self._info = zc, info
            zc.register_service(info)
            self.registered.set()
            log.info("announced as %s on %s", self.name, ", ".join(addresses))
        except Exception as exc:  # no multicast, no network: streaming goes on without discovery
            self.error = exc
            log.warning("could not announce the agent with mDNS (%s); viewers need its address", exc)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            zc, info, self._zeroconf = self._zeroconf, self._info, None
        if zc is None:
            return
        try:
            if self.registered.is_set():
                zc.unregister_service(info)
        except Exception:
            log.debug("unregistering failed", exc_info=True)
        finally:
            zc.close()
