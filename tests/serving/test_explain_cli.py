"""`cnnzoo explain --repository` and the Explain RPC read an image and a model version alike."""

from __future__ import annotations

import numpy as np
from PIL import Image

from cnnzoo.cli import main
from cnnzoo.protos import zoo_pb2
from tests.serving.helpers import DIGITS, MODEL
from tests.serving.requests import bomb_png, encode


def test_cli_and_rpc_give_the_same_map_for_a_16_bit_png(zoo_stub, repository, tmp_path, capsys):
    grey = np.asarray(Image.open(DIGITS[0]).convert("L"))
    image = tmp_path / "sixteen.png"
    image.write_bytes(encode(Image.fromarray(grey.astype(np.uint16) * 257)))
    out, raw = tmp_path / "map.png", tmp_path / "map.npy"
    args = ["explain", str(image), "--model", MODEL, "--repository", str(repository)]
    assert main([*args, "--method", "gradient", "--out", str(out), "--save-map", str(raw)]) == 0
    capsys.readouterr()

    def rpc(data: bytes) -> zoo_pb2.ExplainResponse:
        request = zoo_pb2.ExplainRequest(model=MODEL, image=data, method="gradient")
        return zoo_stub.Explain(request, timeout=60)

    sixteen = rpc(image.read_bytes())
    np.testing.assert_allclose(
        np.load(raw), np.asarray(sixteen.attribution, np.float32).reshape(32, 32), atol=1e-6
    )
    # 16-bit grey scaled to 8 bits is the 8-bit image, not a white square.
    assert rpc(encode(Image.fromarray(grey))).png == sixteen.png


def test_cli_refuses_a_decompression_bomb_in_one_line(tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png(20_000, 20_000))
    out = tmp_path / "map.png"
    assert main(["explain", str(bomb), "--model", MODEL, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"cnnzoo explain: error: {bomb} "), err
    assert "too large" in err and "decompression bomb" in err
    assert not out.exists()
