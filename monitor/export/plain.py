"""Plain lists for anything else: a hosts file and JSON."""

from __future__ import annotations

import json

from monitor.export.model import EXACT, Export, Format, by_provider, commented


def render_hosts(export: Export) -> str:
    """``0.0.0.0 name`` lines (hosts files, Pi-hole, most blocklist tools). A hosts file
    matches whole names only, so patterns are listed in comments."""
    lines = commented(export, "#")
    for label, entries in by_provider(export.entries):
        lines.append(f"# {label}")
        for e in entries:
            if e.shape == EXACT:
                lines.append(f"0.0.0.0 {e.host}")
            else:
                lines.append(f"# pattern (a hosts file matches whole names only): {e.host}")
    return "\n".join(lines) + "\n"


def render_json(export: Export) -> str:
    doc = {
        "format": "apiwatch-export",
        "generated": export.generated.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "catalog_version": export.catalog_version,
        "selection": export.selection.as_dict(),
        "egress_country": export.egress_country,
        "egress_source": export.egress_source,
        "rules": [
            {"id": r.id, "severity": r.severity, "title": r.title, "references": list(r.references)}
            for r in export.rules
        ],
        "entries": [e.as_dict() for e in export.entries],
    }
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


HOSTS = Format("hosts", "hosts-file lines (0.0.0.0 name)", render_hosts, "#")
JSON = Format(
    "json", "JSON document: selection, rules, entries with provider and sources", render_json, None
)
