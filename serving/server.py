"""Server assembly: gRPC services, health, reflection, metrics, hot reload, graceful stop.

Start-up order: bind the gRPC port (live, not ready), load and warm up the models, then report
SERVING on grpc.health.v1 (overall, per service and per model name). On SIGTERM/SIGINT the
server reports NOT_SERVING and not ready, stops accepting calls, gives in-flight calls up to
`grace_seconds` to finish, drains the batchers, and returns 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import cnnzoo
from cnnzoo.errors import CnnzooError, InvalidInput, Unavailable
from cnnzoo.protos import grpc_service_pb2, grpc_service_pb2_grpc, zoo_pb2, zoo_pb2_grpc
from cnnzoo.serving.access_log import AccessLog
from cnnzoo.serving.call_queue import CallQueue
from cnnzoo.serving.dataplane import DataPlane
from cnnzoo.serving.grpc_api.gate import GateInterceptor
from cnnzoo.serving.grpc_api.interceptors import (
    AccessLogInterceptor,
    RestrictedProtocolInterceptor,
)
from cnnzoo.serving.grpc_api.reflection import enable_reflection
from cnnzoo.serving.grpc_api.servicers import InferenceServicer, ZooServicer
from cnnzoo.serving.grpc_api.transport import TransportOptions
from cnnzoo.serving.http_api.app import HttpServer, Middleware
from cnnzoo.serving.http_api.middlewares import access_log_middleware, restricted_api_middleware
from cnnzoo.serving.http_api.options import ExplorerOptions, HttpLimits
from cnnzoo.serving.latency import MetricsConfig
from cnnzoo.serving.limits import RequestLimits
from cnnzoo.serving.log_limits import RateLimitFilter, install_rate_limit
from cnnzoo.serving.metrics import MetricsServer, ReadingsCollector
from cnnzoo.serving.model_manager import CONTROL_MODES, EXPLICIT, NONE, POLL, ModelManager
from cnnzoo.serving.runtime import RuntimeOptions, check_device, uses_cuda
from cnnzoo.serving.security import RestrictedProtocols
from cnnzoo.serving.shared_memory import SharedMemoryPolicy, SystemSharedMemory
from cnnzoo.serving.shared_memory import supported as shared_memory_supported
from cnnzoo.serving.tls import TlsOptions
from cnnzoo.zoo.repository import ModelRepository

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "ClientGoneFilter",
    "InferenceServer",
    "SERVICES",
    "SERVICE_DESCRIPTORS",
    "ServerOptions",
    "serve",
]

log = logging.getLogger(__name__)

# A batch of 64 224x224 RGB fp32 images is 38.5 MB; leave room for the message around it.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_MAX_PORT = 65535
DEFAULT_POLL_SECONDS = 15.0  # Triton's --repository-poll-secs

INFERENCE_SERVICE = "inference.GRPCInferenceService"
ZOO_SERVICE = "cnnzoo.v1.Zoo"
SERVICES = (INFERENCE_SERVICE, ZOO_SERVICE)  # reported on grpc.health.v1 besides each model
# Every service the gRPC port answers besides reflection (which reflection lists); each RPC of
# each belongs to a restricted API group (`cnnzoo.serving.security.GROUPS`).
SERVICE_DESCRIPTORS = (
    grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
    zoo_pb2.DESCRIPTOR.services_by_name["Zoo"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
)


class ClientGoneFilter(logging.Filter):
    """Quiet grpc's report of a client that left while its reply was being sent.

    When a caller's deadline passes (or it cancels) just as the server sends the answer, grpc
    logs `ExecuteBatchError raised in core` at ERROR with a traceback. That is the caller's
    choice, not a server fault: the record becomes one DEBUG line, shown only at DEBUG level.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("ExecuteBatchError raised in core"):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.exc_info, record.exc_text = None, None
        return log.isEnabledFor(logging.DEBUG)


_CLIENT_GONE_FILTER = ClientGoneFilter()


@dataclass(frozen=True)
class ServerOptions:
    """Everything `cnnzoo serve` can set.

    Args:
        repository: the model repository folder.
        host: address to listen on (gRPC, REST and metrics).
        port: gRPC port (0: any free port).
        http_port: KServe v2 REST port (0: any free port, -1: no REST API).
        metrics_port: Prometheus port (0: any free port, -1: no metrics endpoint).
        models: serve only these models (default: all).
        runtime: ONNX Runtime device and threads.
        poll_seconds: look for new versions this often (0: never).
        grace_seconds: how long in-flight calls may take to finish on shutdown.
        max_message_bytes: largest request or response accepted.
        batching: False turns dynamic batching off for every model.
        model_control: Triton's model control mode, `none`, `poll` or `explicit` ("" picks
            `poll` when `poll_seconds` is set, else `none`); `poll` without `poll_seconds`
            looks every 15 s, Triton's default.
        load_models: in `explicit` mode, the models to load at start-up (`*`: all).
        metrics_config: Triton's `--metrics-config` latency settings.
        metrics_interval_s: how often CPU and GPU metrics are sampled.
        require_manifest: refuse model versions that carry no manifest.json.
        limits: bounds on requests (images, pixels, queues; see `cnnzoo.serving.limits`).
        transport: gRPC connection limits, keepalive and connection age.
        tls: serve gRPC and REST over TLS (mutual TLS with a client CA); None: plaintext.
        grpc_restricted: restricted gRPC protocol groups (`--grpc-restricted-protocol`).
        http_restricted: restricted REST API groups (`--http-restricted-api`).
        access_log: write one JSON line per call to this file ("-": stderr); None: no log.
        http_limits: the REST port's connection limit and timeouts.
        explorer: the explorer page on the REST port (on by default) and the job it links.
        shared_memory: whether system shared memory is offered, and to whom.
    """

    repository: Path
    host: str = "127.0.0.1"
    port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    models: tuple[str, ...] = ()
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    poll_seconds: float = 0.0
    grace_seconds: float = 20.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    batching: bool = True
    model_control: str = ""
    load_models: tuple[str, ...] = ()
    metrics_config: MetricsConfig = field(default_factory=MetricsConfig)
    metrics_interval_s: float = 2.0
    require_manifest: bool = False
    limits: RequestLimits = field(default_factory=RequestLimits)
    transport: TransportOptions = field(default_factory=TransportOptions)
    tls: TlsOptions | None = None
    grpc_restricted: RestrictedProtocols = field(default_factory=RestrictedProtocols)
    http_restricted: RestrictedProtocols = field(default_factory=RestrictedProtocols)
    access_log: str | None = None
    http_limits: HttpLimits = field(default_factory=HttpLimits)
    explorer: ExplorerOptions = field(default_factory=ExplorerOptions)
    shared_memory: SharedMemoryPolicy = field(default_factory=SharedMemoryPolicy)

    def __post_init__(self) -> None:
        mode = self.model_control or (POLL if self.poll_seconds > 0 else NONE)
        if mode not in CONTROL_MODES:
            raise InvalidInput(
                f"--model-control-mode must be one of {', '.join(CONTROL_MODES)}, got {mode!r}"
            )
        if mode != POLL and self.poll_seconds > 0:
            raise InvalidInput(
                f"--poll-seconds looks for new versions, which --model-control-mode {mode} does "
                "not do; use --model-control-mode poll (or leave the mode out)"
            )
        if self.load_models and mode != EXPLICIT:
            raise InvalidInput("--load-model needs --model-control-mode explicit")
        object.__setattr__(self, "model_control", mode)  # frozen: normalise once, here
        if mode == POLL and self.poll_seconds <= 0:
            object.__setattr__(self, "poll_seconds", DEFAULT_POLL_SECONDS)
        # The socket layer would silently take a port modulo 65536 (70000 -> 4464).
        if not 0 <= self.port <= _MAX_PORT:
            raise InvalidInput(f"--port must be 0-{_MAX_PORT} (0: any free port), got {self.port}")
        if self.metrics_port != -1 and not 0 <= self.metrics_port <= _MAX_PORT:
            raise InvalidInput(
                f"--metrics-port must be 0-{_MAX_PORT} (0: any free port) or -1 (no metrics "
                f"endpoint), got {self.metrics_port}"
            )
        if self.http_port != -1 and not 0 <= self.http_port <= _MAX_PORT:
            raise InvalidInput(
                f"--http-port must be 0-{_MAX_PORT} (0: any free port) or -1 (no REST API), "
                f"got {self.http_port}"
            )


class InferenceServer:
    """The assembled server; `await start()`, then `await wait()` or `await stop()`."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.models = ModelManager(
            ModelRepository(options.repository),
            options.runtime,
            models=options.models,
            batching=options.batching,
            control=options.model_control,
            load_at_start=options.load_models,
            metrics=options.metrics_config,
            require_manifest=options.require_manifest,
            limits=options.limits,
        )
        self.models.discover()
        policy = options.shared_memory
        self.plane = DataPlane(
            self.models,
            "cnnzoo",
            cnnzoo.__version__,
            shared_memory=(
                SystemSharedMemory(policy=policy)
                if policy.enabled and shared_memory_supported()
                else None
            ),
            limits=options.limits,
        )
        # One queue for gRPC and REST: calls over the concurrency limit wait their turn.
        self.calls = CallQueue(
            options.limits.max_concurrent_requests, options.limits.max_waiting_requests
        )
        self._gate = GateInterceptor(self.calls, options.host)
        self._log_limiter = RateLimitFilter()
        self._log_unlimit: Callable[[], None] | None = None
        self.plane.on_models_changed = self._refresh_health
        self.port = 0
        self.http_port = 0
        self.metrics_port = 0
        self._http: HttpServer | None = None
        self._access_log: AccessLog | None = None
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._metrics: MetricsServer | None = None
        self._poller: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._stopping = False
        self._health_ready = False

    async def start(self) -> None:
        """Start the ports one after another (gRPC first: live, not ready), then load the
        models and report ready."""
        check_device(self.options.runtime)  # --device cuda without CUDA fails here, first
        self._log_unlimit = install_rate_limit(self._log_limiter)  # no client floods the log
        grpc_log = logging.getLogger("grpc._cython.cygrpc")
        if _CLIENT_GONE_FILTER not in grpc_log.filters:
            grpc_log.addFilter(_CLIENT_GONE_FILTER)
        # Read before binding, so that a bad certificate is a start-up error and never a
        # port that refuses every handshake.
        tls = self.options.tls
        credentials = _grpc_credentials(tls) if tls else None
        ssl_context = tls.ssl_context() if tls and self.options.http_port >= 0 else None
        if self.options.access_log:
            self._access_log = AccessLog(self.options.access_log)
        await self._start_grpc(credentials)
        if self.options.http_port >= 0:
            await self._start_http(ssl_context)
        if self.options.metrics_port >= 0:
            self._start_metrics()
        await self._start_models()

    async def _start_grpc(self, credentials: grpc.ServerCredentials | None) -> None:
        """The gRPC port: every service, health (NOT_SERVING for now) and reflection."""
        limit = self.options.max_message_bytes
        transport = self.options.transport
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
                *transport.channel_args(),
            ],
            interceptors=self._interceptors() or None,
        )
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self.plane), server
        )
        zoo_pb2_grpc.add_ZooServicer_to_server(ZooServicer(self.plane), server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        enable_reflection([service.full_name for service in SERVICE_DESCRIPTORS], server)
        address = f"{self.options.host}:{self.options.port}"
        try:
            if credentials is None:
                self.port = server.add_insecure_port(address)
            else:
                self.port = server.add_secure_port(address, credentials)
        except RuntimeError as err:
            raise Unavailable(f"cannot listen on {address} (is the port in use?): {err}") from None
        self._gate.port = self.port
        await self._set_health(False)
        await server.start()
        self._server = server
        log.info(
            "gRPC listening on %s:%d%s (not ready until the models are loaded)",
            self.options.host,
            self.port,
            _tls_note(self.options.tls),
        )

    async def _start_http(self, ssl_context: ssl.SSLContext | None) -> None:
        """The KServe v2 REST port."""
        self._warn_if_rest_is_open()
        self._http = HttpServer(
            self.plane,
            self.options.host,
            self.options.http_port,
            self.options.max_message_bytes,
            ssl_context=ssl_context,
            middlewares=self._middlewares(),
            http_limits=self.options.http_limits,
            queue=self.calls,
            explorer=self.options.explorer,
        )
        await self._http.start(self.options.grace_seconds)
        self.http_port = self._http.port

    def _start_metrics(self) -> None:
        """The Prometheus port."""
        self._metrics = MetricsServer(
            self.models,
            self.options.host,
            self.options.metrics_port,
            config=self.options.metrics_config,
            gpu=uses_cuda(self.options.runtime),
            interval_s=self.options.metrics_interval_s,
        )
        self.metrics_port = self._metrics.port
        self._metrics.add(ReadingsCollector(self._bound_readings()))

    async def _start_models(self) -> None:
        """Load the models, report ready, and poll the repository if asked to."""
        await self.models.load_all()
        if not self._stopping:
            await self._set_health(True)
            self._log_readiness()
        if self.options.poll_seconds > 0:
            self._poller = asyncio.get_running_loop().create_task(
                self._poll(self.options.poll_seconds)
            )

    async def _poll(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await self.models.poll()
            except CnnzooError as err:  # e.g. the repository became unreadable: say why
                log.warning("repository poll failed: %s", err.reason)
                continue
            except Exception:
                log.exception("repository poll failed")
                continue
            if not self._stopping:
                was_ready = self._health_ready
                await self._set_health(True)
                if self._health_ready and not was_ready:
                    self._log_readiness()

    async def _refresh_health(self) -> None:
        """After a client loaded or unloaded a model: health follows the models served."""
        if not self._stopping and self.models.loaded:
            await self._set_health(True)

    def _interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """Only what is asked for: a server without them runs no interceptor at all."""
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if self._access_log is not None:  # outermost: refused calls are logged too
            mutual = bool(self.options.tls and self.options.tls.client_ca)
            interceptors.append(AccessLogInterceptor(self._access_log, client_names=mutual))
        if self.options.grpc_restricted:
            interceptors.append(RestrictedProtocolInterceptor(self.options.grpc_restricted))
        interceptors.append(self._gate)  # innermost: refused calls take no place in the queue
        return interceptors

    def _bound_readings(self) -> list[tuple[str, str, str, Callable[[], float]]]:
        """What the server's bounds did, for /metrics."""
        calls = self.calls
        readings: list[tuple[str, str, str, Callable[[], float]]] = [
            (
                "cnnzoo_requests_waiting",
                "Calls waiting for one of the --max-concurrent-requests places",
                "gauge",
                lambda: calls.waiting,
            ),
            (
                "cnnzoo_requests_waited_total",
                "Calls that had to wait for a place (--max-concurrent-requests)",
                "counter",
                lambda: calls.waited,
            ),
            (
                "cnnzoo_log_lines_dropped_total",
                "Log lines dropped by the rate limit (one kind of line repeated too often)",
                "counter",
                lambda: self._log_limiter.suppressed,
            ),
        ]
        if self._http is not None:
            connections = self._http.connections
            readings += [
                (
                    "cnnzoo_http_connections",
                    "Open connections on the REST port",
                    "gauge",
                    lambda: connections.open,
                ),
                (
                    "cnnzoo_http_connections_refused_total",
                    "REST connections refused over --http-max-connections",
                    "counter",
                    lambda: connections.refused,
                ),
                (
                    "cnnzoo_http_header_timeouts_total",
                    "REST connections closed for not sending a request head in time",
                    "counter",
                    lambda: connections.header_timeouts,
                ),
            ]
        access_log = self._access_log
        if access_log is not None:
            readings.append(
                (
                    "cnnzoo_access_log_dropped_lines_total",
                    "Access log lines dropped (queue full, or the write failed)",
                    "counter",
                    lambda: access_log.dropped,
                )
            )
        return readings

    def _middlewares(self) -> list[Middleware]:
        middlewares: list[Middleware] = []
        if self._access_log is not None:
            middlewares.append(access_log_middleware(self._access_log))
        if self.options.http_restricted:
            middlewares.append(restricted_api_middleware(self.options.http_restricted))
        return middlewares

    def _warn_if_rest_is_open(self) -> None:
        """gRPC groups restricted while the same APIs are open on the REST port: say so."""
        open_on_rest = sorted(
            (self.options.grpc_restricted.groups - self.options.http_restricted.groups)
            - {"explain"}  # gRPC only
        )
        if open_on_rest:
            log.warning(
                "groups %s are restricted on gRPC but open on the REST port %d; restrict them "
                "there too with --http-restricted-api, or turn REST off with --http-port -1",
                ", ".join(open_on_rest),
                self.options.http_port,
            )

    def _log_readiness(self) -> None:
        """One line saying what is served, or clearly that nothing is and why."""
        records = self.models.records()
        if any(r.current for r in records) or self.models.control == EXPLICIT:
            log.info(
                "ready: %s",
                ", ".join(
                    f"{r.name} v{r.current.version} ({r.current.provider})"
                    if r.current
                    else f"{r.name} UNAVAILABLE ({r.reason})"
                    for r in records
                )
                or "no model loaded yet (explicit model control: load them with "
                "RepositoryModelLoad)",
            )
            return
        root = self.models.repository.root
        if records:
            why = "no model could be loaded: " + "; ".join(f"{r.name}: {r.reason}" for r in records)
        else:
            why = (
                f"the repository {root} holds no models (add one with "
                f"`cnnzoo export MODEL --repository {root}`)"
            )
        if self.options.poll_seconds > 0:
            later = f"; looking again every {self.options.poll_seconds:g}s"
        else:
            later = "; restart the server, or run it with --poll-seconds to pick them up"
        log.warning("not ready, nothing is served: %s%s", why, later)

    async def _set_health(self, serving: bool) -> None:
        """Overall, per-service and per-model health (a model serves only when it is loaded)."""
        from grpc_health.v1 import health_pb2

        yes, no = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        serving = serving and self.plane.ready()
        self._health_ready = serving
        servicer = self._health
        if servicer is None:
            return  # the gRPC port is not up yet
        for service in ("", *SERVICES):
            await servicer.set(service, yes if serving else no)
        for record in self.models.records():
            await servicer.set(record.name, yes if serving and record.current else no)

    async def stop(self) -> None:
        """Graceful stop: not ready, finish in-flight calls (up to the grace period), drain."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        started = self._server is not None  # a start-up error says it all; no stop report
        if started:
            log.info(
                "stopping: finishing in-flight requests (grace %.1fs)", self.options.grace_seconds
            )
        self.plane.draining = True
        if self._poller is not None:
            self._poller.cancel()
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if started:
            await self._settle()
        # Both front ends stop taking calls and finish theirs, at the same time.
        await asyncio.gather(
            *([self._server.stop(self.options.grace_seconds)] if self._server else []),
            *([self._http.stop()] if self._http else []),
        )
        await self.plane.close_explanations()
        await self.models.close()
        self.plane.close()
        if self._metrics is not None:
            self._metrics.close()
        if self._access_log is not None:
            self._access_log.close()  # after the last call is answered: its line is written
        if self._log_unlimit is not None:
            self._log_unlimit()
        if started:
            log.info("stopped")
        self._stopped.set()

    async def _settle(self, quiet_s: float = 0.05, longest_s: float = 1.0) -> None:
        """Go on taking calls until none has arrived for `quiet_s` (at most `longest_s`).

        A call a client sent just before SIGTERM may have reached gRPC's core without reaching
        a handler yet (the event loop takes calls one at a time); closing the port then would
        cancel it. Readiness is already false, so well-behaved clients stop sending.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + longest_s
        seen = self.plane.requests_started
        while loop.time() < deadline:
            await asyncio.sleep(quiet_s)
            if self.plane.requests_started == seen:
                return
            seen = self.plane.requests_started

    async def wait(self) -> None:
        await self._stopped.wait()


def _grpc_credentials(tls: TlsOptions) -> grpc.ServerCredentials:
    """The gRPC port's TLS credentials (client certificates required when there is a CA)."""
    cert, key, client_ca = tls.pem()
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def _tls_note(tls: TlsOptions | None) -> str:
    if tls is None:
        return ", plaintext"
    return ", TLS with client certificates" if tls.client_ca else ", TLS"


async def _run(options: ServerOptions) -> int:
    server = InferenceServer(options)
    loop = asyncio.get_running_loop()
    stop_task: list[asyncio.Task[None]] = []

    def request_stop(signame: str) -> None:
        if not stop_task:
            log.info("%s received", signame)
            stop_task.append(loop.create_task(server.stop()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop, sig.name)
    try:
        await server.start()
        print(
            f"serving on {options.host}:{server.port} "
            f"(REST: {server.http_port if server.http_port else 'off'}, "
            f"metrics: {server.metrics_port if server.metrics_port else 'off'})",
            flush=True,
        )
        await server.wait()
    finally:
        if not stop_task:
            await server.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await _let_handlers_finish()
    return 0


async def _let_handlers_finish(timeout: float = 2.0) -> None:
    """Wait briefly for the tasks still running when the server has stopped.

    grpc.aio's stop() returns once every call is answered, but the task of a handler that has just
    answered may still be closing; asyncio.run would cancel it and grpc logs a traceback for that.
    """
    current = asyncio.current_task()
    pending = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
    if pending:
        _, still = await asyncio.wait(pending, timeout=timeout)
        if still:
            log.warning("%d task(s) still running at exit", len(still))


def serve(options: ServerOptions) -> int:
    """Run the server until SIGTERM/SIGINT; returns the exit code (0 after a clean drain)."""
    return asyncio.run(_run(options))
