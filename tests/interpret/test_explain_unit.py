"""`cnnzoo explain --unit`: one unit's projection in PyTorch (what the explorer's channel view
shows), its default position, and its refusals with their exit codes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnzoo import zoo
from cnnzoo.cli import main
from cnnzoo.interpret.forward import forward_to
from cnnzoo.interpret.graphs.render import projection_png
from cnnzoo.interpret.projection import Unit, project_units
from cnnzoo.interpret.render import png_bytes, projection_rgb
from cnnzoo.interpret.rules import Rule
from tests.interpret.graphs.test_render import pixels

ROOT = Path(__file__).resolve().parents[2]
DIGIT = ROOT / "examples" / "digits" / "7" / "test-00000.png"
MODEL = "lenet5-mnist"


def _explain(tmp_path: Path, *extra: str) -> int:
    return main(["explain", str(DIGIT), "--model", MODEL, "--out", str(tmp_path / "u.png"), *extra])


def test_the_strongest_unit_and_an_asked_one_equal_project_units(tmp_path, capsys) -> None:
    model = zoo.build_model(MODEL, weights="default")
    x = torch.from_numpy(zoo.get_entry(MODEL).preprocess.apply(Image.open(DIGIT)))[None]
    with torch.no_grad():
        plane = forward_to(model, ["features.c3"], x, lambda _, t: t.clone())["features.c3"][0, 5]
    flat = int(torch.argmax(plane.reshape(-1)))
    strongest = (flat // plane.shape[1], flat % plane.shape[1])
    for unit, position in (("5", strongest), ("5@2,3", (2, 3))):
        saved = tmp_path / f"{unit}.npy"
        assert _explain(tmp_path, "--layer", "features.c3", "--unit", unit,
                        "--method", "deconvnet", "--save-map", str(saved)) == 0  # fmt: skip
        assert f"at ({position[0]}, {position[1]})" in capsys.readouterr().out
        expected = project_units(model, "features.c3", x, [Unit(0, 5, *position)], Rule.DECONVNET)[
            0
        ].numpy()
        np.testing.assert_array_equal(np.load(saved), expected)
    assert (tmp_path / "u.png").stat().st_size > 0


def test_the_numpy_and_torch_projection_renderers_draw_the_same_pixels() -> None:
    rng = np.random.default_rng(0)
    for shape in ((1, 8, 8), (3, 5, 7), (2, 4, 4)):
        p = rng.standard_normal(shape).astype(np.float32)
        expected = png_bytes(projection_rgb(torch.from_numpy(p)))
        assert np.array_equal(pixels(projection_png(p)), pixels(expected))
    zero = np.zeros((1, 4, 4), np.float32)
    expected = png_bytes(projection_rgb(torch.from_numpy(zero)))
    assert np.array_equal(pixels(projection_png(zero)), pixels(expected))


@pytest.mark.parametrize(
    ("extra", "code", "said"),
    [
        (["--unit", "1"], 2, "needs --layer"),
        (["--layer", "features.c3", "--unit", "1", "--method", "grad-cam"], 2, "deconvnet"),
        (["--layer", "features.c3", "--unit", "1", "--target", "3"], 2, "no --target"),
        (["--layer", "features.c3", "--unit", "16"], 2, "16 channels"),
        (["--layer", "features.c3", "--unit", "1@10,0"], 2, "10x10 map"),
        (["--layer", "flatten", "--unit", "1@0,0"], 2, "flat"),
        (["--layer", "features.c3", "--unit", "x"], 2, "CHANNEL@Y,X"),
        (["--layer", "nope", "--unit", "1"], 3, "features.c3"),
    ],
)
def test_refusals(tmp_path, capsys, extra: list[str], code: int, said: str) -> None:
    assert _explain(tmp_path, *extra) == code
    assert said in capsys.readouterr().err
    assert not (tmp_path / "u.png").exists()  # nothing written
