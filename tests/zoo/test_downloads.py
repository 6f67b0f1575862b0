"""`--download`, `make data` and the file fetcher, against real HTTP servers on 127.0.0.1.

Offline (nothing listening), the command fails with one line naming the file, where it was
fetched from and why, and leaves nothing behind; a transfer cut short or a file failing its md5
is refused the same way; and a complete, checked download lands in the layout the readers take.
"""

from __future__ import annotations

import gzip
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from cnnzoo.cli import main
from cnnzoo.errors import IntegrityError, Unavailable
from cnnzoo.zoo.datasets import get_dataset
from cnnzoo.zoo.downloads import MIRROR_ENV, DatasetFiles, dataset_files, download_dataset
from cnnzoo.zoo.fetch import TransferFailed, fetch_file

from .fileserver import FileServer, closed_port_url

ROOT = Path(__file__).resolve().parents[2]


def _files_in(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_offline_download_is_one_line_and_leaves_no_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, closed_port_url())
    data = tmp_path / "data"
    code = main(["train", "lenet5-mnist", "--download", "--data-dir", str(data),
                 "--out", str(tmp_path / "runs"), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 6 and len(lines) == 1, err
    line = lines[0]
    assert line.startswith("cnnzoo train: error: could not download MNIST: ")
    assert "train-images-idx3-ubyte.gz from http://127.0.0.1:" in line
    assert "Connection refused" in line and "nothing was written" in line
    assert str(data / "MNIST" / "raw") in line and MIRROR_ENV in line
    assert "pass --download" not in line  # it was passed
    assert not data.exists() and not (tmp_path / "runs").exists()


def test_a_data_folder_that_was_there_stays_and_stays_empty(tmp_path, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, closed_port_url())
    data = tmp_path / "data"
    data.mkdir()
    for name in ("fashion-mnist", "cifar10", "cifar100"):
        with pytest.raises(Unavailable, match="Connection refused"):
            get_dataset(name, "train", data_dir=data, download=True, offer_download=True)
    assert data.is_dir() and _files_in(data) == []


def test_make_data_offline_prints_one_line_without_a_traceback(tmp_path):
    target = tmp_path / "data"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "download_data.py"), str(target)],
        capture_output=True, text=True, timeout=120,
        env={**_clean_env(), MIRROR_ENV: closed_port_url()},
    )  # fmt: skip
    assert done.returncode == 6, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("download_data: error: could not download MNIST: ")
    assert not target.exists()


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != MIRROR_ENV}


def _gz_idx_files(data_dir: Path) -> dict[str, bytes]:
    """MNIST's test files of this data copy, gzipped as the official ones are (the train
    files are the first 100 test images, to keep the test small)."""
    raw = data_dir / "MNIST" / "raw"
    images = (raw / "t10k-images-idx3-ubyte").read_bytes()
    labels = (raw / "t10k-labels-idx1-ubyte").read_bytes()
    small_images = images[:4] + (100).to_bytes(4, "big") + images[8:16] + images[16 : 16 + 78400]
    small_labels = labels[:4] + (100).to_bytes(4, "big") + labels[8:108]
    plain = {
        "train-images-idx3-ubyte": small_images,
        "train-labels-idx1-ubyte": small_labels,
        "t10k-images-idx3-ubyte": images,
        "t10k-labels-idx1-ubyte": labels,
    }
    return {f"/{name}.gz": gzip.compress(body, compresslevel=1) for name, body in plain.items()}


def _mnist_files(served: dict[str, bytes], bases: tuple[str, ...]) -> DatasetFiles:
    official = dataset_files("mnist")
    files = tuple(
        (name, hashlib.md5(served[f"/{name}"], usedforsecurity=False).hexdigest())
        for name, _ in official.files
    )
    return DatasetFiles(official.title, official.folder, files, bases)


def test_a_checked_download_lands_in_the_layout_torchvision_reads(tmp_path, data_dir):
    served = _gz_idx_files(data_dir)
    with FileServer(served) as server:
        # the first source is down: the next one is tried
        files = _mnist_files(served, (closed_port_url(), server.url + "/"))
        folder = download_dataset("mnist", tmp_path / "data", files=files, progress=False)
    assert folder == tmp_path / "data" / "MNIST" / "raw"
    assert _files_in(tmp_path / "data") == [
        "MNIST", "MNIST/raw",
        *sorted(f"MNIST/raw/{n}" for name in served for n in (name[1:], name[1:-3])),
    ]  # fmt: skip
    train = get_dataset("mnist", "train", data_dir=tmp_path / "data")
    test = get_dataset("mnist", "test", data_dir=tmp_path / "data")
    assert len(train) == 100 and len(test) == 10_000
    # there already: not fetched again
    with FileServer({}) as server:
        download_dataset("mnist", tmp_path / "data", files=_mnist_files(served, (server.url,)))
        assert server.requests == []


def test_a_file_failing_its_md5_or_cut_short_is_refused_and_nothing_is_kept(tmp_path, data_dir):
    served = _gz_idx_files(data_dir)
    good = _mnist_files(served, ("",))
    first = good.files[0][0]
    for bad_served, short, error, words in (
        ({**served, f"/{first}": b"not the file"}, {}, IntegrityError, "failed its md5 check"),
        (served, {f"/{first}": 1000}, Unavailable, "broke off after 1000 of"),
    ):
        with FileServer(bad_served, short) as server:
            files = DatasetFiles(good.title, good.folder, good.files, (server.url,))
            with pytest.raises(error, match=words) as raised:
                download_dataset("mnist", tmp_path / "data", files=files, progress=False)
        assert first in raised.value.reason and "nothing was written" in raised.value.reason
        assert not (tmp_path / "data").exists()


def test_fetch_file_replaces_nothing_when_the_transfer_breaks(tmp_path):
    dest = tmp_path / "weights.pth"
    dest.write_bytes(b"old")
    body = b"x" * 100_000
    with FileServer({"/w": body}, short={"/w": 5000}) as server:
        with pytest.raises(TransferFailed) as raised:
            fetch_file(server.url + "/w", dest, progress=False)
        assert "broke off after 5000 of 100000 bytes" in raised.value.cause
        with pytest.raises(TransferFailed, match="HTTP 404"):
            fetch_file(server.url + "/missing", dest, progress=False)
    sha = hashlib.sha256(body).hexdigest()
    with FileServer({"/w": body}) as server:
        with pytest.raises(IntegrityError, match="expected one starting 00000000"):
            fetch_file(server.url + "/w", dest, sha256_prefix="00000000", progress=False)
        assert dest.read_bytes() == b"old" and _files_in(tmp_path) == ["weights.pth"]
        fetch_file(server.url + "/w", dest, sha256_prefix=sha[:8], progress=False)
    assert dest.read_bytes() == body and _files_in(tmp_path) == ["weights.pth"]
