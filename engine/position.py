"""Source positions: immutable, totally ordered, serialisable to text.

Each source kind defines its own position class and registers it under a
short kind name; the checkpoint table stores ``kind:text`` so a checkpoint can
always be turned back into the right class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

_KINDS: dict[str, type[Position]] = {}


class Position(ABC):
    """A point in a source's change stream; everything at or before it has been delivered."""

    kind: ClassVar[str]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            _KINDS[cls.kind] = cls

    @abstractmethod
    def to_text(self) -> str: ...

    @classmethod
    @abstractmethod
    def from_text(cls, text: str) -> Position: ...

    @classmethod
    def deserialise(cls, text: str) -> Position:
        """Read back what :meth:`serialise` wrote; a checkpoint of another kind is refused clearly."""
        kind, sep, body = text.partition(":")
        if not sep or kind != cls.kind:
            raise ValueError(f"checkpoint {text!r} is not a {cls.kind} position: the pipeline's source kind "
                             f"changed since it was written; reset it with `tiersync checkpoint set`")
        return cls.from_text(body)

    def serialise(self) -> str:
        return f"{self.kind}:{self.to_text()}"

    def __str__(self) -> str:
        return self.serialise()


def parse_position(text: str) -> Position:
    """Turn a checkpoint's ``kind:text`` back into a position object."""
    kind, sep, body = text.partition(":")
    if not sep or kind not in _KINDS:
        known = ", ".join(sorted(_KINDS)) or "none loaded"
        raise ValueError(f"unknown position {text!r} (known kinds: {known})")
    return _KINDS[kind].from_text(body)
