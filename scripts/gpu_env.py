"""What a CUDA host offers cnnzoo: Python, PyTorch, ONNX Runtime's CUDA provider, the CUDA and
cuDNN libraries they load, the driver, and each mismatch named (scripts/gpu-check.sh's `env` step).

    python scripts/gpu_env.py [--json FILE]

Prints one line per finding and writes the whole report as JSON; `torch_cuda` and `ort_cuda`
say whether each can compute on a GPU, `problems` lists what keeps them from it in words a person
can act on. Never fails: a missing piece is a finding.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The Python the packed wheels are built for (scripts/gpu-pack.sh).
PACKED_FOR = (3, 12)
_LIBRARIES = re.compile(
    r"/(lib(?:cudart|cublas|cublasLt|cudnn[a-z_]*|cuda|nvrtc|curand|cufft|nccl|nvidia-ml)"
    r"\.so[.\d]*|libonnxruntime_providers_cuda\.so)$"
)


def _distribution(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def loaded_libraries() -> dict[str, str]:
    """CUDA libraries mapped into this process: {file name: path}."""
    found: dict[str, str] = {}
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        path = line.split()[-1] if line.split() else ""
        match = _LIBRARIES.search(path)
        if match:
            found.setdefault(match.group(1), path)
    return dict(sorted(found.items()))


def torch_report(problems: list[str]) -> dict[str, Any]:
    try:
        import torch
    except ImportError as err:
        problems.append(f"PyTorch is not installed: {err}")
        return {"installed": False}
    report: dict[str, Any] = {
        "version": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "available": torch.cuda.is_available(),
    }
    if torch.version.cuda is None:
        problems.append(f"torch {torch.__version__} is a CPU build: install a CUDA build")
    elif report["available"]:
        report["devices"] = [
            {
                "name": torch.cuda.get_device_name(i),
                "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
                "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
            }
            for i in range(torch.cuda.device_count())
        ]
    else:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hidden = f" (CUDA_VISIBLE_DEVICES is {visible!r})" if visible is not None else ""
        problems.append(f"PyTorch sees no CUDA device{hidden}")
    return report


def onnxruntime_report(problems: list[str]) -> dict[str, Any]:
    try:
        import onnxruntime as ort
    except ImportError as err:
        problems.append(f"onnxruntime is not installed: {err}")
        return {"installed": False}
    from cnnzoo.serving.runtime import built_for_cuda, cuda_unavailable_reason

    report: dict[str, Any] = {
        "version": ort.__version__,
        "imported_from": str(Path(ort.__file__).parent),
        "distributions": {
            name: version
            for name in ("onnxruntime", "onnxruntime-gpu")
            if (version := _distribution(name))
        },
        "providers": ort.get_available_providers(),
        "built_for_cuda": built_for_cuda() or None,
    }
    reason = cuda_unavailable_reason()
    report["cuda_unavailable"] = reason
    if reason is not None:
        problems.append(f"onnxruntime cannot use CUDA: {reason}")
        return report
    report["session"] = _cuda_session(problems)
    return report


def _cuda_session(problems: list[str]) -> dict[str, Any]:
    """Create and run a one-node session with `--device cuda`'s settings."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from cnnzoo.serving.runtime import OnnxModel, RuntimeOptions

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "probe.onnx"
        onnx.save(model, path)
        try:
            session = OnnxModel(path, RuntimeOptions(device="cuda"))
            out = session.run(np.array([[-1, 0, 1, 2]], np.float32))
        except Exception as err:  # the finding is the error itself
            problems.append(f"a CUDA session failed: {err}")
            return {"ok": False, "error": str(err)}
    ok = out.tolist() == [[0.0, 0.0, 1.0, 2.0]]
    if not ok:
        problems.append(f"a CUDA session computed ReLU wrongly: {out.tolist()}")
    return {"ok": ok, "provider": session.provider, "io_binding": session.io_binding}


def driver_report(problems: list[str], torch_cuda: str | None, ort_cuda: str | None) -> dict:
    try:
        import pynvml
    except ImportError:
        return {"nvml": "nvidia-ml-py is not installed"}
    try:
        pynvml.nvmlInit()
    except Exception as err:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return {"nvml": f"NVML unavailable: {err}"}
    try:
        version = pynvml.nvmlSystemGetDriverVersion()
        cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
    finally:
        pynvml.nvmlShutdown()
    version = version.decode() if isinstance(version, bytes) else version
    supports = f"{cuda // 1000}.{cuda % 1000 // 10}"
    for who, needs in (("torch", torch_cuda), ("onnxruntime", ort_cuda)):
        if needs and int(needs.split(".")[0]) > cuda // 1000:
            problems.append(
                f"{who} is built for CUDA {needs} but driver {version} supports CUDA up to "
                f"{supports}: update the NVIDIA driver"
            )
    return {"version": version, "supports_cuda": supports}


def report() -> dict[str, Any]:
    problems: list[str] = []
    python = {"version": platform.python_version(), "executable": sys.executable}
    if sys.version_info[:2] != PACKED_FOR:
        problems.append(
            f"Python {platform.python_version()} here, but scripts/gpu-pack.sh packs wheels for "
            f"CPython {'.'.join(map(str, PACKED_FOR))} (set PYTHON to a 3.12 interpreter, or "
            "pack for this one)"
        )
    torch = torch_report(problems)
    ort = onnxruntime_report(problems)
    driver = driver_report(problems, torch.get("cuda_build"), ort.get("built_for_cuda"))
    ort_cuda = bool(ort.get("session", {}).get("ok"))
    return {
        "python": python,
        "torch": torch,
        "onnxruntime": ort,
        "driver": driver,
        "libraries": loaded_libraries(),
        "torch_cuda": bool(torch.get("available")),
        "ort_cuda": ort_cuda,
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    found = report()
    print(f"python {found['python']['version']}; torch {found['torch'].get('version')} "
          f"(CUDA {'yes' if found['torch_cuda'] else 'no'}); onnxruntime "
          f"{found['onnxruntime'].get('version')} (CUDA {'yes' if found['ort_cuda'] else 'no'}); "
          f"driver {found['driver'].get('version', '-')}")  # fmt: skip
    for name, path in found["libraries"].items():
        print(f"  loaded {name}: {path}")
    for problem in found["problems"]:
        print(f"  problem: {problem}")
    if args.json:
        args.json.write_text(json.dumps(found, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
