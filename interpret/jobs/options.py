"""Typed options for job files.

Each analysis kind declares its options as a frozen dataclass whose fields carry their default
and their check together (`option(default, check)`); `Options.parse` turns one `[[analyses]]`
table into that dataclass, refusing unknown keys, wrong types and out-of-range values with the
key's name before anything is opened. A check takes the raw value and returns it normalised
(lists become tuples) or raises `OptionError`; checks that involve several fields go in the
dataclass's `__post_init__`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cnnzoo.errors import JobFileError
from cnnzoo.interpret.methods import RULE_METHODS

__all__ = [
    "Check",
    "OptionError",
    "Options",
    "at_least",
    "channel_choice",
    "channels_of_a_layer",
    "count",
    "index_list",
    "random_seed",
    "name_list",
    "one_of",
    "option",
    "positive",
    "projection_option",
    "real",
    "some_of",
    "text",
]

Check = Callable[[Any], Any]
OptionsT = TypeVar("OptionsT", bound="Options")


class OptionError(Exception):
    """A check's complaint about one value ("must be ..., got ..."); `Options.parse` names the
    key and the analysis and raises it as a `JobFileError`."""


def option(default: Any, check: Check) -> Any:
    """A dataclass field with its default and its check."""
    return field(default=default, metadata={"check": check})


def projection_option() -> Any:
    """The `projection` field of kinds that project single units back to pixels: a ReLU rule,
    the deconvnet of Zeiler & Fergus by default."""
    return option("deconvnet", one_of(RULE_METHODS))


@dataclass(frozen=True)
class Options:
    """Base of every kind's options: parsing from a table and a plain-dict view."""

    @classmethod
    def parse(cls: type[OptionsT], raw: Mapping[str, Any], where: str) -> OptionsT:
        """Check `raw` (the table without its `kind`) and build the options.

        Args:
            where: how errors name the table, e.g. "job.toml: analyses[0] (filters)".

        Raises:
            JobFileError: an unknown key, or a value its check refuses.
        """
        known = [f for f in dataclasses.fields(cls) if f.init]
        allowed = {f.name for f in known}
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise JobFileError(
                f"{where}: unknown key(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(allowed | {'kind'}))}"
            )
        values = {}
        for item in known:
            if item.name not in raw or (raw[item.name] is None and item.default is None):
                continue  # the default (JSON null leaves an optional value unset)
            try:
                values[item.name] = item.metadata["check"](raw[item.name])
            except OptionError as err:
                raise JobFileError(f"{where}: {item.name} {err}") from None
        try:
            return cls(**values)
        except OptionError as err:
            raise JobFileError(f"{where}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON data (for the manifest and the resume fingerprint): tuples are
        lists, as they read back from manifest.json."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


# -- checks ----------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def random_seed(value: Any) -> int:
    """A random seed: an integer from 0 to 2**32 - 1."""
    if not _is_int(value) or not 0 <= value < 1 << 32:
        raise OptionError(f"must be an integer from 0 to {(1 << 32) - 1}, got {value!r}")
    return value


def at_least(low: int, what: str) -> Check:
    """An integer >= `low`; `what` names it in the message ("a positive integer")."""

    def check(value: Any) -> int:
        if not _is_int(value) or value < low:
            raise OptionError(f"must be {what}, got {value!r}")
        return value

    return check


positive = at_least(1, "a positive integer")
count = at_least(0, "an integer >= 0")


def real(low: float, high: float) -> Check:
    """A number in [low, high] (integers accepted)."""

    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OptionError(f"must be a number, got {value!r}")
        if not low <= value <= high:
            raise OptionError(f"must be between {low:g} and {high:g}, got {value!r}")
        return float(value)

    return check


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise OptionError(f"must be a string, got {value!r}")
    return value


def _non_empty_list(value: Any, what: str, least: str) -> Sequence[Any]:
    if not isinstance(value, list):
        raise OptionError(f"must be {what}, got {value!r}")
    if not value:
        raise OptionError(f"must list at least one {least}")
    return value


def index_list(value: Any) -> tuple[int, ...]:
    """A non-empty list of integers >= 0."""
    for item in _non_empty_list(value, "a list of integers", "integer"):
        if not _is_int(item):
            raise OptionError(f"must be a list of integers, got {value!r}")
        if item < 0:
            raise OptionError(f"must not be negative, got {item}")
    return tuple(value)


def name_list(value: Any) -> tuple[str, ...]:
    """A non-empty list of layer names."""
    items = _non_empty_list(value, "a list of layer names", "layer (or be left out)")
    if not all(isinstance(item, str) for item in items):
        raise OptionError(f"must be a list of layer names, got {value!r}")
    return tuple(items)


def one_of(choices: Sequence[str]) -> Check:
    def check(value: Any) -> str:
        if value not in choices:
            raise OptionError(f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    return check


def some_of(choices: Sequence[str], what: str) -> Check:
    """A non-empty list drawn from `choices` ("methods must list methods from a, b, got ...")."""

    def check(value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not value or any(v not in choices for v in value):
            raise OptionError(f"must list {what} from {', '.join(choices)}, got {value!r}")
        return tuple(value)

    return check


def channels_of_a_layer(value: Any) -> int | tuple[int, ...]:
    """How many channels of one layer (spread evenly), or which ones."""
    if _is_int(value):
        if value < 1:
            raise OptionError(f"must be a positive number of channels, got {value}")
        return value
    if isinstance(value, list):
        return index_list(value)
    raise OptionError(
        "must be a number of channels, a list of channel indices or a table of either per "
        f"layer, got {value!r}"
    )


def channel_choice(value: Any) -> int | tuple[int, ...] | dict[str, int | tuple[int, ...]]:
    """How many channels (spread evenly), which ones, or a table of either per layer name."""
    if isinstance(value, dict):
        if not value:
            raise OptionError("must name at least one layer when given per layer")
        table = {}
        for layer, choice in value.items():
            try:
                table[layer] = channels_of_a_layer(choice)
            except OptionError as err:
                raise OptionError(f"for layer {layer!r} {err}") from None
        return table
    return channels_of_a_layer(value)
