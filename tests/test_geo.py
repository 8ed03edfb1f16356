"""monitor.geo against real MMDB files read by geoip2: no mocks of the readers."""

from __future__ import annotations

import ipaddress
import json
import lzma
import os
from pathlib import Path

import geoip2.database
import pytest

from monitor import geo
from monitor.geo import GeoAnswer, GeoError, GeoResolver, GeoSource, classify, load_overrides
from monitor.resources import geodata_dir
from tests.mmdbs import asn_db, city_db, country_db, enterprise_db, flat_db, isp_db

SHARED = Path(__file__).resolve().parents[2] / "shared"
MMDB_CONFORMANCE = SHARED / "conformance" / "mmdb"

ENV_VARS = ("APIWATCH_GEOIP", "APIWATCH_GEOIP_DIR", "APIWATCH_GEO_OVERRIDES")


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("apiwatch-cache")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, cache_root):
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("APIWATCH_CACHE_DIR", str(cache_root))


@pytest.fixture(params=["raw", "model"])
def read_mode(request, monkeypatch):
    """Run a test through both read paths: raw dicts and geoip2's model objects."""
    monkeypatch.setattr(GeoResolver, "_raw_reads", request.param == "raw")
    return request.param


@pytest.fixture(scope="session")
def embedded(cache_root):
    with pytest.MonkeyPatch.context() as mp:
        for var in ENV_VARS:
            mp.delenv(var, raising=False)
        mp.setenv("APIWATCH_CACHE_DIR", str(cache_root))
        resolver = GeoResolver(search_dirs=())
        resolver.lookup("8.8.8.8")  # opens (and decompresses) the embedded files here
    yield resolver
    resolver.close()


def only(*databases, overrides=(), embedded=False):
    return GeoResolver(databases, overrides, search_dirs=(), use_embedded=embedded)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- scope


@pytest.mark.parametrize(
    ("ip", "scope"),
    [
        ("8.8.8.8", "public"),
        ("10.1.2.3", "private"),
        ("172.31.255.255", "private"),
        ("172.32.0.1", "public"),
        ("192.168.0.1", "private"),
        ("100.64.0.1", "cgnat"),
        ("100.127.255.255", "cgnat"),
        ("100.128.0.1", "public"),
        ("127.0.0.1", "loopback"),
        ("169.254.1.1", "link-local"),
        ("224.0.0.251", "multicast"),
        ("0.1.2.3", "reserved"),
        ("192.0.2.7", "reserved"),
        ("198.51.100.7", "reserved"),
        ("203.0.113.7", "reserved"),
        ("198.18.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("2606:4700::1", "public"),
        ("::1", "loopback"),
        ("::", "reserved"),
        ("fe80::1", "link-local"),
        ("fd00::1", "private"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "reserved"),
        ("3fff::1", "reserved"),
        ("4000::1", "reserved"),
    ],
)
def test_classify(ip, scope):
    assert classify(ipaddress.ip_address(ip)) == scope


def test_non_public_addresses_never_reach_a_database(tmp_path, read_mode):
    # A database that (wrongly) answers for every special range.
    db = country_db(
        tmp_path / "everything.mmdb",
        {
            "0.0.0.0/1": "ZZ",
            "128.0.0.0/1": "ZZ",
            "::/1": "ZZ",
            "8000::/1": "ZZ",
        },
    )
    with only(db) as g:
        assert g.lookup("8.8.8.8").country == "ZZ"  # the file does work
        for ip, scope in [
            ("10.0.0.1", "private"),
            ("100.64.3.4", "cgnat"),
            ("127.0.0.1", "loopback"),
            ("169.254.0.9", "link-local"),
            ("239.1.2.3", "multicast"),
            ("192.0.2.1", "reserved"),
            ("::1", "loopback"),
            ("fe80::1%eth0", "link-local"),
            ("fc00::5", "private"),
            ("::ffff:10.0.0.1", "private"),
            ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ]:
            ans = g.lookup(ip)
            assert ans.scope == scope, ip
            assert (ans.country, ans.asn, ans.country_source, ans.asn_source) == (None,) * 4, ip
            assert ans.network is None


def test_invalid_input_never_raises(tmp_path):
    with only() as g:
        for bad in ["", "nonsense", "1.2.3", "300.1.1.1", "01.2.3.4", "::g", None]:
            ans = g.lookup(bad)
            assert ans.scope == "invalid"
            assert ans.country is None and ans.asn is None


def test_canonical_ip_and_mapped_addresses(tmp_path, read_mode):
    db = country_db(tmp_path / "c.mmdb", {"8.8.8.0/24": "US"})
    with only(db) as g:
        assert g.lookup(" 8.8.8.8 ").ip == "8.8.8.8"
        mapped = g.lookup("::FFFF:8.8.8.8")
        assert mapped.ip == "::ffff:808:808"  # same text as observation.canonical_ip
        assert (mapped.country, mapped.network) == ("US", "8.8.8.0/24")
        nat64 = g.lookup("64:ff9b::8.8.8.8")
        assert (nat64.scope, nat64.country) == ("public", "US")


# --------------------------------------------------------------------------- dispatch


def test_country_dispatch(tmp_path, read_mode):
    db = country_db(tmp_path / "GeoIP2-Country.mmdb", {"1.2.3.0/24": "JP", "2a00::/16": "DE"})
    with only(db) as g:
        a = g.lookup("1.2.3.4")
        assert (a.country, a.network, a.asn) == ("JP", "1.2.3.0/24", None)
        assert a.country_source == f"mmdb:{db}"
        assert a.asn_source is None
        assert g.lookup("2a00:1::1").country == "DE"
        assert g.lookup("5.6.7.8").country is None
        assert g.sources()[-1].capability == "country"


def test_city_dispatch_uses_city(tmp_path, read_mode):
    db = city_db(tmp_path / "GeoLite2-City.mmdb", {"81.2.69.0/24": "GB"})
    with geoip2.database.Reader(str(db)) as r, pytest.raises(TypeError):
        r.country("81.2.69.1")  # why the dispatch matters
    with only(db) as g:
        assert g._dbs[0].method == "city"
        a = g.lookup("81.2.69.160")
        assert (a.country, a.network) == ("GB", "81.2.69.0/24")


def test_asn_dispatch(tmp_path, read_mode):
    db = asn_db(tmp_path / "GeoLite2-ASN.mmdb", {"1.0.0.0/24": (15169, "Google Inc.")})
    with only(db) as g:
        assert g._dbs[0].method == "asn"
        a = g.lookup("1.0.0.9")
        assert (a.asn, a.org, a.country) == (15169, "Google Inc.", None)
        assert a.asn_source == f"mmdb:{db}" and a.country_source is None


def test_isp_dispatch(tmp_path, read_mode):
    db = isp_db(tmp_path / "GeoIP2-ISP.mmdb", {"12.81.92.0/22": (7018, "AT&T Services", "AT&T")})
    with only(db) as g:
        assert g._dbs[0].method == "isp"
        a = g.lookup("12.81.92.1")
        assert (a.asn, a.org) == (7018, "AT&T Services")
        assert g.sources()[-1].capability == "asn"


def test_enterprise_dispatch(tmp_path, read_mode):
    db = enterprise_db(tmp_path / "e.mmdb", {"74.209.24.0/24": ("US", 14671, "FairPoint")})
    with only(db) as g:
        assert g._dbs[0].method == "enterprise"
        a = g.lookup("74.209.24.1")
        assert (a.country, a.asn, a.org) == ("US", 14671, "FairPoint")
        assert g.sources()[-1].capability == "country+asn"


def test_unknown_schema_read_raw(tmp_path, read_mode):
    db = flat_db(
        tmp_path / "flat.mmdb",
        {
            "9.9.9.0/24": {
                "country_code": "ch",
                "autonomous_system_number": 19281,
                "autonomous_system_organization": "Quad9",
            }
        },
    )
    with only(db) as g:
        assert g._dbs[0].method == "raw"
        a = g.lookup("9.9.9.9")
        assert (a.country, a.asn, a.org, a.network) == ("CH", 19281, "Quad9", "9.9.9.0/24")
        assert g.sources()[-1].capability == "country+asn"


def test_ipv4_only_database_and_ipv6_address(tmp_path, read_mode):
    db = country_db(tmp_path / "v4.mmdb", {"8.8.8.0/24": "US"}, ip_version=4)
    with only(db) as g:
        assert g.lookup("8.8.8.8").country == "US"
        assert g.lookup("2606:4700::1").country is None


def test_build_date_from_metadata(tmp_path):
    db = country_db(tmp_path / "c.mmdb", {"8.8.8.0/24": "US"}, build_epoch=1_700_000_000)
    with only(db) as g:
        (src,) = g.sources()[1:]  # [0] is the bundled overrides file
        assert src == GeoSource(
            name="c",
            path=str(db),
            database_type="GeoIP2-Country",
            capability="country",
            build_date="2023-11-14",
            origin="user",
        )


# --------------------------------------------------------------------------- precedence


def test_precedence_is_per_capability(tmp_path, embedded, read_mode):
    asn_only = asn_db(tmp_path / "GeoLite2-ASN.mmdb", {"8.8.8.0/24": (64500, "Test ASN")})
    with GeoResolver([asn_only], search_dirs=()) as g:
        a = g.lookup("8.8.8.8")
        assert (a.asn, a.org, a.asn_source) == (64500, "Test ASN", f"mmdb:{asn_only}")
        assert (a.country, a.country_source) == ("US", "embedded:geo-whois-asn-country")
        # user file has no record: the embedded data answers
        b = g.lookup("160.79.104.10")
        assert (b.asn, b.asn_source) == (399358, "embedded:ipldb-asn")


def test_user_country_beats_embedded_and_falls_through_on_miss(tmp_path, embedded, read_mode):
    user = country_db(tmp_path / "GeoIP2-Country.mmdb", {"8.8.8.0/24": "JP"})
    with GeoResolver([user], search_dirs=()) as g:
        a = g.lookup("8.8.8.8")
        assert (a.country, a.country_source) == ("JP", f"mmdb:{user}")
        assert a.asn == 15169  # ASN still from the embedded data
        b = g.lookup("114.114.114.114")
        assert (b.country, b.country_source) == ("CN", "embedded:geo-whois-asn-country")
        origins = [s.origin for s in g.sources()]
        assert origins == ["override", "user", "embedded", "embedded"]


def test_first_user_file_wins(tmp_path, read_mode):
    a = country_db(tmp_path / "a.mmdb", {"8.8.8.0/24": "AA"})
    b = city_db(tmp_path / "b.mmdb", {"8.8.0.0/16": "BB"})
    with only(a, b) as g:
        assert g.lookup("8.8.8.8").country == "AA"
        assert g.lookup("8.8.9.9").country == "BB"
    with only(b, a) as g:
        assert g.lookup("8.8.8.8").country == "BB"


def test_search_dirs(tmp_path, read_mode):
    d = tmp_path / "GeoIP"
    country_db(d / "GeoLite2-Country.mmdb", {"8.8.8.0/24": "LC"})
    city_db(d / "GeoIP2-City.mmdb", {"8.8.8.0/24": "PC"})
    (d / "junk.mmdb").write_bytes(b"not a database")
    with GeoResolver(search_dirs=[d], use_embedded=False) as g:
        assert g.lookup("8.8.8.8").country == "PC"  # GeoIP2 before GeoLite2
        assert [s.name for s in g.sources()[1:]] == ["GeoIP2-City", "GeoLite2-Country"]
        assert {s.origin for s in g.sources()[1:]} == {"user"}  # not a system dir


# --------------------------------------------------------------------------- overrides

OVERRIDES = """\
# corporate address plan
cidr,country,site,asn,org,note

10.0.0.0/8,DE,hq,,,corporate LAN
10.20.0.0/16,,singapore-office,,,country inherited from the /8
8.8.8.0/24,CH,,64501,Override Org,
# a bare address is a /32
160.79.104.10,,egress-1,,,
"""


def test_overrides_win_and_apply_to_private(tmp_path, embedded, read_mode):
    ov = write(tmp_path / "overrides.csv", OVERRIDES)
    user = country_db(tmp_path / "c.mmdb", {"8.8.8.0/24": "JP"})
    with GeoResolver([user], [ov], search_dirs=()) as g:
        lan = g.lookup("10.1.2.3")
        assert (lan.scope, lan.country, lan.site) == ("private", "DE", "hq")
        assert lan.country_source == f"override:{ov}:4"
        assert lan.network == "10.0.0.0/8"
        assert lan.asn is None and lan.asn_source is None

        sg = g.lookup("10.20.0.5")  # per field: site from the /16, country from the /8
        assert (sg.country, sg.site, sg.country_source) == (
            "DE",
            "singapore-office",
            f"override:{ov}:4",
        )

        dns = g.lookup("8.8.8.8")  # beats the user file and the embedded ASN
        assert (dns.country, dns.asn, dns.org) == ("CH", 64501, "Override Org")
        assert dns.country_source == dns.asn_source == f"override:{ov}:6"
        assert dns.network == "8.8.8.0/24"

        # only site set: country and ASN still come from the databases
        ant = g.lookup("160.79.104.10")
        assert ant.site == "egress-1"
        assert (ant.country, ant.asn) == ("US", 399358)
        assert ant.country_source == "embedded:geo-whois-asn-country"


def test_override_files_precedence(tmp_path, read_mode):
    first = write(tmp_path / "first.csv", "cidr,country\n10.0.0.0/8,FR\n")
    second = write(
        tmp_path / "second.csv", "cidr,country,site\n10.0.0.0/8,IT,rome\n10.9.0.0/16,ES,\n"
    )
    with only(overrides=[first, second]) as g:
        a = g.lookup("10.1.1.1")
        assert (a.country, a.site) == ("FR", "rome")  # equal prefix: first file; site filled in
        assert g.lookup("10.9.1.1").country == "ES"  # longest prefix beats file order
        names = [s.name for s in g.sources()]
        assert names == ["first.csv", "second.csv", "overrides.csv"]  # bundled file last
        assert all(s.origin == "override" for s in g.sources())


def test_override_org_only_keeps_database_asn(tmp_path, read_mode):
    ov = write(tmp_path / "o.csv", "cidr,org\n1.0.0.0/24,Renamed\n")
    db = asn_db(tmp_path / "GeoLite2-ASN.mmdb", {"1.0.0.0/24": (15169, "Google Inc.")})
    with only(db, overrides=[ov]) as g:
        a = g.lookup("1.0.0.1")
        assert (a.asn, a.org, a.asn_source) == (15169, "Renamed", f"mmdb:{db}")


def test_override_ipv6_and_mapped(tmp_path):
    ov = write(
        tmp_path / "o.csv", "cidr,country,site,asn,org,note\n2001:db8::/32,NL,lab,AS64496,,\n"
    )
    with only(overrides=[ov]) as g:
        a = g.lookup("2001:db8::1")
        assert (a.scope, a.country, a.site, a.asn) == ("reserved", "NL", "lab", 64496)
        assert a.asn_source == f"override:{ov}:2"
    mapped = write(tmp_path / "m.csv", "cidr,site\n::ffff:10.0.0.0/104,corp\n")
    with only(overrides=[mapped]) as g:
        assert g.lookup("10.1.2.3").site == "corp"
        assert g.lookup("::ffff:10.1.2.3").site == "corp"


def test_bundled_overrides_file_is_valid_and_empty():
    path = geodata_dir() / "overrides.csv"
    assert load_overrides(path) == []
    lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines == ["cidr,country,site,asn,org,note"]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("cidr,country\n10.0.0.0/33,DE\n", 2, "bad cidr"),
        ("cidr,country\n10.0.0.1/8,DE\n", 2, "host bits"),
        ("# c\n\ncidr,country\n10.0.0.0/8,Germany\n", 4, "alpha-2"),
        ("cidr,asn\n10.0.0.0/8,ASX\n", 2, "asn"),
        ("cidr,country\n10.0.0.0/8,DE,extra\n", 2, "expected 2 fields"),
        ("network,country\n", 1, "header"),
        ("cidr,country,city\n", 1, "header"),
        ("cidr,country\n10.0.0.0/8,DE\n\n10.0.0.0/8,FR\n", 4, "already given at"),
        ("cidr,country\n,DE\n", 2, "empty cidr"),
    ],
)
def test_override_errors_name_file_and_line(tmp_path, text, line, fragment):
    path = write(tmp_path / "bad.csv", text)
    with pytest.raises(GeoError) as exc:
        only(overrides=[path])
    assert f"{path}:{line}:" in str(exc.value)
    assert fragment in str(exc.value)


def test_missing_overrides_file(tmp_path):
    with pytest.raises(GeoError, match="cannot read overrides"):
        only(overrides=[tmp_path / "nope.csv"])


# --------------------------------------------------------------------------- database errors


def test_bad_database_paths(tmp_path):
    missing = tmp_path / "missing.mmdb"
    with pytest.raises(GeoError, match=str(missing)):
        only(missing)
    junk = write(tmp_path / "junk.mmdb", "not a database")
    with pytest.raises(GeoError, match="not a readable MaxMind DB") as exc:
        only(junk)
    assert str(junk) in str(exc.value)
    with pytest.raises(GeoError, match="not a readable"):
        only(tmp_path)  # a directory


def test_database_without_geo_data_is_refused(tmp_path):
    db = flat_db(tmp_path / "anon.mmdb", {"1.0.0.0/24": {"is_anonymous": True}}, database_type="X")
    with pytest.raises(GeoError, match="no country or ASN data"):
        only(db)


def test_closed_resolver(tmp_path):
    g = only()
    g.close()
    with pytest.raises(GeoError, match="closed"):
        g.lookup("8.8.8.8")


# --------------------------------------------------------------------------- memo


def test_lookups_are_memoised(tmp_path):
    db = country_db(tmp_path / "c.mmdb", {"8.8.8.0/24": "US"})
    with only(db) as g:
        first = g.lookup("8.8.8.8")
        assert g.lookup("8.8.8.8") is first
        info = g.cache_info()
        assert (info.hits, info.misses) == (1, 1)
        assert info.maxsize == geo.CACHE_SIZE
        assert isinstance(first, GeoAnswer)
        with pytest.raises(AttributeError):
            first.country = "XX"  # frozen


# --------------------------------------------------------------------------- from_env


def test_from_env_precedence(tmp_path, monkeypatch, read_mode):
    explicit = country_db(tmp_path / "explicit.mmdb", {"8.8.8.0/24": "EX"})
    env_file = country_db(tmp_path / "env.mmdb", {"8.8.0.0/16": "EN"})
    env_dir = tmp_path / "envdir"
    asn_db(env_dir / "GeoLite2-ASN.mmdb", {"8.0.0.0/8": (3356, "Level 3")})
    flat_db(
        env_dir / "GeoIP2-Anonymous-IP.mmdb",
        {"8.0.0.0/8": {"is_anonymous": True}},
        database_type="GeoIP2-Anonymous-IP",
    )  # skipped in a scanned dir
    conf_file = country_db(tmp_path / "conf.mmdb", {"8.0.0.0/8": "CF"})
    env_ov = write(tmp_path / "env.csv", "cidr,site\n8.8.8.8,env-site\n")
    conf_ov = write(tmp_path / "conf.csv", "cidr,site\n8.8.8.8,conf-site\n8.8.4.4,conf-only\n")

    monkeypatch.setenv("APIWATCH_GEOIP", os.pathsep.join([str(env_file), ""]))
    monkeypatch.setenv("APIWATCH_GEOIP_DIR", str(env_dir))
    monkeypatch.setenv("APIWATCH_GEO_OVERRIDES", str(env_ov))
    config = {"databases": [str(conf_file)], "overrides": [str(conf_ov)], "search_system": False}
    with GeoResolver.from_env([explicit], config=config) as g:
        assert g.lookup("8.8.8.8").country == "EX"
        assert g.lookup("8.8.9.9").country == "EN"
        assert g.lookup("8.9.9.9").country == "CF"
        assert g.lookup("8.9.9.9").asn == 3356
        assert g.lookup("8.8.8.8").site == "env-site"
        assert g.lookup("8.8.4.4").site == "conf-only"
        user = [s.name for s in g.sources() if s.origin == "user"]
        assert user == ["explicit", "env", "GeoLite2-ASN", "conf"]
        ovs = [s.name for s in g.sources() if s.origin == "override"]
        assert ovs == ["env.csv", "conf.csv", "overrides.csv"]


def test_from_env_missing_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("APIWATCH_GEOIP_DIR", str(tmp_path / "nope"))
    with pytest.raises(GeoError, match="APIWATCH_GEOIP_DIR"):
        GeoResolver.from_env(config={"search_system": False})
    monkeypatch.delenv("APIWATCH_GEOIP_DIR")
    monkeypatch.setenv("APIWATCH_GEOIP", str(tmp_path / "nope.mmdb"))
    with pytest.raises(GeoError, match="nope.mmdb"):
        GeoResolver.from_env(config={"search_system": False})


def test_from_env_defaults_include_system_dirs(monkeypatch):
    seen = {}

    def fake_init(self, databases=(), overrides=(), *, search_dirs=None, use_embedded=True):
        seen.update(databases=databases, overrides=overrides, search_dirs=search_dirs)

    monkeypatch.setattr(GeoResolver, "__init__", fake_init)
    GeoResolver.from_env()
    assert seen == {"databases": [], "overrides": [], "search_dirs": None}


# --------------------------------------------------------------------------- embedded data


def test_embedded_spot_checks(embedded):
    cases = {
        "8.8.8.8": ("US", 15169),
        "114.114.114.114": ("CN", None),
        "160.79.104.10": ("US", 399358),
        "172.64.0.1": (None, 13335),
        "2001:4860:4860::8888": ("US", 15169),
    }
    for ip, (cc, asn) in cases.items():
        a = embedded.lookup(ip)
        assert a.scope == "public"
        if cc:
            assert a.country == cc, ip
            assert a.country_source == "embedded:geo-whois-asn-country"
            assert ipaddress.ip_address(ip) in ipaddress.ip_network(a.network)
        if asn:
            assert a.asn == asn, ip
            assert a.asn_source == "embedded:ipldb-asn"
    assert embedded.lookup("160.79.104.10").org == "Anthropic, PBC"
    assert embedded.lookup("172.64.0.1").org == "Cloudflare, Inc."


def test_embedded_sources_have_build_dates(embedded):
    manifest = json.loads((geodata_dir() / "manifest.json").read_text())
    srcs = [s for s in embedded.sources() if s.origin == "embedded"]
    assert [s.capability for s in srcs] == ["country", "asn"]
    for s in srcs:
        entry = manifest["databases"][s.capability]
        assert s.build_date == entry["data_date"]
        assert len(s.build_date) == 10 and s.build_date.startswith("20")
        assert s.database_type == entry["database_type"]
        assert s.path.endswith(".mmdb.xz") and Path(s.path).is_file()
    assert "Country" in srcs[0].database_type
    assert "GeoLite2-ASN" in srcs[1].database_type


def test_embedded_files_shipped_with_licences():
    d = geodata_dir()
    manifest = json.loads((d / "manifest.json").read_text())
    total = 0
    for entry in manifest["databases"].values():
        xz = d / entry["file"]
        assert xz.stat().st_size == entry["xz_size"]
        total += entry["xz_size"]
    assert total < 8_000_000
    for name in (
        "LICENSE-CC-BY-4.0.txt",
        "LICENSE-NRO.txt",
        "LICENSE-DBIP.txt",
        "LICENSE-ROUTEVIEWS.txt",
        "README.md",
        "build.py",
    ):
        assert (d / name).is_file(), name
    text = geo.embedded_attribution()
    for needle in ("sapics/ip-location-db", "NRO", "RouteViews", "IP Geolocation by DB-IP"):
        assert needle in text


def test_embedded_cache_keyed_by_sha_and_atomic(tmp_path, monkeypatch):
    monkeypatch.setenv("APIWATCH_CACHE_DIR", str(tmp_path / "cache"))
    xz = tmp_path / "tiny.mmdb.xz"
    raw = country_db(tmp_path / "tiny.mmdb", {"8.8.8.0/24": "US"})
    xz.write_bytes(lzma.compress(raw.read_bytes()))
    first = geo._materialise(xz, "tiny")
    assert isinstance(first, Path) and first.parent == tmp_path / "cache" / "geodata"
    assert first.read_bytes() == raw.read_bytes()
    assert geo._materialise(xz, "tiny") == first  # reused
    # a refreshed xz gets a new key, and the old copy is dropped
    raw2 = country_db(tmp_path / "tiny2.mmdb", {"8.8.8.0/24": "CA"})
    xz.write_bytes(lzma.compress(raw2.read_bytes()))
    second = geo._materialise(xz, "tiny")
    assert second != first and not first.exists()
    assert [p.name for p in second.parent.iterdir()] == [second.name]  # no temp files left


def test_embedded_cache_falls_back_when_unwritable(tmp_path, monkeypatch):
    blocker = write(tmp_path / "a-file", "x")
    monkeypatch.setenv("APIWATCH_CACHE_DIR", str(blocker / "sub"))  # cannot be created
    monkeypatch.setattr(geo.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    xz = tmp_path / "tiny.mmdb.xz"
    raw = country_db(tmp_path / "tiny.mmdb", {"8.8.8.0/24": "US"})
    xz.write_bytes(lzma.compress(raw.read_bytes()))
    got = geo._materialise(xz, "tiny")
    assert isinstance(got, Path) and got.is_relative_to(tmp_path / "tmp")
    # neither usable: decompressed into memory, and geoip2 still opens it
    monkeypatch.setattr(geo.tempfile, "tempdir", str(blocker))
    mem = geo._materialise(xz, "tiny")
    assert not isinstance(mem, Path)
    db = geo._Database(None, "embedded", label="embedded:tiny", name="tiny", fileobj=mem)
    assert db.raw_get("8.8.8.8", int(ipaddress.ip_address("8.8.8.8")))[0] == "US"
    db.close()


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("APIWATCH_CACHE_DIR", str(tmp_path / "a"))
    assert geo.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("APIWATCH_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert geo.cache_dir() == tmp_path / "x" / "apiwatch"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert geo.cache_dir() == tmp_path / "h" / ".cache" / "apiwatch"


def test_raw_and_model_paths_agree_on_embedded(embedded, monkeypatch):
    import random

    rng = random.Random(5)
    ips = [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(3000)]
    ips += [f"2a0{rng.randrange(10)}:{rng.getrandbits(16):x}::1" for _ in range(500)]
    monkeypatch.setattr(GeoResolver, "_raw_reads", True)
    raw = [embedded._resolve(ip) for ip in ips]
    monkeypatch.setattr(GeoResolver, "_raw_reads", False)
    model = [embedded._resolve(ip) for ip in ips]
    assert raw == model
    assert sum(a.country is not None for a in raw) > 1000


# --------------------------------------------------------------------------- MaxMind conformance


def _conformance(name: str):
    db = MMDB_CONFORMANCE / "test-data" / f"{name}.mmdb"
    src = MMDB_CONFORMANCE / "source-data" / f"{name}.json"
    if not db.is_file() or not src.is_file():
        pytest.skip(f"MaxMind conformance data not present at {MMDB_CONFORMANCE}")
    nets = []
    for item in json.loads(src.read_text()):
        for cidr, record in item.items():
            n = ipaddress.ip_network(cidr, strict=False)
            if n.version == 6 and n.prefixlen >= 96 and int(n.network_address) >> 32 == 0:
                # "::a.b.c.d/n" is where an IPv6 tree keeps IPv4: look up the IPv4 address
                n = ipaddress.ip_network((int(n.network_address) & 0xFFFFFFFF, n.prefixlen - 96))
            nets.append((n, record))
    return db, nets


def _expected(nets, addr):
    """The JSON record for ``addr``: the most specific network holding it."""
    hits = [(n, r) for n, r in nets if n.version == addr.version and addr in n]
    return max(hits, key=lambda h: h[0].prefixlen)[1] if hits else None


@pytest.mark.parametrize(
    ("name", "field"),
    [
        ("GeoIP2-Country-Test", "country"),
        ("GeoLite2-Country-Test", "country"),
        ("GeoIP2-City-Test", "country"),
        ("GeoLite2-City-Test", "country"),
        ("GeoLite2-ASN-Test", "asn"),
        ("GeoIP2-ISP-Test", "asn"),
    ],
)
def test_maxmind_conformance(name, field, read_mode):
    db, nets = _conformance(name)
    checked = 0
    with only(db) as g:
        for n, _record in nets[:: max(1, len(nets) // 150)]:
            for addr in (n.network_address, n.broadcast_address):
                ans = g.lookup(str(addr))
                want = _expected(nets, addr)
                if ans.scope != "public":
                    assert ans.country is None and ans.asn is None
                    continue
                if field == "country":
                    assert ans.country == want.get("country", {}).get("iso_code"), addr
                    if ans.country:
                        assert addr in ipaddress.ip_network(ans.network)
                else:
                    assert ans.asn == want.get("autonomous_system_number"), addr
                    if ans.asn is not None:
                        org = want.get("autonomous_system_organization") or want.get("isp")
                        assert ans.org == (org or want.get("organization")), addr
                checked += 1
    assert checked >= 50


def test_maxmind_non_geo_database_refused():
    db = MMDB_CONFORMANCE / "test-data" / "GeoIP2-Anonymous-IP-Test.mmdb"
    if not db.is_file():
        pytest.skip(f"MaxMind conformance data not present at {MMDB_CONFORMANCE}")
    with pytest.raises(GeoError, match="no country or ASN data"):
        only(db)
    # but a scanned directory just skips it
    with GeoResolver(search_dirs=[db.parent], use_embedded=False) as g:
        names = {s.name for s in g.sources()}
        assert "GeoIP2-Anonymous-IP-Test" not in names
        assert "GeoIP2-Country-Test" in names
