"""Who is calling: the peer of the current call and, for a process on this host, its user.

A front end (`cnnzoo.serving.grpc_api.gate`, `cnnzoo.serving.http_api.limits`) records the
caller of each call it serves in `CALLER`, a context variable, so code below it (the shared-memory
regions) can ask who is calling without every layer passing it along. Tasks a call starts see
the same caller (asyncio copies the context into new tasks).

The user behind a TCP connection is known when the client's end of the connection is a socket of
this host's network namespace: the kernel keeps every TCP socket with its owner's uid. The server
asks for the one socket with the connection's addresses and ports through netlink's sock_diag
(what `ss -e` uses; a few microseconds), or where that is unavailable reads `/proc/net/tcp` and
`/proc/net/tcp6` (milliseconds on some kernels). A client on another host, or in another network
namespace (another container), has no socket here: its user is unknown (`Caller.uid()` is None).
The lookup is made only when needed (once per call at most) and never cached across calls: a port
can pass to another process once its connection closes.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

__all__ = ["CALLER", "Caller", "caller_from_grpc_peer", "fairness_key", "socket_owner"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
_ESTABLISHED = "01"
_UNKNOWN = -1

# linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_NO_COOKIE = 0xFFFFFFFF
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
_REQUEST = struct.Struct("=BBBBI")  # inet_diag_req_v2 up to its socket id
_UID_OFFSET = 4 + 48 + 12  # inet_diag_msg: family..retrans, socket id, expires, queues


@dataclass
class Caller:
    """The peer of one call (address and port) and the server address and port it reached
    (`server_host` "" or unspecified when the server listens on every address).

    `uid()` looks the user up at most once (see the module docstring).
    """

    host: str
    port: int
    server_host: str
    server_port: int
    _uid: int | None = field(default=_UNKNOWN, repr=False)

    def uid(self) -> int | None:
        """The uid owning the client's socket, or None when it is not on this host."""
        if self._uid == _UNKNOWN:
            self._uid = socket_owner(self.host, self.port, self.server_host, self.server_port)
        return self._uid

    def identity(self) -> tuple[str, str]:
        """What a shared-memory region is bound to: the user on this host, else the address."""
        uid = self.uid()
        return ("uid", str(uid)) if uid is not None else ("host", self.host)

    def describe(self) -> str:
        where = f"{self.host}:{self.port}"
        uid = self.uid()
        return (
            f"the process at {where} (uid {uid})" if uid is not None else f"the client at {where}"
        )


# The caller of the call being served; None outside any call (the embedding program itself).
CALLER: ContextVar[Caller | None] = ContextVar("cnnzoo_caller", default=None)


def fairness_key() -> tuple[str, int] | None:
    """Whose turn a waiting call takes (`cnnzoo.serving.round_robin`): the current call's
    connection (address and port), None outside any call. Per connection, because that is what
    the server can tell apart without credentials; a client that opens many connections gets a
    turn on each, within `--max-concurrent-requests`."""
    caller = CALLER.get()
    return None if caller is None else (caller.host, caller.port)


def caller_from_grpc_peer(peer: str, server_host: str, server_port: int) -> Caller | None:
    """A `Caller` from grpc's `context.peer()` (`ipv4:127.0.0.1:5555`, `ipv6:%5B::1%5D:5555`);
    None for other transports (e.g. `unix:`), whose peers have no port."""
    kind, _, address = (unquote(peer) if "%" in peer else peer).partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        return None
    return Caller(host.strip("[]"), int(port), server_host, server_port)


def socket_owner(host: str, port: int, server_host: str, server_port: int) -> int | None:
    """The uid of this host's TCP socket at `host:port` connected to the server's port, or
    None when there is none here (the client is elsewhere)."""
    try:
        client = _plain(ipaddress.ip_address(host))
    except ValueError:
        return None
    try:
        server = _plain(ipaddress.ip_address(server_host)) if server_host else None
    except ValueError:
        server = None
    if server is None or server.is_unspecified or server.version != client.version:
        # Listening on every address: a client on this host connects from the address it
        # connects to (the route to a local address prefers it as the source).
        server = client
    try:
        uid = _sock_diag_owner(client, port, server, server_port)
    except OSError:  # no netlink here (some sandboxes): read the tables instead
        return _table_owner(client, port, server_port)
    if uid is None and server != client:
        return _table_owner(client, port, server_port)
    return uid


def _plain(address: Address) -> Address:
    """An IPv4 client of a dual-stack socket appears as ::ffff:a.b.c.d; its socket is IPv4."""
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address


def _sock_diag_owner(client: Address, port: int, server: Address, server_port: int) -> int | None:
    """One sock_diag request for exactly the socket (client:port -> server:server_port)."""
    family = socket.AF_INET if client.version == 4 else socket.AF_INET6
    socket_id = (
        struct.pack("!HH", port, server_port)
        + client.packed.ljust(16, b"\0")
        + server.packed.ljust(16, b"\0")
        + struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE)
    )
    request = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + socket_id
    message = _HEADER.pack(_HEADER.size + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as netlink:
        netlink.settimeout(1.0)
        netlink.send(message + request)
        answer = netlink.recv(8192)
    if len(answer) < _HEADER.size:
        return None
    kind = _HEADER.unpack_from(answer)[1]
    body = answer[_HEADER.size :]
    if kind == _NLMSG_ERROR or len(body) < _UID_OFFSET + 4:
        return None  # ENOENT: no such socket here
    uid: int = struct.unpack_from("=I", body, _UID_OFFSET)[0]
    return uid


def _table_owner(client: Address, port: int, server_port: int) -> int | None:
    """The same answer from /proc/net/tcp{,6} (every socket listed; slower)."""
    wanted = {f"{_hex_address(client)}:{port:04X}"}
    if client.version == 4:  # listed in tcp6 when the client's socket is dual-stack
        wanted.add(f"{_hex_address(ipaddress.IPv6Address(f'::ffff:{client}'))}:{port:04X}")
    remote_port = f":{server_port:04X}"
    for table in _TABLES:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if (
                len(fields) > 7
                and fields[1] in wanted
                and fields[3] == _ESTABLISHED
                and fields[2].endswith(remote_port)
            ):
                return int(fields[7])
    return None


def _hex_address(address: Address) -> str:
    """An address as /proc/net/tcp* writes it: 32-bit words in the host's byte order."""
    packed = address.packed
    return "".join(
        f"{int.from_bytes(packed[i : i + 4], sys.byteorder):08X}" for i in range(0, len(packed), 4)
    )
