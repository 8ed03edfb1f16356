"""The findings of a report period: a plain-language summary, the findings list (with their
top users) and the exception register (in force at the end, ran out during the period).

The report leads with these: an analyst decides on findings, and the incident lists below
are their detail.
"""

from __future__ import annotations

from typing import Any

from monitor.policy import SEVERITY_RANK
from monitor.store import Store, TrafficFilter

#: words for "during the period" by period
_PERIOD_WORDS = {"daily": "that day", "weekly": "this week", "monthly": "this month"}
HIGH = SEVERITY_RANK["high"]


def findings_part(store: Store, window: Any, where: TrafficFilter, limit: int,
                  names: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    """``findings`` of the report: ``summary`` (sentences), ``totals``, ``items`` (the first
    ``limit``), ``exceptions``. ``names``: provider id -> display name."""
    found = store.report_findings(window.since, window.until, where, limit)
    rows = found.pop("all")
    when = _PERIOD_WORDS.get(window.period, "in the period")
    totals = {
        "findings": len(rows),
        "high": sum(SEVERITY_RANK[r["severity"]] >= HIGH for r in rows),
        "reopened": sum(r["reopened_in_period"] for r in rows),
        "open": sum(r["status"] in ("open", "reopened") for r in rows),
        "excepted": sum(bool(r["exception_until"]) for r in rows),
    }
    return {
        "summary": summary_sentences(rows, names, when),
        "totals": totals,
        **found,
        "exceptions": store.report_exceptions(window.since, window.until, where),
    }


def summary_sentences(rows: list[dict[str, Any]], names: dict[str, str], when: str) -> list[str]:
    """One sentence per site (or egress country where no site is known), busiest first:
    "shanghai sends OpenAI and Anthropic traffic through a CN egress: 3 high findings,
    2 reopened this week"."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        where = ("site", r["site"]) if r["site"] else ("country", r["egress_country"] or "?")
        groups.setdefault(where, []).append(r)
    ranked = sorted(groups.items(), key=lambda kv: (-sum(r["count"] for r in kv[1]), kv[0]))
    out = []
    for (kind, name), group in ranked:
        providers = sorted({r["provider"] for r in group}, key=lambda p: (names.get(p, p)).lower())
        countries = sorted({c for r in group for c in (r["egress_country"] or "").split(",") if c})
        via = f"a {_and(countries)} egress" if countries else "an egress of unknown country"
        who = name if kind == "site" else f"Clients with no known site ({name} egress)"
        high = sum(SEVERITY_RANK[r["severity"]] >= HIGH for r in group)
        reopened = sum(r["reopened_in_period"] for r in group)
        figures = [f"{_n(len(group), 'finding')}"]
        if high:
            figures.append(f"{high} high or critical")
        if reopened:
            figures.append(f"{reopened} reopened {when}")
        out.append(
            f"{who} sends {_and([names.get(p, p) for p in providers])} traffic through "
            f"{via}: {', '.join(figures)}."
        )
    return out


def _n(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"
