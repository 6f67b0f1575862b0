"""Subsets keep every class: an image folder lists its images class by class, so "the first N"
would be one class. Quotas are checked against arithmetic done by hand."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from cnnzoo.cli import main
from cnnzoo.errors import InvalidInput
from cnnzoo.zoo.datasets import get_dataset
from cnnzoo.zoo.evaluate import limit_dataset
from cnnzoo.zoo.subsets import stratified_indices

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(
    "count, quotas",
    [
        # sizes 6, 3, 1: one each, then 2 more over rooms 5, 2, 0 -> 1.43, 0.57, 0 -> 2, 2, 1
        (5, [2, 2, 1]),
        # fewer than the classes: 2 over sizes 6, 3, 1 -> 1.2, 0.6, 0.2 -> 1, 1, 0
        (2, [1, 1, 0]),
        # 7: one each, 4 over rooms 5, 2, 0 -> 2.86, 1.14 -> 3, 1 -> 4, 2, 1
        (7, [4, 2, 1]),
        (10, [6, 3, 1]),
        (99, [6, 3, 1]),
    ],
)
def test_quotas_per_class(count, quotas):
    targets = [0] * 6 + [1] * 3 + [2]
    chosen = stratified_indices(targets, count, seed=0)
    assert chosen == sorted(set(chosen))
    assert [Counter(targets[i] for i in chosen)[c] for c in range(3)] == quotas


def test_the_draw_is_fixed_by_the_seed():
    targets = [c for c in range(4) for _ in range(50)]
    first = stratified_indices(targets, 20, seed=1)
    assert first == stratified_indices(targets, 20, seed=1)
    assert first != stratified_indices(targets, 20, seed=2)
    assert Counter(targets[i] for i in first) == {0: 5, 1: 5, 2: 5, 3: 5}
    with pytest.raises(InvalidInput, match="at least 1 image"):
        stratified_indices(targets, 0, seed=0)


@pytest.fixture
def sorted_folder(tmp_path) -> Path:
    """train/ and test/ of five classes, listed class by class as every image folder is."""
    for split, copies in (("train", 4), ("test", 2)):
        for digit in range(5):
            folder = tmp_path / "digits" / split / f"d{digit}"
            folder.mkdir(parents=True)
            sources = sorted((EXAMPLES / "digits" / str(digit)).glob("*.png"))
            for k in range(copies):
                Image.open(sources[k % len(sources)]).save(folder / f"{k}.png")
    return tmp_path / "digits"


def test_a_subset_of_a_class_sorted_folder_holds_every_class(sorted_folder, tmp_path, capsys):
    data = get_dataset(str(sorted_folder), "train")
    assert data.targets[:4] == [0, 0, 0, 0]  # the first N would be one class
    subset = limit_dataset(data, 10, seed=0)
    assert Counter(data.targets[i] for i in subset.indices) == {c: 2 for c in range(5)}
    code = main(["train", "lenet5", "--dataset", str(sorted_folder), "--train-subset", "10",
                 "--test-subset", "5", "--epochs", "1", "--out", str(tmp_path / "runs"),
                 "--threads", "1", "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    card = json.loads((tmp_path / "runs" / "lenet5-digits" / "card.json").read_text())
    assert card["dataset"]["n_train"] == 10 and card["metrics"]["n"] == 5
    assert None not in card["metrics"]["per_class"].values()  # each class has a test image
