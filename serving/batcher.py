"""Dynamic batching: coalesce concurrent requests for one model into one execution.

Requests wait in a queue. Whenever a model instance is idle, the batcher takes as many queued
requests as fit in `max_batch_size` rows and hands them to that instance's thread, which runs
them as one batch and gives each caller exactly its own rows. While a batch runs, newer
requests queue up and form the next batch, so batches grow with load without adding any wait
when the server is idle. With `max_queue_delay_us` set, a batch that is not full waits up to
that long for more requests (delays below the event loop's 1 ms timer resolution mean one pass
of the loop, which admits every request that has already arrived). With a delay, Triton's
`preferred_batch_size`s end the wait early: as soon as the queued rows reach a preferred size,
the largest preferred size they reach goes at once (whole requests, never more rows than that
size); the rest waits on. When the delay has passed, a batch takes everything that fits.

Each instance is one thread fed through a `queue.SimpleQueue` and answering with
`call_soon_threadsafe`, so the event loop keeps answering while a model runs; the hand-off costs
two thread wake-ups per batch, not per request. For a model that runs a batch in well under a
millisecond (LeNet-5 on a CPU: 30 us) those wake-ups cost more than the model, and on a busy
machine they wait for the GIL: batches of up to `inline_rows` rows run on the event loop thread
itself instead. They still batch: a request that finds the model idle waits one pass of the
loop, so requests that arrived together run together, and requests arriving while a batch runs
form the next one. That pass costs about as much as LeNet-5 itself, so it is only paid while it
gathers company: after `_FRUITLESS_PASSES` waits in a row in which a lone request was joined by
nobody (steady load, where grpc.aio starts one handler per pass), a unary request that finds
nothing queued runs at once, and every `_FRUITLESS_PASSES`-th such request waits again to look;
the first wait that gathers a batch (a burst) brings the waiting back.

Failure isolation: when a batch of several requests fails, each request is rerun alone, so
only the request that cannot run gets the error. A caller that gave up (cancel) is skipped when
a batch is formed and never receives a result, without disturbing its neighbours. Deadlines
are the server's own business too: a request whose deadline (`time.monotonic()` seconds)
passes while it is queued leaves the queue and is answered `DeadlineExceeded` at that moment;
it is never run. (A request already running is answered when its batch finishes.)

The queue is bounded (Triton's `max_queue_size`): a request that finds it full is refused at
once with `ResourceExhausted`, before anything of it is queued.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from cnnzoo.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from cnnzoo.serving.stats import ModelStats

__all__ = ["DynamicBatcher"]

log = logging.getLogger(__name__)

_LOOP_TIMER_RESOLUTION_S = 1e-3
# Waits of one pass of the loop, in a row, that gathered no second request before lone
# requests stop waiting (and how often one of them waits anyway, to notice a burst).
_FRUITLESS_PASSES = 8


class _Pending:
    __slots__ = ("data", "future", "deadline", "expiry", "enqueued_ns")

    def __init__(
        self, data: np.ndarray, future: asyncio.Future[np.ndarray], deadline: float | None
    ) -> None:
        self.data = data
        self.future = future
        self.deadline = deadline
        self.expiry: asyncio.TimerHandle | None = None
        self.enqueued_ns = time.perf_counter_ns()

    def expire(self, name: str) -> None:
        """Answer DEADLINE_EXCEEDED (the request was not run)."""
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        if not self.future.done():
            waited_ms = (time.perf_counter_ns() - self.enqueued_ns) / 1e6
            self.future.set_exception(
                DeadlineExceeded(
                    f"the deadline passed after {waited_ms:.0f} ms in the queue of {name}; "
                    "the request was not run"
                )
            )


class _Job:
    """One batch travelling to an instance thread and back."""

    __slots__ = ("batch", "started_ns", "assembled_ns", "computed_ns", "results")

    def __init__(self, batch: list[_Pending]) -> None:
        self.batch = batch
        self.started_ns = time.perf_counter_ns()
        self.assembled_ns = self.computed_ns = 0
        self.results: list[np.ndarray | Exception] = []


class DynamicBatcher:
    """Runs `run(batch) -> outputs` for queued requests, batching them when allowed.

    Args:
        run: the model call; takes `[N, ...]` and returns `[N, ...]` (thread-safe, GIL-free).
        max_batch_size: most rows per execution (a request never exceeds it; the data plane
            checks that first).
        max_queue_delay_us: how long a batch that is not full waits for more requests.
        preferred_batch_sizes: with a delay, batch sizes that are sent without waiting on.
        batching: False runs every request alone (no coalescing).
        instances: executions that may run at once (Triton's instance_group count).
        max_queue_size: most requests waiting to run (None: no bound).
        stats: counters to update per execution.
        name: used for thread names and logs.
        inline_rows: batches of at most this many rows run on the event loop thread (0: none;
            only with one instance, which runs one batch at a time anyway).
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch_size: int,
        max_queue_delay_us: int = 0,
        preferred_batch_sizes: tuple[int, ...] = (),
        batching: bool = True,
        instances: int = 1,
        max_queue_size: int | None = None,
        stats: ModelStats | None = None,
        name: str = "model",
        inline_rows: int = 0,
    ) -> None:
        self._run = run
        self._batching = batching and max_batch_size > 1
        self._max_rows = max(1, max_batch_size) if self._batching else 1
        self._delay_s = max_queue_delay_us / 1e6 if self._batching else 0.0
        # Largest first; only sizes below the maximum matter (a full batch never waits).
        self._preferred = sorted(
            {p for p in preferred_batch_sizes if 0 < p < self._max_rows}, reverse=True
        )
        self._stats = stats
        self._name = name
        self._instances = max(1, instances)
        self.max_queue_size = max_queue_size
        self._idle = self._instances
        self._inline_rows = inline_rows if self._instances == 1 else 0
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._timer: asyncio.Handle | None = None
        self._fruitless = 0  # waits of one pass in a row that gathered no company
        self._lone = 0  # lone requests since then
        self._closing = False
        self._drained: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the instance threads; must be called on the event loop that will submit."""
        self._loop = asyncio.get_running_loop()
        self._drained = asyncio.Event()
        for i in range(self._instances):
            thread = threading.Thread(
                target=self._instance, name=f"infer-{self._name}-{i}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    async def close(self) -> None:
        """Stop taking requests, finish every queued one, then stop the threads."""
        self._closing = True
        if self._queue or self._idle < self._instances:
            self._dispatch()
            await self._drained.wait()  # type: ignore[union-attr]
        for _ in self._threads:
            self._jobs.put(None)
        await asyncio.to_thread(_join, self._threads)

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def inline_rows(self) -> int:
        """Batches of at most this many rows run on the event loop thread."""
        return self._inline_rows

    def check_room(self, requests: int = 1) -> None:
        """Raise `ResourceExhausted` unless `requests` more requests fit in the queue now (a
        caller that enqueues several in the same step of the event loop checks once for all)."""
        limit = self.max_queue_size
        if limit is None or len(self._queue) + requests <= limit:
            return
        if requests > limit:  # it would never fit
            raise ResourceExhausted(
                f"Exceeds maximum queue size: the request needs {requests} places in the queue "
                f"of {self._name} (max_queue_size {limit}); send fewer images"
            )
        raise ResourceExhausted(
            f"Exceeds maximum queue size: {len(self._queue)} requests wait for {self._name} "
            f"(max_queue_size {limit}); retry later"
        )

    # -- requests (event loop) ----------------------------------------------------------------

    def enqueue(
        self, data: np.ndarray, deadline: float | None = None, *, may_run_now: bool = False
    ) -> asyncio.Future[np.ndarray]:
        """Queue one request (`[n, ...]`, n <= max_batch_size); the future gets its outputs.

        Synchronous on purpose: a caller that looked the model up in the same step of the
        event loop is guaranteed to reach this batcher before a hot reload can close it.

        Args:
            data: the request's rows.
            deadline: `time.monotonic()` after which the answer is of no use (None: none).
                A request still queued then is not run; its future raises `DeadlineExceeded`.
            may_run_now: the request may run before this returns (its future is done) when it
                finds nothing queued and waiting a pass of the loop has not been gathering
                company (see the module docstring); a caller that enqueues several parts of
                one request leaves it False, so that they run together.

        Raises:
            ResourceExhausted: the queue holds `max_queue_size` requests already.
            Unavailable: the batcher is closing.
            DeadlineExceeded: the deadline has passed already.
        """
        if self._closing:
            raise Unavailable(f"model {self._name} is being unloaded; retry")
        limit = self.max_queue_size
        if limit is not None and len(self._queue) >= limit:
            self.check_room()  # raises, saying so
        if deadline is not None and deadline <= time.monotonic():
            raise DeadlineExceeded(f"the deadline passed before the request reached {self._name}")
        loop = self._loop
        future: asyncio.Future[np.ndarray] = loop.create_future()  # type: ignore[union-attr]
        if may_run_now and self._runs_alone(len(data)):
            self._run_now(data, future)
            return future
        pending = _Pending(data, future, deadline)
        if deadline is not None:
            delay = max(0.0, deadline - time.monotonic())
            pending.expiry = loop.call_later(delay, self._expire, pending)  # type: ignore[union-attr]
        self._queue.append(pending)
        self._queued_rows += len(data)
        if self._idle:
            self._next()
        return future

    async def submit(self, data: np.ndarray, deadline: float | None = None) -> np.ndarray:
        """`enqueue` and wait for the outputs."""
        return await self.enqueue(data, deadline)

    def _next(self) -> None:
        """Start the next batch now, after one pass of the loop (inline: let requests that
        arrived together join it), or when the queue delay says so."""
        if self._waits_for_more():
            self._arm_timer()
        elif self._delay_s and self._preferred and self._queued_rows < self._max_rows:
            # A preferred size is reached: it goes after one pass of the loop (requests that
            # arrived together join it), not after the rest of the delay.
            self._arm_timer(soon=True, replace=True)
        elif self._inline_rows:
            self._arm_timer(soon=True)
        else:
            self._dispatch()

    def _runs_alone(self, rows: int) -> bool:
        """Whether a request of `rows` rows runs at once, without waiting a pass of the loop:
        the model is idle with nothing queued, the rows run on the loop, and waiting has not
        been gathering company (every n-th lone request waits anyway, to look)."""
        if (
            self._idle
            and not self._queue
            and self._timer is None
            and rows <= self._inline_rows
            and not self._delay_s
            and self._fruitless >= _FRUITLESS_PASSES
        ):
            self._lone += 1
            return self._lone % _FRUITLESS_PASSES != 0
        return False

    def _run_now(self, data: np.ndarray, future: asyncio.Future[np.ndarray]) -> None:
        """What `_dispatch` does for a batch of one request, without the queue (no wait). It
        runs to the end before the loop turns, so the instance is never seen busy."""
        started = time.perf_counter_ns()
        try:
            outputs = self._run(data)
        except BaseException as err:  # a failed run is not an execution to count
            future.set_exception(_as_exception(err))
            return
        computed = time.perf_counter_ns()
        future.set_result(outputs)
        if self._stats is not None:
            done = time.perf_counter_ns()
            self._stats.record_execution(
                len(data), 1, 0, 0, computed - started, done - computed, (0,)
            )

    def _arm_timer(self, soon: bool = False, replace: bool = False) -> None:
        if self._timer is not None:
            if not replace:
                return
            self._timer.cancel()
        loop = self._loop
        remaining = self._queue[0].enqueued_ns / 1e9 + self._delay_s - time.perf_counter()
        if soon or remaining < _LOOP_TIMER_RESOLUTION_S:
            self._timer = loop.call_soon(self._on_timer)  # type: ignore[union-attr]
        else:
            self._timer = loop.call_later(remaining, self._on_timer)  # type: ignore[union-attr]

    def _expire(self, pending: _Pending) -> None:
        """A queued request's deadline passed: take it out of the queue and answer it."""
        pending.expiry = None
        try:
            self._queue.remove(pending)
        except ValueError:
            return  # already taken into a batch
        self._queued_rows -= len(pending.data)
        pending.expire(self._name)
        self._check_drained()

    def _on_timer(self) -> None:
        self._timer = None
        if self._inline_rows and self._idle:
            # Did waiting this pass gather company for the request that started it?
            alone = len(self._queue) == 1
            self._fruitless = min(self._fruitless + 1, _FRUITLESS_PASSES) if alone else 0
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand batches to idle instances while there are requests and idle instances (a batch
        small enough runs right here instead, and the loop turns before the next one)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._idle and self._queue:
            if self._preferred and self._waits_for_more(within_delay=True):
                self._arm_timer()  # what a preferred batch left behind waits on
                break
            batch, rows = self._take()
            if not batch:
                break
            self._idle -= 1
            job = _Job(batch)
            if rows <= self._inline_rows:
                self._execute_safely(job)
                self._complete(job)
                if self._queue:
                    self._next()
                    return
            else:
                self._jobs.put(job)
        self._check_drained()

    def _take(self) -> tuple[list[_Pending], int]:
        """The next batch and its rows (requests given up on or past their deadline are
        dropped on the way)."""
        batch: list[_Pending] = []
        rows = 0
        now = time.monotonic()
        limit = self._batch_limit()
        while self._queue:
            head = self._queue[0]
            n = len(head.data)
            if batch and rows + n > limit:
                break
            self._queue.popleft()
            self._queued_rows -= n
            if head.future.done():  # the caller gave up (cancel): skip it
                continue
            if head.deadline is not None and head.deadline <= now:
                head.expire(self._name)  # its timer has not fired yet
                continue
            if head.expiry is not None:
                head.expiry.cancel()  # it runs now
                head.expiry = None
            batch.append(head)
            rows += n
        return batch, rows

    def _waits_for_more(self, within_delay: bool = False) -> bool:
        """Whether the queued requests wait for more: a delay is set, they fill neither a
        batch nor a preferred size, and (`within_delay`) the oldest has not waited it out."""
        if not self._delay_s or self._closing or self._queued_rows >= self._max_rows:
            return False
        if self._preferred and self._queued_rows >= self._preferred[-1]:
            return False
        return not within_delay or self._waited(self._queue[0]) < self._delay_s

    @staticmethod
    def _waited(pending: _Pending) -> float:
        # The loop's timers may fire up to its resolution early.
        return time.perf_counter() - pending.enqueued_ns / 1e9 + _LOOP_TIMER_RESOLUTION_S

    def _batch_limit(self) -> int:
        """Most rows for the next batch: the largest preferred size the queued rows reach
        while the oldest request is still within its delay, else the maximum."""
        if not self._preferred or self._closing or self._queued_rows >= self._max_rows:
            return self._max_rows
        if self._waited(self._queue[0]) >= self._delay_s:
            return self._max_rows
        for size in self._preferred:
            if self._queued_rows >= size:
                return size
        return self._max_rows

    def _finished(self, job: _Job) -> None:
        """Back on the event loop from an instance thread: answer, count, start the next batch."""
        self._complete(job)
        if self._queue:
            self._next()
        else:
            self._check_drained()

    def _complete(self, job: _Job) -> None:
        """Answer each caller of a finished batch and count the execution."""
        self._idle += 1
        rows = 0
        for pending, result in zip(job.batch, job.results, strict=True):
            rows += len(pending.data)
            if pending.future.done():
                continue
            if isinstance(result, Exception):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)
        if self._stats is not None and job.computed_ns:
            done = time.perf_counter_ns()
            queued = [job.started_ns - p.enqueued_ns for p in job.batch]
            self._stats.record_execution(
                rows,
                len(job.batch),
                sum(queued),
                job.assembled_ns - job.started_ns,
                job.computed_ns - job.assembled_ns,
                done - job.computed_ns,
                queued,
            )

    def _check_drained(self) -> None:
        if self._closing and not self._queue and self._idle == self._instances:
            self._drained.set()  # type: ignore[union-attr]

    # -- instance threads ---------------------------------------------------------------------

    def _instance(self) -> None:
        loop = self._loop
        while True:
            job = self._jobs.get()
            if job is None:
                return
            self._execute_safely(job)
            loop.call_soon_threadsafe(self._finished, job)  # type: ignore[union-attr]
            # Waiting for the next job must not keep this one's inputs (which may be views of a
            # client's shared memory) alive.
            job = None

    def _execute_safely(self, job: _Job) -> None:
        try:
            self._execute(job)
        except BaseException as err:  # never lose a job: answer it with the error
            job.results = [_as_exception(err)] * len(job.batch)

    def _execute(self, job: _Job) -> None:
        batch = job.batch
        inputs = batch[0].data if len(batch) == 1 else np.concatenate([p.data for p in batch])
        job.assembled_ns = time.perf_counter_ns()
        try:
            outputs = self._run(inputs)
        except Exception as err:
            job.computed_ns = 0  # not an execution to count
            if len(batch) == 1:
                job.results = [err]
                return
            log.warning(
                "batch of %d for %s failed (%s); rerunning each request alone",
                len(batch),
                self._name,
                err,
            )
            job.results = [self._run_alone(p.data) for p in batch]
            return
        job.computed_ns = time.perf_counter_ns()
        if len(batch) == 1:
            job.results = [outputs]
            return
        results: list[np.ndarray | Exception] = []
        offset = 0
        for pending in batch:
            n = len(pending.data)
            results.append(outputs[offset : offset + n])
            offset += n
        job.results = results

    def _run_alone(self, data: np.ndarray) -> np.ndarray | Exception:
        try:
            return self._run(data)
        except Exception as err:
            return err


def _join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join()


def _as_exception(err: BaseException) -> Exception:
    """What a caller's future can carry for `err` (a KeyboardInterrupt or SystemExit raised
    inside the model call becomes a RuntimeError: it must not escape into the event loop)."""
    return err if isinstance(err, Exception) else RuntimeError(str(err))
