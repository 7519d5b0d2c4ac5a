import itertools
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_server():
    from tests.harness.postgres import PostgresServer

    server = PostgresServer({"max_replication_slots": "64"}).init().start()  # one origin per pipeline and node
    yield server
    server.destroy()


@pytest.fixture
def pg_databases(pg_server):
    """A fresh pair of databases (county, city) for one test."""
    n = next(_counter)
    return pg_server.create_database(f"county_{os.getpid()}_{n}"), pg_server.create_database(f"city_{os.getpid()}_{n}")


@pytest.fixture(scope="session")
def pg_logical_server():
    """A server with wal_level=logical, for log-based capture."""
    from tests.harness.postgres import PostgresServer

    server = PostgresServer({"wal_level": "logical", "max_replication_slots": "20", "max_wal_senders": "20",
                             "logical_decoding_work_mem": "1MB"}).init().start()
    yield server
    server.destroy()


@pytest.fixture
def pg_logical_databases(pg_logical_server, pg_server):
    """A source on the logical server and a target on the ordinary one."""
    n = next(_counter)
    return (pg_logical_server.create_database(f"lsrc_{os.getpid()}_{n}"),
            pg_server.create_database(f"ldst_{os.getpid()}_{n}"))


@pytest.fixture(scope="session")
def maria_server():
    """A MariaDB server with binlog on (ROW, full image, full metadata), for trigger and binlog capture."""
    from tests.harness.mariadb import MariaDBServer

    server = MariaDBServer().init().start()
    yield server
    server.destroy()


@pytest.fixture
def maria_databases(maria_server):
    """A fresh pair of MariaDB databases (county, city) for one test."""
    n = next(_counter)
    return (maria_server.create_database(f"county_{os.getpid()}_{n}"),
            maria_server.create_database(f"city_{os.getpid()}_{n}"))


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    """A Kafka-compatible broker (tansu, memory storage) on a free port."""
    from tests.harness.kafka import KafkaBroker

    broker = KafkaBroker(log=tmp_path_factory.mktemp("kafka") / "broker.log").start()
    yield broker
    broker.stop()
