"""Opening PostgreSQL connections, with failures turned into tiersync errors."""

from __future__ import annotations

import json
from decimal import Decimal

import psycopg

from engine.config import redact_url

from .errors import translate


def connect(url: str, *, autocommit: bool = False, application: str = "tiersync") -> psycopg.Connection:
    try:
        conn = psycopg.connect(url, autocommit=autocommit, application_name=application, connect_timeout=10)
    except psycopg.Error as exc:
        raise translate(exc, f"cannot connect to {redact_url(url)}") from None
    return conn


def _json_int(text: str):
    # "-0" is a float's negative zero (integer types never print it); integers longer than Python converts
    # from text by default (4300 digits; numeric and jsonb hold far more) stay exact as Decimal
    if text == "-0" or len(text) > 4000:
        return Decimal(text)
    return int(text)


# built once: json.loads(…, parse_float=…) builds one per call
_IMAGE_DECODER = json.JSONDecoder(parse_float=Decimal, parse_int=_json_int)


def parse_image(text: str | None):
    """A JSON row image with numbers kept exact."""
    return None if text is None else _IMAGE_DECODER.decode(text)
