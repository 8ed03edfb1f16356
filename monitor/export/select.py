"""Which catalogue hosts an export holds: the same rule evaluation ``scan`` does.

Every host and pattern the catalogue lists (read through :meth:`Catalog.entries`, so the
organisation's additions flow in too) becomes one synthetic request to that host from the
chosen site or country, matched to its catalogue entry. It goes through the scan pipeline's
own stages — enrich (egress country by the same precedence as a scan: overrides, the site's
declared country, geolocation of its egress address), evaluate — so a host is exported exactly when a scan of
traffic to it from there would raise the rule. Nothing about regions is decided here.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from monitor.export.model import KINDS, Entry, Export, ExportError, Selection
from monitor.observation import Observation
from monitor.policy import SEVERITY_RANK, Rule

if TYPE_CHECKING:
    from monitor.app import App

#: Rules at or above this severity drive the default selection: the ones that say a policy
#: is broken. Leads (``possible-relay``, ``unknown-region-policy``) and reviews
#: (``relay-service``) are exported only when asked for with ``--rule`` or ``--severity``.
DEFAULT_SEVERITY = "high"


def rules_for(app: App, sel: Selection) -> tuple[Rule, ...]:
    """The rules whose firing selects a host: ``--rule`` ids, else every rule in force at or
    above the severity; none when neither an egress nor a rule was given."""
    in_force = {r.id: r for r in app.rules.rules}
    if sel.rules:
        unknown = [r for r in sel.rules if r not in in_force]
        if unknown:
            raise ExportError(
                f"rule {', '.join(unknown)} is not in force (rules: {', '.join(in_force)})"
            )
        return tuple(in_force[r] for r in sel.rules)
    if not (sel.site or sel.country):
        return ()
    floor = SEVERITY_RANK[sel.severity or DEFAULT_SEVERITY]
    return tuple(r for r in in_force.values() if SEVERITY_RANK[r.severity] >= floor)


def check(app: App, sel: Selection) -> None:
    """Refuse selections that cannot mean anything, naming the option."""
    if sel.site and sel.country:
        raise ExportError("give --site or --country, not both")
    if sel.site and sel.site not in app.config.sites:
        known = ", ".join(sorted(app.config.sites)) or "none configured"
        raise ExportError(f"unknown site {sel.site!r} (sites: {known})")
    unknown = [p for p in sel.providers if p not in app.catalog.providers]
    if unknown:
        raise ExportError(f"unknown provider {', '.join(unknown)} (see apiwatch providers)")
    bad = [k for k in sel.kinds if k not in KINDS]
    if bad:
        raise ExportError(f"unknown kind {', '.join(bad)} (kinds: {', '.join(KINDS)})")
    if not (sel.site or sel.country or sel.rules or sel.providers or sel.kinds):
        raise ExportError(
            "nothing selected: give --site or --country (hosts whose rules fire there), "
            "--rule, or --provider/--kind"
        )


def select(app: App, sel: Selection, now: datetime | None = None) -> Export:
    """Evaluate the selection against the catalogue; entries come in catalogue order."""
    from monitor.collectors import CollectOptions
    from monitor.egress import EgressOptions

    check(app, sel)
    rules = rules_for(app, sel)
    pipeline = app.pipeline(
        EgressOptions(site=sel.site, egress_country=sel.country), CollectOptions()
    )
    wanted = {r.id for r in rules}
    egress = pipeline.enricher.egress.resolve(None, None)  # what every synthetic record gets
    if (sel.site or sel.country) and egress.country is None:
        raise ExportError(
            f"site {sel.site!r} has no egress country: declare `country` or `egress_ips` "
            "for it in the config, or use --country"
        )
    ts = time.time()
    entries: list[Entry] = []
    for row in app.catalog.entries():
        if sel.providers and row.id not in sel.providers:
            continue
        for host in (*row.hosts, *row.consumer_hosts):
            obs = Observation(ts=ts, source="apiwatch-export", line=0, format="export")
            obs.dest_host = host
            # the catalogue entry itself: a pattern is no host name a scan would identify
            match = app.catalog.match_host(host)
            if match is None or match.pattern != host:
                raise ExportError(f"catalogue entry {host!r} does not match itself")
            if sel.kinds and match.kind not in sel.kinds:
                continue
            enriched = pipeline.enricher.enrich(obs, match)
            fired = tuple(r for r in pipeline.evaluator.evaluate(enriched) if r.id in wanted)
            if rules and not fired:
                continue
            entries.append(Entry(host, match.provider, match.kind, match.confidence, fired))
    return Export(
        selection=sel,
        entries=tuple(entries),
        rules=rules,
        catalog_version=app.catalog.version,
        egress_country=egress.country,
        egress_source=egress.source,
        generated=now or datetime.now(UTC),
    )
