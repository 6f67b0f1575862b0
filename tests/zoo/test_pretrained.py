"""torchvision's weights by name (`--init torchvision[:TAG]`, `--weights torchvision[:TAG]`),
fetched for real from HTTP servers on 127.0.0.1 (never the internet) into a temporary torch
cache: a checked download is kept and reused, a wrong hash or a cut transfer is refused with
nothing left behind, offline is one line naming the file and where to put it, and a run
fine-tuned from such weights records their name and sha256 and takes their preprocessing."""

from __future__ import annotations

import hashlib
import io
import json
from functools import partial
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.models import resnet18
from torchvision.models._api import Weights, WeightsEnum
from torchvision.transforms._presets import ImageClassification

from cnnzoo.cli import main
from cnnzoo.errors import IntegrityError, InvalidInput, Unavailable
from cnnzoo.fileio import sha256_file
from cnnzoo.zoo.pretrained import MIRROR_ENV, PretrainedWeights, pretrained_weights
from cnnzoo.zoo.train import TrainOptions, train

from .fileserver import FileServer, closed_port_url

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """torch's cache in a temporary folder (torch.hub reads $TORCH_HOME on every call)."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    return home


@pytest.fixture(scope="module")
def state_bytes() -> bytes:
    """A ResNet-18 state dict with ImageNet's 1000-class head (seeded; none is downloaded)."""
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(resnet18(weights=None).state_dict(), buffer)
    return buffer.getvalue()


def _member(url: str, *, crop: int = 224, resize: int = 256) -> PretrainedWeights:
    """The weights of a torchvision `WeightsEnum` whose file is served at `url`."""

    class TinyWeights(WeightsEnum):
        IMAGENET1K_V1 = Weights(
            url=url,
            transforms=partial(ImageClassification, crop_size=crop, resize_size=resize),
            meta={"categories": [f"class {i}" for i in range(1000)], "num_params": 11_689_512},
        )
        DEFAULT = IMAGENET1K_V1

    return PretrainedWeights.from_member("resnet18", TinyWeights.DEFAULT)


def _cache_files(home: Path) -> list[str]:
    return sorted(p.relative_to(home).as_posix() for p in home.rglob("*")) if home.exists() else []


def test_weights_are_downloaded_once_checked_and_read_back(torch_home, state_bytes):
    name = f"resnet18-{hashlib.sha256(state_bytes).hexdigest()[:8]}.pth"
    with FileServer({f"/models/{name}": state_bytes}) as server:
        weights = _member(f"{server.url}/models/{name}")
        assert weights.name == "TinyWeights.IMAGENET1K_V1" and weights.file_name == name
        path = weights.fetch(progress=False)
        assert path == torch_home / "hub" / "checkpoints" / name
        assert path.read_bytes() == state_bytes
        state = weights.state_dict(progress=False)  # from the cache: no second request
        assert server.requests == [f"/models/{name}"]
    assert state["fc.weight"].shape == (1000, 512)
    record = weights.record()
    assert record["weights"] == "TinyWeights.IMAGENET1K_V1"
    assert record["sha256"] == hashlib.sha256(state_bytes).hexdigest()


def test_a_wrong_hash_is_refused_and_nothing_is_cached(torch_home, state_bytes):
    with FileServer({"/resnet18-00000000.pth": state_bytes}) as server:
        weights = _member(f"{server.url}/resnet18-00000000.pth")
        with pytest.raises(IntegrityError, match="expected one starting 00000000"):
            weights.fetch(progress=False)
    assert _cache_files(torch_home) == []  # not even the cache folders it made


def test_a_cut_download_is_refused_and_nothing_is_cached(torch_home, state_bytes):
    name = f"resnet18-{hashlib.sha256(state_bytes).hexdigest()[:8]}.pth"
    with FileServer({f"/{name}": state_bytes}, short={f"/{name}": 100_000}) as server:
        weights = _member(f"{server.url}/{name}")
        with pytest.raises(Unavailable) as raised:
            weights.fetch(progress=False)
    reason = raised.value.reason
    assert f"broke off after 100000 of {len(state_bytes)} bytes" in reason
    assert str(weights.path) in reason and name in reason
    assert _cache_files(torch_home) == []


def test_a_damaged_cached_file_is_refused(torch_home):
    weights = pretrained_weights("resnet18", "torchvision")
    weights.path.parent.mkdir(parents=True)
    weights.path.write_bytes(b"not resnet18")
    with pytest.raises(IntegrityError, match="does not match its sha256 prefix f37072fd"):
        weights.fetch(progress=False)


def _error_line(err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and "WARNING" not in line]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"cnnzoo {command}: error: "), err
    return lines[0]


def _colour_folder(root: Path, classes: tuple[str, ...], copies: int) -> Path:
    for name in classes:
        (root / name).mkdir(parents=True)
        (source,) = (EXAMPLES / "cifar10" / name).glob("*.png")
        image = Image.open(source).convert("RGB")
        for k in range(copies):
            image.rotate(3 * k).save(root / name / f"{k}.png")
    return root


def test_offline_init_torchvision_names_the_file_and_where_to_put_it(
    torch_home, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv(MIRROR_ENV, closed_port_url())
    folder = _colour_folder(tmp_path / "pets", ("cat", "ship"), copies=3)
    out = tmp_path / "runs"
    code = main(["train", "resnet18", "--dataset", str(folder), "--val-split", "0.3",
                 "--init", "torchvision", "--out", str(out), "--no-progress"])  # fmt: skip
    line = _error_line(capsys.readouterr().err, "train")
    assert code == 6
    assert "could not download torchvision's ResNet18_Weights.IMAGENET1K_V1 weights" in line
    assert "(resnet18-f37072fd.pth)" in line and "Connection refused" in line
    assert str(torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in line
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in line
    assert not out.exists() and _cache_files(torch_home) == []


def test_a_mirror_serving_other_bytes_under_the_real_name_is_refused(
    torch_home, capsys, monkeypatch, state_bytes
):
    with FileServer({"/resnet18-f37072fd.pth": state_bytes}) as server:
        monkeypatch.setenv(MIRROR_ENV, server.url)
        code = main(["eval", "resnet18-imagenet", "--weights", "torchvision:IMAGENET1K_V1",
                     "--no-progress"])  # fmt: skip
    line = _error_line(capsys.readouterr().err, "eval")
    assert code == 5 and "expected one starting f37072fd" in line
    assert _cache_files(torch_home) == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "lenet5", "--dataset", "mnist", "--init", "torchvision"],
         "lenet5 has no torchvision weights; architectures with them: alexnet, resnet18"),
        (["train", "resnet18", "--dataset", "mnist", "--init", "torchvision:IMAGENET1K_V9"],
         "resnet18's torchvision weights are torchvision:IMAGENET1K_V1, torchvision:DEFAULT"),
        (["export", "resnet50-imagenet", "--weights", "torchvision:IMAGENET1K_V2",
          "--repository", "repo"], "the preprocessing of ResNet50_Weights.IMAGENET1K_V2 are not"),
    ],
)  # fmt: skip
def test_weights_that_cannot_apply_are_refused_before_anything_is_fetched(
    torch_home, tmp_path, capsys, monkeypatch, argv, message
):
    monkeypatch.chdir(tmp_path)
    code = main(argv)
    line = _error_line(capsys.readouterr().err, argv[0])
    assert code == 2 and message in line, line
    assert list(tmp_path.iterdir()) == [] or list(tmp_path.iterdir()) == [torch_home]
    assert _cache_files(torch_home) == []


def test_fine_tuning_from_torchvision_weights_records_them_and_takes_their_preprocessing(
    torch_home, tmp_path, state_bytes
):
    name = f"resnet18-{hashlib.sha256(state_bytes).hexdigest()[:8]}.pth"
    folder = _colour_folder(tmp_path / "pets", ("cat", "ship", "truck"), copies=4)
    with FileServer({f"/{name}": state_bytes}) as server:
        weights = _member(f"{server.url}/{name}", crop=32, resize=36)
        result = train(
            TrainOptions(
                model="resnet18", dataset=str(folder), val_split=0.25, init=weights, epochs=1,
                batch_size=4, out=tmp_path / "runs", progress=False, threads=1,
            )
        )  # fmt: skip
    card = json.loads((result.model_dir / "card.json").read_text())
    init = card["init"]
    assert (init["source"], init["weights"], init["file"]) == (
        "torchvision", "TinyWeights.IMAGENET1K_V1", name,
    )  # fmt: skip
    assert init["sha256"] == hashlib.sha256(state_bytes).hexdigest()
    assert init["replaced"] == ["fc.weight", "fc.bias"] and init["frozen"] == []
    # the layers expect the weights' normalisation; 32-px images take their resize and crop
    pre = card["preprocess"]
    assert (pre["resize"], pre["crop"], pre["mean"], pre["std"]) == (
        36, 32, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225],
    )  # fmt: skip
    assert card["dataset"]["normalisation"] == "the pretrained weights'"
    # all layers trained, the pretrained ones at a tenth of the head's rate
    assert (
        card["recipe"]["backbone_lr_scale"] == 0.1 == card["chosen"]["backbone_lr_scale"]["value"]
    )
    assert (
        card["command"].startswith("cnnzoo train resnet18")
        and "--init torchvision" in card["command"]
    )
    trained = torch.load(io.BytesIO(state_bytes), weights_only=True)
    from safetensors.torch import load_file

    final = load_file(result.model_dir / "model.safetensors")
    moved = [
        k for k in init["kept"] if k.endswith("weight") and not torch.equal(final[k], trained[k])
    ]
    assert moved  # not frozen: the backbone trained too
    assert sha256_file(result.model_dir / "model.safetensors") == card["weights"]["sha256"]


def test_lr_options_are_checked():
    with pytest.raises(InvalidInput, match="--lr must be > 0 or auto"):
        TrainOptions(model="lenet5-mnist", lr="fast")
    with pytest.raises(InvalidInput, match="--backbone-lr-scale must be in"):
        TrainOptions(model="resnet18", dataset="x/", init="torchvision", backbone_lr_scale=2.0)
    with pytest.raises(InvalidInput, match="use one"):
        TrainOptions(model="resnet18", dataset="x/", init="torchvision", freeze=True,
                     backbone_lr_scale=0.5)  # fmt: skip
