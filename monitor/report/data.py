"""The report's period, query and model, and the context its sections compute from.

Each section (:mod:`monitor.report.sections`) computes its own figures from the shared
:class:`Context`; renderers (HTML, Markdown, CSV, JSON) only format what the sections
computed; they never count. The heavy lifting is a handful of ``GROUP BY`` queries over the period's
observations (typed methods of :class:`~monitor.store.Store`; the ``day`` index bounds the
scan); pandas folds those small aggregates into the report's tables.

Definitions (also printed in the report's methods section):

* **Period** ``[since, until)``, in calendar days of ``--tz`` (default UTC); the **previous period** is the one before it
  (the previous day, the previous ISO week, the previous calendar month, or for
  ``--since/--until`` the same length immediately before).
* **Requests**: stored LLM observations whose timestamp falls in the period.
  **Blocked**: their ``outcome`` is ``blocked``. Bytes are sums of what the logs supply
  (``null`` when no record of the group has the field, e.g. Squid logs no upload size).
* **Incidents**: *new* = first seen in the period; *active* = seen in the period
  (first seen before its end, last seen after its start); *open* / *acknowledged* = the
  current status of incidents first seen before the end of the period (the backlog when
  the report was made); *resolved* = incidents resolved during the period (audit trail).
"""

from __future__ import annotations

import calendar
import contextlib
import ctypes
import json
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo

import pandas as pd

from monitor import __version__
from monitor.config import REPORT_PERIODS
from monitor.observation import MAX_SUM
from monitor.observation import iso_datetime as _iso
from monitor.store import Rows, Store, TrafficFilter

if TYPE_CHECKING:
    from monitor.catalog import Catalog
    from monitor.config import Config
    from monitor.geo import GeoResolver
    from monitor.policy import RuleSet
    from monitor.report.section import Section

PERIODS = REPORT_PERIODS  # the configuration's vocabulary, defined once there
DEFAULT_TOP = 20
OTHER = "(other)"  # the timeline's series of the providers not drawn on their own
_DAY = 86400


# --------------------------------------------------------------------------- the period


@dataclass(frozen=True)
class Window:
    """A report period ``[since, until)``: calendar days of the time zone ``tz`` (UTC unless
    asked), held as UTC instants."""

    period: str  # daily | weekly | monthly | custom
    since: datetime
    until: datetime
    tz: str = "UTC"

    @property
    def seconds(self) -> float:
        return (self.until - self.since).total_seconds()

    @property
    def first_day(self) -> str:
        return self.since.astimezone(_zone(self.tz)).strftime("%Y-%m-%d")

    @property
    def last_day(self) -> str:
        """The last day (in ``tz``) that has any of the period in it (inclusive)."""
        last = self.until - timedelta(microseconds=1)
        return last.astimezone(_zone(self.tz)).strftime("%Y-%m-%d")

    @property
    def label(self) -> str:
        if self.period == "daily":
            return self.first_day
        if self.period == "weekly":
            year, week, _ = self.since.astimezone(_zone(self.tz)).isocalendar()
            return f"{year}-W{week:02d} ({self.first_day} – {self.last_day})"
        if self.period == "monthly":
            return self.first_day[:7]
        return f"{_iso(self.since)} – {_iso(self.until)}"

    def previous(self) -> Window:
        if self.period == "monthly":
            local = self.since.astimezone(_zone(self.tz)).date()
            start = _midnight((local - timedelta(days=1)).replace(day=1), self.tz)
            return Window(self.period, start, self.since, self.tz)
        if self.period in ("daily", "weekly"):
            days = round(self.seconds / _DAY)  # whole local days, across a DST change too
            local = self.since.astimezone(_zone(self.tz)).date()
            return Window(
                self.period, _midnight(local - timedelta(days=days), self.tz), self.since, self.tz
            )
        return Window("custom", self.since - (self.until - self.since), self.since, self.tz)

    def bucket(self) -> tuple[str, int]:
        """Timeline resolution: hours for a day or less, days up to ~2 months, else weeks."""
        if self.seconds <= 2 * _DAY:
            return "hour", 3600
        if self.seconds <= 92 * _DAY:
            return "day", _DAY
        return "week", 7 * _DAY


def period_window(
    period: str, day: date | None = None, today: date | None = None, tz: str = "UTC"
) -> Window:
    """The ``period`` that contains ``day`` (default: yesterday), in calendar days of ``tz``.

    Run on a Monday, ``weekly`` is the week that just ended; run on the 1st, ``monthly`` is
    the month that just ended; ``daily`` is yesterday.
    """
    if period not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}")
    if day is None:
        day = (today or datetime.now(_zone(tz)).date()) - timedelta(days=1)
    if period == "daily":
        start, end = day, day + timedelta(days=1)
    elif period == "weekly":
        start = day - timedelta(days=day.weekday())
        end = start + timedelta(days=7)
    else:
        start = day.replace(day=1)
        end = start + timedelta(days=calendar.monthrange(day.year, day.month)[1])
    return Window(period, _midnight(start, tz), _midnight(end, tz), tz)


def custom_window(
    since: str, until: str | None = None, now: datetime | None = None, tz: str = "UTC"
) -> Window:
    """``--since/--until`` (ISO 8601 UTC strings as :func:`monitor.timespec.parse_when` gives)."""
    start = _parse_iso(since)
    if until:
        end = _parse_iso(until)
    else:  # up to now, including this second (audit events are stamped to the second)
        end = (now or datetime.now(UTC)).replace(microsecond=0) + timedelta(seconds=1)
    if end <= start:
        raise ValueError("--until must be after --since")
    return Window("custom", start, end, tz)


def period_ended(window: Window, today: date) -> bool:
    """True when ``window`` ended exactly at the start of ``today`` (its report is due)."""
    return window.until == _midnight(today, window.tz)


def _zone(tz: str) -> tzinfo:
    return UTC if tz == "UTC" else ZoneInfo(tz)


def _midnight(d: date, tz: str = "UTC") -> datetime:
    """The start of day ``d`` in ``tz``, as a UTC instant."""
    return datetime(d.year, d.month, d.day, tzinfo=_zone(tz)).astimezone(UTC)


def _parse_iso(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- the model


class ReportSource(Protocol):
    """What a report reads: the store, and the catalogue, geodata, rules and configuration
    in force (:class:`monitor.app.App` is one)."""

    @property
    def store(self) -> Store: ...
    @property
    def catalog(self) -> Catalog: ...
    @property
    def geo(self) -> GeoResolver: ...
    @property
    def rules(self) -> RuleSet: ...
    @property
    def config(self) -> Config: ...
    @property
    def db_path(self) -> Path: ...


@dataclass(frozen=True)
class ReportQuery:
    window: Window
    sites: tuple[str, ...] = ()
    providers: tuple[str, ...] = ()
    top: int = DEFAULT_TOP
    now: datetime | None = None  # when the report is made (default: now)
    users: tuple[str, ...] = ()
    clients: tuple[str, ...] = ()  # addresses, CIDRs or pseudonyms


@dataclass
class Report:
    """The whole report as plain data: ``meta`` and each section's figures under its keys
    (what the JSON format prints), with the sections that render them."""

    meta: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)
    sections: tuple[Section, ...] = field(default=(), repr=False, compare=False)

    def __getattr__(self, name: str) -> Any:
        """A section's figures as an attribute: ``report.totals``, ``report.findings``."""
        try:
            return self.__dict__["data"][name]
        except KeyError:
            raise AttributeError(name) from None

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, **self.data}


class Context:
    """What the sections of one report share: the query and its sources, the store reads
    every report needs and those the sections asked for (run side by side before any
    section computes), and figures several sections read, each computed once."""

    def __init__(self, source: ReportSource, q: ReportQuery):
        self.source = source
        self.store = source.store
        self.query = q
        self.now = q.now or datetime.now(UTC)
        self.window, self.previous = q.window, q.window.previous()
        chosen = self.store.clients_matching(q.clients) if q.clients else None
        #: the filter of incidents and findings; :attr:`traffic`: of both periods' requests
        self.filter = TrafficFilter(q.sites, q.providers, q.users, chosen)
        self.traffic = self.store.traffic_filter(
            self.filter, self.previous.since, self.window.until
        )
        self.bucket, self.width = self.window.bucket()
        self.origin = _floor(self.window.since, self.width, self.window.tz)  # whole hours/days
        #: the cube's read counts the processing locations too (see its store method)
        self.cube_counts_processing = self.store.cube_counts_processing(
            self.window.since, self.window.until, self.previous.since, self.origin, self.width,
            self.traffic,
        )  # fmt: skip
        self.fetched: dict[str, Any] = {}
        self._contexts: tuple[Rows, Rows] | None = None
        self._contexts_lock = threading.Lock()

    def shared_queries(self) -> dict[str, Callable[[], Any]]:
        """The traffic reads most sections fold: A the cube (both periods, at the grain
        every traffic table and the timeline need), B who went where, C the sources behind
        the period, D distinct clients of the previous period."""
        store, win, prev, f = self.store, self.window, self.previous, self.traffic
        return {
            "cube": self._cube_and_processing
            if self.cube_counts_processing
            else lambda: store.traffic_cube(
                win.since, win.until, prev.since, self.origin, self.width, f
            ),
            "who": lambda: store.client_destinations(win.since, win.until, f),
            "sources": lambda: self.context_read(0),
            "previous_clients": lambda: store.distinct_clients(prev.since, prev.until, f),
        }

    def _cube_and_processing(self) -> Rows:
        """The cube; the processing locations counted with it go to :attr:`fetched`
        (``processing``: see :meth:`Store.cube_counts_processing`)."""
        win, prev = self.window, self.previous
        cube, self.fetched["processing"] = self.store.traffic_cube_processing(
            win.since, win.until, prev.since, self.origin, self.width, self.traffic
        )
        return cube

    def context_read(self, part: int) -> Rows:
        """:meth:`Store.traffic_sources` (``part`` 0) or :meth:`Store.processing_locations`
        (1) of the period. With a filter on users or clients both sum the same rows, so
        they are read once (:meth:`Store.context_figures`): the first query to ask reads
        them, the other waits."""
        win, f = self.window, self.traffic
        if not f.names_clients:
            read = self.store.processing_locations if part else self.store.traffic_sources
            return read(win.since, win.until, f)
        with self._contexts_lock:
            if self._contexts is None:
                self._contexts = self.store.context_figures(win.since, win.until, f)
        return self._contexts[part]

    def reading(self, read: Callable[[Store], Any]) -> Callable[[], Any]:
        """A query for :meth:`fetch` that calls ``read`` with the store on a read-only
        connection of the worker thread's own (see :meth:`Store.reading`)."""

        def query() -> Any:
            with self.store.reading() as store:
                return read(store)

        return query

    def fetch(self, queries: dict[str, Callable[[], Any]]) -> None:
        """Run ``queries`` side by side, each on its own read-only connection (SQLite
        releases the GIL while it works); the catalogue loads meanwhile."""
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="report") as pool:
            futures = {name: pool.submit(fn) for name, fn in queries.items()}
            self.source.catalog  # noqa: B018 - loads (pure Python) while SQLite works
            self.fetched.update({name: f.result() for name, f in futures.items()})
        _trim_heap()

    @cached_property
    def cube(self) -> pd.DataFrame:
        """Requests by period, bucket, provider, kind, site and egress country."""
        return frame(self.fetched["cube"])

    @cached_property
    def current(self) -> pd.DataFrame:
        """The cube's rows of this period."""
        cube = self.cube
        return cube[cube.prev == 0] if len(cube) else cube

    @cached_property
    def earlier(self) -> pd.DataFrame:
        """The cube's rows of the previous period."""
        cube = self.cube
        return cube[cube.prev == 1] if len(cube) else cube

    @cached_property
    def who(self) -> pd.DataFrame:
        """Client x destination in the period."""
        return frame(self.fetched["who"])

    @cached_property
    def sources(self) -> pd.DataFrame:
        """Scans and input files behind the period's observations."""
        return frame(self.fetched["sources"])

    @property
    def previous_clients(self) -> int:
        return self.fetched["previous_clients"]

    @cached_property
    def destinations(self) -> pd.DataFrame:
        """Destination hosts of the period, folded from :attr:`who`."""
        return _destinations(self.who)


def compute_report(source: ReportSource, q: ReportQuery, sections: Sequence[Section]) -> Report:
    """Compute ``sections`` of the report for ``q`` from ``source``
    (:func:`monitor.report.build_report` computes the registered ones)."""
    ctx = Context(source, q)
    queries = ctx.shared_queries()
    for section in sections:
        queries.update(section.queries(ctx))
    ctx.fetch(queries)
    win, prev, now = ctx.window, ctx.previous, ctx.now
    meta = {
        "title": "apiwatch report",
        "period": win.period,
        "label": win.label,
        "since": _iso(win.since),
        "until": _iso(win.until),
        "first_day": win.first_day,
        "last_day": win.last_day,
        "tz": win.tz,
        "complete": now >= win.until,
        "previous": {"since": _iso(prev.since), "until": _iso(prev.until), "label": prev.label},
        "generated": _iso(now),
        "filters": {"site": list(q.sites), "provider": list(q.providers)}
        | {k: list(v) for k, v in (("user", q.users), ("client", q.clients)) if v},  # fmt: skip
        "top": q.top,
        "apiwatch_version": __version__,
        "database": str(source.db_path),
    }
    data: dict[str, Any] = {}
    for section in sections:
        data.update(section.compute(ctx))
    return Report(meta, data, tuple(sections))


# --------------------------------------------------------------------------- helpers


def frame(found: Rows) -> pd.DataFrame:
    return pd.DataFrame.from_records(found.rows, columns=found.columns)


def py(value: Any) -> Any:
    """numpy/pandas scalars to plain Python; NaN/NA to None."""
    if value is None:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    if hasattr(value, "item"):
        return value.item()
    return value


def sum_or_none(series: pd.Series) -> int | None:
    """Sum of byte sums as the store makes them (:func:`monitor.store.saturated_sum`): exact
    below MAX_SUM and MAX_SUM from there (pandas' int64 sum wraps past 64 bits, a float64 one
    rounds); null when every value is null (as SQL's SUM)."""
    values = series.dropna().tolist()
    return min(sum(map(int, values)), MAX_SUM) if values else None


def pct(cur: int | None, prev: int | None) -> float | None:
    if cur is None or not prev:
        return None
    return round((cur - prev) * 100.0 / prev, 1)


def int_or_none(value: Any) -> int | None:
    """A byte total as an int of at most MAX_SUM: a column with nulls reaches pandas as
    float64, where MAX_SUM reads as 2**63."""
    value = py(value)
    return None if value is None else min(int(value), MAX_SUM)


def ranked(series: pd.Series) -> list[str]:
    """Index values by their count, largest first, ties by name."""
    pairs = sorted(((str(k), int(v)) for k, v in series.items()), key=lambda p: (-p[1], p[0]))
    return [k for k, _ in pairs]


def _trim_heap() -> None:
    """Give the memory SQLite freed in the worker threads back to the system: glibc keeps
    it in their own arenas, where the sections' pandas work cannot reuse it (a month in
    Asia/Shanghai peaked 15 MB above the same report in UTC, and level with it in one
    arena). Nothing where the C library has no ``malloc_trim``."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def _floor(when: datetime, width: int, tz: str = "UTC") -> datetime:
    step = min(width, _DAY)  # weeks start on the day the period starts
    offset = when.astimezone(_zone(tz)).utcoffset().total_seconds()  # type: ignore[union-attr]
    return datetime.fromtimestamp((when.timestamp() + offset) // step * step - offset, UTC)


def _destinations(who: pd.DataFrame) -> pd.DataFrame:
    """Destination hosts of the period, folded from the client x destination table."""
    if not len(who):
        return who
    keys = ["dest_host", "provider", "kind"]
    filled = who.assign(**{k: who[k].fillna("\0") for k in keys})
    dest = (
        filled.groupby(keys)
        .agg(
            requests=("requests", "sum"),
            blocked=("blocked", "sum"),
            clients=("client_ip", "nunique"),
            bytes_out=("bytes_out", sum_or_none),
            bytes_in=("bytes_in", sum_or_none),
            example_url=("example_url", lambda s: s.dropna().min() if s.notna().any() else None),
        )
        .reset_index()
    )
    for k in keys:
        dest[k] = dest[k].where(dest[k] != "\0", None)
    return dest


def dest_row(r: Any) -> dict[str, Any]:
    return {
        "dest_host": py(r.dest_host),
        "provider": py(r.provider),
        "kind": py(r.kind),
        "requests": int(r.requests),
        "blocked": int(r.blocked),
        "clients": int(r.clients),
        "bytes_out": int_or_none(r.bytes_out),
        "bytes_in": int_or_none(r.bytes_in),
        "example_url": py(r.example_url),
    }


def sorted_dest(dest: pd.DataFrame) -> pd.DataFrame:
    d = dest.assign(_h=dest.dest_host.fillna(""), _p=dest.provider.fillna(""))
    return d.sort_values(["requests", "_h", "_p"], ascending=[False, True, True], kind="stable")


def loads(text: Any, default: Any) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return default
