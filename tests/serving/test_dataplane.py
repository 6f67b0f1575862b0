"""The data plane in process (no gRPC): the server's own deadline handling and its Explain
errors, each on a fresh copy of the session's repository."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from cnnzoo.errors import DeadlineExceeded, IntegrityError, NotFound
from cnnzoo.serving.dataplane import DataPlane
from cnnzoo.serving.limits import RequestLimits
from cnnzoo.serving.model_manager import ModelManager
from cnnzoo.serving.runtime import RuntimeOptions
from cnnzoo.serving.types import InferInput, InferRequest
from cnnzoo.zoo.repository import ModelRepository
from tests.serving.helpers import DIGITS, MODEL, QUEUE_DELAY_S, QUEUED

X = np.random.default_rng(11).standard_normal((1, 1, 32, 32)).astype(np.float32)


def copy_repository(repository: Path, tmp_path: Path, model: str) -> Path:
    root = tmp_path / "repository"
    shutil.copytree(repository / model, root / model)
    return root


async def open_plane(root: Path, model: str, limits: RequestLimits | None = None) -> DataPlane:
    manager = ModelManager(
        ModelRepository(root), RuntimeOptions(device="cpu", intra_op_threads=1), models=[model]
    )
    manager.discover()
    await manager.load_all()
    return DataPlane(manager, "cnnzoo", "test", limits=limits)


async def close_plane(plane: DataPlane) -> None:
    await plane.models.close()
    plane.close()


def request(model: str) -> InferRequest:
    tensor = InferInput("input", "FP32", X.shape, raw=X.astype("<f4").tobytes())
    return InferRequest(model_name=model, inputs=[tensor])


def test_the_server_drops_a_request_whose_deadline_passes_in_its_queue(repository, tmp_path):
    root = copy_repository(repository, tmp_path, QUEUED)

    async def main():
        plane = await open_plane(root, QUEUED)
        try:
            started = time.monotonic()
            patient = asyncio.ensure_future(plane.infer(request(QUEUED)))
            hasty = asyncio.ensure_future(plane.infer(request(QUEUED), deadline=started + 0.1))
            with pytest.raises(DeadlineExceeded, match="was not run"):
                await hasty
            answered_after = time.monotonic() - started
            response = await patient
            stats = plane.models.get(QUEUED).stats
            return answered_after, response, stats
        finally:
            await close_plane(plane)

    answered_after, response, stats = asyncio.run(main())
    assert answered_after < QUEUE_DELAY_S / 2, "not answered when its deadline passed"
    assert response.outputs[0].shape == (1, 10)
    assert stats.inference_count == 1 and stats.execution_count == 1  # only the patient one ran
    assert stats.fail.count == 1 and stats.success.count == 1


def test_explain_with_its_weights_gone_names_the_file_not_the_servers_folder(repository, tmp_path):
    root = copy_repository(repository, tmp_path, MODEL)

    async def main():
        plane = await open_plane(root, MODEL)
        (root / MODEL / "1" / "model.safetensors").unlink()  # removed while being served
        try:
            await plane.explain(MODEL, "", DIGITS[0].read_bytes(), "gradient", None)
        finally:
            await close_plane(plane)

    with pytest.raises(NotFound) as info:
        asyncio.run(main())
    reason = info.value.reason
    assert f"{MODEL} version 1" in reason and "model.safetensors is missing" in reason
    assert str(tmp_path) not in reason and "/" not in reason, reason


def test_explain_refuses_weights_changed_after_the_version_was_verified(
    repository, tmp_path, caplog
):
    """model.safetensors is read on the first explanation, long after the load-time sha256
    check: a flipped bit must be refused (and logged), not turned into a wrong map."""
    import logging

    root = copy_repository(repository, tmp_path, MODEL)

    async def main():
        plane = await open_plane(root, MODEL)
        weights = root / MODEL / "1" / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0x01  # one bit of one weight: it loads, the numbers are wrong
        weights.write_bytes(bytes(data))
        try:
            await plane.explain(MODEL, "", DIGITS[0].read_bytes(), "gradient", None)
        finally:
            await close_plane(plane)

    logger = "cnnzoo.serving.model_manager"
    with caplog.at_level(logging.ERROR, logger=logger), pytest.raises(IntegrityError) as info:
        asyncio.run(main())
    assert f"{MODEL}/1/model.safetensors sha256" in info.value.reason
    assert "does not match the manifest" in info.value.reason
    assert any(f"Explain refused for {MODEL} version 1" in m for m in caplog.messages)


def test_decoding_stops_when_the_callers_deadline_passes(repository):
    """Each image is decoded only while the caller still waits; the pixel budget is checked
    from the headers before anything is decoded."""
    from PIL import Image

    from cnnzoo.errors import ResourceExhausted
    from cnnzoo.serving.images import images_to_batch
    from cnnzoo.zoo.repository import ModelRepository
    from tests.serving.requests import bomb_png, encode

    preprocess = ModelRepository(repository).preprocess(MODEL)
    images = [encode(Image.new("L", (1500, 1500), 40))] * 6
    batch = images_to_batch(images[:1], preprocess, deadline=time.monotonic() + 60)
    assert batch.shape == (1, 1, 32, 32)
    with pytest.raises(DeadlineExceeded, match="after decoding 0 of 6 image"):
        images_to_batch(images, preprocess, deadline=time.monotonic())
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as info:
        images_to_batch(images * 10, preprocess, deadline=started + 0.05)
    assert "of 60 image" in info.value.reason and "after decoding 60" not in info.value.reason
    with pytest.raises(ResourceExhausted, match="--max-request-pixels"):
        images_to_batch([bomb_png(9000, 9000)] * 2, preprocess, max_pixels=100_000_000)


def test_explain_is_not_started_after_the_callers_deadline_and_its_queue_is_bounded(
    repository, tmp_path
):
    from cnnzoo.errors import ResourceExhausted

    root = copy_repository(repository, tmp_path, MODEL)
    image = DIGITS[0].read_bytes()

    async def main():
        plane = await open_plane(root, MODEL, RequestLimits(max_pending_explanations=2))
        try:
            with pytest.raises(DeadlineExceeded, match="the request was not run"):
                await plane.explain(MODEL, "", image, "gradient", None, deadline=time.monotonic())
            calls = [plane.explain(MODEL, "", image, "gradient", None) for _ in range(4)]
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await close_plane(plane)

    outcomes = asyncio.run(main())
    refused = [o for o in outcomes if isinstance(o, ResourceExhausted)]
    assert len(refused) == 2, outcomes
    assert "--max-pending-explanations" in refused[0].reason
    assert all(o.method == "gradient" for o in outcomes if o not in refused)


def test_the_queue_bound_of_config_pbtxt_wins_over_the_servers_default(repository, tmp_path):
    """Triton's `dynamic_batching.default_queue_policy.max_queue_size` in config.pbtxt."""
    from cnnzoo.errors import ResourceExhausted
    from tests.serving.helpers import copy_model

    root = copy_repository(repository, tmp_path, QUEUED)
    copy_model(
        root,
        QUEUED,
        "bounded",
        max_queue_delay_us=int(QUEUE_DELAY_S * 1e6),
        edit=lambda config: setattr(
            config.dynamic_batching.default_queue_policy, "max_queue_size", 1
        ),
    )

    async def main():
        plane = await open_plane(root, "bounded", RequestLimits(max_queue_size=100))
        try:
            assert plane.models.get("bounded").batcher.max_queue_size == 1
            calls = [plane.infer(request("bounded")) for _ in range(3)]
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await close_plane(plane)

    outcomes = asyncio.run(main())
    refused = [o for o in outcomes if isinstance(o, ResourceExhausted)]
    assert len(refused) == 2 and "max_queue_size 1" in refused[0].reason, outcomes
