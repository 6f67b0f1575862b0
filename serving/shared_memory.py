"""Triton's system shared-memory extension: tensors that stay in the client's memory.

A client creates a POSIX shared-memory object (`shm_open`), writes its input tensors into it and
registers it under a name with its key (the object's name, e.g. `/input0`), an offset and a byte
size. An inference request then names the region, an offset into it and a byte size instead of
carrying the bytes; an output can name a region to be written into the same way. This is what
`tritonclient.utils.shared_memory` and `perf_analyzer --shared-memory system` do.

**Never a crash.** The server opens the object once at registration and keeps its descriptor,
but never maps it: an input is read with one `preadv` into the server's own buffer, an output
written with one `pwrite`. A mapping would be faster by one copy, but a client can shrink its
object at any moment, and touching a mapped page past the new end kills the whole process with
SIGBUS, whatever was checked just before. A read of a shrunk object comes back short and the
request is answered INVALID_ARGUMENT; the server goes on serving. Each use also checks that the
object is still the one registered (not removed, not replaced by a new object of the same name).

**Only the caller's own memory.** The port is open to every client that can reach it, so a
region is bound to whoever registered it (`SharedMemoryPolicy`):
- a client on this host is identified by the user owning its socket (`cnnzoo.serving.peers`);
  it may register only objects that user owns, and only objects it may write can take outputs;
- a client the server cannot identify (another host, another container) may register only
  objects under `--shared-memory-prefix`, and only when one is set;
- regions are used, listed and unregistered only by the identity that registered them, so no
  client can read another's inputs or have outputs written into another's memory;
- `--shared-memory off` drops the extension (not advertised, its RPCs answer UNAVAILABLE).
Calls made in the server's own process (no caller recorded) are trusted.

Regions are Linux's POSIX shared memory (`/dev/shm`); elsewhere the extension is not offered.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from cnnzoo.errors import AlreadyExists, InvalidInput, NotFound, ResourceExhausted
from cnnzoo.serving.peers import CALLER
from cnnzoo.serving.types import SharedMemoryRef

__all__ = [
    "DEFAULT_MAX_REGIONS",
    "SHM_ROOT",
    "RegionStatus",
    "RegionWriter",
    "SharedMemoryPolicy",
    "SystemSharedMemory",
    "supported",
]

log = logging.getLogger(__name__)

# Where glibc's shm_open keeps POSIX shared-memory objects.
SHM_ROOT = Path("/dev/shm")
# Each region holds a descriptor; a client may not hold an unbounded number.
DEFAULT_MAX_REGIONS = 256
_NAME_MAX = 255
_TRUSTED = ("process", "")  # the identity of calls made in the server's own process


def supported() -> bool:
    """True where POSIX shared memory lives in `/dev/shm` (Linux)."""
    return SHM_ROOT.is_dir()


@dataclass(frozen=True)
class SharedMemoryPolicy:
    """Who may register what (`cnnzoo serve --shared-memory`, `--shared-memory-prefix`).

    Args:
        enabled: offer the extension at all.
        prefix: if set, keys must start with it (after the leading '/'), and clients the
            server cannot identify may register objects under it.
    """

    enabled: bool = True
    prefix: str = ""

    def __post_init__(self) -> None:
        bare = self.prefix.removeprefix("/")
        if "/" in bare or "\0" in bare or len(bare) > _NAME_MAX:
            raise InvalidInput(
                f"--shared-memory-prefix must be the start of a POSIX shared-memory name (no "
                f"'/' after the first character), got {self.prefix!r}"
            )
        object.__setattr__(self, "prefix", bare)


@dataclass(frozen=True)
class RegionStatus:
    """A registered region as the Status RPC reports it."""

    name: str
    key: str
    offset: int
    byte_size: int


class _Region:
    """One registered region: the open object, its identity and who registered it."""

    __slots__ = ("status", "fd", "inode", "path", "writable", "owner", "closed")

    def __init__(
        self, status: RegionStatus, fd: int, path: Path, writable: bool, owner: tuple[str, str]
    ) -> None:
        self.status = status
        self.fd = fd
        self.path = path
        self.inode = os.fstat(fd).st_ino
        self.writable = writable
        self.owner = owner
        self.closed = False

    def check(self) -> None:
        """Fail if the object was removed, replaced or shrunk since registration."""
        name, key = self.status.name, self.status.key
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            on_disk = None
        if on_disk is None or on_disk.st_ino != self.inode:
            raise InvalidInput(
                f"shared-memory region {name!r}: the object {key!r} was removed or replaced "
                "after it was registered; unregister the region and register it again"
            )
        size = os.fstat(self.fd).st_size
        if size < self.status.offset + self.status.byte_size:
            raise self.shrunk(size)

    def shrunk(self, size: int) -> InvalidInput:
        return InvalidInput(
            f"shared-memory region {self.status.name!r}: the object {self.status.key!r} shrank "
            f"to {size} bytes after it was registered with offset {self.status.offset} and byte "
            f"size {self.status.byte_size}; unregister the region and register it again"
        )

    def close(self) -> None:
        self.closed = True
        os.close(self.fd)


class RegionWriter:
    """Where an output goes: `writer[start:] = data` writes into the region (one `pwrite`).

    `len(writer)` is the byte size the request gave; a write checks again that the region is
    still registered and its object still whole.
    """

    __slots__ = ("_registry", "_region", "_ref")

    def __init__(self, registry: SystemSharedMemory, region: _Region, ref: SharedMemoryRef) -> None:
        self._registry = registry
        self._region = region
        self._ref = ref

    def __len__(self) -> int:
        return self._ref.byte_size

    def __setitem__(self, index: slice, data: bytes | memoryview) -> None:
        start = (index.start or 0) if isinstance(index, slice) else -1
        size = memoryview(data).nbytes
        if start < 0 or start + size > self._ref.byte_size:
            raise InvalidInput(
                f"shared-memory region {self._ref.region!r}: {size} bytes at {start} do not fit "
                f"the {self._ref.byte_size} bytes the request gave"
            )
        self._registry.write(self._region, self._ref.offset + start, data)


class SystemSharedMemory:
    """The registered system shared-memory regions of a server (Register/Status/Unregister).

    Thread-safe: a lock guards the table; a read or write holds it, so that an unregister never
    closes a descriptor under a request.

    Args:
        max_regions: how many regions may be registered at once.
        root: where POSIX shared-memory objects live (`/dev/shm`).
        policy: who may register what (see the module docstring).
    """

    def __init__(
        self,
        max_regions: int = DEFAULT_MAX_REGIONS,
        root: Path = SHM_ROOT,
        policy: SharedMemoryPolicy | None = None,
    ) -> None:
        self.max_regions = max_regions
        self.policy = policy or SharedMemoryPolicy()
        self._root = root
        self._regions: dict[str, _Region] = {}
        self._lock = threading.Lock()

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Open `byte_size` bytes at `offset` of the POSIX shared-memory object `key`.

        Raises:
            InvalidInput: an empty name, a key that is not a POSIX shared-memory name (a path,
                `..`), outside the prefix, an object the caller may not use, or offset + byte
                size outside the object.
            AlreadyExists: `name` is registered.
            NotFound: no object `key` exists.
            ResourceExhausted: `max_regions` are registered.
        """
        if not name:
            raise InvalidInput("a shared-memory region needs a name")
        path = self._path_of(name, key)
        if offset < 0 or byte_size <= 0:
            raise InvalidInput(
                f"shared-memory region {name!r} needs offset >= 0 and byte_size >= 1, got "
                f"offset {offset} and byte_size {byte_size}"
            )
        caller = CALLER.get()
        uid = caller.uid() if caller is not None else None
        if caller is not None and uid is None and not self.policy.prefix:
            raise InvalidInput(
                f"shared-memory region {name!r}: system shared memory is for clients on the "
                f"server's host, and the server cannot tell which user {caller.describe()} is "
                "(another host or container); send tensors in the request, or start the server "
                "with --shared-memory-prefix to let such clients use objects under a prefix"
            )
        with self._lock:
            if name in self._regions:
                raise AlreadyExists(
                    f"shared-memory region {name!r} is already registered; unregister it first"
                )
            if len(self._regions) >= self.max_regions:
                raise ResourceExhausted(
                    f"{len(self._regions)} shared-memory regions are registered, the most this "
                    f"server holds ({self.max_regions}); unregister some first"
                )
            fd, writable = self._open(name, key, path)
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    raise InvalidInput(f"{key!r} is not a shared-memory object")
                if uid is not None and info.st_uid != uid:
                    raise InvalidInput(
                        f"shared-memory region {name!r}: the object {key!r} belongs to uid "
                        f"{info.st_uid}, not to the caller ({caller.describe()}); a client may "  # type: ignore[union-attr]
                        "register only its own objects"
                    )
                if uid is not None:
                    writable = writable and bool(info.st_mode & stat.S_IWUSR)
                if offset + byte_size > info.st_size:
                    raise InvalidInput(
                        f"shared-memory region {name!r}: offset {offset} + byte_size {byte_size} "
                        f"= {offset + byte_size} is beyond the end of {key!r} ({info.st_size} "
                        "bytes)"
                    )
                owner = caller.identity() if caller is not None else _TRUSTED
                status = RegionStatus(name, key, offset, byte_size)
                self._regions[name] = _Region(status, fd, path, writable, owner)
            except BaseException:
                os.close(fd)
                raise
        log.info(
            "registered shared-memory region %s (%s, %d bytes%s)",
            name,
            key,
            byte_size,
            "" if writable else ", read-only: inputs only",
        )

    def _open(self, name: str, key: str, path: Path) -> tuple[int, bool]:
        """The object's descriptor, read-write where allowed (outputs), else read-only."""
        for flags, writable in ((os.O_RDWR, True), (os.O_RDONLY, False)):
            try:
                return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK), writable
            except FileNotFoundError:
                raise NotFound(
                    f"no POSIX shared-memory object {key!r} for region {name!r} (create it with "
                    "shm_open before registering it)"
                ) from None
            except OSError as err:
                if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and writable:
                    continue
                raise InvalidInput(
                    f"cannot open shared-memory object {key!r} for region {name!r}: {err.strerror}"
                ) from None
        raise AssertionError("unreachable")

    def status(self, name: str = "") -> list[RegionStatus]:
        """The caller's regions (no name) or the one named.

        Raises:
            NotFound: `name` is not registered (by this caller).
        """
        identity = _identity()
        with self._lock:
            if not name:
                return [r.status for r in self._regions.values() if _visible(r, identity)]
            region = self._regions.get(name)
        if region is None or not _visible(region, identity):
            raise NotFound(f"no shared-memory region {name!r} is registered")
        return [region.status]

    def unregister(self, name: str = "") -> None:
        """Close one of the caller's regions, or all of them when `name` is empty (an unknown
        name is not an error, as in Triton)."""
        identity = _identity()
        with self._lock:
            names = [name] if name else list(self._regions)
            regions = [
                self._regions.pop(n)
                for n in names
                if n in self._regions and _visible(self._regions[n], identity)
            ]
            for region in regions:
                region.close()
        for region in regions:
            log.info("unregistered shared-memory region %s", region.status.name)

    def close(self) -> None:
        """Close every region (server shutdown)."""
        with self._lock:
            regions, self._regions = list(self._regions.values()), {}
            for region in regions:
                region.close()

    def read(self, ref: SharedMemoryRef) -> memoryview:
        """A copy of the `ref.byte_size` bytes at `ref.offset` of a region (the input's bytes
        as they are now; the client may change or shrink its object afterwards).

        Raises:
            NotFound: the region is not registered (by this caller).
            InvalidInput: offset + byte size lies outside the region, or the object was
                removed, replaced or shrunk since it was registered.
        """
        buffer = bytearray(ref.byte_size)
        with self._lock:  # held so that an unregister cannot close the descriptor under us
            region = self._find(ref)
            region.check()
            position, done = region.status.offset + ref.offset, 0
            view = memoryview(buffer)
            while done < ref.byte_size:
                count = os.preadv(region.fd, [view[done:]], position + done)
                if count == 0:  # the object shrank after the check
                    raise region.shrunk(os.fstat(region.fd).st_size)
                done += count
        return memoryview(buffer)

    def writer(self, ref: SharedMemoryRef) -> RegionWriter:
        """Where an output named `ref` is written (see `RegionWriter`).

        Raises:
            NotFound, InvalidInput: as `read`, and a region its object's mode keeps read-only.
        """
        with self._lock:
            region = self._find(ref)
            region.check()
        if not region.writable:
            raise InvalidInput(
                f"shared-memory region {ref.region!r} takes no outputs: its object "
                f"{region.status.key!r} is not writable by the client that registered it"
            )
        return RegionWriter(self, region, ref)

    def view(self, ref: SharedMemoryRef) -> memoryview | RegionWriter:
        """`writer(ref)` for an output, `read(ref)` for an input (what the data plane asks)."""
        return self.writer(ref) if ref.output else self.read(ref)

    def write(self, region: _Region, position: int, data: bytes | memoryview) -> None:
        """Write `data` at `position` of the registered part of `region` (a `RegionWriter`'s)."""
        view = memoryview(data).cast("B")
        with self._lock:
            if region.closed:
                raise InvalidInput(
                    f"shared-memory region {region.status.name!r} was unregistered while the "
                    "request ran; its output was not written"
                )
            region.check()
            at, done = region.status.offset + position, 0
            while done < len(view):
                done += os.pwrite(region.fd, view[done:], at + done)

    def _find(self, ref: SharedMemoryRef) -> _Region:
        region = self._regions.get(ref.region)
        if region is None or not _visible(region, _identity()):
            raise NotFound(
                f"no shared-memory region {ref.region!r} is registered (register it with "
                "SystemSharedMemoryRegister first)"
            )
        size = region.status.byte_size
        if ref.offset < 0 or ref.byte_size < 0 or ref.offset + ref.byte_size > size:
            raise InvalidInput(
                f"shared-memory region {ref.region!r}: offset {ref.offset} + byte size "
                f"{ref.byte_size} is outside the region ({size} bytes)"
            )
        return region

    def _path_of(self, name: str, key: str) -> Path:
        """The object of POSIX shared-memory name `key` (`/name` or `name`; never a path)."""
        bare = key[1:] if key.startswith("/") else key
        if not bare or "/" in bare or bare in (".", "..") or "\0" in bare or len(bare) > _NAME_MAX:
            raise InvalidInput(
                f"shared-memory region {name!r}: key {key!r} is not a POSIX shared-memory name "
                "(one '/' followed by up to 255 characters other than '/', as shm_open takes)"
            )
        if not bare.startswith(self.policy.prefix):
            raise InvalidInput(
                f"shared-memory region {name!r}: key {key!r} is outside the prefix this server "
                f"allows ('/{self.policy.prefix}', --shared-memory-prefix)"
            )
        return self._root / bare


def _identity() -> tuple[str, str]:
    caller = CALLER.get()
    return caller.identity() if caller is not None else _TRUSTED


def _visible(region: _Region, identity: tuple[str, str]) -> bool:
    """A region is the business of the identity that registered it (and of the process)."""
    return identity == _TRUSTED or region.owner == identity
