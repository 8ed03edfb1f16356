"""Sigma rules for the ``proxy`` and ``dns`` log sources: one per provider, policy rule and
log source, with the policy rule's references and severity (mapped to Sigma levels).

Fields from the Sigma taxonomy: ``cs-host`` and ``c-uri`` (proxy), ``query`` (dns). Exact
names are plain values, suffixes ``*.a.b`` use ``|endswith: .a.b``, one-label wildcards
``|re`` (a Sigma ``*`` would cross dots). ``c-uri`` matches both a CONNECT target
(``host:443``) and a full URL. Rule ids are UUIDv5 of provider, rule and log source, so
re-exports keep them.
"""

from __future__ import annotations

import uuid

from monitor.catalog import Provider
from monitor.export.model import EXACT, SUFFIX, Entry, Export, Format, commented, host_regex
from monitor.policy import Rule

NAMESPACE = uuid.UUID("5b0d6c52-8a8e-4d7e-9a3c-6170697761f1")
LEVELS = {"info": "informational", "low": "low", "medium": "medium", "high": "high",
          "critical": "critical"}  # fmt: skip


def _host_conditions(field: str, entries: list[Entry]) -> dict[str, dict[str, list[str]]]:
    exact = [e.host for e in entries if e.shape == EXACT]
    suffix = [e.host[1:] for e in entries if e.shape == SUFFIX]
    regex = [host_regex(e.host) for e in entries if e.shape not in (EXACT, SUFFIX)]
    found = {}
    if exact:
        found["host_exact"] = {field: exact}
    if suffix:
        found["host_suffix"] = {f"{field}|endswith": suffix}
    if regex:
        found["host_pattern"] = {f"{field}|re": regex}
    return found


def _uri(entries: list[Entry]) -> dict[str, dict[str, list[str]]]:
    pattern = "^([a-z]+://)?{}(:[0-9]+)?([/?#]|$)"
    return {
        "uri": {
            "c-uri|re": [pattern.format(host_regex(e.host, r"[^./:]+", False)) for e in entries]
        }
    }


def _rule(
    export: Export, provider: Provider, rule: Rule | None, entries: list[Entry], category: str
) -> dict:
    rule_id = rule.id if rule else "selected"
    if category == "proxy":
        detection = {**_host_conditions("cs-host", entries), **_uri(entries)}
        what = "proxy requests"
    else:
        detection = _host_conditions("query", entries)
        what = "DNS queries"
    detection["condition"] = "1 of them"
    title = rule.title if rule else "hosts selected by provider or kind"
    sel = export.header()[2]
    return {
        "title": f"{provider.name} {what}: {title}"[:256],
        "id": str(uuid.uuid5(NAMESPACE, f"{provider.id}/{rule_id}/{category}")),
        "status": "experimental",
        "description": (
            f"{what[0].upper()}{what[1:]} to {provider.name} ({provider.id}) API hosts, "
            f"exported by apiwatch from catalogue {export.catalog_version}; {sel}. "
            + (rule.description if rule else "")
        ).strip(),
        "references": [*(rule.references if rule else ()), *provider.sources],
        "author": "apiwatch export",
        "date": export.generated.strftime("%Y-%m-%d"),
        "logsource": {"category": category},
        "detection": detection,
        "falsepositives": [
            "Sanctioned use of this provider (check the organisation's allow-list)",
            *(
                ["Low-confidence catalogue entry: the host may serve other things"]
                if any(e.confidence == "low" for e in entries)
                else []
            ),
        ],  # fmt: skip
        "level": LEVELS[rule.severity] if rule else "informational",
    }


def render(export: Export) -> str:
    import yaml  # here: PyYAML loads for this export only (start-up time)

    groups: dict[tuple[str, str], tuple[Provider, Rule | None, list[Entry]]] = {}
    for e in export.entries:
        for rule in e.rules or (None,):
            key = (e.provider.id, rule.id if rule else "")
            groups.setdefault(key, (e.provider, rule, []))[2].append(e)
    docs = [
        yaml.safe_dump(
            _rule(export, provider, rule, entries, category),
            sort_keys=False,
            allow_unicode=True,
            width=100,
        )
        for provider, rule, entries in groups.values()
        for category in ("proxy", "dns")
    ]
    head = "\n".join(commented(export, "#")) + "\n"
    return head + "---\n".join(docs)


FORMAT = Format("sigma", "Sigma rules (proxy and dns log sources)", render, "#")
