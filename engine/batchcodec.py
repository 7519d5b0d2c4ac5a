"""Transport batches: change events as compressed JSON lines, the same bytes on every transport.

Each line is the event's Debezium-compatible JSON envelope (engine.debezium),
which keeps every value's kind, so a batch read back equals the batch written.
"""

from __future__ import annotations

import zlib

from .debezium import from_json, to_json
from .event import ChangeEvent

MAGIC = b"TSB2"  # tiersync batch, version 2: zlib(4-byte count + newline-separated JSON envelopes)


class CorruptBatch(ValueError):
    """The bytes are not a tiersync batch (truncated, tampered with, or another format)."""


def encode_batch(events: list[ChangeEvent]) -> bytes:
    return batch_of_lines([to_json(e) for e in events])


def batch_of_lines(lines: list[bytes]) -> bytes:
    """A batch from envelopes already in JSON (as Kafka JSON messages carry them)."""
    return MAGIC + zlib.compress(len(lines).to_bytes(4, "big") + b"\n".join(lines), 1)


def batch_lines(data: bytes) -> list[bytes]:
    """The JSON envelopes of a batch, undecoded."""
    if not data.startswith(MAGIC):
        raise CorruptBatch("not a tiersync batch (bad magic bytes)")
    try:
        body = zlib.decompress(data[len(MAGIC):])
    except zlib.error as exc:
        raise CorruptBatch(f"damaged batch: {exc}") from None
    count = int.from_bytes(body[:4], "big")
    lines = body[4:].split(b"\n") if count else []
    if len(lines) != count:
        raise CorruptBatch(f"damaged batch: {len(lines)} events where the header says {count}")
    return lines


def decode_batch(data: bytes) -> list[ChangeEvent]:
    lines = batch_lines(data)
    try:
        return [from_json(line) for line in lines]
    except Exception as exc:  # noqa: BLE001 - json and the value decoders raise many kinds for damaged input
        raise CorruptBatch(f"damaged batch: {type(exc).__name__}: {exc}") from None
