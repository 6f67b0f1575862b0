"""The data plane in process (no gRPC): the server's own deadline handling and its Explain
errors, each on a fresh copy of the session's repository."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from cnnzoo.errors import DeadlineExceeded, IntegrityError
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


def test_explain_needs_no_pytorch_weights(repository, tmp_path):
    """A repository laid out for Triton by other means has model.onnx and no
    model.safetensors: Explain builds the explanation graph from model.onnx."""
    root = copy_repository(repository, tmp_path, MODEL)
    (root / MODEL / "1" / "model.safetensors").unlink()
    (root / MODEL / "1" / "manifest.json").unlink()

    async def main():
        plane = await open_plane(root, MODEL)
        try:
            return await plane.explain(MODEL, "", DIGITS[0].read_bytes(), "gradient", None)
        finally:
            await plane.close_explanations()
            await close_plane(plane)

    result = asyncio.run(main())
    assert result.method == "gradient" and result.attribution.shape == (32, 32)
    assert np.isfinite(result.attribution).all() and np.abs(result.attribution).max() > 0


def test_explain_refuses_an_explanation_model_of_another_classifier(repository, tmp_path):
    """The exported explanation model records its classifier's sha256: after the classifier's
    model.onnx changed, Explain refuses the stale explanation model and says to rebuild it."""
    from cnnzoo.cli import main as cli

    root = copy_repository(repository, tmp_path, MODEL)
    assert cli(["explain-export", str(root), MODEL, "--methods", "gradient"]) == 0
    assert (root / f"{MODEL}.gradient" / "1" / "model.onnx").is_file()

    async def main():
        plane = await open_plane(root, MODEL)
        classifier = root / MODEL / "1" / "model.onnx"
        classifier.write_bytes(classifier.read_bytes() + b" ")  # another file, same name
        try:
            await plane.explain(MODEL, "", DIGITS[0].read_bytes(), "gradient", None)
        finally:
            await plane.close_explanations()
            await close_plane(plane)

    with pytest.raises(IntegrityError) as info:
        asyncio.run(main())
    assert "rebuild it (cnnzoo explain-export)" in info.value.reason


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
