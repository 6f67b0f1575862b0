"""ONNX Runtime sessions: execution-provider choice, thread settings, warm-up.

Warm-up runs a set of batch sizes once before a model reports ready (the first run of a new
input shape allocates memory and, on CUDA, picks convolution algorithms). After warm-up a
session only ever runs those sizes: a batch of another size is padded with zero rows up to the
next warmed size and the padding is dropped from the answer (each row of a CNN in eval mode is
computed independently, so the real rows are unaffected). Warming every size up to the maximum
would take minutes for the ImageNet models on a CPU; powers of two waste at most half a batch.

`--device cuda` that lands on the CPU is an error here, not a log line, at three levels:
- before anything loads, `cuda_unavailable_reason` names what is missing: the CUDA build of
  ONNX Runtime, a library it needs (CUDA, cuDNN, the driver's libcuda), a driver too old for the
  CUDA version the wheel was built for, or a visible device (`CUDA_VISIBLE_DEVICES=`);
- ONNX Runtime's Python wrapper retries a session whose CUDA provider failed on the CPU; with
  `--device cuda` that retry is turned off (`enable_fallback=0`);
- a graph with a node ONNX Runtime would run on the CPU (an operator without a CUDA kernel)
  fails to load (`session.disable_cpu_ep_fallback`), since it would be a slowdown nobody asked
  for: serve such a model with `--device auto`.

On CUDA, convolution algorithms are chosen by cuDNN's heuristics by default (`heuristic`), not
by timing each candidate (`exhaustive`, ONNX Runtime's default): timing can pick a different
algorithm in every process, and so a different last bit of every answer; with heuristics the
same request gets the same answer from every server process. TF32 is off: an fp32 model computes
in fp32 (export with `--fp16` for tensor-core speed). Inputs and outputs go through IO binding:
the output is allocated on the device and copied back once per run.
"""

from __future__ import annotations

import bisect
import ctypes
import functools
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnzoo.errors import ExecutionProviderError, InvalidInput, UnsupportedModel
from cnnzoo.serving.tensors import RowLayout

__all__ = [
    "CONV_ALGO_SEARCHES",
    "CPU",
    "CUDA",
    "DEVICES",
    "NO_CPU_FALLBACK",
    "OnnxModel",
    "create_session",
    "RuntimeOptions",
    "available_cores",
    "built_for_cuda",
    "check_device",
    "cuda_device_problem",
    "cuda_provider_options",
    "cuda_unavailable_reason",
    "session_options",
    "uses_cuda",
    "warm_up_sizes",
]

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
# ONNX Runtime's tensor types -> the numpy types a session takes.
_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cuda", "cpu")
# How cuDNN picks a convolution algorithm (ONNX Runtime's `cudnn_conv_algo_search`).
CONV_ALGO_SEARCHES = ("heuristic", "exhaustive", "default")
# The session option that makes a node placed on the CPU a load error instead of a slowdown.
NO_CPU_FALLBACK = "session.disable_cpu_ep_fallback"
# The oldest Linux driver of each CUDA major version (NVIDIA's CUDA toolkit release notes).
_MIN_DRIVER = {12: "525.60.13", 13: "580.65.06"}


def available_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup CPU affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class RuntimeOptions:
    """How sessions are created.

    Args:
        device: "auto" (CUDA when usable, else CPU), "cuda" (CUDA or a start-up error, and
            every node of every graph on CUDA), "cpu".
        intra_op_threads: threads one operator may use; 0 means one per available core.
        inter_op_threads: threads running independent operators in parallel (1: sequential).
        conv_algo_search: CUDA only: how cuDNN picks convolution algorithms, "heuristic"
            (the same choice in every process), "exhaustive" (time each candidate once per
            shape) or "default" (cuDNN's first algorithm).
        io_binding: run through ONNX Runtime's IO binding; None: on CUDA only (on the CPU it
            only adds a copy).
    """

    device: str = "auto"
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    conv_algo_search: str = "heuristic"
    io_binding: bool | None = None

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise InvalidInput(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.conv_algo_search not in CONV_ALGO_SEARCHES:
            raise InvalidInput(
                f"conv_algo_search must be one of {', '.join(CONV_ALGO_SEARCHES)}, "
                f"got {self.conv_algo_search!r}"
            )
        if self.intra_op_threads < 0 or self.inter_op_threads < 1:
            raise InvalidInput(
                "intra-op threads must be >= 0 (0 = one per core) and inter-op threads >= 1, "
                f"got {self.intra_op_threads} and {self.inter_op_threads}"
            )


@functools.lru_cache(maxsize=1)
def cuda_unavailable_reason() -> str | None:
    """Why the CUDA execution provider cannot be used here (naming the missing library, the
    driver that is too old, or the hidden device), or None."""
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        return "this onnxruntime build has no CUDA execution provider (install onnxruntime-gpu)"
    # The CUDA runtime libraries come from the nvidia-* wheels (torch's); load them first.
    try:
        ort.preload_dlls()
    except Exception as err:  # preload is best effort; the probe below names what is missing
        log.debug("onnxruntime.preload_dlls failed: %s", err)
    library = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    try:
        ctypes.CDLL(str(library))
    except OSError as err:
        driver = " (libcuda.so.1 comes with the NVIDIA driver)" if "libcuda.so" in str(err) else ""
        return f"the CUDA execution provider cannot be loaded: {err}{driver}"
    return cuda_device_problem()


def built_for_cuda() -> str:
    """The CUDA version the installed onnxruntime was built for ("13.0"), or "" if unknown."""
    try:
        from onnxruntime.capi import build_and_package_info
    except ImportError:
        return ""
    return str(getattr(build_and_package_info, "cuda_version", "") or "")


def cuda_device_problem() -> str | None:
    """What keeps the CUDA runtime onnxruntime was built for from reaching a GPU, or None.

    Asks that runtime (libcudart) for the driver's CUDA version and the number of visible
    devices, so a driver too old for the wheel or `CUDA_VISIBLE_DEVICES=` is named here instead
    of failing inside the first session.
    """
    wanted = built_for_cuda()
    major = int(wanted.split(".")[0]) if wanted[:1].isdigit() else None
    name = f"libcudart.so.{major}" if major else "libcudart.so"
    try:
        cudart = ctypes.CDLL(name)
    except OSError as err:
        return f"the CUDA runtime onnxruntime needs cannot be loaded: {err}"
    cudart.cudaGetErrorString.restype = ctypes.c_char_p
    version = ctypes.c_int(0)
    cudart.cudaDriverGetVersion(ctypes.byref(version))
    if version.value == 0:
        return "no NVIDIA driver is loaded (the CUDA runtime reports no driver version)"
    driver = f"{version.value // 1000}.{version.value % 1000 // 10}"
    if major is not None and version.value // 1000 < major:
        return (
            f"the NVIDIA driver supports CUDA {driver}, but onnxruntime is built for CUDA "
            f"{wanted}: install driver {_MIN_DRIVER.get(major, f'for CUDA {major}')} or newer"
        )
    count = ctypes.c_int(0)
    status = cudart.cudaGetDeviceCount(ctypes.byref(count))
    if status != 0 or count.value == 0:
        said = cudart.cudaGetErrorString(status).decode(errors="replace") if status else ""
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hidden = f" (CUDA_VISIBLE_DEVICES is {visible!r})" if visible is not None else ""
        return f"no CUDA device is visible{hidden}" + (f": {said}" if said else "")
    return None


def cuda_provider_options(options: RuntimeOptions) -> dict[str, str]:
    """The CUDA execution provider's options for `options` (see the module docstring)."""
    return {
        "device_id": "0",  # the first visible device: CUDA_VISIBLE_DEVICES picks which
        "cudnn_conv_algo_search": options.conv_algo_search.upper(),
        "use_tf32": "0",
        "do_copy_in_default_stream": "1",
    }


def _providers_for(options: RuntimeOptions) -> list[str | tuple[str, dict[str, str]]]:
    if options.device == "cpu":
        return [CPU]
    reason = cuda_unavailable_reason()
    if reason is None:
        cuda = (CUDA, cuda_provider_options(options))
        # With --device cuda the CPU provider is only ONNX Runtime's implicit one: naming it
        # as well contradicts disable_cpu_ep_fallback (a session error).
        return [cuda] if options.device == "cuda" else [cuda, CPU]
    if options.device == "cuda":
        raise ExecutionProviderError(f"--device cuda: {reason}")
    return [CPU]


def session_options(options: RuntimeOptions, *, cuda: bool) -> Any:
    """The `onnxruntime.SessionOptions` a session for `options` is created with (`cuda`: the
    CUDA provider was found usable)."""
    import onnxruntime as ort

    result = ort.SessionOptions()
    result.intra_op_num_threads = options.intra_op_threads or available_cores()
    result.inter_op_num_threads = options.inter_op_threads
    result.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    result.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning pool threads would take the cores the gRPC event loop needs.
    result.add_session_config_entry("session.intra_op.allow_spinning", "0")
    result.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if cuda and options.device == "cuda":
        result.add_session_config_entry(NO_CPU_FALLBACK, "1")
    return result


def uses_cuda(options: RuntimeOptions) -> bool:
    """Whether sessions made with `options` run on the CUDA execution provider."""
    return options.device != "cpu" and cuda_unavailable_reason() is None


def check_device(options: RuntimeOptions) -> None:
    """Fail fast (before loading anything) when `--device cuda` cannot work here."""
    if options.device == "cuda":
        _providers_for(options)


def create_session(source: str | bytes, options: RuntimeOptions, what: str) -> tuple[Any, str, Any]:
    """An ONNX Runtime session for a model file (path) or serialised model (bytes) on the
    device `options` asks for, never silently elsewhere; returns the session, its provider and
    its session options. `what` names the model in errors.

    Raises:
        UnsupportedModel: `--device cuda` and part of the graph would run on the CPU.
        ExecutionProviderError: `--device cuda` and ONNX Runtime fell back to another provider.
    """
    import onnxruntime as ort

    requested = _providers_for(options)
    strict = options.device == "cuda"
    chosen = session_options(options, cuda=requested[0] != CPU)
    try:
        session = ort.InferenceSession(
            source,
            sess_options=chosen,
            providers=requested,
            enable_fallback=0 if strict else 1,  # no silent retry on the CPU for cuda
        )
    except Exception as err:  # onnxruntime's own exception types (Fail, RuntimeException)
        if strict and "fallback to CPU EP has been explicitly disabled" in str(err):
            raise UnsupportedModel(
                f"--device cuda: onnxruntime would run part of {what} on the CPU "
                "(an operator without a CUDA kernel, or shape arithmetic it keeps on the "
                "CPU); serve it with --device auto to allow that"
            ) from None
        raise
    provider: str = session.get_providers()[0]
    if strict and provider != CUDA:
        raise ExecutionProviderError(
            f"--device cuda: onnxruntime fell back to {provider} for {what}: "
            f"{cuda_unavailable_reason() or 'see the onnxruntime log above'}"
        )
    return session, provider, chosen


class OnnxModel:
    """One ONNX Runtime session for a model with one input and one output.

    `run` is thread-safe (ONNX Runtime sessions are) and releases the GIL while it computes,
    so the server calls it from a worker thread while its event loop keeps answering.
    """

    def __init__(self, path: str | os.PathLike[str], options: RuntimeOptions) -> None:
        self.path = Path(path)
        self._session, self.provider, self.session_options = create_session(
            str(self.path), options, str(self.path)
        )
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise InvalidInput(
                f"{self.path} has {len(inputs)} inputs and {len(outputs)} outputs; "
                "cnnzoo serves models with exactly one of each"
            )
        self.inputs, self.outputs = tuple(inputs), tuple(outputs)  # onnxruntime NodeArgs
        self.input_name: str = inputs[0].name
        self.output_name: str = outputs[0].name
        self._output_names = [self.output_name]
        # fp16 exports may take fp16 input; the API stays FP32 and we cast here.
        self._input_dtype = _NUMPY_TYPES.get(inputs[0].type, np.float32)
        self.io_binding: bool = (
            self.provider == CUDA if options.io_binding is None else options.io_binding
        )
        self._bound_device = "cuda" if self.provider == CUDA else "cpu"
        # How a batch `[N, *dims]` becomes the graph's input and back (see `fit_shapes`).
        self._layout = RowLayout()
        self.warmed_sizes: tuple[int, ...] = ()  # set by warm_up
        self.run_seconds: dict[int, float] = {}  # batch size -> seconds per run, by warm_up
        log.info(
            "loaded %s on %s%s",
            self.path,
            self.provider,
            " with IO binding" if self.io_binding else "",
        )

    def fit_shapes(self, layout: RowLayout) -> None:
        """Adapt batches to the graph as `layout` says (a model without a batch dimension,
        config.pbtxt's `reshape`)."""
        self._layout = layout

    def run_size(self, rows: int) -> int:
        """The batch size `rows` rows run at: the smallest warmed size that holds them (`rows`
        itself before warm-up, or above every warmed size)."""
        index = bisect.bisect_left(self.warmed_sizes, rows)
        return self.warmed_sizes[index] if index < len(self.warmed_sizes) else rows

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a batch: `[N, ...input dims]` in, `[N, ...output dims]` out (fp16
        outputs as float32).

        Runs at `run_size(N)` rows (zero rows padded on, then dropped from the answer).
        """
        rows = len(batch)
        size = self.run_size(rows)
        if size != rows:
            padding = np.zeros((size - rows, *batch.shape[1:]), dtype=batch.dtype)
            return self._run(np.concatenate([batch, padding]))[:rows]
        return self._run(batch)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        rows = len(batch)
        if batch.dtype != self._input_dtype:
            batch = batch.astype(self._input_dtype)
        batch = self._layout.to_graph(batch)
        if self.io_binding:
            # The input is copied to the device once; the output is allocated there (no
            # per-run host allocation inside the run) and copied back once.
            binding = self._session.io_binding()
            binding.bind_cpu_input(self.input_name, np.ascontiguousarray(batch))
            binding.bind_output(self.output_name, self._bound_device)
            self._session.run_with_iobinding(binding)
            out = binding.copy_outputs_to_cpu()[0]
        else:
            out = self._session.run(self._output_names, {self.input_name: batch})[0]
        out = self._layout.from_graph(out, rows)
        return out.astype(np.float32) if out.dtype == np.float16 else out

    def warm_up(self, sample_shape: tuple[int, ...], batch_sizes: Iterable[int]) -> None:
        """Run each batch size once so first requests do not pay for allocation or autotuning;
        from then on `run` uses only these sizes (see the module docstring).

        Records in `run_seconds` how long each size takes once warm (sizes that run in under
        `_RETIME_BELOW_S` are timed again: their first run is mostly set-up).
        """
        if any(d < 0 for d in sample_shape):
            log.info("%s: not warmed up (its input has dims of any size)", self.path)
            return
        sizes = tuple(sorted({size for size in batch_sizes if size > 0}))
        for size in sizes:
            batch: np.ndarray = np.zeros((size, *sample_shape), dtype=self._input_dtype)
            seconds = _timed(self._run, batch)
            if seconds < _RETIME_BELOW_S:
                seconds = min(_timed(self._run, batch) for _ in range(3))
            self.run_seconds[size] = seconds
        self.warmed_sizes = sizes


_RETIME_BELOW_S = 0.01


def _timed(run: Callable[[np.ndarray], np.ndarray], batch: np.ndarray) -> float:
    started = time.perf_counter()
    run(batch)
    return time.perf_counter() - started


def warm_up_sizes(max_batch_size: int, preferred: Iterable[int] = ()) -> list[int]:
    """Batch sizes to warm up: powers of two up to `max_batch_size`, the maximum, preferred ones."""
    sizes = {1, max(1, max_batch_size)}
    size = 2
    while size < max_batch_size:
        sizes.add(size)
        size *= 2
    sizes.update(p for p in preferred if 0 < p <= max(1, max_batch_size))
    return sorted(sizes)
