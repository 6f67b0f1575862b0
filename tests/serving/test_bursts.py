"""Bursts from one real client are all answered: tritonclient.grpc.aio keeps 96, 200 and 300
ModelInfer calls in flight on one connection against the shared server (default limits). With
128 streams per connection the server refused streams ("Stream removed", RST_STREAM
REFUSED_STREAM) and calls over 256 in progress were RESOURCE_EXHAUSTED; now streams are not
what bounds a client and calls over the limit wait their turn. (`bench/bursts.py` measures
the same at a larger scale, against the refusing configuration.)"""

from __future__ import annotations

import asyncio
from collections import Counter

import numpy as np
import pytest

from tests.serving.checks import scrape
from tests.serving.helpers import MODEL, QUEUED

CALLS = 1200


async def burst(target: str, model: str, concurrency: int, calls: int) -> Counter[str]:
    import tritonclient.grpc.aio as triton
    from tritonclient.utils import InferenceServerException

    x = np.zeros((1, 1, 32, 32), np.float32)
    client = triton.InferenceServerClient(target)
    outcomes: Counter[str] = Counter()
    left = calls

    async def caller() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            tensor = triton.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            try:
                result = await client.infer(model, [tensor], client_timeout=120)
                assert result.as_numpy("logits").shape == (1, 10)
                outcomes["OK"] += 1
            except InferenceServerException as err:
                outcomes[f"{err.status()}: {(err.message() or '')[:120]}"] += 1

    try:
        await asyncio.gather(*(caller() for _ in range(concurrency)))
    finally:
        await client.close()
    return outcomes


@pytest.mark.parametrize("concurrency", [96, 200, 300])
def test_a_burst_from_one_client_is_all_answered(server, concurrency):
    outcomes = asyncio.run(burst(server.target, MODEL, concurrency, CALLS))
    assert outcomes == Counter({"OK": CALLS}), outcomes


def test_calls_over_the_concurrency_limit_wait_instead_of_failing(server):
    """300 calls at once on `lenet5-queued`, which holds each for its batch to fill: all of
    them are in the server together, over the default limit of 256 in progress."""
    waited = ("cnnzoo_requests_waited_total", "")
    before = scrape(server)[waited]
    outcomes = asyncio.run(burst(server.target, QUEUED, 300, 300))
    assert outcomes == Counter({"OK": 300}), outcomes
    assert scrape(server)[waited] - before >= 300 - 256  # they did wait
