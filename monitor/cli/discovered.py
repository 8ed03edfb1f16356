"""``discovered``: hosts outside the catalogue that were sent LLM API requests, and
``--promote`` to put one into the organisation's catalogue overlay."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import click

from monitor.catalog import RELAY_CATEGORIES, load_overlay
from monitor.cli.base import Fatal, app_of, guard, main, when
from monitor.output import write_rows

DISCOVERED_COLUMNS = [
    "host", "first_seen", "last_seen", "requests", "client_count", "clients", "evidence",
    "user_agents", "urls", "addresses", "ja4",
]  # fmt: skip
DISCOVERED_TABLE = ["host", "first_seen", "last_seen", "requests", "client_count", "evidence"]
_HOST = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+\Z")


@main.command()
@click.option("--since", callback=when, help="Seen at or after: 7d, 24h, or an ISO date/time.")
@click.option("--json", "out", flag_value="json", help="JSON lines, one host per line.")
@click.option("--csv", "out", flag_value="csv", help="CSV with a header row.")
@click.option(
    "--promote",
    metavar="HOST",
    help="Write HOST into the organisation catalogue overlay (with --provider).",
)
@click.option(
    "--provider",
    metavar="relay|ID",
    help="With --promote: 'relay' (a new relay entry for the host) or the id of an entry "
    "already in the overlay, which gains the host.",
)
@click.option(
    "--category",
    type=click.Choice(RELAY_CATEGORIES),
    default="reseller_relay",
    show_default=True,
    help="With --provider relay: the relay category.",
)
@click.option(
    "--source",
    "sources",
    multiple=True,
    metavar="URL",
    help="With --promote: where the host is documented (a ticket, the relay's page); "
    "without one the entry has confidence low. Repeatable.",
)
@click.option(
    "--overlay",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Overlay file to write [default: the first of config [catalog] extra].",
)
@click.pass_context
@guard
def discovered(ctx, since, out, promote, provider, category, sources, overlay):
    """Hosts outside the catalogue reached with LLM API requests: relay and shell-site
    candidates, with first and last seen, clients and the evidence (an API path, an SDK
    User-Agent) that made them candidates. Newest first.

    \b
    apiwatch discovered --since 7d
    apiwatch discovered --json | jq -r .host
    apiwatch discovered --promote api.relay.example --provider relay --source https://t.example/SEC-9
    """
    app = app_of(ctx)
    if promote is None:
        if provider is not None or sources or overlay is not None:
            raise click.UsageError("--provider, --source and --overlay go with --promote HOST")
        since_ts = (
            datetime.fromisoformat(since.replace("Z", "+00:00")).timestamp() if since else None
        )
        rows = app.store.discovered(since_ts)
        n = write_rows(rows, out or "table", DISCOVERED_COLUMNS, sys.stdout, DISCOVERED_TABLE)
        if n == 0 and not out:
            click.echo("no hosts outside the catalogue were sent LLM API requests", err=True)
        return
    if provider is None:
        raise click.UsageError("--promote needs --provider relay (or an overlay entry id)")
    host = promote.strip().lower().rstrip(".")
    if not _HOST.match(host):
        raise click.BadParameter(f"{promote!r} is not a host name", param_hint="--promote")
    path = overlay or _overlay_of(app)
    seen = app.store.discovered(host=host)
    entry = promote_host(path, host, provider, category, sources, seen[0] if seen else None)
    click.echo(f"{path}: {host} added to {entry!r}")


def _overlay_of(app: Any) -> Path:
    extra = getattr(app.config, "catalog_extra", ())
    if not extra:
        raise Fatal(
            "no catalogue overlay: give --overlay PATH, or set [catalog] extra in the config"
        )
    return Path(extra[0])


def promote_host(
    path: Path,
    host: str,
    provider: str,
    category: str,
    sources: tuple[str, ...],
    seen: dict[str, Any] | None,
) -> str:
    """Add ``host`` to the overlay file at ``path`` (created when missing) and check the
    result loads; the file is replaced atomically, and left as it was on any error.
    Returns the entry id."""
    import yaml  # here: PyYAML loads for this command only (start-up time)

    try:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        data = yaml.safe_load(text) if text.strip() else {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise Fatal(f"{path}: cannot read: {exc}") from None
    if not isinstance(data, dict):
        raise Fatal(f"{path}: not a catalogue overlay (expected a mapping with 'providers')")
    entries = data.setdefault("providers", [])
    if not isinstance(entries, list):
        raise Fatal(f"{path}: 'providers' must be a list")
    for entry in entries:
        for group in entry.get("hosts") or [] if isinstance(entry, dict) else []:
            if host in (group.get("exact") or []):
                raise Fatal(f"{path}: {host} is already listed by {entry.get('id')!r}")
    evidence = ", ".join(seen["evidence"]) if seen else "no stored observation"
    when = f"{seen['first_seen']} to {seen['last_seen']}" if seen else "-"
    group = {
        "use": "api",
        "exact": [host],
        "confidence": "medium" if sources else "low",
        "sources": list(sources)
        or [f"unverified: promoted by apiwatch discovered on {date.today()} ({evidence})"],
        "note": f"seen {when}; evidence: {evidence}",
        "checked": date.today().isoformat(),
    }
    if provider == "relay":
        pid = "relay_" + re.sub(r"[^a-z0-9]+", "_", host).strip("_")
        if any(isinstance(e, dict) and e.get("id") == pid for e in entries):
            raise Fatal(f"{path}: an entry {pid!r} exists already: use --provider {pid}")
        entries.append(
            {
                "id": pid,
                "name": host,
                "kind": "relay",
                "category": category,
                "hq_country": None,
                "region_list": None,
                "hosts": [group],
                "notes": f"promoted from apiwatch discovered, {datetime.now(UTC):%Y-%m-%d}",
            }
        )
    else:
        found = [e for e in entries if isinstance(e, dict) and e.get("id") == provider]
        if not found:
            raise Fatal(f"{path}: no entry {provider!r} (use --provider relay for a new one)")
        pid = provider
        found[0].setdefault("hosts", []).append(group)
    new_text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
    _replace(path, new_text)
    try:
        _check(path)
    except Exception:
        _replace(path, text) if text else path.unlink()
        raise
    return pid


def _replace(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _check(path: Path) -> None:
    """The overlay loads with the bundled catalogue (same schema as providers.yaml)."""
    load_overlay(path)
