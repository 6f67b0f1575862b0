"""Subsets that keep every class: `--train-subset N`, `--test-subset N`, `cnnzoo eval --subset N`.

Image folders list their images class by class, so "the first N" of one is a single class (a
run on it reaches 1/classes top-1 and says nothing). A subset here holds one image of every
class (when N is at least the class count) and the rest drawn per class in proportion to the
class sizes (largest remainders for the rounding), each class's share chosen with a seeded
permutation, returned in the dataset's own order: the same dataset, N and seed always give the
same images.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cnnzoo.errors import InvalidInput

__all__ = ["stratified_indices", "subset_of"]


def stratified_indices(targets: Any, count: int, seed: int) -> list[int]:
    """`count` indices of `targets` (class labels), spread over the classes in proportion.

    Raises:
        InvalidInput: `count` below 1.
    """
    if count < 1:
        raise InvalidInput(f"a subset needs at least 1 image, got {count}")
    labels = np.asarray(targets).reshape(-1)
    if count >= len(labels):
        return list(range(len(labels)))
    classes, sizes = np.unique(labels, return_counts=True)
    # one image of each class first (when N allows), the rest in proportion to what is left
    base = np.ones_like(sizes) if count >= len(classes) else np.zeros_like(sizes)
    spare, room = count - int(base.sum()), sizes - base
    exact = room * spare / max(int(room.sum()), 1)
    quota = np.floor(exact).astype(int)
    # the images left by rounding down go to the largest remainders (ties: the lower class)
    order = np.argsort(-(exact - quota), kind="stable")
    quota[order[: spare - int(quota.sum())]] += 1
    quota += base
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for label, share in zip(classes, quota, strict=True):
        members = np.flatnonzero(labels == label)
        chosen += members[rng.permutation(len(members))[:share]].tolist()
    return sorted(chosen)


def subset_of(dataset: Any, count: int | None, seed: int = 0) -> Any:
    """`count` images of `dataset` drawn by `stratified_indices` (all of it when None).

    A dataset without `targets` gets a seeded uniform sample instead.
    """
    from torch.utils.data import Subset

    if count is None:
        return dataset
    if count < 1:
        raise InvalidInput(f"a subset needs at least 1 image, got {count}")
    targets = getattr(dataset, "targets", None)
    if targets is None or len(targets) != len(dataset):
        order = np.random.default_rng(seed).permutation(len(dataset))[:count]
        return Subset(dataset, sorted(order.tolist()))
    return Subset(dataset, stratified_indices(targets, count, seed))
