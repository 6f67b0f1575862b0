"""Fixtures of the zoo tests: one short real training run and one real export, shared."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnzoo.zoo.export import ExportOptions, export_model
from cnnzoo.zoo.train import TrainOptions, train

# A short run on real MNIST that still learns: 2 epochs over 3,000 training images
# (batch 32: ~190 optimizer steps, enough to get past 85% from chance).
SHORT_RUN = {"epochs": 2, "batch_size": 32, "train_subset": 3000, "test_subset": 500, "seed": 3}


@pytest.fixture(scope="package", autouse=True)
def _one_torch_thread():
    """The machine is shared: keep the zoo tests on one CPU thread, restoring torch's setting."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def short_run_options(out: Path, **overrides) -> TrainOptions:
    return TrainOptions(model="lenet5-mnist", out=out, progress=False, **{**SHORT_RUN, **overrides})


@pytest.fixture(scope="package")
def trained_lenet(tmp_path_factory, data_dir):
    """A finished short LeNet-5 run: (TrainResult, run folder)."""
    out = tmp_path_factory.mktemp("train")
    result = train(short_run_options(out))
    return result, out / "lenet5-mnist"


@pytest.fixture(scope="package")
def exported_lenet(tmp_path_factory, trained_lenet):
    """A repository with the short-run LeNet-5 exported as version 1: (repository, summary)."""
    _, run = trained_lenet
    repository = tmp_path_factory.mktemp("repo")
    summary = export_model(
        ExportOptions(
            model="lenet5-mnist", repository=repository, weights=run / "model.safetensors"
        )
    )
    return repository, summary
