"""MariaDB/MySQL SQL for reconcile: the canonical text of engine.reconcile.normalise, computed by the server.

The MariaDB connector's checksummer runs these statements (pymysql, ``%s`` parameters, always with an argument
tuple, even empty: ``%%`` in them is pymysql's escape for ``%``) on a session with
``SET time_zone = '+00:00'`` (TIMESTAMP columns read as UTC; DATETIME is naive = UTC). JSON stored as text
cannot be put into jsonb's canonical order in SQL: ``pushable`` says so, and such columns are compared in Python.
"""

from __future__ import annotations

import re

SESSION_SQL = ["SET time_zone = '+00:00'", "SET SESSION group_concat_max_len = 1048576"]

_KINDS: list[tuple[re.Pattern, str]] = [
    (re.compile(r"^tinyint\(1\)"), "bool"),
    (re.compile(r"^(bool|boolean)\b"), "bool"),
    (re.compile(r"^(tinyint|smallint|mediumint|int|integer|bigint|year)\b"), "int"),
    (re.compile(r"^(decimal|numeric|dec|fixed)\b"), "decimal"),
    (re.compile(r"^(double|float|real)\b"), "float"),
    (re.compile(r"^(datetime|timestamp)\b"), "timestamp"),
    (re.compile(r"^date\b"), "date"),
    (re.compile(r"^time\b"), "time"),
    (re.compile(r"^json\b"), "json"),
    (re.compile(r"^(binary|varbinary|tinyblob|blob|mediumblob|longblob)\b"), "bytes"),
]


def quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def column_kind(type_name: str) -> str:
    t = type_name.strip().lower()
    for pattern, kind in _KINDS:
        if pattern.search(t):
            return kind
    return "text"


def pushable(kind: str) -> bool:
    return kind != "json"


def _fraction(ref: str) -> str:
    return (f"IF(MICROSECOND({ref}) = 0, '', "
            f"CONCAT('.', TRIM(TRAILING '0' FROM LPAD(MICROSECOND({ref}), 6, '0'))))")


def _double_bits(ref: str) -> str:
    """The IEEE-754 bits of a DOUBLE as 16 hex digits (MariaDB has no such function: exact decomposition)."""
    a = f"ABS({ref})"
    e0 = f"FLOOR(LOG2({a}))"
    # LOG2 may be off by one at a power of two: correct with the exact quotient a / 2^e, which is in [1, 2)
    e = f"({e0} + IF({a} / POW(2, {e0}) >= 2, 1, 0) - IF({a} / POW(2, {e0}) < 1, 1, 0))"
    normal = (f"(CAST({e} + 1023 AS UNSIGNED) << 52) | "
              f"CAST(({a} / POW(2, {e}) - 1) * POW(2, 52) AS UNSIGNED)")
    subnormal = f"CAST({a} / POW(2, -1074) AS UNSIGNED)"
    sign = f"IF({ref} < 0, CAST(1 AS UNSIGNED) << 63, 0)"
    magnitude = f"IF({a} < POW(2, -1022), {subnormal}, {normal})"
    return f"IF({ref} = 0, '0000000000000000', LOWER(LPAD(HEX({sign} | {magnitude}), 16, '0')))"


def normalised_sql(ref: str, type_name: str, kind: str) -> str:
    """SQL for the canonical text of column ``ref`` (of ``type_name``) as ``kind`` (engine.reconcile.normalise)."""
    own = column_kind(type_name)
    if kind == "int":
        return f"CAST({ref} AS CHAR)"
    if kind == "decimal":
        text = f"CAST({ref} AS CHAR)"
        return (f"IF({ref} = 0, '0', IF(LOCATE('.', {text}) > 0, "
                f"TRIM(TRAILING '.' FROM TRIM(TRAILING '0' FROM {text})), {text}))")
    if kind == "float":
        value = f"CAST(CAST({ref} AS CHAR) AS DOUBLE)" if type_name.lower().startswith("float") else \
            f"CAST({ref} AS DOUBLE)"
        return _double_bits(value)
    if kind == "bool":
        return f"IF({ref} IS NULL, NULL, IF({ref}, 'true', 'false'))"
    if kind == "timestamp":
        value = ref if own == "timestamp" else f"CAST({ref} AS DATETIME(6))"
        return f"CONCAT(DATE_FORMAT({value}, '%%Y-%%m-%%d %%H:%%i:%%s'), {_fraction(value)})"
    if kind == "date":
        return f"DATE_FORMAT({ref}, '%%Y-%%m-%%d')"
    if kind == "time":
        return f"CONCAT(DATE_FORMAT({ref}, '%%H:%%i:%%s'), {_fraction(ref)})"
    if kind == "bytes":
        return f"LOWER(HEX({ref}))"
    return f"CAST({ref} AS CHAR CHARACTER SET utf8mb4)"


_SAFE_KINDS = ("int", "decimal", "float", "bool", "timestamp", "date", "time", "bytes")  # engine.reconcile


def _encoded(columns, image: str) -> str:
    if not columns:
        return "''"
    parts = []
    for c in columns:
        value = normalised_sql(f"{image}.{quote(c.name)}", c.type, c.kind)
        if c.kind not in _SAFE_KINDS:
            value = f"REPLACE(REPLACE({value}, '\\\\', '\\\\\\\\'), ',', '\\\\,')"
        parts.append(f"COALESCE({value}, '\\\\N')")
    return "CONCAT(" + ", ',', ".join(parts) + ")"


def _hash60(expr: str) -> str:
    return f"CAST(CONV(LEFT(MD5(CONVERT({expr} USING utf8mb4)), 15), 16, 10) AS UNSIGNED)"


def _key_hash(spec) -> str:
    if len(spec.key) == 1 and spec.key[0].kind == "int":
        return f"(CAST(t.{quote(spec.key[0].name)} AS SIGNED) & 1152921504606846975)"
    return _hash60(_encoded(spec.key, "t"))


def _hashed_rows(spec, with_keys: bool) -> str:
    keys = "".join(f", t.{quote(c.name)} AS _k{i}" for i, c in enumerate(spec.key)) if with_keys else ""
    where = f" WHERE ({spec.where})" if spec.where else ""
    inner = (f"SELECT {_encoded(spec.key, 't')} AS k, {_key_hash(spec)} AS kh, {_encoded(spec.columns, 't')} AS r"
             f"{keys} FROM {quote(spec.table.id.name)} t{where}")
    key_out = "".join(f", s._k{i}" for i in range(len(spec.key))) if with_keys else ""
    row_hash = _hash60("CONCAT(s.k, '|', s.r)")
    return f"SELECT s.k, s.kh, {row_hash} AS rh{key_out} FROM ({inner}) s"


def bucket_sums_sql(spec, bits: int, within: int | None, within_bits: int | None) -> str:
    """Per bucket: row count and the exact sum of ``rh`` (SUM of BIGINT UNSIGNED is an exact DECIMAL).

    ``within``: how many bucket numbers the statement takes as parameters.
    """
    clause = ""
    if within_bits is not None:
        clause = f" WHERE h.kh & {(1 << within_bits) - 1} IN ({', '.join('%s' for _ in range(within or 0))})"
    return (f"SELECT h.kh & {(1 << bits) - 1} AS b, COUNT(*), SUM(h.rh) "
            f"FROM ({_hashed_rows(spec, False)}) h{clause} GROUP BY b")


def row_hashes_sql(spec, within: int, within_bits: int) -> str:
    keys = "".join(f", h._k{i}" for i in range(len(spec.key)))
    marks = ", ".join("%s" for _ in range(within))
    return (f"SELECT h.k, h.rh{keys} FROM ({_hashed_rows(spec, True)}) h "
            f"WHERE h.kh & {(1 << within_bits) - 1} IN ({marks})")
