"""Restricted API groups (Triton's `--grpc-restricted-protocol`) and the access log, against one
server: `inference` and `explain` need `triton-grpc-protocol-infer-key` (value from an
environment variable), `model-repository`, `statistics` and `shared-memory` need
`triton-grpc-protocol-admin-key` (value from a file); `health` and `metadata` stay open.
tritonclient passes the headers with its `headers=` argument, the project's client with
`--restricted-key`. On the REST port (`--http-restricted-api`) only `inference` is restricted,
with the header `infer-key`, as Triton names it there."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from cnnzoo.errors import InvalidInput, NotFound
from cnnzoo.protos import grpc_service_pb2, grpc_service_pb2_grpc, zoo_pb2, zoo_pb2_grpc
from cnnzoo.serving.security import GROUPS, RestrictedProtocols, parse_restriction
from tests.serving.helpers import DIGITS, MODEL, ServerProcess, cnnzoo
from tests.serving.requests import infer_request

INFER_KEY, ADMIN_KEY = "s3cret-infer", "s3cret-admin"
INFER_HEADER, ADMIN_HEADER = "triton-grpc-protocol-infer-key", "triton-grpc-protocol-admin-key"
X = np.random.default_rng(6).standard_normal((1, 1, 32, 32)).astype(np.float32)
ACCESS_FIELDS = {"time", "peer", "client", "rpc", "model", "version", "status", "latency_ms"}


@pytest.fixture(scope="module")
def guarded(repository, tmp_path_factory) -> Iterator[tuple[ServerProcess, Path]]:
    folder = tmp_path_factory.mktemp("guarded")
    admin_file = folder / "admin.key"
    admin_file.write_text(ADMIN_KEY + "\n")  # a trailing newline, as editors write it
    access_log = folder / "access.jsonl"
    process = ServerProcess(
        repository,
        folder / "server.log",
        "--model",
        MODEL,
        "--grpc-restricted-protocol",
        "inference,explain:infer-key=env:CNNZOO_TEST_INFER_KEY",
        "--grpc-restricted-protocol",
        f"model-repository,statistics,shared-memory:admin-key=file:{admin_file}",
        "--http-restricted-api",
        "inference:infer-key=env:CNNZOO_TEST_INFER_KEY",
        "--access-log",
        str(access_log),
        env={"CNNZOO_TEST_INFER_KEY": INFER_KEY},
    ).wait_ready()
    yield process, access_log
    assert process.stop() == 0, process.log()
    log = process.log()
    assert "Traceback" not in log and INFER_KEY not in log and ADMIN_KEY not in log, log


def triton_infer(client: triton.InferenceServerClient, **kwargs) -> np.ndarray:
    tensor = triton.InferInput("input", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    return client.infer(MODEL, [tensor], **kwargs).as_numpy("logits")


def refused(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


def test_tritonclient_needs_the_groups_header_as_with_triton(guarded, onnx_reference):
    server, _ = guarded
    client = triton.InferenceServerClient(server.target)
    assert client.is_server_live() and client.is_model_ready(MODEL)  # health: open
    assert client.get_model_metadata(MODEL, as_json=True)["name"] == MODEL  # metadata: open
    for headers in (None, {INFER_HEADER: "wrong"}, {ADMIN_HEADER: ADMIN_KEY}, {"test": "1"}):
        err = refused(lambda h=headers: triton_infer(client, headers=h))
        assert err.status() == "StatusCode.UNAVAILABLE", err
        assert err.message() == f"This protocol is restricted, expecting header '{INFER_HEADER}'"
    expected = onnx_reference.run(["logits"], {"input": X})[0]
    np.testing.assert_array_equal(triton_infer(client, headers={INFER_HEADER: INFER_KEY}), expected)

    err = refused(lambda: client.get_inference_statistics(MODEL, headers={INFER_HEADER: INFER_KEY}))
    assert err.message() == f"This protocol is restricted, expecting header '{ADMIN_HEADER}'"
    stats = client.get_inference_statistics(MODEL, headers={ADMIN_HEADER: ADMIN_KEY}, as_json=True)
    assert stats["model_stats"][0]["name"] == MODEL
    err = refused(lambda: client.get_system_shared_memory_status())
    assert err.message() == f"This protocol is restricted, expecting header '{ADMIN_HEADER}'"
    assert client.get_model_repository_index(headers={ADMIN_HEADER: ADMIN_KEY}) is not None
    client.close()


def test_the_rest_api_refuses_as_triton_does_and_warns_of_what_it_leaves_open(guarded):
    import tritonclient.http as triton_http

    server, _ = guarded
    client = triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    assert client.is_server_ready()  # health: open on REST
    tensor = triton_http.InferInput("input", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    for headers in (None, {"infer-key": "wrong"}, {INFER_HEADER: INFER_KEY}):
        with pytest.raises(InferenceServerException) as info:
            client.infer(MODEL, [tensor], headers=headers)
        assert info.value.status() == "403", info.value
        assert info.value.message() == "This API is restricted, expecting header 'infer-key'"
    answer = client.infer(MODEL, [tensor], headers={"infer-key": INFER_KEY})
    assert answer.as_numpy("logits").shape == (1, 10)
    client.close()
    assert (
        "groups model-repository, shared-memory, statistics are restricted on gRPC but open on "
        "the REST port"
    ) in server.log()


def test_streams_and_cnnzoo_rpcs_are_restricted_too(guarded):
    server, _ = guarded
    with grpc.insecure_channel(server.target) as channel:
        inference = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        zoo = zoo_pb2_grpc.ZooStub(channel)
        image = DIGITS[0].read_bytes()
        calls = {
            "stream": lambda md: list(
                inference.ModelStreamInfer(iter([infer_request(X)]), metadata=md, timeout=10)
            ),
            "classify": lambda md: zoo.Classify(
                zoo_pb2.ClassifyRequest(model=MODEL, images=[image]), metadata=md, timeout=10
            ),
            "explain": lambda md: zoo.Explain(
                zoo_pb2.ExplainRequest(model=MODEL, image=image, method="x"),
                metadata=md,
                timeout=10,
            ),
            "list models": lambda md: zoo.ListModels(
                zoo_pb2.ListModelsRequest(), metadata=md, timeout=10
            ),
        }
        for name, call in calls.items():
            with pytest.raises(grpc.RpcError) as info:
                call(())
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, name
            assert "This protocol is restricted" in info.value.details(), name
        (answer,) = calls["stream"](((INFER_HEADER, INFER_KEY),))
        assert not answer.error_message and answer.infer_response.model_name == MODEL
        assert calls["classify"](((INFER_HEADER, INFER_KEY),)).results
        with pytest.raises(grpc.RpcError) as info:  # through the gate: the method is checked
            calls["explain"](((INFER_HEADER, INFER_KEY),))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert calls["list models"](((ADMIN_HEADER, ADMIN_KEY),)).models
        ready = inference.ServerReady(grpc_service_pb2.ServerReadyRequest(), timeout=10)
        assert ready.ready


def test_the_project_client_sends_the_header_from_the_environment_or_a_file(guarded, tmp_path):
    server, _ = guarded
    args = ("classify", str(DIGITS[0]), "--model", MODEL, "--server", server.target, "--json")
    without = cnnzoo(*args)
    assert without.returncode == 6, without.stderr
    assert without.stderr.strip().splitlines() == [
        f"cnnzoo classify: error: UNAVAILABLE: This protocol is restricted, expecting header "
        f"'{INFER_HEADER}'"
    ]
    import os

    env = dict(os.environ, MY_INFER_KEY=INFER_KEY)
    with_env = cnnzoo(*args, "--restricted-key", "infer-key=env:MY_INFER_KEY", env=env)
    assert with_env.returncode == 0, with_env.stderr
    assert json.loads(with_env.stdout)[0]["image"] == str(DIGITS[0])
    key_file = tmp_path / "key"
    key_file.write_text(INFER_KEY)
    with_file = cnnzoo(*args, "--restricted-key", f"infer-key=file:{key_file}")
    assert with_file.returncode == 0, with_file.stderr


def test_the_access_log_has_one_json_line_per_call_and_no_payload(guarded):
    server, access_log = guarded
    with grpc.insecure_channel(server.target) as channel:
        inference = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        inference.ModelInfer(infer_request(X), metadata=((INFER_HEADER, INFER_KEY),), timeout=10)
        with pytest.raises(grpc.RpcError):
            inference.ModelInfer(
                infer_request(X, model="nope"), metadata=((INFER_HEADER, INFER_KEY),), timeout=10
            )
        with pytest.raises(grpc.RpcError):
            inference.ModelInfer(infer_request(X), timeout=10)  # refused: no header
    server.stop()  # the log is complete once the server has stopped
    text = access_log.read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines and all(set(line) == ACCESS_FIELDS for line in lines)
    infer = [line for line in lines if line["rpc"].endswith("/ModelInfer")]
    assert [line["status"] for line in infer[-3:]] == ["OK", "NOT_FOUND", "UNAVAILABLE"]
    assert [line["model"] for line in infer[-3:]] == [MODEL, "nope", MODEL]
    for line in infer:
        assert line["peer"].startswith("ipv4:127.0.0.1:") and line["latency_ms"] >= 0
        assert line["time"].endswith("Z") and line["client"] == ""
    assert any(line["rpc"] == "/cnnzoo.v1.Zoo/Classify" for line in lines)
    # Never payloads: no tensor bytes, no image bytes, no header values.
    assert len(text) < 400 * len(lines)
    assert INFER_KEY not in text and ADMIN_KEY not in text
    assert X.astype("<f4").tobytes()[:16].hex() not in text


def test_restrictions_are_parsed_as_triton_does_and_never_from_the_command_line(tmp_path):
    restriction = parse_restriction("inference,health:k=env:K", environ={"K": "v"})
    assert restriction.groups == ("inference", "health")
    assert restriction.header == "triton-grpc-protocol-k"
    assert restriction.allows([("triton-grpc-protocol-k", "v")])
    for sent in ("", "w", "vv", "v " + "x" * 1000):
        assert not restriction.allows([("triton-grpc-protocol-k", sent)])
    assert not restriction.allows([("k", "v")])
    cases = [
        ("inference:k=v", InvalidInput, "never on the command line"),
        ("inference:k=env:MISSING", NotFound, "MISSING is not set"),
        (f"inference:k=file:{tmp_path / 'no-such-file'}", NotFound, "does not exist"),
        ("inferences:k=env:K", InvalidInput, "unknown group 'inferences'; groups: health"),
        ("inference:K=env:K", InvalidInput, "lower-case"),
        ("inference", InvalidInput, "<groups>:<key>=env:<NAME>"),
        ("inference:k=env:EMPTY", InvalidInput, "non-empty line of printable ASCII"),
    ]
    for spec, error, fragment in cases:
        with pytest.raises(error, match=fragment):
            parse_restriction(spec, environ={"K": "v", "EMPTY": ""})
    with pytest.raises(InvalidInput, match="group 'health' is in two restrictions"):
        RestrictedProtocols(
            [parse_restriction(s, environ={"K": "v"}) for s in ("health:a=env:K", "health:b=env:K")]
        )
    # Every RPC of the protocol belongs to one group, except reflection (see the module doc).
    from cnnzoo.protos import grpc_service_pb2 as pb

    methods = {
        f"/inference.GRPCInferenceService/{m.name}"
        for m in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods
    }
    grouped = [m for group in GROUPS.values() for m in group]
    assert methods <= set(grouped) and len(grouped) == len(set(grouped))


def test_every_rpc_of_every_service_is_in_exactly_one_group():
    """Enumerated from the protobuf descriptors: every service the gRPC port answers and every
    service the project's .proto files define, so a new RPC (or service) cannot be left outside
    the groups, and a group cannot name an RPC that does not exist. (Reflection stays open: see
    `cnnzoo.serving.security`.)"""
    import importlib
    import pkgutil

    import cnnzoo.protos
    from cnnzoo.serving.server import SERVICE_DESCRIPTORS

    served = {service.full_name: service for service in SERVICE_DESCRIPTORS}
    defined = {}
    for module in pkgutil.iter_modules(cnnzoo.protos.__path__):
        if module.name.endswith("_pb2"):
            descriptor = importlib.import_module(f"cnnzoo.protos.{module.name}").DESCRIPTOR
            defined.update(descriptor.services_by_name)
    assert {s.full_name for s in defined.values()} <= set(served), "a defined service not served"
    assert {"cnnzoo.v1.Zoo", "inference.GRPCInferenceService", "grpc.health.v1.Health"} <= set(
        served
    )
    methods = {f"/{s.full_name}/{m.name}" for s in served.values() for m in s.methods}
    grouped = [method for group in GROUPS.values() for method in group]
    assert len(grouped) == len(set(grouped)), "an RPC in two groups"
    assert sorted(methods - set(grouped)) == [], "RPCs in no restricted API group"
    assert sorted(set(grouped) - methods) == [], "groups naming RPCs no service has"


def test_a_literal_value_on_the_command_line_is_a_one_line_error(repository):
    result = cnnzoo(
        "serve",
        "--repository",
        str(repository),
        "--port",
        "0",
        "--grpc-restricted-protocol",
        "inference:k=plain-secret",
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("cnnzoo serve: error: --grpc-restricted-protocol: give the value as")
