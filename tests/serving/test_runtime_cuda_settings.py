"""The CUDA settings of the ONNX Runtime wrapper, checked where they can be without a GPU.

What a session for `--device cuda` is created with (no CPU fallback of nodes, cuDNN's
heuristics, no TF32), the IO-binding path (run on the CPU provider here: the same code binds
CUDA memory on a GPU), and the probe that names why CUDA is unusable. tests/gpu runs the same
paths on a GPU.
"""

from __future__ import annotations

import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from cnnzoo.errors import InvalidInput
from cnnzoo.serving.runtime import (
    NO_CPU_FALLBACK,
    OnnxModel,
    RuntimeOptions,
    cuda_device_problem,
    cuda_provider_options,
    cuda_unavailable_reason,
    session_options,
)
from cnnzoo.serving.tensors import RowLayout
from tests.serving.helpers import MODEL


def test_strict_cuda_sessions_refuse_nodes_on_the_cpu_and_other_devices_do_not():
    strict = session_options(RuntimeOptions(device="cuda"), cuda=True)
    assert strict.get_session_config_entry(NO_CPU_FALLBACK) == "1"
    # auto may place a node on the CPU (it asked for "CUDA when usable"); cpu is all CPU
    for options, cuda in ((RuntimeOptions(device="auto"), True), (RuntimeOptions("cpu"), False)):
        made = session_options(options, cuda=cuda)
        with pytest.raises(RuntimeError):  # onnxruntime: the key was never set
            made.get_session_config_entry(NO_CPU_FALLBACK)


def test_cuda_provider_options_pick_reproducible_fp32_convolutions():
    assert cuda_provider_options(RuntimeOptions()) == {
        "device_id": "0",
        "cudnn_conv_algo_search": "HEURISTIC",
        "use_tf32": "0",
        "do_copy_in_default_stream": "1",
    }
    exhaustive = RuntimeOptions(conv_algo_search="exhaustive")
    assert cuda_provider_options(exhaustive)["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    with pytest.raises(InvalidInput, match="heuristic, exhaustive, default"):
        RuntimeOptions(conv_algo_search="fastest")


def test_cuda_refusal_names_why(monkeypatch):
    reason = cuda_unavailable_reason()
    if reason is None:
        pytest.skip("CUDA is usable here: tests/gpu checks the refusal of a hidden device")
    from cnnzoo.errors import ExecutionProviderError
    from cnnzoo.serving.runtime import check_device

    with pytest.raises(ExecutionProviderError, match="^--device cuda: ") as raised:
        check_device(RuntimeOptions(device="cuda"))
    assert reason in str(raised.value)


def test_the_device_probe_names_a_missing_driver():
    """The CUDA runtime's own answer: on a machine without a driver, no driver version."""
    reason = cuda_unavailable_reason()
    if reason is None:
        pytest.skip("a driver and a GPU are here")
    try:
        problem = cuda_device_problem()
    except OSError:  # pragma: no cover - no CUDA runtime library at all
        pytest.skip("no CUDA runtime library to ask")
    if "libcuda.so" in reason:  # no driver: the runtime says so too
        assert problem == "no NVIDIA driver is loaded (the CUDA runtime reports no driver version)"


def _half_graph(path, batched: bool = True) -> None:
    """x -> Cast(fp16) -> Mul(w) -> Cast(fp32): an fp16 graph with fp32 in and out."""
    batch = "N" if batched else 2
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])
    weight = helper.make_tensor("w", TensorProto.FLOAT16, [3], np.array([0.5, -2, 3], np.float16))
    nodes = [
        helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
        helper.make_node("Mul", ["h", "w"], ["p"]),
        helper.make_node("Cast", ["p"], ["y"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(nodes, "half", [x], [y], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


@pytest.mark.parametrize("warmed", [False, True], ids=["any-size", "warmed-sizes"])
def test_io_binding_gives_exactly_the_plain_runs_answers(repository, warmed):
    path = repository / MODEL / "1" / "model.onnx"
    plain = OnnxModel(path, RuntimeOptions(device="cpu", intra_op_threads=1))
    bound = OnnxModel(path, RuntimeOptions(device="cpu", intra_op_threads=1, io_binding=True))
    assert (plain.io_binding, bound.io_binding) == (False, True)
    if warmed:  # 3 rows run padded to 4 on both
        for model in (plain, bound):
            model.warm_up((1, 32, 32), [1, 4])
    x = np.random.default_rng(0).standard_normal((3, 1, 32, 32)).astype(np.float32)
    expected = plain.run(x)
    np.testing.assert_array_equal(bound.run(x), expected)

    # one session, several threads (the batcher's instances): each run keeps its own output
    batches = [x * (i + 1) for i in range(6)]
    answers: dict[int, np.ndarray] = {}

    def call(i: int) -> None:
        for _ in range(5):
            answers[i] = bound.run(batches[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, batch in enumerate(batches):
        np.testing.assert_array_equal(answers[i], plain.run(batch))


def test_io_binding_of_an_fp16_graph_returns_float32(tmp_path):
    path = tmp_path / "half.onnx"
    _half_graph(path)
    bound = OnnxModel(path, RuntimeOptions(device="cpu", io_binding=True))
    x = np.array([[1.0, 2.0, 3.0], [-1.0, 0.25, 8.0]], np.float32)
    out = bound.run(x)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, x * np.array([0.5, -2, 3], np.float32))


def test_io_binding_without_a_batch_dimension(tmp_path):
    path = tmp_path / "unbatched.onnx"
    _half_graph(path, batched=False)
    bound = OnnxModel(path, RuntimeOptions(device="cpu", io_binding=True))
    bound.fit_shapes(RowLayout(batched=False, graph_input=(2, 3), output_dims=(2, 3)))
    x = np.arange(6, dtype=np.float32).reshape(1, 6)
    np.testing.assert_array_equal(
        bound.run(x), (x.reshape(2, 3) * np.array([0.5, -2, 3], np.float32))[None]
    )
