import shutil

import numpy as np
import pytest
import torch

from cnnzoo import zoo
from cnnzoo.errors import DatasetNotFound, InvalidInput
from cnnzoo.zoo.datasets import CIFAR10Binary, dataset_source, get_dataset, resolve_data_dir


def test_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNZOO_DATA", str(tmp_path))
    assert resolve_data_dir("/explicit") == resolve_data_dir("/explicit")
    assert str(resolve_data_dir("/explicit")) == "/explicit"
    assert resolve_data_dir() == tmp_path
    monkeypatch.delenv("CNNZOO_DATA")
    assert str(resolve_data_dir()) == "data"


def test_mnist_from_shared_data(data_dir):
    test = get_dataset("mnist", "test", data_dir=data_dir)
    train = get_dataset("mnist", "train", data_dir=data_dir)
    assert (len(train), len(test)) == (60_000, 10_000)
    image, label = test[0]
    assert image.shape == (1, 28, 28) and label == 7  # the first MNIST test digit is a 7
    counts = torch.bincount(test.targets, minlength=10).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_cifar10_binary_reader(data_dir):
    test = CIFAR10Binary(data_dir, "test")
    assert len(test) == 10_000
    assert test.classes == list(zoo.get_entry("resnet20-cifar10").labels)
    assert np.bincount(test.targets, minlength=10).tolist() == [1000] * 10
    # decode the first record by hand: 1 label byte, then the R, G and B planes, row-major
    raw = np.fromfile(data_dir / "cifar-10-batches-bin" / "test_batch.bin", np.uint8, count=3073)
    image, label = test[0]
    assert label == raw[0]
    expected = raw[1:].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(np.asarray(image), expected)
    tensor, _ = get_dataset("cifar10", "test", data_dir=data_dir)[0]
    assert tensor.shape == (3, 32, 32)


def test_cifar10_train_split_has_50000_images(data_dir):
    assert len(get_dataset("cifar10", "train", data_dir=data_dir)) == 50_000


def _cifar_copy(data_dir, tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for name in ("batches.meta.txt", "MD5SUMS"):
        shutil.copy(data_dir / "cifar-10-batches-bin" / name, folder / name)
    shutil.copy(data_dir / "cifar-10-batches-bin" / "test_batch.bin", folder / "test_batch.bin")
    return folder


def test_cifar10_damaged_file_fails_its_md5sums(data_dir, tmp_path):
    folder = _cifar_copy(data_dir, tmp_path)
    with open(folder / "test_batch.bin", "r+b") as handle:
        handle.seek(5000)
        handle.write(b"\x00\x01\x02")
    with pytest.raises(DatasetNotFound, match="MD5SUMS"):
        get_dataset("cifar10", "test", data_dir=tmp_path)


def test_cifar10_truncated_file_without_md5sums(data_dir, tmp_path):
    folder = _cifar_copy(data_dir, tmp_path)
    (folder / "MD5SUMS").unlink()
    data = (folder / "test_batch.bin").read_bytes()
    (folder / "test_batch.bin").write_bytes(data[:-10])
    with pytest.raises(DatasetNotFound, match="whole number of records"):
        get_dataset("cifar10", "test", data_dir=tmp_path)


@pytest.mark.parametrize(
    "name, folder", [("mnist", "MNIST/raw"), ("cifar10", "cifar-10-batches-bin")]
)
def test_missing_dataset_names_folder_and_remedies(tmp_path, name, folder):
    for offer_download in (False, True):
        with pytest.raises(DatasetNotFound) as err:
            get_dataset(name, "test", data_dir=tmp_path, offer_download=offer_download)
        reason = err.value.reason
        assert str(tmp_path / folder) in reason
        assert "CNNZOO_DATA" in reason and "--data-dir" in reason
        # only callers with a --download flag (eval, train) may suggest it; `cnnzoo job` has none
        assert ("--download" in reason) is offer_download
    assert list(tmp_path.iterdir()) == []  # looking did not create anything


def test_unknown_split_and_dataset():
    with pytest.raises(InvalidInput, match="train, test"):
        get_dataset("mnist", "validation")
    with pytest.raises(InvalidInput, match="mnist, cifar10, imagenet"):
        get_dataset("svhn")


def test_image_folder_of_example_digits():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "examples" / "digits"
    data = get_dataset(
        str(folder), transform=zoo.get_entry("lenet5-mnist").preprocess.torch_transform()
    )
    assert len(data) == 20
    assert data.classes == [str(d) for d in range(10)]
    image, label = data[0]
    assert image.shape == (1, 32, 32) and label == 0


def test_missing_image_folder_says_what_an_image_folder_is(tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    for folder, detail in ((tmp_path / "nope", "no such folder"), (tmp_path / "flat", "class")):
        for offer_download in (False, True):
            with pytest.raises(DatasetNotFound) as err:
                get_dataset(str(folder), offer_download=offer_download)
            reason = err.value.reason
            assert str(folder) in reason and detail in reason
            assert "one subfolder of images per class" in reason
            assert "--download" not in reason  # an image folder cannot be fetched


def test_dataset_source_names_the_copy_without_machine_paths(data_dir, tmp_path):
    source = dataset_source("mnist", data_dir)
    assert source["folder"] == "MNIST"  # relative to the data directory: cards travel
    text = (data_dir / "MNIST" / "SOURCE.txt").read_text(encoding="utf-8").strip()
    assert source["source"] == text
    assert len(source["source_sha256"]) == 64
    outside = tmp_path / "my-images"
    assert dataset_source(str(outside), data_dir) == {"folder": str(outside), "source": None}
