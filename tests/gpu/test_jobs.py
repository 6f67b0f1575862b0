"""Interpretability jobs on CUDA give the CPU's results: the Zeiler & Fergus top-k table
(max-activations) in one process, and sharded under `torchrun` with nccl."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serving.helpers import ROOT, cnnzoo

DIGITS = ROOT / "examples" / "digits"
RELATIVE = 1e-4  # GPU and CPU convolutions round differently in the last bits


def _job(folder: Path, device: str, name: str = "") -> Path:
    name = name or device
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(
        f'name = "topk-{name}"\nmodel = "lenet5-mnist"\ndevice = "{device}"\n'
        f'[dataset]\nname = "{DIGITS}"\nbatch_size = 8\n'
        '[[analyses]]\nkind = "max-activations"\nlayers = ["features.c1", "features.c3"]\n'
        "channels = 16\n",
        encoding="utf-8",
    )
    return path


def _table(out: Path) -> dict[str, dict[str, list[dict]]]:
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    (section,) = [a for a in manifest["analyses"] if a["kind"] == "max-activations"]
    return section["tables"]


def _assert_same_tables(got: dict, expected: dict) -> None:
    """Same units (image, y, x) at every rank, values equal to `RELATIVE`; a rank may swap
    only with a neighbour whose value ties with it to that precision."""
    assert got.keys() == expected.keys()
    for layer, channels in expected.items():
        assert got[layer].keys() == channels.keys(), layer
        for channel, entries in channels.items():
            ours = got[layer][channel]
            assert len(ours) == len(entries), (layer, channel)
            for rank, (a, b) in enumerate(zip(ours, entries, strict=True)):
                where = f"{layer} channel {channel} rank {rank + 1}"
                assert a["value"] == pytest.approx(b["value"], rel=RELATIVE, abs=1e-6), where
                if (a["image"], a["y"], a["x"]) != (b["image"], b["y"], b["x"]):
                    tied = [
                        e for e in entries if e["value"] == pytest.approx(b["value"], rel=RELATIVE)
                    ]
                    assert len(tied) > 1, f"{where}: another unit without a tie"


@pytest.mark.gpu
def test_max_activations_on_cuda_give_the_cpus_table(torch_cuda, tmp_path):
    outs = {}
    for name, device in (("cpu", "cpu"), ("cuda", torch_cuda.device)):
        outs[name] = tmp_path / f"out-{name}"
        result = cnnzoo(
            "job", str(_job(tmp_path, device, name)), "--out", str(outs[name]), "--no-progress",
            timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_tables(_table(outs["cuda"]), _table(outs["cpu"]))


@pytest.mark.gpu
def test_the_sharded_job_under_torchrun_with_nccl_gives_the_cpus_table(torch_cuda, tmp_path):
    import torch

    torch_cuda.only_on_a_gpu("nccl")
    gpus = torch.cuda.device_count()
    if gpus < 2:
        pytest.skip(
            f"nccl puts one rank on each GPU and a shard needs two ranks; {gpus} GPU here "
            "(the gloo path is tested on the CPU in tests/interpret/test_jobs.py)"
        )
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    cpu = tmp_path / "out-cpu"
    assert cnnzoo("job", str(_job(tmp_path, "cpu")), "--out", str(cpu), "--no-progress",
                  timeout=600).returncode == 0  # fmt: skip
    sharded = tmp_path / "out-nccl"
    result = subprocess.run(
        [torchrun, "--standalone", f"--nproc-per-node={gpus}", "-m", "cnnzoo", "job",
         str(_job(tmp_path, "cuda", "nccl")), "--out", str(sharded), "--no-progress"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((sharded / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["timings"]["ranks"] == gpus
    _assert_same_tables(_table(sharded), _table(cpu))
