"""Shared test configuration.

Tests read the real datasets through `CNNZOO_DATA`; when it is unset, the shared data folder
beside the project (`../shared/data`) or `./data` (where `make data` downloads) is used. Where
there is no data (a fresh clone), every test that needs it skips with one reason saying how to
get data; with `CNNZOO_REQUIRE_DATA=1` (set by `.ci/run`) a missing dataset fails those tests.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

if "CNNZOO_DATA" not in os.environ:  # CI's shared copy beside the clone, else `make data`'s
    for candidate in (ROOT.parent / "shared" / "data", ROOT / "data"):
        if candidate.is_dir():
            os.environ["CNNZOO_DATA"] = str(candidate)
            break


REQUIRE_DATA = os.environ.get("CNNZOO_REQUIRE_DATA") == "1"
HOW_TO_GET_DATA = (
    "needs the datasets: point CNNZOO_DATA at a folder with MNIST/ and CIFAR-10 "
    "(torchvision layout), or run `make data` to download MNIST, Fashion-MNIST and CIFAR-10"
)


def _missing_data() -> str:
    """What is missing from the data folder, or "" when MNIST and CIFAR-10 are both there."""
    value = os.environ.get("CNNZOO_DATA")
    if not value or not Path(value).is_dir():
        return "CNNZOO_DATA is not set" if not value else f"{value} does not exist"
    root = Path(value)
    missing = [
        name
        for name, folders in (
            ("MNIST", ("MNIST/raw",)),
            ("CIFAR-10", ("cifar-10-batches-bin", "cifar-10-batches-py")),
        )
        if not any((root / f).is_dir() for f in folders)
    ]
    return f"{' and '.join(missing)} not in {root}" if missing else ""


def require(problem: str, how_to_get: str = HOW_TO_GET_DATA) -> None:
    """Skip (or with CNNZOO_REQUIRE_DATA=1 fail) the test when `problem` is not empty."""
    if not problem:
        return
    if REQUIRE_DATA:
        pytest.fail(f"{problem} (CNNZOO_REQUIRE_DATA=1): {how_to_get}", pytrace=False)
    pytest.skip(how_to_get)


def _cifar10_binary_missing() -> str:
    folder = Path(os.environ.get("CNNZOO_DATA") or "data") / "cifar-10-batches-bin"
    return "" if folder.is_dir() else f"no {folder}"


HOW_TO_GET_CIFAR10_BINARY = (
    "needs CIFAR-10 in the binary layout (cifar-10-batches-bin/, "
    "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz) under CNNZOO_DATA"
)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a test that needs data before its fixtures run, from one place, so that pytest's
    summary gathers all such skips in one line."""
    needs = item.fixturenames  # every fixture the test uses, directly or through others
    if "data_dir" in needs or "cifar10_binary" in needs or item.get_closest_marker("data"):
        require(_missing_data())
    if "cifar10_binary" in needs:
        require(_cifar10_binary_missing(), HOW_TO_GET_CIFAR10_BINARY)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real dataset root (torchvision layout with MNIST and CIFAR-10); a test that uses it,
    directly or through another fixture, skips where there is none (see `require`)."""
    return Path(os.environ["CNNZOO_DATA"])


@pytest.fixture(scope="session")
def cifar10_binary(data_dir: Path) -> Path:
    """CIFAR-10 in the official binary layout (`make data` fetches the python one)."""
    return data_dir / "cifar-10-batches-bin"


@pytest.fixture(autouse=True)
def _seed_everything():
    """Seed every RNG so tests are repeatable (like captum's BaseTest)."""
    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
