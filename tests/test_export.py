"""``apiwatch export``: the selection agrees with ``scan``, and every format loads into the
real tool that consumes it (Squid, Suricata, pySigma, dnsmasq; the Zeek intel layout).

Tools are started on loopback by the tests and stopped by PID; locally a missing tool skips
with the reason, under ``CI`` it fails.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from scapy.layers.dns import DNS, DNSQR

from monitor.catalog import bundled_catalog
from monitor.cli import EXIT_FINDINGS, EXIT_USAGE, main
from monitor.export.suricata import sid_for
from monitor.export.zeek import FIELDS as ZEEK_FIELDS
from tests.pcaps import Tcp, client_hello, http_request, udp, write_scapy
from tests.receivers import start_dnsmasq
from tests.squid_harness import in_ci, squid_proxy
from tests.test_suricata import SURICATA_YAML as BASE_SURICATA_YAML

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "apiwatch.toml"  # shanghai: egress 114.114.114.114, geolocated CN

#: a selection with every pattern shape: exact, suffix, one-label middle and first-label tail
SHAPES = ["--provider", "openai,anthropic,azure_openai,google_vertex", "--kind", "api"]
#: names each shape must match, and look-alikes it must not
LISTED = [
    "api.openai.com",
    "API.Anthropic.COM",  # SNI and DNS names match without regard to case
    "x1.openai.azure.com",
    "a.b.openai.azure.com",
    "aws-external-anthropic.us-east-1.api.aws",
    "us-central1-aiplatform.googleapis.com",
]
UNLISTED = [
    "notopenai.com",
    "x.api.openai.com",
    "openai.azure.com",
    "aws-external-anthropic.a.b.api.aws",
    "us-central1-notaiplatform.googleapis.com",
    "api.deepseek.com",
]


def run(*args: str, code: int = 0, config: Path = CONFIG) -> str:
    res = CliRunner().invoke(main, ["--config", str(config), *args])
    assert res.exit_code == code, (res.output, res.stderr if res.stderr_bytes else "")
    return res.stdout


def export_json(*args: str, config: Path = CONFIG) -> dict:
    return json.loads(run("export", "json", *args, config=config))


def need(tool: str, hint: str) -> str:
    found = shutil.which(tool) or next(
        (p for p in (f"/usr/sbin/{tool}", f"/usr/bin/{tool}") if Path(p).exists()), None
    )
    if found is None:
        if in_ci():
            pytest.fail(f"{tool} is required in CI ({hint})", pytrace=False)
        pytest.skip(f"{tool} not installed ({hint})")
    return found


# ---------------------------------------------------------------------------- the selection


def test_cn_site_exports_exactly_the_hosts_of_providers_whose_region_rule_fires():
    catalog = bundled_catalog()
    # the oracle, written out independently: a published list without CN, HQ not CN
    expected = {
        host
        for row in catalog.entries()
        if (allowed := catalog.allowed_countries(row.id)) is not None
        and "CN" not in allowed
        and row.hq_country != "CN"
        for host in (*row.hosts, *row.consumer_hosts)
    }
    cn_hosts = {
        host
        for row in catalog.entries()
        if row.hq_country == "CN"
        for host in (*row.hosts, *row.consumer_hosts)
    }
    doc = export_json("--site", "shanghai")
    assert doc["egress_country"] == "CN" and doc["egress_source"].startswith("embedded:")
    assert {e["host"] for e in doc["entries"]} == expected
    assert all(e["rules"] == ["provider-region-unsupported"] for e in doc["entries"])
    assert {"openai", "anthropic", "google_gemini"} <= {e["provider"] for e in doc["entries"]}

    squid = run("export", "squid", "--site", "shanghai")
    values = {line.split()[-1] for line in squid.splitlines() if line.startswith("acl ")}
    wildcards = {h for h in expected if "*" in h and not h.startswith("*.")}
    plain = {v for v in values if not v.startswith("^")}
    assert plain == {h[1:] if h.startswith("*.") else h for h in expected - wildcards}
    regexes = [re.compile(v) for v in values if v.startswith("^")]
    assert len(regexes) == len(wildcards)
    assert all(any(r.match(_instance(h)) for r in regexes) for h in wildcards)
    assert not plain & cn_hosts and cn_hosts  # none of the CN providers
    assert "http_access deny apiwatch_llm" in squid


def _instance(pattern: str) -> str:
    """A concrete host a pattern matches: its '*' replaced by a label of ours."""
    return pattern.replace("*", "x1")


def _scan_every_host(tmp_path: Path, config: Path, client: str) -> list[dict]:
    """Traffic from ``client`` to every catalogue host (patterns instantiated), scanned;
    returns the incidents."""
    hosts = [h for row in bundled_catalog().entries() for h in (*row.hosts, *row.consumer_hosts)]
    log = tmp_path / "access.log"
    log.write_text(
        "".join(
            f"{1764300000 + i}.000    120 {client} TCP_TUNNEL/200 5000 CONNECT "
            f"{_instance(h)}:443 - HIER_DIRECT/192.0.2.1 -\n"
            for i, h in enumerate(hosts)
        )
    )
    db = str(tmp_path / "a.db")
    run("--db", db, "scan", str(log), config=config)
    lines = run("--db", db, "incidents", "--json", config=config).splitlines()
    return [json.loads(line) for line in lines]


def _flagged(incidents: list[dict], rules: set[str] | None = None) -> set[str]:
    """The catalogue entries behind the high incidents (or those of ``rules``)."""
    catalog = bundled_catalog()
    return {
        catalog.match_host(i["dest_host"]).pattern
        for i in incidents
        if (i["rule"] in rules if rules else i["severity"] in ("high", "critical"))
    }


def test_export_and_scan_never_disagree(tmp_path):
    """Traffic to every catalogue host from shanghai, scanned: the hosts with a high incident
    are exactly the exported ones."""
    incidents = _scan_every_host(tmp_path, CONFIG, "10.20.0.5")
    exported = {e["host"] for e in export_json("--site", "shanghai")["entries"]}
    assert _flagged(incidents) == exported and exported
    # the same holds rule by rule for a lower-severity rule asked for by name
    relay_export = export_json("--site", "shanghai", "--rule", "relay-service")["entries"]
    assert _flagged(incidents, {"relay-service"}) == {e["host"] for e in relay_export}


EU_CONFIG = """
[organisation]
data_residency = ["EU"]
[sites.frankfurt]
client_cidrs = ["10.40.0.0/16"]
egress_ips = ["185.60.216.1"]
country = "DE"
[entities.acme_de]
controlled_from = "CN"
sites = ["frankfurt"]
"""


def test_residency_and_entity_rules_flow_into_the_export(tmp_path):
    """Rules added after export was written select hosts too, as the scan raises them: an EU
    residency requirement and an entity controlled from CN, at a DE egress."""
    config = tmp_path / "eu.toml"
    config.write_text(EU_CONFIG)
    incidents = _scan_every_host(tmp_path, config, "10.40.0.5")
    doc = export_json("--site", "frankfurt", config=config)
    exported = {e["host"] for e in doc["entries"]}
    assert _flagged(incidents) == exported
    fired = {r for e in doc["entries"] for r in e["rules"]}
    assert {"data-residency", "provider-entity-restricted"} <= fired
    assert {"us.api.openai.com", "api.anthropic.com"} <= exported
    assert "api.openai.com" not in exported  # served in DE, and no region pinned


def test_filters_and_country():
    every = {h for row in bundled_catalog().entries() for h in (*row.hosts, *row.consumer_hosts)}
    assert {e["host"] for e in export_json("--kind", "api,consumer,relay")["entries"]} == every
    de = export_json("--country", "DE")
    assert de["entries"] == [] and de["egress_country"] == "DE"  # DE is served by all three
    ru = export_json("--country", "RU", "--provider", "openai", "--kind", "consumer")
    assert {e["host"] for e in ru["entries"]} == {"chatgpt.com", "chat.openai.com"}
    relays = export_json("--kind", "relay")["entries"]
    assert relays and {e["kind"] for e in relays} == {"relay"} and relays[0]["rules"] == []
    low = export_json("--country", "CN", "--severity", "info")["entries"]
    assert {r for e in low for r in e["rules"]} >= {"provider-region-unsupported", "relay-service"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["squid", "--site", "paris"], "unknown site 'paris'"),
        (["squid", "--site", "shanghai", "--country", "CN"], "not both"),
        (["squid"], "nothing selected"),
        (["squid", "--provider", "nosuch"], "unknown provider nosuch"),
        (["squid", "--kind", "chat"], "unknown kind chat"),
        (["squid", "--rule", "no-such-rule"], "not in force"),
        (["squid", "--country", "XX"], "not an ISO 3166-1"),
        (["nosuch", "--country", "CN"], "Invalid value"),
        ([], "FORMAT is required"),
    ],
)
def test_bad_selections_are_usage_errors(args, message):
    res = CliRunner().invoke(main, ["--config", str(CONFIG), "export", *args])
    assert res.exit_code == EXIT_USAGE and message in res.output
    assert "Traceback" not in res.output


def test_every_format_writes_a_header_and_the_hosts(tmp_path):
    from monitor.export import FORMATS

    for name in FORMATS:
        out = tmp_path / f"x.{name}"
        run("export", name, "--country", "CN", "-o", str(out))
        text = out.read_text()
        assert "api.openai.com" in text and bundled_catalog().version in text, name
        assert "deepseek" not in text, name


# ---------------------------------------------------------------------------- --diff


def test_diff_shows_changes_and_reruns_the_old_selection(tmp_path):
    old = tmp_path / "apiwatch.conf"
    run("export", "squid", "--site", "shanghai", "--provider", "openai,anthropic", "-o", str(old))
    same = run("export", "--diff", str(old)).strip()
    n = sum(1 for line in old.read_text().splitlines() if line and not line.startswith("#"))
    assert same == f"0 added, 0 removed, {n} unchanged"
    # one line gone, one foreign line added: both show, with the provider they sit under
    text = old.read_text().replace("acl apiwatch_llm dstdomain claude.ai\n", "")
    old.write_text(text + "acl apiwatch_llm dstdomain gone.example\n")
    out = run("export", "--diff", str(old), code=EXIT_FINDINGS)
    assert "+acl apiwatch_llm dstdomain claude.ai    # Anthropic (anthropic) consumer" in out
    assert "-acl apiwatch_llm dstdomain gone.example" in out
    assert out.strip().endswith(f"1 added, 1 removed, {n - 1} unchanged")
    # an explicit selection, and -o writes the new export for the ticket's next step
    new = tmp_path / "new.conf"
    out = run("export", "squid", "--site", "shanghai", "--diff", str(old), "-o", str(new),
              code=EXIT_FINDINGS)  # fmt: skip
    assert "+acl apiwatch_llm dstdomain generativelanguage.googleapis.com" in out
    assert run("export", "--diff", str(new)).strip().startswith("0 added, 0 removed")


def test_diff_of_json_and_rpz_ignores_dates_and_serials(tmp_path):
    for fmt in ("json", "rpz", "suricata"):
        old = tmp_path / f"old.{fmt}"
        run("export", fmt, "--country", "CN", "-o", str(old))
        text = re.sub(r"20\d\d-\d\d-\d\dT\d\d:\d\d:\d\dZ", "2020-01-01T00:00:00Z", old.read_text())
        old.write_text(re.sub(r"SOA (\S+ \S+) \d+", r"SOA \1 2020010100", text))
        assert "0 removed" in run("export", "--diff", str(old)), fmt


def test_diff_of_a_foreign_file_is_an_error(tmp_path):
    bad = tmp_path / "squid.conf"
    bad.write_text("acl x dstdomain .example.com\n")
    res = CliRunner().invoke(main, ["--config", str(CONFIG), "export", "--diff", str(bad)])
    assert res.exit_code == 1 and "not an apiwatch export" in res.output
    good = tmp_path / "a.rules"
    run("export", "suricata", "--country", "CN", "-o", str(good))
    res = CliRunner().invoke(
        main, ["--config", str(CONFIG), "export", "squid", "--country", "CN", "--diff", str(good)]
    )
    assert res.exit_code == EXIT_USAGE and "is not a squid export" in res.output


# ---------------------------------------------------------------------------- Squid


def test_squid_parses_the_acls_and_denies_exactly_the_listed_hosts(tmp_path):
    squid = need("squid", "apt-get install squid")
    acl = run("export", "squid", *SHAPES)
    conf = tmp_path / "squid.conf"
    (tmp_path / "apiwatch.conf").write_text(acl)
    conf.write_text(
        f"http_port 127.0.0.1:3128\ninclude {tmp_path / 'apiwatch.conf'}\nhttp_access deny all\n"
    )
    proc = subprocess.run(
        [squid, "-k", "parse", "-f", str(conf)], capture_output=True, text=True, timeout=60
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert "WARNING" not in log and "ERROR" not in log, log

    # a real Squid on loopback: CONNECT to a listed host refused, to an unlisted one tunnelled
    cn = run("export", "squid", "--site", "shanghai")
    with squid_proxy(tmp_path / "run", include=cn, denied=frozenset({"api.openai.com"})) as p:
        listed = p.curl("https://api.openai.com:{tls}/v1/models", label="listed")
        unlisted = p.curl("https://api.deepseek.com:{tls}/v1/models", label="unlisted")
    assert listed.status == 403 and listed.denied and listed.origin_status is None
    assert unlisted.status == 200 and unlisted.origin_status == 200
    assert [h.host_header.split(":")[0] for h in p.origin_hits] == ["api.deepseek.com"]
    native = p.logs["native"].read_text()
    assert "TCP_DENIED/403" in native and "CONNECT api.openai.com:" in native


# ---------------------------------------------------------------------------- Suricata

#: test_suricata's configuration, with alerts in eve.json
SURICATA_YAML = BASE_SURICATA_YAML.replace("      types:\n", "      types:\n        - alert\n")


def _capture(path: Path) -> dict[tuple[str, int], str]:
    """TLS ClientHellos, DNS queries and HTTP requests for every name; returns which name
    each (protocol, client port) flow carries."""
    packets, flows = [], {}
    ts = 1_700_000_000.0
    for n, name in enumerate(LISTED + UNLISTED):
        tls_port, http_port, dns_port = 20000 + n, 30000 + n, 40000 + n
        tcp = Tcp("10.20.0.5", "192.0.2.10", tls_port, 443, ts=ts).handshake()
        packets += tcp.send(True, client_hello(name)).close().packets
        tcp = Tcp("10.20.0.5", "192.0.2.11", http_port, 80, ts=ts + 0.1).handshake()
        packets += tcp.send(True, http_request("GET", "/v1/models", name)).close().packets
        query = bytes(DNS(id=n + 1, rd=1, qd=DNSQR(qname=name, qtype="A")))
        packets.append(udp("10.20.0.5", "192.0.2.53", dns_port, 53, query, ts + 0.2))
        flows |= {("tls", tls_port): name, ("http", http_port): name, ("dns", dns_port): name}
        ts += 1
    write_scapy(path, packets)
    return flows


def test_suricata_loads_the_rules_and_alerts_on_exactly_the_listed_names(tmp_path):
    exe = need("suricata", "benchmarks/install_peers.sh installs Suricata 7")
    rules = tmp_path / "apiwatch.rules"
    rules.write_text(run("export", "suricata", *SHAPES))
    conf = tmp_path / "suricata.yaml"
    conf.write_text(SURICATA_YAML)
    base = [exe, "-c", str(conf), "-S", str(rules), "-k", "none", "--runmode", "single"]
    test = subprocess.run([*base, "-T", "-l", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert test.returncode == 0, test.stderr[-3000:]
    assert "W:" not in test.stderr and "E:" not in test.stderr, test.stderr[-3000:]

    pcap = tmp_path / "cap.pcap"
    flows = _capture(pcap)
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([*base, "-r", str(pcap), "-l", str(out)], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    alerts = [json.loads(line) for line in (out / "eve.json").read_text().splitlines()]
    alerts = [a for a in alerts if a.get("event_type") == "alert"]
    seen = {(a["app_proto"] if a.get("app_proto") in ("tls", "http") else "dns", a["src_port"])
            for a in alerts}  # fmt: skip
    alerted = {(proto, flows[proto, port]) for proto, port in seen}
    assert alerted == {(proto, name) for proto in ("tls", "http", "dns") for name in LISTED}
    # one alert per flow, and its sid is the one derived from the buffer and the host
    assert len(alerts) == len(alerted)
    sids = {a["alert"]["signature_id"] for a in alerts}
    assert sid_for("tls.sni", "api.openai.com") in sids
    assert all(a["alert"]["signature"].startswith("apiwatch selected: ") for a in alerts)


def test_suricata_sids_are_stable_and_unique():
    a = run("export", "suricata", "--country", "CN")
    b = run("export", "suricata", "--kind", "api,consumer,relay")
    sids_a = dict(re.findall(r'msg:"([^"]+)".*?sid:(\d+);', a))
    sids_b = dict(re.findall(r'msg:"([^"]+)".*?sid:(\d+);', b))
    for msg, sid in sids_a.items():
        host_what = msg.split(") ", 1)[1]
        assert sid in {s for m, s in sids_b.items() if m.endswith(host_what)}
    assert len(set(sids_b.values())) == len(sids_b) > 300


# ---------------------------------------------------------------------------- Sigma


def test_pysigma_parses_and_converts_every_rule():
    from sigma.backends.elasticsearch import LuceneBackend
    from sigma.collection import SigmaCollection

    text = run("export", "sigma", "--site", "shanghai", "--severity", "low")
    rules = SigmaCollection.from_yaml(text)
    assert len(rules) >= 8 and all(not r.errors for r in rules)
    assert {str(r.logsource.category) for r in rules} == {"proxy", "dns"}
    levels = {r.title.split(":")[0]: r.level.name.lower() for r in rules}
    assert levels["OpenAI proxy requests"] == "high"
    queries = LuceneBackend().convert(rules)
    assert len(queries) == len(rules)
    assert any(re.search(r"cs-host:\(api\.openai\.com OR", q) for q in queries)
    assert any(re.search(r"query:\(api\.openai\.com OR", q) for q in queries)
    # stable ids: the same provider and rule get the same id in another export
    again = SigmaCollection.from_yaml(run("export", "sigma", "--country", "CN"))
    assert {str(r.id) for r in again} <= {str(r.id) for r in rules}


# ---------------------------------------------------------------------------- DNS


def _query(port: int, name: str, timeout: float = 5) -> int:
    """The rcode a resolver answers for an A query (loopback, UDP)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(bytes(DNS(id=7, rd=1, qd=DNSQR(qname=name, qtype="A"))), ("127.0.0.1", port))
        return DNS(s.recv(4096)).rcode


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answering(port: int) -> bool:
    try:
        _query(port, "api.openai.com", 1)
    except OSError:
        return False
    return True


def _wait_answering(proc: subprocess.Popen, port: int) -> None:
    """Until the resolver answers on ``port`` (it exits or 10 s pass: fail)."""
    deadline = time.monotonic() + 10
    while not _answering(port):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
        time.sleep(0.1)


def test_dnsmasq_answers_listed_names_with_nxdomain(tmp_path):
    exe = need("dnsmasq", "apt-get install dnsmasq")
    text = run("export", "dnsmasq", *SHAPES)
    assert "not expressible" in text and "aws-external-anthropic.*.api.aws" in text
    workdir = Path(tempfile.mkdtemp(prefix="apiwatch-dnsmasq-"))
    try:
        (workdir / "apiwatch.conf").write_text(text)
        proc, port = start_dnsmasq(
            exe,
            ["--no-poll", "--user=root" if Path("/proc/self").owner() == "root" else "--user=",
             f"--pid-file={workdir / 'dnsmasq.pid'}", f"--conf-file={workdir / 'apiwatch.conf'}"],
            _answering,
        )  # fmt: skip
        try:
            nxdomain, refused = 3, 5  # no upstream: anything not listed is refused
            expressible = [n for n in LISTED if "aws-external" not in n and "aiplatform" not in n]
            for name in expressible:
                assert _query(port, name) == nxdomain, name
            for name in UNLISTED:
                if name != "x.api.openai.com":  # address=/name/ also covers its subdomains
                    assert _query(port, name) == refused, name
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_rpz_zone_structure():
    text = run("export", "rpz", *SHAPES)
    records = [line for line in text.splitlines() if line and not line.startswith((";", "$"))]
    assert records[0].startswith("@ IN SOA ") and records[1] == "@ IN NS localhost."
    triggers = {line.split()[0] for line in records[2:]}
    assert all(line.endswith(" CNAME .") for line in records[2:])
    assert {"api.openai.com", "*.openai.azure.com"} <= triggers
    assert not any("*" in t[1:] for t in triggers)  # wildcards only as the whole first label
    assert "; not expressible" in text and "*-aiplatform.googleapis.com" in text


# ---------------------------------------------------------------------------- Zeek, hosts


def test_zeek_intel_file_has_the_documented_layout():
    """Zeek's Intelligence Framework reads a tab-separated file whose ``#fields`` header names
    ``indicator``, ``indicator_type`` and ``meta.*`` fields of ``Intel::MetaData``; ``-`` is
    an unset field (https://docs.zeek.org/en/lts/frameworks/intel.html, "Loading
    Intelligence"; https://docs.zeek.org/en/current/scripts/base/frameworks/intel/main.zeek.html)."""
    text = run("export", "zeek-intel", *SHAPES)
    lines = text.splitlines()
    header = [i for i, line in enumerate(lines) if line.startswith("#fields\t")]
    assert len(header) == 1
    assert all(line.startswith("#") for line in lines[: header[0]])  # comments before it
    fields = lines[header[0]].split("\t")[1:]
    assert fields == list(ZEEK_FIELDS)
    assert fields[:2] == ["indicator", "indicator_type"]
    assert all(f.startswith("meta.") and f[5:] in ("source", "desc", "url") for f in fields[2:])
    rows = [line.split("\t") for line in lines[header[0] + 1 :]]
    assert rows and all(len(r) == len(fields) and all(r) for r in rows)
    assert {r[1] for r in rows} == {"Intel::DOMAIN"}
    assert all(re.fullmatch(r"[a-z0-9_.-]+", r[0]) for r in rows)  # whole names only
    assert {"api.openai.com", "api.anthropic.com"} <= {r[0] for r in rows}
    assert all(r[4].startswith("https://") for r in rows)
    assert "# not expressible (Intel::DOMAIN matches whole names only): *.openai.azure.com" in text


def test_hosts_file_lists_whole_names_and_comments_patterns():
    text = run("export", "hosts", *SHAPES)
    entries = [line for line in text.splitlines() if not line.startswith("#")]
    assert "0.0.0.0 api.openai.com" in entries and all(
        line.startswith("0.0.0.0 ") and "*" not in line for line in entries
    )
    assert "# pattern (a hosts file matches whole names only): *.openai.azure.com" in text


UNBOUND_CONF = """server:
    interface: 127.0.0.1
    port: {port}
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{workdir}"
    pidfile: "{workdir}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 1
    do-ip6: no
    access-control: 127.0.0.0/8 allow
    module-config: "respip iterator"
    auto-trust-anchor-file: ""
    do-not-query-localhost: no
forward-zone:
    name: "."
    forward-addr: 127.0.0.1@{dead_port}
rpz:
    name: "apiwatch.rpz"
    zonefile: "{workdir}/apiwatch.rpz"
"""


def test_unbound_loads_the_rpz_and_answers_listed_names_with_nxdomain():
    """A real resolver (Unbound) on loopback, with the zone as its response policy; anything
    not listed is forwarded to a closed loopback port, so no query leaves the machine."""
    exe = need("unbound", "apt-get install unbound")
    checkconf = need("unbound-checkconf", "apt-get install unbound")
    workdir = Path(tempfile.mkdtemp(prefix="apiwatch-unbound-"))
    try:
        (workdir / "apiwatch.rpz").write_text(run("export", "rpz", *SHAPES))
        port, dead_port = _free_udp_port(), _free_udp_port()
        conf = workdir / "unbound.conf"
        conf.write_text(UNBOUND_CONF.format(port=port, dead_port=dead_port, workdir=workdir))
        check = subprocess.run([checkconf, str(conf)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        proc = subprocess.Popen(
            [exe, "-d", "-c", str(conf)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        try:
            _wait_answering(proc, port)
            nxdomain = 3
            for name in LISTED:
                if "aws-external" not in name and "aiplatform" not in name:
                    assert _query(port, name) == nxdomain, name
            for name in UNLISTED:  # exact RPZ triggers do not cover the names below them
                with contextlib.suppress(TimeoutError):  # the dead forwarder: no answer
                    assert _query(port, name, 1) != nxdomain, name
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
