"""Bursts are all answered: tritonclient.grpc.aio keeps 96, 200 and 300 ModelInfer calls in
flight on one connection against the shared server (default limits), and three clients on
three connections put 300 calls in the server at once. Near its limit of 128 streams per
connection the server could refuse a stream ("Stream removed", RST_STREAM REFUSED_STREAM), and
calls over 256 in progress were RESOURCE_EXHAUSTED; now streams are not what bounds a client
and calls over the limit wait their turn. (`bench/bursts.py` measures one client at a larger
scale, against the refusing configuration.)"""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest

from tests.serving.checks import scrape
from tests.serving.helpers import MODEL, ServerProcess, copy_model

CALLS = 1200


async def burst(
    target: str, model: str, concurrency: int, calls: int, *, own_connection: bool = False
) -> Counter[str]:
    """`concurrency` callers on one tritonclient.grpc.aio client until `calls` are made;
    `own_connection`: the client's channel does not share a connection with others in this
    process (as a client in another process would not)."""
    import tritonclient.grpc.aio as triton
    from tritonclient.utils import InferenceServerException

    x = np.zeros((1, 1, 32, 32), np.float32)
    options = [("grpc.use_local_subchannel_pool", 1)] if own_connection else None
    client = triton.InferenceServerClient(target, channel_args=options)
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


HELD = "lenet5-held"  # batches of up to 512 rows, each waiting up to 3 s to fill


@pytest.fixture(scope="module")
def holding_server(repository, tmp_path_factory) -> Iterator[ServerProcess]:
    """A server whose model keeps every call of a burst of 300 in progress together."""
    repo = tmp_path_factory.mktemp("bursts") / "models"
    shutil.copytree(repository / MODEL, repo / MODEL)

    def large_batches(config) -> None:
        config.max_batch_size = 512

    copy_model(repo, MODEL, HELD, max_queue_delay_us=3_000_000, edit=large_batches)
    process = ServerProcess(repo, repo.parent / "server.log", "--model", HELD).wait_ready()
    yield process
    assert process.stop() == 0, process.log()
    assert "Traceback" not in process.log(), process.log()


def test_calls_over_the_concurrency_limit_wait_instead_of_failing(holding_server):
    """Three clients (three connections) with 100 calls each: 300 calls in the server at once,
    over the default limit of 256 in progress. The 44 over it wait their turn; they were
    refused RESOURCE_EXHAUSTED."""
    waited = ("cnnzoo_requests_waited_total", "")
    before = scrape(holding_server)[waited]

    async def three_clients() -> list[Counter[str]]:
        return await asyncio.gather(
            *(burst(holding_server.target, HELD, 100, 100, own_connection=True) for _ in range(3))
        )

    outcomes = sum(asyncio.run(three_clients()), Counter())
    assert outcomes == Counter({"OK": 300}), outcomes
    assert scrape(holding_server)[waited] - before >= 300 - 256  # they did wait
