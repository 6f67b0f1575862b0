"""Waiting items taken in turn across callers, so no caller's backlog delays another's first.

A caller is whatever key the front end gave the call (`cnnzoo.serving.peers.fairness_key`: the
client's connection). Each key keeps its items in order; `pop` takes the head of the key that
was served longest ago, so a client with a thousand queued calls and a client with one are
served alternately, not one after the other.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["RoundRobin"]

T = TypeVar("T")


class RoundRobin(Generic[T]):
    """Items queued per key; `pop` goes round the keys. Not thread-safe (event loop only)."""

    __slots__ = ("_queues", "_count", "_served_last")

    def __init__(self) -> None:
        self._queues: OrderedDict[Hashable, deque[T]] = OrderedDict()
        self._count = 0
        self._served_last: Hashable | None = None  # the key `pop` took from last

    def __len__(self) -> int:
        return self._count

    def push(self, key: Hashable, item: T) -> None:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()  # a new key goes last in the round,
            if self._served_last in self._queues and self._served_last != key:
                # but ahead of the key just served: with one busy caller waiting, a newcomer
                # takes the next turn, not the one after
                self._queues.move_to_end(self._served_last)
        queue.append(item)
        self._count += 1

    def pop(self) -> T:
        """The head of the next key in the round (IndexError when empty)."""
        if not self._queues:
            raise IndexError("pop from an empty RoundRobin")
        key, queue = next(iter(self._queues.items()))
        item = queue.popleft()
        self._count -= 1
        self._served_last = key
        if queue:
            self._queues.move_to_end(key)  # its next item waits for every other key's turn
        else:
            del self._queues[key]
        return item

    def remove(self, key: Hashable, item: T) -> bool:
        """Take `item` out (a caller that gave up); False when it is not queued."""
        queue = self._queues.get(key)
        if queue is None:
            return False
        try:
            queue.remove(item)
        except ValueError:
            return False
        self._count -= 1
        if not queue:
            del self._queues[key]
        return True
