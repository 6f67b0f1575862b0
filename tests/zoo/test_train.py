import json

import pytest
import torch
from safetensors.torch import load_file

from cnnzoo import zoo
from cnnzoo.errors import AlreadyExists, InvalidInput, NotFound
from cnnzoo.fileio import sha256_file
from cnnzoo.zoo.card import validate_card
from cnnzoo.zoo.checkpoints import list_epochs
from cnnzoo.zoo.evaluate import evaluate, limit_dataset
from cnnzoo.zoo.train import STATE_FILE, TrainOptions, train

from .conftest import SHORT_RUN, short_run_options


def _untrained_accuracy(data_dir) -> float:
    from torch.utils.data import DataLoader

    entry = zoo.get_entry("lenet5-mnist")
    torch.manual_seed(SHORT_RUN["seed"])
    model = zoo.build_model("lenet5-mnist")
    data = zoo.datasets.get_dataset(
        "mnist", "test", data_dir=data_dir, transform=entry.preprocess.torch_transform()
    )
    loader = DataLoader(limit_dataset(data, SHORT_RUN["test_subset"]), batch_size=250)
    return evaluate(model, loader, entry.labels)["top1"]


def test_short_training_raises_accuracy(trained_lenet, data_dir):
    result, _ = trained_lenet
    assert result.finished
    before = _untrained_accuracy(data_dir)
    after = result.card["metrics"]["top1"]
    assert before < 0.3
    assert after > 0.85 and after > before + 0.5


def test_run_folder_layout_and_epoch_checkpoints(trained_lenet):
    _, run = trained_lenet
    assert sorted(p.name for p in run.iterdir()) == [
        "card.json", "confusion.png", "epochs", "model.safetensors",
    ]  # fmt: skip
    epochs = list_epochs(run)
    assert [e for e, _ in epochs] == [1, 2]
    assert list_epochs(run / "epochs") == epochs
    # the last epoch checkpoint is the final model; each loads through build_model
    final = load_file(run / "model.safetensors")
    last = load_file(epochs[-1][1])
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)
    first = zoo.build_model("lenet5-mnist", weights=epochs[0][1])
    assert not torch.equal(first.features.c1.weight, final["features.c1.weight"])


def test_card_follows_the_schema_and_records_the_run(trained_lenet):
    _, run = trained_lenet
    card = json.loads((run / "card.json").read_text())
    assert validate_card(card) == []
    assert card["weights"]["sha256"] == sha256_file(run / "model.safetensors")
    assert card["weights"]["num_params"] == 61_706
    assert card["seed"] == SHORT_RUN["seed"] and card["epochs"] == 2
    assert card["dataset"]["name"] == "mnist"
    assert card["dataset"]["n_train"] == 3000 and card["dataset"]["n_test"] == 500
    assert "MNIST" in card["dataset"]["source"]
    assert card["software"]["torch"] == torch.__version__
    assert card["command"].startswith("cnnzoo train lenet5-mnist")
    assert "--seed 3" in card["command"]
    assert set(card["metrics"]["per_class"]) == set(zoo.get_entry("lenet5-mnist").labels)
    assert "Zeiler" in card["notes"]


def test_validate_card_reports_problems(trained_lenet):
    _, run = trained_lenet
    card = json.loads((run / "card.json").read_text())
    del card["seed"]
    card["surprise"] = 1
    card["metrics"]["top1"] = 99.1  # a percentage where a fraction belongs
    problems = validate_card(card)
    assert "missing key 'seed'" in problems
    assert "unknown key 'surprise'" in problems
    assert "metrics.top1 must be a fraction in [0, 1]" in problems


def test_resume_equals_uninterrupted(trained_lenet, tmp_path):
    _, reference = trained_lenet
    first = train(short_run_options(tmp_path, stop_after=1))
    assert not first.finished and first.epochs_done == 1
    run = tmp_path / "lenet5-mnist"
    assert (run / STATE_FILE).is_file() and not (run / "model.safetensors").exists()
    second = train(short_run_options(tmp_path, resume=True, seed=None, epochs=None))
    assert second.finished
    assert not (run / STATE_FILE).exists()
    for epoch, path in list_epochs(run):
        assert load_file(path).keys() == load_file(reference / "epochs" / path.name).keys()
        ours, theirs = load_file(path), load_file(reference / "epochs" / path.name)
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), f"epoch {epoch} differs"
    card = json.loads((run / "card.json").read_text())
    assert card["metrics"] == json.loads((reference / "card.json").read_text())["metrics"]
    assert "--resume" in card["command"]


def test_existing_run_is_not_overwritten(trained_lenet):
    _, run = trained_lenet
    before = {p: sha256_file(p) for p in run.rglob("*") if p.is_file()}
    with pytest.raises(AlreadyExists, match="--resume"):
        train(short_run_options(run.parent))
    assert before == {p: sha256_file(p) for p in run.rglob("*") if p.is_file()}


def test_resume_without_a_run_or_with_other_settings(trained_lenet, tmp_path):
    with pytest.raises(NotFound, match="nothing to resume"):
        train(short_run_options(tmp_path, resume=True))
    _, run = trained_lenet
    with pytest.raises(NotFound, match="finished"):
        train(short_run_options(run.parent, resume=True))
    train(short_run_options(tmp_path, epochs=3, stop_after=1, train_subset=500, test_subset=100))
    with pytest.raises(InvalidInput, match="--epochs 3"):
        train(
            short_run_options(tmp_path, resume=True, epochs=5, train_subset=None, test_subset=None)
        )


def test_bad_options_are_refused_before_writing(tmp_path):
    with pytest.raises(InvalidInput, match="--epochs"):
        train(short_run_options(tmp_path, epochs=0))
    with pytest.raises(InvalidInput, match="--lr"):
        train(short_run_options(tmp_path, lr=-1.0))
    assert list(tmp_path.iterdir()) == []


def test_same_weights_give_the_same_file_bytes_in_every_process(tmp_path):
    # safetensors orders its metadata map at random per process; the sha256 in model cards and
    # manifests must not change with it.
    import subprocess
    import sys

    script = (
        "import sys, torch\n"
        "from pathlib import Path\n"
        "from cnnzoo import zoo\n"
        "from cnnzoo.zoo.checkpoints import save_weights\n"
        "torch.manual_seed(0)\n"
        "model = zoo.build_model('lenet5-mnist')\n"
        "meta = {'zoo_entry': 'lenet5-mnist', 'epoch': '3', 'seed': '0', 'x': 'y'}\n"
        "save_weights(model, Path(sys.argv[1]), meta)\n"
    )
    paths = [tmp_path / f"w{i}.safetensors" for i in range(4)]
    for path in paths:
        subprocess.run([sys.executable, "-c", script, str(path)], check=True)
    assert len({sha256_file(p) for p in paths}) == 1
    # and the metadata reads back as it was written
    model = zoo.build_model("lenet5-mnist", weights=paths[0])
    assert model is not None
    from safetensors import safe_open

    from cnnzoo.zoo.checkpoints import read_metadata

    with safe_open(str(paths[0]), framework="pt") as handle:
        assert read_metadata(handle.metadata())["epoch"] == "3"


def test_workers_option_is_checked_before_writing(tmp_path):
    with pytest.raises(InvalidInput, match="--workers"):
        train(short_run_options(tmp_path, workers=-1))
    assert list(tmp_path.iterdir()) == []


def test_loader_workers_give_the_same_run_every_time(tmp_path, data_dir):
    # each worker seeds its augmentation from the epoch's generator: same seed and N, same run
    small = {"epochs": 1, "train_subset": 600, "test_subset": 100, "workers": 2}
    runs = [train(short_run_options(tmp_path / str(i), **small)) for i in range(2)]
    first, second = (load_file(r.model_dir / "model.safetensors") for r in runs)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert runs[0].card["hardware"]["data_workers"] == 2


def test_int8_entry_stores_quantised_weights_and_its_card_measures_them(tmp_path, data_dir):
    from torch.utils.data import DataLoader

    from cnnzoo.zoo.train import TrainOptions

    entry = zoo.get_entry("alexnet-cifar10")
    assert entry.weights_dtype == "int8"
    result = train(
        TrainOptions(
            model=entry.name, out=tmp_path, epochs=1, batch_size=32, train_subset=256,
            test_subset=128, progress=False,
        )
    )  # fmt: skip
    epochs = [path for _, path in list_epochs(result.model_dir)]
    for path in (result.model_dir / "model.safetensors", *epochs):
        stored = load_file(path)
        conv = stored["features.0.weight"]
        assert conv.dtype == torch.int8 and stored["features.0.weight:scale"].shape == (64,)
        assert stored["features.0.bias"].dtype == torch.float32  # 1-D tensors stay exact
    model = zoo.build_model(entry.name, weights=result.model_dir / "model.safetensors")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    test_set = zoo.datasets.get_dataset(
        "cifar10", "test", data_dir=data_dir, transform=entry.preprocess.torch_transform()
    )
    loader = DataLoader(limit_dataset(test_set, 128), batch_size=256)  # as training evaluates
    assert evaluate(model, loader, entry.labels) == result.card["metrics"]


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_stored_weights_decode_close_to_the_originals(dtype):
    from cnnzoo.zoo.checkpoints import decode_state, encode_state

    torch.manual_seed(0)
    state = zoo.build_model("resnet20-cifar10").state_dict()
    state["conv1.weight"][3] = 0.0  # an all-zero channel must survive int8 scaling
    decoded = decode_state(encode_state(state, dtype))
    assert decoded.keys() == state.keys()
    for key, value in state.items():
        exact = dtype == "float32" or (dtype == "int8" and value.ndim < 2)
        if not value.is_floating_point() or exact:
            assert torch.equal(decoded[key].to(value.dtype), value), key
            continue
        error = (decoded[key].float() - value).abs()
        if dtype == "float16":  # 11 significant bits
            assert (error <= value.abs() / 2048 + 1e-7).all(), key
        else:  # half a quantisation step of the channel
            step = value.abs().flatten(1).amax(1) / 127
            assert (error.flatten(1) <= step.view(-1, 1) / 2 + 1e-8).all(), key
    assert torch.equal(decoded["conv1.weight"][3], torch.zeros_like(state["conv1.weight"][3]))


def test_card_names_the_console_script_under_python_dash_m(monkeypatch):
    from cnnzoo.zoo.cli import _command_line

    monkeypatch.setattr("sys.argv", ["/x/cnnzoo/__main__.py", "train", "lenet5-mnist"])
    assert _command_line() == "cnnzoo train lenet5-mnist"
    monkeypatch.setattr("sys.argv", ["/venv/bin/cnnzoo", "train", "my model"])
    assert _command_line() == "cnnzoo train 'my model'"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")
def test_cuda_training_is_deterministic_and_recorded(tmp_path, data_dir):
    small = {"epochs": 1, "train_subset": 2000, "device": "cuda", "workers": 2}
    runs = [train(short_run_options(tmp_path / str(i), **small)) for i in range(2)]
    first, second = (load_file(r.model_dir / "model.safetensors") for r in runs)
    assert all(torch.equal(first[k], second[k]) for k in first)
    card = runs[0].card
    assert card["hardware"]["device"] == "cuda" and card["hardware"]["gpu"]
    assert card["metrics"]["top1"] > _untrained_accuracy(data_dir) + 0.3
    assert not torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()


@pytest.mark.parametrize(
    "options, problem",
    [
        ({"epochs": 0}, "--epochs must be >= 1"),
        ({"batch_size": 0}, "--batch-size must be >= 1"),
        ({"lr": 0.0}, "--lr must be > 0"),
        ({"stop_after": 0}, "--stop-after must be >= 1"),
        ({"train_subset": 0}, "--train-subset must be >= 1"),
        ({"threads": 0}, "--threads must be >= 1"),
        ({"workers": -1}, "--workers must be >= 0"),
        ({"device": "tpu"}, "device must be cpu or cuda"),
    ],
)
def test_train_options_are_checked_when_made(tmp_path, options, problem):
    from cnnzoo.zoo.train import TrainOptions

    with pytest.raises(InvalidInput, match=problem):
        TrainOptions(model="lenet5-mnist", out=tmp_path, **options)


def test_recipes_are_checked_when_made():
    from cnnzoo.zoo.recipe import Recipe

    with pytest.raises(InvalidInput, match="unknown schedule 'linear'"):
        Recipe(epochs=1, batch_size=1, lr=0.1, schedule="linear")
    with pytest.raises(InvalidInput, match="unknown augment"):
        Recipe(epochs=1, batch_size=1, lr=0.1, augment="mixup")


def test_ctrl_c_says_how_to_resume_and_the_run_folder_resumes_it(trained_lenet, tmp_path):
    # a real SIGINT to a real `cnnzoo train` once its first epoch is saved
    import os
    import signal
    import subprocess
    import sys
    import time

    _, reference = trained_lenet
    argv = [sys.executable, "-m", "cnnzoo", "train", "lenet5-mnist", "--out", str(tmp_path),
            "--threads", "1", "--no-progress"]  # fmt: skip
    for key, value in SHORT_RUN.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=os.environ)
    run = tmp_path / "lenet5-mnist"
    deadline = time.monotonic() + 300
    while not (run / STATE_FILE).is_file() and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    hint = f"interrupted in epoch 2; epochs 1-1 are saved in {run}: continue with `cnnzoo train"
    assert hint in err and f"{run} --resume`" in err and "Traceback" not in err
    assert not (run / "model.safetensors").exists()
    # the run folder is all `--resume` needs; the result is the uninterrupted run's
    result = train(TrainOptions(model=str(run), resume=True, progress=False))
    assert result.finished
    assert sha256_file(run / "model.safetensors") == sha256_file(reference / "model.safetensors")
    with pytest.raises(InvalidInput, match="is a run folder: continue it with"):
        train(TrainOptions(model=str(run), progress=False))
