"""A thread-safe queue whose readiness a zmq.Poller can watch (through a socketpair file descriptor).

ZeroMQ sockets belong to one thread; other threads (capture, encode, command workers) hand messages to
the socket thread through this, and the socket thread wakes at once instead of polling on a timer.
"""

from __future__ import annotations

import socket
from collections import deque


class Mailbox:
    def __init__(self):
        self._items: deque = deque()
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)

    def fileno(self) -> int:
        return self._reader.fileno()

    def put(self, item) -> None:
        self._items.append(item)
        try:
            self._writer.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending (or we are closing)

    def drain(self) -> list:
        try:
            while self._reader.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        items = []
        while self._items:
            items.append(self._items.popleft())
        return items

    def close(self) -> None:
        self._reader.close()
        self._writer.close()
