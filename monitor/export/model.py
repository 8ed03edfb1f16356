"""What an export holds: the selected catalogue entries, why each was selected, and the
header every format writes in its own comment syntax.

Catalogue host entries come in four shapes (``rules/README.md``): an exact name, a suffix
``*.a.b`` (one or more labels in front of ``a.b``), a one-label middle wildcard ``x.*.a.b``
and a first-label tail ``*-x.a.b``. :func:`shape_of` names the shape and :func:`host_regex`
gives the anchored regular expression every regex-capable format uses, so the translation
lives in one place.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from monitor import __version__
from monitor.catalog import Provider
from monitor.errors import ApiwatchError
from monitor.policy import SEVERITY_RANK, Rule

EXACT, SUFFIX, WILDCARD = "exact", "suffix", "wildcard"
KINDS = ("api", "consumer", "relay")


class ExportError(ApiwatchError):
    """A selection or an old export that cannot be used; the message says why."""


def shape_of(host: str) -> str:
    """``exact`` (a name), ``suffix`` (``*.a.b``) or ``wildcard`` (``x.*.a.b``, ``*-x.a.b``)."""
    if "*" not in host:
        return EXACT
    if host.startswith("*."):
        return SUFFIX
    return WILDCARD


def host_regex(host: str, label: str = r"[^.]+", anchored: bool = True) -> str:
    """Regex with the catalogue's semantics: ``*.a.b`` is one or more labels in front of
    ``a.b`` (never ``a.b`` itself); any other ``*`` stays inside one label. Catalogue names
    hold only ``[a-z0-9_-]`` and dots, so escaping the dots is enough, and the result uses
    nothing beyond groups and classes: POSIX (Squid), PCRE (Suricata) and Sigma all read it.
    ``label`` is what one wildcard label may hold (``[^./:]+`` inside a URL)."""
    if host.startswith("*."):
        body = f"({label}\\.)+" + host[2:].replace(".", r"\.")
    else:
        body = label.join(part.replace(".", r"\.") for part in host.split("*"))
    return f"^{body}$" if anchored else body


def fixed_suffix(host: str) -> str:
    """The literal part after the last ``*`` (``.amazonaws.com`` for
    ``bedrock.*.amazonaws.com``): a fast pre-filter for formats that match by content."""
    return host.rsplit("*", 1)[-1]


@dataclass(frozen=True)
class Entry:
    """One catalogue host (exact name or pattern) selected for export."""

    host: str
    provider: Provider
    kind: str  # api | consumer | relay: how the host matches the catalogue
    confidence: str
    rules: tuple[Rule, ...]  # the rules that fire for it; empty when chosen by --provider/--kind

    @property
    def shape(self) -> str:
        return shape_of(self.host)

    @property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(r.id for r in self.rules)

    def label(self) -> str:
        """``OpenAI (openai) api: provider-region-unsupported`` — for comments and messages."""
        why = ", ".join(self.rule_ids) or "selected"
        return f"{self.provider.name} ({self.provider.id}) {self.kind}: {why}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "match": self.shape,
            "provider": self.provider.id,
            "provider_name": self.provider.name,
            "kind": self.kind,
            "confidence": self.confidence,
            "rules": list(self.rule_ids),
            "severity": max_severity(self.rules),
            "sources": list(self.provider.sources),
        }


def max_severity(rules: tuple[Rule, ...]) -> str | None:
    return max((r.severity for r in rules), key=SEVERITY_RANK.__getitem__, default=None)


@dataclass(frozen=True)
class Selection:
    """What the user asked for (the command line, or an old export's header)."""

    format: str
    site: str | None = None
    country: str | None = None
    providers: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    severity: str | None = None  # minimum severity of the rules in force used by default

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "site": self.site,
            "country": self.country,
            "providers": list(self.providers),
            "kinds": list(self.kinds),
            "rules": list(self.rules),
            "severity": self.severity,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Selection:
        try:
            return cls(
                format=str(data["format"]),
                site=data.get("site"),
                country=data.get("country"),
                providers=tuple(data.get("providers") or ()),
                kinds=tuple(data.get("kinds") or ()),
                rules=tuple(data.get("rules") or ()),
                severity=data.get("severity"),
            )
        except (KeyError, TypeError) as exc:
            raise ExportError(f"bad selection record: {exc}") from exc


@dataclass(frozen=True)
class Export:
    """The entries of one export and everything its header states."""

    selection: Selection
    entries: tuple[Entry, ...]
    rules: tuple[Rule, ...]  # the rules evaluated (empty: hosts chosen without rules)
    catalog_version: str
    egress_country: str | None
    egress_source: str | None
    generated: datetime
    notes: list[str] = field(default_factory=list)

    def header(self) -> list[str]:
        """Comment lines (without the comment prefix) that open every format. The last one
        is the machine-readable selection that ``export --diff`` re-runs."""
        sel = self.selection
        where = (
            f"site {sel.site}"
            if sel.site
            else f"country {sel.country}"
            if sel.country
            else "no egress given"
        )
        if self.egress_country:
            where += f", egress country {self.egress_country} ({self.egress_source})"
        rules = ", ".join(r.id for r in self.rules) or "none (hosts chosen by provider/kind)"
        providers = len({e.provider.id for e in self.entries})
        return [
            f"apiwatch export {sel.format}: LLM API hosts to block or watch",
            f"generated {self.generated.strftime('%Y-%m-%dT%H:%M:%SZ')} by apiwatch "
            f"{__version__}, provider catalogue {self.catalog_version}",
            f"selection: {where}; rules: {rules}",
            f"filters: providers {','.join(sel.providers) or 'all'}; "
            f"kinds {','.join(sel.kinds) or 'all'}",
            f"{len(self.entries)} hosts of {providers} providers",
            *self.notes,
            "apiwatch-selection: " + json.dumps(sel.as_dict(), separators=(",", ":")),
        ]


@dataclass(frozen=True)
class Format:
    """One output format: how to write it, and how ``--diff`` reads an old copy back."""

    name: str
    help: str  # one line for --help
    render: Callable[[Export], str]
    comment: str | None  # line-comment prefix; None for JSON (compared entry by entry)
    volatile: tuple[str, ...] = ()  # prefixes of lines that change on every run (RPZ serial)


def commented(export: Export, prefix: str, *extra: str) -> list[str]:
    """The export's header, with format-specific notes before its closing selection line,
    as comment lines."""
    *head, selection = export.header()
    return [f"{prefix} {line}".rstrip() for line in (*head, *extra, selection)]


def by_provider(entries: tuple[Entry, ...]) -> list[tuple[str, list[Entry]]]:
    """Entries grouped under their label (provider, kind, rules), in catalogue order."""
    groups: dict[str, list[Entry]] = {}
    for e in entries:
        groups.setdefault(e.label(), []).append(e)
    return list(groups.items())
