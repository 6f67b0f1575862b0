"""Classify an image over the KServe v2 REST API, with nothing but the standard library, Pillow
and numpy: what any HTTP client does with a cnnzoo (or Triton) server.

1. `GET /v2/models/<model>/config`: the model's input and output, and its preprocessing (the
   `parameters` cnnzoo export writes: colour, resize, crop, pad, mean, std);
2. the image becomes the input tensor (the same steps as the server's own Classify);
3. `POST /v2/models/<model>/infer`: the tensor as binary data after a JSON header (Triton's
   binary tensor extension), asking for the top-k classes (the classification extension);
4. the answer, `"score:index:label"` strings, is printed one class per line.

    python examples/rest_classify.py examples/digits/7/test-00000.png \\
        --url http://127.0.0.1:8000 --model lenet5-mnist --top-k 3

`--save-request FILE` also writes the request as plain JSON (tensor values in `data`), which
curl can send: `curl -d @FILE -H 'Content-Type: application/json' URL/v2/models/M/infer`.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request

import numpy as np
from PIL import Image

HEADER_LENGTH = "Inference-Header-Content-Length"


def call(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> bytes:
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read()
    except urllib.error.HTTPError as err:  # the server says why in {"error": ...}
        raise SystemExit(f"{url}: {err.code} {json.loads(err.read()).get('error', '')}") from None


def preprocess(image: Image.Image, parameters: dict[str, str]) -> np.ndarray:
    """colour, shorter side to `resize`, centre `crop`, `pad` black pixels, scale to [0, 1],
    then mean and std per channel: a float32 (C, H, W) array."""
    image = image.convert(parameters["colour"])
    resize, crop, pad = (int(parameters[k]) for k in ("resize", "crop", "pad"))
    if resize:
        width, height = image.size
        if width <= height:
            size = resize, int(resize * height / width)
        else:
            size = int(resize * width / height), resize
        image = image.resize(size, Image.Resampling.BILINEAR)
    if crop:
        width, height = image.size
        if width < crop or height < crop:
            canvas = Image.new(image.mode, (max(width, crop), max(height, crop)), 0)
            canvas.paste(image, ((canvas.width - width) // 2, (canvas.height - height) // 2))
            image, (width, height) = canvas, canvas.size
        top, left = int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))
        image = image.crop((left, top, left + crop, top + crop))
    pixels = np.asarray(image, dtype=np.uint8)
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
    pixels = np.pad(pixels, ((pad, pad), (pad, pad), (0, 0)))
    array = pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    mean = np.array(parameters["mean"].split(","), dtype=np.float32)[:, None, None]
    std = np.array(parameters["std"].split(","), dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((array - mean) / std, dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image", help="a PNG or JPEG file")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server's REST URL")
    parser.add_argument("--model", default="lenet5-mnist")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--save-request", metavar="FILE", help="also write the request as JSON")
    args = parser.parse_args()

    model_url = f"{args.url.rstrip('/')}/v2/models/{args.model}"
    config = json.loads(call(f"{model_url}/config"))
    parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
    tensor = preprocess(Image.open(args.image), parameters)[None]  # a batch of one
    input_name, output_name = config["input"][0]["name"], config["output"][0]["name"]
    outputs = [{"name": output_name, "parameters": {"classification": args.top_k}}]

    header = json.dumps(
        {
            "inputs": [
                {
                    "name": input_name,
                    "datatype": "FP32",
                    "shape": list(tensor.shape),
                    "parameters": {"binary_data_size": tensor.nbytes},
                }
            ],
            "outputs": outputs,
        }
    ).encode()
    answer = json.loads(
        call(
            f"{model_url}/infer",
            header + tensor.astype("<f4").tobytes(),
            {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))},
        )
    )
    for entry in answer["outputs"][0]["data"]:  # "score:index:label", best first
        score, index, label = (entry.split(":", 2) + [""])[:3]
        print(f"{label or index}\tclass {index}\tlogit {float(score):.3f}")

    if args.save_request:
        document = {
            "inputs": [
                {
                    "name": input_name,
                    "datatype": "FP32",
                    "shape": list(tensor.shape),
                    "data": tensor.ravel().tolist(),
                }
            ],
            "outputs": outputs,
        }
        with open(args.save_request, "w") as handle:
            json.dump(document, handle)
        print(f"request written to {args.save_request}", file=sys.stderr)


if __name__ == "__main__":
    main()
