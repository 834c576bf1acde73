"""What the run's sinks cannot hold, checked for every record as it is read.

A value one sink cannot store (a NUL in PostgreSQL text, a line break in an id that a Vertex AI delete/ file
lists one per line, NaN in a JSON number) used to fail its write, and with it the whole run. Checked here, such a
record becomes one dead letter (reason `UNSTORABLE_REASON`, its raw line, a detail naming the flag and the field)
before it is embedded, and no sink gets it: every sink holds the same ids. Values a column type cannot hold at
all (an integer beyond 64 bits, NaN inside JSON) are kept fields of the wrong type instead: null, counted as
`kept_field_mismatch` (transforms.records.typed_value).
"""

from __future__ import annotations

import json
import math
from typing import NamedTuple

__all__ = ["UNSTORABLE_REASON", "POSTGRES_MAX_ID_BYTES", "SinkLimits", "breaks_lines"]

UNSTORABLE_REASON = "unstorable_value"
# A PostgreSQL B-tree row holds at most a third of a page (2704 bytes with 8 kB pages, less its header); the
# primary key on id needs its id in one. Kept below that with room for the row's own overhead.
POSTGRES_MAX_ID_BYTES = 2000
_LINE_BREAKS = ("\n", "\r")


def breaks_lines(record_id: str) -> bool:
    """Whether an id holds a line break, which a file of one id per line (Vertex AI's delete/) cannot list."""
    return any(mark in record_id for mark in _LINE_BREAKS)


class SinkLimits(NamedTuple):
    """Which limits apply: those of the sinks this run writes.

    Attributes:
        vertex: --output_vertex: ids are listed one per line in delete/ files, so no line break.
        vertex_numeric: --vertex_numeric_restricts fields: JSON numbers, so finite.
        postgres: --output_postgres: no NUL in text, an id short enough for the primary key's index.
    """

    vertex: bool = False
    vertex_numeric: tuple[str, ...] = ()
    postgres: bool = False

    def join(self, other: SinkLimits) -> SinkLimits:
        """The limits of both."""
        return SinkLimits(self.vertex or other.vertex, tuple(dict.fromkeys(self.vertex_numeric + other.vertex_numeric)),
                          self.postgres or other.postgres)

    def refusal(self, record_id: str, fields: tuple[tuple[str, object], ...] = ()) -> str | None:
        """Why a record with this id and these kept fields (typed values) cannot be stored, or None."""
        if self.vertex and breaks_lines(record_id):
            return ("--output_vertex: the id holds a line break, which a Vertex AI delete/ file (one id per line) "
                    "cannot hold")
        if self.postgres:
            reason = _postgres_refusal(record_id, fields)
            if reason:
                return reason
        for name, value in fields:
            if name in self.vertex_numeric and isinstance(value, float) and not math.isfinite(value):
                return (f"--output_vertex: field {name!r} is {value}, which a numeric restrict (a JSON number) "
                        "cannot hold")
        return None


def _postgres_refusal(record_id: str, fields) -> str | None:
    if "\x00" in record_id:
        return "--output_postgres: the id holds a NUL character, which PostgreSQL text cannot hold"
    size = len(record_id.encode("utf-8"))
    if size > POSTGRES_MAX_ID_BYTES:
        return (f"--output_postgres: the id is {size} bytes long; the table's primary key index holds ids of at "
                f"most {POSTGRES_MAX_ID_BYTES} bytes")
    for name, value in fields:
        if _holds_nul(value):
            return f"--output_postgres: field {name!r} holds a NUL character, which PostgreSQL text cannot hold"
    return None


def _holds_nul(value) -> bool:
    """Whether a typed kept value (a string, a list, or json text) holds U+0000, inside JSON text too (spelled
    \\u0000 there, which jsonb refuses as well)."""
    if isinstance(value, list):
        return any(_holds_nul(item) for item in value)
    if not isinstance(value, str):
        return False
    if "\x00" in value:
        return True
    if "\\u0000" not in value:
        return False
    try:
        return _nul_inside(json.loads(value))
    except ValueError:  # Not JSON text: a string column's value, whose backslash is only a backslash.
        return False


def _nul_inside(parsed) -> bool:
    if isinstance(parsed, str):
        return "\x00" in parsed
    if isinstance(parsed, dict):
        return any(_nul_inside(key) or _nul_inside(item) for key, item in parsed.items())
    if isinstance(parsed, list):
        return any(_nul_inside(item) for item in parsed)
    return False
