"""The dynamic batcher with a plain numpy function as the model (no server involved)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from cnnzoo.errors import DeadlineExceeded, Unavailable
from cnnzoo.serving import batcher as batcher_module
from cnnzoo.serving.batcher import DynamicBatcher
from cnnzoo.serving.stats import ModelStats


class RecordingModel:
    """y = 2x + 1 per row, optionally slow; raises on negative input; records each batch."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.batches: list[np.ndarray] = []
        self._lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            self.batches.append(x.copy())
        if self.seconds:
            time.sleep(self.seconds)
        if (x < 0).any():
            raise ValueError("negative input")
        return 2 * x + 1


def rows(n: int, start: float) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.float32).reshape(n, 1)


def run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_requests_share_executions_and_get_their_own_rows():
    model = RecordingModel(seconds=0.01)
    stats = ModelStats("m", "1")

    async def main():
        batcher = DynamicBatcher(model, max_batch_size=8, stats=stats, name="m")
        batcher.start()
        inputs = [rows(1 + i % 3, 100 * i) for i in range(20)]
        outputs = await asyncio.gather(*(batcher.submit(x) for x in inputs))
        await batcher.close()
        return inputs, outputs

    inputs, outputs = run(main())
    for x, y in zip(inputs, outputs, strict=True):
        np.testing.assert_array_equal(y, 2 * x + 1)
    assert len(model.batches) < 20
    assert max(len(b) for b in model.batches) <= 8
    assert stats.execution_count == len(model.batches)
    assert stats.inference_count == sum(len(x) for x in inputs)
    assert stats.queue.count == 20 and stats.compute_infer.count == 20
    assert sum(size * s.compute_infer.count for size, s in stats.batches.items()) == sum(
        len(x) for x in inputs
    )


def test_requests_are_never_split_across_batches():
    model = RecordingModel(seconds=0.005)

    async def main():
        batcher = DynamicBatcher(model, max_batch_size=4)
        batcher.start()
        await asyncio.gather(*(batcher.submit(rows(3, 10 * i)) for i in range(6)))
        await batcher.close()

    run(main())
    assert all(len(batch) == 3 for batch in model.batches)  # 3 + 3 > 4: never combined


def test_batching_off_runs_each_request_alone():
    model = RecordingModel(seconds=0.002)

    async def main():
        batcher = DynamicBatcher(model, max_batch_size=8, batching=False)
        batcher.start()
        await asyncio.gather(*(batcher.submit(rows(1, i)) for i in range(10)))
        await batcher.close()

    run(main())
    assert len(model.batches) == 10


def test_a_failing_request_fails_alone():
    model = RecordingModel(seconds=0.01)

    async def main():
        batcher = DynamicBatcher(model, max_batch_size=8)
        batcher.start()
        blocker = batcher.enqueue(rows(1, 0))  # runs first, so the next three queue together
        good_a, bad, good_b = rows(2, 10), -rows(1, 1), rows(1, 20)
        results = await asyncio.gather(
            batcher.submit(good_a), batcher.submit(bad), batcher.submit(good_b),
            return_exceptions=True,
        )  # fmt: skip
        await blocker
        await batcher.close()
        return good_a, good_b, results

    good_a, good_b, (ra, rbad, rb) = run(main())
    np.testing.assert_array_equal(ra, 2 * good_a + 1)
    np.testing.assert_array_equal(rb, 2 * good_b + 1)
    assert isinstance(rbad, ValueError)
    assert any(len(b) == 4 for b in model.batches), "the three were not tried as one batch"


def test_a_caller_that_gave_up_is_skipped():
    model = RecordingModel(seconds=0.02)

    async def main():
        batcher = DynamicBatcher(model, max_batch_size=8)
        batcher.start()
        first = batcher.enqueue(rows(1, 1))
        gave_up = asyncio.ensure_future(batcher.submit(rows(1, 500)))
        kept = asyncio.ensure_future(batcher.submit(rows(1, 7)))
        await asyncio.sleep(0)
        gave_up.cancel()
        await first
        result = await kept
        await batcher.close()
        return result, gave_up

    result, gave_up = run(main())
    np.testing.assert_array_equal(result, 2 * rows(1, 7) + 1)
    assert gave_up.cancelled()
    assert not any((b == 500).any() for b in model.batches)


def test_queue_delay_waits_for_a_batch_to_fill():
    async def two_requests(delay_us: int, max_batch_size: int = 8) -> list[int]:
        model = RecordingModel()
        batcher = DynamicBatcher(model, max_batch_size=max_batch_size, max_queue_delay_us=delay_us)
        batcher.start()
        first = batcher.enqueue(rows(1, 0))
        await asyncio.sleep(0.01)
        second = batcher.enqueue(rows(1, 1))
        await asyncio.gather(first, second)
        await batcher.close()
        return [len(b) for b in model.batches]

    assert run(two_requests(0)) == [1, 1]
    assert run(two_requests(200_000)) == [2]
    started = time.monotonic()
    assert run(two_requests(10_000_000, max_batch_size=2)) == [2]  # full: no waiting
    assert time.monotonic() - started < 2


def test_a_preferred_batch_size_goes_as_soon_as_it_is_reached_and_the_rest_waits():
    """Triton's preferred_batch_size: within a long queue delay, 4 queued rows (a preferred
    size) go at once as a batch of exactly 4; a fifth request waits out the delay."""

    async def main():
        model = RecordingModel()
        stats = ModelStats("m", "1")
        batcher = DynamicBatcher(
            model,
            max_batch_size=8,
            max_queue_delay_us=600_000,
            preferred_batch_sizes=(2, 4),
            stats=stats,
            name="m",
        )
        batcher.start()
        started = time.monotonic()
        futures = [batcher.enqueue(rows(1, i)) for i in range(5)]
        await asyncio.gather(*futures[:4])
        four_after = time.monotonic() - started
        await futures[4]
        fifth_after = time.monotonic() - started
        await batcher.close()
        return [len(b) for b in model.batches], four_after, fifth_after, stats

    sizes, four_after, fifth_after, stats = run(main())
    assert sizes == [4, 1]
    assert four_after < 0.3  # not the 0.6 s delay
    assert fifth_after >= 0.55
    assert stats.batches[4].compute_infer.count == 1


def test_without_a_preferred_size_reached_the_batch_waits_out_the_delay():
    async def main():
        model = RecordingModel()
        batcher = DynamicBatcher(
            model, max_batch_size=8, max_queue_delay_us=300_000, preferred_batch_sizes=(4,)
        )
        batcher.start()
        started = time.monotonic()
        await asyncio.gather(*(batcher.enqueue(rows(1, i)) for i in range(3)))
        took = time.monotonic() - started
        await batcher.close()
        return [len(b) for b in model.batches], took

    sizes, took = run(main())
    assert sizes == [3]
    assert took >= 0.28


def test_close_finishes_queued_requests_and_refuses_new_ones():
    model = RecordingModel(seconds=0.01)

    async def main():
        batcher = DynamicBatcher(model, max_batch_size=2)
        batcher.start()
        futures = [batcher.enqueue(rows(1, i)) for i in range(7)]
        await batcher.close()
        assert all(f.done() for f in futures)
        with pytest.raises(Unavailable):
            batcher.enqueue(rows(1, 0))
        return [f.result() for f in futures]

    results = run(main())
    for i, y in enumerate(results):
        np.testing.assert_array_equal(y, 2 * rows(1, i) + 1)


def test_a_deadline_that_passes_in_the_queue_is_answered_then_and_never_run():
    model = RecordingModel(seconds=0.3)

    async def main():
        batcher = DynamicBatcher(model, max_batch_size=8, name="m")
        batcher.start()
        busy = batcher.enqueue(rows(1, 1))  # occupies the only instance for 0.3 s
        started = time.monotonic()
        hasty = batcher.enqueue(rows(1, 500), deadline=started + 0.05)
        patient = batcher.enqueue(rows(1, 7), deadline=started + 30)
        with pytest.raises(DeadlineExceeded, match="was not run"):
            await hasty
        answered_after = time.monotonic() - started
        with pytest.raises(DeadlineExceeded, match="before the request reached m"):
            batcher.enqueue(rows(1, 9), deadline=time.monotonic() - 1)
        await busy
        result = await patient
        await batcher.close()
        return answered_after, result

    answered_after, result = run(main())
    assert answered_after < 0.2, "answered only when the model was free, not at its deadline"
    np.testing.assert_array_equal(result, 2 * rows(1, 7) + 1)
    assert not any(((b == 500) | (b == 9)).any() for b in model.batches)


class ThreadRecordingModel(RecordingModel):
    """Also records the thread each batch runs on."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.threads.append(threading.current_thread().name)
        return super().__call__(x)


def test_small_batches_run_on_the_event_loop_and_still_batch():
    """With `inline_rows`, batches that small run on the loop thread; requests that arrive
    together still run together; a batch above the limit goes to the instance thread; a bad
    request in an inline batch fails alone."""
    model = ThreadRecordingModel()
    stats = ModelStats("m", "1")

    async def main():
        batcher = DynamicBatcher(model, max_batch_size=16, stats=stats, name="m", inline_rows=4)
        batcher.start()
        lone = await batcher.submit(rows(1, 0))
        together = await asyncio.gather(*(batcher.submit(rows(1, 10 * i)) for i in range(3)))
        large = await batcher.submit(rows(8, 100))
        mixed = await asyncio.gather(
            batcher.submit(rows(1, 1)), batcher.submit(-rows(1, 1)), return_exceptions=True
        )
        await batcher.close()
        return lone, together, large, mixed

    lone, together, large, mixed = run(main())
    np.testing.assert_array_equal(lone, 2 * rows(1, 0) + 1)
    for i, y in enumerate(together):
        np.testing.assert_array_equal(y, 2 * rows(1, 10 * i) + 1)
    np.testing.assert_array_equal(large, 2 * rows(8, 100) + 1)
    np.testing.assert_array_equal(mixed[0], 2 * rows(1, 1) + 1)
    assert isinstance(mixed[1], ValueError)
    sizes = [len(b) for b in model.batches]
    assert sizes == [1, 3, 8, 2, 1, 1], sizes  # the three arrived in one pass of the loop
    assert model.threads[:2] == ["MainThread"] * 2
    assert model.threads[2] == "infer-m-0"
    assert model.threads[3:] == ["MainThread"] * 3  # the failed pair, then each alone
    assert stats.execution_count == 3  # a failed batch is not an execution


def test_lone_requests_stop_waiting_a_pass_when_waiting_gathers_nobody_and_a_burst_brings_it_back():
    """`may_run_now`: while waiting a pass of the loop keeps gathering no company, a lone
    request runs before `enqueue` returns (its future is done), except every n-th, which waits
    to look; a wait that gathers a batch makes lone requests wait again."""
    model = ThreadRecordingModel()
    stats = ModelStats("m", "1")
    n = batcher_module._FRUITLESS_PASSES

    async def main():
        batcher = DynamicBatcher(model, max_batch_size=16, stats=stats, name="m", inline_rows=4)
        batcher.start()
        done_at_once = []
        for i in range(4 * n):
            future = batcher.enqueue(rows(1, i), may_run_now=True)
            done_at_once.append(future.done())
            np.testing.assert_array_equal(await future, 2 * rows(1, i) + 1)
        # A burst: the next probe finds company, and lone requests wait again.
        while batcher._lone % n != n - 1:
            await batcher.enqueue(rows(1, 0), may_run_now=True)
        burst = [batcher.enqueue(rows(1, 50 + i), may_run_now=True) for i in range(3)]
        together = await asyncio.gather(*burst)
        waits_again = batcher.enqueue(rows(1, 7), may_run_now=True)
        waited = not waits_again.done()
        failing = batcher.enqueue(-rows(1, 1), may_run_now=True)
        await waits_again
        with pytest.raises(ValueError):
            await failing
        await batcher.close()
        return done_at_once, together, waited

    done_at_once, together, waited = run(main())
    assert done_at_once[:n] == [False] * n  # the first waits gather nobody
    later = done_at_once[n:]
    assert later.count(False) == len(later) // n  # every n-th still waits, to look
    assert all(later[i] for i in range(len(later)) if (i + 1) % n)
    for i, y in enumerate(together):
        np.testing.assert_array_equal(y, 2 * rows(1, 50 + i) + 1)
    assert [len(b) for b in model.batches if len(b) == 3] == [3]  # the burst ran as one batch
    assert waited  # after a wait that paid, a lone request waits again
    assert set(model.threads) == {"MainThread"}
    # The waiting request and the failing one ran together; the failure was rerun alone.
    assert [len(b) for b in model.batches[-3:]] == [2, 1, 1]
    assert stats.execution_count == len(model.batches) - 3  # failed runs are not counted
