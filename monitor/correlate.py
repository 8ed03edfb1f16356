"""Correlation: rules over the stored history, not one record (``correlate:`` in a rule).

A correlation rule looks at what one client (its user when the log names one, else its
address) did with one provider within a window: the egress countries it was seen through
(``history.countries``), those the provider serves (``history.served``: its published list
plus its home country) and those it does not (``history.unserved``). ``egress-hopping`` is
such a rule: a VPN or a relay used to evade a region block shows as the same client in a
served and an unserved country within hours.

Its detail rows (one per client, provider and UTC day) roll up into findings like every other
rule's: one per (rule, provider, site — or egress country where no site is known). A hop
spans countries, so the egress country of its detail is the one the block is about: the
first (alphabetically) the provider does not serve (``history.unserved``; every country seen,
when a rule reads no such field). "Clients at Shanghai hop egress to reach OpenAI" and
"clients hop between HK and a served country to reach OpenAI" are one decision each, as
"Shanghai reaches OpenAI through CN" is for the region rule; the countries, the clients and
the users are underneath (``show F-…``).

:func:`correlate` runs after each scan and after re-evaluation. It recomputes the days the
given scans touched (and a window either side) from the store, so running it twice, or
after a re-scan, gives the same incidents: deterministic and idempotent.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from monitor.catalog import Catalog, Provider
from monitor.ids import finding_id, incident_id
from monitor.observation import iso_day, iso_utc
from monitor.pipeline import json_value
from monitor.policy import Rule, RuleSet
from monitor.store import IngestResult, Store

DAY = 86400.0


@dataclass
class CorrelationResult:
    new: IngestResult = field(default_factory=IngestResult)
    incidents: int = 0  # raised or confirmed
    removed: int = 0  # open incidents the history no longer shows


def correlate(
    store: Store,
    catalog: Catalog,
    rules: RuleSet,
    scan_ids: Iterable[int],
    days: Sequence[str] | None = None,
) -> CorrelationResult:
    """Run every correlation rule over the days the scans ``scan_ids`` stored observations
    for, or over ``days`` (widened by the rule's window), replacing what earlier runs
    raised there; new detail counts for the last of ``scan_ids``."""
    result = CorrelationResult()
    scan_ids = list(scan_ids)
    days = sorted(days) if days is not None else store.scan_days(scan_ids)
    if not days:
        return result
    first = _day_start(min(days))
    last = _day_start(max(days)) + DAY
    if rules.correlations:  # the history is read from the roll-ups where they hold it
        store.roll_up()
    for rule in rules.correlations:
        window = rule.correlate.window
        margin = math.ceil(window / DAY) * DAY
        start, end = first - margin, last + margin
        first_day, last_day = iso_day(start - window), iso_day(end)  # what the history spans
        # only clients seen through several countries need the hour-by-hour history, unless
        # the rule holds for one country alone (then every window of the client holds)
        by_countries = not rule.fields & {"history.first_seen", "history.last_seen"}
        one_country: dict[tuple[str, ...], bool] = {}  # verdicts, by who only if it is read
        by_client = "client.ip" in rule.fields
        detail = []
        hopeless = (  # no client's history can hold (often so: one site, one egress)
            by_countries
            and not by_client
            and not _may_hold(rule, catalog, store.egress_countries(first_day, last_day))
        )
        groups = [] if hopeless else store.egress_groups(start - window, end)
        for who, provider, n, country in groups:
            if n == 1 and by_countries:
                key = (who, provider, country) if by_client else (provider, country)
                held = one_country.get(key)
                if held is None:
                    held = one_country[key] = _holds_for(rule, catalog, who, provider, country)
                if not held:
                    continue
            detail.append(who)
        buckets = store.egress_buckets(start - window, end, detail) if detail else []
        rows = list(_hops(rule, catalog, buckets, window, start, end))
        removed, ingest = store.replace_correlated(
            rule.id, iso_day(start), iso_day(end - 1), rows, max(scan_ids, default=None)
        )
        result.removed += removed
        result.incidents += len(rows)
        result.new.new_incidents |= ingest.new_incidents
        result.new.updated_incidents |= ingest.updated_incidents
        result.new.rule_of.update(ingest.rule_of)
        result.new.new_findings |= ingest.new_findings
        result.new.reopened_findings |= ingest.reopened_findings
    return result


def _may_hold(rule: Rule, catalog: Catalog, seen: dict[str, set[str]]) -> bool:
    """Whether a rule that reads only the countries (not the client, not the times) can
    hold for some client, given the egress countries each provider was reached through in
    the span (a superset of each client's): not when none was reached through two and the
    rule holds for no single one. A scan of one site, one egress, rarely has more."""
    return any(
        len(countries) > 1 or _holds_for(rule, catalog, None, provider, country)
        for provider, countries in seen.items()
        for country in countries
    )


def _day_start(day: str) -> float:
    return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()


@dataclass(slots=True)
class _Bucket:
    first: float
    last: float
    country: str
    count: int
    site: str | None = None
    user: str | None = None  # who is this user (else who is a client address)
    client: str | None = None  # the (first) client address of the records


def _hops(
    rule: Rule,
    catalog: Catalog,
    buckets: Iterable[tuple[str, str, str, float, float, int, str | None, str | None, str | None]],
    window: float,
    start: float,
    end: float,
) -> Iterable[dict[str, Any]]:
    """Incident rows: per (client, provider, UTC day in [start, end)) where the rule holds
    for the countries seen within ``window`` of a record of that day."""
    groups: dict[tuple[str, str], list[_Bucket]] = defaultdict(list)
    for who, provider, country, first, last, count, site, user, client in buckets:
        groups[(who, provider)].append(_Bucket(first, last, country, count, site, user, client))
    # unless the rule reads the window's times, its verdict follows from the countries alone
    by_countries = not rule.fields & {"history.first_seen", "history.last_seen"}
    served_by: dict[str, frozenset[str] | None] = {}
    for (who, provider), seq in sorted(groups.items()):
        p = catalog.providers.get(provider)
        allowed = catalog.allowed_countries(provider)
        served = served_by.get(provider, allowed)
        if provider not in served_by:  # its list, plus its home country
            if allowed is not None and p and p.hq_country:
                served = allowed | {p.hq_country}
            served_by[provider] = served
        verdicts: dict[frozenset[str], bool] = {}
        args = (rule, who, provider, p, allowed, served, by_countries, verdicts)
        if by_countries and len({b.country for b in seq}) == 1 and not _holds(seq, *args):
            continue  # one country all along: every window looks the same
        seq.sort(key=lambda b: b.first)
        hops: dict[str, dict[int, _Bucket]] = defaultdict(dict)  # day -> buckets involved
        lo = 0
        for j, b in enumerate(seq):
            while seq[lo].last < b.first - window:
                lo += 1
            if not start <= b.first < end:
                continue
            near = [a for a in seq[lo : j + 1] if a.last >= b.first - window]
            if _holds(near, *args):
                hops[iso_day(b.first)].update((id(a), a) for a in near)
        for day, involved in sorted(hops.items()):
            near = list(involved.values())
            ctx = _context(near, who, provider, p, allowed, served)
            site = min((a.site for a in near if a.site), default=None)
            country = min(ctx["history.unserved"] or {a.country for a in near})
            user = next((a.user for a in near if a.user), None)
            yield {
                "id": incident_id(rule.id, provider, None, who, None, None, day),
                "finding_id": finding_id(rule.id, provider, site, country),
                "user": user,
                "rule": rule.id,
                "severity": rule.severity,
                "title": rule.title,
                "provider": provider,
                "provider_kind": p.kind if p else None,
                "dest_host": None,
                "client_ip": min(a.client for a in near if a.client) if user else who,
                "site": site,
                "egress_ip": None,
                "egress_country": country,  # the one evaded; all of them: the facts
                "egress_source": f"history ({rule.correlate.window_text})",
                "day": day,
                "first_seen": iso_utc(min(a.first for a in near)),
                "last_seen": iso_utc(max(a.last for a in near)),
                "count": sum(a.count for a in near),
                # where the store finds the records behind it
                "span": (
                    who,
                    provider,
                    min(a.first for a in near),
                    max(a.last for a in near),
                    sorted({a.country for a in near}),
                ),  # fmt: skip
                "facts": {f: [json_value(ctx.get(f))] for f in rule.evidence},
            }


def _holds_for(rule: Rule, catalog: Catalog, who: str | None, provider: str, country: str) -> bool:
    """The rule's verdict on a client seen through one country only (times not read)."""
    p = catalog.providers.get(provider)
    allowed = catalog.allowed_countries(provider)
    served = allowed | {p.hq_country} if allowed is not None and p and p.hq_country else allowed
    near = [_Bucket(0.0, 0.0, country, 0)]
    return rule.matches(_context(near, who, provider, p, allowed, served, times=False))


def _holds(
    near: list[_Bucket],
    rule: Rule,
    who: str,
    provider: str,
    p: Provider | None,
    allowed: frozenset[str] | None,
    served: frozenset[str] | None,
    by_countries: bool,
    verdicts: dict[frozenset[str], bool],
) -> bool:
    """The rule's verdict on a window (memoised per set of countries when that decides it)."""
    if not by_countries:
        return rule.matches(_context(near, who, provider, p, allowed, served))
    key = frozenset(a.country for a in near)
    found = verdicts.get(key)
    if found is None:
        ctx = _context(near, who, provider, p, allowed, served, times=False)
        found = verdicts[key] = rule.matches(ctx)
    return found


def _context(
    near: list[_Bucket],
    who: str,
    provider: str,
    p: Provider | None,
    allowed: frozenset[str] | None,
    served: frozenset[str] | None,
    times: bool = True,
) -> dict[str, Any]:
    countries = frozenset(a.country for a in near)
    return {
        "history.countries": countries,
        "history.served": countries & served if served is not None else None,
        "history.unserved": countries - served if served is not None else None,
        "history.first_seen": iso_utc(min(a.first for a in near)) if times else None,
        "history.last_seen": iso_utc(max(a.last for a in near)) if times else None,
        "provider.id": provider,
        "provider.hq_country": p.hq_country if p else None,
        "provider.allowed_countries": allowed,
        "client.ip": who,
    }
