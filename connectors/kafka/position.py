"""Position in a set of Kafka partitions: per partition, the offset to read from and the batches applied.

``offset`` is the first offset not yet settled: everything before it is either
applied or known to be a duplicate. ``applied`` holds, per producing
pipeline, the sequence number of the last batch applied from that partition,
so a batch delivered again (a producer that crashed and sent it twice) and
messages read again after a restart are skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from engine.position import Position


@dataclass(frozen=True)
class KafkaPosition(Position):
    kind = "kafka"

    # "topic:partition" → (offset, {producer: last applied batch seq})
    partitions: dict[str, tuple[int, dict[str, int]]] = field(default_factory=dict)

    def to_text(self) -> str:
        return json.dumps({k: [o, a] for k, (o, a) in sorted(self.partitions.items())}, separators=(",", ":"),
                          ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_text(cls, text: str) -> KafkaPosition:
        try:
            doc = json.loads(text)
            parts = {str(k): (int(v[0]), {str(p): int(s) for p, s in v[1].items()}) for k, v in doc.items()}
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            raise ValueError(f"not a Kafka position: {text!r} (expected {{\"topic:partition\": [offset, "
                             f"{{producer: seq}}]}})") from None
        return cls(parts)
