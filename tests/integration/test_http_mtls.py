"""Mutual TLS on http links: certificates made here (a CA of the network, a stranger's CA), clear refusals.

The city's endpoint requires a client certificate signed by the network's CA from county-110101 (its
link has no key), takes HMAC alone from county-110102 (a key, no certificate required), requires both
from county-110103 (a key and ``client_cert: true``), and the county's sender verifies the city's
certificate against the CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from engine.batchcodec import encode_batch
from engine.config import ConfigError, load_config
from engine.errors import TerminalError, TransientError
from engine.event import ChangeEvent, Op, TableId
from engine.exchange import OutgoingBatch
from engine.registry import connector_for
from tests.exchange_nodes import county_sender, free_port, inbox_in, node_file, q, sqlite_db
from tests.helpers import cli, run_once
from transports.http import HttpTransport, serve

KEY = "county-b/city key"
ROUTE = {"qy_jbxx": {"key": ["qyid"], "up": True}}


class Pki:
    """A CA that issues certificates, written as PEM files under ``folder``."""

    def __init__(self, folder: Path, name: str):
        self.folder, self.key = folder, ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.name = subject
        self.cert = self._build(subject, self.key.public_key(), ca=True).sign(self.key, hashes.SHA256())
        self.ca_file = self._write(f"{name}-ca.pem", self.cert.public_bytes(serialization.Encoding.PEM))

    def _build(self, subject: x509.Name, public_key, ca: bool = False, names: list | None = None):
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(self.name if not ca else subject)
                   .public_key(public_key).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder

    def _write(self, name: str, data: bytes) -> str:
        path = self.folder / name
        path.write_bytes(data)
        return str(path)

    def issue(self, common_name: str, names: list | None = None) -> tuple[str, str]:
        """A certificate for ``common_name`` and its key: (cert file, key file)."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = self._build(subject, key.public_key(), names=names).sign(self.key, hashes.SHA256())
        tag = f"{self.name.rfc4514_string()}-{common_name}".replace("=", "_")
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return (self._write(f"{tag}.pem", cert.public_bytes(serialization.Encoding.PEM)),
                self._write(f"{tag}.key", key_pem))


@pytest.fixture
def network(tmp_path):
    ca, stranger = Pki(tmp_path, "network"), Pki(tmp_path, "stranger")
    server_cert, server_key = ca.issue("city-110100", [x509.DNSName("localhost"),
                                                      x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    county_cert, county_key = ca.issue("county-110101")
    county = county_sender(tmp_path, {"transport": "http", "url": url, "tls_ca": ca.ca_file, "tls_cert": county_cert,
                                      "tls_key": county_key, "timeout": 5})
    city = node_file(
        tmp_path / "city.yaml", {"id": "city-110100", "tier": "city", "region": "110100"},
        {"biz": sqlite_db(tmp_path / "city.db", "CREATE TABLE qy_jbxx (qyid INTEGER PRIMARY KEY, qymc TEXT)"),
         "x": f"sqlite:///{tmp_path}/city-x.db"},
        {"database": "x", "poll_interval": 0.05, "tables": ROUTE, "listen": f"127.0.0.1:{port}",
         "tls_cert": server_cert, "tls_key": server_key, "tls_client_ca": ca.ca_file,
         "links": {"county-110101": {"role": "child", "region": "110101", "transport": "http"},
                   "county-110102": {"role": "child", "region": "110102", "transport": "http", "key": KEY},
                   "county-110103": {"role": "child", "region": "110103", "transport": "http", "key": KEY,
                                     "client_cert": True}}},
        [inbox_in("x", "biz", "qy_jbxx", "qy_jbxx")])
    cli("triggers", "install", "--config", str(county), "--pipeline", "enterprise-out")
    store = connector_for(f"sqlite:///{tmp_path}/city-x.db").exchange_store()
    store.ensure()  # as `tiersync run` does before it listens
    store.close()
    stop = threading.Event()
    receiver = threading.Thread(target=serve, args=(load_config(city), stop), daemon=True)
    receiver.start()
    yield {"county": county, "city": city, "url": url, "ca": ca, "stranger": stranger, "tmp": tmp_path}
    stop.set()
    receiver.join(10)


def batch(sender: str, seq: int = 1) -> OutgoingBatch:
    payload = encode_batch([ChangeEvent(Op.CREATE, TableId(None, "qy_jbxx"), (seq,), None,
                                        {"qyid": seq, "qymc": "甲"}, 1, origin=sender, path=(sender,))])
    return OutgoingBatch("city-110100", seq, f"{sender}:city-110100:{seq}", payload, 1)


def sender(net, node: str, **link) -> HttpTransport:
    """The sending end of ``node``'s link to the city with the given settings, as its node file would make it."""
    config = load_config(net["county"])
    settings = {"role": "parent", "transport": "http", "url": net["url"], "timeout": 5, **link}
    config = config.model_copy(update={"exchange": config.exchange.model_copy(update={
        "links": {"city-110100": config.exchange.links["city-110100"].model_validate(settings)}})})
    return HttpTransport(node, "city-110100", config.exchange.links["city-110100"], config)


def send(transport: HttpTransport, item: OutgoingBatch) -> bool:
    """Send once the endpoint listens (it starts in a thread of its own)."""
    for _ in range(100):
        try:
            return transport.send(item)
        except TransientError as exc:
            if "Connection refused" not in str(exc):
                raise
            time.sleep(0.1)
        finally:
            transport.close()
    raise AssertionError("the endpoint never listened")


def refusal(transport: HttpTransport, item: OutgoingBatch) -> str:
    with pytest.raises(TerminalError) as refused:
        send(transport, item)
    return str(refused.value)


def test_a_county_with_a_certificate_of_the_network_delivers_end_to_end(network):
    with sqlite3.connect(network["tmp"] / "county.db") as conn:
        conn.executemany("INSERT INTO enterprise VALUES (?, ?)", [(i, f"企业{i}") for i in range(1, 31)])
    run_once(network["county"])  # capture, queue, deliver over mutual TLS
    assert q(network["tmp"] / "county-x.db", "SELECT count(*) FROM tiersync_outbox WHERE acked_at IS NULL") == [(0,)]
    run_once(network["city"])
    assert q(network["tmp"] / "city.db", "SELECT qyid, qymc FROM qy_jbxx ORDER BY 1") == [
        (i, f"企业{i}") for i in range(1, 31)]


def test_refusals_without_a_certificate_with_a_strangers_and_with_another_nodes(network, caplog):
    ca, stranger = network["ca"], network["stranger"]
    words = refusal(sender(network, "county-110101", tls_ca=ca.ca_file, key="some key"), batch("county-110101"))
    assert "HTTP 401" in words and "needs a client certificate signed by this node's tls_client_ca" in words
    cert, key = stranger.issue("county-110101")
    words = refusal(sender(network, "county-110101", tls_ca=ca.ca_file, tls_cert=cert, tls_key=key),
                    batch("county-110101"))
    assert "refused our TLS client certificate" in words
    for _ in range(50):  # the endpoint logs it in its request thread, maybe after the sender heard
        if any("refused a TLS connection" in r.getMessage() for r in caplog.records):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the endpoint did not log the refused handshake")
    cert, key = ca.issue("county-110102")  # a good certificate, presented as another node
    words = refusal(sender(network, "county-110101", tls_ca=ca.ca_file, tls_cert=cert, tls_key=key),
                    batch("county-110101"))
    assert "HTTP 403" in words and "the client certificate is for county-110102, not 'county-110101'" in words
    cert, key = ca.issue("county-110101")
    words = refusal(sender(network, "county-110101", tls_ca=stranger.ca_file, tls_cert=cert, tls_key=key),
                    batch("county-110101"))
    assert "the receiver's certificate is not trusted" in words  # the sender checks the receiver too
    assert q(network["tmp"] / "city-x.db", "SELECT count(*) FROM tiersync_inbox") == [(0,)]
    assert send(sender(network, "county-110101", tls_ca=ca.ca_file, tls_cert=cert, tls_key=key),
                batch("county-110101"))


def test_hmac_alone_or_with_a_certificate_on_links_that_do_not_require_one(network):
    ca = network["ca"]
    assert send(sender(network, "county-110102", tls_ca=ca.ca_file, key=KEY), batch("county-110102"))
    words = refusal(sender(network, "county-110102", tls_ca=ca.ca_file, key="wrong"), batch("county-110102", 2))
    assert "HTTP 401" in words and "bad signature" in words
    cert, key = ca.issue("county-110102")  # both: the certificate must name the sender and the signature hold
    assert send(sender(network, "county-110102", tls_ca=ca.ca_file, key=KEY, tls_cert=cert, tls_key=key),
                batch("county-110102", 2))
    assert q(network["tmp"] / "city-x.db", "SELECT sender, seq FROM tiersync_inbox ORDER BY seq") == [
        ("county-110102", 1), ("county-110102", 2)]


def test_a_link_that_requires_both(network):
    ca = network["ca"]
    words = refusal(sender(network, "county-110103", tls_ca=ca.ca_file, key=KEY), batch("county-110103"))
    assert "HTTP 401" in words and "needs a client certificate" in words
    cert, key = ca.issue("county-110103")
    words = refusal(sender(network, "county-110103", tls_ca=ca.ca_file, key="wrong", tls_cert=cert, tls_key=key),
                    batch("county-110103"))
    assert "HTTP 401" in words and "bad signature" in words
    assert send(sender(network, "county-110103", tls_ca=ca.ca_file, key=KEY, tls_cert=cert, tls_key=key),
                batch("county-110103"))
    words = refusal(sender(network, "county-110103", tls_ca=ca.ca_file, key=KEY, tls_cert=cert,
                           tls_key=str(network["tmp"] / "missing.key")), batch("county-110103", 2))
    assert "cannot load tls_ca/tls_cert/tls_key" in words


def test_configurations_that_cannot_authenticate_are_refused(network):
    city = network["city"]
    text = city.read_text(encoding="utf-8")
    without_ca = city.with_name("no-ca.yaml")
    without_ca.write_text(text.replace("tls_client_ca:", "unused_ca:").replace("unused_ca:", "#"), encoding="utf-8")
    with pytest.raises(ConfigError) as problems:
        load_config(without_ca)
    assert "receiving from county-110101 needs key: or a client certificate: set exchange.tls_client_ca" in str(
        problems.value)
    county = network["county"]
    plain = county.with_name("plain.yaml")
    plain.write_text(county.read_text(encoding="utf-8").replace("https://", "http://"), encoding="utf-8")
    with pytest.raises(ConfigError) as problems:
        load_config(plain)
    assert "tls_ca/tls_cert need an https:// url" in str(problems.value)


def test_a_stalled_or_garbage_connection_holds_up_no_other_sender(network):
    """Handshakes run in the request threads: a client that never speaks TLS does not block the endpoint."""
    import socket

    host, port = "127.0.0.1", int(network["url"].rsplit(":", 1)[1])
    ca = network["ca"]
    cert, key = ca.issue("county-110101")
    good = sender(network, "county-110101", tls_ca=ca.ca_file, tls_cert=cert, tls_key=key)
    assert send(good, batch("county-110101"))  # listening
    stalled, garbage = socket.create_connection((host, port)), socket.create_connection((host, port))
    try:
        garbage.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 4)  # plain HTTP to the TLS endpoint
        assert send(good, batch("county-110101", 2))  # while the stalled one still waits for its handshake
    finally:
        stalled.close()
        garbage.close()
    assert q(network["tmp"] / "city-x.db", "SELECT seq FROM tiersync_inbox ORDER BY seq") == [(1,), (2,)]
