"""ONNX Runtime wrapper (providers, threads, warm-up) and image decoding, in process."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cnnzoo.errors import InvalidImage, InvalidInput, NotFound
from cnnzoo.serving.images import images_to_batch
from cnnzoo.serving.runtime import CPU, CUDA, OnnxModel, RuntimeOptions, warm_up_sizes
from cnnzoo.serving.server import DEFAULT_MAX_MESSAGE_BYTES
from cnnzoo.zoo.images import decode_image, read_image
from tests.serving.helpers import DIGITS, MODEL
from tests.serving.requests import bomb_png, encode, rgb16_png


def test_runtime_options_are_validated():
    with pytest.raises(InvalidInput, match="auto, cuda, cpu"):
        RuntimeOptions(device="tpu")
    with pytest.raises(InvalidInput, match="threads"):
        RuntimeOptions(intra_op_threads=-1)


def test_warm_up_covers_powers_of_two_the_maximum_and_preferred_sizes():
    assert warm_up_sizes(64) == [1, 2, 4, 8, 16, 32, 64]
    assert warm_up_sizes(10, (3, 12)) == [1, 2, 3, 4, 8, 10]
    assert warm_up_sizes(1) == [1]


def test_default_message_limit_fits_a_batch_of_64_imagenet_images():
    assert DEFAULT_MAX_MESSAGE_BYTES > 64 * 3 * 224 * 224 * 4 + 1024


def test_cpu_session_reports_its_provider_and_matches_onnxruntime(repository, onnx_reference):
    model = OnnxModel(repository / MODEL / "1" / "model.onnx", RuntimeOptions(device="cpu"))
    assert model.provider == CPU
    assert (model.input_name, model.output_name) == ("input", "logits")
    x = np.random.default_rng(2).standard_normal((5, 1, 32, 32)).astype(np.float32)
    model.warm_up((1, 32, 32), [1, 5])
    np.testing.assert_allclose(
        model.run(x), onnx_reference.run(["logits"], {"input": x})[0], rtol=1e-6, atol=1e-6
    )


def test_after_warm_up_every_batch_runs_at_a_warmed_size(repository, onnx_reference):
    model = OnnxModel(
        repository / MODEL / "1" / "model.onnx", RuntimeOptions(device="cpu", intra_op_threads=1)
    )
    assert model.run_size(3) == 3  # nothing warmed yet: sizes run as they come
    model.warm_up((1, 32, 32), warm_up_sizes(8))
    assert model.warmed_sizes == (1, 2, 4, 8)
    assert [model.run_size(n) for n in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
    x = np.random.default_rng(4).standard_normal((5, 1, 32, 32)).astype(np.float32)
    out = model.run(x)  # runs as 8 rows; the 3 padding rows are dropped
    assert out.shape == (5, 10)
    np.testing.assert_allclose(
        out, onnx_reference.run(["logits"], {"input": x})[0], rtol=1e-5, atol=1e-5
    )


@pytest.mark.gpu
def test_cuda_session_runs_on_the_gpu(repository, onnx_reference):
    from cnnzoo.serving.runtime import cuda_unavailable_reason

    reason = cuda_unavailable_reason()
    if reason is not None:
        pytest.skip(f"no usable CUDA device: {reason}")
    model = OnnxModel(repository / MODEL / "1" / "model.onnx", RuntimeOptions(device="cuda"))
    assert model.provider == CUDA
    x = np.random.default_rng(2).standard_normal((8, 1, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(
        model.run(x), onnx_reference.run(["logits"], {"input": x})[0], rtol=1e-3, atol=1e-3
    )


def test_sixteen_bit_images_scale_to_eight_bits():
    grey = np.asarray(Image.open(DIGITS[0]).convert("L"))
    sixteen = decode_image(encode(Image.fromarray(grey.astype(np.uint16) * 257)))
    assert sixteen.mode == "L"
    np.testing.assert_array_equal(np.asarray(sixteen), grey)
    rgb = decode_image(rgb16_png(np.dstack([grey] * 3).astype(np.uint16) * 257))
    np.testing.assert_array_equal(np.asarray(rgb.convert("L")), grey)


def test_images_follow_the_models_preprocessing():
    from cnnzoo.zoo import get_entry

    grey = DIGITS[0].read_bytes()
    imagenet = get_entry("resnet18-imagenet").preprocess
    batch = images_to_batch([grey, grey], imagenet)
    assert batch.shape == (2, 3, 224, 224) and batch.dtype == np.float32
    mnist = get_entry(MODEL).preprocess
    single = images_to_batch([grey], mnist)
    expected = mnist.apply(Image.open(io.BytesIO(grey)))
    np.testing.assert_array_equal(single[0], expected)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"GIF89a....", "not a PNG or JPEG"),
        (bomb_png(30_000, 30_000), "too large"),
        (DIGITS[0].read_bytes()[:100], "corrupt or truncated"),
    ],
)
def test_bad_uploads_name_the_problem(data, message):
    with pytest.raises(InvalidInput, match=message):
        decode_image(data)
    with pytest.raises(InvalidImage, match=f"image 1: .*{message}") as info:
        images_to_batch([DIGITS[0].read_bytes(), data], mnist_preprocess())
    assert info.value.index == 1 and message in info.value.problem


def test_image_files_errors_name_the_file(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(InvalidInput, match=f"{text} is not a readable image: not a PNG or JPEG"):
        read_image(text)
    with pytest.raises(NotFound, match="does not exist"):
        read_image(tmp_path / "missing.png")
    assert read_image(DIGITS[0]).size == (28, 28)


def mnist_preprocess():
    from cnnzoo.zoo import get_entry

    return get_entry(MODEL).preprocess
