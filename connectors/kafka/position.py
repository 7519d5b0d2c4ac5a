"""Position in a set of Kafka partitions: where to read each partition from, and the batches applied.

``offsets`` holds, per partition, the first offset not yet settled: every
message before it is applied, or known to be a duplicate or an abandoned
attempt. ``done`` holds, per producing pipeline, the sequence number of the
last batch applied; batches are applied whole and in sequence, so anything
read again with a lower or equal number is skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from engine.position import Position


@dataclass(frozen=True)
class KafkaPosition(Position):
    kind = "kafka"

    offsets: dict[str, int] = field(default_factory=dict)  # "topic:partition" → offset
    done: dict[str, int] = field(default_factory=dict)  # producer → last applied batch seq

    def to_text(self) -> str:
        return json.dumps({"offsets": self.offsets, "done": self.done}, separators=(",", ":"), ensure_ascii=False,
                          sort_keys=True)

    @classmethod
    def from_text(cls, text: str) -> KafkaPosition:
        try:
            doc = json.loads(text)
            offsets = {str(k): int(v) for k, v in doc["offsets"].items()}
            done = {str(k): int(v) for k, v in doc["done"].items()}
        except (ValueError, TypeError, KeyError, AttributeError):
            raise ValueError(f"not a Kafka position: {text!r} (expected {{\"offsets\": {{\"topic:partition\": "
                             f"offset}}, \"done\": {{producer: seq}}}})") from None
        return cls(offsets, done)
