"""Small containers shared between the client's I/O thread and the application thread.

CPython's deque raises "deque mutated during iteration" when one thread iterates it (list(d), min(d), a
for loop) while another appends; these containers hand readers immutable snapshots instead.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Generic, Iterator, TypeVar

T = TypeVar("T")


class RecentItems(Generic[T]):
    """The last `maxlen` items appended. Thread-safe: appends under a lock publish a new immutable tuple;
    iteration, len() and indexing read one tuple (a snapshot), so a reader never sees a half-changed
    container and never raises because a writer appended meanwhile."""

    def __init__(self, maxlen: int):
        self.maxlen = maxlen
        self._lock = threading.Lock()
        self._items: tuple[T, ...] = ()

    def append(self, item: T) -> None:
        with self._lock:
            self._items = (self._items + (item,))[-self.maxlen:]

    def clear(self) -> None:
        with self._lock:
            self._items = ()

    def snapshot(self) -> tuple[T, ...]:
        return self._items

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __getitem__(self, index):
        return self._items[index]

    def __repr__(self) -> str:
        return f"RecentItems({list(self._items)!r}, maxlen={self.maxlen})"


@dataclass(frozen=True)
class ConnectionState:
    """The client's connection state as one immutable value, so that a reader never pairs one state with
    another's detail (e.g. "connected" with "not authorised")."""

    state: str = "connecting"  # connecting, connected, reconnecting, refused, closed
    detail: str = ""  # why, when refused: "not authorised", "agent key mismatch", ...
    hint: str = ""  # the sentence telling the user what to do about it
    since: float = 0.0  # time.monotonic() when this state began

    @property
    def text(self) -> str:
        return f"{self.state}: {self.detail}" if self.detail else self.state
