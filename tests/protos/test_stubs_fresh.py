"""The committed generated modules must match what `make protos` produces now."""

from pathlib import Path

from cnnzoo.protos import codegen


def test_every_proto_has_committed_stubs():
    protos = codegen.proto_files()
    assert protos, "no .proto files found"
    for proto in protos:
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            stub = proto.with_name(proto.stem + suffix)
            assert stub.exists(), f"{stub.name} missing: run `make protos`"


def test_committed_stubs_are_not_stale(tmp_path: Path):
    generated = codegen.generate(tmp_path)
    assert generated
    for fresh in generated:
        committed = codegen.PROTO_DIR / fresh.name
        assert committed.read_bytes() == fresh.read_bytes(), (
            f"protos/{fresh.name} is stale: run `make protos` and commit the result"
        )
