"""INTERPRET-FACTS 15: streaming top-k per channel equals brute force, ignores batch size and data
order, and its entries reproduce when the stored image is run again."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnzoo.interpret.scan import batch_ranges, iterate_batches, scan_topk
from cnnzoo.interpret.topk import Entry, TopK, channel_maxima


def brute_force(
    values: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, k: int
) -> list[list[Entry]]:
    """Per channel: sort every image's entry by (value desc, image asc), keep k."""
    tables = []
    for c in range(values.shape[1]):
        rows = [
            Entry(float(values[i, c]), i, int(ys[i, c]), int(xs[i, c]))
            for i in range(values.shape[0])
        ]
        tables.append(sorted(rows, key=lambda e: (-e.value, e.image))[:k])
    return tables


def stream(values, ys, xs, k: int, batch_size: int, order: list[int] | None = None) -> TopK:
    top = TopK.empty(values.shape[1], k)
    batches = batch_ranges(list(range(values.shape[0])), batch_size)
    if order is not None:
        batches = [batches[i] for i in order]
    for batch in batches:
        idx = torch.tensor(batch)
        top.update(values[idx], idx, ys[idx], xs[idx])
    return top


@pytest.fixture
def tied_activations() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Values on a coarse grid: many exact ties, so the tie-break decides.
    values = torch.randint(0, 6, (300, 4)).double() / 2
    ys = torch.randint(0, 7, (300, 4))
    xs = torch.randint(0, 7, (300, 4))
    return values, ys, xs


@pytest.mark.parametrize("batch_size", [1, 7, 64, 300])
def test_streaming_equals_brute_force(tied_activations, batch_size: int) -> None:
    values, ys, xs = tied_activations
    top = stream(values, ys, xs, k=9, batch_size=batch_size)
    expected = brute_force(values, ys, xs, k=9)
    assert [top.entries(c) for c in range(4)] == expected


def test_independent_of_batch_size_and_order(tied_activations) -> None:
    values, ys, xs = tied_activations
    reference = stream(values, ys, xs, k=9, batch_size=300)
    for batch_size in (1, 5, 33, 128):
        count = len(batch_ranges(list(range(300)), batch_size))
        order = list(range(count))
        random.Random(batch_size).shuffle(order)
        assert stream(values, ys, xs, k=9, batch_size=batch_size, order=order).equals(reference)


def test_merge_of_shards_equals_one_pass(tied_activations) -> None:
    values, ys, xs = tied_activations
    reference = stream(values, ys, xs, k=9, batch_size=20)
    shards = [TopK.empty(4, 9) for _ in range(3)]
    for b, batch in enumerate(batch_ranges(list(range(300)), 20)):
        idx = torch.tensor(batch)
        shards[b % 3].update(values[idx], idx, ys[idx], xs[idx])
    assert shards[2].merge(shards[0]).merge(shards[1]).equals(reference)


@st.composite
def activations_and_batching(draw):
    """Per-image channel maxima on a coarse grid (many exact ties, some channels all equal),
    k, and a batching of the images: batch size, the order the batches arrive in, and a split
    of the batches into shards (as torchrun ranks would see them)."""
    images = draw(st.integers(1, 40))
    channels = draw(st.integers(1, 4))
    grid = st.integers(-3, 3).map(lambda v: v / 2)
    values = draw(st.lists(grid, min_size=images * channels, max_size=images * channels))
    positions = st.lists(st.integers(0, 6), min_size=images * channels, max_size=images * channels)
    k = draw(st.integers(1, 12))
    batch_size = draw(st.integers(1, images))
    count = len(batch_ranges(list(range(images)), batch_size))
    order = draw(st.permutations(range(count)))
    shards = draw(st.integers(1, 3))
    return (
        torch.tensor(values, dtype=torch.float64).view(images, channels),
        torch.tensor(draw(positions)).view(images, channels),
        torch.tensor(draw(positions)).view(images, channels),
        k,
        batch_size,
        list(order),
        shards,
    )


@settings(max_examples=150, deadline=None, database=None)
@given(activations_and_batching())
def test_property_streaming_and_sharded_equal_brute_force(case) -> None:
    values, ys, xs, k, batch_size, order, shards = case
    expected = brute_force(values, ys, xs, k)
    channels = values.shape[1]
    top = stream(values, ys, xs, k, batch_size, order)
    assert [top.entries(c) for c in range(channels)] == expected
    # The same batches split over shards (batch b to shard b mod N), merged in any order.
    tables = [TopK.empty(channels, k) for _ in range(shards)]
    batches = batch_ranges(list(range(values.shape[0])), batch_size)
    for position, b in enumerate(order):
        idx = torch.tensor(batches[b])
        tables[position % shards].update(values[idx], idx, ys[idx], xs[idx])
    merged = tables[-1]
    for table in tables[:-1]:
        merged = merged.merge(table)
    assert merged.equals(top)


def test_fewer_images_than_k() -> None:
    top = TopK.empty(2, 9)
    top.update(
        torch.tensor([[1.0, 2.0], [3.0, 2.0]]),
        torch.tensor([5, 6]),
        torch.zeros(2, 2).long(),
        torch.zeros(2, 2).long(),
    )
    assert [e.image for e in top.entries(0)] == [6, 5]
    assert [e.image for e in top.entries(1)] == [5, 6]  # tie: lower index first


def test_channel_maxima_first_position_on_ties() -> None:
    out = torch.zeros(1, 2, 3, 4)
    out[0, 0, 1, 2] = 5
    out[0, 0, 2, 3] = 5  # same value later in row-major order
    out[0, 1] = -1  # all equal: the first position
    values, ys, xs = channel_maxima(out)
    assert values.tolist() == [[5.0, -1.0]]
    assert ys.tolist() == [[1, 0]] and xs.tolist() == [[2, 0]]


# -- on the real model and data ----------------------------------------------------------------


@pytest.fixture(scope="module")
def lenet_and_mnist(data_dir):
    from cnnzoo import zoo
    from cnnzoo.zoo.datasets import get_dataset

    entry = zoo.get_entry("lenet5-mnist")
    model = zoo.build_model("lenet5-mnist", weights="default")
    dataset = get_dataset("mnist", "test", transform=entry.preprocess.torch_transform())
    return model, dataset


LAYERS = {"features.c1": list(range(6)), "features.c3": [0, 3, 7, 15], "features.relu5": [1, 2]}


def test_scan_ignores_batch_size_and_order_on_mnist(lenet_and_mnist) -> None:
    model, dataset = lenet_and_mnist
    indices = list(range(300))
    reference = scan_topk(model, LAYERS, iterate_batches(dataset, batch_ranges(indices, 300)), k=9)
    batches = batch_ranges(indices, 40)
    random.Random(1).shuffle(batches)
    shuffled = scan_topk(model, LAYERS, iterate_batches(dataset, batches), k=9)
    for name in LAYERS:
        assert torch.equal(shuffled[name].images, reference[name].images), name
        assert torch.allclose(shuffled[name].values, reference[name].values, rtol=1e-6, atol=1e-6)


def test_stored_image_reproduces_its_activation(lenet_and_mnist) -> None:
    model, dataset = lenet_and_mnist
    tops = scan_topk(
        model, LAYERS, iterate_batches(dataset, batch_ranges(list(range(200)), 64)), k=3
    )
    for name, channels in LAYERS.items():
        layer = model.get_submodule(name)
        for row, channel in enumerate(channels):
            for entry in tops[name].entries(row):
                captured: list[torch.Tensor] = []
                handle = layer.register_forward_hook(
                    lambda m, a, out, store=captured: store.append(out.clone())
                )
                with torch.no_grad():
                    model(dataset[entry.image][0].unsqueeze(0))
                handle.remove()
                fmap = captured[0][0, channel]
                assert float(fmap[entry.y, entry.x]) == pytest.approx(
                    entry.value, rel=1e-5, abs=1e-6
                )
                assert float(fmap.max()) == pytest.approx(entry.value, rel=1e-5, abs=1e-6)


def test_nan_never_enters() -> None:
    top = TopK.empty(1, 2)
    zeros = torch.zeros(3, 1).long()
    top.update(
        torch.tensor([[float("nan")], [1.0], [float("nan")]]), torch.tensor([0, 1, 2]), zeros, zeros
    )
    assert [(e.value, e.image) for e in top.entries(0)] == [(1.0, 1)]
