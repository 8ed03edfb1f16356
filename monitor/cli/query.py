"""Questions to the store and the catalogue: ``incidents``, ``show``, ``providers``, ``geo``,
``rules`` (``findings`` is in :mod:`monitor.cli.findings`)."""

from __future__ import annotations

import sys
from dataclasses import asdict
from typing import TYPE_CHECKING

import click

from monitor.cli.base import (
    Fatal,
    app_of,
    filter_options,
    guard,
    listing_options,
    main,
    query_of,
    warn_stale,
)
from monitor.findings import is_finding_id
from monitor.output import json_text, safe_text, write_json_lines, write_rows

if TYPE_CHECKING:
    from monitor.store import FindingQuery


def incident_columns() -> list[str]:
    """Incident fields in output order (the store's columns without its internal ones)."""
    from monitor.store import INCIDENT_COLUMNS

    return [c for c in INCIDENT_COLUMNS if c not in ("severity_rank", "title")]


INCIDENT_TABLE = [
    "id",
    "severity",
    "rule",
    "provider",
    "dest_host",
    "client_ip",
    "user",
    "site",
    "egress_country",
    "last_seen",
    "count",
    "outcome",
    "status",
]


@main.command()
@filter_options
@click.option("--finding", metavar="ID", help="Only the detail of this finding (id or prefix).")
@listing_options("incident")
@click.pass_context
@guard
def incidents(ctx, finding, limit, out, spreadsheet_safe, **filters):
    """List incidents (the detail under findings: one per rule, host, client, user, egress and
    UTC day), newest first.

    \b
    apiwatch incidents --since 7d --severity high
    apiwatch incidents --finding F-3a9c01d2e4f5 --user alice
    apiwatch incidents --provider openai --site shanghai --client 10.20.0.0/16 --csv > sh.csv
    apiwatch incidents --json | jq -r 'select(.count > 100) | .id'
    """
    q = query_of(filters, limit=limit, finding=finding)
    app = app_of(ctx).for_reading()
    try:
        rows = list(app.store.incidents(q))
    except KeyError as exc:
        raise Fatal(exc.args[0]) from None
    n = write_rows(
        rows, out or "table", incident_columns(), sys.stdout, INCIDENT_TABLE, spreadsheet_safe
    )
    if n == 0:
        unknown_filter_values(app, q)
        if not out:
            click.echo("no incidents match", err=True)


def unknown_filter_values(app, q: FindingQuery) -> None:
    """A filter value no incident holds and nothing configures is most likely a typo: say so
    (a usage error) rather than 'no incidents match'. (A network given to --client is not.)"""
    for option, column, values, known in (
        ("--site", "site", q.site, lambda: set(app.config.sites)),
        ("--provider", "provider", q.provider, lambda: {e.id for e in app.catalog.entries()}),
        ("--client", "client_ip", [c for c in q.client if "/" not in c], set),
        ("--user", "user", q.user, set),
        ("--rule", "rule", q.rule, lambda: {r.id for r in app.rules.rules}),
    ):
        if not values:
            continue
        configured = known()
        unknown = [v for v in values if v not in configured]
        if unknown:
            unknown = [v for v in unknown if v not in app.store.present(column, unknown)]
        if unknown:
            listed = ", ".join(sorted(configured))
            raise click.BadParameter(
                f"unknown {column.removesuffix('_ip')} {safe_text(unknown[0], 80)!r}: no incident "
                "or configuration names it" + (f" (known: {listed})" if listed else ""),
                param_hint=option,
            )


@main.command()
@click.argument("incident_id")
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object with the incident and its records."
)
@click.option("--samples", default=20, show_default=True, help="How many of its records to show.")
@click.pass_context
@guard
def show(ctx, incident_id, as_json, samples):
    """One finding (F-…) with its top clients, users, hosts, days and evidence, or one
    incident with its sample records (an id prefix is enough).

    \b
    apiwatch show F-3a9c01d2e4f5
    apiwatch show 3f9a0c1d
    apiwatch show 3f9a --json | jq '.records[].url'
    """
    finding = is_finding_id(incident_id)
    store = app_of(ctx).for_reading().store
    try:
        inc = (
            store.finding(incident_id, samples=samples)
            if finding
            else store.incident(incident_id, samples)
        )
    except KeyError as exc:
        raise Fatal(exc.args[0]) from None
    if inc is None:
        raise Fatal(f"no {'finding' if finding else 'incident'} with id {incident_id!r}")
    if as_json:
        click.echo(json_text(inc))
        return
    records = inc.pop("records")
    events = inc.pop("events")
    tops = {k: inc.pop(k) for k in list(inc) if k.startswith("top_")}
    facts = inc.pop("facts", None) or {}
    width = max(len(k) for k in [*inc, *(f"  {f}" for f in facts)])
    for key, value in inc.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        click.echo(f"{key:<{width}}  {safe_text(shown, 200)}")
    if facts:  # what the rule's evidence fields showed
        click.echo("facts:")
        for name, values in facts.items():
            shown = ", ".join(json_text(v) for v in values)
            click.echo(f"{'  ' + name:<{width}}  {safe_text(shown, 200)}")
    for key, rows in tops.items():
        if rows:
            click.echo(f"\n{key.replace('_', ' ')}:")
            write_rows(rows, "table", [], sys.stdout, ["value", "count", "incidents"])
    if events:
        click.echo("\nhistory:")
        columns = ["at", "action", "status_from", "status_to", "actor", "until", "note"]
        if not finding:  # an incident's trail: no exceptions, the action is the new status
            columns = [c for c in columns if c not in ("action", "until")]
        write_rows(events, "table", [], sys.stdout, columns)
    click.echo(f"\nrecords ({len(records)} of {inc['count']}):")
    write_rows(
        records,
        "table",
        [],
        sys.stdout,
        [
            "source",
            "line",
            "ts",
            "client_ip",
            "user",
            "method",
            "dest_host",
            "status",
            "result",
            "bytes_out",
            "bytes_in",
        ],
    )


@main.command()
@click.argument("hosts", nargs=-1, metavar="[HOST|IP]…")
@click.option("--json", "as_json", is_flag=True, help="JSON lines.")
@click.pass_context
@guard
def providers(ctx, hosts, as_json):
    """Which provider serves a host; without arguments, the whole catalogue.

    \b
    apiwatch providers api.openai.com chatgpt.com notopenai.com 160.79.104.10
    apiwatch providers eu.api.openai.com bedrock-runtime.eu-central-1.amazonaws.com
    apiwatch providers --json | jq -r 'select(.kind == "relay") | .id'

    For a host the answer includes where the endpoint processes requests: processing_region
    (aws:eu-central-1), processing_geo (DE, EU) and residency_basis (hostname, config,
    global, unknown), with the provider's caveat where a regional endpoint does not
    guarantee in-region processing.
    """
    app = app_of(ctx)
    if not hosts:
        rows = [asdict(e) for e in app.catalog.entries()]
        if as_json:
            write_json_lines(rows, sys.stdout)
        else:
            for row in rows:
                row["hosts"] = " ".join((*row["hosts"], *row["consumer_hosts"], *row["ip_ranges"]))
            write_rows(
                rows,
                "table",
                [],
                sys.stdout,
                ["id", "kind", "category", "hq_country", "region_list", "region_count", "hosts"],
            )
        click.echo(f"catalogue {app.catalog.version}: {len(rows)} entries", err=True)
        return
    from monitor.observation import normalise_host
    from monitor.pipeline import Identifier

    ident = Identifier(app.catalog, app.config.azure_resources)
    caveats = app.catalog.residency.caveats
    rows = []
    for host in hosts:
        norm = normalise_host(host) or host
        m = ident.by_host(norm)
        p = m.processing if m else None
        rows.append(
            {
                "host": norm,
                "provider": m.provider.id if m else None,
                "name": m.provider.name if m else None,
                "kind": m.kind if m else None,
                "matched": m.pattern if m else None,
                "listed": m.listed if m else None,
                "region_list": m.provider.region_list if m else None,
                "hq_country": m.provider.hq_country if m else None,
                "processing_region": p.region if p else None,
                "processing_geo": p.geo if p else None,
                "residency_basis": p.basis if p else None,
                "residency_caveat": p.caveat if p else None,
                "caveat": caveats.get(p.caveat) if p and p.caveat else None,
            }
        )
    write_rows(
        rows,
        "json" if as_json else "table",
        list(rows[0]),
        sys.stdout,
        None if as_json else [
            "host", "provider", "kind", "matched", "processing_region", "processing_geo",
            "residency_basis", "residency_caveat",
        ],
    )  # fmt: skip


@main.command()
@click.argument("ips", nargs=-1, metavar="IP…")
@click.option("--json", "as_json", is_flag=True, help="JSON lines.")
@click.option(
    "--sources",
    "list_sources",
    is_flag=True,
    help="List the geolocation sources in use and their build dates.",
)
@click.pass_context
@guard
def geo(ctx, ips, as_json, list_sources):
    """Country, ASN and organisation of addresses, and which source said so.

    \b
    apiwatch geo 8.8.8.8 114.114.114.114 10.1.2.3
    apiwatch --geoip /var/lib/GeoIP/GeoLite2-City.mmdb geo 1.1.1.1 --json
    apiwatch geo --sources
    """
    resolver = app_of(ctx).geo
    if list_sources or not ips:
        rows = [asdict(s) for s in resolver.sources()]
        warn_stale(app_of(ctx))
        write_rows(rows, "json" if as_json else "table", list(rows[0]) if rows else [], sys.stdout)
        return
    from monitor.observation import canonical_ip

    bad = [ip for ip in ips if canonical_ip(ip) is None]
    if bad:
        raise click.BadParameter(f"not an IP address: {', '.join(bad)}", param_hint="IP")
    rows = [asdict(resolver.lookup(ip)) for ip in ips]
    write_rows(
        rows,
        "json" if as_json else "table",
        list(rows[0]),
        sys.stdout,
        ["ip", "scope", "country", "asn", "org", "site", "country_source", "asn_source"],
    )


@main.command("rules")
@click.option("--json", "as_json", is_flag=True, help="JSON lines.")
@click.option("--packs", "list_packs", is_flag=True, help="Only the policy packs, on or off.")
@click.pass_context
@guard
def rules_cmd(ctx, as_json, list_packs):
    """The policy rules in force (bundled rules/policies, or --rules, plus the packs that are
    on), then the policy packs (rules/packs) and which are on ([organisation] packs).

    \b
    apiwatch rules
    apiwatch rules --packs
    apiwatch --rules ./my-policies rules --json
    apiwatch rules --packs --json | jq -r 'select(.on) | .id'
    """
    app = app_of(ctx)
    on = set(app.packs_on)
    pack_of = {r.id: p.id for p in app.packs.values() for r in p.rules}
    pack_of |= {rid: p.id for p in app.packs.values() for rid in p.includes}
    packs = [
        {
            "id": p.id,
            "on": p.id in on,
            "default": p.default,
            "rules": len(p.rules) + len(p.includes),
            "title": p.title,
            "source": p.source,
            "references": list(p.references),
            "description": p.description,
        }
        for p in app.packs.values()
    ]
    out = "json" if as_json else "table"
    if list_packs:
        write_rows(packs, out, list(packs[0]) if packs else [], sys.stdout,
                   ["id", "on", "default", "rules", "title"])  # fmt: skip
        return
    rows = [
        {
            "id": r.id,
            "severity": r.severity,
            "title": r.title,
            "pack": pack_of.get(r.id),
            "source": r.source,
            "when": r.when,
            "description": r.description,
        }
        for r in app.rules.rules
    ]
    write_rows(rows, out, list(rows[0]) if rows else [], sys.stdout,
               ["id", "severity", "pack", "title"])  # fmt: skip
    if not as_json and packs:
        click.echo()
        write_rows(packs, out, list(packs[0]), sys.stdout,
                   ["id", "on", "default", "rules", "title"])  # fmt: skip
