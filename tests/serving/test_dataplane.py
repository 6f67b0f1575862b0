"""The data plane in process (no gRPC): the server's own deadline handling and its Explain
errors, each on a fresh copy of the session's repository."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from cnnzoo.errors import DeadlineExceeded, NotFound
from cnnzoo.serving.dataplane import DataPlane
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


async def open_plane(root: Path, model: str) -> DataPlane:
    manager = ModelManager(
        ModelRepository(root), RuntimeOptions(device="cpu", intra_op_threads=1), models=[model]
    )
    manager.discover()
    await manager.load_all()
    return DataPlane(manager, "cnnzoo", "test")


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
