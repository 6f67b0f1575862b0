"""Bounds on what a REST client can hold: connections, time to send a request, bodies.

Every connection takes a file descriptor, which the gRPC port needs too, so the REST port holds
at most `--http-max-connections` at once; the next one is answered 503 and closed at once. The
limit never takes more than half the descriptors the process may open (`ulimit -n`, whose soft
limit the server first raises to the hard one), less room for one burst of accepted connections
(`ACCEPT_BACKLOG`, each holding a descriptor until it is refused): a lower limit is used, with a
warning. A
connection must send a complete request head within `--http-header-timeout` of its first byte
(a client trickling headers a byte at a time, "slowloris", is cut off), its body within
`--http-body-timeout` (408), and a connection that sends nothing for `--http-idle-timeout`
(between requests, or from the start) is closed.

Bodies are read here (`read_body`) rather than by aiohttp's parser, so that every way a body can
be wrong gets a JSON error and no traceback: an encoding the server does not speak is 415
(gzip, deflate and, where the `brotli` package is installed, br are spoken), a body that does not
decode is 400, one that decodes to more than the body limit is 413 (the limit holds for the
decoded bytes: a small compressed body cannot make the server hold gigabytes), and a client that
leaves mid-body is 400 (logged at DEBUG: the client is gone).

The REST twin of `cnnzoo.serving.grpc_api.gate` is here too: inference requests take a place in
the server's call queue, and each request records its caller (`cnnzoo.serving.peers`).
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from cnnzoo.errors import CnnzooError, DeadlineExceeded
from cnnzoo.serving.call_queue import CallQueue
from cnnzoo.serving.http_api.options import HttpLimits
from cnnzoo.serving.peers import CALLER, Caller

__all__ = [
    "CLIENT_FAULTS",
    "ConnectionTracker",
    "connections_that_fit",
    "GuardedSite",
    "HttpLimits",
    "PROTOCOL_LOG",
    "read_body",
    "request_limits_middleware",
]

log = logging.getLogger(__name__)
# aiohttp's per-connection messages (a malformed request, a client gone) go here, demoted.
PROTOCOL_LOG = logging.getLogger("cnnzoo.serving.http_api.protocol")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Connections the kernel queues for the port, and asyncio accepts in one go.
ACCEPT_BACKLOG = 64
_CODINGS = ("gzip", "x-gzip", "deflate", "br")
# Bodies above this size are decompressed off the event loop (zlib and brotli release the GIL).
_DECODE_IN_THREAD = 256 * 1024


# The routes that run models and wait for a place in the call queue (as gRPC's gate does).
_QUEUED_ROUTES = ("/infer", "/classify", "/explain")

_LIMITS = web.AppKey("http_limits", HttpLimits)


def connections_that_fit(wanted: int) -> int:
    """`wanted`, or half the file descriptors this process may open if that is less (raising
    the soft limit to the hard one first, as servers do)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    budget = max(8, soft // 2 - ACCEPT_BACKLOG)
    if wanted <= budget:
        return wanted
    log.warning(
        "--http-max-connections %d lowered to %d: this process may open only %d files "
        "(ulimit -n), and gRPC, models and shared-memory regions need the rest; raise the "
        "limit to allow more",
        wanted,
        budget,
        soft,
    )
    return budget


class ConnectionTracker:
    """The REST port's open connections and what the limits did (read by `/metrics`)."""

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.max_connections = limits.max_connections  # lowered to what fits at start
        self.open = 0
        self.refused = 0  # over max_connections
        self.header_timeouts = 0
        self.body_timeouts = 0
        self._guards: dict[object, _GuardedConnection] = {}

    def guard_of(self, request: web.BaseRequest) -> _GuardedConnection | None:
        return self._guards.get(request.protocol)


class _GuardedConnection(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind the connection limit and header timer.

    Everything the transport calls is passed on to aiohttp's `RequestHandler`; the header
    timer starts at the first byte received between requests and stops when the request
    reaches the application (`request_started`).
    """

    def __init__(self, tracker: ConnectionTracker, inner: Any) -> None:
        self._tracker = tracker
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._admitted = False
        self._between_requests = True
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tracker = self._tracker
        self._transport = transport  # type: ignore[assignment]
        if tracker.open >= tracker.max_connections:
            tracker.refused += 1
            body = (
                f'{{"error":"this server holds at most {tracker.max_connections} REST '
                'connections at once (--http-max-connections); try again shortly"}'
            ).encode()
            transport.write(  # type: ignore[attr-defined]
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nRetry-After: 1\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
            transport.close()
            return
        self._admitted = True
        tracker.open += 1
        tracker._guards[self._inner] = self
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if self._between_requests and self._timer is None and data:
            self._timer = asyncio.get_running_loop().call_later(
                self._tracker.limits.header_timeout_s, self._header_timeout
            )
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._admitted else None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._stop_timer()
        self._tracker.open -= 1
        self._tracker._guards.pop(self._inner, None)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._admitted:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self._inner.resume_writing()

    def request_started(self) -> None:
        self._between_requests = False
        self._stop_timer()

    def request_finished(self) -> None:
        self._between_requests = True

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _header_timeout(self) -> None:
        self._timer = None
        if not self._between_requests or self._transport is None:
            return
        self._tracker.header_timeouts += 1
        body = (
            f'{{"error":"the request head did not arrive within '
            f'{self._tracker.limits.header_timeout_s:g} s (--http-header-timeout)"}}'
        ).encode()
        self._transport.write(
            b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        self._transport.close()


class GuardedSite(web.BaseSite):
    """A TCP site whose connections go through the tracker's limits (aiohttp's `TCPSite`
    otherwise)."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        tracker: ConnectionTracker,
        *,
        ssl_context: Any = None,
        backlog: int = ACCEPT_BACKLOG,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host = host
        self._port = port
        self._tracker = tracker
        self.port = port

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self.port}"

    async def start(self) -> None:
        await super().start()
        factory = self._runner.server
        assert factory is not None
        tracker = self._tracker
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _GuardedConnection(tracker, factory()),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=True,
        )
        self.port = self._server.sockets[0].getsockname()[1]


def request_limits_middleware(tracker: ConnectionTracker, queue: CallQueue) -> Middleware:
    """Marks requests started for the header timer, records the caller, and queues inference
    requests for a place in the call queue."""

    @web.middleware
    async def limits(request: web.Request, handler: Handler) -> web.StreamResponse:
        guard = tracker.guard_of(request)
        if guard is not None:
            guard.request_started()
        token = CALLER.set(_caller(request))
        try:
            if request.method != "POST" or not request.path.endswith(_QUEUED_ROUTES):
                return await handler(request)
            try:
                await queue.enter()
            except CnnzooError as err:
                status = 504 if isinstance(err, DeadlineExceeded) else 429
                return web.json_response({"error": err.reason}, status=status)
            try:
                return await handler(request)
            finally:
                queue.leave()
        finally:
            CALLER.reset(token)
            if guard is not None:
                guard.request_finished()

    return limits


def _caller(request: web.BaseRequest) -> Caller | None:
    transport = request.transport
    if transport is None:
        return None
    peer = transport.get_extra_info("peername")
    local = transport.get_extra_info("sockname")
    if not (isinstance(peer, tuple) and isinstance(local, tuple)):
        return None  # a Unix socket
    return Caller(peer[0], peer[1], local[0], local[1])


def install(app: web.Application, limits: HttpLimits) -> None:
    """Make `read_body` find the limits."""
    app[_LIMITS] = limits


async def read_body(request: web.Request) -> bytes:
    """The request body, decoded as its Content-Encoding says, within the body timeout and the
    body limit (see the module docstring).

    Raises:
        web.HTTPException: 400, 408, 413 or 415, with a message saying why.
    """
    limits = request.app.get(_LIMITS) or HttpLimits()
    codings = _codings(request.headers.get("Content-Encoding", ""))
    try:
        raw = await asyncio.wait_for(request.read(), limits.body_timeout_s)
    except asyncio.TimeoutError:
        raise web.HTTPRequestTimeout(
            reason=f"the request body did not arrive within {limits.body_timeout_s:g} s "
            "(--http-body-timeout)"
        ) from None
    except ConnectionError:
        PROTOCOL_LOG.debug("%s %s: the client left mid-body", request.method, request.path[:200])
        raise web.HTTPBadRequest(
            reason="the connection closed before the whole body arrived"
        ) from None
    except web.RequestPayloadError as err:
        raise web.HTTPBadRequest(
            reason=f"the request body is malformed: {_one_line(err)}"
        ) from None
    if not codings:
        return raw
    limit = request.client_max_size
    if len(raw) > _DECODE_IN_THREAD:
        return await asyncio.get_running_loop().run_in_executor(None, _decode, raw, codings, limit)
    return _decode(raw, codings, limit)


def _codings(header: str) -> list[str]:
    """The encodings applied to the body, in the order they were applied."""
    codings = [c.strip().lower() for c in header.split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    for coding in codings:
        if coding not in _CODINGS or (coding == "br" and not _has_brotli()):
            spoken = "gzip, deflate" + (", br" if _has_brotli() else "")
            raise web.HTTPUnsupportedMediaType(
                reason=f"Content-Encoding {coding[:40]!r} is not supported; send the body plain "
                f"or as {spoken}"
            )
    if len(codings) > 2:
        raise web.HTTPUnsupportedMediaType(
            reason=f"a body encoded {len(codings)} times is not accepted (at most 2)"
        )
    return codings


def _decode(data: bytes, codings: list[str], limit: int) -> bytes:
    for coding in reversed(codings):
        data = _decode_one(data, coding, limit)
    return data


def _decode_one(data: bytes, coding: str, limit: int) -> bytes:
    """One decoding step, refusing output over `limit` bytes."""
    try:
        if coding == "br":
            import brotli  # type: ignore[import-untyped]

            decoder = brotli.Decompressor()
            out: bytes = decoder.process(data, output_buffer_limit=limit + 1)
            finished, rest = decoder.is_finished(), b""
        elif coding == "deflate":
            try:  # zlib-wrapped, as HTTP says; some clients send raw deflate
                out, finished, rest = _inflate(data, zlib.MAX_WBITS, limit)
            except zlib.error:
                out, finished, rest = _inflate(data, -zlib.MAX_WBITS, limit)
        else:
            out, finished, rest = _inflate(data, zlib.MAX_WBITS | 16, limit)
    except Exception as err:  # zlib.error, brotli.error
        raise web.HTTPBadRequest(
            reason=f"the request body is not valid {coding} (Content-Encoding): {_one_line(err)}"
        ) from None
    if len(out) > limit:
        raise web.HTTPRequestEntityTooLarge(
            max_size=limit,
            actual_size=len(out),
            reason=f"the request body decodes to more than this server's limit of {limit} bytes "
            f"({limit / 2**20:g} MiB, --max-message-mb)",
        )
    if not finished or rest:
        problem = "it ends before the compressed data does" if not finished else "data follows it"
        raise web.HTTPBadRequest(
            reason=f"the request body is not valid {coding} (Content-Encoding): {problem}"
        )
    return out


def _inflate(data: bytes, wbits: int, limit: int) -> tuple[bytes, bool, bytes]:
    decoder = zlib.decompressobj(wbits)
    out = decoder.decompress(data, limit + 1)
    return out, decoder.eof, decoder.unused_data


_BROTLI: list[bool] = []


def _has_brotli() -> bool:
    if not _BROTLI:
        try:
            import brotli  # noqa: F401
        except ImportError:
            _BROTLI.append(False)
        else:
            _BROTLI.append(True)
    return _BROTLI[0]


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:200]


# Exceptions a client causes (a malformed request, a connection it dropped): aiohttp logs them
# with a traceback at ERROR; `ClientFaultFilter` makes them one DEBUG line.
def _client_faults() -> tuple[type[BaseException], ...]:
    from aiohttp.http_exceptions import HttpProcessingError

    return (HttpProcessingError, web.RequestPayloadError, ConnectionError, asyncio.CancelledError)


CLIENT_FAULTS = _client_faults()


class ClientFaultFilter(logging.Filter):
    """Turns aiohttp's report of a client's fault into one DEBUG line without a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        info = record.exc_info
        if not info or not isinstance(info[1], CLIENT_FAULTS):
            return True
        record.msg = f"{record.getMessage()}: {_one_line(info[1])}"
        record.args = None
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.exc_info, record.exc_text = None, None
        return PROTOCOL_LOG.isEnabledFor(logging.DEBUG)


PROTOCOL_LOG.addFilter(ClientFaultFilter())
