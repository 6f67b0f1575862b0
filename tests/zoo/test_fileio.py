import hashlib
import json
import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from cnnzoo.fileio import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    sha256_file,
)


def test_sha256_file_matches_hashlib(tmp_path):
    path = tmp_path / "blob.bin"
    data = bytes(range(256)) * 5000  # spans several read chunks
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "sub" / "m.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"b": 2})
    assert json.loads(path.read_text()) == {"b": 2}
    assert [p.name for p in path.parent.iterdir()] == ["m.json"]


def test_failed_atomic_write_leaves_old_file_and_no_temp(tmp_path):
    path = tmp_path / "keep.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer crashed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring the previous one."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_get_the_mode_open_gives_not_0600(tmp_path, umask):
    """Files written atomically are readable by others as plain writes are (Triton, compose)."""
    for mask, expected in ((0o022, 0o644), (0o027, 0o640)):
        umask(mask)
        folder = tmp_path / f"mask-{mask:o}"
        with atomic_path(folder / "weights.bin") as tmp:
            tmp.write_bytes(b"\x00" * 10)
        with atomic_path(folder / "model.safetensors") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp))  # writes its own 0600 file over tmp
        atomic_write_bytes(folder / "a.bin", b"a")
        atomic_write_text(folder / "labels.txt", "0\n1\n")
        atomic_write_json(folder / "m.json", {"a": 1})
        (folder / "plain.txt").write_text("plain")  # what open() creates under this umask
        modes = {p.name: _mode(p) for p in folder.iterdir()}
        assert modes == dict.fromkeys(
            ["weights.bin", "model.safetensors", "a.bin", "labels.txt", "m.json", "plain.txt"],
            expected,
        )
