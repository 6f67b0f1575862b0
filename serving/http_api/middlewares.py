"""aiohttp middlewares for the REST port: restricted API groups and the access log.

The REST twins of `cnnzoo.serving.grpc_api.interceptors`, installed only when asked for
(`--http-restricted-api`, `--access-log`). A refused request is answered as Triton answers it:
403 `{"error": "This API is restricted, expecting header '<key>'"}`.
"""

from __future__ import annotations

import json
import time

from aiohttp import web

from cnnzoo.serving.access_log import AccessLog
from cnnzoo.serving.http_api.app import Handler, Middleware
from cnnzoo.serving.security import RestrictedProtocols, http_group

__all__ = ["access_log_middleware", "restricted_api_middleware"]


def restricted_api_middleware(protocols: RestrictedProtocols) -> Middleware:
    """Refuse requests to a restricted group without its header (403, Triton's message)."""

    @web.middleware
    async def restricted(request: web.Request, handler: Handler) -> web.StreamResponse:
        restriction = protocols.for_group(http_group(request.path))
        if restriction is not None and not restriction.matches(
            request.headers.get(restriction.header)
        ):
            return web.Response(
                text=json.dumps({"error": restriction.refusal}),
                status=403,
                content_type="application/json",
            )
        return await handler(request)

    return restricted


def access_log_middleware(log: AccessLog) -> Middleware:
    """One access line per request: `rpc` is "METHOD /path", `status` the HTTP code."""

    @web.middleware
    async def access(request: web.Request, handler: Handler) -> web.StreamResponse:
        started, status = time.perf_counter(), "500"
        try:
            response = await handler(request)
            status = str(response.status)
            return response
        except web.HTTPException as err:
            status = str(err.status)
            raise
        finally:
            peer = request.transport.get_extra_info("peername") if request.transport else None
            log.write(
                peer=f"{peer[0]}:{peer[1]}" if peer else "",
                client=_client_name(request),
                rpc=f"{request.method} {request.path}",
                model=request.match_info.get("model", ""),
                version=request.match_info.get("version", ""),
                status=status,
                latency_s=time.perf_counter() - started,
            )

    return access


def _client_name(request: web.Request) -> str:
    """The common name of the caller's TLS certificate (mutual TLS), else ""."""
    cert = request.transport.get_extra_info("peercert") if request.transport else None
    for attributes in (cert or {}).get("subject", ()):
        for key, value in attributes:
            if key == "commonName":
                return str(value)
    return ""
