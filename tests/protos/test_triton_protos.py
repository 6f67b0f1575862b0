"""Triton's API definitions are the ones tritonclient compiles, so both share one process."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnzoo.protos import codegen, grpc_service_pb2, model_config_pb2, triton_sync


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [(grpc_service_pb2, "service_pb2"), (model_config_pb2, "model_config_pb2")],
)
def test_compiled_descriptor_equals_tritonclients_byte_for_byte(ours, theirs):
    import importlib

    module = importlib.import_module(f"tritonclient.grpc.{theirs}")
    assert ours.DESCRIPTOR.name == module.DESCRIPTOR.name
    assert ours.DESCRIPTOR.serialized_pb == module.DESCRIPTOR.serialized_pb
    # one descriptor pool entry, hence one class per message for both packages
    assert ours.DESCRIPTOR is module.DESCRIPTOR


def test_vendored_proto_files_are_what_triton_sync_writes():
    for name, text in triton_sync.render_all().items():
        committed = codegen.PROTO_DIR / name
        assert committed.read_text() == text, f"protos/{name} is stale: run triton_sync"


def test_zoo_proto_has_a_name_of_its_own():
    from cnnzoo.protos import zoo_pb2

    assert zoo_pb2.DESCRIPTOR.name == "cnnzoo/protos/zoo.proto"
    assert zoo_pb2.DESCRIPTOR.package == "cnnzoo.v1"


def test_every_vendored_file_names_its_provenance():
    for name in codegen.TRITON_FILES:
        head = Path(codegen.PROTO_DIR / name).read_text().splitlines()[:8]
        assert any("tritonclient==" in line for line in head), name
