"""The scan pipeline: collect → identify → geolocate → evaluate → store.

Each stage is a small object that can be used alone; :class:`Pipeline` wires them for one
run. Only observations whose destination the catalogue knows go past *identify*, and every
distinct host, client and address is looked up once (memoised), which is what keeps a scan
of millions of lines fast.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from monitor.catalog import Catalog, Match
from monitor.collectors import CollectOptions, Diagnostics, InputError, collect
from monitor.config import Config
from monitor.egress import Egress, EgressOptions, EgressResolver
from monitor.geo import GeoAnswer, GeoResolver
from monitor.observation import Observation, canonical_ip, iso_utc
from monitor.policy import SEVERITY_RANK, Rule, RuleSet
from monitor.store import IngestResult, Store

BLOCKED_STATUSES = frozenset({401, 403, 407, 451})
BATCH = 2000


@dataclass(frozen=True, slots=True)
class Enriched:
    """An LLM observation with everything the rules may look at."""

    obs: Observation
    match: Match
    egress: Egress
    dest: GeoAnswer | None
    outcome: str | None


def outcome_of(obs: Observation) -> str | None:
    """allowed | blocked | error, from the proxy verdict and HTTP status."""
    if (obs.result and "DENIED" in obs.result) or obs.status in BLOCKED_STATUSES:
        return "blocked"
    if obs.status is None or obs.status == 0:
        return "error" if obs.result and ("ABORTED" in obs.result or "ERR" in obs.result) else None
    return "allowed" if obs.status < 400 else "error"


class Identifier:
    """Stage 2: destination → provider, memoised per distinct host or address."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.by_host = lru_cache(maxsize=1 << 18)(self._by_host)

    def _by_host(self, host: str) -> Match | None:
        found = self.catalog.match_host(host)
        if found is None and (ip := canonical_ip(host)) is not None:
            found = self.catalog.match_ip(ip)
        return found

    def host_filter(self, host: str) -> bool:
        return self.by_host(host) is not None

    def identify(self, obs: Observation) -> Match | None:
        if obs.dest_host:
            return self.by_host(obs.dest_host)
        if obs.dest_ip:
            return self.catalog.match_ip(obs.dest_ip)
        return None


class Enricher:
    """Stage 3: egress point and destination geolocation."""

    def __init__(self, geo: GeoResolver, egress: EgressResolver):
        self.geo = geo
        self.egress = egress

    def enrich(self, obs: Observation, match: Match) -> Enriched:
        dest = self.geo.lookup(obs.dest_ip) if obs.dest_ip else None
        return Enriched(obs, match, self.egress.resolve(obs.client_ip), dest, outcome_of(obs))


class Evaluator:
    """Stage 4: builds the rule context (see :data:`monitor.policy.FIELDS`) and runs the rules."""

    def __init__(self, rules: RuleSet, catalog: Catalog, config: Config):
        self.rules = rules
        self.catalog = catalog
        self._major = catalog.major_allowed_countries()
        self._org_allowed = frozenset(config.allowed_providers)

    def context(self, e: Enriched) -> dict[str, Any]:
        p, o = e.match.provider, e.obs
        return {
            "match.kind": e.match.kind,
            "match.pattern": e.match.pattern,
            "match.confidence": e.match.confidence,
            "provider.id": p.id,
            "provider.kind": p.kind,
            "provider.category": p.category,
            "provider.hq_country": p.hq_country,
            "provider.region_list": p.region_list,
            "provider.allowed_countries": self.catalog.allowed_countries(p.id),
            "catalog.major_allowed_countries": self._major,
            "egress.ip": e.egress.ip,
            "egress.country": e.egress.country,
            "egress.site": e.egress.site,
            "egress.source": e.egress.source,
            "dest.host": o.dest_host,
            "dest.ip": o.dest_ip,
            "dest.country": e.dest.country if e.dest else None,
            "dest.asn": e.dest.asn if e.dest else None,
            "client.ip": o.client_ip,
            "client.user": o.user,
            "request.method": o.method,
            "request.status": o.status,
            "request.outcome": e.outcome,
            "org.allowed_providers": self._org_allowed,
        }

    def evaluate(self, e: Enriched) -> list[Rule]:
        return self.rules.evaluate(self.context(e))


def incident_id(
    rule: str,
    provider: str,
    dest_host: str | None,
    client_ip: str | None,
    egress_ip: str | None,
    egress_country: str | None,
    day: str,
) -> str:
    """Deterministic: the same traffic always aggregates into the same incident."""
    key = "\x1f".join(
        x or "" for x in (rule, provider, dest_host, client_ip, egress_ip, egress_country, day)
    )
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def observation_row(e: Enriched, obs_id: str, scan_id: int | None) -> dict[str, Any]:
    o = e.obs
    iso = iso_utc(o.ts)
    return {
        "id": obs_id,
        "ts": o.ts,
        "iso": iso,
        "day": iso[:10],
        "source": o.source,
        "line": o.line,
        "format": o.format,
        "client_ip": o.client_ip,
        "client_port": o.client_port,
        "user": o.user,
        "method": o.method,
        "dest_host": o.dest_host,
        "dest_port": o.dest_port,
        "dest_ip": o.dest_ip,
        "url": o.url,
        "status": o.status,
        "result": o.result,
        "bytes_out": o.bytes_out,
        "bytes_in": o.bytes_in,
        "host_source": o.host_source,
        "duration": o.duration,
        "ts_end": o.ts_end,
        "packets_out": o.packets_out,
        "packets_in": o.packets_in,
        "ech": o.ech,
        "provider": e.match.provider.id,
        "provider_kind": e.match.kind,
        "match_pattern": e.match.pattern,
        "site": e.egress.site,
        "egress_ip": e.egress.ip,
        "egress_country": e.egress.country,
        "egress_source": e.egress.source,
        "dest_country": e.dest.country if e.dest else None,
        "dest_asn": e.dest.asn if e.dest else None,
        "outcome": e.outcome,
        "scan_id": scan_id,
    }


def incident_rows(e: Enriched, rules: Iterable[Rule], day: str) -> list[dict[str, Any]]:
    o, p = e.obs, e.match.provider
    return [
        {
            "id": incident_id(
                r.id, p.id, o.dest_host, o.client_ip, e.egress.ip, e.egress.country, day
            ),
            "rule": r.id,
            "severity": r.severity,
            "title": r.title,
            "provider": p.id,
            "provider_kind": e.match.kind,
            "dest_host": o.dest_host or o.dest_ip,
            "client_ip": o.client_ip,
            "site": e.egress.site,
            "egress_ip": e.egress.ip,
            "egress_country": e.egress.country,
            "egress_source": e.egress.source,
            "day": day,
        }
        for r in rules
    ]


@dataclass
class ScanSummary:
    files: list[str] = field(default_factory=list)
    records: int = 0
    malformed: int = 0
    llm_observations: int = 0
    stored: int = 0
    duplicates: int = 0
    incidents_new: set[str] = field(default_factory=set)
    incidents_updated: set[str] = field(default_factory=set)
    new_by_rule: Counter[str] = field(default_factory=Counter)
    updated_by_rule: Counter[str] = field(default_factory=Counter)
    new_max_severity: str | None = None
    diag: Diagnostics = field(default_factory=Diagnostics)

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "records": self.records,
            "malformed": self.malformed,
            "llm_observations": self.llm_observations,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "incidents_new": len(self.incidents_new),
            "incidents_updated": len(self.incidents_updated - self.incidents_new),
            "new_by_rule": dict(self.new_by_rule),
            "updated_by_rule": dict(self.updated_by_rule),
            "new_max_severity": self.new_max_severity,
            "file_errors": [str(p) for p in self.diag.file_errors],
            "problems": [str(p) for p in self.diag.problems],
        }


class Pipeline:
    """All stages for one run, built from the catalogue, geodata, rules and configuration."""

    def __init__(
        self,
        catalog: Catalog,
        geo: GeoResolver,
        rules: RuleSet,
        config: Config,
        egress: EgressOptions,
        collect_options: CollectOptions,
    ):
        self.catalog = catalog
        self.geo = geo
        self.identifier = Identifier(catalog)
        self.enricher = Enricher(geo, EgressResolver(config.sites, geo, egress))
        self.evaluator = Evaluator(rules, catalog, config)
        self.collect_options = collect_options

    def observe(
        self,
        path: str,
        diag: Diagnostics,
        *,
        only_llm: bool = False,
        on_read: Callable[[int], None] | None = None,
    ) -> Iterator[tuple[Observation, Match | None]]:
        """Stages 1–2 for one input: observations with their catalogue match."""
        host_filter = self.identifier.host_filter if only_llm else None
        for obs in collect(path, self.collect_options, diag, host_filter, on_read):
            match = self.identifier.identify(obs)
            if match is not None or not only_llm:
                yield obs, match

    def scan(
        self,
        paths: Iterable[str],
        store: Store,
        scan_id: int,
        on_read: Callable[[int], None] | None = None,
    ) -> ScanSummary:
        """Every stage, for every input; commits one batch at a time."""
        summary = ScanSummary()
        diag = summary.diag
        batch: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        rule_of: dict[str, str] = {}
        severity_of: dict[str, str] = {}

        def flush() -> None:
            if batch:
                _account(summary, store.ingest(scan_id, batch), rule_of, severity_of)
                batch.clear()

        for path in paths:
            summary.files.append(path)
            seen: Counter[str] = Counter()  # identical records within one file stay distinct
            try:
                for obs, match in self.observe(path, diag, only_llm=True, on_read=on_read):
                    summary.llm_observations += 1
                    base = obs.record_id or _fallback_id(obs)
                    nth = seen[base]
                    seen[base] += 1
                    enriched = self.enricher.enrich(obs, match)  # type: ignore[arg-type]
                    row = observation_row(enriched, base if nth == 0 else f"{base}.{nth}", scan_id)
                    incs = incident_rows(enriched, self.evaluator.evaluate(enriched), row["day"])
                    for inc in incs:
                        rule_of[inc["id"]] = inc["rule"]
                        severity_of[inc["id"]] = inc["severity"]
                    batch.append((row, incs))
                    if len(batch) >= BATCH:
                        flush()
            except InputError as exc:
                diag.file_error(path, str(exc).removeprefix(f"{path}: "))
            flush()
        summary.records, summary.malformed = diag.records, diag.malformed
        return summary


def _account(
    summary: ScanSummary, res: IngestResult, rule_of: dict[str, str], severity_of: dict[str, str]
) -> None:
    summary.stored += res.stored
    summary.duplicates += res.duplicates
    for iid in res.new_incidents:
        summary.incidents_new.add(iid)
        summary.new_by_rule[rule_of[iid]] += 1
        sev = severity_of[iid]
        if (
            summary.new_max_severity is None
            or SEVERITY_RANK[sev] > SEVERITY_RANK[summary.new_max_severity]
        ):
            summary.new_max_severity = sev
    for iid in res.updated_incidents:
        if iid not in summary.incidents_new and iid not in summary.incidents_updated:
            summary.incidents_updated.add(iid)
            summary.updated_by_rule[rule_of[iid]] += 1


def _fallback_id(obs: Observation) -> str:
    key = "\x1f".join(
        str(v)
        for v in (
            obs.ts,
            obs.client_ip,
            obs.client_port,
            obs.method,
            obs.dest_host,
            obs.dest_port,
            obs.url,
            obs.status,
            obs.bytes_out,
            obs.bytes_in,
        )
    )
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()
