"""Errors the project raises on purpose: the one hierarchy every package uses.

Each carries a `reason` a person can act on (names, counts, allowed values, the flag that fixes
it). The CLI prints the reason as one line and exits with `exit_code`. Each class names its
status, `status` (a gRPC status code name, as google.rpc.Code spells it): the gRPC front end
answers with that code and the REST front end with the HTTP code its table gives that name, by
lookup, so handlers never pick codes themselves; `error_class` is the inverse a client uses.
`EXIT_CODES` lists every exit status of the command (`cnnzoo --help` and the README show it).

Reasons often quote what a caller sent; `quoted` bounds such quotes, so a 100 kB model name
never comes back in a message (gRPC clients refuse status messages over their header limit).
"""

from __future__ import annotations

import re

# How much of a caller's value a message quotes.
QUOTE_LIMIT = 80


def quoted(value: object, limit: int = QUOTE_LIMIT) -> str:
    """`repr(value)`, cut to about `limit` characters and saying how long it was when cut."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value)} characters" if isinstance(value, str) else f"{len(text)} characters"
    return f"{text[:limit]}... ({size})"


class CnnzooError(Exception):
    """Base class. Status: INTERNAL unless a subclass says otherwise."""

    exit_code = 1
    status = "INTERNAL"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidInput(CnnzooError):
    """A request, argument or file is malformed. Status: INVALID_ARGUMENT."""

    exit_code = 2
    status = "INVALID_ARGUMENT"


class NotFound(CnnzooError):
    """A named model, version, layer or file does not exist. Status: NOT_FOUND."""

    exit_code = 3
    status = "NOT_FOUND"


class DatasetNotFound(NotFound):
    """A dataset is missing or corrupted under the data directory. Status: NOT_FOUND."""


class AlreadyExists(CnnzooError):
    """Refusing to overwrite something that exists (an exported version). Status: ALREADY_EXISTS."""

    exit_code = 4
    status = "ALREADY_EXISTS"


class IntegrityError(CnnzooError):
    """A file's sha256 or contents do not match what was recorded. Status: FAILED_PRECONDITION."""

    exit_code = 5
    status = "FAILED_PRECONDITION"


class Unavailable(CnnzooError):
    """The server or a model cannot answer now (loading, refused, draining). Status: UNAVAILABLE."""

    exit_code = 6
    status = "UNAVAILABLE"


class ResourceExhausted(CnnzooError):
    """A bounded resource is full or a request is over one of the server's limits; the reason
    names the limit. Status: RESOURCE_EXHAUSTED."""

    exit_code = 7
    status = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(CnnzooError):
    """The caller's deadline passed before the answer was ready. Status: DEADLINE_EXCEEDED."""

    exit_code = 8
    status = "DEADLINE_EXCEEDED"


class ModelExecutionError(CnnzooError):
    """The model failed to run a well-formed request (ONNX Runtime raised). Status: INTERNAL."""


class ExecutionProviderError(CnnzooError):
    """The requested ONNX Runtime execution provider is unusable (a start-up error).
    Status: INTERNAL."""

    exit_code = 9


class ModelIncomplete(IntegrityError):
    """The model lacks what an operation needs (preprocessing parameters, its PyTorch weights),
    though it serves others (ModelInfer). Status: FAILED_PRECONDITION."""


class InvalidImage(InvalidInput):
    """Image number `index` (from 0) of a request is unusable. Status: INVALID_ARGUMENT.

    The index travels to the client in the trailing metadata (`IMAGE_INDEX_METADATA_KEY`), so
    `cnnzoo classify` can name the file instead of its position.
    """

    def __init__(self, index: int, problem: str) -> None:
        super().__init__(f"image {index}: {problem}")
        self.index = index
        self.problem = problem


class UnsupportedModel(InvalidInput):
    """The model cannot be explained faithfully (e.g. it calls functional `F.relu`, which no
    hook can see, so the deconvnet/guided rules would silently fall back to the plain gradient),
    or cannot run where it was asked to (`--device cuda` with a node ONNX Runtime would place on
    the CPU). Status: INVALID_ARGUMENT."""


class LayerNotFound(NotFound):
    """A layer name that the model does not have; the reason lists the valid names.
    Status: NOT_FOUND."""


class JobFileError(InvalidInput):
    """A job file that cannot be read or does not follow the schema. Status: INVALID_ARGUMENT."""


def _meaning(kind: type[CnnzooError]) -> str:
    """The first sentence of a class's docstring, without its status."""
    first = re.split(r"\.\s+(?=[A-Z])", " ".join((kind.__doc__ or "").split()))[0]
    text = first.split(" Status:")[0].rstrip(".").strip()
    return text[:1].lower() + text[1:]


def _error_classes() -> list[type[CnnzooError]]:
    """Every error class, in definition order (a base before its subclasses)."""
    return [v for v in globals().values() if isinstance(v, type) and issubclass(v, CnnzooError)]


def _first_class_per_exit_code() -> list[type[CnnzooError]]:
    """The most general class of each exit code, so a new error class with a new code is listed
    without editing a table."""
    kinds: dict[int, type[CnnzooError]] = {}
    for kind in _error_classes():
        kinds.setdefault(kind.exit_code, kind)
    return [kinds[code] for code in sorted(kinds)]


def _first_class_per_status() -> dict[str, type[CnnzooError]]:
    """The most general class of each status: what a client raises for a call that failed
    with it."""
    kinds: dict[str, type[CnnzooError]] = {}
    for kind in _error_classes():
        kinds.setdefault(kind.status, kind)
    return kinds


_CLASS_OF_STATUS = _first_class_per_status()


def error_class(status: str) -> type[CnnzooError]:
    """The error class a failed call's status name stands for (`CnnzooError` for a status no
    class names, such as INTERNAL or UNKNOWN)."""
    return _CLASS_OF_STATUS.get(status, CnnzooError)


# Every exit status of the `cnnzoo` command: `cnnzoo --help` and the README list these.
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (0, "success (`cnnzoo health`: the server or service is SERVING)"),
    (1, "any other error (`cnnzoo health`: not SERVING)"),
    (2, f"{_meaning(InvalidInput)}, or a usage error"),
    *((kind.exit_code, _meaning(kind)) for kind in _first_class_per_exit_code()[2:]),
    (130, "interrupted (Ctrl-C)"),
    (141, "the reader of the output went away (a closed pipe)"),
)
