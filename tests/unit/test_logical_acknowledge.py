"""The slot is confirmed only past whole transactions the target committed, whatever thread reads ahead."""

import threading

from connectors.postgres.logical_reader import PostgresLogicalReader
from connectors.postgres.position import PostgresLsnPosition


def reader_with(handed: dict[str, int]) -> PostgresLogicalReader:
    reader = PostgresLogicalReader.__new__(PostgresLogicalReader)  # no server: only the bookkeeping
    reader._end_lsns = dict(handed)
    reader._lock = threading.Lock()
    reader._confirm = 0
    return reader


def test_whole_transactions_confirm_their_end_and_older_ones():
    first, second, third = (PostgresLsnPosition(lsn, 0).serialise() for lsn in (100, 200, 300))
    reader = reader_with({first: 150, second: 250, third: 350})
    reader.acknowledge(second)
    assert reader._confirm == 250 and list(reader._end_lsns) == [third]


def test_a_part_of_a_transaction_confirms_nothing_of_it():
    whole = PostgresLsnPosition(500, 0).serialise()
    reader = reader_with({PostgresLsnPosition(400, 0).serialise(): 450, whole: 550})
    reader.acknowledge(PostgresLsnPosition(500, 7).serialise())  # 7 changes of the transaction at 500
    assert reader._confirm == 450 and list(reader._end_lsns) == [whole]
    reader.acknowledge(whole)
    assert reader._confirm == 550 and reader._end_lsns == {}


def test_acknowledging_while_another_thread_records_commits():
    reader = reader_with({})
    stop = threading.Event()

    def read_ahead():  # keeps changing the map during every acknowledgement, within a bounded key range
        step = 0
        while not stop.is_set():
            lsn = 1000 + (step % 800) * 100
            with reader._lock:
                reader._end_lsns[PostgresLsnPosition(lsn, 0).serialise()] = lsn + 10
            step += 1

    thread = threading.Thread(target=read_ahead)
    thread.start()
    try:
        for lsn in range(1000, 41000, 100):
            reader.acknowledge(PostgresLsnPosition(lsn, 0).serialise())  # must not raise mid-iteration
    finally:
        stop.set()
        thread.join()
