"""`cnnzoo` subcommands owned by the `serving` package: serve, classify, health.

Handlers import grpc and onnxruntime themselves so that `cnnzoo --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:  # imported where used: `cnnzoo --help` stays quick
    from collections.abc import Iterator

    from cnnzoo.serving.client import ZooClient
    from cnnzoo.serving.tls import TlsOptions
    from cnnzoo.serving.types import ClassPrediction

# argparse's subparsers action (generic only in the type stubs, so a string)
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

DEFAULT_SERVER = "127.0.0.1:8001"


def register(sub: Subcommands) -> None:
    """Add this package's subcommands to the `cnnzoo` parser."""
    _register_serve(sub)
    _register_classify(sub)
    _register_health(sub)


# -- serve ---------------------------------------------------------------------------------------


def _register_serve(sub: Subcommands) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model repository over gRPC and REST (KServe v2 + cnnzoo.v1)",
        description="Serve a model repository over gRPC: the KServe v2 inference API (with "
        "streaming and system shared memory), cnnzoo.v1.Zoo (Classify, ListModels, Explain), "
        "grpc.health.v1 and reflection; the KServe v2 REST API on the HTTP port; Prometheus "
        "metrics on the metrics port. SIGTERM/SIGINT drain in-flight requests, then exit 0.",
    )
    p.add_argument("--repository", type=Path, required=True, help="model repository folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=8001, help="gRPC port (default %(default)s)")
    p.add_argument(
        "--http-port",
        type=int,
        default=8000,
        help="KServe v2 REST port (default %(default)s; -1 disables it)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=8002,
        help="Prometheus /metrics port (default %(default)s; -1 disables it)",
    )
    p.add_argument(
        "--device",
        choices=("auto", "cuda", "cpu"),
        default="auto",
        help="execution provider: auto (CUDA when usable), cuda (fail without it, and refuse "
        "a model ONNX Runtime would run partly on the CPU), cpu",
    )
    p.add_argument(
        "--cudnn-conv-algo-search",
        choices=("heuristic", "exhaustive", "default"),
        default="heuristic",
        help="CUDA: how cuDNN picks convolution algorithms: heuristic (the same in every "
        "process, so the same answers; the default), exhaustive (timed per shape at warm-up)",
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME",
        help="serve only this model (repeatable; default: every model in the repository)",
    )
    p.add_argument(
        "--model-control-mode",
        choices=("none", "poll", "explicit"),
        default="",
        help="Triton's model control: none (load every model at start-up), poll (also pick "
        "up new models and versions every --poll-seconds), explicit (load only --load-model "
        "models, then what clients load and unload with RepositoryModelLoad/Unload); default: "
        "poll with --poll-seconds, else none",
    )
    p.add_argument(
        "--load-model",
        action="append",
        default=[],
        metavar="NAME",
        help="with --model-control-mode explicit: load this model at start-up (repeatable; "
        "'*' loads every model)",
    )
    p.add_argument(
        "--poll-seconds",
        type=float,
        default=0.0,
        help="look for new models and versions this often and switch to them (implies "
        "--model-control-mode poll; default: never, or 15 with --model-control-mode poll)",
    )
    p.add_argument(
        "--grace-seconds",
        type=float,
        default=20.0,
        help="on SIGTERM, time in-flight requests get to finish (default %(default)s)",
    )
    p.add_argument(
        "--max-message-mb",
        type=float,
        default=64.0,
        help="largest request/response in MiB (default %(default)s: a batch of 64 224x224 "
        "fp32 images fits)",
    )
    p.add_argument(
        "--intra-op-threads",
        type=int,
        default=0,
        help="ONNX Runtime threads per operator (default 0: one per available core)",
    )
    p.add_argument(
        "--inter-op-threads",
        type=int,
        default=1,
        help="ONNX Runtime threads across operators (default %(default)s)",
    )
    p.add_argument(
        "--require-manifest",
        action="store_true",
        help="serve only versions with a manifest.json to verify (as cnnzoo export writes); "
        "default: a Triton repository's config.pbtxt and model.onnx are enough",
    )
    p.add_argument(
        "--metrics-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Triton's latency metric settings (repeatable): summary_latencies=true (quantile "
        "summaries over the last 60 s), summary_quantiles=0.5:0.05,0.99:0.001, "
        "histogram_latencies=true (nv_inference_first_response_histogram_ms), "
        "counter_latencies=false",
    )
    p.add_argument(
        "--metrics-interval-ms",
        type=int,
        default=2000,
        help="how often CPU and GPU metrics are sampled (default %(default)s)",
    )
    p.add_argument(
        "--no-batching",
        action="store_true",
        help="turn dynamic batching off for every model (each request runs alone)",
    )
    _add_limit_options(p)
    _add_transport_options(p)
    _add_access_options(p)
    p.set_defaults(func=_serve, default_log_level="INFO")


def _add_limit_options(p: argparse.ArgumentParser) -> None:
    from cnnzoo.serving.limits import RequestLimits

    default = RequestLimits()
    g = p.add_argument_group(
        "limits",
        "over a limit a request is answered RESOURCE_EXHAUSTED (REST: 429), except calls over "
        "--max-concurrent-requests, which wait their turn",
    )
    g.add_argument(
        "--max-classify-images",
        type=int,
        metavar="N",
        default=default.max_classify_images,
        help="images in one Classify request (default %(default)s)",
    )
    g.add_argument(
        "--max-request-pixels",
        type=int,
        metavar="N",
        default=default.max_request_pixels,
        help="decoded pixels (width x height, all images) in one Classify or Explain "
        "request, read from the headers before decoding (default %(default)s)",
    )
    g.add_argument(
        "--max-queue-size",
        type=int,
        metavar="N",
        default=default.max_queue_size,
        help="requests waiting in a model's batcher when its config.pbtxt sets no "
        "dynamic_batching.default_queue_policy.max_queue_size (default %(default)s)",
    )
    g.add_argument(
        "--max-pending-explanations",
        type=int,
        metavar="N",
        default=default.max_pending_explanations,
        help="Explain calls in progress (decoding, queued or running on their explanation "
        "graph; default %(default)s)",
    )
    g.add_argument(
        "--max-concurrent-requests",
        type=int,
        metavar="N",
        default=default.max_concurrent_requests,
        help="inference, Classify and Explain calls in progress on the server at once; more "
        "wait their turn (default %(default)s)",
    )
    g.add_argument(
        "--max-waiting-requests",
        type=int,
        metavar="N",
        default=default.max_waiting_requests,
        help="calls waiting for one of the --max-concurrent-requests places; beyond, a call is "
        "refused (default %(default)s)",
    )


def _add_access_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "access control and access log",
        "values of restricted groups come from env:NAME or file:PATH, never the command line; "
        "groups: health, metadata, inference, explain, shared-memory, model-config, "
        "model-repository, statistics, trace, logging",
    )
    g.add_argument(
        "--grpc-restricted-protocol",
        action="append",
        default=[],
        metavar="GROUPS:KEY=SOURCE",
        help="gRPC calls of these groups need the header triton-grpc-protocol-KEY with the "
        "value from SOURCE, else UNAVAILABLE (Triton's option; repeatable)",
    )
    g.add_argument(
        "--http-restricted-api",
        action="append",
        default=[],
        metavar="GROUPS:KEY=SOURCE",
        help="REST requests of these groups need the header KEY with the value from SOURCE, "
        "else 403 (Triton's option; repeatable)",
    )
    g.add_argument(
        "--access-log",
        metavar="FILE",
        help="append one JSON line per call (time, peer, client, rpc, model, version, status, "
        "latency_ms; never payloads) to FILE ('-': standard error); created mode 0640",
    )
    g.add_argument(
        "--shared-memory",
        choices=("system", "off"),
        default="system",
        help="offer Triton's system shared-memory extension to clients on this host (default "
        "%(default)s; a client may register only POSIX shared-memory objects its own user "
        "owns, and use only regions it registered); off: not offered",
    )
    g.add_argument(
        "--shared-memory-prefix",
        default="",
        metavar="PREFIX",
        help="only objects whose names start with /PREFIX may be registered; clients the "
        "server cannot identify (other hosts, other containers) may then register them too",
    )


def _add_transport_options(p: argparse.ArgumentParser) -> None:
    from cnnzoo.serving.grpc_api.transport import TransportOptions

    default = TransportOptions()
    g = p.add_argument_group("gRPC connections", "times in milliseconds (Triton's options)")
    g.add_argument(
        "--max-concurrent-streams",
        type=int,
        metavar="N",
        default=default.max_concurrent_streams,
        help="calls in progress on one connection at once (default %(default)s)",
    )
    g.add_argument(
        "--grpc-keepalive-time",
        type=int,
        metavar="MS",
        default=default.keepalive_time_ms,
        help="ping an idle connection after this long (default %(default)s)",
    )
    g.add_argument(
        "--grpc-keepalive-timeout",
        type=int,
        metavar="MS",
        default=default.keepalive_timeout_ms,
        help="close a connection whose ping is not answered within this (default %(default)s)",
    )
    g.add_argument(
        "--grpc-keepalive-permit-without-calls",
        action="store_true",
        help="let clients ping connections that carry no call",
    )
    g.add_argument(
        "--grpc-http2-min-recv-ping-interval-without-data",
        type=int,
        metavar="MS",
        default=default.http2_min_recv_ping_interval_without_data_ms,
        help="shortest interval between a client's pings without data; shorter is a "
        "ping strike (default %(default)s)",
    )
    g.add_argument(
        "--grpc-http2-max-ping-strikes",
        type=int,
        metavar="N",
        default=default.http2_max_ping_strikes,
        help="ping strikes before the connection is closed (default %(default)s; 0: any number)",
    )
    g.add_argument(
        "--grpc-max-connection-age",
        type=int,
        metavar="MS",
        default=0,
        help="close connections older than this (default 0: never)",
    )
    g.add_argument(
        "--grpc-max-connection-age-grace",
        type=int,
        metavar="MS",
        default=0,
        help="time calls on an aged connection get to finish (default 0)",
    )
    g.add_argument(
        "--grpc-max-connection-idle",
        type=int,
        metavar="MS",
        default=0,
        help="close connections without calls for this long (default 0: never)",
    )
    from cnnzoo.serving.http_api.options import HttpLimits

    rest = HttpLimits()
    h = p.add_argument_group("REST connections", "times in seconds")
    h.add_argument(
        "--http-max-connections",
        type=int,
        metavar="N",
        default=rest.max_connections,
        help="REST connections open at once; the next is answered 503 (default %(default)s)",
    )
    h.add_argument(
        "--http-header-timeout",
        type=float,
        metavar="S",
        default=rest.header_timeout_s,
        help="from a request's first byte to its complete head (default %(default)s)",
    )
    h.add_argument(
        "--http-body-timeout",
        type=float,
        metavar="S",
        default=rest.body_timeout_s,
        help="for a request's whole body to arrive; else 408 (default %(default)s)",
    )
    h.add_argument(
        "--http-idle-timeout",
        type=float,
        metavar="S",
        default=rest.idle_timeout_s,
        help="close a connection that sends nothing for this long (default %(default)s)",
    )
    e = p.add_argument_group("explorer", "the browser explorer at /explorer/ on the REST port")
    e.add_argument(
        "--explorer",
        choices=("on", "off"),
        default="on",
        help="serve the explorer page (default on; the REST routes it calls stay either way)",
    )
    e.add_argument(
        "--results",
        type=Path,
        metavar="DIR",
        help="link a `cnnzoo job` output folder: a unit's dataset top-k and its "
        "activation-maximisation image appear in the explorer",
    )
    t = p.add_argument_group(
        "TLS", "serve gRPC and REST over TLS; with --tls-client-ca, mutual TLS"
    )
    t.add_argument(
        "--tls-cert", type=Path, metavar="PEM", help="the server's PEM certificate chain"
    )
    t.add_argument("--tls-key", type=Path, metavar="PEM", help="the server's PEM private key")
    t.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="PEM",
        help="PEM CA certificates; clients must present a certificate they signed",
    )


def _serve(args: argparse.Namespace) -> int:
    from cnnzoo.serving.grpc_api.transport import TransportOptions
    from cnnzoo.serving.http_api.options import ExplorerOptions, HttpLimits
    from cnnzoo.serving.latency import MetricsConfig
    from cnnzoo.serving.limits import RequestLimits
    from cnnzoo.serving.runtime import RuntimeOptions
    from cnnzoo.serving.security import GRPC, HTTP, RestrictedProtocols, parse_restriction
    from cnnzoo.serving.server import ServerOptions, serve
    from cnnzoo.serving.shared_memory import SharedMemoryPolicy

    tls = _serve_tls(args)
    options = ServerOptions(
        repository=args.repository,
        host=args.host,
        port=args.port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        models=tuple(args.model),
        runtime=RuntimeOptions(
            device=args.device,
            intra_op_threads=args.intra_op_threads,
            inter_op_threads=args.inter_op_threads,
            conv_algo_search=args.cudnn_conv_algo_search,
        ),
        poll_seconds=args.poll_seconds,
        grace_seconds=args.grace_seconds,
        max_message_bytes=int(args.max_message_mb * 1024 * 1024),
        batching=not args.no_batching,
        model_control=args.model_control_mode,
        load_models=tuple(args.load_model),
        metrics_config=MetricsConfig.parse(args.metrics_config),
        metrics_interval_s=args.metrics_interval_ms / 1000,
        require_manifest=args.require_manifest,
        limits=RequestLimits(
            max_classify_images=args.max_classify_images,
            max_request_pixels=args.max_request_pixels,
            max_queue_size=args.max_queue_size,
            max_pending_explanations=args.max_pending_explanations,
            max_concurrent_requests=args.max_concurrent_requests,
            max_waiting_requests=args.max_waiting_requests,
        ),
        transport=TransportOptions(
            max_concurrent_streams=args.max_concurrent_streams,
            keepalive_time_ms=args.grpc_keepalive_time,
            keepalive_timeout_ms=args.grpc_keepalive_timeout,
            keepalive_permit_without_calls=args.grpc_keepalive_permit_without_calls,
            http2_min_recv_ping_interval_without_data_ms=(
                args.grpc_http2_min_recv_ping_interval_without_data
            ),
            http2_max_ping_strikes=args.grpc_http2_max_ping_strikes,
            max_connection_age_ms=args.grpc_max_connection_age,
            max_connection_age_grace_ms=args.grpc_max_connection_age_grace,
            max_connection_idle_ms=args.grpc_max_connection_idle,
        ),
        tls=tls,
        grpc_restricted=RestrictedProtocols(
            [parse_restriction(spec, GRPC) for spec in args.grpc_restricted_protocol], GRPC.flag
        ),
        http_restricted=RestrictedProtocols(
            [parse_restriction(spec, HTTP) for spec in args.http_restricted_api], HTTP.flag
        ),
        access_log=args.access_log,
        http_limits=HttpLimits(
            max_connections=args.http_max_connections,
            header_timeout_s=args.http_header_timeout,
            body_timeout_s=args.http_body_timeout,
            idle_timeout_s=args.http_idle_timeout,
        ),
        explorer=ExplorerOptions(enabled=args.explorer == "on", results=args.results),
        shared_memory=SharedMemoryPolicy(
            enabled=args.shared_memory == "system", prefix=args.shared_memory_prefix
        ),
    )
    return serve(options)


def _serve_tls(args: argparse.Namespace) -> TlsOptions | None:
    """Check the options no parser type can (ranges, pairs) and read the TLS ones."""
    from cnnzoo.errors import InvalidInput
    from cnnzoo.serving.tls import TlsOptions

    if args.max_message_mb <= 0:
        raise InvalidInput(f"--max-message-mb must be positive, got {args.max_message_mb}")
    if args.poll_seconds < 0 or args.grace_seconds < 0:
        raise InvalidInput("--poll-seconds and --grace-seconds must be >= 0")
    if args.metrics_interval_ms < 1:
        raise InvalidInput(f"--metrics-interval-ms must be >= 1, got {args.metrics_interval_ms}")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise InvalidInput("--tls-cert and --tls-key go together")
    if args.tls_client_ca is not None and args.tls_cert is None:
        raise InvalidInput("--tls-client-ca needs --tls-cert and --tls-key")
    if args.tls_cert is None:
        return None
    return TlsOptions(args.tls_cert, args.tls_key, args.tls_client_ca)


# -- classify ------------------------------------------------------------------------------------


def _register_classify(sub: Subcommands) -> None:
    p = sub.add_parser(
        "classify",
        help="classify image files or folders of them with a running server",
        description="Send PNG/JPEG files to a cnnzoo server and print the top-k classes. A "
        "folder stands for every .png, .jpg and .jpeg file under it (sub-folders included, "
        "in name order); they are sent --batch-size at a time.",
    )
    p.add_argument(
        "images",
        nargs="+",
        type=Path,
        metavar="IMAGE",
        help="PNG or JPEG files, or folders of them",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="images per request (default %(default)s; the server's --max-classify-images "
        "bounds it)",
    )
    p.add_argument("--model", required=True, help="model name, e.g. lenet5-mnist")
    p.add_argument("--version", default="", help="model version (default: the served one)")
    p.add_argument("--server", default=DEFAULT_SERVER, help="host:port (default %(default)s)")
    p.add_argument("--top-k", type=int, default=5, help="classes per image (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds (default %(default)s)")
    _add_client_options(p)
    p.set_defaults(func=_classify)


def _add_client_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("TLS", "connect with TLS (any of these turns it on)")
    g.add_argument(
        "--tls-ca",
        type=Path,
        metavar="PEM",
        help="CA certificates that signed the server's certificate",
    )
    g.add_argument(
        "--tls-cert",
        type=Path,
        metavar="PEM",
        help="this client's certificate chain (servers with --tls-client-ca)",
    )
    g.add_argument("--tls-key", type=Path, metavar="PEM", help="its private key")
    g.add_argument(
        "--tls-server-name",
        default="",
        metavar="NAME",
        help="check the server's certificate for NAME instead of the host",
    )
    p.add_argument(
        "--restricted-key",
        action="append",
        default=[],
        metavar="KEY=SOURCE",
        help="send the header triton-grpc-protocol-KEY with the value from SOURCE (env:NAME or "
        "file:PATH), for servers with --grpc-restricted-protocol (repeatable)",
    )


def _client(args: argparse.Namespace) -> ZooClient:
    import os

    # gRPC core logs a failed TLS handshake at INFO on stderr; the error line says it already.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from cnnzoo.errors import InvalidInput
    from cnnzoo.serving.client import ClientTls, ZooClient
    from cnnzoo.serving.security import GRPC, read_secret

    tls = None
    if args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name:
        tls = ClientTls(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    headers = []
    for spec in args.restricted_key:
        key, equals, source = spec.partition("=")
        if not (key and equals):
            raise InvalidInput(f"--restricted-key takes KEY=env:NAME or KEY=file:PATH, got {key!r}")
        headers.append((GRPC.header_prefix + key, read_secret(source, "--restricted-key")))
    return ZooClient(args.server, timeout=args.timeout, tls=tls, metadata=headers)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# A request carries at most this many bytes of images (the server's message limit is 64 MiB).
_REQUEST_BYTES = 32 * 1024 * 1024


def image_files(paths: list[Path]) -> list[Path]:
    """The files to classify: each file named, and every image file under each folder named
    (sub-folders included, hidden ones left out, in name order).

    Raises:
        NotFound: a path does not exist, or a folder holds no image file.
    """
    from cnnzoo.errors import NotFound

    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.suffix.lower() in IMAGE_SUFFIXES
                and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise NotFound(f"folder {path} holds no PNG or JPEG file (.png, .jpg, .jpeg)")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise NotFound(f"image file {path} does not exist")
    return files


def _batches(files: list[Path], batch_size: int) -> Iterator[tuple[list[Path], list[bytes]]]:
    """Files read a batch at a time (a folder of 70,000 images is never held at once)."""
    batch: list[Path] = []
    payloads: list[bytes] = []
    size = 0
    for path in files:
        data = path.read_bytes()
        if batch and (len(batch) >= batch_size or size + len(data) > _REQUEST_BYTES):
            yield batch, payloads
            batch, payloads, size = [], [], 0
        batch.append(path)
        payloads.append(data)
        size += len(data)
    if batch:
        yield batch, payloads


def _classify(args: argparse.Namespace) -> int:
    from tqdm import tqdm  # type: ignore[import-untyped]

    from cnnzoo.errors import InvalidImage, InvalidInput

    if args.top_k < 1:
        raise InvalidInput(f"--top-k must be >= 1, got {args.top_k}")
    if args.batch_size < 1:
        raise InvalidInput(f"--batch-size must be >= 1, got {args.batch_size}")
    files = image_files(args.images)
    results = []
    with (
        _client(args) as client,
        tqdm(
            total=len(files),
            unit="img",
            desc="classify",
            disable=None if len(files) > args.batch_size else True,  # a terminal, several requests
        ) as progress,
    ):
        for batch, payloads in _batches(files, args.batch_size):
            try:
                results += client.classify(
                    payloads, args.model, top_k=args.top_k, version=args.version
                )
            except InvalidImage as err:  # the server counts images; name the file instead
                if not 0 <= err.index < len(batch):
                    raise
                raise InvalidInput(f"{batch[err.index]}: {err.problem}") from None
            progress.update(len(batch))
    if args.json:
        document = [
            {
                "image": str(path),
                "predictions": [
                    {"index": p.index, "label": p.label, "probability": p.probability}
                    for p in predictions
                ],
            }
            for path, predictions in zip(files, results, strict=True)
        ]
        json.dump(document, sys.stdout, indent=2)
        print()
        return 0
    print(format_table([str(p) for p in files], results))
    return 0


def format_table(names: list[str], results: list[list[ClassPrediction]]) -> str:
    """One row per image: its name, then `label  probability` for each of the top-k."""
    k = max((len(r) for r in results), default=0)
    header = ["image"] + [f"top-{i + 1}" for i in range(k)]
    rows = [
        [name] + [f"{p.label} ({p.probability:.1%})" for p in predictions]
        for name, predictions in zip(names, results, strict=True)
    ]
    widths = [
        max(len(row[c]) for row in [header, *rows] if c < len(row)) for c in range(len(header))
    ]
    lines = [
        "  ".join(cell.ljust(widths[c]) for c, cell in enumerate(row)).rstrip()
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- health --------------------------------------------------------------------------------------


def _register_health(sub: Subcommands) -> None:
    p = sub.add_parser(
        "health",
        help="exit 0 iff a server reports SERVING (grpc.health.v1)",
        description="Ask a server's grpc.health.v1 service; prints the status and exits 0 only "
        "when it is SERVING (for container health checks).",
    )
    p.add_argument("--server", default=DEFAULT_SERVER, help="host:port (default %(default)s)")
    p.add_argument(
        "--service",
        default="",
        help="a service (inference.GRPCInferenceService, cnnzoo.v1.Zoo) or a served model's "
        "name (default: the whole server); an unknown one is answered with the list",
    )
    p.add_argument("--timeout", type=float, default=5.0, help="seconds (default %(default)s)")
    _add_client_options(p)
    p.set_defaults(func=_health)


def _health(args: argparse.Namespace) -> int:
    with _client(args) as client:
        status = client.health(args.service)
    print(status)
    return 0 if status == "SERVING" else 1
