"""Shared test configuration.

Tests read the real datasets through `CNNZOO_DATA`; when it is unset and the shared data folder
sits beside the project (`../shared/data`), it is used.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

if "CNNZOO_DATA" not in os.environ and (ROOT.parent / "shared" / "data").is_dir():
    os.environ["CNNZOO_DATA"] = str(ROOT.parent / "shared" / "data")


@pytest.fixture
def data_dir() -> Path:
    """The real dataset root (torchvision layout); a missing one is a set-up error, not a skip."""
    value = os.environ.get("CNNZOO_DATA")
    assert value and Path(value).is_dir(), (
        "set CNNZOO_DATA to the dataset root (e.g. ../shared/data) before running the tests"
    )
    return Path(value)


@pytest.fixture(autouse=True)
def _seed_everything():
    """Seed every RNG so tests are repeatable (like captum's BaseTest)."""
    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
