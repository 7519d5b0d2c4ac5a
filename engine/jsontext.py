"""JSON text of row values: every value kind a row image holds, numbers written exactly."""

from __future__ import annotations

import json
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Callable
from uuid import UUID

import orjson


def json_default(value: Any) -> Any:
    """JSON form of the non-JSON values row images hold."""
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(value).hex()
    if isinstance(value, (UUID, timedelta)):
        return str(value)
    if isinstance(value, (set, tuple, frozenset)):
        return list(value)
    return str(value)


def dumps_exact(value: Any) -> str:
    """JSON text of a document; numbers held as Decimal (1.10, 12345678901234567890.5) are written exactly."""
    try:
        return _PLAIN.encode(value)
    except _HasDecimal:
        return _exact(value)


class _HasDecimal(Exception):
    pass


def _plain_default(value: Any) -> Any:
    if isinstance(value, Decimal) and value.is_finite():
        raise _HasDecimal  # json.dumps can only write it as a string or a float: take the exact path
    return json_default(value)


_PLAIN = json.JSONEncoder(ensure_ascii=False, default=_plain_default)  # as json.dumps(…), made once, not per call


def _exact(value: Any) -> str:
    if isinstance(value, Decimal) and value.is_finite():
        return str(value).lower()  # 1.10 stays 1.10; 1E+22 is written 1e+22
    if isinstance(value, dict):
        return "{" + ", ".join(json.dumps(k if isinstance(k, str) else json.dumps(k), ensure_ascii=False) + ": "
                               + _exact(v) for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple, set, frozenset)):
        return "[" + ", ".join(_exact(v) for v in value) + "]"
    return json.dumps(value, default=json_default, ensure_ascii=False)


def json_bytes(doc: Any) -> bytes:
    """UTF-8 JSON of a document, fast (orjson) where that is exact, else :func:`dumps_exact`'s text.

    Contract: ``doc`` holds no NaN or infinite float (orjson would write null); Decimals, integers beyond 64
    bits and other values orjson refuses take the exact path. Equal documents need not give equal bytes
    between the two paths (spacing differs), so this is for values, never for keys compared as bytes.
    """
    try:
        return orjson.dumps(doc)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return dumps_exact(doc).encode()


def column_decoders(columns, value_decoder: Callable[[str], Callable[[Any], Any] | None]) -> dict:
    """Column name → function turning its JSON image value into a Python value (only where one is needed)."""
    return {c.name: d for c in columns if (d := value_decoder(c.type)) is not None}


def decode_row(image: dict | None, decoders: dict, undeclared_decimal: Callable[[Decimal], Any] | None = None):
    """A parsed JSON row image with each column's decoder applied; NULL stays None.

    ``undeclared_decimal`` converts numbers parsed as Decimal in columns that have no decoder.
    """
    if image is None:
        return None
    for column, value in image.items():
        if value is not None:
            decode = decoders.get(column)
            if decode is not None:
                image[column] = decode(value)
            elif undeclared_decimal is not None and isinstance(value, Decimal):
                image[column] = undeclared_decimal(value)
    return image
