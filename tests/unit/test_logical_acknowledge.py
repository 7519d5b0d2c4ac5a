"""The slot is confirmed only past whole transactions the target committed, whatever thread reads ahead."""

import threading

from connectors.postgres.logical_reader import PostgresLogicalReader
from connectors.postgres.position import PostgresLsnPosition


def reader_with(handed: dict[int, int]) -> PostgresLogicalReader:
    reader = PostgresLogicalReader.__new__(PostgresLogicalReader)  # no server: only the bookkeeping
    reader._end_lsns = dict(handed)
    reader._lock = threading.Lock()
    reader._confirm = 0
    return reader


def test_whole_transactions_confirm_their_end_and_older_ones():
    reader = reader_with({100: 150, 200: 250, 300: 350})
    reader.acknowledge(PostgresLsnPosition(200, 0).serialise())
    assert reader._confirm == 250 and list(reader._end_lsns) == [300]


def test_a_part_of_a_transaction_confirms_nothing_of_it():
    reader = reader_with({400: 450, 500: 550})
    reader.acknowledge(PostgresLsnPosition(500, 7).serialise())  # 7 changes of the transaction at 500
    assert reader._confirm == 450 and list(reader._end_lsns) == [500]
    reader.acknowledge(PostgresLsnPosition(500, 0).serialise())
    assert reader._confirm == 550 and reader._end_lsns == {}


def test_acknowledging_while_another_thread_records_commits():
    reader = reader_with({})
    stop = threading.Event()

    def read_ahead():  # keeps changing the map during every acknowledgement, within a bounded key range
        step = 0
        while not stop.is_set():
            lsn = 1000 + (step % 800) * 100
            with reader._lock:
                reader._end_lsns[lsn] = lsn + 10
            step += 1

    thread = threading.Thread(target=read_ahead)
    thread.start()
    try:
        for lsn in range(1000, 41000, 100):
            reader.acknowledge(PostgresLsnPosition(lsn, 0).serialise())  # must not raise mid-iteration
    finally:
        stop.set()
        thread.join()
