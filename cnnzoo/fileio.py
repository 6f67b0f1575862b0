"""Small file helpers every package shares: content hashes and atomic writes.

Atomic writes go to a temporary file in the destination's folder, are flushed and fsync'ed,
then `os.replace`d over the target, so a reader (or a crash) never sees a half-written file.
The result gets the mode `open()` gives new files (0o666 less the umask, e.g. 0644 under
umask 022), whatever the writer did to the temporary file, so other users (a server, a
container) can read what the process writes, as with any plain write.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    For writers that want a file name (torch/safetensors/PIL `save`)::

        with atomic_path(out / "grid.png") as tmp:
            image.save(tmp, format="PNG")
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp_beside(target)
    mode = stat.S_IMODE(tmp.stat().st_mode)  # what open() creates here
    try:
        yield tmp
        # some writers replace the file with their own 0600 temporary (safetensors does)
        os.chmod(tmp, mode)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _create_temp_beside(target: Path) -> Path:
    """Create a new empty file with a unique hidden name in `target`'s folder.

    Unlike `tempfile.mkstemp` (always 0600), it asks for mode 0o666 and lets the kernel apply
    the umask (and any default ACL of the folder), exactly as `open(path, "w")` would; reading
    the umask would mean changing it, which is process-wide and racy.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, flags, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {target}")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
