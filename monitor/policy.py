"""The policy engine: YAML rules in, a compiled predicate per rule out.

The engine knows no particular rule. A rule is data with a small vocabulary::

    id: provider-region-unsupported        # unique, kebab-case
    title: One line for tables and reports
    severity: high                         # info | low | medium | high | critical
    description: Why it matters, what to do.
    references: [https://…]                # optional
    enabled: true                          # optional
    when:                                  # every field condition must hold
      match.kind: {in: [api, consumer]}
      egress.country: {exists: true, not_in: $provider.allowed_countries}

    unless:                                # optional: the rule does not fire when all the
      dest.scope: {equals: private}        # conditions of this block hold (a list of blocks:
                                           # of any one of them)
    evidence: [dest.ip, dest.asn]          # optional: context fields stored with the finding

Operators: ``equals``, ``not_equals``, ``in``, ``not_in``, ``exists`` (true/false),
``empty`` (true/false, for lists), ``in_networks`` / ``not_in_networks`` (an address field
against a list of CIDRs). A value written ``$field`` is read from the same context at
evaluation time. ``in`` against a missing list is false; ``not_in`` is true; an address
that is missing or not an address is in no network. Fields are the names in :data:`FIELDS`.
Invalid rules fail at load time with the file, the rule id and the reason.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from monitor.errors import ApiwatchError
from monitor.yamlfile import YamlError, safe_load, safe_load_all

SEVERITIES = ("info", "low", "medium", "high", "critical")
SEVERITY_RANK = {name: i for i, name in enumerate(SEVERITIES)}

#: The evaluation context: every field a rule may name, with what it holds.
FIELDS: dict[str, str] = {
    "match.kind": "api | consumer | relay | unknown: how the destination matched the catalogue",
    "match.pattern": "the catalogue entry that matched (host, *.suffix or CIDR)",
    "match.confidence": "high | medium | low: how sure the catalogue is of that entry",
    "provider.id": "catalogue id, e.g. openai",
    "provider.kind": "provider | relay",
    "provider.category": "relay category (aggregator, ai_gateway, …) or null",
    "provider.hq_country": "ISO code of the provider's headquarters",
    "provider.region_list": "id of the provider's published allow-list, or null",
    "provider.allowed_countries": "the provider's allow-list (countries), or null",
    "catalog.major_allowed_countries": "union of every published allow-list",
    "egress.ip": "egress address of the record",
    "egress.country": "egress country (option, override, site or geolocation)",
    "egress.geo_country": "geolocated country of the egress address (whatever decided egress.country)",
    "egress.site": "site name",
    "egress.source": "how the egress country was decided",
    "dest.host": "destination host name",
    "dest.ip": "destination address, when known",
    "dest.country": "geolocated destination country",
    "dest.asn": "destination autonomous system number",
    "dest.org": "organisation of the destination's autonomous system",
    "dest.scope": "public | private | loopback | … : what kind of address the destination is",
    "dest.address_source": "where the destination address was read (%<a, id.resp_h, packet, …)",
    "dest.range_provider": "provider whose published API ingress range holds dest.ip, or null",
    "match.on": "host | address | request: matched by the name, a published range, or the "
    "request's shape (an LLM API path or SDK, to a host outside the catalogue)",
    "request.api_path": "id of the LLM API path signature the URL ends with (rules/clients.yaml)",
    "request.url": "the request URL, when the log shows it",
    "client.user_agent": "the HTTP User-Agent, when the log shows it",
    "client.software": "id of the SDK or client the User-Agent names (rules/clients.yaml)",
    "client.ja4": "JA4 fingerprint of the TLS ClientHello",
    "client.tls_software": "id of the software the JA4 is known from (rules/clients.yaml)",
    "history.countries": "correlation rules: egress countries of the client with the "
    "provider within the window",
    "history.served": "correlation rules: those of history.countries the provider serves",
    "history.unserved": "correlation rules: those of history.countries it does not serve",
    "history.first_seen": "correlation rules: first record of the window (ISO 8601)",
    "history.last_seen": "correlation rules: last record of the window (ISO 8601)",
    "provider_refused": "id of the provider's own refusal of the client's location, when the "
    "error response shows it (rules/clients.yaml refusals), else null",
    "request.name_source": "how the destination name was learned: connect, url, sni, http_host, dns, ip",
    "provider.asns": "autonomous systems the provider's API hosts are served from (catalogue)",
    "provider.ranges": "the provider's published API ingress ranges (catalogue)",
    "provider.private_endpoints": "true when the provider offers private endpoints (private addresses)",
    "client.ip": "client address",
    "client.user": "authenticated user, when logged",
    "request.method": "HTTP method or CONNECT",
    "request.status": "HTTP status",
    "request.outcome": "allowed | blocked | error | null",
    "org.allowed_providers": "the organisation's provider allow-list (config)",
    "match.listed": "false when the host is only under a provider's endpoint domain, unlisted",
    "provider.approved": "true for an organisation overlay entry marked approved",
    "provider.restricted_controllers": "countries whose control bars an entity from the provider",
    "processing.region": "provider's region id where the request is processed (aws:eu-west-1)",
    "processing.geo": "country or zone of processing (DE, EU), when known",
    "processing.basis": "hostname | config | global | unknown: how the region is known",
    "processing.caveat": "id of the provider's caveat about that region, or null",
    "residency.required": "geos the site (else the organisation) must process in; empty: none",
    "entity.name": "legal entity of the record's site or client (config [entities])",
    "entity.controlled_from": "country the entity is controlled (majority-owned) from",
    "zone.eu_adequate": "the EEA and countries with an EU adequacy decision (rules/residency.yaml)",
}

_OPERATORS = {
    "equals", "not_equals", "in", "not_in", "exists", "empty", "in_networks", "not_in_networks"
}  # fmt: skip
_LIST_OPERATORS = {"in", "not_in", "in_networks", "not_in_networks"}
_RULE_KEYS = {
    "id", "title", "severity", "description", "references", "enabled", "when", "unless",
    "evidence", "correlate",
}  # fmt: skip
#: what a correlation rule may read: its history, and what is fixed per client and provider
_CORRELATION_FIELDS = ("history.", "provider.", "client.", "catalog.", "org.")

Context = Mapping[str, Any]
Predicate = Callable[[Context], bool]
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class RuleError(ApiwatchError, ValueError):
    """A rule file is invalid; the message names the file and the rule."""


@dataclass(frozen=True)
class Correlation:
    """``correlate:`` of a rule: evaluated over the stored history (monitor.correlate)."""

    window: float  # seconds
    window_text: str  # as written, e.g. "24h"
    by: str  # "client": the user when the log names one, else the client address


def window_seconds(text: Any) -> float:
    """``24h``, ``90m``, ``2d`` -> seconds."""
    units = {"m": 60, "h": 3600, "d": 86400}
    if (
        not isinstance(text, str)
        or len(text) < 2
        or text[-1] not in units
        or not text[:-1].isdigit()
        or int(text[:-1]) < 1
    ):
        raise ValueError(f"window must be minutes, hours or days (e.g. 24h), got {text!r}")
    return float(int(text[:-1]) * units[text[-1]])


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    severity: str
    description: str
    references: tuple[str, ...]
    when: Mapping[str, Mapping[str, Any]]
    source: str
    predicate: Predicate
    fields: frozenset[str]  # every context field the rule reads
    evidence: tuple[str, ...] = ()  # context fields stored with what the rule raises
    correlate: Correlation | None = None  # a rule over the stored history, not one record

    def matches(self, ctx: Context) -> bool:
        return self.predicate(ctx)


def _operand(value: Any, networks: bool = False) -> Callable[[Context], Any]:
    if isinstance(value, str) and value.startswith("$"):
        name = value[1:]
        if networks:
            return lambda ctx: _networks(ctx.get(name))
        return lambda ctx: ctx.get(name)
    if isinstance(value, list):
        frozen: Any = _networks(tuple(value)) if networks else frozenset(value)
        return lambda ctx: frozen
    return lambda ctx: value


@lru_cache(maxsize=1024)
def _networks(cidrs: Iterable[str] | None) -> tuple[_Network, ...] | None:
    if cidrs is None:
        return None
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


@lru_cache(maxsize=65536)
def _address(text: Any) -> _Address | None:
    try:
        return ipaddress.ip_address(text) if isinstance(text, str) else None
    except ValueError:
        return None


def _in_networks(text: Any, nets: tuple[_Network, ...] | None) -> bool:
    addr = _address(text)
    return (
        addr is not None
        and nets is not None
        and any(addr.version == n.version and addr in n for n in nets)
    )


def _condition(field: str, op: str, value: Any) -> Predicate:
    get = _operand(value, networks=op.endswith("in_networks"))
    if op == "equals":
        return lambda ctx: ctx.get(field) == get(ctx)
    if op == "not_equals":
        return lambda ctx: ctx.get(field) != get(ctx)
    if op == "in":
        return lambda ctx: (c := get(ctx)) is not None and ctx.get(field) in c
    if op == "not_in":
        return lambda ctx: (c := get(ctx)) is None or ctx.get(field) not in c
    if op == "exists":
        want = bool(value)
        return lambda ctx: (ctx.get(field) is not None) is want
    if op == "empty":
        want = bool(value)
        return lambda ctx: (not ctx.get(field)) is want
    if op == "in_networks":
        return lambda ctx: _in_networks(ctx.get(field), get(ctx))
    if op == "not_in_networks":
        return lambda ctx: not _in_networks(ctx.get(field), get(ctx))
    raise AssertionError(op)  # unreachable: validated before


def _header(doc: Any, source: str, kind: str, allowed: set[str]) -> tuple[str, str]:
    """Checks shared by rules and packs: a mapping with an id, known keys, a title and a
    description; returns (id, ``source: kind 'id'`` for messages)."""
    if not isinstance(doc, dict):
        raise RuleError(f"{source}: a {kind} must be a mapping, got {type(doc).__name__}")
    ident = doc.get("id")
    if not isinstance(ident, str) or not ident:
        raise RuleError(f"{source}: {kind} without an 'id'")
    where = f"{source}: {kind} {ident!r}"
    unknown = set(doc) - allowed
    if unknown:
        raise RuleError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    for key in ("title", "description"):
        if not isinstance(doc.get(key), str) or not doc[key].strip():
            raise RuleError(f"{where}: '{key}' is required")
    return ident, where


def compile_rule(doc: Any, source: str) -> Rule:
    """Validate one rule document and compile its ``when`` block."""
    rid, where = _header(doc, source, "rule", _RULE_KEYS)
    severity = doc.get("severity")
    if severity not in SEVERITY_RANK:
        raise RuleError(
            f"{where}: severity must be one of {', '.join(SEVERITIES)}, got {severity!r}"
        )
    reads: set[str] = set()
    when = _block(doc.get("when"), "when", where, reads)
    if when is None:
        raise RuleError(
            f"{where}: 'when' must be a non-empty mapping of field: {{operator: value}}"
        )
    raw_unless = doc.get("unless", [])
    vetoes: list[Predicate] = []
    blocks = raw_unless if isinstance(raw_unless, list) else [raw_unless]
    for block in blocks if "unless" not in doc or blocks else [None]:
        compiled = _block(block, "unless", where, reads)
        if compiled is None:
            raise RuleError(
                f"{where}: 'unless' must be a mapping of field: {{operator: value}}, or a list of them"
            )
        vetoes.append(_all(compiled[1]))
    evidence = doc.get("evidence", [])
    if not isinstance(evidence, list) or not all(isinstance(f, str) for f in evidence):
        raise RuleError(f"{where}: evidence must be a list of field names")
    for field in evidence:
        if field not in FIELDS:
            raise RuleError(f"{where}: evidence: unknown field {field!r}")
    refs = doc.get("references", [])
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        raise RuleError(f"{where}: references must be a list of strings")
    correlation = None
    if "correlate" in doc:
        spec = doc["correlate"]
        if not isinstance(spec, dict) or set(spec) - {"window", "by"}:
            raise RuleError(f"{where}: correlate: expected {{window: 24h, by: client}}")
        try:
            text = spec.get("window", "24h")
            correlation = Correlation(window_seconds(text), text, spec.get("by", "client"))
        except ValueError as exc:
            raise RuleError(f"{where}: correlate: {exc}") from None
        if correlation.by != "client":
            raise RuleError(f"{where}: correlate: by must be client, got {correlation.by!r}")
    for field in sorted(reads | set(evidence)):
        if correlation is not None and not field.startswith(_CORRELATION_FIELDS):
            raise RuleError(f"{where}: {field}: a correlation rule reads history, provider, "
                            "client, catalog and org fields only")  # fmt: skip
        if correlation is None and field.startswith("history."):
            raise RuleError(f"{where}: {field}: history fields need 'correlate'")
    all_of = _all(when[1])
    if not vetoes:
        predicate = all_of
    else:

        def predicate(ctx: Context, _vetoes: tuple[Predicate, ...] = tuple(vetoes)) -> bool:
            return all_of(ctx) and not any(v(ctx) for v in _vetoes)

    return Rule(
        id=rid,
        title=doc["title"].strip(),
        severity=severity,
        description=doc["description"].strip(),
        references=tuple(refs),
        when=when[0],
        source=source,
        predicate=predicate,
        fields=frozenset(reads),
        evidence=tuple(evidence),
        correlate=correlation,
    )


def _all(predicates: list[Predicate]) -> Predicate:
    def predicate(ctx: Context, _ps: tuple[Predicate, ...] = tuple(predicates)) -> bool:
        return all(p(ctx) for p in _ps)

    return predicate


def _block(
    block: Any, key: str, where: str, reads: set[str]
) -> tuple[Mapping[str, Mapping[str, Any]], list[Predicate]] | None:
    """Validate and compile a ``when`` / ``unless`` block; ``None`` when it is not a
    non-empty mapping. The fields it reads are added to ``reads``."""
    if not isinstance(block, dict) or not block:
        return None
    predicates: list[Predicate] = []
    reads.update(block)
    for field, conds in block.items():
        if field not in FIELDS:
            inside = "" if key == "when" else f"{key}: "
            raise RuleError(
                f"{where}: {inside}unknown field {field!r} (known: {', '.join(FIELDS)})"
            )
        if not isinstance(conds, dict) or not conds:
            raise RuleError(f"{where}: {field}: expected {{operator: value}}")
        for op, value in conds.items():
            if op not in _OPERATORS:
                raise RuleError(
                    f"{where}: {field}: unknown operator {op!r} (known: {', '.join(sorted(_OPERATORS))})"
                )
            ref = isinstance(value, str) and value.startswith("$")
            if ref and value[1:] not in FIELDS:
                raise RuleError(f"{where}: {field}: {op}: unknown field reference {value!r}")
            if op in _LIST_OPERATORS and not (isinstance(value, list) or ref):
                raise RuleError(f"{where}: {field}: {op} needs a list or a $field reference")
            if op in ("exists", "empty") and not isinstance(value, bool):
                raise RuleError(f"{where}: {field}: {op} needs true or false")
            if op.endswith("in_networks") and not ref:
                try:
                    _networks(tuple(str(v) for v in value))
                except ValueError as exc:
                    raise RuleError(f"{where}: {field}: {op}: {exc}") from None
            predicates.append(_condition(field, op, value))
            if ref:
                reads.add(value[1:])
    return block, predicates


class RuleSet:
    """The enabled rules, in a stable order (file name, then position in file)."""

    def __init__(self, rules: Iterable[Rule]):
        self.rules = list(rules)
        #: rules over the stored history (monitor.correlate), not evaluated per record
        self.correlations = [r for r in self.rules if r.correlate is not None]
        self._per_record = [r for r in self.rules if r.correlate is None]
        seen: dict[str, str] = {}
        for rule in self.rules:
            if rule.id in seen:
                raise RuleError(
                    f"{rule.source}: rule {rule.id!r}: duplicate id (also in {seen[rule.id]})"
                )
            seen[rule.id] = rule.source
        #: the context fields any rule reads: evaluation results depend on nothing else
        self.fields: tuple[str, ...] = tuple(
            sorted(set().union(*(r.fields for r in self._per_record)))
        )

    @classmethod
    def load(cls, paths: Iterable[Path]) -> RuleSet:
        """Load every ``*.yaml``/``*.yml`` file (or directory of them); multi-document files allowed."""
        rules: list[Rule] = []
        for path in paths:
            files = (
                sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
                if path.is_dir()
                else [path]
            )
            for file in files:
                try:
                    docs = safe_load_all(file.read_text(encoding="utf-8"))
                except (OSError, YamlError) as exc:
                    raise RuleError(f"{file}: cannot load: {exc}") from exc
                for doc in docs:
                    if doc is None:
                        continue
                    rule = compile_rule(doc, str(file))
                    if doc.get("enabled", True):
                        rules.append(rule)
        return cls(rules)

    def evaluate(self, ctx: Context) -> list[Rule]:
        """The per-record rules that hold for one record's context."""
        return [r for r in self._per_record if r.predicate(ctx)]


_PACK_KEYS = {"id", "title", "description", "references", "default", "includes", "checked"}


@dataclass(frozen=True)
class Pack:
    """An opt-in rule set (``rules/packs/ID.yaml``), switched on by config
    ``[organisation] packs``. ``includes`` names rules of ``rules/policies`` that belong to
    the pack: they are dropped while the pack is off."""

    id: str
    title: str
    description: str
    references: tuple[str, ...]
    default: bool
    includes: tuple[str, ...]
    rules: tuple[Rule, ...]
    source: str


def load_packs(directory: Path) -> dict[str, Pack]:
    """Every pack in ``directory`` (none when it does not exist). A pack file is one mapping:
    ``pack:`` (id, title, description, references, default, includes, checked) and
    ``rules:`` (rule documents); every pack rule must cite its legal or policy reference."""
    packs: dict[str, Pack] = {}
    if not directory.is_dir():
        return packs
    for file in sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml")):
        try:
            doc = safe_load(file.read_text(encoding="utf-8"))
        except (OSError, YamlError) as exc:
            raise RuleError(f"{file}: cannot load: {exc}") from exc
        if not isinstance(doc, dict) or set(doc) - {"pack", "rules"} or "pack" not in doc:
            raise RuleError(f"{file}: a pack file is a mapping with 'pack' and 'rules'")
        meta = doc["pack"]
        pid, where = _header(meta, str(file), "pack", _PACK_KEYS)
        refs = meta.get("references")
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
            raise RuleError(f"{where}: 'references' must list the legal or policy sources")
        if not isinstance(meta.get("checked"), str):
            raise RuleError(f"{where}: 'checked' (the date the references were read) is required")
        default = meta.get("default", False)
        includes = meta.get("includes", [])
        if not isinstance(default, bool):
            raise RuleError(f"{where}: default must be true or false")
        if not isinstance(includes, list) or not all(isinstance(r, str) for r in includes):
            raise RuleError(f"{where}: includes must be a list of rule ids")
        rule_docs = doc.get("rules") or []
        if not isinstance(rule_docs, list) or not (rule_docs or includes):
            raise RuleError(f"{where}: 'rules' must be a list (or the pack includes rules)")
        rules = []
        for rule_doc in rule_docs:
            rule = compile_rule(rule_doc, str(file))
            if not rule.references:
                raise RuleError(f"{file}: rule {rule.id!r}: a pack rule needs its references")
            rules.append(rule)
        if pid in packs:
            raise RuleError(f"{where}: duplicate pack id (also in {packs[pid].source})")
        packs[pid] = Pack(
            id=pid,
            title=meta["title"].strip(),
            description=" ".join(meta["description"].split()),
            references=tuple(refs),
            default=default,
            includes=tuple(includes),
            rules=tuple(rules),
            source=str(file),
        )
    return packs


def with_packs(base: RuleSet, packs: Mapping[str, Pack], enabled: Iterable[str]) -> RuleSet:
    """``base`` without the rules of packs that are off, plus the rules of packs that are on."""
    on = list(dict.fromkeys(enabled))
    for pid in on:
        if pid not in packs:
            known = ", ".join(sorted(packs)) or "none"
            raise RuleError(f"organisation.packs: unknown pack {pid!r} (packs: {known})")
    dropped = {rid for pid, pack in packs.items() if pid not in on for rid in pack.includes}
    rules = [r for r in base.rules if r.id not in dropped]
    rules += [r for pid in on for r in packs[pid].rules]
    return RuleSet(rules)


def default_packs(packs: Mapping[str, Pack]) -> tuple[str, ...]:
    return tuple(pid for pid, pack in packs.items() if pack.default)
