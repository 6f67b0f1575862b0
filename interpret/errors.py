"""Errors of the `interpret` package (subclasses of the shared `zoo.errors` classes)."""

from __future__ import annotations

from zoo.errors import InvalidInput, NotFound

__all__ = ["JobFileError", "LayerNotFound", "UnsupportedModel"]


class UnsupportedModel(InvalidInput):
    """The model cannot be explained faithfully (e.g. it calls functional `F.relu`, which no
    hook can see, so the deconvnet/guided rules would silently fall back to the plain gradient).
    Status: INVALID_ARGUMENT."""


class LayerNotFound(NotFound):
    """A layer name that the model does not have; the reason lists the valid names.
    Status: NOT_FOUND."""


class JobFileError(InvalidInput):
    """A job file that cannot be read or does not follow the schema. Status: INVALID_ARGUMENT."""
