"""Fuzzing job files (hypothesis): whatever a job file holds, loading it ends in a job or a typed
`CnnzooError`, and running a job that loads ends in a gallery or a `CnnzooError`; never another
exception, which would be a traceback for the user."""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from cnnzoo.errors import CnnzooError
from cnnzoo.interpret.jobs import load_job, run_job
from cnnzoo.interpret.jobs.registry import KINDS
from tests.interpret.jobfiles import DIGITS

LAYERS = ["features.c1", "features.c3", "features.c5", "features.s2", "classifier.output", "x"]
OPTION_KEYS = sorted(
    {name for kind in KINDS.values() for name in kind.Options.__dataclass_fields__} | {"junk"}
)
FUZZ = settings(
    max_examples=120,
    deadline=None,
    database=None,  # nothing written into the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

hostile = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-3, max_value=40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(LAYERS),
    st.lists(st.integers(min_value=-3, max_value=40), max_size=6),
    st.lists(st.sampled_from(LAYERS), max_size=3),
    st.dictionaries(st.sampled_from(LAYERS), st.integers(min_value=-2, max_value=20), max_size=3),
)
kinds = st.sampled_from([*KINDS, "bogus", ""])


def analysis(values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({"kind": kinds}, optional={key: values for key in OPTION_KEYS})


def job(values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    dataset = st.fixed_dictionaries(
        {"name": st.one_of(st.just(str(DIGITS)), hostile)},
        optional={
            "split": st.one_of(st.just("test"), hostile),
            "subset": values,
            "batch_size": values,
            "num_workers": st.one_of(st.just(0), hostile),
        },
    )
    return st.fixed_dictionaries(
        {
            "model": st.one_of(st.just("lenet5-mnist"), hostile),
            "dataset": st.one_of(dataset, hostile),
            "analyses": st.one_of(st.lists(analysis(values), max_size=3), hostile),
        },
        optional={
            "name": st.one_of(st.just("fuzzed"), hostile),
            "weights": st.one_of(st.just("default"), st.just("none"), hostile),
            "output": hostile,
            "device": st.one_of(st.just("cpu"), hostile),
            "colour": hostile,
        },
    )


def _write(folder: Path, content: dict[str, Any]) -> Path:
    path = folder / "job.json"
    path.write_text(json.dumps(content), encoding="utf-8")  # NaN and Infinity included
    return path


@FUZZ
@given(content=job(hostile))
def test_loading_any_job_file_ends_in_a_job_or_a_typed_error(content: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        try:
            load_job(_write(Path(folder), content))
        except CnnzooError as err:
            assert err.reason and "\n" not in err.reason


@FUZZ
@given(text=st.text(max_size=300))
def test_any_text_as_a_toml_job_file_ends_in_a_typed_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "job.toml"
        path.write_text(text, encoding="utf-8")
        with contextlib.suppress(CnnzooError):
            load_job(path)


# Values small enough that any job they make runs in moments (steps, top_k, images, ...).
small = st.one_of(
    st.integers(min_value=-1, max_value=3),
    st.lists(st.integers(min_value=0, max_value=3), max_size=2),
    st.sampled_from(LAYERS),
    st.lists(st.sampled_from(LAYERS[:3]), min_size=1, max_size=2),
    st.floats(min_value=0, max_value=1),
)


# The options whose defaults take seconds, held small in every case.
QUICK: dict[str, dict[str, Any]] = {
    "activation-maximisation": {"steps": st.integers(min_value=0, max_value=3)},
    "evolution": {"subset": st.integers(min_value=0, max_value=5), "epochs": st.just([1])},
    "randomisation": {"images": st.lists(st.integers(min_value=0, max_value=2), max_size=2)},
    "max-activations": {"top_k": st.integers(min_value=0, max_value=2)},
}


def own_options(kind: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """An analysis of `kind` with some of its own options, each drawn from `values` (the
    options whose defaults take seconds held small)."""
    quick = QUICK.get(kind, {})
    fields = [key for key in KINDS[kind].Options.__dataclass_fields__ if key not in quick]
    return st.fixed_dictionaries(
        {"kind": st.just(kind), **quick}, optional={key: values for key in fields}
    )


def well_formed(values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A job whose model and dataset exist, so its analyses' options reach the world."""
    return st.fixed_dictionaries(
        {
            "name": st.just("fuzzed"),
            "model": st.just("lenet5-mnist"),
            "dataset": st.fixed_dictionaries(
                {"name": st.just(str(DIGITS))},
                optional={"subset": values, "batch_size": values},
            ),
            "analyses": st.lists(
                st.sampled_from(sorted(KINDS)).flatmap(lambda kind: own_options(kind, values)),
                min_size=1,
                max_size=2,
            ),
        }
    )


@FUZZ
@given(content=well_formed(hostile))
def test_any_options_of_a_well_formed_job_end_in_a_job_or_a_typed_error(
    content: dict[str, Any],
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        try:
            load_job(_write(Path(folder), content))
        except CnnzooError as err:
            assert err.reason and "\n" not in err.reason


runnable = well_formed(small)
VALID = {"name": "fuzzed", "model": "lenet5-mnist", "dataset": {"name": str(DIGITS)}}


@settings(FUZZ, max_examples=25)
@given(content=runnable)
@example(content={**VALID, "analyses": [{"kind": "filters"}]})
@example(
    content={
        **VALID,
        "analyses": [{"kind": "activation-maximisation", "channels": 2, "steps": 2}],
    }
)
def test_a_job_that_loads_runs_to_a_gallery_or_a_typed_error(content: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        try:
            loaded = load_job(_write(Path(folder), content))
        except CnnzooError:
            event("refused when loading")
            return
        try:
            index = run_job(loaded, Path(folder) / "out")
        except CnnzooError as err:
            event("refused when running")
            assert err.reason and "\n" not in err.reason
        else:
            event("ran")
            assert index.is_file()
