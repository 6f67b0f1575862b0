"""Each error class names its status once (`status`), and both front ends and the client map
errors by that name: gRPC's code, the REST port's HTTP code, and back to the error class."""

from __future__ import annotations

import re

import grpc

from cnnzoo import errors
from cnnzoo.serving.grpc_api.status import status_for
from cnnzoo.serving.http_api.app import HTTP_CODES

CLASSES = [
    value
    for value in vars(errors).values()
    if isinstance(value, type) and issubclass(value, errors.CnnzooError)
]


def test_each_class_names_the_status_its_docstring_documents():
    for kind in CLASSES:
        documented = re.search(r"Status: ([A-Z_]+)", " ".join((kind.__doc__ or "").split()))
        assert documented, f"{kind.__name__}'s docstring names no status"
        assert kind.status == documented.group(1), kind.__name__


def test_both_front_ends_map_every_status_by_its_name():
    for kind in CLASSES:
        err = kind.__new__(kind)  # no reason needed to read the class's status
        assert status_for(err) == grpc.StatusCode[kind.status], kind.__name__
    codes = {kind.status: HTTP_CODES.get(kind.status, 500) for kind in CLASSES}
    assert codes == {
        "INTERNAL": 500,
        "INVALID_ARGUMENT": 400,
        "NOT_FOUND": 404,
        "ALREADY_EXISTS": 400,
        "FAILED_PRECONDITION": 400,
        "UNAVAILABLE": 503,
        "RESOURCE_EXHAUSTED": 429,
        "DEADLINE_EXCEEDED": 504,
    }
    for name in HTTP_CODES:
        assert name in grpc.StatusCode.__members__, name


def test_a_client_turns_a_status_back_into_its_most_general_class():
    assert errors.error_class("INVALID_ARGUMENT") is errors.InvalidInput
    assert errors.error_class("NOT_FOUND") is errors.NotFound
    assert errors.error_class("FAILED_PRECONDITION") is errors.IntegrityError
    assert errors.error_class("RESOURCE_EXHAUSTED") is errors.ResourceExhausted
    assert errors.error_class("INTERNAL") is errors.CnnzooError
    assert errors.error_class("UNKNOWN") is errors.CnnzooError
    for kind in CLASSES:
        assert issubclass(kind, errors.error_class(kind.status)), kind.__name__
