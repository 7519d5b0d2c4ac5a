"""The functions rule expressions may call, and the value helpers column rules share with them.

Every function takes and returns plain values (null, bool, int, float,
Decimal, str, bytes, date/datetime, list, dict); none touches anything outside
its arguments. NULL in gives NULL out unless the function says otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
import uuid
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, Callable

from .casts import CASTS

_SPACES = re.compile(r"\s+")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


MEMO_SIZE = 4096  # distinct texts whose result a memoised step keeps (least recently used ones go first)


def memo_text(step: Callable[[Any], Any], size: int = MEMO_SIZE) -> Callable[[Any], Any]:
    """``step`` remembering its results for the last ``size`` distinct texts it was given.

    For costly steps whose result depends on the text alone and cannot be changed by its receiver
    (numbers, dates, hashes). Other values (and errors) are never kept: ``1``, ``1.0`` and ``True`` are
    equal keys to a cache but not the same input.
    """
    cached = lru_cache(maxsize=size)(step)

    def remembered(value):
        return cached(value) if type(value) is str else step(value)
    return remembered


def arity(low: int, high: int | None = None):
    def mark(function):
        function.arity = (low, low if high is None else high)
        return function
    return mark


def _nullsafe(function):
    def wrapper(value, *args):
        return None if value is None else function(value, *args)
    wrapper.__name__ = function.__name__
    wrapper.__doc__ = function.__doc__
    return wrapper


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# ------------------------------------------------------------------ text

def normalize_text(value: Any) -> Any:
    """NFKC (full-width letters, digits and spaces become half-width), whitespace runs collapsed, trimmed."""
    if value is None:
        return None
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", _text(value))).strip()


def concat(*values: Any) -> Any:
    """The values as text, joined; nulls are left out; null when every value is null."""
    parts = [_text(v) for v in values if v is not None]
    return "".join(parts) if parts else None


def concat_ws(separator: str, *values: Any) -> Any:
    parts = [_text(v) for v in values if v is not None and v != ""]
    return separator.join(parts) if parts else None


def split_part(value: Any, separator: str, index: int) -> Any:
    """Part ``index`` (0-based; negative from the end) of ``value`` split at ``separator``; null when absent."""
    if value is None:
        return None
    if not separator:
        raise ValueError("empty separator")
    parts = _text(value).split(separator)
    return parts[index] if -len(parts) <= index < len(parts) else None


def substr(value: Any, start: int, length: int | None = None) -> Any:
    if value is None:
        return None
    text = _text(value)
    return text[start:] if length is None else text[start:start + max(0, length)]


def pad_left(value: Any, width: int, fill: str = "0") -> Any:
    if value is None:
        return None
    if len(fill) != 1 or not 0 <= width <= 1000:
        raise ValueError("pad_left(value, width ≤ 1000, one fill character)")
    return _text(value).rjust(width, fill)


def coalesce(*values: Any) -> Any:
    for value in values:
        if value is not None:
            return value
    return None


# ------------------------------------------------------------------ numbers

def parse_number(value: Any, units: dict | None = None) -> Any:
    """Text like "1,234.5万元" → Decimal; ``units`` maps a unit suffix to its factor ({"万元": 10000})."""
    if value is None:
        return None
    if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if units and isinstance(value, str):  # fast path: "12.5万元" with a known unit, plain digits
        for unit, factor in units.items():
            if value.endswith(unit):
                number = value[:-len(unit)]
                if number and number.replace(".", "", 1).isascii() and number.replace(".", "", 1).isdigit():
                    result = Decimal(number) * (factor if isinstance(factor, (int, Decimal)) else
                                                Decimal(str(factor)))
                    return Decimal(int(result)) if result == result.to_integral_value() else result
                break
    text = normalize_text(value).replace(",", "").replace(" ", "")
    if text == "":
        return None
    match = _NUMBER.match(text)
    if not match:
        raise ValueError(f"not a number: {value!r}")
    rest = text[match.end():]
    factor = Decimal(1)
    if rest:
        if not units or rest not in units:
            known = f"; known units: {', '.join(units)}" if units else ""
            raise ValueError(f"unknown unit {rest!r} in {value!r}{known}")
        factor = Decimal(str(units[rest]))
    try:
        number = Decimal(match.group(0)) * factor
    except InvalidOperation:
        raise ValueError(f"not a number: {value!r}") from None
    return Decimal(int(number)) if number == number.to_integral_value() else number


def round_number(value: Any, digits: int = 0) -> Any:
    if value is None:
        return None
    if isinstance(value, float):
        value = Decimal(repr(value))
    return Decimal(value).quantize(Decimal(1).scaleb(-digits)) if digits else int(Decimal(value).to_integral_value())


# ------------------------------------------------------------------ dates

def parse_date(value: Any, fmt: str) -> Any:
    """Text in ``fmt`` (strftime codes, e.g. "%Y年%m月%d日") → date."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return datetime.strptime(normalize_text(value), fmt).date()


def parse_timestamp(value: Any, fmt: str) -> Any:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value
    return datetime.strptime(normalize_text(value), fmt)


def format_date(value: Any, fmt: str) -> Any:
    if value is None:
        return None
    if not isinstance(value, (date, datetime)):
        value = CASTS["timestamp"](value)
    return value.strftime(fmt)


def year(value: Any) -> Any:
    if value is None:
        return None
    return (value if isinstance(value, (date, datetime)) else CASTS["timestamp"](value)).year


# ------------------------------------------------------------------ region codes (6-digit administrative codes)

def _region(value: Any) -> str:
    code = _text(value).strip()
    if len(code) != 6 or not code.isdigit():
        raise ValueError(f"not a 6-digit region code: {value!r}")
    return code


def region_level(value: Any) -> Any:
    """"province", "city" or "county" for a 6-digit code (110000, 110100, 110101)."""
    if value is None:
        return None
    code = _region(value)
    if code[2:] == "0000":
        return "province"
    if code[4:] == "00":
        return "city"
    return "county"


def region_parent(value: Any) -> Any:
    """The code one tier up: county 110101 → city 110100 → province 110000 → null."""
    if value is None:
        return None
    code = value if type(value) is str and len(value) == 6 and value.isdigit() else _region(value)
    if code[4:] != "00":
        return code[:4] + "00"
    if code[2:4] != "00":
        return code[:2] + "0000"
    return None


def region_province(value: Any) -> Any:
    return None if value is None else _region(value)[:2] + "0000"


def region_city(value: Any) -> Any:
    if value is None:
        return None
    code = _region(value)
    return None if code[2:4] == "00" else code[:4] + "00"


# ------------------------------------------------------------------ masking and keys

def mask_id_card(value: Any) -> Any:
    """Keep the first 6 (region) and last 4 characters of an ID-card number: 110101********123X."""
    if value is None:
        return None
    text = _text(value).strip()
    if len(text) <= 10:
        return "*" * len(text)
    return text[:6] + "*" * (len(text) - 10) + text[-4:]


def mask_phone(value: Any) -> Any:
    """Keep the first 3 and last 4 digits of a phone number: 138****5678 (short numbers: last 2)."""
    if value is None:
        return None
    if type(value) is str and len(value) == 11:  # the common case: an 11-digit mobile number
        return value[:3] + "****" + value[7:]
    text = _text(value).strip()
    if len(text) >= 11:
        return text[:3] + "*" * (len(text) - 7) + text[-4:]
    if len(text) <= 2:
        return "*" * len(text)
    return "*" * (len(text) - 2) + text[-2:]


def keyed_hash(key: bytes) -> Callable[[Any], Any]:
    """HMAC-SHA256 of the value's text under ``key``, as hex: equal inputs give equal outputs, so joins work.

    The hashes of the last :data:`MEMO_SIZE` distinct texts are kept (an HMAC costs more than the rest of a row).
    """
    @lru_cache(maxsize=MEMO_SIZE)
    def hash_text(text: str) -> str:
        return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()

    def hash_value(value: Any) -> Any:
        if value is None:
            return None
        return hash_text(value if type(value) is str else _text(value))
    hash_value.arity = (1, 1)
    return hash_value


SURROGATE_NAMESPACE = uuid.UUID("5d1b3a52-4a39-4b7e-9a53-3c6b1f0d7e21")


def surrogate_key(*values: Any) -> str:
    """A deterministic UUID (v5) of the values (e.g. origin node and source key): same input, same key."""
    text = "\x1f".join("\x00" if v is None else _text(v) for v in values)
    return str(uuid.uuid5(SURROGATE_NAMESPACE, text))


# ------------------------------------------------------------------ conversions

def _cast(name: str):
    convert = CASTS[name]

    def cast(value):
        return None if value is None else convert(value)
    return cast


FUNCTIONS: dict[str, Callable] = {
    # text
    "trim": arity(1)(_nullsafe(lambda v: _text(v).strip())),
    "upper": arity(1)(_nullsafe(lambda v: _text(v).upper())),
    "lower": arity(1)(_nullsafe(lambda v: _text(v).lower())),
    "normalize": arity(1)(normalize_text),
    "concat": arity(1, 20)(concat),
    "concat_ws": arity(2, 20)(concat_ws),
    "split_part": arity(3)(split_part),
    "substr": arity(2, 3)(substr),
    "replace": arity(3)(_nullsafe(lambda v, old, new: _text(v).replace(old, new))),
    "pad_left": arity(2, 3)(pad_left),
    "size": arity(1)(_nullsafe(len)),
    "coalesce": arity(1, 20)(coalesce),
    # numbers
    "int": arity(1)(_cast("int")),
    "double": arity(1)(_cast("float")),
    "decimal": arity(1)(_cast("decimal")),
    "string": arity(1)(_nullsafe(_text)),
    "parse_number": arity(1, 2)(parse_number),
    "round": arity(1, 2)(round_number),
    "abs": arity(1)(_nullsafe(abs)),
    # dates
    "date": arity(1)(_cast("date")),
    "timestamp": arity(1)(_cast("timestamp")),
    "parse_date": arity(2)(parse_date),
    "parse_timestamp": arity(2)(parse_timestamp),
    "format_date": arity(2)(format_date),
    "year": arity(1)(year),
    # region codes
    "region_level": arity(1)(region_level),
    "region_parent": arity(1)(region_parent),
    "region_province": arity(1)(region_province),
    "region_city": arity(1)(region_city),
    # masking and keys
    "mask_id_card": arity(1)(mask_id_card),
    "mask_phone": arity(1)(mask_phone),
    "surrogate_key": arity(1, 20)(surrogate_key),
}

# value.method(args) forms (CEL style); the value is the first argument
METHODS: dict[str, Callable] = {
    "size": FUNCTIONS["size"],
    "startsWith": arity(2)(lambda v, p: v is not None and _text(v).startswith(p)),
    "endsWith": arity(2)(lambda v, p: v is not None and _text(v).endswith(p)),
    "contains": arity(2)(lambda v, p: v is not None and p in _text(v)),
    "lowerAscii": FUNCTIONS["lower"],
    "upperAscii": FUNCTIONS["upper"],
    "trim": FUNCTIONS["trim"],
}
