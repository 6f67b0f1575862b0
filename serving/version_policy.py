"""Which versions of a model serve: config.pbtxt's `version_policy`, as Triton reads it.

- `latest { num_versions: N }` (the default, N = 1): the N newest versions. Where Triton marks
  a newest version that fails to load unavailable, cnnzoo serves the next older one that loads
  in its place, so a bad upload never takes a model down (docs/serving.md, "Versions").
- `all {}`: every version in the model's folder.
- `specific { versions: [...] }`: those versions; a listed version that is not in the folder is
  reported, the others serve.

A request without a version gets the newest version served, as in Triton.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cnnzoo.protos.model_config_pb2 import ModelConfig

__all__ = ["VersionPolicy"]


@dataclass(frozen=True)
class VersionPolicy:
    """`latest` > 0: the newest `latest` versions; else `specific` (None: every version)."""

    latest: int = 1
    specific: frozenset[int] | None = None

    @classmethod
    def of(cls, config: ModelConfig) -> VersionPolicy:
        policy = config.version_policy
        if policy.HasField("all"):
            return cls(latest=0)
        if policy.HasField("specific"):
            return cls(latest=0, specific=frozenset(policy.specific.versions))
        return cls(latest=max(1, policy.latest.num_versions))

    def eligible(self, on_disk: Sequence[int]) -> list[int]:
        """The versions of `on_disk` (ascending) the policy may serve, ascending."""
        if self.specific is None:
            return list(on_disk)
        return [v for v in on_disk if v in self.specific]

    def missing(self, on_disk: Sequence[int]) -> list[int]:
        """Versions the policy names that are not in the model's folder."""
        if self.specific is None:
            return []
        return sorted(self.specific - set(on_disk))

    @property
    def most(self) -> int | None:
        """How many versions serve at most (None: every eligible one)."""
        return self.latest or None

    def __str__(self) -> str:
        if self.latest:
            return f"latest {{ num_versions: {self.latest} }}"
        if self.specific is None:
            return "all"
        return f"specific {{ versions: {sorted(self.specific)} }}"
