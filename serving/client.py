"""A small synchronous client for the cnnzoo server (used by `cnnzoo classify` and `health`).

Any KServe v2 client (tritonclient, perf_analyzer, grpcurl) works against the same server;
this one speaks `cnnzoo.v1.Zoo` (encoded images in, labels out) and `grpc.health.v1`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from google.protobuf.message import Message

from cnnzoo.errors import InvalidInput, NotFound
from cnnzoo.protos import zoo_pb2, zoo_pb2_grpc
from cnnzoo.serving.grpc_api.status import error_for
from cnnzoo.serving.server import DEFAULT_MAX_MESSAGE_BYTES, SERVICES
from cnnzoo.serving.tls import read_pem
from cnnzoo.serving.types import ClassPrediction

__all__ = ["ClientTls", "ZooClient"]


@dataclass(frozen=True)
class ClientTls:
    """TLS towards the server (PEM files).

    Args:
        ca: CA certificates that signed the server's certificate (None: the system's roots).
        cert: this client's certificate chain, for servers that ask for one (mutual TLS).
        key: its private key.
        server_name: the name to check the server's certificate against, when it differs
            from the host in the address (e.g. "localhost" for 127.0.0.1).
    """

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str = ""

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise InvalidInput(
                "a client certificate and its key go together (--tls-cert, --tls-key)"
            )

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=read_pem(self.ca, "--tls-ca") if self.ca else None,
            private_key=read_pem(self.key, "--tls-key") if self.key else None,
            certificate_chain=read_pem(self.cert, "--tls-cert") if self.cert else None,
        )


class ZooClient:
    """Calls one server.

    Args:
        server: host:port of the gRPC server.
        timeout: per-call deadline in seconds.
        tls: connect with TLS (None: plaintext).
        metadata: headers sent with every call, e.g. the header of a restricted API group.
    """

    def __init__(
        self,
        server: str = "127.0.0.1:8001",
        *,
        timeout: float = 30.0,
        tls: ClientTls | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.server = server
        self.timeout = timeout
        self.metadata = tuple(metadata)
        options: list[tuple[str, int | str]] = [
            ("grpc.max_receive_message_length", DEFAULT_MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", DEFAULT_MAX_MESSAGE_BYTES),
        ]
        if tls is None:
            self._channel = grpc.insecure_channel(server, options=options)
        else:
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            self._channel = grpc.secure_channel(server, tls.credentials(), options=options)
        self._zoo = zoo_pb2_grpc.ZooStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ZooClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def classify(
        self, images: Sequence[bytes], model: str, *, top_k: int = 5, version: str = ""
    ) -> list[list[ClassPrediction]]:
        """Top-k predictions per encoded image (PNG/JPEG bytes), best first.

        Raises:
            CnnzooError: the matching subclass for the server's status (InvalidInput, ...).
        """
        request = zoo_pb2.ClassifyRequest(
            model=model, version=version, images=list(images), top_k=top_k
        )
        response: zoo_pb2.ClassifyResponse = self._call(self._zoo.Classify, request)
        return [
            [ClassPrediction(p.index, p.label, p.probability) for p in result.predictions]
            for result in response.results
        ]

    def list_models(self) -> zoo_pb2.ListModelsResponse:
        response: zoo_pb2.ListModelsResponse = self._call(
            self._zoo.ListModels, zoo_pb2.ListModelsRequest()
        )
        return response

    def explain(
        self,
        image: bytes,
        model: str,
        method: str,
        *,
        target: int | None = None,
        version: str = "",
        layer: str = "",
    ) -> zoo_pb2.ExplainResponse:
        request = zoo_pb2.ExplainRequest(
            model=model, version=version, image=image, method=method, layer=layer
        )
        if target is not None:
            request.target = target
        response: zoo_pb2.ExplainResponse = self._call(self._zoo.Explain, request)
        return response

    def health(self, service: str = "") -> str:
        """grpc.health.v1 status name of `service` ("" = the whole server), e.g. "SERVING"."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        request = health_pb2.HealthCheckRequest(service=service)
        try:
            response = stub.Check(request, timeout=self.timeout)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise error_for(err, self.server) from None
            raise NotFound(
                f"the server reports no health for {service!r}; ask for "
                f"{', '.join(self.health_services())}"
            ) from None
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    def health_services(self) -> list[str]:
        """What `health` can be asked about: the whole server, each service, each model."""
        models = [m.name for m in self.list_models().models]
        return ["'' (the whole server)", *SERVICES, *(f"{m} (a model)" for m in models)]

    def _call(self, method: Callable[..., Any], request: Message) -> Any:
        """`method(request)` (a unary stub method) with the client's deadline and headers; a
        failure becomes the matching `CnnzooError`."""
        try:
            return method(request, timeout=self.timeout, metadata=self.metadata or None)
        except grpc.RpcError as err:
            raise error_for(err, self.server) from None
