"""The provider catalogue and region lists: the bundled data and the matcher."""

from __future__ import annotations

import ipaddress
import pickle
import textwrap
import timeit
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.catalog import Catalog, CatalogError, Match, last_two_labels
from monitor.countries import ISO_ALPHA2, VALID_COUNTRY_CODES, is_country_code
from monitor.resources import rules_dir

SHARED = Path(__file__).resolve().parents[2] / "shared"
RESEARCH = SHARED / "reference" / "providers"
needs_research = pytest.mark.skipif(
    not (RESEARCH / "providers.yaml").is_file(),
    reason=f"research notes not available at {RESEARCH}",
)

EXPECTED_COUNTS = {
    "openai_api": 219,
    "anthropic_api_docs": 175,
    "anthropic_site": 206,
    "google_gemini_api": 213,
}


@pytest.fixture(scope="module")
def cat() -> Catalog:
    return Catalog.load()


def _research(name: str) -> dict:
    return yaml.safe_load((RESEARCH / name).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- host matching


@pytest.mark.parametrize(
    ("host", "provider", "kind", "pattern"),
    [
        ("api.openai.com", "openai", "api", "api.openai.com"),
        ("chatgpt.com", "openai", "consumer", "chatgpt.com"),
        ("chat.openai.com", "openai", "consumer", "chat.openai.com"),
        ("claude.ai", "anthropic", "consumer", "claude.ai"),
        ("gemini.google.com", "google_gemini", "consumer", "gemini.google.com"),
        ("api.anthropic.com", "anthropic", "api", "api.anthropic.com"),
        (
            "aws-external-anthropic.us-east-1.api.aws",
            "anthropic",
            "api",
            "aws-external-anthropic.*.api.aws",
        ),
        ("myres.openai.azure.com", "azure_openai", "api", "*.openai.azure.com"),
        ("a.b.openai.azure.com", "azure_openai", "api", "*.openai.azure.com"),
        (
            "bedrock-runtime.eu-central-1.amazonaws.com",
            "aws_bedrock",
            "api",
            "bedrock-runtime.*.amazonaws.com",
        ),
        ("bedrock.us-east-1.amazonaws.com", "aws_bedrock", "api", "bedrock.*.amazonaws.com"),
        (
            "us-central1-aiplatform.googleapis.com",
            "google_vertex",
            "api",
            "*-aiplatform.googleapis.com",
        ),
        ("aiplatform.googleapis.com", "google_vertex", "api", "aiplatform.googleapis.com"),
        ("generativelanguage.googleapis.com", "google_gemini", "api", None),
        ("api.deepseek.com", "deepseek", "api", None),
        ("dashscope.aliyuncs.com", "alibaba_dashscope", "api", None),
        ("dashscope-intl.aliyuncs.com", "alibaba_dashscope", "api", None),
        ("open.bigmodel.cn", "zhipu", "api", None),
        ("api.z.ai", "zhipu", "api", None),
        ("api.mistral.ai", "mistral", "api", None),
        ("api.groq.com", "groq", "api", None),
        ("ark.cn-shanghai.volces.com", "volcengine_ark", "api", "ark.*.volces.com"),
        ("openrouter.ai", "openrouter", "relay", "openrouter.ai"),
        ("gateway.ai.cloudflare.com", "cloudflare_ai_gateway", "relay", None),
        ("ai-gateway.vercel.sh", "vercel_ai_gateway", "relay", None),
        ("oa.api2d.net", "api2d", "relay", None),
        (
            "openai-api-proxy.someone.workers.dev",
            "cloudflare_workers_proxy",
            "relay",
            "*.workers.dev",
        ),
        ("my-site.pages.dev", "cloudflare_workers_proxy", "relay", "*.pages.dev"),
    ],
)
def test_known_hosts_match(cat, host, provider, kind, pattern):
    m = cat.match_host(host)
    assert m is not None, host
    assert (m.provider.id, m.kind) == (provider, kind)
    assert m.pattern == (pattern or host)


@pytest.mark.parametrize(
    "host",
    [
        "api.openai.com.example.net",  # provider name as a prefix of someone else's domain
        "notopenai.com",
        "openai.com",  # the apex is not an API host
        "evilapi.openai.com",  # only api.openai.com is listed, no *.openai.com
        "api-openai.com",
        "xopenai.azure.com",  # *.openai.azure.com needs a label boundary
        "openai.azure.com",  # ... and at least one label in front
        "azure.com",
        "claude.ai.evil.cn",
        "xclaude.ai",
        "workers.dev",
        "workers.dev.evil.com",
        "bedrock-runtime.amazonaws.com",  # the region label is missing
        "bedrock-runtime.us-east-1.x.amazonaws.com",  # "*" in the middle is exactly one label
        "xbedrock-runtime.us-east-1.amazonaws.com",
        "aws-external-anthropic.api.aws",
        "-aiplatform.googleapis.com",  # "*-x" needs a non-empty label part
        "aiplatform.googleapis.com.evil.net",
        "a.us-central1-aiplatform.googleapis.com",  # "*-x" covers the first label only
        "www.google.com",
        "160.79.104.1",  # an address is not a host name: use match_ip
        "",
    ],
)
def test_lookalikes_do_not_match(cat, host):
    assert cat.match_host(host) is None


def test_docs_hosts_are_not_api_traffic(cat):
    for host in (
        "platform.openai.com",
        "help.openai.com",
        "docs.anthropic.com",
        "platform.claude.com",
    ):
        m = cat.match_host(host)
        assert m is None or m.kind != "api", host


def test_exact_beats_pattern_within_a_provider(cat):
    m = cat.match_host("api.endpoints.huggingface.cloud")
    assert m.pattern == "api.endpoints.huggingface.cloud"
    m = cat.match_host("x.eu-west-1.aws.endpoints.huggingface.cloud")
    assert m.pattern == "*.endpoints.huggingface.cloud"


def test_low_confidence_is_carried_on_the_match(cat):
    assert cat.match_host("foo.workers.dev").confidence == "low"
    assert cat.match_host("api.cloudflare.com").confidence == "low"
    assert cat.match_host("api.openai.com").confidence == "high"


def test_relay_providers_always_match_as_relay(cat):
    for entry in cat.entries():
        if entry.kind != "relay":
            continue
        for host in entry.hosts + entry.consumer_hosts:
            sample = host.replace("*", "sample") if "*" in host else host
            m = cat.match_host(sample)
            assert m is not None and m.kind == "relay" and m.provider.id == entry.id, host


def test_label_boundaries_hold_for_every_catalogue_host(cat):
    for entry in cat.entries():
        for host in entry.hosts + entry.consumer_hosts:
            if "*" in host:
                fixed = host.split("*", 1)[1].lstrip(".")
                assert cat.match_host(fixed) is None or cat.match_host(fixed).pattern != host
                continue
            for lookalike in (host + ".example.net", "x" + host, "x-" + host):
                m = cat.match_host(lookalike)
                assert m is None or m.pattern != host, lookalike
            assert cat.match_host(host).pattern == host


def _walked(cat: Catalog, host: str) -> Match | None:
    """``match_host`` of a host with the last-two-labels shortcut off: the host's own last
    two labels taken as every index's, so that each index is walked."""
    own = frozenset({last_two_labels(host)})
    tails, cat._tails = cat._tails, (own, own)
    try:
        return cat._lookup_host(host)
    finally:
        cat._tails = tails


_LABELS = st.sampled_from(["api", "x", "eu", "us-east-1", "gw", "com", "ai", "net", "sample"])


@st.composite
def _hosts(draw, names: list[str]) -> str:
    """Hosts near the catalogue's names: a name with its wildcards filled, labels put in
    front, dropped from the front or the end, or swapped for others; and random ones."""
    labels = draw(st.sampled_from(names)).replace("*", draw(_LABELS)).split(".")
    labels = draw(st.lists(_LABELS, max_size=2)) + labels[draw(st.integers(0, len(labels) - 1)) :]
    if draw(st.booleans()) and len(labels) > 1:
        labels[draw(st.integers(0, len(labels) - 1))] = draw(_LABELS)
    if draw(st.booleans()):
        labels = labels[: draw(st.integers(1, len(labels)))]
    return ".".join(labels)


_CATALOGUE_NAMES = [h for e in Catalog.load().entries() for h in e.hosts + e.consumer_hosts]


@settings(max_examples=500, deadline=None)
@given(st.one_of(_hosts(_CATALOGUE_NAMES), st.text("ab.-*", max_size=12)))
def test_hosts_no_name_ends_as_match_what_the_walk_matches(cat, host):
    """The shortcut (a host whose last two labels no pattern of an index ends in is looked
    up in no index of them) answers as the walk of every index: the bundled catalogue."""
    assert cat._lookup_host(host) == _walked(cat, host)


@pytest.mark.parametrize("host", ["q.b.example.com", "x.eu.example.com", "eu-gw.example.com",
                                  "example.com", "com", "b.example.com", "a.example.org"])  # fmt: skip
def test_hosts_of_every_pattern_shape_match_with_the_shortcut(tmp_path, host):
    cat = Catalog.load(_write(tmp_path))
    assert cat.match_host(host) == _walked(cat, host)


def test_catalog_pickles_for_worker_processes(cat):
    clone = pickle.loads(pickle.dumps(cat))
    assert clone.match_host("api.openai.com").provider == cat.providers["openai"]
    assert clone.match_ip("2607:6bc0::1").provider.id == "anthropic"


def test_match_host_is_memoised(cat):
    before = cat.cache_info()["host"].hits
    first = cat.match_host("api.anthropic.com")
    again = cat.match_host("api.anthropic.com")
    assert first is again
    assert cat.cache_info()["host"].hits >= before + 1


def test_match_host_is_fast(cat):
    host = "bedrock-runtime.us-east-1.amazonaws.com"
    cat.match_host(host)
    n = 100_000
    cached = timeit.timeit(lambda: cat.match_host(host), number=n) / n
    uncached = timeit.timeit(lambda: cat._lookup_host(host), number=n) / n
    # measured ~0.1 us cached and ~1.5 us uncached; bounds leave room for slow CI machines
    assert cached < 2e-6, cached
    assert uncached < 20e-6, uncached


# --------------------------------------------------------------------------- ingress ranges


@pytest.mark.parametrize(
    ("ip", "pattern"),
    [
        ("160.79.104.10", "160.79.104.0/23"),
        ("160.79.105.255", "160.79.104.0/23"),
        ("2607:6bc0::10", "2607:6bc0::/48"),
        ("2607:6bc0:0:ffff::1", "2607:6bc0::/48"),
        ("153.61.227.1", "153.61.224.0/22"),
    ],
)
def test_anthropic_ingress_ranges(cat, ip, pattern):
    m = cat.match_ip(ip)
    assert isinstance(m, Match)
    assert (m.provider.id, m.kind, m.pattern) == ("anthropic", "api", pattern)


@pytest.mark.parametrize(
    "ip",
    [
        "160.79.106.1",  # in Anthropic's OUTBOUND /21, not in the ingress /23
        "153.61.208.1",  # in the newer outbound /20
        "2607:6bc1::1",
        "20.171.206.1",  # OpenAI GPTBot (outbound crawler) - deliberately not listed
        "104.18.32.47",  # Cloudflare front of api.openai.com - not provider-specific
        "not-an-ip",
        "",
    ],
)
def test_other_addresses_do_not_match(cat, ip):
    assert cat.match_ip(ip) is None


# --------------------------------------------------------------------------- catalogue content


def test_every_entry_has_url_sources(cat):
    assert cat.providers
    for provider in cat.providers.values():
        assert provider.sources, provider.id
        assert all(s.startswith(("https://", "http://")) for s in provider.sources), provider.id
    for region in cat.region_lists.values():
        assert region.sources and all(s.startswith("https://") for s in region.sources)


def test_kinds_categories_and_hq(cat):
    for p in cat.providers.values():
        assert p.kind in ("provider", "relay")
        assert (p.category is not None) == (p.kind == "relay"), p.id
        assert p.hq_country is None or is_country_code(p.hq_country), p.id
    assert cat.providers["openrouter"].kind == "relay"
    assert cat.providers["openrouter"].category == "aggregator"
    assert cat.providers["cloudflare_ai_gateway"].category == "ai_gateway"
    assert cat.providers["api2d"].category == "reseller_relay"
    assert cat.providers["cloudflare_workers_proxy"].category == "serverless_proxy"
    assert cat.providers["deepseek"].hq_country == "CN"
    assert cat.providers["mistral"].hq_country == "FR"
    assert cat.providers["featherless"].hq_country is None


def test_version_and_entries(cat):
    assert cat.version == "2026-12-04"
    rows = {e.id: e for e in cat.entries()}
    assert list(rows) == list(cat.providers)
    assert rows["openai"].region_list == "openai_api"
    assert rows["openai"].region_count == 219
    assert "api.openai.com" in rows["openai"].hosts
    assert "chatgpt.com" in rows["openai"].consumer_hosts
    assert rows["anthropic"].ip_ranges == ("160.79.104.0/23", "2607:6bc0::/48", "153.61.224.0/22")
    assert rows["mistral"].region_count is None
    assert rows["iflytek_spark"].hosts == ()
    assert rows["openai"].as_dict()["region_count"] == 219


@needs_research
def test_every_research_provider_id_exists(cat):
    ids = [p["id"] for p in _research("providers.yaml")["providers"]]
    assert len(ids) == 56
    assert sorted(set(ids) - set(cat.providers)) == []


@needs_research
def test_research_api_hosts_map_to_their_provider(cat):
    for entry in _research("providers.yaml")["providers"]:
        hosts = entry.get("api_hosts") or {}
        for host in hosts.get("exact") or []:
            m = cat.match_host(host)
            assert m is not None and m.provider.id == entry["id"], host
            assert m.kind in ("api", "relay")
        for pattern in hosts.get("patterns") or []:
            m = cat.match_host(pattern.replace("*", "sample"))
            assert m is not None and m.provider.id == entry["id"], pattern


@needs_research
def test_research_relay_hosts_are_relays(cat):
    for category in _research("relays.yaml")["categories"]:
        for entry in category.get("entries") or []:
            for host in entry.get("hosts") or []:
                m = cat.match_host(host)
                assert m is not None, host
                if host != "api.siliconflow.cn":  # a provider that also resells; kept a provider
                    assert m.kind == "relay", host


# --------------------------------------------------------------------------- region lists


def test_region_lists_have_the_research_counts(cat):
    assert {k: len(v.countries) for k, v in cat.region_lists.items()} == EXPECTED_COUNTS


def test_region_lists_are_valid_iso_alpha2(cat):
    for region in cat.region_lists.values():
        assert region.countries <= VALID_COUNTRY_CODES, region.id
        assert all(len(c) == 2 and c.isupper() for c in region.countries)
        assert region.provider_id in cat.providers


@pytest.mark.parametrize("code", ["CN", "HK", "RU", "IR", "KP"])
def test_restricted_countries_are_not_on_provider_lists(cat, code):
    for list_id in EXPECTED_COUNTS:
        assert code not in cat.region_lists[list_id].countries, (list_id, code)


def test_known_list_differences(cat):
    lists = cat.region_lists
    assert {"US", "GB", "DE", "JP", "NO", "UA", "SA"} <= lists["openai_api"].countries
    assert "VE" in lists["google_gemini_api"].countries
    assert "VE" not in lists["openai_api"].countries
    assert "UA" not in lists["google_gemini_api"].countries
    # the docs list is the site list without dependent territories
    assert lists["anthropic_api_docs"].countries < lists["anthropic_site"].countries
    assert "PR" in lists["anthropic_site"].countries - lists["anthropic_api_docs"].countries


@needs_research
def test_region_lists_equal_the_research_transcription(cat):
    research = _research("supported_regions.yaml")["lists"]
    ours_to_theirs = {
        "openai_api": "openai_api",
        "anthropic_api_docs": "anthropic_api_docs",
        "anthropic_site": "anthropic_api_and_claude_ai_web",
        "google_gemini_api": "google_gemini_api",
    }
    for ours, theirs in ours_to_theirs.items():
        assert cat.region_lists[ours].countries == set(research[theirs]["codes"]), ours


def test_allowed_countries(cat):
    assert cat.allowed_countries("openai") == cat.region_lists["openai_api"].countries
    assert cat.allowed_countries("anthropic") == cat.region_lists["anthropic_site"].countries
    assert cat.allowed_countries("google_gemini") == cat.region_lists["google_gemini_api"].countries
    for publishes_none in ("mistral", "deepseek", "azure_openai", "aws_bedrock", "openrouter"):
        assert cat.allowed_countries(publishes_none) is None
    assert cat.allowed_countries("no_such_provider") is None


def test_major_allowed_countries_is_the_union(cat):
    union = frozenset().union(*(r.countries for r in cat.region_lists.values()))
    assert cat.major_allowed_countries() == union
    assert "VE" in union  # only Gemini lists it
    assert not {"CN", "HK", "RU", "IR", "KP"} & union


# --------------------------------------------------------------------------- countries module


def test_country_codes():
    assert len(ISO_ALPHA2) == 249
    assert "XK" not in ISO_ALPHA2 and is_country_code("XK")
    assert is_country_code("NO") and not is_country_code(False)
    assert not is_country_code("UK") and not is_country_code("us")


def test_country_codes_match_tzdata():
    tab = Path("/usr/share/zoneinfo/iso3166.tab")
    if not tab.is_file():
        pytest.skip("tzdata iso3166.tab not installed")
    lines = tab.read_text(encoding="utf-8").splitlines()
    codes = {line.split("\t")[0] for line in lines if line and not line.startswith("#")}
    assert codes == ISO_ALPHA2


# --------------------------------------------------------------------------- loading from files

PROVIDERS_OK = """\
version: "2026-01-01"
providers:
- id: alpha
  checked: "2026-01-01"
  name: Alpha AI
  kind: provider
  hq_country: US
  region_list: alpha_list
  hosts:
  - {use: api, exact: [api.alpha.example, special.b.example.com], sources: [https://a.example/doc]}
  - {use: consumer, exact: [chat.alpha.example], sources: [https://a.example/doc]}
  ingress_ranges:
  - {cidrs: [192.0.2.0/24, "2001:db8::/32"], sources: [https://a.example/ips]}
  networks:
  - {asns: [64500], org: Alpha, sources: [https://a.example/asn]}
  - {asns: [64501], org: Cloud, hosts: [special.b.example.com], sources: [https://a.example/asn]}
  private_endpoints: true
- id: beta_relay
  checked: "2026-01-01"
  name: Beta relay
  kind: relay
  category: aggregator
  hq_country: null
  region_list: null
  hosts:
  - use: api
    patterns: ["*.example.com", "*.b.example.com", "x.*.example.com", "*-gw.example.com"]
    confidence: low
    sources: ["unverified: test data", https://b.example/]
  ingress_ranges:
  - {cidrs: [198.51.100.0/24], sources: [https://b.example/ips]}
"""

REGIONS_OK = """\
version: "2026-01-01"
lists:
  - id: alpha_list
    provider_id: alpha
    scope: Alpha API
    list_type: allow_list
    as_of: "2025-12-01"
    sources: [https://a.example/countries]
    count: 3
    countries: [DE, "NO", US]
"""


def _write(tmp_path: Path, providers: str = PROVIDERS_OK, regions: str = REGIONS_OK) -> Path:
    (tmp_path / "providers.yaml").write_text(textwrap.dedent(providers), encoding="utf-8")
    (tmp_path / "regions.yaml").write_text(textwrap.dedent(regions), encoding="utf-8")
    return tmp_path


def test_loads_a_minimal_catalogue(tmp_path):
    cat = Catalog.load(_write(tmp_path))
    assert cat.version == "2026-01-01"
    assert set(cat.providers) == {"alpha", "beta_relay"}
    assert cat.allowed_countries("alpha") == {"DE", "NO", "US"}
    assert cat.region_lists["alpha_list"].as_of == "2025-12-01"
    assert cat.providers["beta_relay"].sources == ("https://b.example/", "https://b.example/ips")
    assert cat.match_ip("2001:db8::1").provider.id == "alpha"
    assert cat.match_ip("198.51.100.7").kind == "relay"
    alpha = cat.providers["alpha"]
    assert alpha.asns_for("api.alpha.example") == {64500}
    assert alpha.asns_for("special.b.example.com") == {64501}
    assert alpha.ranges == ("192.0.2.0/24", "2001:db8::/32") and alpha.private_endpoints
    assert cat.providers["beta_relay"].asns == frozenset()


@pytest.mark.parametrize(
    ("host", "provider", "pattern"),
    [
        # exact name of one provider beats another provider's (longer) pattern
        ("special.b.example.com", "alpha", "special.b.example.com"),
        # longest suffix pattern wins
        ("q.b.example.com", "beta_relay", "*.b.example.com"),
        ("q.c.example.com", "beta_relay", "*.example.com"),
        # a middle wildcard longer than the suffix pattern wins over it
        ("x.eu.example.com", "beta_relay", "x.*.example.com"),
        ("eu-gw.example.com", "beta_relay", "*-gw.example.com"),
        ("api.alpha.example", "alpha", "api.alpha.example"),
    ],
)
def test_precedence(tmp_path, host, provider, pattern):
    m = Catalog.load(_write(tmp_path)).match_host(host)
    assert (m.provider.id, m.pattern) == (provider, pattern)


def _break(old: str, new: str, text: str = PROVIDERS_OK) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def _case_id(value: object) -> str | None:
    """Test ids: the entry and reason, not the whole broken file."""
    return "file" if isinstance(value, str) and "\n" in value else None


@pytest.mark.parametrize(
    ("providers", "entry", "reason"),
    [
        (_break("  kind: provider\n", "  kind: provider\n  colour: red\n"), "alpha", "unknown key"),
        (_break("sources: [https://a.example/doc]}", "sources: []}"), "alpha", "missing sources"),
        (_break(", sources: [https://a.example/doc]}", ", note: x}"), "alpha", "missing sources"),
        (_break("- id: beta_relay", "- id: alpha"), "alpha", "duplicate provider id"),
        (
            _break(
                "    confidence: low\n", "    exact: [api.alpha.example]\n    confidence: low\n"
            ),
            "beta_relay",
            "already listed by entry 'alpha'",
        ),
        (_break("hq_country: US", "hq_country: XX"), "alpha", "not an ISO 3166-1 alpha-2"),
        (_break("hq_country: US", "hq_country: NO"), "alpha", "YAML boolean"),
        (_break("region_list: alpha_list", "region_list: nope"), "alpha", "not defined"),
        (_break("192.0.2.0/24", "192.0.2.1/24"), "alpha", "bad CIDR"),
        (_break("192.0.2.0/24", "192.0.2.0/33"), "alpha", "bad CIDR"),
        (_break("198.51.100.0/24", "192.0.2.128/25"), "beta_relay", "overlaps"),
        (_break('"*.example.com"', '"*.com"'), "beta_relay", "at least two labels"),
        (_break('"*.example.com"', '"api.*"'), "beta_relay", "bad pattern"),
        (_break('"*.example.com"', '"a*b.example.com"'), "beta_relay", "bad pattern"),
        (_break('"*.example.com"', '"*.*.example.com"'), "beta_relay", "exactly one"),
        (_break("[api.alpha.example,", "[API.Alpha.example,"), "alpha", "bad host"),
        (_break("[api.alpha.example,", "[api.*.example,"), "alpha", "put it under patterns"),
        (_break("    confidence: low\n", ""), "beta_relay", "needs confidence: low"),
        (_break("  category: aggregator\n", ""), "beta_relay", "category"),
        (
            _break("  kind: provider\n", "  kind: provider\n  category: aggregator\n"),
            "alpha",
            "only relays",
        ),
        (_break("  kind: provider\n", "  kind: vendor\n"), "alpha", "kind 'vendor'"),
        (_break("  region_list: null\n", ""), "beta_relay", "missing 'region_list'"),
        (
            _break("https://b.example/ips", "ftp://b.example/ips"),
            "beta_relay",
            "not an http(s) URL",
        ),
        (_break("asns: [64500]", "asns: [AS64500]"), "alpha", "not an AS number"),
        (_break("asns: [64500]", "asns: []"), "alpha", "non-empty list of AS numbers"),
        (_break("org: Alpha, ", ""), "alpha", "missing 'org'"),
        (_break("hosts: [special.b.example.com]", "hosts: [x.example]"), "alpha", "not one of"),
        (_break("private_endpoints: true", "private_endpoints: maybe"), "alpha", "true or false"),
        (
            _break("  hq_country: US\n  region", "  hq_country: US\n  hq_country: DE\n  region"),
            "",
            "duplicate key",
        ),
    ],
    ids=_case_id,
)
def test_invalid_providers_file_names_entry_and_reason(tmp_path, providers, entry, reason):
    with pytest.raises(CatalogError) as info:
        Catalog.load(_write(tmp_path, providers=providers))
    message = str(info.value)
    assert "providers.yaml" in message
    assert entry in message
    assert reason in message


@pytest.mark.parametrize(
    ("regions", "entry", "reason"),
    [
        (
            _break('countries: [DE, "NO", US]', "countries: [DE, NO, US]", REGIONS_OK),
            "alpha_list",
            "YAML boolean",
        ),
        (
            _break('countries: [DE, "NO", US]', 'countries: [DE, "NO", UK]', REGIONS_OK),
            "alpha_list",
            "'UK'",
        ),
        (
            _break('countries: [DE, "NO", US]', 'countries: [US, "NO", DE]', REGIONS_OK),
            "alpha_list",
            "sorted",
        ),
        (
            _break('countries: [DE, "NO", US]', "countries: [DE, DE, US]", REGIONS_OK),
            "alpha_list",
            "twice",
        ),
        (_break("count: 3", "count: 4", REGIONS_OK), "alpha_list", "count says 4"),
        (
            _break("provider_id: alpha", "provider_id: gamma", REGIONS_OK),
            "alpha_list",
            "belongs to",
        ),
        (
            _break("list_type: allow_list", "list_type: deny_list", REGIONS_OK),
            "alpha_list",
            "list_type",
        ),
        (
            _break("    sources: [https://a.example/countries]\n", "", REGIONS_OK),
            "alpha_list",
            "missing sources",
        ),
        (_break("    scope:", "    extra: 1\n    scope:", REGIONS_OK), "alpha_list", "unknown key"),
    ],
    ids=_case_id,
)
def test_invalid_regions_file_names_entry_and_reason(tmp_path, regions, entry, reason):
    with pytest.raises(CatalogError) as info:
        Catalog.load(_write(tmp_path, regions=regions))
    message = str(info.value)
    assert entry in message
    assert reason in message
    assert ("regions.yaml" in message) or ("providers.yaml" in message)


def test_region_list_of_unknown_provider(tmp_path):
    providers = _break("region_list: alpha_list", "region_list: null")
    regions = _break("provider_id: alpha", "provider_id: gamma", REGIONS_OK)
    with pytest.raises(CatalogError, match=r"regions\.yaml: alpha_list: provider_id 'gamma'"):
        Catalog.load(_write(tmp_path, providers=providers, regions=regions))


def test_region_model_must_name_a_provider_without_a_list(tmp_path):
    regions = REGIONS_OK + textwrap.dedent(
        """\
        region_models:
          - {provider_id: alpha, model: per cloud region, sources: [https://a.example/regions]}
        """
    )
    with pytest.raises(
        CatalogError, match=r"regions\.yaml: region_models\[1\] \(alpha\): .*contradicts"
    ):
        Catalog.load(_write(tmp_path, regions=regions))


def test_missing_file_is_a_catalog_error(tmp_path):
    (tmp_path / "regions.yaml").write_text(REGIONS_OK, encoding="utf-8")
    with pytest.raises(CatalogError, match="providers.yaml: cannot read"):
        Catalog.load(tmp_path)


def test_default_load_is_the_bundled_rules_dir():
    assert Catalog.load().version == Catalog.load(rules_dir()).version


@pytest.mark.parametrize("prefixlen", [23, 22])
def test_match_ip_at_range_edges(cat, prefixlen):
    """Dotted quads are looked up as integers: the first and last address of a range match,
    their neighbours outside do not, and text ipaddress refuses matches nothing."""
    net, hit = next(
        (n, m) for n, m in cat._index.ranges if n.version == 4 and n.prefixlen == prefixlen
    )
    first, last = int(net.network_address), int(net.broadcast_address)
    for a, inside in ((first, True), (last, True), (first - 1, False), (last + 1, False)):
        found = cat.match_ip(str(ipaddress.IPv4Address(a)))
        assert (found is hit) if inside else found is None, (a, inside)
    text = str(net.network_address)
    zeros = ".".join(f"0{o}" if i == 2 else o for i, o in enumerate(text.split(".")))
    assert cat.match_ip(zeros) is None and cat.match_ip(text + ".") is None
