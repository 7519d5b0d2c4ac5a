"""Binlog positions, GTID states and the server-setting checks (no server needed)."""

from __future__ import annotations

from datetime import time, timedelta

import pytest

from connectors.mysql.binlog_admin import ServerBinlog, lag, purged_problem, setting_problems
from connectors.mysql.binlog_position import BinlogPosition, binlog_file_number
from connectors.mysql.binlog_reader import _clock, _float32, _json
from connectors.mysql.gtid import MariaGtidState, MysqlGtidSet, gtid_state, is_mariadb_state
from engine.position import parse_position

UUID = "3e11fa47-71ca-11e1-9e33-c80aa9429562"


@pytest.mark.parametrize("position", [
    BinlogPosition("0-1-57", "binlog.000003", 2266, 0),
    BinlogPosition("0-1-57,3-9-12", "binlog.000003", 4, 17),
    BinlogPosition("", "mysql-bin.000001", 154, 0),
    BinlogPosition(f"{UUID}:1-57", "binlog.000010", 99, 0),
    BinlogPosition(f"{UUID}:1-5:7-9,0ff1fa47-71ca-11e1-9e33-c80aa9429562:1", "b.000001", 4, 0),
])
def test_round_trip(position):
    assert parse_position(position.serialise()) == position
    assert BinlogPosition.deserialise(position.serialise()) == position


@pytest.mark.parametrize("text", ["binlog:", "binlog:0-1-5", "binlog:0-1-5|binlog.000001|0", "binlog:||0",
                                  "binlog:0-1-x|f.000001:4|0", "binlog:0-1-5|f.000001:4|-1",
                                  "binlog:zzz:1-2|f.000001:4|0"])
def test_malformed_positions_are_refused_clearly(text):
    with pytest.raises(ValueError, match="binlog position"):
        parse_position(text)


def test_a_checkpoint_of_another_kind_is_refused():
    with pytest.raises(ValueError, match="not a binlog position"):
        BinlogPosition.deserialise("pglsn:16/B374D848:0")


def test_file_numbers_order_positions():
    assert binlog_file_number("binlog.000010") == 10
    assert BinlogPosition("", "binlog.000010", 4).file_offset > BinlogPosition("", "binlog.000009", 99999).file_offset


def test_mariadb_state_moves_each_domain():
    state = MariaGtidState("0-1-5,3-2-9")
    state.add("0-1-6")
    state.add("7-1-1")
    assert str(state) == "0-1-6,3-2-9,7-1-1"
    assert state.covers(MariaGtidState("0-1-6,3-2-1"))
    assert not state.covers(MariaGtidState("0-1-7"))
    assert not state.covers(MariaGtidState("5-1-1"))
    assert is_mariadb_state("") and is_mariadb_state("0-1-2,1-1-1")
    assert not is_mariadb_state(f"{UUID}:1-5")


def test_mysql_gtid_set_grows_and_compares():
    executed = MysqlGtidSet(f"{UUID}:1-57")
    executed.add(f"{UUID}:58")
    assert str(executed) == f"{UUID}:1-58"
    assert executed.covers(MysqlGtidSet(f"{UUID}:1-40"))
    assert not MysqlGtidSet(f"{UUID}:1-40").covers(executed)
    assert isinstance(gtid_state(str(executed)), MysqlGtidSet)


def _server(**settings) -> ServerBinlog:
    base = {"log_bin": "ON", "binlog_format": "ROW", "binlog_row_image": "FULL", "binlog_row_metadata": "FULL",
            "version": "10.11.19-MariaDB", "gtid_binlog_pos": "0-1-9", "expire_logs_days": "0"}
    return ServerBinlog(base | settings, mariadb=True, file="binlog.000004", pos=500,
                        files=[("binlog.000003", 1000), ("binlog.000004", 500)])


GRANTS = "GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO `cdc`@`%`"


def test_a_ready_server_has_no_problems():
    assert setting_problems(_server(), GRANTS) == []
    assert setting_problems(_server(), "GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost`") == []


def test_each_missing_setting_has_its_own_message():
    server = _server(log_bin="OFF", binlog_format="MIXED", binlog_row_image="MINIMAL", binlog_row_metadata="MINIMAL",
                     expire_logs_days="0.1")
    problems = setting_problems(server, "GRANT SELECT ON `county`.* TO `cdc`@`%`")
    text = "\n".join(problems)
    assert len(problems) == 7, text
    assert "log_bin = OFF" in text
    assert "binlog_format is MIXED" in text and "SET GLOBAL binlog_format = 'ROW'" in text
    assert "binlog_row_image is MINIMAL" in text
    assert "binlog_row_metadata is MINIMAL" in text and "no column names" in text
    assert "GRANT REPLICATION SLAVE" in text and "GRANT REPLICATION CLIENT" in text
    assert "kept only 2.4 h" in text


def test_an_old_server_without_row_metadata_is_named():
    settings = _server().settings
    del settings["binlog_row_metadata"]
    problems = setting_problems(ServerBinlog(settings, mariadb=True), GRANTS)
    assert problems == ["the server has no binlog_row_metadata setting (MariaDB 10.5+ or MySQL 8.0.14+ needed "
                        "for binlog capture)"]


def test_a_purged_checkpoint_is_reported():
    server = _server()
    assert purged_problem(server, BinlogPosition("0-1-3", "binlog.000003", 200)) == ""
    message = purged_problem(server, BinlogPosition("0-1-1", "binlog.000002", 200))
    assert "binlog.000002" in message and "was purged" in message and "tiersync snapshot" in message
    mysql = ServerBinlog({"gtid_mode": "ON"}, mariadb=False)
    assert "purged" in purged_problem(mysql, BinlogPosition(f"{UUID}:1-10", "b.000001", 4), f"{UUID}:1-20")
    assert purged_problem(mysql, BinlogPosition(f"{UUID}:1-30", "b.000001", 4), f"{UUID}:1-20") == ""


def test_lag_in_bytes_and_transactions():
    behind = lag(_server(), BinlogPosition("0-1-4", "binlog.000003", 400), None)
    assert behind.bytes_behind == 600 + 500
    assert behind.transactions_behind == 5
    assert behind.seconds_behind == 0.0


def test_value_conversions_match_the_trigger_images():
    assert _float32(0.10000000149011612) == 0.1
    assert _float32(1.5) == 1.5
    clock = _clock(3)
    assert clock(timedelta(hours=8, microseconds=250000)) == time(8, 0, 0, 250000)
    assert clock(timedelta(days=-35, seconds=3601)) == "-838:59:59.000"
    assert clock(-timedelta(seconds=3020399, microseconds=875000)) == "-838:59:59.125"  # the library's complement
    assert clock(-timedelta(seconds=1, microseconds=750000)) == "-00:00:01.250"
    assert clock(-timedelta(microseconds=999000)) == "-00:00:00.001"
    assert clock(timedelta(hours=25)) == "25:00:00.000"
    assert _json('{"a": [1, 2.50, "中文"], "b": 0.1}') == {"a": [1, 2.5, "中文"], "b": 0.1}
    assert str(_json('{"x": 1.00000000000000000001}')["x"]) == "1.00000000000000000001"
