"""Callers take turns: one client's backlog of heavy calls does not make another client's one-image
Classify wait for all of it. Two places where calls wait are shared this way, each checked on
a real server with two gRPC connections (a heavy client and a light one):

- the image-decoding threads (the shared server, default limits): the heavy client keeps 16
  Classify calls of four 9-megapixel PNGs in flight; the light client's digit is answered
  while nearly all of them are still decoding (it used to wait behind every one of them);
- the places of `--max-concurrent-requests` (a server with 2 places): the heavy client has 8
  calls waiting; the light client's call takes the next free place, not the ninth.

What is asserted is the order of answers, not a time.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from cnnzoo.protos import zoo_pb2, zoo_pb2_grpc
from cnnzoo.serving.round_robin import RoundRobin
from tests.serving.helpers import DIGITS, MODEL, ServerProcess


def _large_png(seed: int, side: int = 3000) -> bytes:
    """A 9-megapixel RGB gradient: a small file that takes real work to decode (tens of ms)."""
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    grey = ((ramp[None, :] + ramp[:, None]) / 2).astype(np.uint8)
    pixels = np.stack([grey, np.roll(grey, seed, axis=0), grey.T], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


HEAVY_IMAGES = [_large_png(seed) for seed in range(4)]


def _channel(target: str) -> grpc.aio.Channel:
    # Its own TCP connection (channels of one process share one by default): its own caller.
    return grpc.aio.insecure_channel(
        target,
        options=[("grpc.use_local_subchannel_pool", 1), ("grpc.max_send_message_length", 1 << 26)],
    )


async def _heavy_then_light(target: str, heavy_calls: int) -> tuple[int, int]:
    """Start `heavy_calls` heavy Classify calls on one connection, then one light call on
    another once the heavy ones are in the server; returns (heavy calls answered after the
    light one was sent and before its answer, heavy calls unanswered when it was sent)."""
    order: list[str] = []
    async with _channel(target) as heavy, _channel(target) as light:
        heavy_stub = zoo_pb2_grpc.ZooStub(heavy)
        light_stub = zoo_pb2_grpc.ZooStub(light)
        await heavy_stub.Classify(zoo_pb2.ClassifyRequest(model=MODEL, images=[HEAVY_IMAGES[0]]))
        await light_stub.Classify(zoo_pb2.ClassifyRequest(model=MODEL, images=[HEAVY_IMAGES[0]]))

        async def call(stub, images: list[bytes], name: str) -> None:
            response = await stub.Classify(zoo_pb2.ClassifyRequest(model=MODEL, images=images))
            assert len(response.results) == len(images)
            order.append(name)

        tasks = [
            asyncio.ensure_future(call(heavy_stub, HEAVY_IMAGES, "heavy"))
            for _ in range(heavy_calls)
        ]
        await asyncio.sleep(0.3)  # every heavy call is in the server, most still waiting
        sent = len(order)
        await call(light_stub, [DIGITS[0].read_bytes()], "light")
        await asyncio.gather(*tasks)
    return order.index("light") - sent, heavy_calls - sent


def test_a_one_image_call_does_not_wait_for_another_clients_decoding_backlog(server):
    before, total = asyncio.run(_heavy_then_light(server.target, heavy_calls=16))
    assert before <= total // 4, f"{before} of {total} heavy calls were answered first"


@pytest.fixture(scope="module")
def two_places(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("fair") / "server.log"
    process = ServerProcess(
        repository, log, "--model", MODEL, "--max-concurrent-requests", "2"
    ).wait_ready()
    yield process.target
    assert process.stop() == 0, process.log()


def test_a_freed_place_goes_to_the_caller_served_longest_ago(two_places):
    before, total = asyncio.run(_heavy_then_light(two_places, heavy_calls=10))
    # The light call takes the first place freed: one heavy answer before it, and at most one
    # more that the server had sent before the light call reached it but the client had not read.
    assert before <= 2, f"{before} of {total} heavy calls were answered first"


def test_the_round_goes_through_every_key_in_turn():
    waiting: RoundRobin[str] = RoundRobin()
    for item in ("a1", "a2", "a3"):
        waiting.push("a", item)
    waiting.push("b", "b1")
    waiting.push("c", "c1")
    waiting.push("b", "b2")
    assert waiting.remove("c", "c1") and not waiting.remove("c", "c1")
    assert [waiting.pop() for _ in range(len(waiting))] == ["a1", "b1", "a2", "b2", "a3"]
    with pytest.raises(IndexError):
        waiting.pop()


def test_a_new_key_goes_ahead_of_the_key_served_last():
    waiting: RoundRobin[str] = RoundRobin()
    for item in ("a1", "a2", "a3"):
        waiting.push("a", item)
    assert waiting.pop() == "a1"
    waiting.push("b", "b1")  # "a" was served a moment ago: "b" is next
    assert waiting.pop() == "b1"
    waiting.push("c", "c1")
    waiting.push("b", "b2")  # "b" comes back after "a", which waited longer, and after "c"
    assert [waiting.pop() for _ in range(len(waiting))] == ["a2", "c1", "b2", "a3"]
