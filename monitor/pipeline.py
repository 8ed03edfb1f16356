"""The scan pipeline: collect → identify → geolocate → evaluate → ids → stored rows.

Each stage is a small object that can be used alone; :class:`Pipeline` wires them for one
run, and :meth:`Pipeline.process` is the whole record path for one part of an input (the
scanner only plans parts, forks producers and batches what they yield to the store).
Only observations whose destination the catalogue knows go past *identify*, and every
distinct host, client and address is looked up once (memoised), which is what keeps a scan
of millions of lines fast.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from monitor import __version__
from monitor.batch import CLIENT_OF, ROW_FIELDS, Batch, BatchBuilder, request_values
from monitor.catalog import Catalog, Match, Provider
from monitor.clients import Signatures, bundled_signatures
from monitor.collectors import CollectOptions, Diagnostics, collect
from monitor.collectors.squid import first_observation_id
from monitor.config import Config, Entity
from monitor.egress import Egress, EgressOptions, EgressResolver
from monitor.errors import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK
from monitor.geo import GeoAnswer, GeoResolver
from monitor.ids import finding_id, incident_id, observation_id, observed_record_id
from monitor.observation import RUN_RECORD, Known, Observation, canonical_ip, iso_day, known_codes
from monitor.policy import FIELDS, SEVERITY_RANK, Rule, RuleSet
from monitor.privacy import Pseudonymizer
from monitor.rows import CLIENT, COL, COLUMNS, CONTEXT, compiled, observation_row, row_builder

if TYPE_CHECKING:
    from monitor.store import IngestResult

ID = COL["id"]

BLOCKED_STATUSES = frozenset({401, 403, 407, 451})
#: a character no host name, address literal or catalogue pattern (``*``) holds: controls,
#: bidi, spaces, punctuation
_NOT_IN_HOSTS = re.compile(r"[^\w.:\[\]%*-]")


@dataclass(slots=True)
class Enriched:
    """An LLM observation with everything the rules may look at."""

    obs: Observation
    match: Match
    egress: Egress
    dest: GeoAnswer | None
    outcome: str | None

    @property
    def day(self) -> str:
        return iso_day(self.obs.ts)

    @property
    def dest_country(self) -> str | None:
        return self.dest.country if self.dest else None

    @property
    def dest_asn(self) -> int | None:
        return self.dest.asn if self.dest else None


def outcome_of(obs: Observation) -> str | None:
    """allowed | blocked | error, from the gateway's verdict and the HTTP status.

    Gateways log a block in their own words (Squid ``TCP_DENIED``, Zscaler ``Blocked``,
    Blue Coat ``DENIED``, TMG ``Denied Connection``), sometimes with status 200 for the
    block page, so the verdict is read before the status."""
    verdict = obs.result.lower() if obs.result else ""
    if "deni" in verdict or "block" in verdict or obs.status in BLOCKED_STATUSES:
        return "blocked"
    if obs.status is None or obs.status == 0:
        return "error" if "abort" in verdict or "err" in verdict else None
    return "allowed" if obs.status < 400 else "error"


#: The provider of a destination the catalogue does not know, reached with an LLM-shaped
#: request (an API path, an LLM SDK): a relay or shell-site candidate.
UNKNOWN_PROVIDER = Provider(
    id="unknown", name="Host outside the catalogue", kind="unknown", category=None,
    hq_country=None, region_list=None, sources=(),
)  # fmt: skip


class Identifier:
    """Stage 2: destination → provider and processing location, memoised per distinct host,
    address or request shape. ``azure_resources`` (config ``[residency.azure_resources]``)
    maps Azure resource names, which the catalogue cannot place, to their Azure region."""

    def __init__(
        self,
        catalog: Catalog,
        azure_resources: Mapping[str, str] | None = None,
        signatures: Signatures | None = None,
    ):
        self.catalog = catalog
        self._azure = dict(azure_resources or {})
        self.signatures = signatures or bundled_signatures()
        self.by_host = lru_cache(maxsize=1 << 18)(self._by_host)
        #: one Match per request signature (matches are compared and memoised by identity)
        self._shapes: dict[str, Match] = {}
        self.host_filter = _LlmFilter(self)

    def _by_host(self, host: str) -> Match | None:
        if self.bad_host(host):
            return None
        found = self.catalog.match_host(host)
        if found is None and (ip := canonical_ip(host)) is not None:
            found = self.catalog.match_ip(ip)
            if found is not None:  # the name is the address
                found = replace(found, on="host")
        if found is not None and found.processing.resource_map == "azure" and self._azure:
            region = self._azure.get(host.partition(".")[0])
            if region is not None:
                region = "azure:" + region
                found = replace(
                    found,
                    processing=replace(
                        found.processing,
                        region=region,
                        geo=self.catalog.residency.geo_of(region),
                        basis="config",
                    ),
                )
        return found

    def shape(
        self, url: str | None, user_agent: str | None, ja4: str | None = None
    ) -> Match | None:
        """A match by the request itself: an LLM API path, an LLM SDK's User-Agent, or a
        JA4 only LLM clients send (see :meth:`Signatures.shape`)."""
        why = self.signatures.shape(url, user_agent, ja4)
        if why is None:
            return None
        found = self._shapes.get(why)
        if found is None:
            confidence = "low" if why.startswith("ja4:") else "medium"
            found = Match(UNKNOWN_PROVIDER, "unknown", why, confidence, on="request")
            self._shapes[why] = found
        return found

    @staticmethod
    @lru_cache(maxsize=1 << 14)
    def bad_host(host: str) -> bool:
        """A destination no DNS name can be: malformed input, never an LLM observation."""
        return _NOT_IN_HOSTS.search(host) is not None

    def identify(self, obs: Observation) -> Match | None:
        """By name first; a name the catalogue does not know, sent to an address in a
        provider's published ingress range, matches by that range (fronted traffic); else
        an LLM-shaped request matches as a host outside the catalogue."""
        if obs.dest_host:
            if self.bad_host(obs.dest_host):
                return None  # malformed: reported, never an LLM observation
            found = self.by_host(obs.dest_host)
            if found is None and obs.dest_ip:
                found = self.catalog.match_ip(obs.dest_ip)
        elif obs.dest_ip:
            found = self.catalog.match_ip(obs.dest_ip)
        else:
            found = None
        if found is None and (obs.url or obs.user_agent or obs.ja4):
            found = self.shape(obs.url, obs.user_agent, obs.ja4)
        return found


class _LlmFilter:
    """The collectors' filter: hosts the catalogue knows, (``requests``) any request whose
    path or User-Agent is an LLM API's, and (``ingress``) any destination address inside a
    provider's published ingress ranges, whatever its name (fronted traffic)."""

    __slots__ = ("_by_host", "_bad_host", "_shape", "_match_ip", "markers", "ja4s", "networks")

    def __init__(self, identifier: Identifier):
        self._by_host = identifier.by_host
        self._bad_host = identifier.bad_host
        self._shape = identifier.shape
        self._match_ip = identifier.catalog.match_ip
        #: byte strings one of which any LLM API path holds (collectors' cheap pre-test)
        self.markers = identifier.signatures.markers
        #: JA4 values that alone make a TLS connection LLM-shaped (``llm: true`` clients)
        self.ja4s = frozenset(j for j, c in identifier.signatures.tls.items() if c.llm)
        #: the ranges ``ingress`` looks in (for collectors' C pre-passes)
        self.networks = identifier.catalog.ingress_networks()

    def __call__(self, host: str) -> bool:
        """Records worth building: LLM destinations, and bad hosts (to be reported)."""
        return self._by_host(host) is not None or self._bad_host(host)

    def requests(self, url: str | None, user_agent: str | None, ja4: str | None = None) -> bool:
        return self._shape(url, user_agent, ja4) is not None

    def ingress(self, ip: str) -> bool:
        return self._match_ip(ip) is not None


class Enricher:
    """Stage 3: egress point and destination geolocation."""

    def __init__(self, geo: GeoResolver, egress: EgressResolver):
        self.geo = geo
        self.egress = egress

    def enrich(self, obs: Observation, match: Match) -> Enriched:
        dest = self.geo.lookup(obs.dest_ip) if obs.dest_ip else None
        egress = self.egress.resolve(obs.client_ip, obs.egress_ip)
        return Enriched(obs, match, egress, dest, outcome_of(obs))


#: How each rule-context field (:data:`monitor.policy.FIELDS`) is read from an enriched record.
_GETTERS: dict[str, Callable[[Enriched], Any]] = {
    "match.kind": lambda e: e.match.kind,
    "match.pattern": lambda e: e.match.pattern,
    "match.confidence": lambda e: e.match.confidence,
    "provider.id": lambda e: e.match.provider.id,
    "provider.kind": lambda e: e.match.provider.kind,
    "provider.category": lambda e: e.match.provider.category,
    "provider.hq_country": lambda e: e.match.provider.hq_country,
    "provider.region_list": lambda e: e.match.provider.region_list,
    "egress.ip": lambda e: e.egress.ip,
    "egress.country": lambda e: e.egress.country,
    "egress.geo_country": lambda e: e.egress.geo_country,
    "egress.site": lambda e: e.egress.site,
    "egress.source": lambda e: e.egress.source,
    "dest.host": lambda e: e.obs.dest_host,
    "dest.ip": lambda e: e.obs.dest_ip,
    "dest.country": lambda e: e.dest.country if e.dest else None,
    "dest.asn": lambda e: e.dest.asn if e.dest else None,
    "dest.org": lambda e: e.dest.org if e.dest else None,
    "dest.scope": lambda e: e.dest.scope if e.dest else None,
    "dest.address_source": lambda e: address_source(e.obs),
    "match.on": lambda e: e.match.on,
    "request.url": lambda e: e.obs.url,
    "client.user_agent": lambda e: e.obs.user_agent,
    "client.ja4": lambda e: e.obs.ja4,
    "request.name_source": lambda e: e.obs.host_source,
    "provider.asns": lambda e: e.match.provider.asns_for(e.match.pattern),
    "provider.ranges": lambda e: e.match.provider.ranges,
    "provider.private_endpoints": lambda e: e.match.provider.private_endpoints,
    "client.ip": lambda e: e.obs.client_ip,
    "client.user": lambda e: e.obs.user,
    "request.method": lambda e: e.obs.method,
    "request.status": lambda e: e.obs.status,
    "request.outcome": lambda e: e.outcome,
    "match.listed": lambda e: e.match.listed,
    "provider.approved": lambda e: e.match.provider.approved,
    "provider.restricted_controllers": lambda e: e.match.provider.restricted_controllers,
    "processing.region": lambda e: e.match.processing.region,
    "processing.geo": lambda e: e.match.processing.geo,
    "processing.basis": lambda e: e.match.processing.basis,
    "processing.caveat": lambda e: e.match.processing.caveat,
}


#: The observation fields each rule-context field reads from the record itself; whatever a
#: field reads through the match, the egress point, the destination's geolocation or the
#: outcome follows from :data:`RECORD_READS`. The record path's memo key holds these fields
#: for the fields the loaded rules read (tests/test_record_memo.py checks every getter).
OBS_READS: dict[str, tuple[str, ...]] = {
    "dest.host": ("dest_host",),
    "dest.ip": ("dest_ip",),
    "dest.range_provider": ("dest_ip",),
    "dest.address_source": ("dest_ip", "format"),
    "request.url": ("url",),
    "request.api_path": ("url",),
    "request.name_source": ("host_source",),
    "request.method": ("method",),
    "request.status": ("status",),
    "request.outcome": ("result", "status"),
    "provider_refused": ("status", "response_excerpt"),
    "client.ip": ("client_ip",),
    "client.user": ("user",),
    "client.user_agent": ("user_agent",),
    "client.software": ("user_agent",),
    "client.ja4": ("ja4",),
    "client.tls_software": ("ja4",),
    "entity.name": ("client_ip",),
    "entity.controlled_from": ("client_ip",),
}
#: What the stages after *identify* read of every record whatever the rules: the egress
#: point (client, logged egress), the destination's geolocation, the outcome, and the
#: incident ids (host, address, client, user). With the match and the day, the memo key.
RECORD_READS = ("dest_host", "dest_ip", "client_ip", "egress_ip", "user", "result", "status")


def obs_reads(fields: Iterable[str]) -> frozenset[str]:
    """The observation fields that decide the values of the rule-context ``fields``."""
    return frozenset(a for f in fields for a in OBS_READS.get(f, ()))


#: Where each input format reads the destination address (evidence for the network rules).
ADDRESS_SOURCES = {
    "pcap": "packet destination",
    "squid": "%<a",
    "squid-common": "%<a",
    "squid-combined": "%<a",
    "squid-custom": "%<a",
    "zeek": "id.resp_h",
    "zeek-json": "id.resp_h",
    "suricata-eve": "dest_ip",
    "zscaler-csv": "sip",  # the default feed's server IP column
    "zscaler-json": "sip / serverip",  # as the feed template names it
    "zscaler-kv": "dst / sip / serverip",
    "elff": "s-ip / s-supplier-ip",
    "mapped": "dest_ip column",
}


def address_source(obs: Observation) -> str | None:
    if obs.dest_ip is None:
        return None
    return ADDRESS_SOURCES.get(obs.format, obs.format)


def entity_of(config: Config) -> Callable[[str | None, str | None], Entity | None]:
    """The ``[entities]`` entry a record belongs to: by client network first (the more
    specific), then by site; memoised per (client, site)."""
    by_site = {site: ent for ent in config.entities.values() for site in ent.sites}
    networks = [(net, ent) for ent in config.entities.values() for net in ent.client_cidrs]
    memo: dict[tuple[str | None, str | None], Entity | None] = {}

    def lookup(client_ip: str | None, site: str | None) -> Entity | None:
        key = (client_ip, site)
        if key in memo:
            return memo[key]
        found = None
        if networks and client_ip:
            try:
                addr = ipaddress.ip_address(client_ip)
            except ValueError:
                addr = None
            if addr is not None:
                found = next((ent for net, ent in networks if addr in net), None)
        if found is None and site is not None:
            found = by_site.get(site)
        if len(memo) > 65536:
            memo.clear()
        memo[key] = found
        return found

    return lookup


def residency_requirements(config: Config, catalog: Catalog) -> dict[str | None, frozenset[str]]:
    """Per site (``None``: records of no site) the geos it may process in, from the site's
    ``data_residency``, else the organisation's; an empty set is no requirement."""
    tables = catalog.residency
    org = tables.allowed_geos(config.data_residency)
    out: dict[str | None, frozenset[str]] = {None: org}
    for name, site in config.sites.items():
        out[name] = org if site.data_residency is None else tables.allowed_geos(site.data_residency)
    return out


class Evaluator:
    """Stage 4: builds the rule context (see :data:`monitor.policy.FIELDS`) and runs the rules.

    Results are memoised on the values of the fields the rules actually read, so millions of
    records cost one evaluation per distinct combination (provider, egress country, …).
    """

    def __init__(
        self,
        rules: RuleSet,
        catalog: Catalog,
        config: Config,
        signatures: Signatures | None = None,
    ):
        self.rules = rules
        sig = signatures or bundled_signatures()
        major = catalog.major_allowed_countries()
        org = frozenset(config.allowed_providers)
        allowed = catalog.allowed_countries
        by_range = catalog.match_ip
        required = residency_requirements(config, catalog)
        no_requirement = required[None]
        entity = entity_of(config)
        eu_adequate = catalog.residency.allowed_geos(
            ("EU_ADEQUATE",) if "EU_ADEQUATE" in catalog.residency.zones else ()
        )

        def entity_name(e: Enriched) -> str | None:
            found = entity(e.obs.client_ip, e.egress.site)
            return found.name if found else None

        def controlled_from(e: Enriched) -> str | None:
            found = entity(e.obs.client_ip, e.egress.site)
            return found.controlled_from if found else None

        self._getters: dict[str, Callable[[Enriched], Any]] = {
            **_GETTERS,
            "dest.range_provider": lambda e: (
                (m := by_range(e.obs.dest_ip)) and m.provider.id if e.obs.dest_ip else None
            ),
            "request.api_path": lambda e: sig.api_path(e.obs.url),
            "client.software": lambda e: (c := sig.user_agent(e.obs.user_agent)) and c.id,
            "client.tls_software": lambda e: (c := sig.tls_client(e.obs.ja4)) and c.id,
            "provider_refused": lambda e: sig.refusal(e.obs.status, e.obs.response_excerpt),
            "provider.allowed_countries": lambda e: allowed(e.match.provider.id),
            "catalog.major_allowed_countries": lambda e: major,
            "org.allowed_providers": lambda e: org,
            "residency.required": lambda e: required.get(e.egress.site, no_requirement),
            "entity.name": entity_name,
            "entity.controlled_from": controlled_from,
            "zone.eu_adequate": lambda e: eu_adequate,
        }
        missing = {f for f in FIELDS if not f.startswith("history.")} - set(self._getters)
        assert not missing, f"no getter for rule fields {missing}"  # history: monitor.correlate
        # the memo key holds only what varies between records: provider facts follow from
        # provider.id, the requirement from the site, entity facts from the entity's name,
        # and catalogue and organisation facts are fixed for the run (provider.asns also
        # follows match.pattern, which the key then holds)
        derived = {"residency.required": "egress.site", "entity.controlled_from": "entity.name"}
        varying = {
            "provider.id" if f.startswith("provider.") else derived.get(f, f)
            for f in rules.fields
            if not f.startswith(("catalog.", "org.", "zone."))
        }
        if "provider.asns" in rules.fields:
            varying.add("match.pattern")
        self._key_getters = [self._getters[f] for f in sorted(varying)]
        # entities matched by client network make entity facts the client's; by site, not
        by_network = any(ent.client_cidrs for ent in config.entities.values())
        own = {f for f in rules.fields if by_network or not f.startswith("entity.")}
        #: whether verdicts may differ between clients leaving by one egress point
        self.client_verdicts = bool(obs_reads(own) & {"client_ip", "user"})
        self._memo: dict[tuple[Any, ...], list[Rule]] = {}
        self._evidence_getters = {
            r.id: [self._getters[f] for f in r.evidence]
            for r in rules.rules
            if r.evidence and r.correlate is None
        }
        self._by_rules: dict[tuple[str, ...], tuple[Callable[[Enriched], Any], ...]] = {}

    def evidence_getters(self, rule_ids: tuple[str, ...]) -> tuple[Callable[[Enriched], Any], ...]:
        """The getters of the evidence fields of the rules ``rule_ids`` (memoised)."""
        found = self._by_rules.get(rule_ids)
        if found is None:
            getters = self._evidence_getters
            found = self._by_rules[rule_ids] = tuple(
                get for rid in rule_ids for get in getters.get(rid, ())
            )
        return found

    def evidence(self, e: Enriched, rule: Rule) -> dict[str, Any]:
        """The fields ``rule`` stores with what it raises, as JSON values."""
        return {f: json_value(self._getters[f](e)) for f in rule.evidence}

    def context(self, e: Enriched) -> dict[str, Any]:
        return {name: get(e) for name, get in self._getters.items()}

    def evaluate(self, e: Enriched) -> list[Rule]:
        key = tuple([get(e) for get in self._key_getters])
        found = self._memo.get(key)
        if found is None:
            if len(self._memo) > 65536:
                self._memo.clear()
            found = self._memo[key] = self.rules.evaluate(self.context(e))
        return found


def json_value(value: Any) -> Any:
    """A context value as stored in an incident's facts (sets as sorted lists)."""
    if isinstance(value, (frozenset, set, tuple, list)):
        return sorted(value)
    return value


def incident_rows(
    e: Enriched,
    rules: Iterable[Rule],
    day: str,
    evidence: Callable[[Enriched, Rule], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One incident row per rule raised; ``facts`` holds the rule's evidence fields."""
    o, p = e.obs, e.match.provider
    return [
        {
            "id": incident_id(
                r.id, p.id, o.dest_host, o.client_ip, e.egress.ip, e.egress.country, day, o.user
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
            "facts": evidence(e, r) if evidence is not None and r.evidence else None,
            "user": o.user,
            "finding_id": finding_id(r.id, p.id, e.egress.site, e.egress.country),
        }
        for r in rules
    ]


@dataclass(frozen=True)
class Part:
    """One unit of producer work: a whole input, or a byte range of a plain log."""

    path: str
    fmt: str | None = None
    byte_range: tuple[int, int] | None = None
    skip: int = 0  # compressed input: content bytes an earlier scan already read


#: What the record path yields per LLM record: (record id, stored row, incident rows).
Produced = tuple[str, list[Any], list[dict[str, Any]]]


#: The counts of a scan that add up across scans (``apiwatch watch`` keeps their totals).
SCAN_COUNTS = ("records", "malformed", "llm_observations", "stored", "duplicates")


def incident_counts(new: set[str], updated: set[str]) -> dict[str, int]:
    """How many incidents a scan (or several) raised, and how many others it updated."""
    return {"incidents_new": len(new), "incidents_updated": len(updated - new)}


@dataclass
class ScanSummary:
    files: list[str] = field(default_factory=list)
    records: int = 0
    malformed: int = 0
    llm_observations: int = 0
    stored: int = 0
    duplicates: int = 0
    expired: int = 0  # older than the database's retention (db prune): not stored
    skipped_bytes: int = 0  # already read by an earlier scan (incremental)
    incidents_new: set[str] = field(default_factory=set)
    incidents_updated: set[str] = field(default_factory=set)
    new_by_rule: Counter[str] = field(default_factory=Counter)
    updated_by_rule: Counter[str] = field(default_factory=Counter)
    new_max_severity: str | None = None
    findings_new: set[str] = field(default_factory=set)
    findings_reopened: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)  # settings that contradict each other
    fail_on_matched: list[str] = field(default_factory=list)  # findings --fail-on counts
    diag: Diagnostics = field(default_factory=Diagnostics)

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            **{k: getattr(self, k) for k in SCAN_COUNTS},
            "expired": self.expired,
            "skipped_bytes": self.skipped_bytes,
            **incident_counts(self.incidents_new, self.incidents_updated),
            "new_by_rule": dict(sorted(self.new_by_rule.items())),
            "updated_by_rule": dict(sorted(self.updated_by_rule.items())),
            "new_max_severity": self.new_max_severity,
            "findings_new": len(self.findings_new),
            "findings_reopened": len(self.findings_reopened),
            "warnings": self.warnings,
            "file_errors": [str(p) for p in self.diag.file_errors],
            "problems": [str(p) for p in self.diag.problems],
            "notices": [str(p) for p in self.diag.notices],
        }

    def exit_code(self, fail_on: str | None = None) -> int:
        """What the scan exits with (README, "Exit codes"): an unreadable input is an error;
        else findings ``fail_on`` matched (:meth:`monitor.app.App.raised_findings`, which
        the app sets in ``fail_on_matched``) are findings."""
        if self.diag.file_errors:
            return EXIT_ERROR
        if fail_on and self.fail_on_matched:
            return EXIT_FINDINGS
        return EXIT_OK

    def scan_record(
        self, fail_on: str | None = None
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """What the ``scans`` table keeps of this summary, and the ``scan_problems`` rows."""
        record = self.as_dict()
        for key in ("problems", "notices", "new_max_severity", "findings_new", "findings_reopened",
                    "warnings"):  # fmt: skip
            del record[key]
        record["by_rule"] = {
            "new": record.pop("new_by_rule"),
            "updated": record.pop("updated_by_rule"),
        }
        record["exit_code"] = self.exit_code(fail_on)
        d = self.diag
        problems = [
            {"source": p.source, "line": p.line, "reason": p.reason, "excerpt": p.excerpt}
            for p in (*d.file_errors, *d.problems, *d.notices)
        ]
        return record, problems

    def account(self, res: IngestResult) -> None:
        """Add one stored batch."""
        rule_of = res.rule_of
        self.stored += res.stored
        self.duplicates += res.duplicates
        self.expired += res.expired
        self.findings_new |= res.new_findings
        self.findings_reopened |= res.reopened_findings
        for iid in res.new_incidents:
            rule, sev = rule_of[iid]
            self.incidents_new.add(iid)
            self.new_by_rule[rule] += 1
            if (
                self.new_max_severity is None
                or SEVERITY_RANK[sev] > SEVERITY_RANK[self.new_max_severity]
            ):
                self.new_max_severity = sev
        for iid in res.updated_incidents:
            if iid not in self.incidents_new and iid not in self.incidents_updated:
                self.incidents_updated.add(iid)
                self.updated_by_rule[rule_of[iid][0]] += 1


#: the observation fields :func:`place` sets from the match
PLACED = ("processing_region", "processing_geo", "residency_basis", "residency_caveat")


def place(obs: Observation, match: Match) -> None:
    """Where the matched endpoint processes the request (region, geo, basis, caveat)."""
    p = match.processing
    obs.processing_region, obs.processing_geo = p.region, p.geo
    obs.residency_basis, obs.residency_caveat = p.basis, p.caveat


_CLIENT_IP, _USER = (COL[c] for c in CLIENT)


def client_row(row: tuple[Any, ...], client: tuple[str | None, str | None]) -> tuple[Any, ...]:
    """A stored row with another client's columns (``client``: their values, in CLIENT
    order): a copy and two stores, which cost less than a display of every column."""
    made = list(row)
    made[_CLIENT_IP], made[_USER] = client
    return tuple(made)


@dataclass(slots=True)
class Context:
    """What the stages after *identify* make of every record of one memo key (read only:
    not frozen, which would make each of the many built cost more)."""

    match: Match  # held, so that the id in the key stays this match's
    egress: Egress
    dest: GeoAnswer | None
    outcome: str | None
    day: str
    rules: list[Rule]
    #: the stored row of the first record of the key (as stored: pseudonymised or not),
    #: whose columns the key decides are every record's (see :meth:`RecordMemo.row`)
    row: tuple[Any, ...]
    #: the incident rows, when the key decides them; else the getters of the evidence the
    #: rules raised keep, and the incident rows per distinct evidence
    incidents: list[dict[str, Any]] | None
    evidence: tuple[Callable[[Enriched], Any], ...] = ()
    by_evidence: dict[tuple[Any, ...], list[dict[str, Any]]] = field(default_factory=dict)
    #: numbers of the row's values the key decides: of its context, of its client (for
    #: the run: never reused, unlike ``id``, once the memo let go of a value)
    context_no: int = 0
    client_no: int = 0


class RecordMemo:
    """The record path's memo: a client calls the same host from the same egress all day,
    so most records share their enrichment, rule verdicts and incident rows with an earlier
    one. The key is the match (by identity: identification is memoised per host), the UTC
    day and the observation fields those stages read, which the loaded rules decide
    (:data:`OBS_READS`); rules are data, so the key is derived, never written down.
    Incident rows are shared between records, so callers only read them (which also lets
    pickle send one copy per batch). So is the stored row but for the fields the key does
    not hold: each record's row is the first one's with those read from the record."""

    EVIDENCE_KEPT = 1024  # distinct evidence values remembered per key

    def __init__(self, pipeline: Pipeline, limit: int = 1 << 16):
        self._pipeline = pipeline
        self._limit = limit
        self._memo: dict[tuple[Any, ...], Context] = {}
        #: per source, the records of :meth:`Pipeline.process` known by line key
        #: (:class:`Known`): entries (slot, client number, incident rows, context, the
        #: first record), forgotten with the memo
        self._known: dict[str, Known] = {}
        #: the context of a key seen before, else None (``lookup(key(obs, match))``: the
        #: first half of :meth:`get`, for callers that inline it; then :meth:`make`)
        self.lookup = self._memo.get
        rules = pipeline.evaluator.rules
        # the fields the rules read, and those their evidence reads but the URL, which
        # differs from request to request (evidence read from it is remembered per value)
        evidence = obs_reads(f for r in rules.rules for f in r.evidence) - {"url"}
        keyed = set(RECORD_READS) | obs_reads(rules.fields) | evidence
        #: ``(obs, match) -> key``: one tuple display (the key is built for every record)
        reads = "".join(f", o.{name}" for name in sorted(keyed))
        self.key = compiled("key", "o, m", f"(id(m), o.ts // 86400{reads})")
        # A key is a client's (CLIENT) of a destination context: most keys are one more
        # client of a context seen before, whose context (its first key's, the sibling
        # of every later one) gives theirs but for what follows from the client
        # (:meth:`_client_of`), held with its client's address.
        reads = "".join(f", o.{name}" for name in sorted(keyed - set(CLIENT)))
        self._sibling_key = compiled("sibling_key", "o, m", f"(id(m), o.ts // 86400{reads})")
        self._siblings: dict[tuple[Any, ...], tuple[Context, str | None]] = {}
        #: the rules whose evidence may differ between clients
        self._evidence_by_client = frozenset(
            r.id for r in rules.rules if obs_reads(r.evidence) & set(CLIENT)
        )
        #: whether another client's verdicts or evidence are worked out (from its Enriched)
        self._client_enriched = pipeline.evaluator.client_verdicts or bool(self._evidence_by_client)
        #: a client's egress point (memoised per client: equal answers are one object)
        self._egress = pipeline.enricher.egress.resolve
        #: a record's stored row from its key's (pseudonymisation changes only fields of
        #: RECORD_READS, which the key holds; the match, which the key holds, decides where
        #: the record is processed: records are placed (:func:`place`) before the record
        #: path, and Pipeline.process places only the first record of a key)
        decided = keyed | set(PLACED)
        self.row = row_builder(decided)
        # a record's client is its key's; its context is the values of its key's row that
        # the key decides (numbered: Context.context_no) and of the fields the row reads
        # from the record itself (:meth:`Pipeline.process` builds one row per slot)
        assert set(CLIENT) <= keyed, "a key decides the client"
        own = {
            c.name
            for c in COLUMNS
            if c.path and c.path[4:] not in decided and c.path.startswith("obs.")
        }
        #: ``(context number, obs) -> slot``: records of one slot share their context
        self.slot = compiled(
            "slot",
            "n, o",
            f"(n, {''.join(f'o.{COLUMNS[COL[c]].path[4:]}, ' for c in CONTEXT if c in own)})",
        )
        self._decided = itemgetter(*(COL[c] for c in CONTEXT if c not in own))
        self._numbers: tuple[dict[Any, int], dict[Any, int]] = ({}, {})
        self._count = itertools.count(1)
        #: rule ids whose evidence the key decides (else incident rows are made per record)
        self._evidence_keyed = frozenset(
            r.id for r in rules.rules if obs_reads(r.evidence) <= keyed
        )

    def get(self, obs: Observation, match: Match) -> Context:
        """The context of a record."""
        key = self.key(obs, match)
        found = self._memo.get(key)
        return self.make(obs, match, key) if found is None else found

    def make(self, obs: Observation, match: Match, key: tuple[Any, ...]) -> Context:
        """The context of a record whose :attr:`key` ``key`` the memo does not hold (the
        second half of :meth:`get`, for callers that inline the first)."""
        if len(self._memo) >= self._limit:
            self._memo.clear()
            self._siblings.clear()
            for known in self._known.values():
                known.entries.clear()  # a part being read holds its own
        found = self._memo[key] = self._context(obs, match)
        return found

    def known(self, source: str) -> Known:
        """The records of ``source`` known by line key (see :class:`Known`): a record of a
        line key whose first record's incident rows its memo key decided is that record's
        but for its per-request values (every other value, the memo key, the slot and the
        client follow from the line key and the source)."""
        found = self._known.get(source)
        if found is None:
            if len(self._known) >= 8:
                self._known.clear()
            found = self._known[source] = Known({}, ROW_FIELDS[1:])
        return found

    def add_known(self, entries: dict[bytes, Any], line_key: bytes, entry: tuple[Any, ...]) -> None:
        """Know a line key's records by ``entry`` (bounded as the memo is)."""
        if len(entries) >= self._limit:
            entries.clear()
        entries[line_key] = entry

    def _context(self, obs: Observation, match: Match) -> Context:
        sibling_key = self._sibling_key(obs, match)
        sibling = self._siblings.get(sibling_key)
        if sibling is None:
            found = self._stages(obs, match)
            self._siblings[sibling_key] = (found, obs.client_ip)
            return found
        return self._client_of(*sibling, obs, match) or self._stages(obs, match)

    def _client_of(
        self, sibling: Context, sibling_client: str | None, obs: Observation, match: Match
    ) -> Context | None:
        """The context of another client of ``sibling``'s destination context (whose
        client's address is ``sibling_client``): the sibling's with the client's row and
        incident rows (whose ids hold the client, as stored: pseudonymised or not), when
        the client leaves by the sibling's egress point and raises what it raised; else
        None (the client's own stages). Pseudonymised, also when the egress address (or
        the logged one) is shown as the one client's own but not the other's, or a rule's
        evidence reads the client (the stages pseudonymise those)."""
        p = self._pipeline
        client_ip, user = obs.client_ip, obs.user
        egress = self._egress(client_ip, obs.egress_ip)
        if egress is not sibling.egress and egress != sibling.egress:  # answers are shared
            return None
        client: tuple[str | None, str | None] = (client_ip, user)
        shown = p.pseudonymizer
        if shown is not None:
            logged = obs.egress_ip  # the key's, the sibling's too
            if (
                self._evidence_by_client
                or (egress.ip is not None and egress.ip == client_ip)
                != (egress.ip is not None and egress.ip == sibling_client)
                or (logged is not None and logged == client_ip)
                != (logged is not None and logged == sibling_client)
            ):
                return None
            client = (shown(client_ip), shown(user))
        rules = sibling.rules
        enriched = None
        if self._client_enriched:
            enriched = Enriched(obs, match, egress, sibling.dest, sibling.outcome)
            if p.evaluator.client_verdicts and p.evaluator.evaluate(enriched) != rules:
                return None
        incidents = sibling.incidents
        if incidents is not None:
            made: list[dict[str, Any]] = []
            host, country, day = obs.dest_host, egress.country, sibling.day
            shown_ip, shown_user = client
            for inc, rule in zip(incidents, rules, strict=True):
                inc = inc.copy()
                # the sibling's egress address as stored (pseudonymised or not) is the client's
                inc["id"] = incident_id(rule.id, inc["provider"], host, shown_ip,
                                        inc["egress_ip"], country, day, shown_user)  # fmt: skip
                inc["client_ip"], inc["user"] = client
                if enriched is not None and rule.id in self._evidence_by_client and rule.evidence:
                    inc["facts"] = p.evaluator.evidence(enriched, rule)
                made.append(inc)
            incidents = made
        # numbered as made: what the key decides but the client is the sibling's, and the
        # client is CLIENT_OF(the row)
        return Context(match, egress, sibling.dest, sibling.outcome, sibling.day, rules,
                       client_row(sibling.row, client), incidents, sibling.evidence, {},
                       sibling.context_no, self._number(1, client))  # fmt: skip

    def _stages(self, obs: Observation, match: Match) -> Context:
        """A key's context from the stages themselves."""
        p = self._pipeline
        enriched = p.enricher.enrich(obs, match)
        rules = p.evaluator.evaluate(enriched)  # on the real addresses: rules may name them
        shown = enriched if p.pseudonymizer is None else p.pseudonymizer.apply(enriched)
        day = shown.day
        facts = (match, enriched.egress, enriched.dest, enriched.outcome, day, rules,
                 tuple(observation_row(shown)))  # fmt: skip
        if all(r.id in self._evidence_keyed for r in rules):
            found = Context(*facts, incident_rows(shown, rules, day, p.evaluator.evidence))
        else:
            getters = p.evaluator.evidence_getters(tuple([r.id for r in rules]))
            found = Context(*facts, None, getters)
        found.context_no = self._number(0, self._decided(found.row))
        found.client_no = self._number(1, CLIENT_OF(found.row))
        return found

    def _number(self, kind: int, value: Any) -> int:
        numbers = self._numbers[kind]
        n = numbers.get(value)
        if n is None:
            if len(numbers) >= self._limit:
                numbers.clear()
            n = numbers[value] = next(self._count)
        return n

    def incidents(self, found: Context, shown: Enriched, day: str) -> list[dict[str, Any]]:
        """The incident rows of a record whose key does not decide them (``shown``: as
        stored, pseudonymised or not), remembered per distinct evidence."""
        key = tuple([get(shown) for get in found.evidence])
        rows = found.by_evidence.get(key)
        if rows is None:
            if len(found.by_evidence) >= self.EVIDENCE_KEPT:
                found.by_evidence.clear()
            evidence = self._pipeline.evaluator.evidence
            rows = found.by_evidence[key] = incident_rows(shown, found.rules, day, evidence)
        return rows


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
        pseudonymizer: Pseudonymizer | None = None,
    ):
        self.catalog = catalog
        self.geo = geo
        self.identifier = Identifier(catalog, config.azure_resources)
        self.enricher = Enricher(geo, EgressResolver(config.sites, geo, egress))
        self.evaluator = Evaluator(rules, catalog, config, self.identifier.signatures)
        self.memo = RecordMemo(self)
        self.collect_options = collect_options
        self.pseudonymizer = pseudonymizer  # applied to what is stored, after the rules ran

    def record(self, obs: Observation, match: Match) -> tuple[list[Any], list[dict[str, Any]]]:
        """Stages 3–4 for one LLM observation: its stored row (``id`` and ``scan_id`` unset)
        and the incident rows it raises. Re-evaluation goes through here, scans and live
        captures through :meth:`records`, which does the same for many.

        Enrichment, rules, incident rows and most of the row are worked out once per
        distinct key (the match, the day and the fields of :data:`RECORD_READS` and those
        the loaded rules read, see :class:`RecordMemo`); per record, only the fields the
        key does not hold are read into the row."""
        found = self.memo.get(obs, match)
        incidents = found.incidents
        if incidents is None:
            incidents = self._incidents(found, obs, match)
        return self.memo.row(obs, found.row), incidents

    def _incidents(self, found: Context, obs: Observation, match: Match) -> list[dict[str, Any]]:
        """The incident rows of a record whose rules keep evidence its key does not decide."""
        enriched = Enriched(obs, match, found.egress, found.dest, found.outcome)
        if self.pseudonymizer is not None:
            enriched = self.pseudonymizer.apply(enriched)  # as stored
        return self.memo.incidents(found, enriched, found.day)

    def fingerprint(self) -> str:
        """A digest of what decides this pipeline's answers besides its inputs and config:
        apiwatch's version, the catalogue, the geodata sources and the rules. A Dask worker
        must match the client's (:mod:`monitor.cluster`)."""
        facts = [
            __version__,
            self.catalog.version,
            *(f"{s.name}|{s.database_type}|{s.build_date}" for s in self.geo.sources()),
            *(f"{r.id}|{r.severity}|{r.when}" for r in self.evaluator.rules.rules),
        ]
        return hashlib.blake2b("\n".join(facts).encode(), digest_size=8).hexdigest()

    def observe(
        self,
        path: str,
        diag: Diagnostics,
        *,
        only_llm: bool = False,
        on_read: Callable[[int], None] | None = None,
        fmt: str | None = None,
        byte_range: tuple[int, int] | None = None,
        skip: int = 0,
    ) -> Iterator[tuple[Observation, Match | None]]:
        """Stages 1–2 for one input: observations with their catalogue match."""
        host_filter = self.identifier.host_filter if only_llm else None
        found = collect(path, self.collect_options, diag, host_filter, on_read, fmt=fmt,
                        byte_range=byte_range, skip=skip, catalog=self.catalog)  # fmt: skip
        identify, malformed = self.identifier.identify, self._malformed
        for obs in found:
            match = identify(obs)
            if match is not None:
                place(obs, match)
                yield obs, match
            elif not malformed(obs, diag) and not only_llm:
                yield obs, match

    def _malformed(self, obs: Observation, diag: Diagnostics) -> bool:
        """Whether an observation no match was found for names a destination no host can
        be: reported as a malformed record (never an LLM observation)."""
        if not obs.dest_host or not self.identifier.bad_host(obs.dest_host):
            return False
        diag.records -= 1  # collectors count it as read; it is not a record
        host = obs.dest_host.encode("utf-8", "backslashreplace")
        diag.malformed_record(obs.source, obs.line, "destination is not a host name", host)
        return True

    def process(
        self,
        part: Part,
        diag: Diagnostics,
        on_read: Callable[[int], None] | None = None,
        size: int = 20_000,
    ) -> Iterator[Batch]:
        """The record path over one part: collect → identify → locate → evaluate → ids →
        the store's batches of ``size`` LLM records. Line numbers are relative to the part
        and ``scan_id`` is unset: the scanner, which orders parts, fills both, and renumbers
        the ids of identical records (:func:`monitor.ids.observation_id`).

        What :meth:`records` does, inlined and without a row per record: each record's
        per-request values go straight into the batch's columns, and its context and client
        are found per memo key and the few context fields the key does not hold (its slot,
        see :class:`RecordMemo`); this is the loop every LLM record of a scan goes through.
        A record the collector names by a line key the memo knows (:meth:`RecordMemo.known`)
        comes with all of that but its per-request values, its ids and no Observation, in
        a run of such records that goes into the batches whole."""
        memo = self.memo
        known = memo.known(part.path)
        found = collect(part.path, self.collect_options, diag, self.identifier.host_filter,
                        on_read, fmt=part.fmt, byte_range=part.byte_range, skip=part.skip,
                        catalog=self.catalog, known=known)  # fmt: skip
        identify, malformed = self.identifier.identify, self._malformed
        key, lookup, context, slot_of = memo.key, memo.lookup, memo.make, memo.slot
        incidents_of, values_of, first_id = self._incidents, request_values, first_observation_id()
        builder = BatchBuilder(memo.row, known_codes(known.values))
        items = builder.items
        append = items.append
        count, width = 0, RUN_RECORD.size  # records the builder holds; a run's record's bytes
        by_host, named = self.identifier.by_host, {}  # host -> its match by name, the answer
        entries = known.entries
        for obs in found:  # observe(), inlined but for place(): the memo key decides that
            if type(obs) is tuple and type(obs[0]) is list:  # a run of known records (Known)
                run, packed = obs
                while count + len(run) > size:  # what the builder takes, cut at batches
                    cut = size - count
                    append((run[:cut], packed[: cut * width]))
                    run, packed = run[cut:], packed[cut * width :]
                    yield builder.batch()
                    items = builder.items
                    append = items.append
                    count = 0
                append((run, packed))
                count += len(run)
            else:
                line_key = None
                if type(obs) is tuple:  # named by line_key: its entry is added below
                    obs, line_key = obs
                match = named.get(obs.dest_host)
                if match is None:
                    match = identify(obs)
                    if match is None:
                        malformed(obs, diag)
                        continue
                    if obs.dest_host and match is by_host(obs.dest_host):
                        named[obs.dest_host] = match  # what identify() answers whatever else
                memo_key = key(obs, match)
                ctx = lookup(memo_key)
                if ctx is None:
                    place(obs, match)  # the key's row holds it for all its records
                    ctx = context(obs, match, memo_key)
                incidents = ctx.incidents
                if incidents is None:
                    incidents = incidents_of(ctx, obs, match)
                entry = (slot_of(ctx.context_no, obs), ctx.client_no, incidents, ctx, obs)
                if line_key is not None and incidents is ctx.incidents:  # the key decides them
                    memo.add_known(entries, line_key, entry)
                record_id = obs.record_id or observed_record_id(obs)
                append((entry, values_of(obs), record_id, first_id(record_id)))
                count += 1
            if count >= size:
                yield builder.batch()
                items = builder.items
                append = items.append
                count = 0
        if items:
            yield builder.batch()

    def records(self, found: Iterable[tuple[Observation, Match | None]]) -> Iterator[Produced]:
        """Stages 3 on over LLM observations with their match, one :data:`Produced` per
        record: a live capture's (:mod:`monitor.live`). What :meth:`record` does, inlined."""
        memo = self.memo
        key, lookup, make, build = memo.key, memo.lookup, memo.make, memo.row
        incidents_of = self._incidents
        for obs, match in found:
            memo_key = key(obs, match)
            ctx = lookup(memo_key) or make(obs, match, memo_key)  # type: ignore[arg-type]
            incidents = ctx.incidents
            if incidents is None:
                incidents = incidents_of(ctx, obs, match)  # type: ignore[arg-type]
            row = build(obs, ctx.row)
            record_id = obs.record_id or observed_record_id(obs)
            row[ID] = observation_id(record_id)
            yield record_id, row, incidents
