import json

from cnnzoo.cli import main


def test_eval_json_matches_the_training_card(trained_lenet, capsys):
    result, run = trained_lenet
    code = main(
        [
            "eval",
            "lenet5-mnist",
            "--weights",
            str(run / "model.safetensors"),
            "--subset",
            "500",
            "--json",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    report = json.loads(out[0])
    assert {"model", "dataset", "top1", "top5", "n", "per_class"} <= set(report)
    assert report["model"] == "lenet5-mnist" and report["dataset"] == "mnist"
    assert report["n"] == 500
    assert report["top1"] == result.card["metrics"]["top1"]
    assert report["top1"] <= report["top5"] <= 1.0
    assert list(report["per_class"]) == [str(d) for d in range(10)]


def test_eval_on_an_image_folder(trained_lenet, capsys):
    from pathlib import Path

    _, run = trained_lenet
    digits = Path(__file__).resolve().parents[2] / "examples" / "digits"
    code = main(
        ["eval", "lenet5-mnist", "--weights", str(run / "model.safetensors"),
         "--dataset", str(digits), "--json"]
    )  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 20
    assert all(v in (0.0, 0.5, 1.0) for v in report["per_class"].values())
