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

Operators: ``equals``, ``not_equals``, ``in``, ``not_in``, ``exists`` (true/false),
``empty`` (true/false, for lists). A value written ``$field`` is read from the same
context at evaluation time. ``in`` against a missing list is false; ``not_in`` is true.
Fields are the names in :data:`FIELDS`. Invalid rules fail at load time with the file,
the rule id and the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from monitor.errors import ApiwatchError

SEVERITIES = ("info", "low", "medium", "high", "critical")
SEVERITY_RANK = {name: i for i, name in enumerate(SEVERITIES)}

#: The evaluation context: every field a rule may name, with what it holds.
FIELDS: dict[str, str] = {
    "match.kind": "api | consumer | relay: how the destination matched the catalogue",
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

_OPERATORS = {"equals", "not_equals", "in", "not_in", "exists", "empty"}
_RULE_KEYS = {"id", "title", "severity", "description", "references", "enabled", "when"}

Context = Mapping[str, Any]
Predicate = Callable[[Context], bool]


class RuleError(ApiwatchError, ValueError):
    """A rule file is invalid; the message names the file and the rule."""


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

    def matches(self, ctx: Context) -> bool:
        return self.predicate(ctx)


def _operand(value: Any) -> Callable[[Context], Any]:
    if isinstance(value, str) and value.startswith("$"):
        name = value[1:]
        return lambda ctx: ctx.get(name)
    if isinstance(value, list):
        frozen = frozenset(value)
        return lambda ctx: frozen
    return lambda ctx: value


def _condition(field: str, op: str, value: Any) -> Predicate:
    get = _operand(value)
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
    when = doc.get("when")
    if not isinstance(when, dict) or not when:
        raise RuleError(
            f"{where}: 'when' must be a non-empty mapping of field: {{operator: value}}"
        )
    predicates: list[Predicate] = []
    reads: set[str] = set(when)
    for field, conds in when.items():
        if field not in FIELDS:
            raise RuleError(f"{where}: unknown field {field!r} (known: {', '.join(FIELDS)})")
        if not isinstance(conds, dict) or not conds:
            raise RuleError(f"{where}: {field}: expected {{operator: value}}")
        for op, value in conds.items():
            if op not in _OPERATORS:
                raise RuleError(
                    f"{where}: {field}: unknown operator {op!r} (known: {', '.join(sorted(_OPERATORS))})"
                )
            if isinstance(value, str) and value.startswith("$") and value[1:] not in FIELDS:
                raise RuleError(f"{where}: {field}: {op}: unknown field reference {value!r}")
            if op in ("in", "not_in") and not (
                isinstance(value, list) or (isinstance(value, str) and value.startswith("$"))
            ):
                raise RuleError(f"{where}: {field}: {op} needs a list or a $field reference")
            if op in ("exists", "empty") and not isinstance(value, bool):
                raise RuleError(f"{where}: {field}: {op} needs true or false")
            predicates.append(_condition(field, op, value))
            if isinstance(value, str) and value.startswith("$"):
                reads.add(value[1:])
    refs = doc.get("references", [])
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        raise RuleError(f"{where}: references must be a list of strings")

    def predicate(ctx: Context, _ps: tuple[Predicate, ...] = tuple(predicates)) -> bool:
        return all(p(ctx) for p in _ps)

    return Rule(
        id=rid,
        title=doc["title"].strip(),
        severity=severity,
        description=doc["description"].strip(),
        references=tuple(refs),
        when=when,
        source=source,
        predicate=predicate,
        fields=frozenset(reads),
    )


class RuleSet:
    """The enabled rules, in a stable order (file name, then position in file)."""

    def __init__(self, rules: Iterable[Rule]):
        self.rules = list(rules)
        seen: dict[str, str] = {}
        for rule in self.rules:
            if rule.id in seen:
                raise RuleError(
                    f"{rule.source}: rule {rule.id!r}: duplicate id (also in {seen[rule.id]})"
                )
            seen[rule.id] = rule.source
        #: the context fields any rule reads: evaluation results depend on nothing else
        self.fields: tuple[str, ...] = tuple(sorted(set().union(*(r.fields for r in self.rules))))

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
                    docs = list(yaml.safe_load_all(file.read_text(encoding="utf-8")))
                except (OSError, yaml.YAMLError) as exc:
                    raise RuleError(f"{file}: cannot load: {exc}") from exc
                for doc in docs:
                    if doc is None:
                        continue
                    rule = compile_rule(doc, str(file))
                    if doc.get("enabled", True):
                        rules.append(rule)
        return cls(rules)

    def evaluate(self, ctx: Context) -> list[Rule]:
        return [r for r in self.rules if r.predicate(ctx)]


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
            doc = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
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
