"""Transport batches: change events as one compressed Avro array, the same bytes on every transport."""

from __future__ import annotations

import io
import zlib

from .avro import envelope_schema, from_record, to_record
from .event import ChangeEvent

MAGIC = b"TSB1"  # tiersync batch, version 1: zlib(4-byte count + that many Avro tiersync.Envelope records)


class CorruptBatch(ValueError):
    """The bytes are not a tiersync batch (truncated, tampered with, or another format)."""


def encode_batch(events: list[ChangeEvent]) -> bytes:
    import fastavro

    schema = envelope_schema()
    buffer = io.BytesIO()
    buffer.write(len(events).to_bytes(4, "big"))
    for event in events:  # Avro records are self-delimiting: one after the other, the count first
        fastavro.schemaless_writer(buffer, schema, to_record(event))
    return MAGIC + zlib.compress(buffer.getvalue(), 3)


def decode_batch(data: bytes) -> list[ChangeEvent]:
    import fastavro

    if not data.startswith(MAGIC):
        raise CorruptBatch("not a tiersync batch (bad magic bytes)")
    try:
        body = io.BytesIO(zlib.decompress(data[len(MAGIC):]))
        count = int.from_bytes(body.read(4), "big")
        schema = envelope_schema()
        records = [fastavro.schemaless_reader(body, schema, schema, return_record_name=True) for _ in range(count)]
        if body.read(1):
            raise ValueError("trailing bytes after the last event")
    except Exception as exc:  # noqa: BLE001 - zlib and fastavro raise many kinds for damaged input
        raise CorruptBatch(f"damaged batch: {type(exc).__name__}: {exc}") from None
    return [from_record(r) for r in records]
