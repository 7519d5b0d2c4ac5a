"""http: the sender POSTs each batch to the receiving node, which stores it in its inbox before answering.

Every request is signed per link: HMAC-SHA256 with the link's key over the
method, path, a timestamp, the sender, the batch id, its sequence and event
count, and the SHA-256 of the body. The receiver refuses an unknown sender, a
bad signature or a timestamp outside ``max_clock_skew`` (a replayed request
inside the window is a repeated batch id, which the inbox ignores), and checks
that the body decodes as a batch before it stores it. With ``tls_cert`` and
``tls_key`` the endpoint speaks HTTPS.

Mutual TLS: with ``tls_client_ca`` the endpoint verifies every client
certificate a sender presents against that CA (a certificate it did not sign
fails the handshake, which is logged), and a verified certificate must name
the sending node (subject CN or a DNS name) or the request is refused (403).
A sender whose link has no ``key``, or ``client_cert: true``, must present
one (401 otherwise); a link with a key is also signed and checked as above, so
a link uses the HMAC signature, the certificate, or both. The sending end
presents the link's ``tls_cert``/``tls_key`` and verifies the receiver against
``tls_ca``; a TLS refusal either way stops the link with the reason.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import socket
import ssl
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from engine.batchcodec import CorruptBatch, batch_lines
from engine.config import Config
from engine.errors import TerminalError, TiersyncError, TransientError
from engine.exchange import OutgoingBatch, TraceRow
from engine.transport import Transport

log = logging.getLogger(__name__)

BATCH_PATH = "/tiersync/batch"
TRACE_PATH = "/tiersync/trace"
HEADERS = ("X-Tiersync-Node", "X-Tiersync-Batch", "X-Tiersync-Seq", "X-Tiersync-Events", "X-Tiersync-Time")


def signature(key: str, method: str, path: str, fields: list[str], body: bytes) -> str:
    message = "\n".join([method, path, *fields, hashlib.sha256(body).hexdigest()]).encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


class HttpTransport(Transport):
    """The sending end: one signed POST per batch, retried by the link sender until the receiver stored it."""

    _conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:  # kept open between requests (HTTP/1.1 keep-alive)
            parts = urlsplit(self.link.url)
            if parts.scheme == "https":
                self._conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=self.link.timeout,
                                                         context=self._tls())
            else:
                self._conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self.link.timeout)
        return self._conn

    def _tls(self) -> ssl.SSLContext:
        """Verify the receiver against the link's ``tls_ca`` (or the system's CAs); present its client cert."""
        try:
            context = ssl.create_default_context(cafile=self.link.tls_ca)
            if self.link.tls_cert:
                context.load_cert_chain(self.link.tls_cert, self.link.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise TerminalError(f"link {self.link_name}: cannot load tls_ca/tls_cert/tls_key: {exc}") from None
        return context

    def _request(self, method: str, path: str, fields: dict[str, str], body: bytes = b"") -> dict:
        fields = {**fields, "X-Tiersync-Node": self.node, "X-Tiersync-Time": f"{time.time():.3f}"}
        ordered = [fields.get(h, "") for h in HEADERS]
        target = urlsplit(self.link.url).path.rstrip("/") + path
        headers = {**fields, "Content-Type": "application/octet-stream"}
        if self.link.key:
            key = self.link.key.get_secret_value()
            headers["X-Tiersync-Signature"] = signature(key, method, urlsplit(target).path, ordered, body)
        try:
            conn = self._connection()
            conn.request(method, target, body=body if method == "POST" else None, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except ssl.SSLError as exc:
            self.close()
            raise _tls_failure(self.link.url, exc) from None
        except (http.client.HTTPException, OSError) as exc:
            self.close()
            raise TransientError(f"{self.link.url}: {type(exc).__name__}: {exc}") from None
        if response.status >= 500 or response.status == 429:
            raise TransientError(f"{self.link.url}: HTTP {response.status}: {data.decode('utf-8', 'replace')[:500]}")
        if response.status != 200:
            self.close()
            raise TerminalError(f"{self.link.url} refused the request (HTTP {response.status}): "
                                f"{data.decode('utf-8', 'replace')[:500]}")
        return json.loads(data or b"{}")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def send(self, batch: OutgoingBatch) -> bool:
        answer = self._request("POST", BATCH_PATH, {"X-Tiersync-Batch": batch.batch_id,
                                                    "X-Tiersync-Seq": str(batch.seq),
                                                    "X-Tiersync-Events": str(batch.events)}, batch.payload)
        return bool(answer.get("stored"))

    def trace(self, batch_ids: list[str]) -> list[TraceRow]:
        ids = ",".join(batch_ids)
        answer = self._request("GET", f"{TRACE_PATH}?ids={urllib.parse.quote(ids)}", {"X-Tiersync-Batch": ids})
        return [TraceRow(*row) for row in answer.get("rows", [])]

    def describe(self) -> str:
        return f"http {self.link.url}"


def _tls_failure(url: str, exc: ssl.SSLError) -> TiersyncError:
    """A TLS failure on the sending side: refusals of a certificate stop the link, anything else is retried."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TerminalError(f"{url}: the receiver's certificate is not trusted (check the link's tls_ca): "
                             f"{exc.verify_message or exc}")
    if "ALERT" in (exc.reason or ""):  # the receiver's answer to our certificate (or to its absence)
        return TerminalError(f"{url}: the receiver refused our TLS client certificate ({exc.reason}): check the "
                             f"link's tls_cert/tls_key and the receiver's tls_client_ca")
    return TransientError(f"{url}: TLS: {exc}")


def certificate_names(cert: dict | None) -> set[str]:
    """The subject common names and DNS names of a verified peer certificate (``getpeercert()``)."""
    if not cert:
        return set()
    names = {value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"}
    return names | {value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"}


class _Inbox:
    """What the request handlers share: the node's config and one exchange-database connection."""

    def __init__(self, config: Config):
        from engine.network import exchange_store

        self.config = config
        self.node = config.node.id
        http_links = {name: link for name, link in config.exchange.links.items() if link.transport == "http"}
        self.keys = {name: link.key.get_secret_value() for name, link in http_links.items() if link.key}
        self.needs_cert = {name for name, link in http_links.items()
                           if (link.client_cert if link.client_cert is not None else not link.key)}
        self.senders = set(http_links)
        self.skew = config.exchange.max_clock_skew
        self.lock = threading.Lock()
        self._connect = lambda: exchange_store(config)
        self.store = None

    def with_store(self, work):
        with self.lock:
            try:
                if self.store is None:
                    self.store = self._connect()
                return work(self.store)
            except TiersyncError:
                if self.store is not None:
                    self.store.close()
                self.store = None
                raise


class _Handler(BaseHTTPRequestHandler):
    server_version = "tiersync"
    protocol_version = "HTTP/1.1"  # keep-alive: a sender's connection serves many batches
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall
    inbox: _Inbox

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        log.debug("http %s: " + format, self.address_string(), *args)

    def _answer(self, code: int, doc: dict) -> None:
        body = json.dumps(doc, ensure_ascii=False).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _refuse(self, code: int, why: str) -> None:
        log.warning("http: refused %s %s from %s: %s", self.command, self.path, self.address_string(), why)
        self._answer(code, {"error": why})

    def _authenticated(self, body: bytes) -> str | None:
        """The sending node, when the request is signed with its link's key and recent; else refuse."""
        sender = self.headers.get("X-Tiersync-Node", "")
        if sender not in self.inbox.senders:
            self._refuse(403, f"unknown sender {sender!r}: no http link for it")
            return None
        cert = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        if cert:  # verified against tls_client_ca during the handshake
            names = certificate_names(cert)
            if sender not in names:
                self._refuse(403, f"the client certificate is for {', '.join(sorted(names))}, not {sender!r}")
                return None
        elif sender in self.inbox.needs_cert:
            self._refuse(401, f"link {sender!r} needs a client certificate signed by this node's tls_client_ca")
            return None
        key = self.inbox.keys.get(sender)
        if key is None:  # authenticated by its certificate alone
            return sender
        try:
            sent_at = float(self.headers.get("X-Tiersync-Time", ""))
        except ValueError:
            self._refuse(401, "missing or malformed X-Tiersync-Time")
            return None
        if abs(time.time() - sent_at) > self.inbox.skew:
            self._refuse(401, f"request time is more than {self.inbox.skew:.0f}s away from ours "
                              f"(a replayed request, or clocks out of step)")
            return None
        fields = [self.headers.get(h, "") for h in HEADERS]
        expected = signature(key, self.command, urlsplit(self.path).path, fields, body)
        if not hmac.compare_digest(expected, self.headers.get("X-Tiersync-Signature", "")):
            self._refuse(401, "bad signature: the link keys differ, or the request was altered")
            return None
        return sender

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))  # read even when refused: keep-alive
        if urlsplit(self.path).path != BATCH_PATH:
            self._refuse(404, "not found")
            return
        sender = self._authenticated(body)
        if sender is None:
            return
        batch_id = self.headers.get("X-Tiersync-Batch", "")
        try:
            seq, events = int(self.headers["X-Tiersync-Seq"]), int(self.headers["X-Tiersync-Events"])
        except (KeyError, ValueError):
            self._refuse(400, "missing or malformed X-Tiersync-Seq / X-Tiersync-Events")
            return
        if batch_id != f"{sender}:{self.inbox.node}:{seq}":
            self._refuse(400, f"batch id {batch_id!r} does not match sender, receiver and sequence")
            return
        try:  # whole and of the announced size (the signature already vouches for the sender)
            if len(batch_lines(body)) != events:
                raise CorruptBatch(f"the batch holds a different number of events than the {events} announced")
        except CorruptBatch as exc:
            self._refuse(400, f"batch {batch_id}: {exc}")
            return
        try:
            stored = self.inbox.with_store(lambda s: s.receive(sender, seq, batch_id, body, events, self.inbox.node))
        except TiersyncError as exc:
            self._answer(503, {"error": f"could not store the batch: {exc}"})
            return
        self._answer(200, {"stored": stored, "batch": batch_id})

    def do_GET(self) -> None:  # noqa: N802
        parts = urlsplit(self.path)
        if parts.path != TRACE_PATH or self._authenticated(b"") is None:
            if parts.path != TRACE_PATH:
                self._refuse(404, "not found")
            return
        ids = [i for i in parse_qs(parts.query).get("ids", [""])[0].split(",") if i]
        if ",".join(ids) != self.headers.get("X-Tiersync-Batch", ""):
            self._refuse(400, "ids do not match the signed X-Tiersync-Batch")
            return
        try:
            rows = self.inbox.with_store(lambda s: s.trace(ids))
        except TiersyncError as exc:
            self._answer(503, {"error": str(exc)})
            return
        self._answer(200, {"rows": [[r.batch_id, r.node, r.status, r.at, r.detail] for r in rows]})


HANDSHAKE_SECONDS = 10.0
DRAIN_SECONDS = 2.0  # longest a refused client's leftover bytes are read before closing


class _Server(ThreadingHTTPServer):
    """Accepts plain connections; each request thread does its own TLS handshake (a slow or refused one
    holds up no other sender) and logs why a handshake failed."""

    daemon_threads = True
    tls: ssl.SSLContext | None = None

    def finish_request(self, request, client_address) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(HANDSHAKE_SECONDS)
        secure = self.tls.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        try:
            secure.do_handshake()
            secure.settimeout(None)
        except (ssl.SSLError, OSError) as exc:
            log.warning("http: refused a TLS connection from %s: %s", client_address[0],
                        getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or exc)
            _close_gently(secure)
            return
        try:
            super().finish_request(secure, client_address)
        finally:
            secure.close()


def _close_gently(secure: ssl.SSLSocket) -> None:
    """Close after a failed handshake so the alert reaches the client: what it sent meanwhile is read and
    dropped first (closing with unread data would reset the connection and lose the alert)."""
    plain = socket.socket(fileno=secure.detach())
    deadline = time.monotonic() + DRAIN_SECONDS
    try:
        plain.shutdown(socket.SHUT_WR)
        plain.settimeout(DRAIN_SECONDS)
        while plain.recv(65536) and time.monotonic() < deadline:
            pass
    except OSError:
        pass
    finally:
        plain.close()


def _server_tls(exchange) -> ssl.SSLContext | None:
    """HTTPS with the endpoint's certificate; with ``tls_client_ca``, client certificates verified against it
    (optional at the handshake: links decide whether one is required)."""
    if not exchange.tls_cert:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(exchange.tls_cert, exchange.tls_key)
        if exchange.tls_client_ca:
            context.load_verify_locations(cafile=exchange.tls_client_ca)
            context.verify_mode = ssl.CERT_OPTIONAL
    except (OSError, ssl.SSLError) as exc:
        raise TerminalError(f"http: cannot load tls_cert/tls_key/tls_client_ca: {exc}") from None
    return context


def make_server(config: Config) -> ThreadingHTTPServer:
    exchange = config.exchange
    host, _, port = exchange.listen.rpartition(":")
    handler = type("InboxHandler", (_Handler,), {"inbox": _Inbox(config)})
    server = _Server((host, int(port)), handler)
    server.tls = _server_tls(exchange)
    return server


def serve(config: Config, stop: threading.Event) -> None:
    """Receive batches until ``stop`` is set."""
    server = make_server(config)
    log.info("http: receiving batches on %s", config.exchange.listen)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    try:
        stop.wait()
    finally:
        server.shutdown()
        server.server_close()
