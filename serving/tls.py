"""TLS for the server's ports (gRPC and REST) and for the project's client.

`TlsOptions` holds the server's certificate chain and key, and optionally the CA whose
certificates clients must present (mutual TLS). The same files give gRPC's credentials (`pem`,
which the server assembly hands to grpc) and the REST port's `ssl.SSLContext`, so both ports ask
the same of a client. PEM files are read once,
at start-up; a missing or non-PEM file is a one-line start-up error naming the option.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from cnnzoo.errors import InvalidInput, NotFound

__all__ = ["TlsOptions", "read_pem"]


@dataclass(frozen=True)
class TlsOptions:
    """TLS for the server's ports (PEM files).

    Args:
        cert: the server's certificate chain.
        key: its private key.
        client_ca: CA certificates that sign the clients' certificates; when set, every client
            must present one (mutual TLS).
    """

    cert: Path
    key: Path
    client_ca: Path | None = None

    def pem(self) -> tuple[bytes, bytes, bytes | None]:
        """The certificate chain, its key and the client CA (None: clients need no
        certificate), each read and checked to be PEM (what gRPC's credentials are made of).

        Raises:
            NotFound: a file is missing.
            InvalidInput: a file is not PEM.
        """
        root = read_pem(self.client_ca, "--tls-client-ca") if self.client_ca else None
        key = read_pem(self.key, "--tls-key")
        return read_pem(self.cert, "--tls-cert"), key, root

    def ssl_context(self) -> ssl.SSLContext:
        """The REST port's context: TLS 1.2 or newer, client certificates when `client_ca`.

        Raises:
            NotFound: a file is missing.
            InvalidInput: a file is not PEM, or the key does not belong to the certificate.
        """
        for path, flag in ((self.cert, "--tls-cert"), (self.key, "--tls-key")):
            read_pem(path, flag)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.cert, self.key)
        except ssl.SSLError as err:
            raise InvalidInput(
                f"--tls-cert/--tls-key: {self.cert} and {self.key} do not make a certificate "
                f"and its key: {err.reason or err}"
            ) from None
        if self.client_ca is not None:
            context.load_verify_locations(
                cadata=read_pem(self.client_ca, "--tls-client-ca").decode()
            )
            context.verify_mode = ssl.CERT_REQUIRED
        return context


def read_pem(path: Path, flag: str) -> bytes:
    """The contents of PEM file `path`, named by `flag` in errors."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise NotFound(f"{flag}: {path} does not exist") from None
    except OSError as err:
        raise InvalidInput(f"{flag}: cannot read {path}: {err.strerror}") from None
    if b"-----BEGIN " not in data:
        raise InvalidInput(f"{flag}: {path} is not a PEM file (no -----BEGIN line)")
    return data
