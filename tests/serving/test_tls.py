"""TLS on the gRPC and REST ports, with certificates made in the test: one server with mutual
TLS (`--tls-client-ca`) driven by the project's CLI, tritonclient (gRPC and HTTP), grpc and
urllib, its access log naming the client certificate; a server with TLS but no client
certificates, in process."""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.serving.certificates import CertificateAuthority, Issued
from tests.serving.helpers import DIGITS, MODEL, ServerProcess, cnnzoo, eventually


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(folder, "cnnzoo-test-ca")
    rogue = CertificateAuthority(folder / "rogue", "rogue-ca")
    return {
        "ca": ca.cert,
        "server": ca.issue("server", server=True),
        "client": ca.issue("client", server=False),
        "rogue client": rogue.issue("client", server=False),
        "rogue ca": rogue.cert,
    }


@pytest.fixture(scope="module")
def mtls_server(repository, pki, tmp_path_factory) -> Iterator[ServerProcess]:
    server: Issued = pki["server"]  # type: ignore[assignment]
    folder = tmp_path_factory.mktemp("tls-logs")
    log = folder / "server.log"
    process = ServerProcess(
        repository,
        log,
        "--access-log",
        str(folder / "access.jsonl"),
        "--model",
        MODEL,
        "--tls-cert",
        str(server.cert),
        "--tls-key",
        str(server.key),
        "--tls-client-ca",
        str(pki["ca"]),
    ).wait_ready()
    yield process
    assert process.stop() == 0, process.log()
    assert "Traceback" not in process.log(), process.log()


def client_flags(pki, who: str = "client", ca: str = "ca") -> list[str]:
    issued: Issued = pki[who]
    return ["--tls-ca", str(pki[ca]), "--tls-cert", str(issued.cert), "--tls-key", str(issued.key)]


def check_health(target: str, credentials: grpc.ChannelCredentials | None) -> str:
    """grpc.health.v1 over a TLS (or, without credentials, plaintext) channel."""
    if credentials is None:
        channel = grpc.insecure_channel(target)
    else:
        channel = grpc.secure_channel(target, credentials)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def credentials(pki, who: str | None = "client", ca: str = "ca") -> grpc.ChannelCredentials:
    issued: Issued | None = pki[who] if who else None
    return grpc.ssl_channel_credentials(
        root_certificates=Path(pki[ca]).read_bytes(),
        private_key=issued.key.read_bytes() if issued else None,
        certificate_chain=issued.cert.read_bytes() if issued else None,
    )


def test_the_project_client_speaks_mutual_tls(mtls_server, pki):
    assert "TLS with client certificates" in mtls_server.log()
    health = cnnzoo("health", "--server", mtls_server.target, *client_flags(pki))
    assert health.returncode == 0 and health.stdout.strip() == "SERVING", health.stderr
    classify = cnnzoo(
        "classify",
        str(DIGITS[0]),
        "--model",
        MODEL,
        "--server",
        mtls_server.target,
        "--json",
        *client_flags(pki),
    )
    assert classify.returncode == 0, classify.stderr
    (result,) = json.loads(classify.stdout)
    assert result["predictions"][0]["label"] == DIGITS[0].parent.name


def test_tritonclient_speaks_mutual_tls(mtls_server, pki, onnx_reference):
    issued: Issued = pki["client"]  # type: ignore[assignment]
    client = triton.InferenceServerClient(
        mtls_server.target,
        ssl=True,
        root_certificates=str(pki["ca"]),
        private_key=str(issued.key),
        certificate_chain=str(issued.cert),
    )
    x = np.random.default_rng(4).standard_normal((2, 1, 32, 32)).astype(np.float32)
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    logits = client.infer(MODEL, [tensor]).as_numpy("logits")
    np.testing.assert_array_equal(logits, onnx_reference.run(["logits"], {"input": x})[0])
    client.close()


@pytest.mark.parametrize(
    "who",
    ["no client certificate", "a certificate from another CA", "plaintext"],
)
def test_clients_without_a_trusted_certificate_are_refused(mtls_server, pki, who):
    chosen = {
        "no client certificate": credentials(pki, who=None),
        "a certificate from another CA": credentials(pki, who="rogue client"),
        "plaintext": None,
    }[who]
    with pytest.raises(grpc.RpcError) as info:
        check_health(mtls_server.target, chosen)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
    assert check_health(mtls_server.target, credentials(pki)) == "SERVING"


def test_a_client_that_does_not_trust_the_server_stops_with_one_line(mtls_server, pki):
    result = cnnzoo(
        "health",
        "--server",
        mtls_server.target,
        "--timeout",
        "3",
        *client_flags(pki, ca="rogue ca"),
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnzoo health: error: cannot reach"), lines


def test_bad_certificate_files_are_one_line_start_up_errors(repository, tmp_path):
    not_pem = tmp_path / "server.pem"
    not_pem.write_text("not a certificate")
    result = cnnzoo(
        "serve",
        "--repository",
        str(repository),
        "--port",
        "0",
        "--metrics-port",
        "-1",
        "--tls-cert",
        str(not_pem),
        "--tls-key",
        str(tmp_path / "missing.key"),
    )
    assert result.returncode == 3, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"cnnzoo serve: error: --tls-key: {tmp_path / 'missing.key'} does not exist"
    ]


def test_tls_without_client_certificates(pki, tmp_path):
    """A TLS-only server (an empty repository: nothing to load) takes any client that trusts
    its certificate, and refuses plaintext."""
    from cnnzoo.serving.server import InferenceServer, ServerOptions
    from cnnzoo.serving.tls import TlsOptions

    server_cert: Issued = pki["server"]  # type: ignore[assignment]
    (tmp_path / "empty").mkdir()
    options = ServerOptions(
        repository=tmp_path / "empty",
        port=0,
        metrics_port=-1,
        tls=TlsOptions(server_cert.cert, server_cert.key),
    )

    async def main() -> tuple[str, grpc.StatusCode]:
        server = InferenceServer(options)
        await server.start()
        target = f"127.0.0.1:{server.port}"
        try:
            status = await asyncio.to_thread(check_health, target, credentials(pki, who=None))
            try:
                await asyncio.to_thread(check_health, target, None)
            except grpc.RpcError as err:
                return status, err.code()
            return status, grpc.StatusCode.OK
        finally:
            await server.stop()

    status, plaintext = asyncio.run(main())
    assert status == "NOT_SERVING"  # answered over TLS (an empty repository serves nothing)
    assert plaintext == grpc.StatusCode.UNAVAILABLE


def https_context(pki, who: str | None = "client") -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    if who is not None:
        issued: Issued = pki[who]
        context.load_cert_chain(issued.cert, issued.key)
    return context


def get(url: str, context: ssl.SSLContext | None) -> int:
    with urllib.request.urlopen(url, context=context, timeout=10) as response:
        return response.status


def test_the_rest_port_speaks_mutual_tls_too(mtls_server, pki, onnx_reference):
    import tritonclient.http as triton_http

    url = f"https://127.0.0.1:{mtls_server.http_port}/v2/health/ready"
    assert get(url, https_context(pki)) == 200
    for who in (None, "rogue client"):
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            get(url, https_context(pki, who))
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
        get(url.replace("https://", "http://"), None)
    issued: Issued = pki["client"]  # type: ignore[assignment]
    client = triton_http.InferenceServerClient(
        f"127.0.0.1:{mtls_server.http_port}",
        ssl=True,
        ssl_context_factory=lambda: https_context(pki),
    )
    x = np.zeros((1, 1, 32, 32), np.float32)
    tensor = triton_http.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    np.testing.assert_array_equal(
        client.infer(MODEL, [tensor]).as_numpy("logits"),
        onnx_reference.run(["logits"], {"input": x})[0],
    )
    client.close()
    assert issued.cert.is_file()


def test_the_access_log_names_the_client_certificate(mtls_server, pki):
    assert check_health(mtls_server.target, credentials(pki)) == "SERVING"
    assert get(f"https://127.0.0.1:{mtls_server.http_port}/v2", https_context(pki)) == 200
    access_log = mtls_server.log_path.parent / "access.jsonl"

    def written() -> dict:
        lines = [json.loads(line) for line in access_log.read_text().splitlines()]
        rpcs = {line["rpc"]: line for line in lines}
        return rpcs if {"/grpc.health.v1.Health/Check", "GET /v2"} <= set(rpcs) else {}

    # lines are written by a background thread
    rpcs = eventually(written, "both calls in the access log", timeout=10)
    grpc_line, rest_line = rpcs["/grpc.health.v1.Health/Check"], rpcs["GET /v2"]
    assert grpc_line["client"] == rest_line["client"] == "client"
    assert grpc_line["status"] == "OK" and rest_line["status"] == "200"
