"""The KServe v2 / Open Inference Protocol REST API (Triton's HTTP endpoints) over the data plane.

aiohttp serves it on the server's own event loop, beside grpc.aio: both front ends call the same
`DataPlane`, so REST requests share the models' dynamic batchers, statistics and shared-memory
regions with gRPC ones, and no thread hand-off sits between a REST handler and the data plane.

Errors are Triton's: a JSON body `{"error": "..."}` with the HTTP code of the status the same error
gets over gRPC (its class's `status`: 400 invalid argument, 404 not found, 503 unavailable, ...;
see `HTTP_CODES`);
unknown routes 404, a wrong method 405 (with `Allow`), a body over the limit 413 naming it.
Connections, request timing and body decoding are bounded by `cnnzoo.serving.http_api.limits`;
model control (`/v2/repository/...`) calls the same data-plane methods as gRPC's.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
from collections.abc import Sequence
from typing import Any, TypeGuard

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from cnnzoo.errors import CnnzooError, InvalidInput, NotFound, Unavailable
from cnnzoo.serving.call_queue import CallQueue
from cnnzoo.serving.dataplane import DataPlane
from cnnzoo.serving.http_api import codec, limits
from cnnzoo.serving.http_api.explorer import explorer_routes
from cnnzoo.serving.http_api.model_config import model_config_to_json
from cnnzoo.serving.http_api.options import ExplorerOptions

__all__ = ["HTTP_CODES", "Handler", "HttpServer", "Middleware", "make_app"]

log = logging.getLogger(__name__)

# The HTTP code of each status an error class names (Triton's mapping where it has one:
# ALREADY_EXISTS and FAILED_PRECONDITION are 400; google.rpc's otherwise; others 500).
HTTP_CODES = {
    "INVALID_ARGUMENT": 400,
    "ALREADY_EXISTS": 400,
    "FAILED_PRECONDITION": 400,
    "NOT_FOUND": 404,
    "PERMISSION_DENIED": 403,
    "UNAUTHENTICATED": 401,
    "RESOURCE_EXHAUSTED": 429,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}

_JSON = "application/json"
_MAX_BODY = web.AppKey("max_body_bytes", int)


def _dumps(document: Any) -> str:
    return json.dumps(document, separators=(",", ":"))


def _json(document: Any, status: int = 200) -> web.Response:
    return web.Response(text=_dumps(document), status=status, content_type=_JSON)


def _error(message: str, status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=_dumps({"error": message}), status=status, content_type=_JSON, headers=headers
    )


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes Triton's `{"error": ...}` with its HTTP code, never a traceback."""
    try:
        return await handler(request)
    except CnnzooError as err:
        return _error(err.reason, HTTP_CODES.get(err.status, 500))
    except web.HTTPMethodNotAllowed as err:
        allowed = ", ".join(sorted(err.allowed_methods))
        return _error(
            f"{request.method} is not allowed on {request.path}; use {allowed}",
            405,
            {"Allow": allowed},
        )
    except web.HTTPNotFound:
        return _error(f"no such endpoint: {request.method} {request.path[:200]}", 404)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[_MAX_BODY]
        return _error(
            f"the request body is larger than this server's limit of {limit} bytes "
            f"({limit / 2**20:g} MiB, --max-message-mb)",
            413,
        )
    except web.HTTPException as err:
        return _error(err.reason, err.status)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _error("the request failed inside the server; the server log has the details", 500)


class _Routes:
    """One method per endpoint: read the request, call the data plane, write the answer."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    # -- health and metadata ------------------------------------------------------------------

    async def live(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.plane.live() else 400)

    async def ready(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.plane.ready() else 400)

    async def model_ready(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        ready = self.plane.model_ready(name, version)  # an unknown model is 404, not "not ready"
        return web.Response(status=200 if ready else 400)

    async def server_metadata(self, request: web.Request) -> web.Response:
        name, version, extensions = self.plane.server_metadata()
        return _json({"name": name, "version": version, "extensions": list(extensions)})

    async def model_metadata(self, request: web.Request) -> web.Response:
        metadata = await self.plane.model_metadata(*_model(request))
        return _json(codec.model_metadata_to_json(metadata))

    async def model_config(self, request: web.Request) -> web.Response:
        return _json(model_config_to_json(await self.plane.model_config(*_model(request))))

    async def model_statistics(self, request: web.Request) -> web.Response:
        stats = self.plane.model_statistics(*_model(request))
        return _json(codec.model_statistics_to_json(stats))

    # -- inference ----------------------------------------------------------------------------

    async def infer(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        self.plane.explanation_of(name, version)  # an unknown model is 404 whatever the body
        body = await limits.read_body(request)
        header_length = request.headers.get(codec.HEADER_LENGTH)
        infer_request, binary = codec.infer_request_from_body(name, version, body, header_length)
        response = await self.plane.infer(infer_request)
        flags = [binary[i] if i < len(binary) else binary[-1] for i in range(len(response.outputs))]
        data, json_length = codec.infer_response_to_body(response, flags)
        if json_length is None:
            answer = web.Response(body=data, content_type=_JSON)
        else:
            answer = web.Response(
                body=data,
                content_type="application/octet-stream",
                headers={codec.HEADER_LENGTH: str(json_length)},
            )
        if request.headers.get("Accept-Encoding"):
            answer.enable_compression()  # gzip or deflate, as the client accepts
        return answer

    # -- cnnzoo's own: images in, classes or maps out ------------------------------------------

    async def classify(self, request: web.Request) -> web.Response:
        """The raw PNG/JPEG body's top-k classes (`?top_k=`), as the Classify RPC."""
        name, version = _model(request)
        self.plane.models.get(name, version)
        image = await limits.read_body(request)
        top_k = _int_query(request, "top_k", 0) or 0
        result = await self.plane.classify(name, version, [image], top_k)
        predictions = [
            {"index": p.index, "label": p.label, "score": p.probability} for p in result.results[0]
        ]
        return _json({"model": result.model, "version": result.version, "predictions": predictions})

    async def explain(self, request: web.Request) -> web.Response:
        """The raw PNG/JPEG body's attribution map (`?method=&target=&layer=`; `&map=1` adds
        the channel-reduced map itself), as the Explain RPC."""
        name, version = _model(request)
        self.plane.models.get(name, version)
        image = await limits.read_body(request)
        query = request.query
        target = _int_query(request, "target", None)
        result = await self.plane.explain(
            name,
            version,
            image,
            query.get("method", "guided-backprop"),
            target,
            layer=query.get("layer", ""),
            quality=query.get("quality") in ("1", "true"),
            channel=_int_query(request, "channel", None),
            position=_position_query(request),
        )
        answer: dict[str, Any] = {
            "model": result.model,
            "version": result.version,
            "method": result.method,
            "target": result.target,
            "label": result.label,
            "score": result.score,
            "png": base64.b64encode(result.png).decode("ascii"),
            "shape": list(result.attribution.shape),
            "warnings": list(result.warnings),
        }
        if result.quality is not None:
            answer["quality"] = result.quality
        if result.unit_position is not None:
            answer["unit_position"] = list(result.unit_position)
            answer["unit_activation"] = result.unit_activation
        if query.get("map") in ("1", "true"):
            answer["attribution"] = result.attribution.reshape(-1).tolist()
        return _json(answer)

    async def activations(self, request: web.Request) -> web.Response:
        """The raw PNG/JPEG body's channel maps, every layer (`?layers=a,b`: these), each as
        one PNG of its channels strongest first (see `cnnzoo.serving.activations`)."""
        name, version = _model(request)
        self.plane.models.get(name, version)
        image = await limits.read_body(request)
        wanted = [n for n in request.query.get("layers", "").split(",") if n]
        result = await self.plane.activations(name, version, image, wanted)
        layers = [
            {
                "name": layer.name,
                "aliases": list(layer.aliases),
                "shape": list(layer.shape),
                "order": list(layer.order),
                "peaks": list(layer.peaks),
                "low": layer.low,
                "high": layer.high,
                "png": base64.b64encode(layer.png).decode("ascii"),
                "receptive_field": layer.receptive_field,
            }
            for layer in result.layers
        ]
        return _json(
            {
                "model": result.model,
                "version": result.version,
                "input_png": base64.b64encode(result.input_png).decode("ascii"),
                "layers": layers,
            }
        )

    # -- system shared memory -----------------------------------------------------------------

    async def shm_status(self, request: web.Request) -> web.Response:
        regions = self.plane.shared_memory_registry().status(request.match_info.get("name", ""))
        return _json(
            [
                {"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}
                for r in regions
            ]
        )

    async def shm_register(self, request: web.Request) -> web.Response:
        document = codec.parse_json_object(await limits.read_body(request), "the register request")
        key, offset, size = (document.get(k) for k in ("key", "offset", "byte_size"))
        offset = offset or 0
        if not isinstance(key, str) or not _is_integer(offset) or not _is_integer(size):
            raise InvalidInput(
                'a register request is {"key": string, "offset": integer, "byte_size": integer}'
            )
        self.plane.shared_memory_registry().register(request.match_info["name"], key, offset, size)
        return web.Response()

    async def shm_unregister(self, request: web.Request) -> web.Response:
        self.plane.shared_memory_registry().unregister(request.match_info.get("name", ""))
        return web.Response()

    # -- model repository (the same calls as gRPC's RepositoryIndex/ModelLoad/ModelUnload) -----

    async def repository_index(self, request: web.Request) -> web.Response:
        document = await _optional_json(request, "the index request")
        ready = document.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidInput("'ready' of the index request must be true or false")
        entries = self.plane.repository_index(request.match_info.get("repository", ""), ready)
        return _json(
            [
                {"name": e.name}
                | {k: v for k, v in (("version", e.version), ("state", e.state)) if v}
                | ({"reason": e.reason} if e.reason else {})
                for e in entries
            ]
        )

    async def repository_load(self, request: web.Request) -> web.Response:
        parameters = _parameters(await _optional_json(request, "the load request"))
        await self.plane.load_model(
            request.match_info.get("repository", ""), request.match_info["model"], parameters
        )
        return web.Response()

    async def repository_unload(self, request: web.Request) -> web.Response:
        _parameters(await _optional_json(request, "the unload request"))  # checked, no effect
        await self.plane.unload_model(
            request.match_info.get("repository", ""), request.match_info["model"]
        )
        return web.Response()

    # Triton has these; this server does not: said so, as gRPC's UNIMPLEMENTED says it.
    async def trace_setting(self, request: web.Request) -> web.Response:
        return _error(
            f"{request.path[:200]} (trace settings) is not implemented by this server; "
            "per-model latencies are in /v2/models/stats and on the metrics endpoint",
            501,
        )

    async def logging_setting(self, request: web.Request) -> web.Response:
        return _error(
            "/v2/logging is not implemented by this server; set the log level when starting "
            "it (--log-level or CNNZOO_LOG_LEVEL)",
            501,
        )

    # No CUDA region can be registered here: as over gRPC, none is listed and unregistering
    # succeeds.
    async def cuda_status(self, request: web.Request) -> web.Response:
        name = request.match_info.get("name", "")
        if name:
            raise NotFound(f"no CUDA shared-memory region {name!r} is registered")
        return _json([])

    async def cuda_unregister(self, request: web.Request) -> web.Response:
        return web.Response()

    async def cuda_register(self, request: web.Request) -> web.Response:
        return _error(
            "CUDA shared memory is not implemented by this server; use system shared memory "
            "(/v2/systemsharedmemory) or send tensors in the request",
            501,
        )


def _is_integer(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_query(request: web.Request, key: str, default: int | None) -> int | None:
    value = request.query.get(key)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise InvalidInput(
            f"query parameter {key} must be an integer, got {value[:40]!r}"
        ) from None


def _position_query(request: web.Request) -> tuple[int, int] | None:
    """`?position=Y,X` (a unit's position in its layer's map), or None."""
    value = request.query.get("position", "")
    if not value:
        return None
    parts = value.split(",")
    if len(parts) != 2 or not all(p.strip().lstrip("-").isdigit() for p in parts):
        raise InvalidInput(f"query parameter position must be Y,X (integers), got {value[:40]!r}")
    return int(parts[0]), int(parts[1])


def _model(request: web.Request) -> tuple[str, str]:
    return request.match_info.get("model", ""), request.match_info.get("version", "")


async def _optional_json(request: web.Request, what: str) -> dict[str, Any]:
    """A JSON object body, or {} for an empty one."""
    body = await limits.read_body(request)
    return codec.parse_json_object(body, what) if body.strip() else {}


def _parameters(document: dict[str, Any]) -> list[str]:
    parameters = document.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be a JSON object")
    return list(parameters)


def make_app(
    plane: DataPlane,
    max_body_bytes: int,
    middlewares: Sequence[Middleware] = (),
    http_limits: limits.HttpLimits | None = None,
    explorer: ExplorerOptions | None = None,
) -> web.Application:
    """The aiohttp application (routes, error middleware, the body limit, the explorer unless
    `explorer` turns it off); `middlewares` run first, outermost first (the access log,
    restricted APIs, the limits)."""
    app = web.Application(client_max_size=max_body_bytes, middlewares=(*middlewares, _errors))
    app[_MAX_BODY] = max_body_bytes
    limits.install(app, http_limits or limits.HttpLimits())
    r = _Routes(plane)
    get, post = web.get, web.post
    model = "/v2/models/{model}"
    versioned = "/v2/models/{model}/versions/{version}"
    routes: list[web.AbstractRouteDef] = [
        get("/v2/health/live", r.live, allow_head=False),
        get("/v2/health/ready", r.ready, allow_head=False),
        get("/v2", r.server_metadata, allow_head=False),
        get("/v2/models/stats", r.model_statistics, allow_head=False),
        get("/v2/systemsharedmemory/status", r.shm_status, allow_head=False),
        get("/v2/systemsharedmemory/region/{name}/status", r.shm_status, allow_head=False),
        post("/v2/systemsharedmemory/region/{name}/register", r.shm_register),
        post("/v2/systemsharedmemory/unregister", r.shm_unregister),
        post("/v2/systemsharedmemory/region/{name}/unregister", r.shm_unregister),
        get("/v2/cudasharedmemory/status", r.cuda_status, allow_head=False),
        get("/v2/cudasharedmemory/region/{name}/status", r.cuda_status, allow_head=False),
        post("/v2/cudasharedmemory/region/{name}/register", r.cuda_register),
        post("/v2/cudasharedmemory/unregister", r.cuda_unregister),
        post("/v2/cudasharedmemory/region/{name}/unregister", r.cuda_unregister),
        get("/v2/trace/setting", r.trace_setting, allow_head=False),
        post("/v2/trace/setting", r.trace_setting),
        get("/v2/models/{model}/trace/setting", r.trace_setting, allow_head=False),
        post("/v2/models/{model}/trace/setting", r.trace_setting),
        get("/v2/logging", r.logging_setting, allow_head=False),
        post("/v2/logging", r.logging_setting),
    ]
    for repository in ("/v2/repository", "/v2/repository/{repository}"):
        routes += [
            post(f"{repository}/index", r.repository_index),
            post(f"{repository}/models/{{model}}/load", r.repository_load),
            post(f"{repository}/models/{{model}}/unload", r.repository_unload),
        ]
    for prefix in (model, versioned):
        routes += [
            get(prefix, r.model_metadata, allow_head=False),
            get(f"{prefix}/ready", r.model_ready, allow_head=False),
            get(f"{prefix}/config", r.model_config, allow_head=False),
            get(f"{prefix}/stats", r.model_statistics, allow_head=False),
            post(f"{prefix}/infer", r.infer),
            post(f"{prefix}/classify", r.classify),
            post(f"{prefix}/explain", r.explain),
            post(f"{prefix}/activations", r.activations),
        ]
    explorer = explorer or ExplorerOptions()
    if explorer.enabled:
        routes += explorer_routes(explorer, plane.limits.max_request_pixels)
    app.add_routes(routes)
    return app


class HttpServer:
    """The REST port: aiohttp on the running event loop; `await start()`, `await stop()`.
    With `ssl_context` it speaks HTTPS only (see `cnnzoo.serving.tls`)."""

    def __init__(
        self,
        plane: DataPlane,
        host: str,
        port: int,
        max_body_bytes: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        middlewares: Sequence[Middleware] = (),
        http_limits: limits.HttpLimits | None = None,
        queue: CallQueue | None = None,
        explorer: ExplorerOptions | None = None,
    ) -> None:
        self.limits = http_limits or limits.HttpLimits()
        self.connections = limits.ConnectionTracker(self.limits)
        queue = queue or CallQueue(plane.limits.max_concurrent_requests)
        middlewares = [*middlewares, limits.request_limits_middleware(self.connections, queue)]
        self._app = make_app(plane, max_body_bytes, middlewares, self.limits, explorer)
        self._ssl_context = ssl_context
        self._host, self._requested_port = host, port
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, shutdown_timeout: float) -> None:
        self.connections.max_connections = limits.connections_that_fit(self.limits.max_connections)
        runner = web.AppRunner(
            self._app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=shutdown_timeout,
            keepalive_timeout=self.limits.idle_timeout_s,
            # After an answer that left a body unread (408, 413), wait for the rest of it at
            # most this long, not aiohttp's 10 s, before closing: a stalled client holds the
            # connection no longer than the body timeout allowed it.
            lingering_time=min(10.0, self.limits.body_timeout_s),
            auto_decompress=False,  # bodies are decoded by limits.read_body, within the limit
            logger=limits.PROTOCOL_LOG,
        )
        await runner.setup()
        site = limits.GuardedSite(
            runner,
            self._host,
            self._requested_port,
            self.connections,
            ssl_context=self._ssl_context,
        )
        try:
            await site.start()
        except OSError as err:
            await runner.cleanup()
            raise Unavailable(
                f"cannot serve HTTP on {self._host}:{self._requested_port} (is the port in "
                f"use?): {err.strerror}"
            ) from None
        self._runner = runner
        self.port = site.port
        log.info(
            "HTTP (KServe v2 REST) listening on %s:%d%s",
            self._host,
            self.port,
            ", HTTPS" if self._ssl_context else "",
        )

    async def stop(self) -> None:
        """Stop listening, let in-flight requests finish (up to the shutdown timeout)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
