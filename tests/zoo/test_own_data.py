"""Bring your own data: `cnnzoo train ARCH --dataset DIR`, and the run folder as a model.

The image folders are written from the real PNGs the project ships (MNIST test digits, CIFAR-10
test images), shifted by a few pixels to make more of them, so these tests need no dataset.
One run on a digits folder goes through train, eval, export and a real server answering
Classify with the folder's class names; a torchvision ResNet-18 state dict (saved from a seeded
random init: none can be downloaded here) is fine-tuned with a frozen backbone; and each bad
input is refused by the real CLI with one line, a non-zero exit and nothing written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cnnzoo import zoo
from cnnzoo.cli import main
from cnnzoo.fileio import sha256_file
from cnnzoo.zoo.card import validate_card
from cnnzoo.zoo.repository import ModelRepository

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
WORDS = ("zero", "one", "two", "three", "four")


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _error_line(err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and "WARNING" not in line]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"cnnzoo {command}: error: "), err
    return lines[0]


def _shifted(image: Image.Image, count: int) -> list[Image.Image]:
    """`count` copies of a real image moved by up to 3 px (the background fills the gap)."""
    pixels = np.asarray(image)
    return [
        Image.fromarray(np.roll(pixels, (dy, dx), axis=(0, 1)))
        for dy, dx in [(0, 0), (1, 0), (0, 1), (-1, 0), (0, -1), (2, 2), (-2, 1), (1, -3)][:count]
    ]


def _write_digits(root: Path, split: str, digits: range, copies: int) -> None:
    for digit in digits:
        folder = root / split / WORDS[digit]
        folder.mkdir(parents=True)
        for n, source in enumerate(sorted((EXAMPLES / "digits" / str(digit)).glob("*.png"))):
            for k, image in enumerate(_shifted(Image.open(source), copies)):
                image.save(folder / f"{n}-{k}.png")


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory) -> Path:
    """train/ and test/ of five word-named classes of real digits, with the mess users have:
    a notes file, a truncated PNG, a corrupt one and an RGB image of another size."""
    root = tmp_path_factory.mktemp("digits") / "my-digits"
    _write_digits(root, "train", range(5), copies=8)
    _write_digits(root, "test", range(5), copies=2)
    (root / "train" / "zero" / "notes.txt").write_text("not an image")
    good = (root / "train" / "one" / "0-0.png").read_bytes()
    (root / "train" / "one" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "train" / "two" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    colour = Image.open(root / "train" / "three" / "0-0.png").convert("RGB").resize((30, 30))
    colour.save(root / "train" / "three" / "colour.png")
    return root


@pytest.fixture(scope="module")
def digit_run(digit_folder, tmp_path_factory) -> Path:
    """`cnnzoo train lenet5 --dataset my-digits` for eight short epochs: its run folder."""
    out = tmp_path_factory.mktemp("runs")
    code = main(
        ["train", "lenet5", "--dataset", str(digit_folder), "--out", str(out), "--epochs", "8",
         "--batch-size", "8", "--threads", "1", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    return out / "lenet5-my-digits"


def test_an_image_folder_trains_into_a_run_folder_whose_card_tells_the_data(
    digit_run, digit_folder
):
    assert sorted(p.name for p in digit_run.iterdir()) == [
        "best.safetensors",
        "card.json",
        "confusion.png",
        "epochs",
        "model.safetensors",
    ]
    card = json.loads((digit_run / "card.json").read_text())
    assert validate_card(card) == []
    assert card["model"] == "lenet5-my-digits" and card["arch"] == "lenet5"
    assert card["labels"] == sorted(WORDS)  # class folders, in their sorted order
    data = card["dataset"]
    assert (data["name"], data["folder"]) == ("my-digits", str(digit_folder))
    assert (data["train_split"], data["test_split"]) == ("train", "test")
    assert (data["n_train"], data["n_test"]) == (5 * 2 * 8 + 1, 5 * 2 * 2)  # + the RGB one
    images = data["images"]
    assert images["skipped"] == 2 and images["ignored_files"] == 1
    assert sorted(f.split(":")[0] for f in images["skipped_files"]) == [
        "train/one/truncated.png",
        "train/two/corrupt.png",
    ]
    assert images["colour"] == "L" and images["converted_from_RGB"] == 1
    assert images["common_size"] == [28, 28] and images["resized"] == 1
    # 28x28 digits go into LeNet-5's 32x32 input padded by 2, as the MNIST preset does
    pre = card["preprocess"]
    assert (pre["colour"], pre["resize"], pre["crop"], pre["pad"]) == ("L", 28, 28, 2)
    assert 0.05 < pre["mean"][0] < 0.3 and 0.2 < pre["std"][0] < 0.45  # measured on train/
    assert data["normalisation"] == "measured on the training split"
    assert card["metrics"]["top1"] > 0.6  # five classes: chance is 0.2
    # chosen from the data (the flags fixed epochs and batch size): each with its reason
    chosen = card["chosen"]
    assert sorted(chosen) == ["augment", "lr"]
    assert chosen["augment"]["value"] == card["recipe"]["augment"] == "small-affine"
    assert "grey-scale" in chosen["augment"]["why"]
    assert chosen["lr"]["value"] == card["recipe"]["lr"] == chosen["lr"]["range_test"]["lr"]
    assert card["recipe"]["schedule"] == "onecycle" and card["recipe"]["epochs"] == 8
    # the best epoch on the held-out split beside the last
    selection = card["selection"]
    best = max(card["history"], key=lambda r: r["test_top1"])
    assert selection["best_epoch"] == best["epoch"] and selection["best_top1"] == best["test_top1"]
    assert selection["last_top1"] == card["metrics"]["top1"] and "test" in selection["metric"]
    assert selection["best_sha256"] == sha256_file(digit_run / "best.safetensors")
    assert (digit_run / "best.safetensors").read_bytes() == (
        digit_run / "epochs" / f"epoch_{best['epoch']:03d}.safetensors"
    ).read_bytes()
    assert "model.safetensors (the last epoch)" in selection["exported"]


def test_the_run_folder_is_a_model_for_eval_build_and_layers(digit_run, capsys):
    code, out, _ = _run(capsys, "eval", str(digit_run), "--json")
    assert code == 0
    report = json.loads(out)
    card = json.loads((digit_run / "card.json").read_text())
    assert report["model"] == "lenet5-my-digits" and report["n"] == 20
    assert report["top1"] == card["metrics"]["top1"]
    assert list(report["per_class"]) == sorted(WORDS)
    entry = zoo.get_entry(str(digit_run))
    assert entry.labels == tuple(sorted(WORDS)) and entry.input_shape == (1, 32, 32)
    model = zoo.build_model(str(digit_run), weights="default")
    stored = load_file(digit_run / "model.safetensors")
    assert torch.equal(model.features.c1.weight, stored["features.c1.weight"])
    code, out, _ = _run(capsys, "layers", str(digit_run))
    assert code == 0 and "features.c5" in out


def test_the_exported_run_serves_classify_with_its_class_names(digit_run, tmp_path, capsys):
    from cnnzoo.serving.client import ZooClient
    from tests.serving.helpers import ServerProcess

    repository = tmp_path / "repo"
    code, out, _ = _run(capsys, "export", str(digit_run), "--repository", str(repository),
                        "--explanations", "none")  # fmt: skip
    assert code == 0 and out.startswith("lenet5-my-digits: version 1")
    repo = ModelRepository(repository)
    assert repo.models() == ["lenet5-my-digits"]
    assert repo.labels("lenet5-my-digits") == sorted(WORDS)
    manifest = repo.verify("lenet5-my-digits", 1)
    assert manifest.arch == "lenet5" and manifest.parity["inputs"] == "dataset"
    config = repo.config("lenet5-my-digits")
    assert config.output[0].label_filename == "labels.txt" and list(config.output[0].dims) == [5]
    # clients read the config and the ONNX metadata: the folder's name, never its path
    assert config.parameters["dataset"].string_value == "my-digits"
    import onnx

    onnx_file = onnx.load(str(repository / "lenet5-my-digits" / "1" / "model.onnx"))
    written = (repository / "lenet5-my-digits" / "config.pbtxt").read_text()
    written += json.dumps({p.key: p.value for p in onnx_file.metadata_props})
    assert str(digit_run.parents[1]) not in written and str(Path.home()) not in written
    # the PyTorch model of the version rebuilds from the repository alone (Explain needs it)
    torch_model = repo.torch_model("lenet5-my-digits", 1)
    assert torch_model.classifier.output.out_features == 5

    images = [p.read_bytes() for p in sorted((EXAMPLES / "digits").glob("[0-4]/*.png"))]
    server = ServerProcess(repository, tmp_path / "server.log").wait_ready()
    try:
        with ZooClient(server.target) as client:
            answers = client.classify(images, "lenet5-my-digits", top_k=5)
    finally:
        assert server.stop() == 0
    words = [WORDS[d] for d in range(5) for _ in range(2)]
    assert [{p.label for p in top} for top in answers] == [set(WORDS)] * 10
    correct = sum(top[0].label == w for top, w in zip(answers, words, strict=True))
    assert correct >= 6


def test_explain_and_a_job_file_take_the_run_folder(digit_run, digit_folder, tmp_path, capsys):
    image = next((EXAMPLES / "digits" / "2").glob("*.png"))
    out_file = tmp_path / "map.png"
    code, out, _ = _run(capsys, "explain", str(image), "--model", str(digit_run),
                        "--method", "guided-backprop", "--out", str(out_file))  # fmt: skip
    assert code == 0 and "(two)" in out  # the class explained is named by its folder
    with Image.open(out_file) as drawn:
        assert drawn.size[0] >= 32
    # a job file names the run folder relative to itself, as it does weights and datasets
    job = tmp_path / "jobs" / "mine.toml"
    job.parent.mkdir()
    relative = Path("..") / digit_run.relative_to(digit_run.parents[1])
    job.write_text(
        f'name = "mine"\nmodel = "{relative.as_posix()}"\n\n'
        f'[dataset]\nname = "{digit_folder / "test"}"\n\n'
        '[[analyses]]\nkind = "filters"\n\n'
        '[[analyses]]\nkind = "evolution"\nepochs = [1, 8]\nchannels = 2\n'
    )
    (tmp_path / digit_run.parent.name).symlink_to(digit_run.parent)
    code, out, err = _run(capsys, "job", str(job), "--out", str(tmp_path / "out"), "--no-progress")
    assert code == 0, err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["model"]["name"] == relative.as_posix()
    assert [a["kind"] for a in manifest["analyses"]] == ["filters", "evolution"]
    assert len(manifest["analyses"][1]["files"]) >= 1  # drawn from the run's epochs 1 and 8


def _cifar_folder(root: Path, classes: tuple[str, ...], copies: int) -> Path:
    for name in classes:
        (root / name).mkdir(parents=True)
        (source,) = (EXAMPLES / "cifar10" / name).glob("*.png")
        for k, image in enumerate(_shifted(Image.open(source).convert("RGB"), copies)):
            image.save(root / name / f"{k}.png")
            image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / name / f"{k}-flip.png")
    return root


def test_fine_tuning_a_torchvision_resnet18_state_dict_with_a_frozen_backbone(tmp_path, capsys):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    source = resnet18(weights=None).state_dict()  # ImageNet's layout: 1000-class head
    init = tmp_path / "resnet18.pth"
    torch.save(source, init)
    folder = _cifar_folder(tmp_path / "pets", ("airplane", "cat", "ship"), copies=4)
    code, out, err = _run(
        capsys, "train", "resnet18", "--dataset", str(folder), "--val-split", "0.25",
        "--init", str(init), "--freeze", "--input-size", "32", "--epochs", "1",
        "--batch-size", "8", "--out", str(tmp_path / "runs"), "--threads", "1",
    )  # fmt: skip
    assert code == 0, err
    run = tmp_path / "runs" / "resnet18-pets"
    card = json.loads((run / "card.json").read_text())
    assert card["init"]["file"] == "resnet18.pth"
    assert card["init"]["sha256"] == sha256_file(init)
    # the 1000-class head is replaced; every other tensor kept, every parameter below frozen
    assert card["init"]["source"] == "file" and card["init"]["freeze"] is True
    assert card["init"]["replaced"] == ["fc.weight", "fc.bias"] and card["init"]["new"] == []
    assert set(card["init"]["kept"]) == set(source) - {"fc.weight", "fc.bias"}
    parameters = {n for n, _ in resnet18().named_parameters()}
    assert set(card["init"]["frozen"]) == parameters - {"fc.weight", "fc.bias"}
    data = card["dataset"]
    assert (data["val_split"], data["test_split"], data["n_train"], data["n_test"]) == (
        0.25, "val-split", 18, 6,
    )  # fmt: skip
    # only the head trained: the backbone, batch-norm statistics included, is the file's
    trained = load_file(run / "model.safetensors")
    assert all(torch.equal(trained[k], source[k]) for k in card["init"]["kept"])
    assert trained["fc.weight"].shape == (3, 512)
    # the held-out split is drawn again for eval, so eval reproduces the card
    code, out, _ = _run(capsys, "eval", str(run), "--json")
    assert code == 0 and json.loads(out)["top1"] == card["metrics"]["top1"]


def test_named_dataset_path_derives_lenet5s_mnist_input_and_measures_the_statistics(
    data_dir, tmp_path
):
    from cnnzoo.zoo.train import TrainOptions, train

    result = train(
        TrainOptions(
            model="lenet5", dataset="mnist", out=tmp_path, epochs=1, batch_size=32,
            train_subset=600, test_subset=200, progress=False,
        )
    )  # fmt: skip
    card = json.loads((result.model_dir / "card.json").read_text())
    assert card["model"] == "lenet5-mnist" and card["arch"] == "lenet5"
    assert card["labels"] == [str(d) for d in range(10)]
    pre = card["preprocess"]
    assert (pre["colour"], pre["resize"], pre["crop"], pre["pad"]) == ("L", 28, 28, 2)
    # mean/std of this copy's 60,000 training digits (see its SOURCE.txt: 0.1306 / 0.3082)
    assert pre["mean"] == [0.1306] and pre["std"] == [0.3082]
    assert card["dataset"]["folder"] == "MNIST" and "MNIST" in card["dataset"]["source"]


# -- bad input: one line, exit code != 0, nothing written ----------------------------------


def _folder(root: Path, layout: dict[str, int]) -> Path:
    """Class folders of real digit PNGs: {"train/a": 2, ...} -> that many images each."""
    digit = Image.open(next((EXAMPLES / "digits" / "3").glob("*.png")))
    for relative, count in layout.items():
        (root / relative).mkdir(parents=True, exist_ok=True)
        for k, image in enumerate(_shifted(digit, count)):
            image.save(root / relative / f"{k}.png")
    return root


@pytest.mark.parametrize(
    "layout, extra, code, message",
    [
        ({"train/a": 2, "test/a": 1}, [], 2, "one class folder (a); a classifier needs"),
        ({"train/a": 2, "train/b": 0, "test/a": 1, "test/b": 1}, [], 2, "train/b has no readable"),
        ({"train/a": 2, "train/b": 2, "test/a": 1, "test/c": 1}, [], 2,
         "only in train/: b; only in test/: c"),
        ({"a": 2, "b": 2}, [], 2, "pass --val-split 0.1"),
        ({"a": 2, "b": 2}, ["--val-split", "0"], 2, "--val-split must be between 0 and 1"),
        ({"a": 2, "b": 2}, ["--val-split", "1.5"], 2, "--val-split must be between 0 and 1"),
        ({"a": 2, "b": 1}, ["--val-split", "0.5"], 2, "has 1 image; --val-split needs"),
        ({"train/a": 2, "train/b": 2, "test/a": 1, "test/b": 1}, ["--val-split", "0.2"], 2,
         "has its own test/ split; drop --val-split"),
        ({"a\nb": 2, "c": 2}, ["--val-split", "0.5"], 2, "cannot be a label: it contains control"),
        ({"train/a": 2, "train/b": 2, "val/a": 1, "val/b": 1}, ["--input-size", "28"], 2,
         "lenet5 takes 32x32 inputs only"),
        ({"train/a": 2, "train/b": 2, "val/a": 1, "val/b": 1}, ["--arch", "resnet18"], 2,
         "the images' 28 px is too small for resnet18: it needs at least 32 px"),
        ({"train/a": 2, "train/b": 2, "val/a": 1, "val/b": 1},
         ["--arch", "alexnet", "--input-size", "48"], 2,
         "--input-size 48 is too small for alexnet: it needs at least 63 px"),
    ],
)  # fmt: skip
def test_bad_image_folders_and_options(tmp_path, capsys, layout, extra, code, message):
    folder = _folder(tmp_path / "data", layout)
    arch = "lenet5"
    if extra[:1] == ["--arch"]:
        arch, extra = extra[1], extra[2:]
    out = tmp_path / "runs"
    got, _, err = _run(capsys, "train", arch, "--dataset", str(folder), "--out", str(out), *extra)
    line = _error_line(err, "train")
    assert got == code and message in line, line
    assert not out.exists()


def test_unreadable_images_are_refused_with_strict(tmp_path, capsys):
    folder = _folder(tmp_path / "data", {"a": 3, "b": 3})
    (folder / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    code, _, err = _run(capsys, "train", "lenet5", "--dataset", str(folder), "--val-split",
                        "0.3", "--strict", "--out", str(tmp_path / "runs"))  # fmt: skip
    line = _error_line(err, "train")
    assert code == 2 and "broken.png" in line and "--strict refuses" in line
    assert not (tmp_path / "runs").exists()


def test_init_of_another_architecture_names_the_missing_and_unexpected_tensors(tmp_path, capsys):
    folder = _folder(tmp_path / "data", {"a": 3, "b": 3})
    other = tmp_path / "resnet20.safetensors"
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in zoo.build_model("resnet20-cifar10").state_dict().items()},
        str(other),
    )
    code, _, err = _run(capsys, "train", "lenet5", "--dataset", str(folder), "--val-split", "0.3",
                        "--init", str(other), "--out", str(tmp_path / "runs"))  # fmt: skip
    line = _error_line(err, "train")
    assert code == 2 and "is not a lenet5 state dict" in line
    assert "missing: features.c1.weight" in line and "unexpected: bn1.bias" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["train", "lenet5"], 2, "lenet5 is an architecture: name the data with --dataset"),
        (["train", "lenet5-mnist", "--dataset", "mnist"], 2, "lenet5-mnist is a preset"),
        (["train", "lenet5-mnist", "--val-split", "0.1"], 2, "shape a run on other data"),
        (["train", "lenet7", "--dataset", "mnist"], 3, "unknown architecture 'lenet7'"),
        (["train", "lenet5", "--dataset", "svhn"], 2, "unknown dataset 'svhn'"),
        (["train", "lenet5", "--dataset", "mnist", "--freeze"], 2, "--freeze trains only"),
        (["train", "lenet5", "--dataset", "mnist", "--name", "../x"], 2, "--name '../x'"),
        (["train", "lenet5", "--dataset", "mnist", "--init", "nope.pth"], 3, "--init nope.pth"),
    ],
)
def test_bad_train_options(tmp_path, capsys, monkeypatch, argv, code, message):
    monkeypatch.chdir(tmp_path)
    got, _, err = _run(capsys, *argv)
    line = _error_line(err, "train")
    assert got == code and message in line, line
    assert list(tmp_path.iterdir()) == []


def test_a_run_folder_without_weights_or_card(tmp_path, capsys):
    run = tmp_path / "runs" / "half"
    run.mkdir(parents=True)
    for files, missing in (
        ((), "model.safetensors or card.json"),
        (("model.safetensors",), "card.json"),
    ):
        for name in files:
            (run / name).write_bytes(b"")
        code, _, err = _run(capsys, "eval", str(run))
        line = _error_line(err, "eval")
        assert code == 3 and f"has no {missing}" in line and "cnnzoo train" in line
    (run / "card.json").write_text("{}")
    code, _, err = _run(capsys, "export", str(run), "--repository", str(tmp_path / "repo"))
    assert code == 2 and "is not a cnnzoo model card" in _error_line(err, "export")
    assert not (tmp_path / "repo").exists()


def test_a_run_on_an_image_folder_resumes_bit_for_bit(digit_folder, tmp_path, capsys):
    def train(out: Path, *extra: str) -> int:
        return main(
            ["train", "lenet5", "--dataset", str(digit_folder), "--out", str(out), "--epochs",
             "2", "--batch-size", "16", "--threads", "1", "--no-progress", *extra]
        )  # fmt: skip

    assert train(tmp_path / "whole") == 0
    assert train(tmp_path / "parts", "--stop-after", "1") == 0
    whole, parts = (tmp_path / p / "lenet5-my-digits" for p in ("whole", "parts"))
    # the run folder alone names the run to continue
    assert f"continue with `cnnzoo train {parts} --resume`" in capsys.readouterr().out
    assert main(["train", str(parts), "--resume", "--threads", "1", "--no-progress"]) == 0
    assert sha256_file(whole / "model.safetensors") == sha256_file(parts / "model.safetensors")
    cards = [json.loads((run / "card.json").read_text()) for run in (whole, parts)]
    assert cards[0]["metrics"] == cards[1]["metrics"] and cards[0]["dataset"] == cards[1]["dataset"]


def test_eval_draws_the_surest_mistakes_with_their_labels(
    digit_run, digit_folder, tmp_path, capsys
):
    early = digit_run / "epochs" / "epoch_001.safetensors"  # a model that still errs
    mistakes = tmp_path / "mistakes"
    code, out, _ = _run(capsys, "eval", str(digit_run), "--weights", str(early), "--json",
                        "--misclassified", str(mistakes), "--misclassified-count", "4")  # fmt: skip
    assert code == 0
    report = json.loads(out)
    wrong = round(report["n"] * (1 - report["top1"]))
    assert report["misclassified"] == {
        "folder": str(mistakes),
        "written": 4,
        "misclassified": wrong,
    }
    listed = json.loads((mistakes / "mistakes.json").read_text())
    assert listed["misclassified"] == wrong and len(listed["mistakes"]) == 4
    confidences = [m["confidence"] for m in listed["mistakes"]]
    assert confidences == sorted(confidences, reverse=True)  # surest first
    assert sorted(p.name for p in mistakes.iterdir()) == sorted(
        ["mistakes.json", *(m["file"] for m in listed["mistakes"])]
    )
    for mistake in listed["mistakes"]:
        assert mistake["true"] != mistake["predicted"] and mistake["p_true"] < mistake["confidence"]
        assert mistake["file"].endswith(f"-true-{mistake['true']}-pred-{mistake['predicted']}.png")
        source = Path(mistake["source"])
        assert source.parent.name == mistake["true"] and source.parents[1] == digit_folder / "test"
        with Image.open(mistakes / mistake["file"]) as drawn:
            assert min(drawn.size) >= 128  # a 28-px digit, enlarged, above its caption
    # the confusion matrix agrees with the mistakes
    confusion = report["confusion"]
    assert sum(sum(row) for row in confusion) == report["n"]
    assert report["n"] - sum(confusion[i][i] for i in range(5)) == wrong
    # nothing is overwritten
    code, _, err = _run(capsys, "eval", str(digit_run), "--misclassified", str(mistakes))
    assert code == 4 and "is not empty" in _error_line(err, "eval")
    # the text report lists recall and precision per class
    code, out, _ = _run(capsys, "eval", str(digit_run))
    assert code == 0 and "recall" in out and "precision" in out
    assert [line.split()[0] for line in out.splitlines()[2:]] == sorted(WORDS)
