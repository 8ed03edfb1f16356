"""``fronted-llm-traffic`` from Squid's ``%<a``: the origin address Squid logs beside the name
the client asked for (``HIER_DIRECT/160.79.104.10`` after ``CONNECT cdn.example.org:443``).

A real Squid on loopback forwards requests under a name outside the catalogue and ordinary
requests to the providers; its logs are scanned with an overlay catalogue that publishes the
origin's loopback address as a provider's ingress range, and again with the peer addresses
rewritten to Anthropic's published ones (addresses in a log are data). Fixture lines cover
what a loopback run cannot show (IPv6, parents, other hierarchy codes) with and without the
C pre-pass, and the example logs and the benchmark generator's log raise no network rule.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monitor import accel
from tests.conftest import generated_squid_log, run
from tests.squid_harness import CUSTOM_LOGFORMAT, LOG_FILES, SquidProxy, squid_proxy

ROOT = Path(__file__).resolve().parent.parent
NETWORK_RULES = {"endpoint-network-mismatch", "fronted-llm-traffic"}
FRONTING = "cdn.example.org"  # mapped to the origin by the harness, in no catalogue
ANTHROPIC_INGRESS = "160.79.104.10"  # api.anthropic.com, in the published 160.79.104.0/23
OPENAI_EDGE = "162.159.140.245"  # api.openai.com on Cloudflare (AS13335), no published range
#: an organisation's overlay publishing the harness origin as a gateway's ingress range
OVERLAY = """\
version: "2026-12-05"
providers:
- id: corp_gateway
  checked: "2026-12-05"
  name: Corporate LLM gateway
  kind: relay
  category: ai_gateway
  hq_country: null
  region_list: null
  hosts:
  - {{use: api, exact: [llm.corp.example], sources: ["https://wiki.corp.example/llm-gateway"]}}
  ingress_ranges:
  - {{cidrs: ["{origin}/32"], sources: ["https://wiki.corp.example/llm-gateway"]}}
"""


def incidents(db: Path, *options: str | Path) -> list[dict]:
    out = run(*options, "--db", db, "incidents", "--json", ok=(0, 3)).stdout
    return [json.loads(line) for line in out.splitlines()]


def scan(tmp_path: Path, log: Path, *options: str | Path) -> list[dict]:
    """Scan one log into a fresh database (egress declared US: no region rule); options
    before ``--db`` go to the group, from ``--format`` on to ``scan``."""
    db = tmp_path / f"{log.name}.db"
    k = next((i for i, o in enumerate(options) if o in ("--format", "--jobs")), len(options))
    group, own = options[:k], options[k:]
    run(*group, "--db", db, "scan", log, "--egress-country", "US", *own, ok=(0, 3))
    return incidents(db, *group)


def network_hits(incs: list[dict]) -> set[tuple[str, str, str]]:
    return {(i["rule"], i["dest_host"], i["client_ip"]) for i in incs if i["rule"] in NETWORK_RULES}


def evidence(hit: dict) -> dict[str, list]:
    keys = ("request.name_source", "dest.ip", "dest.address_source", "dest.range_provider")
    return {k: hit["facts"].get(k) for k in keys}


# --- a real Squid --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def squid_run(tmp_path_factory: pytest.TempPathFactory) -> SquidProxy:
    with squid_proxy(tmp_path_factory.mktemp("squid-fronted")) as proxy:
        proxy.curl(f"https://{FRONTING}:{{tls}}/v1/messages", method="POST", data=b"{}")
        proxy.curl(f"http://{FRONTING}:{{http}}/assets/app.js")
        proxy.curl("https://api.anthropic.com:{tls}/v1/messages", method="POST", data=b"{}")
        proxy.urllib("https://api.openai.com:{tls}/v1/models")
        proxy.curl(f"https://{FRONTING}:{{tls}}/v1/messages", method="POST", data=b"{}")
    assert set(proxy.logs) == set(LOG_FILES)
    return proxy


@pytest.mark.realtools
@pytest.mark.parametrize("variant", ["native", "custom"])
def test_real_squid_fronted_by_overlay_range(tmp_path, squid_run, variant):
    """The origin's address published by an overlay: the requests Squid forwarded to it
    under a name no catalogue lists raise the rule, read from ``%<a``; those under the
    providers' own names do not (they raise the other network rule: a hosts-file entry
    sent them to a loopback address)."""
    origin = squid_run.origin_ip
    (tmp_path / "corp-llm.yaml").write_text(OVERLAY.format(origin=origin))
    config = tmp_path / "apiwatch.toml"
    config.write_text('[catalog]\nextra = ["corp-llm.yaml"]\n')
    options: list[str | Path] = ["--config", config]
    if variant == "custom":
        options += ["--format", "squid-custom", "--squid-logformat", CUSTOM_LOGFORMAT]
    incs = scan(tmp_path, squid_run.logs[variant], *options)
    # the providers' names at a loopback address are the harness's hosts_file override
    assert network_hits(incs) == {
        ("fronted-llm-traffic", FRONTING, "127.0.0.1"),
        ("endpoint-network-mismatch", "api.anthropic.com", "127.0.0.1"),
        ("endpoint-network-mismatch", "api.openai.com", "127.0.0.1"),
    }
    (hit,) = [i for i in incs if i["rule"] == "fronted-llm-traffic"]
    assert hit["provider"] == "corp_gateway" and hit["count"] == 3
    facts = evidence(hit)
    assert facts == {
        "request.name_source": ["connect", "url"],
        "dest.ip": [origin],
        "dest.address_source": ["%<a"],
        "dest.range_provider": ["corp_gateway"],
    }


@pytest.mark.realtools
def test_real_squid_log_with_anthropic_addresses(tmp_path, squid_run):
    """The same log with each origin address as the Internet would show it: the fronting
    name at Anthropic's published ingress, the providers at their own addresses."""
    origin = squid_run.origin_ip
    by_host = {FRONTING: ANTHROPIC_INGRESS, "api.anthropic.com": ANTHROPIC_INGRESS,
               "api.openai.com": OPENAI_EDGE}  # fmt: skip
    lines = []
    for line in squid_run.logs["native"].read_text().splitlines():
        target = line.split()[6]
        (host,) = [h for h in by_host if h in target]
        assert f"HIER_DIRECT/{origin} " in line, line  # Squid went straight to the origin
        lines.append(line.replace(f"HIER_DIRECT/{origin} ", f"HIER_DIRECT/{by_host[host]} "))
    log = tmp_path / "access.log"
    log.write_text("\n".join(lines) + "\n")
    incs = scan(tmp_path, log)
    assert network_hits(incs) == {("fronted-llm-traffic", FRONTING, "127.0.0.1")}
    (hit,) = [i for i in incs if i["rule"] == "fronted-llm-traffic"]
    assert (hit["provider"], hit["count"]) == ("anthropic", 3)
    assert evidence(hit) == {
        "request.name_source": ["connect", "url"],
        "dest.ip": [ANTHROPIC_INGRESS],
        "dest.address_source": ["%<a"],
        "dest.range_provider": ["anthropic"],
    }


# --- fixture lines ---------------------------------------------------------------------------

T = 1795741200  # 2026-11-26 22:20:00 UTC
#: (client, method, target, hierarchy/peer): fronted ones first
FRONTED = [
    ("10.0.0.2", "CONNECT", f"{FRONTING}:443", f"HIER_DIRECT/{ANTHROPIC_INGRESS}"),
    ("10.0.0.3", "CONNECT", "static.example.net:443", "HIER_DIRECT/2607:6bc0::10"),
    ("10.0.0.4", "GET", "http://img.example.net/a.png", "HIER_DIRECT/[2607:6bc0::11]"),
    ("10.0.0.5", "CONNECT", "files.example.net:443", "TIMEOUT_HIER_DIRECT/160.79.105.1"),
    ("10.0.0.6", "CONNECT", "www.example.jp:443", "ORIGINAL_DST/153.61.224.7"),
]
ORDINARY = [
    # a parent proxy in the range is not the origin; addresses next to the ranges
    ("10.0.1.1", "CONNECT", "www.example.com:443", "FIRSTUP_PARENT/160.79.104.10"),
    ("10.0.1.2", "CONNECT", "www.example.com:443", "HIER_DIRECT/160.79.106.1"),
    ("10.0.1.3", "CONNECT", "www.example.com:443", "HIER_DIRECT/160.79.103.255"),
    ("10.0.1.4", "CONNECT", "www.example.com:443", "HIER_DIRECT/2607:6bc1::1"),
    ("10.0.1.5", "CONNECT", "www.example.com:443", "HIER_DIRECT/::ffff:160.79.104.10"),
    ("10.0.1.6", "CONNECT", "www.example.com:443", "HIER_DIRECT/160.079.104.10"),
    ("10.0.1.7", "GET", "http://www.example.com/", "HIER_NONE/-"),
    ("10.0.1.8", "CONNECT", "www.example.com:443", "HIER_DIRECT/www.example.com"),
    # the providers under their own names, at their own addresses
    ("10.0.2.1", "CONNECT", "api.anthropic.com:443", f"HIER_DIRECT/{ANTHROPIC_INGRESS}"),
    ("10.0.2.2", "CONNECT", "api.openai.com:443", f"HIER_DIRECT/{OPENAI_EDGE}"),
]


def fixture_log(path: Path, repeat: int = 3) -> Path:
    """Each request ``repeat`` times (after the first sighting of a target the C pre-pass
    decides the line itself)."""
    lines = [
        f"{T + n}.{k:03d}    120 {client} TCP_TUNNEL/200 5120 {method} {target} - {peer} -"
        for n in range(repeat)
        for k, (client, method, target, peer) in enumerate(FRONTED + ORDINARY)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("pure", [False, True], ids=["accelerated", "pure-python"])
def test_fixture_fronted_lines(tmp_path, monkeypatch, pure):
    if pure:
        monkeypatch.setenv(accel.PURE_ENV, "1")
    elif accel.load("monitor.collectors._squidscan") is None:
        pytest.skip("C accelerator not built")
    incs = scan(tmp_path, fixture_log(tmp_path / "access.log"), "--jobs", "1")
    hosts = {client: target.split("://")[-1].split(":")[0].split("/")[0]
             for client, _, target, _ in FRONTED}  # fmt: skip
    expected = {("fronted-llm-traffic", host, client) for client, host in hosts.items()}
    assert network_hits(incs) == expected
    for hit in incs:
        if hit["rule"] == "fronted-llm-traffic":
            assert hit["count"] == 3
            assert hit["facts"]["dest.address_source"] == ["%<a"]
    by_client = {i["client_ip"]: evidence(i) for i in incs if i["rule"] == "fronted-llm-traffic"}
    assert by_client["10.0.0.3"]["dest.ip"] == ["2607:6bc0::10"]
    assert by_client["10.0.0.4"]["request.name_source"] == ["url"]
    assert by_client["10.0.0.6"]["dest.range_provider"] == ["anthropic"]


def test_fixture_parse_keeps_only_fronted_and_provider_lines(tmp_path):
    """What the scan's filter keeps, accelerated or not: the fronted lines and the
    providers' own, nothing for the addresses beside the ranges."""
    from monitor.catalog import bundled_catalog
    from monitor.collectors.squid import SquidCollector
    from monitor.pipeline import Identifier
    from tests.conftest import parse

    keep = Identifier(bundled_catalog()).host_filter
    data = fixture_log(tmp_path / "access.log").read_bytes()
    obs, diag = parse(SquidCollector(), data, host_filter=keep)
    wanted = [c for c, *_ in FRONTED] + ["10.0.2.1", "10.0.2.2"]
    assert diag.records == 3 * (len(FRONTED) + len(ORDINARY)) and not diag.malformed
    assert [o.client_ip for o in obs] == wanted * 3


# --- no false positives ----------------------------------------------------------------------


def test_example_and_benchmark_logs_raise_no_network_rule(tmp_path):
    """Ordinary traffic: the example logs and the benchmark generator's log (public
    addresses drawn at random, 25 % LLM lines) raise neither network rule, and the scan keeps
    exactly the generator's LLM lines."""
    for log in sorted((ROOT / "examples" / "logs").glob("*-access.log*")):
        assert not network_hits(scan(tmp_path, log)), log.name
    out = tmp_path / "bench.log"
    truth = generated_squid_log(out, "--lines", "40000", "--llm-share", "0.25")
    db = tmp_path / "bench.db"
    summary = json.loads(
        run("--db", db, "scan", out, "--egress-country", "US", "--json", ok=(0, 3)).stdout
    )
    assert summary["llm_observations"] == truth["llm_lines"]
    assert not network_hits(incidents(db))
