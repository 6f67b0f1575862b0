"""Weights files and the training state.

- Weights: one `.safetensors` per epoch plus the final one, written by training and read
  (strictly, refusing anything that does not fit) wherever a model is built.
- The training state (`train_state.safetensors`): what an unfinished run needs to continue bit
  for bit: the weights, the optimizer's tensors, and everything else (epoch, recipe, settings,
  history, optimizer hyper-parameters and scalars) as JSON in the file's metadata.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnzoo.errors import InvalidInput, NotFound
from cnnzoo.fileio import atomic_path

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "decode_state",
    "encode_state",
    "epoch_path",
    "list_epochs",
    "load_weights_file",
    "read_metadata",
    "read_state_dict",
    "save_weights",
    "load_train_state",
    "save_train_state",
    "EPOCHS_DIR",
    "STATE_FILE",
    "WEIGHT_DTYPES",
]

EPOCHS_DIR = "epochs"
STATE_FILE = "train_state.safetensors"
# safetensors writes its metadata map in a random order (a hash map), so a file with several
# metadata keys gets different bytes, and a different sha256, on every save. One key holding
# sorted JSON keeps the same weights byte-identical.
METADATA_KEY = "cnnzoo"
_EPOCH_FILE = re.compile(r"^epoch_(\d{3,})\.safetensors$")


def epoch_path(model_dir: Path, epoch: int) -> Path:
    """`<model_dir>/epochs/epoch_NNN.safetensors`."""
    return Path(model_dir) / EPOCHS_DIR / f"epoch_{epoch:03d}.safetensors"


def list_epochs(folder: str | Path) -> list[tuple[int, Path]]:
    """(epoch, path) of every epoch checkpoint, sorted by epoch.

    Args:
        folder: a model folder (with an `epochs/` subfolder) or the `epochs/` folder itself.
    """
    folder = Path(folder)
    if (folder / EPOCHS_DIR).is_dir():
        folder = folder / EPOCHS_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _EPOCH_FILE.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


WEIGHT_DTYPES = ("float32", "float16", "int8")
# An int8 tensor is stored with its per-output-channel float32 scales under `<key>:scale`
# (":" never appears in a state-dict key).
_SCALE = ":scale"


def encode_state(state: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """The tensors a weights file stores for `state` with floating-point weights as `dtype`.

    float16 halves every floating tensor; int8 quantises each weight of two or more dimensions
    symmetrically per output channel (scale = max |w| / 127) and keeps 1-D tensors (biases,
    batch-norm statistics: few and sensitive) in float32.
    """
    import torch

    stored = {}
    for key, value in state.items():
        value = value.detach().cpu()
        if not value.is_floating_point() or dtype == "float32":
            stored[key] = value.contiguous()
        elif dtype == "float16":
            stored[key] = value.half().contiguous()
        elif value.ndim < 2:
            stored[key] = value.float().contiguous()
        else:
            scale = value.float().abs().flatten(1).amax(1).clamp_min(1e-12) / 127
            quantised = torch.round(value / scale.view(-1, *[1] * (value.ndim - 1)))
            stored[key] = quantised.clamp(-127, 127).to(torch.int8).contiguous()
            stored[key + _SCALE] = scale.contiguous()
    return stored


def decode_state(stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict from what `encode_state` stored (int8 tensors back to float32); tensors of
    other files pass through unchanged."""
    state = {k: v for k, v in stored.items() if not k.endswith(_SCALE)}
    for key, value in state.items():
        scale = stored.get(key + _SCALE)
        if scale is not None:
            state[key] = value.float() * scale.view(-1, *[1] * (value.ndim - 1))
    return state


def save_weights(
    model: nn.Module, path: Path, metadata: dict[str, str], dtype: str = "float32"
) -> None:
    """Write the model's state dict as `.safetensors` atomically, with string metadata.

    Floating-point weights are stored as `dtype` (see `encode_state`); loading
    (`cnnzoo.zoo.build_model`) decodes them to float32. The same weights and metadata always
    give the same bytes (see `METADATA_KEY`).
    """
    from safetensors.torch import save_file

    packed = {METADATA_KEY: json.dumps(metadata, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(encode_state(model.state_dict(), dtype), str(tmp), metadata=packed)


def read_metadata(raw: dict[str, str] | None) -> dict[str, str]:
    """The metadata `save_weights` stored, from a file's raw safetensors metadata.

    Files written by other tools keep their own flat metadata, returned as it is.
    """
    raw = dict(raw or {})
    if METADATA_KEY in raw:
        return dict(json.loads(raw[METADATA_KEY]))
    return raw


_TORCH_SUFFIXES = (".pth", ".pt")


def read_state_dict(
    path: Path, *, accept_pth: bool = False, owner: str = "this model"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A state dict and its metadata from `.safetensors` (or a torch `.pth` when `accept_pth`).

    Args:
        path: the weights file.
        accept_pth: also read torch state dicts (`torch.load(weights_only=True)`).
        owner: what the weights are for, named in the refusal of a `.pth`.

    Raises:
        NotFound: the file does not exist.
        InvalidInput: the file is damaged, or a `.pth` where only `.safetensors` is accepted.
    """
    import torch

    if not path.is_file():
        raise NotFound(f"weights file {path} does not exist")
    if path.suffix in _TORCH_SUFFIXES:
        if not accept_pth:
            raise InvalidInput(
                f"{path.name}: {owner} loads .safetensors weights only "
                f"(.pth is accepted for the torchvision entries)"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            # torch's message advises retrying with weights_only=False: for a file from
            # elsewhere that means running whatever code its pickle holds, so it is not passed on
            raise InvalidInput(
                f"{path} is not a plain state dict of tensors: it is damaged, or its pickle holds "
                "other Python objects, which cnnzoo does not load (unpickling them can run code); "
                "save it with torch.save(model.state_dict(), ...) or as .safetensors"
            ) from None
        except Exception as err:  # a damaged zip or file: torch's first line says what
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            if "weights_only" in reason:  # the same advice, on another path
                reason = "it does not load as plain tensors"
            raise InvalidInput(f"{path} is not a readable torch state dict ({reason})") from None
        if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise InvalidInput(f"{path} does not hold a state dict of tensors")
        return state, {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = read_metadata(handle.metadata())
            stored = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as err:  # SafetensorError, OSError, ValueError on a damaged header
        raise InvalidInput(
            f"{path} is not a valid .safetensors file (corrupt or truncated?): {err}"
        ) from None
    return decode_state(stored), metadata


def load_weights_file(
    model: nn.Module, path: Path, name: str, *, accept_pth: bool = False
) -> dict[str, str]:
    """Load `path` into `model` (the zoo model `name`) strictly; returns the file's metadata.

    Raises:
        InvalidInput: weights another zoo model was trained for, or tensors that are missing,
            unexpected or wrongly shaped (a few of each are named).
    """
    state, metadata = read_state_dict(path, accept_pth=accept_pth, owner=name)
    trained_for = metadata.get("zoo_entry")
    if trained_for and trained_for != name:
        raise InvalidInput(f"{path.name} holds weights of {trained_for}, not {name}")
    _check_fits(model, state, name, path)
    model.load_state_dict(state, strict=True)
    return metadata


def _check_fits(model: nn.Module, state: dict[str, Any], name: str, path: Path) -> None:
    """Refuse a state dict with missing, unexpected or wrongly shaped tensors, naming a few."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", mismatched)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            parts.append(f"{label}: {', '.join(items[:3])}{more}")
    raise InvalidInput(f"{path.name} does not fit the {name} architecture ({'; '.join(parts)})")


def save_train_state(
    model_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, info: dict[str, Any]
) -> None:
    """Write `<model_dir>/train_state.safetensors` atomically.

    Weights and optimizer tensors are stored as tensors; `info` (JSON-serialisable), the
    optimizer's parameter groups and its non-tensor per-parameter values go into the metadata.
    """
    from safetensors.torch import save_file

    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    scalars: dict[str, Any] = {}
    for index, values in opt_state["state"].items():
        for key, value in values.items():
            if hasattr(value, "detach"):
                tensors[f"optimizer/{index}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}/{key}"] = value
    info = {**info, "optimizer_groups": opt_state["param_groups"], "optimizer_scalars": scalars}
    with atomic_path(Path(model_dir) / STATE_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"train_state": json.dumps(info)})


def load_train_state(
    model_dir: Path,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(model state dict, optimizer state dict, info) from `save_train_state`'s file.

    Raises:
        NotFound: there is no state file (the run finished, or never started).
        InvalidInput: the file is damaged.
    """
    from safetensors import safe_open

    path = Path(model_dir) / STATE_FILE
    if not path.is_file():
        finished = (Path(model_dir) / "card.json").is_file()
        raise NotFound(
            f"nothing to resume in {model_dir}: "
            + ("that run is finished" if finished else f"no {STATE_FILE}; start without --resume")
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            info = json.loads((handle.metadata() or {})["train_state"])
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as err:
        raise InvalidInput(f"{path} is damaged ({err}); start the run again") from None
    model_state = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in info.pop("optimizer_scalars", {}).items():
        index, name = key.split("/", 1)
        per_param.setdefault(int(index), {})[name] = value
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, name = key.split("/", 2)
            per_param.setdefault(int(index), {})[name] = value
    optimizer_state = {"state": per_param, "param_groups": info.pop("optimizer_groups")}
    return model_state, optimizer_state, info
