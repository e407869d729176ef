"""TLS: server contexts (built, checked, reloaded on SIGHUP) and the TLS layer.

The layer runs OpenSSL through ``ssl.SSLObject`` over two memory BIOs instead
of ``create_server(ssl=...)``, for three reasons:

- a failed handshake (a plain-TCP client on the TLS port, an untrusted client
  certificate) is seen here and logged; the event loop's own TLS transport
  drops it silently before any protocol hears of it;
- it stacks over :class:`~shardmq.worker.proxy.ProxyLayer`: the PROXY header
  comes before the ClientHello, often in the same segment;
- each connection takes the listener's *current* context, so a reload applies
  to new connections and leaves the established ones alone.

The cost is a few Python calls per received chunk and per flush (OpenSSL does
the record work in C either way); a flush is one ``SSLObject.write`` and one
transport write.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from ..errors import ConfigError
from .layer import Layer

log = logging.getLogger("shardmq.listener")

#: largest plaintext taken from OpenSSL per read call (it returns one record at most)
_READ_SIZE = 256 * 1024

#: short names for the subject attributes, as in RFC 4514 and OpenSSL
_SHORT_NAMES = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}


def build_context(
    certfile: str,
    keyfile: str | None,
    cafile: str | None,
    require_client_cert: bool,
    ciphers: str | None,
    where: str,
) -> ssl.SSLContext:
    """A server context: TLS 1.2 at least, optional client certificates.

    ``where`` prefixes the names in a :class:`ConfigError`
    (``listeners[1].certfile: ...``; empty for the flat settings).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # no client-initiated renegotiation (a cheap DoS lever in TLS 1.2)
    context.options |= ssl.OP_NO_RENEGOTIATION
    if ciphers:
        try:
            context.set_ciphers(ciphers)
        except ssl.SSLError:
            raise ConfigError(where + "ciphers", f"no usable cipher in {ciphers!r}") from None
    try:
        context.load_cert_chain(certfile, keyfile)
    except FileNotFoundError as exc:
        name = "keyfile" if keyfile and exc.filename == keyfile else "certfile"
        raise ConfigError(where + name, "file not found") from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            where + "certfile", f"cannot load the certificate and key: {_reason(exc)}"
        ) from None
    if cafile:
        try:
            context.load_verify_locations(cafile=cafile)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(where + "cafile", f"cannot load: {_reason(exc)}") from None
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    elif require_client_cert:
        raise ConfigError(where + "require_client_cert", "needs a cafile to verify against")
    return context


def _reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return str(exc.strerror)
    return " ".join(str(exc).split())


class ServerContext:
    """A listener's TLS settings and its current ``SSLContext``."""

    def __init__(
        self,
        certfile: str,
        keyfile: str | None,
        cafile: str | None,
        require_client_cert: bool,
        ciphers: str | None,
        where: str,
    ) -> None:
        self._settings = (certfile, keyfile, cafile, require_client_cert, ciphers, where)
        self.context = build_context(*self._settings)

    def reload(self) -> bool:
        """Re-read the files; on error keep the old context, log, return False.

        Connections already established keep the context they were made with.
        """
        try:
            self.context = build_context(*self._settings)
        except ConfigError as exc:
            log.error("TLS reload failed, keeping the previous certificates: %s", exc)
            return False
        return True


def certificate_subject(cert: dict[str, Any]) -> str | None:
    """The subject of a certificate from ``getpeercert()`` as an RFC 4514 string
    (``"CN=alice,O=Example"``: most specific attribute first)."""
    subject = cert.get("subject")
    if not subject:
        return None
    parts = []
    for rdn in reversed(subject):
        parts.append(
            "+".join(f"{_SHORT_NAMES.get(key, key)}={_escape(value)}" for key, value in rdn)
        )
    return ",".join(parts)


def certificate_common_name(cert: dict[str, Any]) -> str | None:
    """The subject's (last) common name, or None."""
    name = None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                name = value
    return name


def _escape(value: str) -> str:
    out = []
    for i, ch in enumerate(value):
        if ch in ',+"\\<>;=' or (ch == "#" and i == 0) or (ch == " " and i in (0, len(value) - 1)):
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


class TlsLayer(Layer):
    """Server-side TLS over the transport below."""

    kind = "TLS connection"

    def __init__(self, upper: asyncio.Protocol, context: ServerContext, timeout: float) -> None:
        super().__init__(upper, timeout)
        self._context = context
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl: ssl.SSLObject | None = None
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._ssl = self._context.context.wrap_bio(self._incoming, self._outgoing, server_side=True)

    def data_received(self, data: bytes) -> None:
        sslobj = self._ssl
        if sslobj is None or self._closed:
            return
        self._incoming.write(data)
        if not self.opened:
            try:
                sslobj.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                return
            except (ssl.SSLError, OSError) as exc:
                self._closed = True
                self._flush()  # the alert tells the client why
                self.refuse(f"TLS handshake failed: {_reason(exc)}")
                return
            self._flush()
            self._opened(sslobj)
            if self._closed or self.is_closing():
                return
        chunks = []
        eof = False
        try:
            while True:
                chunk = sslobj.read(_READ_SIZE)
                if not chunk:
                    eof = True
                    break
                chunks.append(chunk)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            eof = True  # close_notify
        except (ssl.SSLError, OSError) as exc:
            log.info("TLS connection from %s: %s, closing", self.peer_text(), _reason(exc))
            self._closed = True
            self.abort()
            return
        if self._outgoing.pending:
            self._flush()  # TLS 1.3 key updates, session tickets
        if chunks:
            self.upper.data_received(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if eof and not self._closed:
            self.close()

    def _opened(self, sslobj: ssl.SSLObject) -> None:
        cert = sslobj.getpeercert()
        self.extra["ssl_object"] = sslobj
        self.extra["sslcontext"] = sslobj.context
        self.extra["cipher"] = sslobj.cipher()
        self.extra["peercert"] = cert or None
        if cert:
            self.extra["certificate_subject"] = certificate_subject(cert)
            self.extra["certificate_common_name"] = certificate_common_name(cert)
        self.open_upper()

    def _flush(self) -> None:
        if self._outgoing.pending and self.lower is not None:
            self.lower.write(self._outgoing.read())

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed or self._ssl is None:
            return
        try:
            self._ssl.write(data)
        except (ssl.SSLError, OSError) as exc:
            log.info("TLS connection from %s: %s, closing", self.peer_text(), _reason(exc))
            self._closed = True
            self.abort()
            return
        self._flush()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._ssl is not None and self.opened:
                try:
                    self._ssl.unwrap()  # queues close_notify
                except (ssl.SSLError, OSError):
                    pass
                self._flush()
        super().close()

    def abort(self) -> None:
        self._closed = True
        super().abort()

    def is_closing(self) -> bool:
        return self._closed or super().is_closing()
