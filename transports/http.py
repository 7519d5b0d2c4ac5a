"""http: the sender POSTs each batch to the receiving node, which stores it in its inbox before answering.

Every request is signed per link: HMAC-SHA256 with the link's key over the
method, path, a timestamp, the sender, the batch id, its sequence and event
count, and the SHA-256 of the body. The receiver refuses an unknown sender, a
bad signature or a timestamp outside ``max_clock_skew`` (a replayed request
inside the window is a repeated batch id, which the inbox ignores), and checks
that the body decodes as a batch before it stores it. With ``tls_cert`` and
``tls_key`` the endpoint speaks HTTPS.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
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
            kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
            self._conn = kind(parts.hostname, parts.port, timeout=self.link.timeout)
        return self._conn

    def _request(self, method: str, path: str, fields: dict[str, str], body: bytes = b"") -> dict:
        fields = {**fields, "X-Tiersync-Node": self.node, "X-Tiersync-Time": f"{time.time():.3f}"}
        ordered = [fields.get(h, "") for h in HEADERS]
        target = urlsplit(self.link.url).path.rstrip("/") + path
        sig = signature(self.link.key.get_secret_value(), method, urlsplit(target).path, ordered, body)
        headers = {**fields, "X-Tiersync-Signature": sig, "Content-Type": "application/octet-stream"}
        try:
            conn = self._connection()
            conn.request(method, target, body=body if method == "POST" else None, headers=headers)
            response = conn.getresponse()
            data = response.read()
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


class _Inbox:
    """What the request handlers share: the node's config and one exchange-database connection."""

    def __init__(self, config: Config):
        from engine.network import exchange_store

        self.config = config
        self.node = config.node.id
        self.keys = {name: link.key.get_secret_value() for name, link in config.exchange.links.items()
                     if link.transport == "http" and link.key}
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
        key = self.inbox.keys.get(sender)
        if key is None:
            self._refuse(403, f"unknown sender {sender!r}: no http link with a key for it")
            return None
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


def make_server(config: Config) -> ThreadingHTTPServer:
    exchange = config.exchange
    host, _, port = exchange.listen.rpartition(":")
    handler = type("InboxHandler", (_Handler,), {"inbox": _Inbox(config)})
    server = ThreadingHTTPServer((host, int(port)), handler)
    server.daemon_threads = True
    if exchange.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(exchange.tls_cert, exchange.tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
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
