"""Explicit type casts a mapping can ask for; each is a plain Python conversion."""

from __future__ import annotations

import base64
import json
from datetime import date, datetime, time, timezone
from decimal import Decimal
from typing import Any, Callable

from .jsontext import dumps_exact

_TRUE = {"1", "t", "true", "y", "yes", "on"}
_FALSE = {"0", "f", "false", "n", "no", "off"}


def _to_bool(value: Any) -> bool:
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"not a boolean: {value!r}")
    return bool(value)


def _to_int(value: Any) -> int:
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"not an integer: {value!r}")
    if isinstance(value, (Decimal, str)):
        number = Decimal(str(value).strip())
        if number != number.to_integral_value():
            raise ValueError(f"not an integer: {value!r}")
        return int(number)
    return int(value)


def _to_decimal(value: Any) -> Decimal:
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(str(value).strip()) if isinstance(value, str) else Decimal(value)


def _to_date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value).strip()[:10])


def _to_time(value: Any) -> time:
    if isinstance(value, datetime):
        return value.time()
    return value if isinstance(value, time) else time.fromisoformat(str(value).strip())


def _to_timestamp(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    return datetime.fromisoformat(str(value).strip().replace(" ", "T", 1))


def _to_timestamptz(value: Any) -> datetime:
    moment = _to_timestamp(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _to_text(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return dumps_exact(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    return str(value)


def _to_json(value: Any) -> Any:
    return json.loads(value, parse_float=Decimal) if isinstance(value, str) else value  # 1.10 stays 1.10


def _to_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    text = str(value)
    if text.startswith("\\x"):
        return bytes.fromhex(text[2:])
    return base64.b64decode(text)


CASTS: dict[str, Callable[[Any], Any]] = {
    "int": _to_int,
    "float": float,
    "decimal": _to_decimal,
    "text": _to_text,
    "bool": _to_bool,
    "date": _to_date,
    "time": _to_time,
    "timestamp": _to_timestamp,
    "timestamptz": _to_timestamptz,
    "json": _to_json,
    "bytes": _to_bytes,
}


def caster(name: str) -> Callable[[Any], Any]:
    """The cast called ``name``; NULL always stays NULL."""
    convert = CASTS[name]

    def cast(value: Any) -> Any:
        return None if value is None else convert(value)

    return cast
