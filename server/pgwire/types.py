"""PostgreSQL type OIDs and the text/binary encodings of the values sqlgate releases.

DPResult columns are typed int|float|string|bool|date; catalog answers also use name, oid,
char, int2, int4, text arrays... Parameters arrive as text or binary and are turned into
SQL literals (never spliced as raw text), so a parameter can never change a query's shape.
"""
from __future__ import annotations

import datetime as _dt
import decimal
import math
import struct
from dataclasses import dataclass

from sqlgate.errors import InvalidParameter

BOOL = 16
BYTEA = 17
CHAR = 18
NAME = 19
INT8 = 20
INT2 = 21
INT2VECTOR = 22
INT4 = 23
REGPROC = 24
TEXT = 25
OID = 26
OIDVECTOR = 30
JSON = 114
FLOAT4 = 700
FLOAT8 = 701
UNKNOWN = 705
BOOL_ARRAY = 1000
INT2_ARRAY = 1005
INT4_ARRAY = 1007
TEXT_ARRAY = 1009
VARCHAR_ARRAY = 1015
INT8_ARRAY = 1016
FLOAT8_ARRAY = 1022
OID_ARRAY = 1028
ACLITEM_ARRAY = 1034
BPCHAR = 1042
VARCHAR = 1043
DATE = 1082
TIME = 1083
TIMESTAMP = 1114
TIMESTAMPTZ = 1184
INTERVAL = 1186
NUMERIC = 1700
REGCLASS = 2205
REGTYPE = 2206
UUID = 2950
JSONB = 3802

# (name, oid, typlen, category, array oid) for the synthetic pg_type: what clients look up.
TYPES: tuple[tuple[str, int, int, str, int], ...] = (
    ("bool", BOOL, 1, "B", BOOL_ARRAY), ("bytea", BYTEA, -1, "U", 1001),
    ("char", CHAR, 1, "S", 1002), ("name", NAME, 64, "S", 1003), ("int8", INT8, 8, "N", INT8_ARRAY),
    ("int2", INT2, 2, "N", INT2_ARRAY), ("int2vector", INT2VECTOR, -1, "A", 1006),
    ("int4", INT4, 4, "N", INT4_ARRAY), ("regproc", REGPROC, 4, "N", 1008),
    ("text", TEXT, -1, "S", TEXT_ARRAY), ("oid", OID, 4, "N", OID_ARRAY),
    ("oidvector", OIDVECTOR, -1, "A", 1013), ("json", JSON, -1, "U", 199),
    ("float4", FLOAT4, 4, "N", 1021), ("float8", FLOAT8, 8, "N", FLOAT8_ARRAY),
    ("unknown", UNKNOWN, -2, "X", 0), ("bpchar", BPCHAR, -1, "S", 1014),
    ("varchar", VARCHAR, -1, "S", VARCHAR_ARRAY), ("date", DATE, 4, "D", 1182),
    ("time", TIME, 8, "D", 1183), ("timestamp", TIMESTAMP, 8, "D", 1115),
    ("timestamptz", TIMESTAMPTZ, 8, "D", 1185), ("interval", INTERVAL, 16, "T", 1187),
    ("numeric", NUMERIC, -1, "N", 1231), ("regclass", REGCLASS, 4, "N", 2210),
    ("regtype", REGTYPE, 4, "N", 2211), ("uuid", UUID, 16, "U", 2951),
    ("jsonb", JSONB, -1, "U", 3807),
)
TYPE_NAMES = {oid: name for name, oid, *_ in TYPES}
TYPE_LENGTHS = {oid: length for _, oid, length, *_ in TYPES}
_ARRAY_ELEMENT = {array: oid for _, oid, _, _, array in TYPES if array}

# sqlgate column types -> PG OIDs. Floats are float8 (noisy values are doubles).
SQLGATE_OIDS = {"int": INT8, "float": FLOAT8, "string": TEXT, "bool": BOOL, "date": DATE}
# Metadata types -> what `format_type` shows for a dataset column.
SQLGATE_TYPE_NAMES = {"int": "bigint", "float": "double precision", "string": "text",
                      "bool": "boolean", "date": "date"}


@dataclass(frozen=True)
class Column:
    """One RowDescription field."""

    name: str
    type_oid: int
    table_oid: int = 0
    column_number: int = 0

    @property
    def type_size(self) -> int:
        return TYPE_LENGTHS.get(self.type_oid, -1)


def oid_for_duckdb(type_name: str) -> int:
    """The PG type of a DuckDB result column (catalog answers)."""
    upper = type_name.upper()
    if upper.endswith("[]"):
        element = oid_for_duckdb(upper[:-2])
        return {INT8: INT8_ARRAY, INT4: INT4_ARRAY, INT2: INT2_ARRAY, BOOL: BOOL_ARRAY,
                FLOAT8: FLOAT8_ARRAY, OID: OID_ARRAY}.get(element, TEXT_ARRAY)
    return {
        "BOOLEAN": BOOL, "TINYINT": INT2, "SMALLINT": INT2, "INTEGER": INT4, "BIGINT": INT8,
        "UTINYINT": INT2, "USMALLINT": INT4, "UINTEGER": OID, "UBIGINT": NUMERIC,
        "HUGEINT": NUMERIC, "FLOAT": FLOAT4, "DOUBLE": FLOAT8, "DATE": DATE, "TIME": TIME,
        "TIMESTAMP": TIMESTAMP, "TIMESTAMP WITH TIME ZONE": TIMESTAMPTZ, "INTERVAL": INTERVAL,
        "BLOB": BYTEA, "UUID": UUID, "JSON": JSON,
    }.get(upper, NUMERIC if upper.startswith("DECIMAL") else TEXT)


# ---------------------------------------------------------------- encoding results


def encode_text(value, type_oid: int) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return b"NaN"
    if type_oid in _ARRAY_ELEMENT:
        return _array_text(value)
    if type_oid == BOOL or isinstance(value, bool):
        return b"t" if value else b"f"
    if isinstance(value, float):
        if math.isinf(value):
            return b"Infinity" if value > 0 else b"-Infinity"
        if type_oid in (INT8, INT4, INT2):
            return str(int(round(value))).encode()
        return repr(value).encode()
    if isinstance(value, _dt.datetime):
        return value.isoformat(sep=" ").encode()
    if isinstance(value, (_dt.date, _dt.time)):
        return value.isoformat().encode()
    if isinstance(value, bytes):
        return b"\\x" + value.hex().encode()
    if hasattr(value, "item"):  # numpy scalar
        return encode_text(value.item(), type_oid)
    return str(value).encode("utf-8")


def _array_text(values) -> bytes:
    items = []
    for item in values:
        if item is None:
            items.append("NULL")
            continue
        text = encode_text(item, TEXT).decode()
        if text == "" or any(ch in text for ch in ' ,{}"\\') or text.upper() == "NULL":
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        items.append(text)
    return ("{" + ",".join(items) + "}").encode()


_PG_EPOCH = _dt.date(2000, 1, 1)


def encode_binary(value, type_oid: int) -> bytes | None:
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, (_dt.date, _dt.datetime)):
        value = value.item()
    if type_oid == BOOL:
        return b"\x01" if value else b"\x00"
    if type_oid == INT8:
        return struct.pack("!q", int(round(value)) if isinstance(value, float) else int(value))
    if type_oid in (INT4, OID, REGPROC, REGCLASS, REGTYPE):
        return struct.pack("!i" if type_oid == INT4 else "!I", int(value))
    if type_oid == INT2:
        return struct.pack("!h", int(value))
    if type_oid == FLOAT8:
        return struct.pack("!d", float(value))
    if type_oid == FLOAT4:
        return struct.pack("!f", float(value))
    if type_oid == DATE:
        if isinstance(value, _dt.datetime):
            value = value.date()
        return struct.pack("!i", (value - _PG_EPOCH).days)
    if type_oid == TIMESTAMP:
        delta = value - _dt.datetime(2000, 1, 1)
        micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
        return struct.pack("!q", micros)
    if type_oid == NUMERIC:
        return _numeric_binary(decimal.Decimal(str(value)))
    if type_oid in (TEXT, VARCHAR, NAME, BPCHAR, CHAR, UNKNOWN, JSON):
        return encode_text(value, type_oid)
    if type_oid in _ARRAY_ELEMENT:
        return _array_binary(list(value), _ARRAY_ELEMENT[type_oid])
    raise InvalidParameter(f"binary output is not supported for type {TYPE_NAMES.get(type_oid, type_oid)}")


def _array_binary(values: list, element: int) -> bytes:
    """One-dimensional array, lower bound 1 (array_send's layout)."""
    if not values:
        return struct.pack("!iiI", 0, 0, element)
    has_null = any(v is None for v in values)
    parts = [struct.pack("!iiIii", 1, int(has_null), element, len(values), 1)]
    for item in values:
        data = encode_binary(item, element)
        parts.append(struct.pack("!i", -1) if data is None else struct.pack("!i", len(data)) + data)
    return b"".join(parts)


def binary_supported(type_oid: int) -> bool:
    if type_oid in _ARRAY_ELEMENT:
        return binary_supported(_ARRAY_ELEMENT[type_oid])
    return type_oid in (BOOL, INT8, INT4, INT2, OID, REGPROC, REGCLASS, REGTYPE, FLOAT8, FLOAT4,
                        DATE, TIMESTAMP, NUMERIC, TEXT, VARCHAR, NAME, BPCHAR, CHAR, UNKNOWN, JSON)


def _numeric_binary(value: decimal.Decimal) -> bytes:
    if value.is_nan():
        return struct.pack("!hhHh", 0, 0, 0xC000, 0)
    sign, digits, exponent = value.as_tuple()
    # Base-10000 digits with the decimal point on a group boundary.
    text = "".join(map(str, digits))
    scale = max(0, -exponent)
    if exponent > 0:
        text += "0" * exponent
    if len(text) < scale:
        text = "0" * (scale - len(text)) + text  # e.g. 0.0001: digits "1", scale 4
    int_part = text[:len(text) - scale] if scale else text
    frac_part = text[len(text) - scale:] if scale else ""
    int_part = int_part.lstrip("0")
    int_part = "0" * ((-len(int_part)) % 4) + int_part
    frac_part = frac_part + "0" * ((-len(frac_part)) % 4)
    groups = [int(int_part[i:i + 4]) for i in range(0, len(int_part), 4)]
    weight = len(groups) - 1
    groups += [int(frac_part[i:i + 4]) for i in range(0, len(frac_part), 4)]
    while groups and groups[0] == 0:
        groups.pop(0)
        weight -= 1
    while groups and groups[-1] == 0:
        groups.pop()
    if not groups:
        weight = 0
    return struct.pack(f"!hhHh{len(groups)}H", len(groups), weight,
                       0x4000 if sign else 0, scale, *groups)


# ---------------------------------------------------------------- parameters


def decode_parameter(data: bytes | None, type_oid: int, binary: bool):
    """A parameter value as a Python object, from its wire form."""
    if data is None:
        return None
    try:
        if binary:
            return _decode_binary(data, type_oid)
        text = data.decode("utf-8")
    except (struct.error, UnicodeDecodeError, ValueError, OverflowError):
        raise InvalidParameter(f"invalid binary value for a parameter of type "
                               f"{TYPE_NAMES.get(type_oid, type_oid)}") from None
    try:
        if type_oid in (INT8, INT4, INT2, OID):
            return int(text.strip())
        if type_oid in (FLOAT8, FLOAT4):
            return float(text)
        if type_oid == NUMERIC:
            number = decimal.Decimal(text.strip())
            if not number.is_finite():
                raise ValueError
            return number
        if type_oid == BOOL:
            lowered = text.strip().lower()
            if lowered in ("t", "true", "yes", "on", "1", "y"):
                return True
            if lowered in ("f", "false", "no", "off", "0", "n"):
                return False
            raise ValueError
        if type_oid == DATE:
            return _dt.date.fromisoformat(text.strip())
        if type_oid in (TIMESTAMP, TIMESTAMPTZ):
            return _dt.datetime.fromisoformat(text.strip())
    except (ValueError, decimal.InvalidOperation):
        raise InvalidParameter(f"invalid input for a parameter of type "
                               f"{TYPE_NAMES.get(type_oid, type_oid)}") from None
    return text


def _decode_binary(data: bytes, type_oid: int):
    if type_oid == INT8:
        return struct.unpack("!q", data)[0]
    if type_oid == INT4:
        return struct.unpack("!i", data)[0]
    if type_oid == INT2:
        return struct.unpack("!h", data)[0]
    if type_oid == OID:
        return struct.unpack("!I", data)[0]
    if type_oid == FLOAT8:
        return struct.unpack("!d", data)[0]
    if type_oid == FLOAT4:
        return struct.unpack("!f", data)[0]
    if type_oid == BOOL:
        if len(data) != 1:
            raise ValueError
        return data != b"\x00"
    if type_oid == DATE:
        return _PG_EPOCH + _dt.timedelta(days=struct.unpack("!i", data)[0])
    if type_oid in (TIMESTAMP, TIMESTAMPTZ):
        return _dt.datetime(2000, 1, 1) + _dt.timedelta(microseconds=struct.unpack("!q", data)[0])
    if type_oid == NUMERIC:
        return _decode_numeric(data)
    if type_oid in (TEXT, VARCHAR, NAME, BPCHAR, CHAR, UNKNOWN, JSON, 0):
        return data.decode("utf-8")
    raise ValueError


def _decode_numeric(data: bytes) -> decimal.Decimal:
    ndigits, weight, sign, scale = struct.unpack("!hhHh", data[:8])
    if sign == 0xC000 or ndigits < 0:
        raise ValueError
    groups = struct.unpack(f"!{ndigits}H", data[8:8 + 2 * ndigits])
    value = decimal.Decimal(0)
    for i, group in enumerate(groups):
        value += decimal.Decimal(group).scaleb(4 * (weight - i))
    return -value if sign == 0x4000 else value


def sql_literal(value) -> str:
    """A SQL literal for a decoded parameter; strings are quoted with '' doubling (standard
    conforming strings), so a value can never close its literal."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return f"CAST('{'NaN' if math.isnan(value) else ('Infinity' if value > 0 else '-Infinity')}' AS DOUBLE)"
        return repr(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, _dt.datetime):
        return f"TIMESTAMP '{value.isoformat(sep=' ')}'"
    if isinstance(value, _dt.date):
        return f"DATE '{value.isoformat()}'"
    text = str(value)
    if "\x00" in text:
        raise InvalidParameter("a text parameter cannot contain a NUL character")
    return "'" + text.replace("'", "''") + "'"
