"""The gRPC port's transport: connection limits, keepalive and connection age.

These are gRPC core channel arguments, so they hold before any Python runs for a call (the
bound on calls in progress on the whole server is the data plane's, `--max-concurrent-requests`:
grpc.aio's own `maximum_concurrent_rpcs` answers UNAVAILABLE or stalls instead of refusing when
`max_concurrent_streams` is set too):
- `max_concurrent_streams`: calls in progress on one HTTP/2 connection (gRPC's
  `grpc.max_concurrent_streams`); a client opening more waits for a free stream. The default,
  1024, is far above what a client opens in a burst: near the limit a stream that has just ended
  may still count on the server, which then refuses the client's next one (UNAVAILABLE "Stream
  removed"), so the limit must not be what bounds a normal client's calls. The server bounds
  calls in progress by queueing them instead (`--max-concurrent-requests`,
  `cnnzoo.serving.call_queue`).
- keepalive, with Triton's option names and defaults (`--grpc-keepalive-time` and so on, in
  milliseconds): how often the server pings an idle client and how long it waits for the answer,
  and how often a client may ping (a client pinging faster is disconnected).
- `max_connection_age_ms` / `max_connection_age_grace_ms` / `max_connection_idle_ms`: close
  connections that are old or idle (a load balancer then spreads clients again). Off by default.

TLS is `cnnzoo.serving.tls` (it serves the REST port too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cnnzoo.errors import InvalidInput

__all__ = ["TransportOptions"]


@dataclass(frozen=True)
class TransportOptions:
    """gRPC connection settings (see the module docstring); times are in milliseconds.

    Args:
        max_concurrent_streams: calls in progress on one connection at once.
        keepalive_time_ms: ping an idle connection after this long.
        keepalive_timeout_ms: close a connection whose ping is not answered within this.
        keepalive_permit_without_calls: let clients ping connections that carry no call.
        http2_min_recv_ping_interval_without_data_ms: shortest interval between a client's
            pings on a connection without data; a shorter one is a "ping strike".
        http2_max_ping_strikes: strikes before the connection is closed (0: any number).
        max_connection_age_ms: close connections older than this (0: never).
        max_connection_age_grace_ms: time calls on an aged connection get to finish.
        max_connection_idle_ms: close connections without calls for this long (0: never).
    """

    max_concurrent_streams: int = 1024
    keepalive_time_ms: int = 7_200_000
    keepalive_timeout_ms: int = 20_000
    keepalive_permit_without_calls: bool = False
    http2_min_recv_ping_interval_without_data_ms: int = 300_000
    http2_max_ping_strikes: int = 2
    max_connection_age_ms: int = 0
    max_connection_age_grace_ms: int = 0
    max_connection_idle_ms: int = 0

    def __post_init__(self) -> None:
        for name, lowest in _LOWEST.items():
            if getattr(self, name) < lowest:
                raise InvalidInput(f"{_flag(name)} must be >= {lowest}, got {getattr(self, name)}")

    def channel_args(self) -> list[tuple[str, Any]]:
        """The gRPC core arguments for the server."""
        args: list[tuple[str, Any]] = [
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            ("grpc.keepalive_time_ms", self.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", int(self.keepalive_permit_without_calls)),
            (
                "grpc.http2.min_ping_interval_without_data_ms",
                self.http2_min_recv_ping_interval_without_data_ms,
            ),
            ("grpc.http2.max_ping_strikes", self.http2_max_ping_strikes),
        ]
        if self.max_connection_age_ms:
            args.append(("grpc.max_connection_age_ms", self.max_connection_age_ms))
            args.append(("grpc.max_connection_age_grace_ms", self.max_connection_age_grace_ms))
        if self.max_connection_idle_ms:
            args.append(("grpc.max_connection_idle_ms", self.max_connection_idle_ms))
        return args


# The smallest value each setting takes (the others are switches).
_LOWEST = {
    "max_concurrent_streams": 1,
    "keepalive_time_ms": 1,
    "keepalive_timeout_ms": 1,
    "http2_min_recv_ping_interval_without_data_ms": 0,
    "http2_max_ping_strikes": 0,
    "max_connection_age_ms": 0,
    "max_connection_age_grace_ms": 0,
    "max_connection_idle_ms": 0,
}


def _flag(name: str) -> str:
    """The `cnnzoo serve` option of a `TransportOptions` field (Triton's names for keepalive)."""
    flag = name.removesuffix("_ms").replace("_", "-")
    return f"--{flag}" if flag.startswith("max-concurrent") else f"--grpc-{flag}"
