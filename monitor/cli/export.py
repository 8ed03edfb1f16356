"""``export``: the catalogue hosts a site's policy flags, as proxy, IDS, SIEM and DNS controls."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from monitor.cli.base import EXIT_FINDINGS, LazyChoice, app_of, country_value, guard, main
from monitor.policy import SEVERITIES


def _formats() -> list[str]:
    from monitor.export import FORMATS  # the exporters load for `export` only

    return list(FORMATS)


def _country(_ctx, _param, value):
    return country_value(value)


def _list(_ctx, _param, values):
    """Repeatable and comma-separated: --kind api,consumer --kind relay."""
    return tuple(
        dict.fromkeys(v.strip() for value in values for v in value.split(",") if v.strip())
    )


def _read(path: Path) -> str:
    from monitor.export import ExportError

    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None


def _write(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        from monitor.export import ExportError

        raise ExportError(f"{output}: cannot write: {exc.strerror or exc}") from None


@main.command("export")
@click.argument("fmt", metavar="[FORMAT]", required=False, type=LazyChoice(_formats))
@click.option(
    "--site", metavar="NAME", help="Site from the config: its egress country decides (as in scan)."
)
@click.option(
    "--country",
    metavar="CC",
    callback=_country,
    help="Egress country (ISO code) instead of a site.",
)
@click.option("--provider", multiple=True, callback=_list, metavar="ID",
              help="Only these providers (repeatable, or comma-separated).")  # fmt: skip
@click.option("--kind", multiple=True, callback=_list, metavar="api,consumer,relay",
              help="Only hosts of these kinds.")  # fmt: skip
@click.option("--rule", multiple=True, callback=_list, metavar="RULE",
              help="Select by these rules (repeatable) instead of every rule in force at or "
              "above --severity.")  # fmt: skip
@click.option("--severity", type=click.Choice(SEVERITIES),
              help="Lowest severity of the rules in force that select hosts "
              "[default: high].")  # fmt: skip
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the export here instead of standard output.")  # fmt: skip
@click.option("--diff", "old", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Show what changed since this earlier export (exit 3 when something did); "
              "without FORMAT, re-run the old export's own selection.")  # fmt: skip
@click.pass_context
@guard
def export_cmd(ctx, fmt, site, country, provider, kind, rule, severity, output, old):
    """Write the hosts a policy flags as controls: proxy ACLs, IDS and Sigma rules, DNS policy.

    By default: the hosts of every provider whose policy the site's egress country would
    break — the rules scan evaluates, at or above high severity. FORMAT is one of
    squid, suricata, sigma, rpz, dnsmasq, zeek-intel, hosts, json.

    \b
    apiwatch export squid --site shanghai -o /etc/squid/conf.d/apiwatch.conf
    apiwatch export suricata --country CN --kind api > apiwatch.rules
    apiwatch export sigma --site shanghai --provider openai,anthropic
    apiwatch export rpz --rule relay-service            # every relay, wherever
    apiwatch export json --provider deepseek --kind api,consumer
    apiwatch export --diff /etc/squid/conf.d/apiwatch.conf   # for the change ticket
    """
    from monitor.export import FORMATS, ExportError, Selection, diff, select
    from monitor.export.diff import selection_of

    app = app_of(ctx)
    old_text = _read(old) if old else None
    if fmt is None:
        if old_text is None:
            raise click.UsageError("FORMAT is required (or --diff OLD to re-run an old export)")
        sel = selection_of(old_text, str(old))
        if sel.format not in FORMATS:
            raise ExportError(f"{old}: unknown format {sel.format!r}")
    else:
        sel = Selection(fmt, site, country, provider, kind, rule, severity)
    try:
        export = select(app, sel)
    except ExportError as exc:
        if fmt is None:  # the old file's selection no longer works: an error, not a usage one
            raise
        raise click.UsageError(str(exc)) from None
    fmt_ = FORMATS[sel.format]
    text = fmt_.render(export)
    if old_text is None:
        _write(text, output)
        if not export.entries:
            click.echo(
                "export: nothing matched the selection (an empty policy was written)", err=True
            )
        return
    if fmt is not None and selection_of(old_text, str(old)).format != sel.format:
        raise click.UsageError(f"{old} is not a {sel.format} export")
    changes = diff(fmt_, old_text, text, str(old))
    click.echo("\n".join(changes.lines()))
    if output is not None:
        _write(text, output)
    if changes.changed:
        ctx.exit(EXIT_FINDINGS)
