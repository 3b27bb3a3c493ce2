"""A shaped network link for benchmarks, in user space (this kernel has no netem).

`NamespaceLink` creates two network namespaces, each with a TAP device whose other end is a file descriptor
held by this process; a thread per direction reads Ethernet frames from one TAP and writes them to the other
after the link's treatment: a drop-tail queue of `queue_bytes`, serialisation at `rate` bit/s, a one-way
delay of `delay_ms` ± `jitter_ms` (uniform; packets stay in order, as on one path) and random loss. The
kernel's own TCP runs on both ends, so retransmission, congestion control and socket buffers are real.
Commands run inside a namespace with `prefix(side)` (`ip netns exec NAME`).

`LoopbackShaper` is the fallback where namespaces cannot be made (no root, no `ip`): a TCP proxy on
loopback applying rate and delay to the byte stream (no packet loss: TCP hides it).

    with NamespaceLink(rate=5e6, delay_ms=3, jitter_ms=2, loss=0.005) as link:
        subprocess.run(link.prefix("a") + ["python", "server.py", "--host", link.address("a")])
"""

from __future__ import annotations

import fcntl
import heapq
import os
import random
import select
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections import deque

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


def namespaces_available() -> str | None:
    """None if NamespaceLink can run here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("ip") is None:
        return "no `ip` command"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class _Direction:
    """One direction of the link: reads frames from `src`, delivers them to `dst` after the treatment."""

    def __init__(self, src: int, dst: int, rate: float, delay_ms: float, jitter_ms: float, loss: float,
                 queue_bytes: int, rng: random.Random):
        self.src, self.dst = src, dst
        self.rate, self.delay, self.jitter, self.loss = rate, delay_ms / 1e3, jitter_ms / 1e3, loss
        self.queue_bytes = queue_bytes
        self.rng = rng
        self.busy_until = 0.0  # when the serialiser finishes the last accepted frame
        self.last_delivery = 0.0
        self.in_queue: deque[tuple[float, int]] = deque()  # (serialised at, size): bytes waiting to go out
        self.queued = 0
        self.pending: list[tuple[float, int, bytes]] = []  # heap of (deliver at, order, frame)
        self.order = 0
        self.counts = {"frames": 0, "bytes": 0, "lost": 0, "tail_dropped": 0}

    def accept(self, frame: bytes, now: float) -> None:
        while self.in_queue and self.in_queue[0][0] <= now:
            self.queued -= self.in_queue.popleft()[1]
        if self.queued + len(frame) > self.queue_bytes:
            self.counts["tail_dropped"] += 1
            return
        start = max(now, self.busy_until)
        self.busy_until = start + len(frame) * 8 / self.rate if self.rate > 0 else start
        self.in_queue.append((self.busy_until, len(frame)))
        self.queued += len(frame)
        if self.loss and self.rng.random() < self.loss:
            self.counts["lost"] += 1  # it used the link's time, then vanished
            return
        deliver = self.busy_until + max(0.0, self.delay + self.rng.uniform(-self.jitter, self.jitter))
        deliver = max(deliver, self.last_delivery)  # one path: no reordering
        self.last_delivery = deliver
        self.order += 1
        heapq.heappush(self.pending, (deliver, self.order, frame))
        self.counts["frames"] += 1
        self.counts["bytes"] += len(frame)

    def deliver_due(self, now: float) -> float | None:
        """Write every frame due by `now`; returns when the next one is due (or None)."""
        while self.pending and self.pending[0][0] <= now:
            _, _, frame = heapq.heappop(self.pending)
            try:
                os.write(self.dst, frame)
            except OSError:
                pass
        return self.pending[0][0] if self.pending else None


class NamespaceLink:
    """Two namespaces joined by a user-space shaped link (see the module docstring)."""

    _count = 0

    def __init__(self, rate: float, delay_ms: float = 0.0, jitter_ms: float = 0.0, loss: float = 0.0,
                 queue_bytes: int = 64 * 1024, seed: int = 1):
        NamespaceLink._count += 1
        tag = f"{os.getpid() % 100000}{NamespaceLink._count}"
        self.names = {"a": f"pcl{tag}a", "b": f"pcl{tag}b"}
        subnet = 10 + (os.getpid() + NamespaceLink._count) % 200
        self.addresses = {"a": f"10.{subnet}.77.1", "b": f"10.{subnet}.77.2"}
        self.rate, self.delay_ms, self.jitter_ms, self.loss = rate, delay_ms, jitter_ms, loss
        self.queue_bytes = queue_bytes
        self._rng = random.Random(seed)
        self._fds: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.directions: dict[str, _Direction] = {}

    def describe(self) -> str:
        return (f"{self.rate / 1e6:g} Mbit/s, {self.delay_ms:g} ± {self.jitter_ms:g} ms each way, "
                f"{self.loss * 100:g} % loss, {self.queue_bytes // 1024} KiB drop-tail queue")

    def address(self, side: str) -> str:
        return self.addresses[side]

    def prefix(self, side: str) -> list[str]:
        return ["ip", "netns", "exec", self.names[side]]

    def __enter__(self) -> "NamespaceLink":
        try:
            for side in ("a", "b"):
                ns, dev = self.names[side], f"tap{side}"
                _ip("netns", "add", ns)
                fd = os.open("/dev/net/tun", os.O_RDWR)
                ifname = f"{ns}{side}"[-15:]
                fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", ifname.encode(), IFF_TAP | IFF_NO_PI))
                self._fds[side] = fd
                _ip("link", "set", ifname, "netns", ns)
                _ip("-n", ns, "link", "set", ifname, "name", dev)
                _ip("-n", ns, "addr", "add", f"{self.addresses[side]}/24", "dev", dev)
                _ip("-n", ns, "link", "set", dev, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
            for (src, dst) in (("a", "b"), ("b", "a")):
                self.directions[src + dst] = _Direction(self._fds[src], self._fds[dst], self.rate, self.delay_ms,
                                                        self.jitter_ms, self.loss, self.queue_bytes, self._rng)
            self._thread = threading.Thread(target=self._pump, name="shaped-link", daemon=True)
            self._thread.start()
        except Exception:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _pump(self) -> None:
        by_fd = {d.src: d for d in self.directions.values()}
        poller = select.poll()
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        next_due: float | None = None
        while not self._stop.is_set():
            timeout_ms = 50 if next_due is None else max(0.0, (next_due - time.monotonic()) * 1e3)
            for fd, _ in poller.poll(timeout_ms):
                try:
                    frame = os.read(fd, 65536)
                except OSError:
                    continue
                by_fd[fd].accept(frame, time.monotonic())
            now = time.monotonic()
            dues = [d.deliver_due(now) for d in self.directions.values()]
            dues = [d for d in dues if d is not None]
            next_due = min(dues) if dues else None

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()
        for ns in self.names.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class LoopbackShaper:
    """The fallback: a loopback TCP proxy to `target_port` shaping both directions at `rate` bit/s with a
    one-way delay of `delay_ms` ± `jitter_ms` (no loss: TCP hides it). Small socket buffers on its sides,
    so that bytes in flight wait in the sender's queues, as behind a real slow link."""

    CHUNK = 4096
    BUFFER = 32 * 1024

    def __init__(self, target_port: int, rate: float, delay_ms: float = 0.0, jitter_ms: float = 0.0,
                 seed: int = 1):
        self.target_port = target_port
        self.rate, self.delay, self.jitter = rate, delay_ms / 1e3, jitter_ms / 1e3
        self._rng = random.Random(seed)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def describe(self) -> str:
        return (f"loopback TCP shaper: {self.rate / 1e6:g} Mbit/s, {self.delay * 1e3:g} ± {self.jitter * 1e3:g} ms "
                "each way, no loss")

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.socket()
            for s in (client, upstream):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.BUFFER)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.BUFFER)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                upstream.connect(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            self._sockets += [client, upstream]
            for src, dst in ((upstream, client), (client, upstream)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        """Read, pace at the rate, and hand each chunk to a delayed writer (in order)."""
        queue: deque[tuple[float, bytes]] = deque()
        cond = threading.Condition()
        done = threading.Event()

        def writer() -> None:
            try:
                while True:
                    with cond:
                        while not queue and not done.is_set():
                            cond.wait(0.1)
                        if not queue:
                            return
                        due, data = queue.popleft()
                    left = due - time.monotonic()
                    if left > 0:
                        time.sleep(left)
                    dst.sendall(data)
            except OSError:
                pass

        threading.Thread(target=writer, daemon=True).start()
        busy_until = last = 0.0
        try:
            while not self._stop.is_set():
                data = src.recv(self.CHUNK)
                if not data:
                    break
                now = time.monotonic()
                busy_until = max(busy_until, now) + len(data) * 8 / self.rate
                if busy_until > now:
                    time.sleep(busy_until - now)  # the serialiser: back-pressure into the sender's buffers
                due = max(last, busy_until + max(0.0, self.delay + self._rng.uniform(-self.jitter, self.jitter)))
                last = due
                with cond:
                    queue.append((due, data))
                    cond.notify()
        except OSError:
            pass
        finally:
            done.set()
            with cond:
                cond.notify()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        for s in self._sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
