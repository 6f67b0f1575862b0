"""Restricted API groups, as Triton's `--grpc-restricted-protocol=<groups>:<key>=<value>` and
`--http-restricted-api=<groups>:<key>=<value>`.

A gRPC call to an RPC of a restricted group must carry the header `triton-grpc-protocol-<key>`
with the group's value; without it, or with another value, it is answered UNAVAILABLE "This
protocol is restricted, expecting header 'triton-grpc-protocol-<key>'", exactly as Triton does
(server/src/grpc/grpc_server.cc). A REST request must carry the header `<key>`; without it,
403 `{"error": "This API is restricted, expecting header '<key>'"}` (server/src/http_server.cc).
Triton's groups, plus `explain` for cnnzoo's own Explain and `explorer` for its page; a group
may appear in one restriction of each flag only (as in Triton):

| group | gRPC | REST |
|---|---|---|
| health | ServerLive/Ready, ModelReady, grpc.health.v1 Check and Watch | /v2/health/*, .../ready |
| metadata | ServerMetadata, ModelMetadata | GET /v2, GET /v2/models/<m>[/versions/<v>] |
| inference | ModelInfer, ModelStreamInfer, Classify | .../infer, .../classify |
| explain | Explain | .../explain, .../activations |
| explorer | - | /explorer/* (the page and its files) |
| shared-memory | System- and CudaSharedMemory Status/Register/Unregister | /v2/*sharedmemory/* |
| model-config | ModelConfig | .../config |
| model-repository | RepositoryIndex, RepositoryModelLoad/Unload, ListModels | /v2/repository/* |
| statistics | ModelStatistics | .../stats |
| trace | TraceSetting | /v2/trace/*, .../trace/* |
| logging | LogSettings | /v2/logging |

Server reflection stays open: it describes the protocol, which is public, not the server's state.

Unlike Triton, the value never appears on the command line (where `ps` shows it to every user
of the machine): it is `env:NAME` (an environment variable) or `file:PATH` (a file's first
line, e.g. a Kubernetes secret mounted as a file). Values are compared in constant time (the
SHA-256 digests of the sent and the expected value, so not even the length leaks).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cnnzoo.errors import InvalidInput, NotFound

__all__ = [
    "GRPC",
    "GROUPS",
    "HTTP",
    "Restriction",
    "RestrictedProtocols",
    "http_group",
    "parse_restriction",
    "read_secret",
]

_INFERENCE = "/inference.GRPCInferenceService/"
_ZOO = "/cnnzoo.v1.Zoo/"
_HEALTH = "/grpc.health.v1.Health/"

# Group -> the full names of its RPCs.
GROUPS: Mapping[str, tuple[str, ...]] = {
    "health": (
        *(_INFERENCE + m for m in ("ServerLive", "ServerReady", "ModelReady")),
        _HEALTH + "Check",
        _HEALTH + "Watch",
    ),
    "metadata": (_INFERENCE + "ServerMetadata", _INFERENCE + "ModelMetadata"),
    "inference": (_INFERENCE + "ModelInfer", _INFERENCE + "ModelStreamInfer", _ZOO + "Classify"),
    "explain": (_ZOO + "Explain",),
    "explorer": (),  # REST only: the explorer's page and files
    "shared-memory": tuple(
        f"{_INFERENCE}{kind}SharedMemory{action}"
        for kind in ("System", "Cuda")
        for action in ("Status", "Register", "Unregister")
    ),
    "model-config": (_INFERENCE + "ModelConfig",),
    "model-repository": (
        *(_INFERENCE + m for m in ("RepositoryIndex", "RepositoryModelLoad")),
        _INFERENCE + "RepositoryModelUnload",
        _ZOO + "ListModels",
    ),
    "statistics": (_INFERENCE + "ModelStatistics",),
    "trace": (_INFERENCE + "TraceSetting",),
    "logging": (_INFERENCE + "LogSettings",),
}

# REST paths -> group (Triton's routes; the first match wins).
_HTTP_GROUPS = tuple(
    (re.compile(pattern), group)
    for pattern, group in (
        (r"^/v2/health/", "health"),
        (r"^/v2/models/stats$", "statistics"),
        (r"^/v2/(system|cuda)sharedmemory/", "shared-memory"),
        (r"^/v2/repository/", "model-repository"),
        (r"^/v2/(models/[^/]+(/versions/[^/]+)?/)?trace", "trace"),
        (r"^/v2/logging$", "logging"),
        (r"^/v2/models/[^/]+(/versions/[^/]+)?/ready$", "health"),
        (r"^/v2/models/[^/]+(/versions/[^/]+)?/(infer|classify)$", "inference"),
        (r"^/v2/models/[^/]+(/versions/[^/]+)?/(explain|activations)$", "explain"),
        (r"^/explorer(/|$)", "explorer"),
        (r"^/v2/models/[^/]+(/versions/[^/]+)?/config$", "model-config"),
        (r"^/v2/models/[^/]+(/versions/[^/]+)?/stats$", "statistics"),
        (r"^/v2(/models/[^/]+(/versions/[^/]+)?)?$", "metadata"),
    )
)

_KEY = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def http_group(path: str) -> str | None:
    """The group of a REST path, or None (an unknown route: 404 whatever the headers)."""
    for pattern, group in _HTTP_GROUPS:
        if pattern.match(path):
            return group
    return None


@dataclass(frozen=True)
class _Flavour:
    """How one front end restricts: its option, header prefix and refusal wording."""

    flag: str
    header_prefix: str
    noun: str  # "protocol" (gRPC) or "API" (REST), as in Triton's messages


GRPC = _Flavour("--grpc-restricted-protocol", "triton-grpc-protocol-", "protocol")
HTTP = _Flavour("--http-restricted-api", "", "API")
_PRINTABLE = re.compile(r"^[\x20-\x7e]+$")  # what a gRPC header value may hold


@dataclass(frozen=True)
class Restriction:
    """One `--grpc-restricted-protocol`: its groups, the header and the value it requires."""

    groups: tuple[str, ...]
    header: str
    refusal: str  # Triton's message for a call without the header or with another value
    _digest: bytes

    @classmethod
    def create(cls, flavour: _Flavour, groups: Sequence[str], key: str, value: str) -> Restriction:
        header = flavour.header_prefix + key
        refusal = f"This {flavour.noun} is restricted, expecting header '{header}'"
        return cls(tuple(groups), header, refusal, _digest(value))

    def allows(self, metadata: Iterable[tuple[str, str | bytes]]) -> bool:
        """Whether `metadata` (a gRPC call's headers) carries the required value."""
        for key, value in metadata:
            if key == self.header:  # the first one counts, as in Triton
                return self.matches(value)
        return False

    def matches(self, value: str | bytes | None) -> bool:
        """Whether a header's value is the required one (constant time)."""
        if value is None:
            return False
        sent = value if isinstance(value, bytes) else value.encode("utf-8", "replace")
        return hmac.compare_digest(hashlib.sha256(sent).digest(), self._digest)


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


class RestrictedProtocols:
    """The restrictions of one front end, looked up by gRPC method or by group.

    Raises:
        InvalidInput: a group appears in two restrictions.
    """

    def __init__(self, restrictions: Sequence[Restriction] = (), flag: str = GRPC.flag) -> None:
        self.restrictions = tuple(restrictions)
        self._by_group: dict[str, Restriction] = {}
        self._by_method: dict[str, Restriction] = {}
        for restriction in self.restrictions:
            for group in restriction.groups:
                if group in self._by_group:
                    raise InvalidInput(
                        f"{flag}: group {group!r} is in two restrictions; a group may be "
                        "restricted once"
                    )
                self._by_group[group] = restriction
                for method in GROUPS[group]:
                    self._by_method[method] = restriction

    def __bool__(self) -> bool:
        return bool(self.restrictions)

    @property
    def groups(self) -> frozenset[str]:
        return frozenset(self._by_group)

    def for_method(self, method: str) -> Restriction | None:
        """The restriction on gRPC method `method` ("/package.Service/Method"), if any."""
        return self._by_method.get(method)

    def for_group(self, group: str | None) -> Restriction | None:
        return self._by_group.get(group) if group else None


def parse_restriction(
    spec: str, flavour: _Flavour = GRPC, environ: Mapping[str, str] | None = None
) -> Restriction:
    """`<group>[,<group>...]:<key>=env:<NAME>` or `...:<key>=file:<PATH>`.

    Raises:
        InvalidInput: malformed, an unknown group, a bad key, or a value given literally.
        NotFound: the environment variable or file does not exist.
    """
    flag = flavour.flag
    groups_text, colon, setting = spec.partition(":")
    key, equals, source = setting.partition("=")
    if not (colon and equals and groups_text and key and source):
        raise InvalidInput(
            f"{flag} takes <groups>:<key>=env:<NAME> or <groups>:<key>=file:<PATH>, "
            f"got {spec.split('=', 1)[0]!r}..."
        )
    groups = [g.strip() for g in groups_text.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups:
        raise InvalidInput(
            f"{flag}: unknown group {', '.join(map(repr, unknown)) or '(none)'}; "
            f"groups: {', '.join(GROUPS)}"
        )
    if not _KEY.match(key):
        raise InvalidInput(
            f"{flag}: key {key!r} must be lower-case letters, digits, '-', '_' or '.' "
            "(gRPC header names are lower case)"
        )
    return Restriction.create(flavour, groups, key, read_secret(source, flag, environ))


def read_secret(source: str, flag: str, environ: Mapping[str, str] | None = None) -> str:
    """The value `env:NAME` or `file:PATH` points at (a file's first line).

    Raises:
        InvalidInput: `source` is neither (a literal value would show in the process list), or
            the value is empty or not printable ASCII (gRPC headers carry nothing else).
        NotFound: the variable or the file does not exist.
    """
    environ = os.environ if environ is None else environ
    kind, _, where = source.partition(":")
    if kind == "env" and where:
        if where not in environ:
            raise NotFound(f"{flag}: the environment variable {where} is not set")
        value = environ[where]
    elif kind == "file" and where:
        try:
            text = Path(where).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise NotFound(f"{flag}: {where} does not exist") from None
        except (OSError, UnicodeDecodeError) as err:
            raise InvalidInput(f"{flag}: cannot read {where}: {err}") from None
        value = text.splitlines()[0] if text.strip() else ""
    else:
        raise InvalidInput(
            f"{flag}: give the value as env:<NAME> or file:<PATH>, never on the command line "
            "(every user of the machine can read a process's arguments)"
        )
    if not value or not _PRINTABLE.match(value):
        raise InvalidInput(
            f"{flag}: the value from {source} must be a non-empty line of printable ASCII"
        )
    return value
