"""Errors the project raises on purpose.

Each carries a `reason` a person can act on (names, counts, allowed values, the flag that fixes
it). The CLI prints the reason as one line and exits with `exit_code`; the gRPC layer maps each
class to one status code in one place (`serving`), so handlers never pick codes themselves.
"""

from __future__ import annotations


class CnnzooError(Exception):
    """Base class. Status: INTERNAL unless a subclass says otherwise."""

    exit_code = 1

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidInput(CnnzooError):
    """A request, argument or file is malformed. Status: INVALID_ARGUMENT."""

    exit_code = 2


class NotFound(CnnzooError):
    """A named model, version, layer or file does not exist. Status: NOT_FOUND."""

    exit_code = 3


class DatasetNotFound(NotFound):
    """A dataset is missing or corrupted under the data directory. Status: NOT_FOUND."""


class AlreadyExists(CnnzooError):
    """Refusing to overwrite something that exists (an exported version). Status: ALREADY_EXISTS."""

    exit_code = 4


class IntegrityError(CnnzooError):
    """A file's sha256 or contents do not match what was recorded. Status: FAILED_PRECONDITION."""

    exit_code = 5
