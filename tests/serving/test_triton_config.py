"""config.pbtxt fields Triton honours that cnnzoo does not are refused, each with a reason that
names the field, while the server keeps serving the other models; never silently ignored."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from cnnzoo.serving.model_manager import ModelManager
from cnnzoo.serving.runtime import RuntimeOptions
from cnnzoo.zoo.repository import ModelRepository
from tests.serving.helpers import MODEL, copy_model


def _kind_gpu(config) -> None:
    group = config.instance_group.add()
    group.count, group.kind = 1, 1  # KIND_GPU


CASES = {
    "ensemble": (lambda c: setattr(c, "platform", "ensemble"), "platform 'ensemble'"),
    "python": (lambda c: (c.ClearField("platform"), setattr(c, "backend", "python")), "python"),
    "sequence": (lambda c: c.sequence_batching.SetInParent(), "sequence_batching"),
    "filename": (lambda c: setattr(c, "default_model_filename", "net.onnx"), "net.onnx"),
    "cache": (lambda c: setattr(c.response_cache, "enable", True), "response_cache"),
    "gpu": (_kind_gpu, "KIND_GPU"),
}


@pytest.fixture(scope="module")
def index(repository, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("configs")
    shutil.copytree(repository / MODEL, root / MODEL)
    for name, (edit, _) in CASES.items():
        copy_model(root, MODEL, name, edit=edit)

    async def main():
        manager = ModelManager(
            ModelRepository(root), RuntimeOptions(device="cpu", intra_op_threads=1)
        )
        manager.discover()
        await manager.load_all()
        try:
            return {e.name: (e.state, e.reason) for e in manager.index()}
        finally:
            await manager.close()

    return asyncio.run(main())


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_field_the_server_does_not_honour_is_refused_naming_it(index, name):
    state, reason = index[name]
    assert state == "UNAVAILABLE", (state, reason)
    assert CASES[name][1] in reason and "config.pbtxt asks for" in reason, reason


def test_the_other_models_still_serve(index):
    assert index[MODEL][0] == "READY"


def test_model_warmup_is_accepted_and_said(repository, tmp_path, caplog):
    import logging

    root = tmp_path / "repository"
    shutil.copytree(repository / MODEL, root / MODEL)

    def warmup(config) -> None:
        sample = config.model_warmup.add()
        sample.name, sample.batch_size = "zeros", 1

    copy_model(root, MODEL, "warmed", edit=warmup)

    async def main():
        manager = ModelManager(
            ModelRepository(root), RuntimeOptions(device="cpu", intra_op_threads=1),
            models=["warmed"],
        )  # fmt: skip
        manager.discover()
        await manager.load_all()
        try:
            return {e.name: e.state for e in manager.index()}
        finally:
            await manager.close()

    with caplog.at_level(logging.INFO, logger="cnnzoo.serving.version"):
        states = asyncio.run(main())
    assert states["warmed"] == "READY"
    assert any("model_warmup is replaced" in m for m in caplog.messages)
