"""The rule vocabulary's configuration models (column rules, value maps, lookups, keys); see README "Rules"."""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .casts import CASTS

CAST_NAMES = tuple(CASTS)
MASKS = ("hash", "id_card", "phone", "nullify")
Unmapped = Literal["keep", "null", "default", "reject"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class ColumnRule(_Strict):
    """What happens to one source column, in this order: default → trim/normalize/case → cast → map → mask."""

    to: str | None = None
    default: Any = Field(default=None, description="value used when the source value is NULL")
    trim: bool = False
    normalize: bool = Field(default=False, description="NFKC (full-width → half-width), collapse spaces, trim")
    case: Literal["upper", "lower"] | None = None
    cast: str | None = None
    format: str | None = Field(default=None, description="strptime/strftime format for date casts, e.g. %Y年%m月%d日")
    units: dict[str, float | int | str] | None = Field(default=None, description="unit suffix → factor, "
                                                       "for numeric casts of text like 12.5万元")
    map: str | dict[str, Any] | None = Field(default=None, description="a value map's name, or an inline map")
    unmapped: Unmapped = Field(default="keep", description="inline map: what an unmapped value becomes")
    mask: str | None = None

    @field_validator("cast")
    @classmethod
    def _known_cast(cls, value: str | None) -> str | None:
        if value is not None and value not in CAST_NAMES:
            raise ValueError(f"unknown cast {value!r}; one of: {', '.join(CAST_NAMES)}{_suggest(value, CAST_NAMES)}")
        return value

    @field_validator("mask")
    @classmethod
    def _known_mask(cls, value: str | None) -> str | None:
        if value is not None and value not in MASKS:
            raise ValueError(f"unknown mask {value!r}; one of: {', '.join(MASKS)}{_suggest(value, MASKS)}")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        if self.units and self.cast not in ("int", "float", "decimal"):
            raise ValueError("units need a numeric cast (int, float or decimal)")
        if self.format and self.cast not in ("date", "time", "timestamp", "timestamptz", "text"):
            raise ValueError("format needs a date/time cast (or cast: text to format a date)")
        return self


class ValueMapConfig(_Strict):
    """A code table: inline ``values``, a ``csv`` file, or a ``table`` in a configured ``database``."""

    values: dict[str, Any] | None = None
    csv: str | None = Field(default=None, description="path, relative to the node YAML")
    database: str | None = None
    table: str | None = None
    key: str | None = Field(default=None, description="csv/table: the column holding source codes")
    value: str | None = Field(default=None, description="csv/table: the column holding target codes")
    unmapped: Unmapped = "keep"
    default: Any = None
    reload: float = Field(default=300.0, ge=1, description="table maps: seconds before they are read again")

    @model_validator(mode="after")
    def _one_source(self):
        given = [n for n in ("values", "csv", "table") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("a value map has exactly one of: values (inline), csv, table")
        if self.table is not None and self.database is None:
            raise ValueError("a table value map names its database")
        if (self.csv or self.table) and not (self.key and self.value):
            raise ValueError("a csv or table value map names its key and value columns")
        if self.unmapped == "default" and self.default is None:
            raise ValueError("unmapped: default needs a default value")
        return self


class LookupConfig(_Strict):
    """Enrich a row with columns of another table, matched by key (cached, re-read every ``reload`` seconds)."""

    database: str
    table: str
    match: dict[str, str] = Field(min_length=1, description="lookup table column → source column")
    columns: dict[str, str] = Field(min_length=1, description="lookup table column → target column")
    missing: Literal["null", "reject"] = "null"
    reload: float = Field(default=300.0, ge=1)


class DiscriminatorConfig(_Strict):
    """Merging several sources into one target: a column telling them apart, added to the target key."""

    column: str
    value: str | None = Field(default=None, description="default: the source table's name")


class SurrogateKeyConfig(_Strict):
    """A target key column: a deterministic UUID of the origin node, the discriminator (if any) and the source key."""

    column: str
    columns: list[str] | None = Field(default=None, description="source columns (default: the source key)")
    origin: bool = Field(default=True, description="include the origin node, so equal keys of two nodes differ")
