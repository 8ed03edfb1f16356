"""The provider catalogue (``rules/providers.yaml``) and region lists (``rules/regions.yaml``).

Answers two questions on the hot path of the pipeline:

* :meth:`Catalog.match_host` - is this destination host an LLM API (or a relay, or a consumer
  chat app), and whose? Exact names beat patterns; the longest pattern wins; label boundaries
  are respected (``notopenai.com`` is not ``openai.com``). Results are memoised per host.
* :meth:`Catalog.match_ip` - is this destination address inside a range that a provider
  publishes as its API ingress? (Only Anthropic does.)

and, for the policy engine, :meth:`Catalog.allowed_countries` (a provider's published
country allow-list, ``None`` when it publishes none).

A match also says where the endpoint processes requests (:class:`monitor.residency.Processing`,
from ``rules/residency.yaml``), and whether the host is listed or only lies under a provider's
own endpoint domain (``listed=False``: a regional host the catalogue does not know yet).
Organisations add their own entries (internal gateways, relays) in overlay files with the same
schema (``Catalog.load(extra=[...])``, config ``[catalog] extra``).

Both files are validated when loaded; any problem raises :class:`CatalogError` naming the
file, the entry and the reason. The schemas are documented at the top of each file and in
``rules/README.md``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any

from monitor.countries import VALID_COUNTRY_CODES
from monitor.errors import ApiwatchError
from monitor.residency import BASES, UNKNOWN, Processing, ResidencyTables
from monitor.yamlfile import YamlError, safe_load

PROVIDERS_FILE = "providers.yaml"
REGIONS_FILE = "regions.yaml"
RESIDENCY_FILE = "residency.yaml"
RESTRICTION_TYPES = ("ownership",)
RESOURCE_MAPS = ("azure",)

KINDS = ("provider", "relay")
RELAY_CATEGORIES = ("aggregator", "ai_gateway", "reseller_relay", "serverless_proxy")
HOST_USES = ("api", "consumer")
CONFIDENCES = ("low", "medium", "high")
LIST_TYPES = ("allow_list",)

#: Distinct hosts remembered by :meth:`Catalog.match_host` (and addresses by ``match_ip``).
MATCH_CACHE_SIZE = 1 << 16

_ID_RE = re.compile(r"[a-z][a-z0-9_]*\Z")
_LABEL_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")
_LABEL_TAIL_RE = re.compile(r"[a-z0-9_-]{1,62}\Z")  # what follows "*" in "*-x.example.com"
_URL_RE = re.compile(r"https?://[^\s/]+\S*\Z")
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
_ZONE_RE = re.compile(r"[A-Z][A-Z0-9_]+\Z")
_REGION_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]*\Z")
_UNVERIFIED_PREFIX = "unverified:"

_PROVIDER_KEYS = frozenset(
    {
        "id",
        "name",
        "kind",
        "category",
        "hq_country",
        "hq_confidence",
        "hq_sources",
        "region_list",
        "hosts",
        "ingress_ranges",
        "networks",
        "private_endpoints",
        "sources",
        "notes",
        "checked",
        "unlisted_endpoints",
        "restrictions",
        "approved",
    }
)
_NETWORK_GROUP_KEYS = frozenset({"asns", "org", "hosts", "sources", "note", "checked"})
_HOST_GROUP_KEYS = frozenset(
    {"use", "exact", "patterns", "confidence", "sources", "note", "processing", "checked"}
)
_RANGE_GROUP_KEYS = frozenset({"cidrs", "confidence", "sources", "note", "checked"})
_PROCESSING_KEYS = frozenset({"region", "geo", "basis", "caveat", "resource_map"})
_UNLISTED_KEYS = frozenset({"patterns", "sources", "checked", "note"})
_RESTRICTION_KEYS = frozenset(
    {"type", "controlled_from", "outside_region_list", "sources", "checked", "note"}
)
_OVERLAY_TOP_KEYS = frozenset({"version", "source_urls", "providers"})
_LIST_KEYS = frozenset(
    {
        "id",
        "provider_id",
        "scope",
        "list_type",
        "countries",
        "count",
        "as_of",
        "transcribed",
        "sources",
        "unconfirmed_additions",
        "notes",
    }
)
_MODEL_KEYS = frozenset({"provider_id", "model", "sources", "notes"})


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True, slots=True)
class Provider:
    id: str
    name: str
    kind: str  # "provider" | "relay"
    category: str | None  # relays: aggregator | ai_gateway | reseller_relay | serverless_proxy
    hq_country: str | None
    region_list: str | None  # id in regions.yaml; None = publishes no list
    sources: tuple[str, ...]
    approved: bool = False  # an organisation overlay entry marked approved (internal gateway)
    #: countries whose control (majority ownership) bars an entity from the provider
    #: wherever it connects from (Anthropic, September 2025); None = no such restriction
    restricted_controllers: frozenset[str] | None = None
    origin: str = ""  # file the entry came from (bundled providers.yaml or an overlay)
    asns: frozenset[int] = frozenset()  # networks its API hosts are served from
    ranges: tuple[str, ...] = ()  # its published API ingress ranges
    private_endpoints: bool = False  # reachable at customers' private addresses too
    host_asns: tuple[tuple[str, frozenset[int]], ...] = ()  # hosts served from other networks

    def asns_for(self, pattern: str) -> frozenset[int]:
        """The networks the catalogue entry ``pattern`` (a host or pattern) is served from."""
        for host, asns in self.host_asns:
            if host == pattern:
                return asns
        return self.asns


@dataclass(frozen=True, slots=True)
class Match:
    provider: Provider
    kind: str  # "api" | "consumer" | "relay" (relay-kind providers always give "relay")
    pattern: str  # the catalogue entry that matched, e.g. "*.openai.azure.com" or "160.79.104.0/23"
    confidence: str = "high"  # of the catalogue entry: low | medium | high
    processing: Processing = UNKNOWN  # where the endpoint processes requests
    listed: bool = True  # False: only under the provider's endpoint domain, not in the catalogue
    on: str = "host"  # host: by the name | address: by a published range | request: by its shape


@dataclass(frozen=True, slots=True)
class RegionList:
    id: str
    provider_id: str
    scope: str
    countries: frozenset[str]
    sources: tuple[str, ...]
    as_of: str | None


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One row of the ``apiwatch providers`` listing."""

    id: str
    name: str
    kind: str
    category: str | None
    hq_country: str | None
    hosts: tuple[str, ...]  # API (or relay) host names and patterns, catalogue order
    consumer_hosts: tuple[str, ...]
    ip_ranges: tuple[str, ...]
    region_list: str | None
    region_count: int | None  # number of countries on region_list
    origin: str = "bundled"  # bundled | overlay (an organisation's [catalog] extra file)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "category": self.category,
            "hq_country": self.hq_country,
            "hosts": list(self.hosts),
            "consumer_hosts": list(self.consumer_hosts),
            "ip_ranges": list(self.ip_ranges),
            "region_list": self.region_list,
            "region_count": self.region_count,
        }


class CatalogError(ApiwatchError, ValueError):
    """Invalid catalogue data; the message names the file, the entry id and the reason."""


# --------------------------------------------------------------------------- the catalogue

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(slots=True)
class _Index:
    exact: dict[str, Match] = field(default_factory=dict)
    suffix: dict[str, Match] = field(default_factory=dict)  # "*.a.b" stored as "a.b"
    # one-label middle wildcards, by label count: [(star position, {"a.*.b.c": Match})]
    middle: dict[int, list[tuple[int, dict[str, Match]]]] = field(default_factory=dict)
    # "*-x.a.b": parent "a.b" -> [("-x", Match)]
    label_tail: dict[str, list[tuple[str, Match]]] = field(default_factory=dict)
    ranges: list[tuple[_Network, Match]] = field(default_factory=list)


class Catalog:
    """Providers, their hosts and ranges, and the region lists. Build with :meth:`load`."""

    providers: dict[str, Provider]
    region_lists: dict[str, RegionList]
    version: str

    def __init__(
        self,
        providers: dict[str, Provider],
        region_lists: dict[str, RegionList],
        version: str,
        index: _Index,
        entries: list[CatalogEntry],
        residency: ResidencyTables | None = None,
        unlisted: _Index | None = None,
        overlays: tuple[str, ...] = (),
    ) -> None:
        self.providers = providers
        self.region_lists = region_lists
        self.version = version
        self.residency = residency or ResidencyTables()
        self.overlays = overlays  # organisation overlay files, in load order
        self._index = index
        self._unlisted = unlisted or _Index()
        self._entries = entries
        self._major = frozenset().union(*(r.countries for r in region_lists.values()))
        self._make_caches()

    def _make_caches(self) -> None:
        self._resolved: dict[tuple[str, str | None], Match] = {}
        self._match_host = lru_cache(maxsize=MATCH_CACHE_SIZE)(self._lookup_host)
        self._match_ip = lru_cache(maxsize=MATCH_CACHE_SIZE)(self._lookup_ip)
        #: the last two labels of the names each index (listed, unlisted) can match
        self._tails = (_tails(self._index), _tails(self._unlisted))
        #: the IPv4 ranges as integers (first, last, prefix length, match), in index order:
        #: a dotted quad is looked up without an ipaddress object (one per distinct address)
        self._v4 = [
            (int(net.network_address), int(net.broadcast_address), net.prefixlen, hit)
            for net, hit in self._index.ranges
            if net.version == 4
        ]

    def __getstate__(self) -> dict[str, Any]:  # picklable for worker processes; caches dropped
        state = dict(self.__dict__)
        del state["_match_host"], state["_match_ip"], state["_resolved"], state["_v4"]
        del state["_tails"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._make_caches()

    @classmethod
    def load(cls, rules_dir: Path | None = None, extra: Iterable[Path] = ()) -> Catalog:
        """Read and validate ``providers.yaml``, ``regions.yaml`` and ``residency.yaml`` from
        ``rules_dir`` (default: the bundled ``rules/``), then the organisation's overlay files
        ``extra`` (entries in the providers.yaml schema; see :func:`load_overlay`)."""
        if rules_dir is None:
            from monitor.resources import rules_dir as bundled_rules_dir

            rules_dir = bundled_rules_dir()
        rules_dir = Path(rules_dir)
        return _build(
            rules_dir / PROVIDERS_FILE,
            rules_dir / REGIONS_FILE,
            rules_dir / RESIDENCY_FILE,
            [Path(p) for p in extra],
        )

    # -- matching ---------------------------------------------------------------------

    def match_host(self, host: str) -> Match | None:
        """The catalogue entry for a host (already lower-case, no port, no trailing dot)."""
        return self._match_host(host)

    def match_ip(self, ip: str) -> Match | None:
        """The provider whose *published API ingress* range contains ``ip`` (most specific)."""
        return self._match_ip(ip)

    def ingress_networks(self) -> tuple[_Network, ...]:
        """Every published API ingress range (what :meth:`match_ip` looks in)."""
        return tuple(net for net, _ in self._index.ranges)

    def cache_info(self) -> dict[str, Any]:
        """Hit/miss counters of the two memoised lookups (for ``--stats`` and benchmarks)."""
        return {"host": self._match_host.cache_info(), "ip": self._match_ip.cache_info()}

    def _lookup_host(self, host: str) -> Match | None:
        if not host:
            return None
        # most hosts asked are no provider's: their last two labels tell (see _tails)
        tail = last_two_labels(host)
        listed, unlisted = self._tails
        found = _find(self._index, host) if listed is None or tail in listed else None
        if (found is None and (unlisted is None or tail in unlisted)
                and (self._unlisted.suffix or self._unlisted.middle)):  # fmt: skip
            found = _find(self._unlisted, host)
        if found is not None and found.processing.region and "{" in found.processing.region:
            found = self._resolve(found, host)
        return found

    def _resolve(self, hit: Match, host: str) -> Match:
        """A match whose region is a template (``aws:{*}``): fill it in from the host."""
        region = _fill(hit.processing.region or "", hit.pattern, host)
        key = (hit.pattern, region)
        found = self._resolved.get(key)
        if found is None:  # one per (pattern, region): few, and frozen dataclasses are slow
            p = hit.processing
            geo = self.residency.region_geo.get(region) if region else None
            processing = Processing(region, geo, p.basis, p.caveat, p.resource_map)
            found = Match(
                hit.provider, hit.kind, hit.pattern, hit.confidence, processing, hit.listed
            )
            self._resolved[key] = found
        return found

    def _lookup_ip(self, ip: str) -> Match | None:
        if ":" not in ip:  # IPv4 or no address: what inet_pton takes, ipaddress does
            try:
                a = int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big")
            except (OSError, ValueError):
                return None
            found: tuple[int, Match] | None = None
            for first, last, prefixlen, match in self._v4:
                if first <= a <= last and (found is None or prefixlen > found[0]):
                    found = (prefixlen, match)
            return found[1] if found else None
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return None
        best: tuple[_Network, Match] | None = None
        for net, hit in self._index.ranges:
            if (
                net.version == addr.version
                and addr in net
                and (best is None or net.prefixlen > best[0].prefixlen)
            ):
                best = (net, hit)
        return best[1] if best else None

    # -- region lists -------------------------------------------------------------------

    def allowed_countries(self, provider_id: str) -> frozenset[str] | None:
        """The countries on the provider's published allow-list; ``None`` when it publishes
        no list (or the provider id is unknown)."""
        provider = self.providers.get(provider_id)
        if provider is None or provider.region_list is None:
            return None
        return self.region_lists[provider.region_list].countries

    def major_allowed_countries(self) -> frozenset[str]:
        """Countries on at least one region list ("on any major provider's list")."""
        return self._major

    def entries(self) -> list[CatalogEntry]:
        """Rows for the ``apiwatch providers`` listing, in catalogue order."""
        return list(self._entries)

    def __repr__(self) -> str:
        return (
            f"<Catalog {self.version}: {len(self.providers)} providers, "
            f"{len(self.region_lists)} region lists>"
        )


def _find(idx: _Index, host: str) -> Match | None:
    """Exact names beat patterns; among patterns the longest (most specific) wins."""
    found = idx.exact.get(host)
    if found is not None:
        return found
    best: Match | None = None
    # "*.a.b": walk the suffixes from the longest; the first hit is the most specific.
    dot = host.find(".")
    while dot >= 0:
        hit = idx.suffix.get(host[dot + 1 :])
        if hit is not None:
            best = hit
            break
        dot = host.find(".", dot + 1)
    slots = idx.middle.get(host.count(".") + 1) if idx.middle else None
    if slots or idx.label_tail:
        labels = host.split(".")
        for star, table in slots or ():
            key = ".".join((*labels[:star], "*", *labels[star + 1 :]))
            hit = table.get(key)
            if hit is not None and (best is None or len(hit.pattern) > len(best.pattern)):
                best = hit
        if len(labels) > 2 and idx.label_tail:
            first = labels[0]
            for tail, hit in idx.label_tail.get(host[len(first) + 1 :], ()):
                if (
                    len(first) > len(tail)
                    and first.endswith(tail)
                    and (best is None or len(hit.pattern) > len(best.pattern))
                ):
                    best = hit
    return best


def last_two_labels(name: str) -> str:
    """``a.b`` of ``x.y.a.b`` (the whole of a name of one or two labels)."""
    return name[name.rfind(".", 0, name.rfind(".")) + 1 :]


def _tails(idx: _Index) -> frozenset[str] | None:
    """The last two labels of every name ``idx`` can match. Every way :func:`_find`
    matches compares the host's last two labels with a name's as written (exact, ``*.a.b``,
    ``a.*.b.c``, ``*-x.a.b``: the loader takes no name whose last two labels are not
    fixed), so a host whose last two labels are not among them matches nothing: most hosts
    a scan asks about, found so by a set lookup where the walk costs a slice and a hash a
    label, twice (listed, unlisted). None (every host walks the index) should a name ever
    end otherwise."""
    names = [*idx.exact, *idx.suffix, *idx.label_tail,
             *(key for slots in idx.middle.values() for _, table in slots for key in table)]  # fmt: skip
    tails = set(map(last_two_labels, names))
    if any("*" in t or "." not in t for t in tails):
        return None
    return frozenset(tails)


def _fill(template: str, pattern: str, host: str) -> str | None:
    """``{*}``: the label the pattern's ``*`` stands for (for ``*.a.b`` the label next to
    ``a.b``; for ``*-x.a.b`` the part before ``-x``); ``{1}``: the host's first label.
    ``None`` when the host gives an empty value."""
    labels = host.split(".")
    if "{*}" in template:
        star, n_labels, cut = _star_of(pattern)
        if star > 0:
            value = labels[star]
        elif cut == 0:  # "*.a.b": the label next to the fixed part
            value = labels[len(labels) - n_labels]
        else:  # "*-x.a.b": the first label without its "-x"
            value = labels[0][: len(labels[0]) - cut]
        template = template.replace("{*}", value)
    if "{1}" in template:
        template = template.replace("{1}", labels[0])
    return template if _REGION_ID_RE.match(template.partition(":")[2]) else None


@lru_cache(maxsize=1024)
def _star_of(pattern: str) -> tuple[int, int, int]:
    """(position of the label with the ``*``, number of labels, length of a ``*-x`` tail)."""
    plabels = pattern.split(".")
    star = next(i for i, label in enumerate(plabels) if "*" in label)
    return star, len(plabels), len(plabels[0]) - 1 if star == 0 and plabels[0] != "*" else 0


@lru_cache(maxsize=1)
def bundled_catalog() -> Catalog:
    """The bundled catalogue, read once per process: the CLI and the collectors that name
    flows by published IP ranges (captures, Zeek, Suricata) share it."""
    return Catalog.load()


# --------------------------------------------------------------------------- loading


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = safe_load(text, unique_keys=True)
    except YamlError as exc:
        raise CatalogError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise CatalogError(f"{path}: (top level): expected a mapping")
    return data


class _Checker:
    """Validation helpers that raise :class:`CatalogError` as ``file: entry: reason``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, entry: str, reason: str) -> CatalogError:
        return CatalogError(f"{self.path}: {entry}: {reason}")

    def keys(self, entry: str, obj: Any, allowed: frozenset[str], what: str) -> dict[str, Any]:
        if not isinstance(obj, dict):
            raise self.fail(entry, f"{what} must be a mapping, got {type(obj).__name__}")
        unknown = sorted(str(k) for k in obj if k not in allowed)
        if unknown:
            raise self.fail(entry, f"unknown key(s) in {what}: {', '.join(unknown)}")
        return obj

    def text(self, entry: str, obj: dict[str, Any], key: str, *, required: bool = True) -> Any:
        value = obj.get(key)
        if value is None:
            if required:
                raise self.fail(entry, f"missing {key!r}")
            return None
        if isinstance(value, date):
            return value.isoformat()
        if not isinstance(value, str) or not value.strip():
            raise self.fail(entry, f"{key!r} must be a non-empty string, got {value!r}")
        return value

    def choice(self, entry: str, value: Any, options: Iterable[str], what: str) -> str:
        options = tuple(options)
        if value not in options:
            raise self.fail(entry, f"{what} {value!r} is not one of {', '.join(options)}")
        return value

    def str_list(self, entry: str, value: Any, what: str, *, allow_empty: bool = False) -> list:
        if value is None and allow_empty:
            return []
        if not isinstance(value, list) or not (value or allow_empty):
            raise self.fail(entry, f"{what} must be a non-empty list")
        for item in value:
            if not isinstance(item, str):
                hint = (
                    " (quote it: bare NO/YES/ON/OFF are YAML booleans)"
                    if isinstance(item, bool)
                    else ""
                )
                raise self.fail(entry, f"{what}: {item!r} is not a string{hint}")
        return value

    def entry_id(
        self, raw: Any, fallback: str, allowed: frozenset[str], what: str
    ) -> tuple[str, str]:
        """(name for messages, snake_case id) of a list entry with only ``allowed`` keys."""
        entry = (
            raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else fallback
        )
        self.keys(entry, raw, allowed, what)
        ident = self.text(entry, raw, "id")
        if not _ID_RE.match(ident):
            raise self.fail(entry, "id must be snake_case ([a-z][a-z0-9_]*)")
        return entry, ident

    def checked(self, entry: str, value: Any) -> str:
        """``checked``: the date the sources were read (YAML may give a date object)."""
        if isinstance(value, date):
            value = value.isoformat()
        if not isinstance(value, str) or not _DATE_RE.match(value):
            raise self.fail(
                entry,
                f"'checked' must be the date the sources were read (YYYY-MM-DD), got {value!r}",
            )
        return value

    def country(self, entry: str, value: Any, what: str) -> str:
        if isinstance(value, bool):
            raise self.fail(entry, f'{what}: {value!r} is a YAML boolean - quote "NO"')
        if not isinstance(value, str) or value not in VALID_COUNTRY_CODES:
            raise self.fail(entry, f"{what}: {value!r} is not an ISO 3166-1 alpha-2 code")
        return value

    def sources(
        self, entry: str, value: Any, what: str, *, confidence: str | None = None
    ) -> list[str]:
        """URLs; ``unverified: ...`` notes are accepted only where ``confidence`` is low."""
        if value is None or value == []:
            raise self.fail(entry, f"missing sources for {what}")
        items = self.str_list(entry, value, f"sources of {what}")
        for src in items:
            if src.startswith(_UNVERIFIED_PREFIX):
                if confidence != "low":
                    raise self.fail(entry, f"{what}: an 'unverified:' source needs confidence: low")
            elif not _URL_RE.match(src):
                raise self.fail(entry, f"{what}: source {src!r} is not an http(s) URL")
        return [s for s in items if not s.startswith(_UNVERIFIED_PREFIX)]


def _host_error(host: str) -> str | None:
    labels = host.split(".")
    if len(host) > 253:
        return "longer than 253 characters"
    if len(labels) < 2:
        return "needs at least two labels"
    for label in labels:
        if not _LABEL_RE.match(label):
            return f"invalid label {label!r} (lower-case letters, digits, '-', '_')"
    return None


def _classify_pattern(pattern: str) -> tuple[str, Any] | str:
    """``(shape, data)`` for a valid pattern, else the reason it is invalid.

    Shapes: ``("suffix", "a.b")`` for ``*.a.b``; ``("middle", (n_labels, star, key))`` for
    ``x.*.a.b``; ``("tail", ("-x", "a.b"))`` for ``*-x.a.b``.
    """
    labels = pattern.split(".")
    stars = [i for i, label in enumerate(labels) if "*" in label]
    if len(stars) != 1:
        return "a pattern needs exactly one '*'"
    star = stars[0]
    fixed_after = ".".join(labels[star + 1 :])
    if len(labels) - star - 1 < 2:
        return "the fixed part after '*' needs at least two labels"
    if err := _host_error(fixed_after):
        return err
    if star > 0:
        if labels[star] != "*":
            return "a '*' after the first label must be a whole label"
        if err := _host_error(".".join(labels[:star]) + ".x"):
            return err
        return ("middle", (len(labels), star, pattern))
    first = labels[0]
    if first == "*":
        return ("suffix", fixed_after)
    tail = first[1:]
    if first[0] != "*" or "*" in tail or not _LABEL_TAIL_RE.match(tail) or tail.endswith("-"):
        return "a partial-label wildcard must be '*<suffix>' in the first label, e.g. *-x.a.b"
    return ("tail", (tail, fixed_after))


def _load_regions(path: Path) -> tuple[str, dict[str, tuple[RegionList, dict]], list[dict]]:
    data = _read_yaml(path)
    chk = _Checker(path)
    chk.keys("(top level)", data, frozenset({"version", "lists", "region_models"}), "file")
    version = chk.text("(top level)", data, "version")
    lists: dict[str, tuple[RegionList, dict]] = {}
    raw_lists = data.get("lists")
    if not isinstance(raw_lists, list):
        raise chk.fail("(top level)", "'lists' must be a list")
    for n, raw in enumerate(raw_lists, 1):
        entry, list_id = chk.entry_id(raw, f"lists[{n}]", _LIST_KEYS, "region list")
        if list_id in lists:
            raise chk.fail(entry, "duplicate region list id")
        provider_id = chk.text(entry, raw, "provider_id")
        scope = chk.text(entry, raw, "scope")
        chk.choice(entry, raw.get("list_type"), LIST_TYPES, "list_type")
        countries = raw.get("countries")
        if not isinstance(countries, list) or not countries:
            raise chk.fail(entry, "countries must be a non-empty list")
        for code in countries:
            chk.country(entry, code, "countries")
        if len(set(countries)) != len(countries):
            dupes = sorted({c for c in countries if countries.count(c) > 1})
            raise chk.fail(entry, f"countries listed twice: {', '.join(dupes)}")
        if countries != sorted(countries):
            raise chk.fail(entry, "countries must be sorted")
        count = raw.get("count")
        if not isinstance(count, int) or isinstance(count, bool):
            raise chk.fail(entry, "missing or non-integer 'count'")
        if count != len(countries):
            raise chk.fail(entry, f"count says {count} but {len(countries)} countries are listed")
        for code in chk.str_list(
            entry, raw.get("unconfirmed_additions"), "unconfirmed_additions", allow_empty=True
        ):
            chk.country(entry, code, "unconfirmed_additions")
            if code in countries:
                raise chk.fail(entry, f"unconfirmed addition {code} is already in countries")
        sources = chk.sources(entry, raw.get("sources"), "the list")
        if not sources:
            raise chk.fail(entry, "the list needs at least one source URL")
        chk.text(entry, raw, "transcribed", required=False)
        chk.text(entry, raw, "notes", required=False)
        region = RegionList(
            id=list_id,
            provider_id=provider_id,
            scope=scope,
            countries=frozenset(countries),
            sources=tuple(sources),
            as_of=chk.text(entry, raw, "as_of", required=False),
        )
        lists[list_id] = (region, raw)
    models = data.get("region_models") or []
    if not isinstance(models, list):
        raise chk.fail("(top level)", "'region_models' must be a list")
    for n, raw in enumerate(models, 1):
        entry = f"region_models[{n}]"
        chk.keys(entry, raw, _MODEL_KEYS, "region model")
        entry = f"region_models[{n}] ({chk.text(entry, raw, 'provider_id')})"
        chk.text(entry, raw, "model")
        chk.sources(entry, raw.get("sources"), "the region model")
        chk.text(entry, raw, "notes", required=False)
    return version, lists, models


def _load_residency(path: Path) -> ResidencyTables:
    if not path.exists():  # a rules directory without processing facts (tests, forks)
        return ResidencyTables()
    data = _read_yaml(path)
    chk = _Checker(path)
    chk.keys("(top level)", data, frozenset({"version", "zones", "regions", "caveats"}), "file")
    version = chk.text("(top level)", data, "version")
    sources: dict[str, tuple[str, ...]] = {}

    def table(name: str) -> dict[str, Any]:
        value = data.get(name)
        if not isinstance(value, dict) or not value:
            raise chk.fail("(top level)", f"{name!r} must be a non-empty mapping")
        return value

    def dated(entry: str, raw: Any, keys: frozenset[str]) -> dict[str, Any]:
        chk.keys(entry, raw, keys, entry)
        sources[entry] = tuple(chk.sources(entry, raw.get("sources"), entry))
        chk.checked(entry, raw.get("checked"))
        chk.text(entry, raw, "note", required=False)
        return raw

    zones: dict[str, frozenset[str]] = {}
    for zid, raw in table("zones").items():
        entry = f"zones.{zid}"
        if not isinstance(zid, str) or not _ZONE_RE.match(zid) or zid in VALID_COUNTRY_CODES:
            raise chk.fail(entry, "a zone id is upper case and not a country code")
        dated(entry, raw, frozenset({"countries", "sources", "checked", "note"}))
        countries = chk.str_list(entry, raw.get("countries"), "countries")
        for code in countries:
            chk.country(entry, code, "countries")
        if countries != sorted(set(countries)):
            raise chk.fail(entry, "countries must be sorted, each once")
        zones[zid] = frozenset(countries)
    region_geo: dict[str, str] = {}
    for ns, raw in table("regions").items():
        entry = f"regions.{ns}"
        if not isinstance(ns, str) or not _ID_RE.match(ns):
            raise chk.fail(entry, "a namespace is snake_case")
        dated(entry, raw, frozenset({"regions", "sources", "checked", "note"}))
        regions = raw.get("regions")
        if not isinstance(regions, dict) or not regions:
            raise chk.fail(entry, "'regions' must be a non-empty mapping of region id: geo")
        for rid, geo in regions.items():
            if not isinstance(rid, str) or not _REGION_ID_RE.match(rid):
                raise chk.fail(entry, f"bad region id {rid!r}")
            if geo not in zones:
                chk.country(entry, geo, f"region {rid}")
            region_geo[f"{ns}:{rid}"] = geo
    caveats: dict[str, str] = {}
    for cid, raw in table("caveats").items():
        entry = f"caveats.{cid}"
        dated(entry, raw, frozenset({"text", "sources", "checked", "note"}))
        caveats[str(cid)] = " ".join(chk.text(entry, raw, "text").split())
    return ResidencyTables(
        version=version,
        zones=zones,
        region_geo=region_geo,
        namespaces=frozenset(data["regions"]),
        caveats=caveats,
        sources=sources,
    )


@dataclass
class _Building:
    """State shared while the bundled file and the overlays are read."""

    region_raw: dict[str, tuple[RegionList, dict]]
    residency: ResidencyTables
    providers: dict[str, Provider] = field(default_factory=dict)
    entries: list[CatalogEntry] = field(default_factory=list)
    owner: dict[str, str] = field(default_factory=dict)  # host / pattern / cidr -> entry id
    # (provider id, use, host or pattern, confidence, shape, processing)
    pending: list[tuple[str, str, str, str, Any, Processing]] = field(default_factory=list)
    unlisted: list[tuple[str, str, Any]] = field(default_factory=list)  # (pid, pattern, shape)
    ranges: list[tuple[str, _Network, str]] = field(default_factory=list)


def _processing(
    chk: _Checker, entry: str, raw: Any, what: str, tables: ResidencyTables, exact: list[str]
) -> Processing:
    """A host group's ``processing`` block (absent: unknown)."""
    if raw is None:
        return UNKNOWN
    chk.keys(entry, raw, _PROCESSING_KEYS, f"{what} processing")
    region = chk.text(entry, raw, "region", required=False)
    geo = chk.text(entry, raw, "geo", required=False)
    basis = chk.choice(
        entry,
        raw.get("basis", "hostname" if region or geo else "unknown"),
        BASES,
        f"{what} processing basis",
    )
    if region is not None:
        ns, _, rid = region.partition(":")
        if ns not in tables.namespaces:
            raise chk.fail(
                entry, f"{what}: region {region!r}: namespace {ns!r} is not in residency.yaml"
            )
        if "{*}" in rid and exact:
            raise chk.fail(entry, f"{what}: '{{*}}' needs patterns only ({{1}} is the first label)")
        if "{" not in rid:
            if not _REGION_ID_RE.match(rid):
                raise chk.fail(entry, f"{what}: bad region id {region!r}")
            if region not in tables.region_geo and geo is None:
                raise chk.fail(entry, f"{what}: region {region!r} is not in residency.yaml")
            geo = geo or tables.region_geo.get(region)
    if geo is not None and geo not in tables.zones:
        chk.country(entry, geo, f"{what} processing geo")
    caveat = raw.get("caveat")
    if caveat is not None and caveat not in tables.caveats:
        raise chk.fail(entry, f"{what}: caveat {caveat!r} is not in residency.yaml")
    resource_map = raw.get("resource_map")
    if resource_map is not None:
        chk.choice(entry, resource_map, RESOURCE_MAPS, f"{what} resource_map")
    if basis in ("global", "unknown") and (region or geo):
        raise chk.fail(entry, f"{what}: basis {basis} cannot name a region or geo")
    return Processing(region, geo, basis, caveat, resource_map)


def _restrictions(
    chk: _Checker, entry: str, raw: Any, pid: str, b: _Building
) -> tuple[frozenset[str] | None, list[str]]:
    """``restrictions``: ownership-based bars, as the set of controlling countries."""
    if raw is None:
        return None, []
    if not isinstance(raw, list) or not raw:
        raise chk.fail(entry, "'restrictions' must be a non-empty list")
    countries: set[str] = set()
    sources: list[str] = []
    for n, item in enumerate(raw, 1):
        what = f"restrictions[{n}]"
        chk.keys(entry, item, _RESTRICTION_KEYS, what)
        chk.choice(entry, item.get("type"), RESTRICTION_TYPES, f"{what} type")
        sources += chk.sources(entry, item.get("sources"), what)
        chk.checked(f"{entry}: {what}", item.get("checked"))
        listed = chk.str_list(
            entry, item.get("controlled_from"), f"{what} controlled_from", allow_empty=True
        )
        for code in listed:
            countries.add(chk.country(entry, code, f"{what} controlled_from"))
        outside = item.get("outside_region_list")
        if outside is not None:
            if outside not in b.region_raw or b.region_raw[outside][0].provider_id != pid:
                raise chk.fail(
                    entry, f"{what}: outside_region_list {outside!r} is not this provider's list"
                )
            countries |= VALID_COUNTRY_CODES - b.region_raw[outside][0].countries
        if not listed and outside is None:
            raise chk.fail(entry, f"{what}: name controlled_from or outside_region_list")
        chk.text(entry, item, "note", required=False)
    return frozenset(countries), sources


def _entry(chk: _Checker, raw: Any, n: int, b: _Building, *, overlay: bool) -> None:
    """Validate one provider entry and add it to ``b``."""
    entry, pid = chk.entry_id(raw, f"providers[{n}]", _PROVIDER_KEYS, "provider entry")
    if pid in b.providers:
        where = b.providers[pid].origin
        raise chk.fail(
            entry,
            "duplicate provider id" + (f" (also in {where})" if where != str(chk.path) else ""),
        )
    name = chk.text(entry, raw, "name")
    kind = chk.choice(entry, raw.get("kind"), KINDS, "kind")
    category = raw.get("category")
    if kind == "relay":
        chk.choice(entry, category, RELAY_CATEGORIES, "relay category")
    elif category is not None:
        raise chk.fail(entry, "only relays have a category")
    if "hq_country" not in raw:
        raise chk.fail(entry, "missing 'hq_country' (write null when unknown)")
    hq = raw["hq_country"]
    if hq is not None:
        chk.country(entry, hq, "hq_country")
    hq_conf = raw.get("hq_confidence")
    if hq_conf is not None:
        chk.choice(entry, hq_conf, CONFIDENCES, "hq_confidence")
    approved = raw.get("approved", False)
    if not isinstance(approved, bool):
        raise chk.fail(entry, "approved must be true or false")
    if approved and not overlay:
        raise chk.fail(
            entry, "'approved' belongs in an organisation overlay, not the bundled catalogue"
        )
    entry_checked = raw.get("checked")
    if entry_checked is not None:
        chk.checked(entry, entry_checked)

    def dated(what: str, group: dict[str, Any]) -> None:
        if group.get("checked") is None and entry_checked is None:
            raise chk.fail(
                entry, f"{what}: missing 'checked' (the date its sources were read, YYYY-MM-DD)"
            )
        if group.get("checked") is not None:
            chk.checked(f"{entry}: {what}", group["checked"])

    all_sources: list[str] = []
    if raw.get("hq_sources") is not None:
        all_sources += chk.sources(entry, raw["hq_sources"], "hq_country")
    elif hq_conf == "high":
        raise chk.fail(entry, "hq_confidence high needs hq_sources")
    if "region_list" not in raw:
        raise chk.fail(entry, "missing 'region_list' (write null when none is published)")
    region_list = raw["region_list"]
    if region_list is not None:
        if region_list not in b.region_raw:
            raise chk.fail(entry, f"region_list {region_list!r} is not defined in regions.yaml")
        if b.region_raw[region_list][0].provider_id != pid:
            raise chk.fail(
                entry,
                f"region_list {region_list!r} belongs to {b.region_raw[region_list][0].provider_id!r}",
            )

    def claim(item: str) -> None:
        if item in b.owner:
            where = "this entry" if b.owner[item] == entry else f"entry {b.owner[item]!r}"
            raise chk.fail(entry, f"{item!r} is already listed by {where}")
        b.owner[item] = entry

    def group_head(what: str, group: Any, keys: frozenset[str]) -> str:
        """Keys, date and sources of a host or range group; returns its confidence."""
        nonlocal all_sources
        chk.keys(entry, group, keys, what)
        dated(what, group)
        conf = chk.choice(entry, group.get("confidence", "high"), CONFIDENCES, f"{what} confidence")
        all_sources += chk.sources(entry, group.get("sources"), what, confidence=conf)
        return conf

    api_hosts: list[str] = []
    consumer_hosts: list[str] = []
    groups = raw.get("hosts")
    if not isinstance(groups, list):
        raise chk.fail(entry, "'hosts' must be a list (may be empty)")
    for g, group in enumerate(groups, 1):
        what = f"hosts[{g}]"
        conf = group_head(what, group, _HOST_GROUP_KEYS)
        use = chk.choice(entry, group.get("use"), HOST_USES, f"{what} use")
        exact = chk.str_list(entry, group.get("exact"), f"{what} exact", allow_empty=True)
        patterns = chk.str_list(entry, group.get("patterns"), f"{what} patterns", allow_empty=True)
        if not exact and not patterns:
            raise chk.fail(entry, f"{what} lists no exact host and no pattern")
        proc = _processing(chk, entry, group.get("processing"), what, b.residency, exact)
        for host in exact:
            if "*" in host:
                raise chk.fail(entry, f"{what}: {host!r} has a '*': put it under patterns")
            if err := _host_error(host):
                raise chk.fail(entry, f"{what}: bad host {host!r}: {err}")
            claim(host)
            hproc = proc
            if proc.region and "{1}" in proc.region:
                region = _fill(proc.region, host, host)
                hproc = replace(proc, region=region, geo=proc.geo or b.residency.geo_of(region))
            b.pending.append((pid, use, host, conf, None, hproc))
        for pattern in patterns:
            shape = _classify_pattern(pattern)
            if isinstance(shape, str):
                raise chk.fail(entry, f"{what}: bad pattern {pattern!r}: {shape}")
            claim(pattern)
            b.pending.append((pid, use, pattern, conf, shape, proc))
        (api_hosts if use == "api" else consumer_hosts).extend(exact + patterns)
    unlisted = raw.get("unlisted_endpoints")
    if unlisted is not None:
        what = "unlisted_endpoints"
        chk.keys(entry, unlisted, _UNLISTED_KEYS, what)
        dated(what, unlisted)
        all_sources += chk.sources(entry, unlisted.get("sources"), what)
        for pattern in chk.str_list(entry, unlisted.get("patterns"), f"{what} patterns"):
            shape = _classify_pattern(pattern)
            if isinstance(shape, str) or shape[0] == "tail":
                reason = shape if isinstance(shape, str) else "use *.a.b or a.*.b forms"
                raise chk.fail(entry, f"{what}: bad pattern {pattern!r}: {reason}")
            claim("unlisted " + pattern)
            b.unlisted.append((pid, pattern, shape))
    cidrs_listed: list[str] = []
    range_groups = raw.get("ingress_ranges") or []
    if not isinstance(range_groups, list):
        raise chk.fail(entry, "'ingress_ranges' must be a list")
    for g, group in enumerate(range_groups, 1):
        what = f"ingress_ranges[{g}]"
        conf = group_head(what, group, _RANGE_GROUP_KEYS)
        for cidr in chk.str_list(entry, group.get("cidrs"), f"{what} cidrs"):
            try:
                net = ipaddress.ip_network(cidr, strict=True)
            except ValueError as exc:
                raise chk.fail(entry, f"{what}: bad CIDR {cidr!r}: {exc}") from exc
            for other_pid, other, _ in b.ranges:
                if net.version == other.version and net.overlaps(other):
                    raise chk.fail(entry, f"{what}: {cidr} overlaps {other} of {other_pid!r}")
            b.ranges.append((pid, net, conf))
            cidrs_listed.append(str(net))
    asns: set[int] = set()
    host_asns: dict[str, set[int]] = {}
    net_groups = raw.get("networks") or []
    if not isinstance(net_groups, list):
        raise chk.fail(entry, "'networks' must be a list")
    for g, group in enumerate(net_groups, 1):
        what = f"networks[{g}]"
        chk.keys(entry, group, _NETWORK_GROUP_KEYS, what)
        all_sources += chk.sources(entry, group.get("sources"), what)
        listed = group.get("asns")
        if not isinstance(listed, list) or not listed:
            raise chk.fail(entry, f"{what}: 'asns' must be a non-empty list of AS numbers")
        for asn in listed:
            if isinstance(asn, bool) or not isinstance(asn, int) or not 0 < asn < 1 << 32:
                raise chk.fail(entry, f"{what}: {asn!r} is not an AS number")
        chk.text(entry, group, "org")
        if group.get("hosts") is None:
            asns.update(listed)
            continue
        for host in chk.str_list(entry, group["hosts"], f"{what} hosts"):
            if host not in api_hosts:
                raise chk.fail(entry, f"{what}: {host!r} is not one of this entry's API hosts")
            host_asns.setdefault(host, set()).update(listed)
    private = raw.get("private_endpoints", False)
    if not isinstance(private, bool):
        raise chk.fail(entry, "'private_endpoints' must be true or false")
    restricted, restriction_sources = _restrictions(chk, entry, raw.get("restrictions"), pid, b)
    all_sources += restriction_sources
    if raw.get("sources") is not None:
        all_sources += chk.sources(entry, raw["sources"], "the entry")
    sources = tuple(dict.fromkeys(all_sources))
    if not sources:
        raise chk.fail(entry, "missing sources: the entry has no source URL at all")
    chk.text(entry, raw, "notes", required=False)
    b.providers[pid] = Provider(
        id=pid,
        name=name,
        kind=kind,
        category=category,
        hq_country=hq,
        region_list=region_list,
        sources=sources,
        approved=approved,
        restricted_controllers=restricted,
        origin=str(chk.path),
        asns=frozenset(asns),
        ranges=tuple(cidrs_listed),
        private_endpoints=private,
        host_asns=tuple((h, frozenset(a)) for h, a in host_asns.items()),
    )
    b.entries.append(
        CatalogEntry(
            id=pid,
            name=name,
            kind=kind,
            category=category,
            hq_country=hq,
            hosts=tuple(api_hosts),
            consumer_hosts=tuple(consumer_hosts),
            ip_ranges=tuple(cidrs_listed),
            region_list=region_list,
            region_count=len(b.region_raw[region_list][0].countries) if region_list else None,
            origin="overlay" if overlay else "bundled",
        )
    )


def _entries_of(chk: _Checker, data: dict[str, Any], *, overlay: bool) -> list[Any]:
    top = _OVERLAY_TOP_KEYS
    chk.keys("(top level)", data, top, "file")
    source_urls = data.get("source_urls") or {}
    if not isinstance(source_urls, dict):
        raise chk.fail("(top level)", "'source_urls' must be a mapping of name: URL")
    for name, url in source_urls.items():
        if not isinstance(url, str) or not _URL_RE.match(url):
            raise chk.fail(f"source_urls.{name}", f"{url!r} is not an http(s) URL")
    raw_providers = data.get("providers")
    if not isinstance(raw_providers, list) or (not raw_providers and not overlay):
        raise chk.fail("(top level)", "'providers' must be a non-empty list")
    return raw_providers


def load_overlay(path: Path, catalog: Catalog | None = None) -> Catalog:
    """The catalogue with one more overlay file: raises :class:`CatalogError` naming the file,
    the entry and the reason (``config check`` and ``discovered --promote`` use it)."""
    base = catalog or bundled_catalog()
    from monitor.resources import rules_dir

    return Catalog.load(rules_dir(), extra=(*base.overlays, str(path)))


def _build(
    providers_path: Path, regions_path: Path, residency_path: Path, extra: list[Path]
) -> Catalog:
    _, region_raw, models = _load_regions(regions_path)
    residency = _load_residency(residency_path)
    b = _Building(region_raw, residency)
    chk = _Checker(providers_path)
    data = _read_yaml(providers_path)
    version = chk.text("(top level)", data, "version")
    for n, raw in enumerate(_entries_of(chk, data, overlay=False), 1):
        _entry(chk, raw, n, b, overlay=False)
    bundled = set(b.providers)
    for path in extra:
        ochk = _Checker(path)
        odata = _read_yaml(path)
        for n, raw in enumerate(_entries_of(ochk, odata, overlay=True), 1):
            _entry(ochk, raw, n, b, overlay=True)

    # Cross-file checks: every list and region model points at a bundled provider.
    rchk = _Checker(regions_path)
    for list_id, (region, _) in region_raw.items():
        if region.provider_id not in bundled:
            raise rchk.fail(
                list_id, f"provider_id {region.provider_id!r} is not in {providers_path}"
            )
    for n, model in enumerate(models, 1):
        pid = model["provider_id"]
        entry = f"region_models[{n}] ({pid})"
        if pid not in bundled:
            raise rchk.fail(entry, f"provider_id {pid!r} is not in {providers_path}")
        if b.providers[pid].region_list is not None:
            raise rchk.fail(entry, f"{pid!r} has a country list; a region model contradicts it")

    index = _Index()
    for pid, use, pattern, conf, shape, proc in b.pending:
        provider = b.providers[pid]
        hit = Match(provider, "relay" if provider.kind == "relay" else use, pattern, conf, proc)
        _add(index, pattern, shape, hit)
    unlisted = _Index()
    for pid, pattern, shape in b.unlisted:
        _add(unlisted, pattern, shape, Match(b.providers[pid], "api", pattern, "low", listed=False))
    for pid, net, conf in b.ranges:
        provider = b.providers[pid]
        kind = "relay" if provider.kind == "relay" else "api"
        index.ranges.append((net, Match(provider, kind, str(net), conf, on="address")))

    region_lists = {list_id: region for list_id, (region, _) in region_raw.items()}
    return Catalog(
        b.providers,
        region_lists,
        version,
        index,
        b.entries,
        residency,
        unlisted,
        tuple(str(p) for p in extra),
    )


def _add(index: _Index, pattern: str, shape: Any, hit: Match) -> None:
    if shape is None:
        index.exact[pattern] = hit
    elif shape[0] == "suffix":
        index.suffix[shape[1]] = hit
    elif shape[0] == "middle":
        n_labels, star, key = shape[1]
        slots = index.middle.setdefault(n_labels, [])
        for pos, table in slots:
            if pos == star:
                table[key] = hit
                break
        else:
            slots.append((star, {key: hit}))
    else:
        tail, parent = shape[1]
        index.label_tail.setdefault(parent, []).append((tail, hit))
