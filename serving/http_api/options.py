"""The REST port's connection bounds as settings (no aiohttp here: `cnnzoo --help` reads the
defaults without loading it). What they do: `cnnzoo.serving.http_api.limits`."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from cnnzoo.errors import InvalidInput

__all__ = ["ExplorerOptions", "HttpLimits"]


@dataclass(frozen=True)
class HttpLimits:
    """The REST port's connection bounds (see the module docstring); times in seconds.

    Args:
        max_connections: connections open at once.
        header_timeout_s: from a request's first byte to its complete head.
        body_timeout_s: for a request's whole body to arrive.
        idle_timeout_s: a connection sending nothing for this long is closed.
    """

    max_connections: int = 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    idle_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if not value > 0:
                flag = "--http-" + item.name.removesuffix("_s").replace("_", "-")
                raise InvalidInput(f"{flag} must be positive, got {value!r}")


@dataclass(frozen=True)
class ExplorerOptions:
    """The explorer page on the REST port (`cnnzoo.serving.http_api.explorer`).

    Args:
        enabled: serve it at `/explorer/` (`--explorer on|off`).
        results: a job's output folder to link (`--results DIR`): its manifest's max-activations
            and activation-maximisation figures appear beside a unit of the same model.
    """

    enabled: bool = True
    results: Path | None = None

    def __post_init__(self) -> None:
        if self.results is not None and not (Path(self.results) / "manifest.json").is_file():
            raise InvalidInput(
                f"--results {self.results}: no manifest.json there; give the output folder of "
                "a `cnnzoo job` run"
            )
