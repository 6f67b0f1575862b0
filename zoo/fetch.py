"""Fetch one file over HTTP(S): checked, atomic, and one clear error when it cannot be done.

Datasets (`cnnzoo.zoo.downloads`) and torchvision's pretrained weights
(`cnnzoo.zoo.pretrained`) come through here. The file is streamed to a hidden temporary file
beside its destination, its checksum compared, and only then renamed into place: a download cut
short, refused or failing its checksum leaves nothing behind, not even the folders it had to
create. Every connection has a timeout, so a network that drops packets fails in seconds
instead of hanging.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from cnnzoo import __version__
from cnnzoo.errors import IntegrityError, Unavailable
from cnnzoo.fileio import atomic_path

__all__ = [
    "TIMEOUT_SECONDS",
    "TransferFailed",
    "env_mirror",
    "fetch_file",
    "made_folders",
    "mirror_url",
    "remove_made_folders",
]

TIMEOUT_SECONDS = 30.0
_CHUNK = 1 << 16


class TransferFailed(Unavailable):
    """A download could not be done: the server was unreachable or the transfer broke.
    Status: UNAVAILABLE."""

    def __init__(self, url: str, cause: str) -> None:
        super().__init__(f"could not download {url}: {cause}")
        self.url = url
        self.cause = cause


def made_folders(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; the ones created, deepest first."""
    missing = []
    current = folder.absolute()
    while not current.exists():
        missing.append(current)
        current = current.parent
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def remove_made_folders(folders: list[Path]) -> None:
    """Remove the folders `made_folders` created, deepest first, where they are still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (something else wrote there) or already gone
            return


def fetch_file(
    url: str,
    dest: Path,
    *,
    md5: str | None = None,
    sha256_prefix: str | None = None,
    timeout: float = TIMEOUT_SECONDS,
    progress: bool = True,
) -> Path:
    """Download `url` to `dest` (replacing it), checking the checksums given.

    Args:
        url: http(s) or file URL.
        dest: the file to write; its folder must exist.
        md5: the expected hex md5 of the whole file.
        sha256_prefix: the expected start of its hex sha256 (torchvision's and torch.hub's
            file names carry the first 8 to 10 digits).
        timeout: seconds to wait for the connection and for each read.
        progress: draw a progress bar (on a terminal only).

    Raises:
        TransferFailed: (an `Unavailable`) the server could not be reached or the transfer
            broke (`cause` says which; `dest` is untouched).
        IntegrityError: the file arrived but its checksum differs (nothing is written).
    """
    request = urllib.request.Request(url, headers={"User-Agent": f"cnnzoo/{__version__}"})
    md5_digest = hashlib.md5(usedforsecurity=False)
    sha_digest = hashlib.sha256()
    try:
        with atomic_path(dest) as tmp:
            with (
                urllib.request.urlopen(request, timeout=timeout) as response,
                open(tmp, "wb") as out,
            ):
                total = response.headers.get("Content-Length")
                size = int(total) if total and total.isdigit() else None
                received = 0
                with tqdm(
                    total=size, unit="B", unit_scale=True, desc=dest.name, leave=False,
                    disable=None if progress else True,
                ) as bar:  # fmt: skip
                    for chunk in iter(lambda: response.read(_CHUNK), b""):
                        out.write(chunk)
                        md5_digest.update(chunk)
                        sha_digest.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
                if size is not None and received != size:
                    raise TransferFailed(url, f"it broke off after {received} of {size} bytes")
            _check(url, md5, md5_digest.hexdigest(), sha256_prefix, sha_digest.hexdigest())
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        raise TransferFailed(url, _reason(err)) from None
    return dest


def _check(url: str, md5: str | None, got_md5: str, prefix: str | None, got_sha256: str) -> None:
    if md5 is not None and got_md5 != md5.lower():
        raise IntegrityError(f"{url} arrived with md5 {got_md5}, expected {md5}; nothing was kept")
    if prefix is not None and not got_sha256.startswith(prefix.lower()):
        raise IntegrityError(
            f"{url} arrived with sha256 {got_sha256[:16]}..., expected one starting {prefix}; "
            "nothing was kept"
        )


def _reason(err: BaseException) -> str:
    """The short cause of a failed transfer (urllib nests it)."""
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, http.client.IncompleteRead):
        return f"the connection closed after {len(err.partial)} bytes"
    cause = getattr(err, "reason", None) or err
    if isinstance(cause, socket.timeout | TimeoutError):
        return "no answer within the timeout"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return str(cause) or type(cause).__name__


def mirror_url(mirror: str | None, default: str, file_name: str) -> str:
    """`mirror/<file_name>` when a mirror is set, else `default`."""
    if not mirror:
        return default
    return mirror.rstrip("/") + "/" + file_name


def env_mirror(variable: str) -> str | None:
    """The mirror URL an environment variable names, or None."""
    value = os.environ.get(variable, "").strip()
    return value or None
