"""The stored observation row: one column specification, derived from :class:`Observation`.

Every stored field of an observation becomes a column of the same name and type; the
enrichment (catalogue match, egress point, destination geolocation, outcome) follows, then
the bookkeeping the store fills (``id``, ``scan_id``). The store creates and inserts from
:data:`COLUMNS`, the pipeline builds rows from it: adding a field to ``Observation`` adds
its column everywhere, and only needs a schema step to add it to existing databases
(``tests/test_store.py`` fails until there is one). Rows are plain lists in this order,
since millions of them cross a process boundary.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from monitor.observation import Observation


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: type  # int, float or str: the SQLite column type
    path: str | None  # attribute path on the enriched record; None: filled when stored


def _sql_type(hint: Any) -> type:
    """``int | None`` -> int; ``bool`` is stored as an integer."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    return int if hint is bool else hint


def _observation_columns() -> list[Column]:
    hints = typing.get_type_hints(Observation)
    return [
        Column(f.name, _sql_type(hints[f.name]), f"obs.{f.name}")
        for f in fields(Observation)
        if f.metadata.get("stored", True)
    ]


#: The stored observation, in row order.
COLUMNS: tuple[Column, ...] = (
    Column("id", int, None),  # monitor.ids.observation_id of the record (unique)
    Column("day", str, "day"),  # UTC day of ts: what reports and prune select on
    *_observation_columns(),
    Column("provider", str, "match.provider.id"),
    Column("provider_kind", str, "match.kind"),
    Column("match_pattern", str, "match.pattern"),
    Column("site", str, "egress.site"),
    Column("egress_ip", str, "egress.ip"),
    Column("egress_country", str, "egress.country"),
    Column("egress_source", str, "egress.source"),
    Column("egress_geo_country", str, "egress.geo_country"),  # beside the decided country
    Column("egress_logged", str, "obs.egress_ip"),  # the egress the log gave (re-evaluation)
    Column("dest_country", str, "dest_country"),
    Column("dest_asn", int, "dest_asn"),
    Column("outcome", str, "outcome"),
    Column("scan_id", int, None),
)
#: column name -> SQLite type, in row order
TYPES: dict[str, type] = {c.name: c.type for c in COLUMNS}
#: column name -> position in a row
COL: dict[str, int] = {c.name: i for i, c in enumerate(COLUMNS)}

_filled = [c.path is None for c in COLUMNS]
assert _filled == [True] + [False] * (len(COLUMNS) - 2) + [True], "id first, scan_id last"
assert len(COL) == len(COLUMNS), "column names are unique"


#: Where the store keeps each column (see :mod:`monitor.store`): values that vary from one
#: request to the next stay in the request's row; who made it (``client_ip``, ``user``) is
#: one entry of a dictionary of clients; everything else (the source, the scan, the
#: destination, the whole enrichment, the UTC day) repeats across many requests and is one
#: entry of a dictionary of contexts. A new field lands in the context unless listed here.
PER_REQUEST: tuple[str, ...] = ("id", "ts", "line", "bytes_out", "bytes_in", "duration", "url",
                                "client_port", "ts_end", "packets_out", "packets_in")  # fmt: skip
CLIENT: tuple[str, ...] = ("client_ip", "user")
CONTEXT: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.name not in PER_REQUEST + CLIENT)


def compiled(name: str, args: str, expression: str) -> Callable[..., Any]:
    """``def name(args): return expression``, for the per-record work a specification
    decides once (row and key layouts): a display of plain attribute reads and indexing is
    the cheapest per-record work Python has. The expression names fields and columns of
    this module's specification, never anything read from an input."""
    namespace: dict[str, Any] = {}
    source = f"def {name}({args}):\n    return {expression}\n"
    exec(compile(source, f"<monitor.rows.{name}>", "exec"), namespace)  # noqa: S102
    return namespace[name]


#: The stored row of an enriched record (``id`` and ``scan_id`` still to fill).
observation_row: Callable[[Any], list[Any]] = compiled(
    "observation_row", "e", f"[None, {', '.join(f'e.{c.path}' for c in COLUMNS[1:-1])}, None]"
)


def row_builder(constant: Iterable[str]) -> Callable[[Any, Sequence[Any]], list[Any]]:
    """A function ``(obs, template) -> row`` for records that share the observation fields
    ``constant`` and all that follows from them (their enrichment, the day): each column
    read from another observation field is read from ``obs``, every other column is the
    ``template``'s (a row of such a record, as stored: pseudonymised or not)."""
    fixed = set(constant)
    items = [
        f"o.{c.path[4:]}"
        if c.path and c.path.startswith("obs.") and c.path[4:] not in fixed
        else f"t[{i}]"
        for i, c in enumerate(COLUMNS)
    ]
    return compiled("build_row", "o, t", f"[{', '.join(items)}]")


def observation_values(**values: Any) -> list[Any]:
    """A stored row from keyword fields (unknown columns are an error)."""
    row: list[Any] = [None] * len(COLUMNS)
    for name, value in values.items():
        row[COL[name]] = value
    return row
