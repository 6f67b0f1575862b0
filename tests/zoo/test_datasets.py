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


def test_cifar10_binary_reader(data_dir, cifar10_binary):
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


def test_cifar10_damaged_file_fails_its_md5sums(data_dir, cifar10_binary, tmp_path):
    folder = _cifar_copy(data_dir, tmp_path)
    with open(folder / "test_batch.bin", "r+b") as handle:
        handle.seek(5000)
        handle.write(b"\x00\x01\x02")
    with pytest.raises(DatasetNotFound, match="MD5SUMS"):
        get_dataset("cifar10", "test", data_dir=tmp_path)


def test_cifar10_truncated_file_without_md5sums(data_dir, cifar10_binary, tmp_path):
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
    with pytest.raises(InvalidInput, match="mnist, fashion-mnist, cifar10, cifar100, imagenet"):
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


def _idx(path, array: np.ndarray) -> None:
    """An IDX file (MNIST's format): magic (0, 0, uint8 = 8, rank), big-endian sizes, data."""
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_through_torchvisions_reader(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.random.default_rng(0).integers(0, 256, (12, 28, 28))
    labels = np.arange(12) % 10
    for prefix in ("train", "t10k"):
        _idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    data = get_dataset("fashion-mnist", "train", data_dir=tmp_path)
    assert len(data) == 12 and data.classes[0] == "T-shirt/top"
    image, label = data[3]
    assert image.shape == (1, 28, 28) and label == 3
    assert torch.equal(
        (image[0] * 255).round().to(torch.uint8), torch.from_numpy(images[3]).to(torch.uint8)
    )
    with pytest.raises(DatasetNotFound, match="FashionMNIST/raw"):
        get_dataset("fashion-mnist", "test", data_dir=tmp_path / "none", offer_download=True)


def _pickle(path, obj) -> None:
    import pickle

    path.write_bytes(pickle.dumps(obj))


def test_cifar10_python_layout_gives_the_binary_layouts_images(
    data_dir, cifar10_binary, tmp_path, monkeypatch
):
    """torchvision's CIFAR-10 reader (python layout, md5-checked) on the first test images of
    the binary copy: the same pixels, labels and class names as our binary reader."""
    import hashlib

    from torchvision.datasets import CIFAR10

    binary = CIFAR10Binary(data_dir, "test")
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rows = binary.data[:40].transpose(0, 3, 1, 2).reshape(40, -1)  # 1024 R, G, B values each
    batch = {"data": rows, "labels": list(binary.targets[:40])}
    for name in [n for n, _ in CIFAR10.train_list] + ["test_batch"]:
        _pickle(folder / name, batch)
    _pickle(folder / "batches.meta", {"label_names": binary.classes})

    def md5(name):
        return hashlib.md5((folder / name).read_bytes(), usedforsecurity=False).hexdigest()

    # the files are ours, not the official ones: give torchvision their checksums
    monkeypatch.setattr(CIFAR10, "train_list", [[n, md5(n)] for n, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5("test_batch")]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5("batches.meta")})
    python = get_dataset("cifar10", "test", data_dir=tmp_path)
    assert np.array_equal(python.data, binary.data[:40])
    assert python.targets == binary.targets[:40] and python.classes == binary.classes
    assert len(get_dataset("cifar10", "train", data_dir=tmp_path)) == 5 * 40
    (folder / "test_batch").write_bytes(b"damaged")
    with pytest.raises(DatasetNotFound, match="cifar-10-batches-py"):
        get_dataset("cifar10", "test", data_dir=tmp_path)


def test_cifar100_python_layout_reads_its_fine_labels(tmp_path, monkeypatch):
    import hashlib

    from torchvision.datasets import CIFAR100

    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rows = np.random.default_rng(1).integers(0, 256, (6, 3072), dtype=np.uint8)
    for name in ("train", "test"):
        _pickle(folder / name, {"data": rows, "fine_labels": [0, 1, 2, 99, 98, 97]})
    names = [f"class-{i}" for i in range(100)]
    _pickle(folder / "meta", {"fine_label_names": names})

    def md5(name):
        return hashlib.md5((folder / name).read_bytes(), usedforsecurity=False).hexdigest()

    monkeypatch.setattr(CIFAR100, "train_list", [["train", md5("train")]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", md5("test")]])
    monkeypatch.setattr(CIFAR100, "meta", {**CIFAR100.meta, "md5": md5("meta")})
    data = get_dataset("cifar100", "train", data_dir=tmp_path)
    assert len(data) == 6 and data.classes == names and data.targets[3] == 99
    image, label = data[3]
    assert image.shape == (3, 32, 32) and label == 99
    with pytest.raises(DatasetNotFound, match="cifar-100-python"):
        get_dataset("cifar100", "test", data_dir=tmp_path / "none")


def test_channel_statistics_of_the_named_training_sets(data_dir):
    from cnnzoo.zoo.datasets import channel_stats

    # this MNIST copy's SOURCE.txt: train mean 0.1306, std 0.3082
    assert channel_stats(get_dataset("mnist", "train", data_dir=data_dir)) == ((0.1306,), (0.3082,))
    mean, std = channel_stats(get_dataset("cifar10", "train", data_dir=data_dir))
    expected = zoo.get_entry("resnet20-cifar10").preprocess  # the usual CIFAR-10 figures
    assert np.allclose(mean, expected.mean, atol=0.01) and np.allclose(std, expected.std, atol=0.01)
