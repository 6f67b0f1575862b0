"""Calls over the server's concurrency limit wait their turn instead of being refused.

A burst of calls from a normal client (a few hundred at once) should all be answered: the
server runs at most `--max-concurrent-requests` inference, Classify and Explain calls at a time,
and the next ones wait here until a place is free. Waiting calls take turns by caller
(`cnnzoo.serving.round_robin`, keyed by the client's connection): a freed place goes to the
caller served longest ago, so one client's burst of hundreds of calls delays another client's
single call by one call, not by the whole burst. What waits is bounded too: beyond
`--max-waiting-requests` waiting calls the next is refused RESOURCE_EXHAUSTED, and a call whose
deadline passes while it waits is answered DEADLINE_EXCEEDED without running. gRPC and REST calls
share one queue.

The same queue, with a place per thread, shares the image-decoding threads between callers
(`cnnzoo.serving.dataplane`).

Only the event loop uses it (no lock); a call that finds a free place pays a compare and an add.
"""

from __future__ import annotations

import asyncio
import time

from cnnzoo.errors import DeadlineExceeded, ResourceExhausted
from cnnzoo.serving.peers import fairness_key
from cnnzoo.serving.round_robin import RoundRobin

__all__ = ["CallQueue"]


class CallQueue:
    """At most `limit` calls run at once; up to `max_waiting` more wait, taking turns by caller.

    Use `await enter(deadline)` before the work and `leave()` after it (in a `finally`).
    `places` names the limit in messages.
    """

    __slots__ = ("limit", "max_waiting", "running", "waited", "_waiting", "_places")

    def __init__(
        self,
        limit: int,
        max_waiting: int = 2048,
        places: str = "--max-concurrent-requests",
    ) -> None:
        self.limit = limit
        self.max_waiting = max_waiting
        self.running = 0
        self.waited = 0  # calls that had to wait so far
        self._waiting: RoundRobin[asyncio.Future[None]] = RoundRobin()
        self._places = places

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def enter(self, deadline: float | None = None) -> None:
        """Take a place, waiting for one if all are taken.

        Raises:
            ResourceExhausted: `max_waiting` calls wait already.
            DeadlineExceeded: `deadline` (`time.monotonic()` seconds) passed while waiting.
        """
        if self.running < self.limit and not self._waiting:
            self.running += 1
            return
        if len(self._waiting) >= self.max_waiting:
            raise ResourceExhausted(
                f"{self.running} calls are running and {len(self._waiting)} waiting, the most "
                f"this server queues (--max-concurrent-requests {self.limit}, "
                f"--max-waiting-requests {self.max_waiting}); try again shortly"
            )
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        key = fairness_key()
        self._waiting.push(key, turn)
        self.waited += 1
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            await asyncio.wait_for(turn, timeout)  # asyncio.timeout is 3.11+
        except asyncio.TimeoutError:
            self._give_up(key, turn)
            raise DeadlineExceeded(
                f"the deadline passed while the call waited for one of the "
                f"{self.limit} places ({self._places}); it was not run"
            ) from None
        except BaseException:
            self._give_up(key, turn)
            raise

    def leave(self) -> None:
        """Free a place: the next waiting call in the round of callers takes it over."""
        while self._waiting:
            turn = self._waiting.pop()
            if not turn.done():
                turn.set_result(None)  # the place passes on; `running` stays
                return
        self.running -= 1

    def _give_up(self, key: object, turn: asyncio.Future[None]) -> None:
        """A waiting call leaves (deadline, cancellation): pass on a place it was just given."""
        if turn.done() and not turn.cancelled():
            self.leave()
            return
        turn.cancel()
        self._waiting.remove(key, turn)
