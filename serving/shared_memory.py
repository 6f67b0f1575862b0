"""Triton's system shared-memory extension: tensors that stay in the client's memory.

A client creates a POSIX shared-memory object (`shm_open`), writes its input tensors into it and
registers it under a name with its key (the object's name, e.g. `/input0`), an offset and a byte
size. An inference request then names the region, an offset into it and a byte size instead of
carrying the bytes; an output can name a region to be written into the same way. This is what
`tritonclient.utils.shared_memory` and `perf_analyzer --shared-memory system` do.

The server opens the object once at registration, checks that offset + byte size lies inside it
and maps that part once. An input read from a region is a numpy array over the mapping: ONNX
Runtime reads the client's bytes where they are, with no copy. Checks on each use, so that a
region the client changed behind the server's back gives an error instead of a crash or stale
data: the object must still exist under its key as the one that was registered (not removed,
not replaced by a new object of the same name), and it must still be large enough (reading a
mapping past the end of a shrunk object would kill the process with SIGBUS).

Unregistering (or stopping the server) closes the descriptor and unmaps the region; a request
still using its memory keeps the mapping alive until it is answered (the mapping is released with
the last array over it), as Triton defers unregistering until in-flight requests complete.
Regions are Linux's POSIX shared memory (`/dev/shm`); elsewhere the extension is not offered.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from cnnzoo.errors import AlreadyExists, InvalidInput, NotFound, ResourceExhausted
from cnnzoo.serving.types import SharedMemoryRef

__all__ = [
    "DEFAULT_MAX_REGIONS",
    "SHM_ROOT",
    "RegionStatus",
    "SystemSharedMemory",
    "supported",
]

log = logging.getLogger(__name__)

# Where glibc's shm_open keeps POSIX shared-memory objects.
SHM_ROOT = Path("/dev/shm")
# Each region holds a descriptor and a mapping; a client may not hold an unbounded number.
DEFAULT_MAX_REGIONS = 256
_NAME_MAX = 255


def supported() -> bool:
    """True where POSIX shared memory lives in `/dev/shm` (Linux)."""
    return SHM_ROOT.is_dir()


@dataclass(frozen=True)
class RegionStatus:
    """A registered region as the Status RPC reports it."""

    name: str
    key: str
    offset: int
    byte_size: int


class _Region:
    """One registered region: the open object, its identity and the mapped bytes."""

    __slots__ = ("status", "fd", "inode", "mapping", "view", "path")

    def __init__(self, status: RegionStatus, fd: int, path: Path) -> None:
        self.status = status
        self.fd = fd
        self.path = path
        self.inode = os.fstat(fd).st_ino
        end = status.offset + status.byte_size
        # mmap offsets must be page-aligned and Triton's are not: map from 0, view from offset.
        self.mapping = mmap.mmap(fd, end, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.view = memoryview(self.mapping)[status.offset : end]

    def check(self) -> None:
        """Fail (never crash) if the object was removed, replaced or shrunk since registration."""
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
            raise InvalidInput(
                f"shared-memory region {name!r}: the object {key!r} shrank to {size} bytes "
                f"after it was registered with offset {self.status.offset} and byte size "
                f"{self.status.byte_size}; unregister the region and register it again"
            )

    def close(self) -> None:
        os.close(self.fd)
        self.view.release()
        try:
            self.mapping.close()
        except BufferError:
            # An in-flight request still reads it: unmapped when its last array is freed.
            log.debug("region %s is still in use; unmapped when its request ends", self.status.name)


class SystemSharedMemory:
    """The registered system shared-memory regions of a server (Register/Status/Unregister).

    Thread-safe: a lock guards the table; a lookup on the inference path holds it to find and
    check the region (two stat calls).

    Args:
        max_regions: how many regions may be registered at once.
        root: where POSIX shared-memory objects live (`/dev/shm`).
    """

    def __init__(self, max_regions: int = DEFAULT_MAX_REGIONS, root: Path = SHM_ROOT) -> None:
        self.max_regions = max_regions
        self._root = root
        self._regions: dict[str, _Region] = {}
        self._lock = threading.Lock()

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Open and map `byte_size` bytes at `offset` of the POSIX shared-memory object `key`.

        Raises:
            InvalidInput: an empty name, a key that is not a POSIX shared-memory name (a path,
                `..`), or offset + byte size outside the object.
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
        with self._lock:
            if name in self._regions:
                raise AlreadyExists(
                    f"shared-memory region {name!r} is already registered (key "
                    f"{self._regions[name].status.key!r}); unregister it first"
                )
            if len(self._regions) >= self.max_regions:
                raise ResourceExhausted(
                    f"{len(self._regions)} shared-memory regions are registered, the most this "
                    f"server holds ({self.max_regions}); unregister some first"
                )
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                raise NotFound(
                    f"no POSIX shared-memory object {key!r} for region {name!r} (create it with "
                    "shm_open before registering it)"
                ) from None
            except OSError as err:
                raise InvalidInput(
                    f"cannot open shared-memory object {key!r} for region {name!r}: {err.strerror}"
                ) from None
            try:
                size = os.fstat(fd).st_size
                if offset + byte_size > size:
                    raise InvalidInput(
                        f"shared-memory region {name!r}: offset {offset} + byte_size {byte_size} "
                        f"= {offset + byte_size} is beyond the end of {key!r} ({size} bytes)"
                    )
                status = RegionStatus(name, key, offset, byte_size)
                self._regions[name] = _Region(status, fd, path)
            except BaseException:
                os.close(fd)
                raise
        log.info("registered shared-memory region %s (%s, %d bytes)", name, key, byte_size)

    def status(self, name: str = "") -> list[RegionStatus]:
        """Every region (no name) or the one named.

        Raises:
            NotFound: `name` is not registered.
        """
        with self._lock:
            if not name:
                return [region.status for region in self._regions.values()]
            region = self._regions.get(name)
        if region is None:
            raise NotFound(f"no shared-memory region {name!r} is registered")
        return [region.status]

    def unregister(self, name: str = "") -> None:
        """Unmap one region, or every region when `name` is empty (an unknown name is not an
        error, as in Triton)."""
        with self._lock:
            names = [name] if name else list(self._regions)
            regions = [self._regions.pop(n) for n in names if n in self._regions]
        for region in regions:
            region.close()
            log.info("unregistered shared-memory region %s", region.status.name)

    def close(self) -> None:
        """Unmap every region (server shutdown)."""
        self.unregister()

    def view(self, ref: SharedMemoryRef) -> memoryview:
        """The `ref.byte_size` bytes at `ref.offset` of a region, writable and without a copy
        (the mapping lives at least as long as the view).

        Raises:
            NotFound: the region is not registered.
            InvalidInput: offset + byte size lies outside the region, or the object was
                removed, replaced or shrunk since it was registered.
        """
        with self._lock:  # held so that an unregister cannot close the region half-way
            region = self._regions.get(ref.region)
            if region is None:
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
            region.check()
            return region.view[ref.offset : ref.offset + ref.byte_size]

    def _path_of(self, name: str, key: str) -> Path:
        """The object of POSIX shared-memory name `key` (`/name` or `name`; never a path)."""
        bare = key[1:] if key.startswith("/") else key
        if not bare or "/" in bare or bare in (".", "..") or "\0" in bare or len(bare) > _NAME_MAX:
            raise InvalidInput(
                f"shared-memory region {name!r}: key {key!r} is not a POSIX shared-memory name "
                "(one '/' followed by up to 255 characters other than '/', as shm_open takes)"
            )
        return self._root / bare
