"""torchvision's pretrained weights by name: `--init torchvision[:TAG]`, `--weights ...` alike.

`torchvision` names the architecture's default weights (its enum's `DEFAULT`), and
`torchvision:IMAGENET1K_V2` one of its enum's members (`torchvision.models.get_model_weights`).
The file is the one torchvision itself would use: downloaded once into torch's hub cache
(`$TORCH_HOME/hub/checkpoints/`, as `torch.hub.load_state_dict_from_url` does), its sha256
checked against the prefix in its name, on download and every time it is read; the categories
and the preprocessing (resize, crop, mean, std) come from the enum's `meta` and `transforms`.
Offline, one error names the file, where it is fetched from and where to put it.

`CNNZOO_WEIGHTS_MIRROR=URL` fetches the same file names from `URL/` instead of
download.pytorch.org (a server inside a network without internet access); the hash check
still applies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnzoo.errors import IntegrityError, InvalidInput, Unavailable
from cnnzoo.fileio import sha256_file
from cnnzoo.zoo.architectures import ARCHITECTURES, Architecture
from cnnzoo.zoo.fetch import (
    TransferFailed,
    env_mirror,
    fetch_file,
    made_folders,
    mirror_url,
    remove_made_folders,
)
from cnnzoo.zoo.preprocess import Preprocess

if TYPE_CHECKING:
    import torch

__all__ = [
    "MIRROR_ENV",
    "PREFIX",
    "PretrainedWeights",
    "is_pretrained_spec",
    "pretrained_weights",
]

PREFIX = "torchvision"
MIRROR_ENV = "CNNZOO_WEIGHTS_MIRROR"


def is_pretrained_spec(value: object) -> bool:
    """Whether `value` names torchvision weights (`torchvision` or `torchvision:TAG`)."""
    return isinstance(value, str) and (value == PREFIX or value.startswith(PREFIX + ":"))


@dataclass(frozen=True)
class PretrainedWeights:
    """One torchvision weights enum member, and where its file lives.

    Attributes:
        arch: the architecture it is for.
        name: the enum member, e.g. "ResNet50_Weights.IMAGENET1K_V2" (DEFAULT resolved).
        url: where torchvision downloads it from.
        categories: the class names, in the order of the network's outputs.
        preprocess: the evaluation preprocessing of the weights (`transforms()`), RGB.
        meta: the rest of the enum's meta (num_params, recipe, metrics, ...).
        weights: the enum member itself (torchvision's `Weights` value).
    """

    arch: str
    name: str
    url: str
    categories: tuple[str, ...] = field(repr=False)
    preprocess: Preprocess
    meta: dict[str, Any] = field(repr=False)
    weights: Any = field(repr=False, compare=False)

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def sha256_prefix(self) -> str | None:
        """The hash prefix in the file's name (torch.hub's convention), if it has one."""
        import torch.hub

        match = torch.hub.HASH_REGEX.search(self.file_name)
        return match.group(1) if match and match.group(1) else None

    @property
    def path(self) -> Path:
        """The file in torch's hub cache (`torch.hub.get_dir()/checkpoints`)."""
        import torch.hub

        return Path(torch.hub.get_dir()) / "checkpoints" / self.file_name

    @property
    def spec(self) -> str:
        """`torchvision:TAG`, naming exactly these weights."""
        return f"{PREFIX}:{self.name.rsplit('.', 1)[-1]}"

    def record(self) -> dict[str, Any]:
        """What a card records: the enum member, the file and its sha256 (after `fetch`)."""
        return {
            "weights": self.name,
            "file": self.file_name,
            "sha256": sha256_file(self.path),
            "url": self.url,
        }

    def fetch(self, *, progress: bool = True) -> Path:
        """The weights file, downloaded into the cache unless it is there; checked either way.

        Raises:
            Unavailable: not cached and the download failed (names the file, the URL, the
                cause and where to put the file); nothing is left behind.
            IntegrityError: the file (cached or downloaded) does not match its hash.
        """
        path, prefix = self.path, self.sha256_prefix
        if path.is_file():
            if prefix and not sha256_file(path).startswith(prefix):
                raise IntegrityError(
                    f"{path} does not match its sha256 prefix {prefix} (damaged or replaced); "
                    "delete it to download it again"
                )
            return path
        url = mirror_url(env_mirror(MIRROR_ENV), self.url, self.file_name)
        made = made_folders(path.parent)
        try:
            fetch_file(url, path, sha256_prefix=prefix, progress=progress)
        except TransferFailed as err:
            remove_made_folders(made)
            raise Unavailable(
                f"could not download torchvision's {self.name} weights ({self.file_name}) from "
                f"{url}: {err.cause}; put the file (from {self.url}) at {path}, or set "
                f"{MIRROR_ENV} to a server holding it"
            ) from None
        except BaseException:
            remove_made_folders(made)
            raise
        return path

    @classmethod
    def from_member(cls, arch: Architecture | str, member: Any) -> PretrainedWeights:
        """The weights of a torchvision `WeightsEnum` member (its meta must hold categories)."""
        arch_name = arch.name if isinstance(arch, Architecture) else arch
        return cls(
            arch=arch_name,
            name=f"{type(member).__name__}.{member.name}",
            url=member.url,
            categories=tuple(member.meta["categories"]),
            preprocess=_preprocess(member),
            meta={k: v for k, v in member.meta.items() if k != "categories"},
            weights=member,
        )

    def state_dict(self, *, progress: bool = True) -> dict[str, torch.Tensor]:
        """The weights as a state dict (`torch.load(weights_only=True)` of the checked file)."""
        from cnnzoo.zoo.checkpoints import read_state_dict

        state, _ = read_state_dict(self.fetch(progress=progress), accept_pth=True)
        return state


def pretrained_weights(arch: Architecture | str, spec: str) -> PretrainedWeights:
    """The torchvision weights `spec` names for `arch` (imports torchvision).

    Raises:
        InvalidInput: `spec` is not `torchvision[:TAG]`, the architecture has no torchvision
            weights (the ones that have are named), or TAG is not one of its weights (its tags
            are named).
    """
    from torchvision import models

    arch = arch if isinstance(arch, Architecture) else ARCHITECTURES[arch]
    if not is_pretrained_spec(spec):
        raise InvalidInput(f"{spec!r} is not torchvision or torchvision:TAG")
    if not arch.torchvision:
        having = ", ".join(n for n, a in ARCHITECTURES.items() if a.torchvision)
        raise InvalidInput(
            f"{spec}: {arch.name} has no torchvision weights; architectures with them: {having}"
        )
    enum = models.get_model_weights(arch.name)
    tag = spec.partition(":")[2] or "DEFAULT"
    try:
        member = enum[tag.replace(enum.__name__ + ".", "")]
    except KeyError:
        raise InvalidInput(
            f"{spec}: {arch.name}'s torchvision weights are "
            f"{', '.join(PREFIX + ':' + t for t in enum.__members__)}"
        ) from None
    return PretrainedWeights.from_member(arch, member)


def _preprocess(member: Any) -> Preprocess:
    """The enum's evaluation transform (`ImageClassification`) as a `Preprocess`."""
    transform = member.transforms()
    return Preprocess(
        colour="RGB",
        resize=int(transform.resize_size[0]),
        crop=int(transform.crop_size[0]),
        pad=0,
        mean=tuple(float(m) for m in transform.mean),
        std=tuple(float(s) for s in transform.std),
    )
