"""Every figure of a report, computed in one place from the store's queries and pandas.

Renderers (HTML, Markdown, CSV, JSON) only format what :func:`build_report` returns; they
never count. The heavy lifting is a handful of ``GROUP BY`` queries over the period's
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
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo

import pandas as pd

from monitor import __version__
from monitor.config import REPORT_PERIODS
from monitor.observation import iso_datetime as _iso
from monitor.policy import SEVERITIES
from monitor.report.findings import findings_part
from monitor.report.processing import processing_summary
from monitor.store import Rows, Store, TrafficFilter

if TYPE_CHECKING:
    from monitor.catalog import Catalog
    from monitor.config import Config
    from monitor.geo import GeoResolver
    from monitor.policy import RuleSet

PERIODS = REPORT_PERIODS  # the configuration's vocabulary, defined once there
DEFAULT_TOP = 20
LIST_LIMIT = 50  # incident lists: this many rows (the totals count them all)
EVENT_LIMIT = 200
PROBLEM_SAMPLES = 20
TIMELINE_SERIES = 8  # providers drawn on their own; the rest is "other"
OTHER = "(other)"
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


@dataclass
class Report:
    """The whole report as plain data: what the JSON format prints, field for field."""

    meta: dict[str, Any]
    totals: list[dict[str, Any]]
    timeline: dict[str, Any]
    by_provider: list[dict[str, Any]]
    by_site: list[dict[str, Any]]
    by_egress_country: list[dict[str, Any]]
    incidents: dict[str, Any]
    top_clients: list[dict[str, Any]]
    top_destinations: list[dict[str, Any]]
    relays: dict[str, Any]
    events: dict[str, Any]
    processing: dict[str, Any] = field(default_factory=dict)  # where prompts are processed
    methods: dict[str, Any] = field(default_factory=dict)
    findings: dict[str, Any] = field(default_factory=dict)  # see monitor.report.findings

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


TOTAL_METRICS = (
    ("requests", "LLM API requests"),
    ("blocked", "blocked by the proxy"),
    ("bytes_out", "bytes sent"),
    ("bytes_in", "bytes received"),
    ("clients", "clients"),
    ("providers", "providers"),
    ("sites", "sites"),
    ("egress_countries", "egress countries"),
    ("relay_requests", "requests to relays"),
    ("incidents_new", "new incidents"),
    ("incidents_new_high", "new incidents, high or critical"),
)


# --------------------------------------------------------------------------- building


def build_report(app: ReportSource, q: ReportQuery) -> Report:
    """Assemble the report for ``q`` from ``app.store`` (and ``app.catalog``/``rules``)."""
    store = app.store
    now = q.now or datetime.now(UTC)
    win, prev = q.window, q.window.previous()
    f = TrafficFilter(q.sites, q.providers)
    bucket_name, width = win.bucket()
    origin = _floor(win.since, width, win.tz)  # buckets are whole hours or days of --tz

    # The heavy GROUP BYs run side by side, each on its own read-only connection: A the
    # cube (both periods, at the grain every traffic table and the timeline need), B who
    # went where, C the sources behind the period, D distinct clients of the previous period.
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="report") as pool:
        a = pool.submit(store.traffic_cube, win.since, win.until, prev.since, origin, width, f)
        b = pool.submit(store.client_destinations, win.since, win.until, f)
        c = pool.submit(store.traffic_sources, win.since, win.until, f)
        d = pool.submit(store.distinct_clients, prev.since, prev.until, f)
        e = pool.submit(store.processing_locations, win.since, win.until, f)
        catalog = app.catalog  # loads (pure Python) while SQLite works
        cube, who, sources = _frame(a.result()), _frame(b.result()), _frame(c.result())
        prev_clients = d.result()
    cur = cube[cube.prev == 0] if len(cube) else cube
    old = cube[cube.prev == 1] if len(cube) else cube
    dest = _destinations(who)

    incidents = _incidents(store, win, prev, f, q.top)

    totals_cur = _totals(cur, who, len(set(who.client_ip.dropna())) if len(who) else 0)
    totals_cur["incidents_new"] = incidents["totals"]["new"]
    totals_cur["incidents_new_high"] = incidents["totals"]["new_high"]
    totals_prev = _totals(old, None, prev_clients)
    totals_prev["incidents_new"] = incidents["previous"]["new"]
    totals_prev["incidents_new_high"] = incidents["previous"]["new_high"]
    totals = [
        {
            "metric": key,
            "label": label,
            "current": totals_cur[key],
            "previous": totals_prev[key],
            "change": _delta(totals_cur[key], totals_prev[key]),
            "change_pct": _pct(totals_cur[key], totals_prev[key]),
        }
        for key, label in TOTAL_METRICS
    ]

    by_provider = _breakdown(cur, old, who, "provider")
    for row in by_provider:
        entry = catalog.providers.get(row["provider"])
        row["name"] = entry.name if entry else None
        row["kinds"] = sorted(set(cur.loc[cur.provider == row["provider"], "kind"].dropna()))
    by_site = _breakdown(cur, old, who, "site")
    by_country = _breakdown(cur, old, who, "country")
    for row in by_country:
        row["egress_country"] = row.pop("country")

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
        "filters": {"site": list(q.sites), "provider": list(q.providers)},
        "top": q.top,
        "apiwatch_version": __version__,
        "database": str(app.db_path),
    }
    return Report(
        meta=meta,
        totals=totals,
        timeline=_timeline(cur, win, origin, bucket_name, width),
        by_provider=by_provider,
        by_site=by_site,
        by_egress_country=by_country,
        incidents=incidents,
        top_clients=_top_clients(who, q.top),
        top_destinations=_top_destinations(dest, q.top),
        relays=_relays(dest, who, catalog),
        events=store.status_changes(win.since, win.until, f, EVENT_LIMIT),
        methods=_methods(app, win, sources),
        findings=findings_part(store, win, f, q.top, {e.id: e.name for e in catalog.entries()}),
        processing=processing_summary(e.result(), app.config, catalog),
    )


def _frame(found: Rows) -> pd.DataFrame:
    return pd.DataFrame.from_records(found.rows, columns=found.columns)


def _py(value: Any) -> Any:
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


def _sum(series: pd.Series) -> int | None:
    """Sum that stays null when every value is null (as SQL's SUM)."""
    value = series.sum(min_count=1) if len(series) else None
    return None if value is None or pd.isna(value) else int(value)


def _delta(cur: int | None, prev: int | None) -> int | None:
    if cur is None or prev is None:
        return None
    return cur - prev


def _pct(cur: int | None, prev: int | None) -> float | None:
    if cur is None or not prev:
        return None
    return round((cur - prev) * 100.0 / prev, 1)


def _totals(cube: pd.DataFrame, who: pd.DataFrame | None, clients: int) -> dict[str, Any]:
    def distinct(col: str) -> int:
        return int(cube.loc[cube.requests > 0, col].dropna().nunique()) if len(cube) else 0

    return {
        "requests": int(cube.requests.sum()) if len(cube) else 0,
        "blocked": int(cube.blocked.sum()) if len(cube) else 0,
        "bytes_out": _sum(cube.bytes_out) if len(cube) else None,
        "bytes_in": _sum(cube.bytes_in) if len(cube) else None,
        "clients": int(clients),
        "providers": distinct("provider"),
        "sites": distinct("site"),
        "egress_countries": distinct("country"),
        "relay_requests": int(cube.loc[cube.kind == "relay", "requests"].sum()) if len(cube) else 0,
    }


def _breakdown(
    cur: pd.DataFrame, old: pd.DataFrame, who: pd.DataFrame, key: str
) -> list[dict[str, Any]]:
    """One row per value of ``key``: requests, blocked, bytes, clients, previous requests."""
    if not len(cur) and not len(old):
        return []
    rows: dict[Any, dict[str, Any]] = {}
    if len(cur):
        grouped = cur.groupby(key, dropna=False).agg(
            requests=("requests", "sum"),
            blocked=("blocked", "sum"),
            bytes_out=("bytes_out", lambda s: s.sum(min_count=1)),
            bytes_in=("bytes_in", lambda s: s.sum(min_count=1)),
        )
        clients = {
            _py(k): int(v)
            for k, v in (
                who.groupby(key, dropna=False).client_ip.nunique().items() if len(who) else ()
            )
        }
        for k, r in grouped.iterrows():
            k = _py(k)
            rows[k] = {
                key: k,
                "requests": int(r.requests),
                "blocked": int(r.blocked),
                "bytes_out": _int_or_none(r.bytes_out),
                "bytes_in": _int_or_none(r.bytes_in),
                "clients": clients.get(k, 0),
                "previous_requests": 0,
            }
    if len(old):
        for k, n in old.groupby(key, dropna=False).requests.sum().items():
            k = _py(k)
            row = rows.setdefault(
                k,
                {
                    key: k,
                    "requests": 0,
                    "blocked": 0,
                    "bytes_out": None,
                    "bytes_in": None,
                    "clients": 0,
                    "previous_requests": 0,
                },
            )
            row["previous_requests"] = int(n)
    total = sum(r["requests"] for r in rows.values())
    out = []
    for row in rows.values():
        row["share_pct"] = round(row["requests"] * 100.0 / total, 1) if total else 0.0
        row["change"] = row["requests"] - row["previous_requests"]
        row["change_pct"] = _pct(row["requests"], row["previous_requests"])
        out.append(row)
    out.sort(key=lambda r: (-r["requests"], -r["previous_requests"], str(r[key] or "")))
    return out


def _floor(when: datetime, width: int, tz: str = "UTC") -> datetime:
    step = min(width, _DAY)  # weeks start on the day the period starts
    offset = when.astimezone(_zone(tz)).utcoffset().total_seconds()  # type: ignore[union-attr]
    return datetime.fromtimestamp((when.timestamp() + offset) // step * step - offset, UTC)


def _timeline(
    cur: pd.DataFrame, win: Window, origin: datetime, bucket_name: str, width: int
) -> dict[str, Any]:
    n = max(1, int(-(-(win.until - origin).total_seconds() // width)))
    starts = [origin + timedelta(seconds=width * i) for i in range(n)]
    fmt = "%Y-%m-%dT%H:00" if bucket_name == "hour" else "%Y-%m-%d"
    fmt += "Z" if bucket_name == "hour" and win.tz == "UTC" else ""
    zone = _zone(win.tz)
    out: dict[str, Any] = {
        "bucket": bucket_name,
        "buckets": [s.astimezone(zone).strftime(fmt) for s in starts],
        "series": [],
    }
    if not len(cur):
        return out
    per = cur.groupby(["provider", "bucket"]).requests.sum()
    ranking = cur.groupby("provider").requests.sum().sort_values(ascending=False, kind="stable")
    ranking = ranking.sort_index().sort_values(ascending=False, kind="stable")
    shown = list(ranking.index[:TIMELINE_SERIES])
    if len(ranking) > TIMELINE_SERIES + 1:
        rest = list(ranking.index[TIMELINE_SERIES:])
    else:
        shown, rest = list(ranking.index), []
    for name in shown:
        values = [0] * n
        for b, v in per.loc[name].items():
            if 0 <= int(b) < n:
                values[int(b)] += int(v)
        out["series"].append({"provider": name, "values": values, "total": sum(values)})
    if rest:
        values = [0] * n
        for name in rest:
            for b, v in per.loc[name].items():
                if 0 <= int(b) < n:
                    values[int(b)] += int(v)
        out["series"].append(
            {"provider": OTHER, "providers": rest, "values": values, "total": sum(values)}
        )
    return out


def _top_clients(who: pd.DataFrame, top: int) -> list[dict[str, Any]]:
    if not len(who):
        return []
    per = (
        who.groupby("client_ip", dropna=False)
        .agg(
            requests=("requests", "sum"),
            blocked=("blocked", "sum"),
            bytes_out=("bytes_out", lambda s: s.sum(min_count=1)),
            bytes_in=("bytes_in", lambda s: s.sum(min_count=1)),
        )
        .reset_index()
    )
    per["key"] = per.client_ip.fillna("")
    per = per.sort_values(["requests", "key"], ascending=[False, True], kind="stable").head(top)
    chosen = who[who.client_ip.isin(per.client_ip.dropna())]
    out = []
    for r in per.itertuples(index=False):
        rows = chosen[chosen.client_ip == r.client_ip]
        users = sorted({u for text in rows.users for u in _loads(text, []) if u is not None})
        out.append(
            {
                "client_ip": _py(r.client_ip),
                "users": users,
                "sites": _ranked(rows.dropna(subset=["site"]).groupby("site").requests.sum()),
                "providers": _ranked(rows.groupby("provider").requests.sum()),
                "requests": int(r.requests),
                "blocked": int(r.blocked),
                "bytes_out": _int_or_none(r.bytes_out),
                "bytes_in": _int_or_none(r.bytes_in),
            }
        )
    return out


def _int_or_none(value: Any) -> int | None:
    value = _py(value)
    return None if value is None else int(value)


def _ranked(series: pd.Series) -> list[str]:
    """Index values by their count, largest first, ties by name."""
    pairs = sorted(((str(k), int(v)) for k, v in series.items()), key=lambda p: (-p[1], p[0]))
    return [k for k, _ in pairs]


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
            bytes_out=("bytes_out", lambda s: s.sum(min_count=1)),
            bytes_in=("bytes_in", lambda s: s.sum(min_count=1)),
            example_url=("example_url", lambda s: s.dropna().min() if s.notna().any() else None),
        )
        .reset_index()
    )
    for k in keys:
        dest[k] = dest[k].where(dest[k] != "\0", None)
    return dest


def _dest_row(r: Any) -> dict[str, Any]:
    return {
        "dest_host": _py(r.dest_host),
        "provider": _py(r.provider),
        "kind": _py(r.kind),
        "requests": int(r.requests),
        "blocked": int(r.blocked),
        "clients": int(r.clients),
        "bytes_out": _int_or_none(r.bytes_out),
        "bytes_in": _int_or_none(r.bytes_in),
        "example_url": _py(r.example_url),
    }


def _sorted_dest(dest: pd.DataFrame) -> pd.DataFrame:
    d = dest.assign(_h=dest.dest_host.fillna(""), _p=dest.provider.fillna(""))
    return d.sort_values(["requests", "_h", "_p"], ascending=[False, True, True], kind="stable")


def _top_destinations(dest: pd.DataFrame, top: int) -> list[dict[str, Any]]:
    if not len(dest):
        return []
    return [_dest_row(r) for r in _sorted_dest(dest).head(top).itertuples(index=False)]


def _relays(dest: pd.DataFrame, who: pd.DataFrame, catalog: Any) -> dict[str, Any]:
    rows = dest[dest.kind == "relay"] if len(dest) else dest
    clients = int(who.loc[who.kind == "relay", "client_ip"].dropna().nunique()) if len(who) else 0
    hosts = []
    for r in _sorted_dest(rows).itertuples(index=False) if len(rows) else ():
        row = _dest_row(r)
        entry = catalog.providers.get(row["provider"])
        row["category"] = entry.category if entry else None
        row["name"] = entry.name if entry else None
        hosts.append(row)
    return {
        "requests": int(rows.requests.sum()) if len(rows) else 0,
        "clients": clients,
        "hosts": hosts,
    }


# --------------------------------------------------------------------------- incidents


def _incidents(
    store: Store, win: Window, prev: Window, f: TrafficFilter, top: int
) -> dict[str, Any]:
    high = SEVERITIES.index("high")
    rows = _frame(store.incident_counts(win.since, win.until, prev.since, f))
    metrics = ["new", "active", "open", "acknowledged", "resolved", "previous_new"]
    if len(rows):
        rows = rows[(rows[metrics] > 0).any(axis=1)]
        rows = rows.sort_values(["rank", "rule"], ascending=[False, True], kind="stable")
    by_rule = [
        {"rule": r.rule, "severity": r.severity, **{m: int(getattr(r, m)) for m in metrics}}
        for r in rows.itertuples(index=False)
    ]
    by_severity = []
    for sev in reversed(SEVERITIES):
        part = rows[rows.severity == sev] if len(rows) else rows
        by_severity.append(
            {"severity": sev, **{m: int(part[m].sum()) if len(part) else 0 for m in metrics}}
        )
    totals = {m: sum(r[m] for r in by_severity) for m in metrics}
    totals["new_high"] = sum(
        r["new"] for r in by_severity if SEVERITIES.index(r["severity"]) >= high
    )
    previous = {
        "new": totals.pop("previous_new"),
        "new_high": sum(
            r["previous_new"] for r in by_severity if SEVERITIES.index(r["severity"]) >= high
        ),
    }

    top_n = max(LIST_LIMIT, top)
    lists = {}
    for which in ("new", "open", "resolved"):
        items = store.incident_list(which, win.since, win.until, f, top_n)
        lists[which] = {"items": items, "shown": len(items)}
    lists["new"]["total"] = totals["new"]
    lists["open"]["total"] = totals["open"] + totals["acknowledged"]
    lists["resolved"]["total"] = totals["resolved"]
    return {
        "by_rule": by_rule,
        "by_severity": by_severity,
        "totals": totals,
        "previous": previous,
        "lists": lists,
    }


# --------------------------------------------------------------------------- methods


def _retention(app: ReportSource, win: Window) -> dict[str, Any]:
    """Whether ``apiwatch db prune`` removed traffic detail this period's figures needed:
    incidents survive a prune, traffic rows do not, so the report must say so."""
    pruned = app.store.pruned_before()
    return {"pruned_before": pruned, "affects_period": bool(pruned and win.first_day < pruned)}


def _methods(app: ReportSource, win: Window, sources: pd.DataFrame) -> dict[str, Any]:
    store = app.store
    contributing = sorted({int(x) for x in sources.scan_id.dropna()}) if len(sources) else []
    scan_ids = sorted(set(contributing) | set(store.scans_started(win.since, win.until)))
    scans = []
    catalog_versions: set[str] = set()
    geodata: dict[tuple, dict[str, Any]] = {}
    rules_used: set[str] = set()
    for row in store.scans(scan_ids):
        options = _loads(row.get("options"), {})
        if row.get("catalog_version"):
            catalog_versions.add(row["catalog_version"])
        for g in _loads(row.get("geodata"), []):
            geodata.setdefault((g.get("name"), g.get("path"), g.get("build_date")), g)
        rules_used.update(options.get("rules", []))
        scans.append(
            {
                "id": row["id"],
                "started": row.get("started"),
                "finished": row.get("finished"),
                "files": _loads(row.get("files"), []),
                "records": row.get("records"),
                "malformed": row.get("malformed"),
                "llm_observations": row.get("llm_observations"),
                "stored": row.get("stored"),
                "duplicates": row.get("duplicates"),
                "file_errors": len(_loads(row.get("file_errors"), [])),
                "exit_code": row.get("exit_code"),
                "catalog_version": row.get("catalog_version"),
                "options": {k: v for k, v in (options.get("egress") or {}).items() if v is not None}
                | {
                    k: v
                    for k, v in (options.get("collect") or {}).items()
                    if v not in (None, "auto")
                },
            }
        )
    problem_counts = store.problem_counts(scan_ids)
    problems = store.problem_samples(scan_ids, PROBLEM_SAMPLES)
    source_rows = []
    if len(sources):
        per = sources.groupby(["source", "format"], dropna=False).agg(
            observations=("observations", "sum"),
            first_ts=("first_ts", "min"),
            last_ts=("last_ts", "max"),
            scans=("scan_id", lambda s: sorted({int(x) for x in s})),
        )
        for (src, fmt), r in per.sort_index().iterrows():
            source_rows.append(
                {
                    "source": _py(src),
                    "format": _py(fmt),
                    "observations": int(r.observations),
                    "first": _iso(datetime.fromtimestamp(float(r.first_ts), UTC)),
                    "last": _iso(datetime.fromtimestamp(float(r.last_ts), UTC)),
                    "scans": r.scans,
                }
            )
    catalog = app.catalog
    current_geo = [asdict(s) for s in app.geo.sources()]
    return {
        "scans": scans,
        "sources": source_rows,
        "records": sum(s["records"] or 0 for s in scans),
        "malformed": sum(s["malformed"] or 0 for s in scans),
        "file_errors": sum(s["file_errors"] for s in scans),
        "problems_by_source": problem_counts,
        "problems": problems,
        "catalog": {
            "version": catalog.version,
            "versions_in_scans": sorted(catalog_versions),
            "providers": len(catalog.providers),
            "region_lists": [
                {
                    "id": r.id,
                    "provider": r.provider_id,
                    "scope": r.scope,
                    "countries": len(r.countries),
                    "as_of": r.as_of,
                    "sources": list(r.sources),
                }
                for r in sorted(catalog.region_lists.values(), key=lambda r: r.id)
            ],
        },
        "retention": _retention(app, win),
        "geodata": list(geodata.values()) or current_geo,
        "geodata_recorded": bool(geodata),
        "geodata_current": current_geo,
        "rules": [
            {
                "id": r.id,
                "severity": r.severity,
                "title": r.title,
                "source": r.source,
                "used_in_scans": r.id in rules_used,
            }
            for r in app.rules.rules
        ],
        "rules_in_scans": sorted(rules_used),
        "allowed_providers": list(app.config.allowed_providers),
    }


def _loads(text: Any, default: Any) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return default
