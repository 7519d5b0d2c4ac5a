"""A kafka link's messages: made here or in the helper process, the same; the helper ends with its node."""

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from engine.batchcodec import encode_batch
from engine.debezium import SchemaRegistry
from engine.event import ChangeEvent, Op, TableId
from transports.kafka_avro import LinkReader
from transports.kafka_messages import MessageMaker, background_maker

ROOT = Path(__file__).resolve().parents[2]


def events(first: int, count: int, **extra) -> list[ChangeEvent]:
    at = datetime(2026, 11, 21, 8, 30, tzinfo=timezone.utc)
    return [ChangeEvent(Op.CREATE, TableId(None, "qy_jbxx" if i % 3 else "qy_tzxx"), (i, "A"), None,
                        {"qyid": i, "lx": "A", "企业名称": f"企业{i}", "zczb": Decimal(i) / 4, "gxsj": at, **extra},
                        i, origin="county-1", path=("county-1",), captured_at=at, source_node="county-1")
            for i in range(first, first + count)]


@pytest.mark.parametrize("fmt", ["json", "avro"])
def test_the_helper_process_makes_the_same_messages_as_this_one(fmt):
    keys = {"qy_jbxx": ["qyid", "lx"]}  # qy_tzxx has no route: its key columns are numbered
    here, helper = MessageMaker("county-1", "city-1", fmt, keys), background_maker("county-1", "city-1", fmt, keys)
    try:
        payloads = [encode_batch(events(1, 50)), encode_batch(events(51, 50, 联系电话="010"))]  # a new column
        made_here = [here.make(p) for p in payloads]
        made_there = [helper.result(f, 30) for f in [helper.submit(p) for p in payloads]]
    finally:
        helper.close()
    for a, b in zip(made_here, made_there):
        assert (a.topics, a.keys, a.values, a.new_schemas) == (b.topics, b.keys, b.values, b.new_schemas)
    first = made_here[0]
    assert first.topics[:3] == ["county-1.city-1.qy_jbxx", "county-1.city-1.qy_jbxx", "county-1.city-1.qy_tzxx"]
    assert json.loads(first.keys[0]) == {"qyid": 1, "lx": "A"} and json.loads(first.keys[2]) == {"0": 3, "1": "A"}
    if fmt == "avro":  # each schema comes back once, with the batch that first needs it; messages read back
        assert len(first.new_schemas) == 2 and len(made_here[1].new_schemas) == 2
        registry = SchemaRegistry()
        for sid, schema in first.new_schemas + made_here[1].new_schemas:
            registry.add(sid, schema)
        reader = LinkReader(registry)
        after = json.loads(reader.to_json(made_here[1].values[-1]))["after"]
        assert after["联系电话"] == "010" and after["企业名称"] == "企业100"
    else:
        assert first.new_schemas == [] and json.loads(first.values[0])["after"]["企业名称"] == "企业1"


def test_the_helper_process_ends_when_its_node_is_killed(tmp_path):
    script = ("import sys, time, multiprocessing\n"
              "from transports.kafka_messages import background_maker\n"
              "from engine.batchcodec import encode_batch\n"
              "if __name__ == '__main__':\n"
              "    maker = background_maker('n', 'l', 'json', {})\n"
              "    maker.result(maker.submit(encode_batch([])), 60)\n"
              "    print(*[c.pid for c in multiprocessing.active_children()], flush=True)\n"
              "    time.sleep(600)\n")
    (tmp_path / "node.py").write_text(script)
    node = subprocess.Popen([sys.executable, str(tmp_path / "node.py")], cwd=ROOT, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    helper = int(node.stdout.readline())
    os.kill(node.pid, signal.SIGKILL)
    node.wait()
    deadline = time.monotonic() + 15
    while Path(f"/proc/{helper}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = Path(f"/proc/{helper}").exists()
    if alive:
        os.kill(helper, signal.SIGKILL)
    assert not alive, "the helper process outlived its node"


def _sleeper(seconds: float):
    return lambda item: time.sleep(seconds)


def test_a_helper_that_does_not_answer_in_time_fails_with_a_transient_error():
    from engine.errors import TransientError
    from transports.kafka_messages import Helper

    helper = Helper("sleeping", _sleeper, 3)
    try:
        with pytest.raises(TransientError, match="the process sleeping did not answer within 0.5 s"):
            helper.result(helper.submit(None), 0.5)
    finally:
        helper.close()


def test_the_receiving_end_reads_the_batch_header_and_the_four_of_earlier_versions(caplog):
    from collections import namedtuple

    from transports.kafka import KafkaReceiver

    record = namedtuple("Record", "headers offset")
    receiver = KafkaReceiver.__new__(KafkaReceiver)  # only the header reading
    receiver.link_name = "city-1"
    now = record([("tiersync", b"17 3 120 b-7 with spaces")], 5)
    before = record([("tiersync-batch", b"b-7 with spaces"), ("tiersync-seq", b"17"), ("tiersync-count", b"120"),
                     ("tiersync-index", b"3")], 5)
    assert receiver._headers(now, "t-0") == receiver._headers(before, "t-0") == (17, 3, 120, "b-7 with spaces")
    for foreign in ([], [("tiersync", b"17 3")], [("tiersync", b"\xff")], [("tiersync-seq", b"17")]):
        assert receiver._headers(record(foreign, 9), "t-0") is None
    assert "offset 9 has no tiersync batch headers" in caplog.text
