"""Logs written by a real Squid, read back by the Squid collector and the CLI.

One Squid run per module (see :mod:`tests.squid_harness`): eight requests from curl and
urllib, over CONNECT and plain HTTP, one look-alike host and two denials, written by Squid
to four access logs (native ``squid``, ``common``, ``combined``, and a custom
``logformat``). What was sent is the ground truth every parsed record is checked against.
Skipped locally without squid/curl/openssl; fails instead when ``CI`` is set.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from monitor.collectors import detect
from monitor.collectors.base import Diagnostics, open_input
from tests.squid_harness import (
    CUSTOM_LOGFORMAT,
    LOG_FILES,
    SentRequest,
    SquidProxy,
    drive_standard_traffic,
    squid_proxy,
)

pytestmark = pytest.mark.realtools

LOOPBACK_CLIENT = "127.0.0.1"
#: Hosts whose traffic from CN breaks the provider's region policy (OpenAI, Anthropic, Gemini).
REGION_UNSUPPORTED_FROM_CN = {
    "api.openai.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
}


def _check_complete(proxy: SquidProxy) -> SquidProxy:
    """Squid has exited: every log is complete and copied out of its directory."""
    assert set(proxy.logs) == set(LOG_FILES), f"logs written: {proxy.logs}"
    for variant, path in proxy.logs.items():
        lines = path.read_text().splitlines()
        assert len(lines) == proxy.expected_lines, f"{variant} log:\n" + "\n".join(lines)
    return proxy


@pytest.fixture(scope="module")
def squid_run(tmp_path_factory: pytest.TempPathFactory) -> SquidProxy:
    with squid_proxy(tmp_path_factory.mktemp("real-squid")) as proxy:
        drive_standard_traffic(proxy)
    return _check_complete(proxy)


@pytest.fixture(scope="module")
def squid_probe_run(tmp_path_factory: pytest.TempPathFactory) -> SquidProxy:
    """A second, short run: a health-check style connection without a request, then one
    ordinary request."""
    with squid_proxy(tmp_path_factory.mktemp("real-squid-probe")) as proxy:
        proxy.bare_connection()
        proxy.wait_for_log_lines()  # the probe's line first, the request's second
        proxy.curl("https://api.openai.com:{tls}/v1/models", label="after-probe")
    return _check_complete(proxy)


def _logformat_line(proxy: SquidProxy) -> str:
    """The ``logformat`` directive exactly as Squid read it from its squid.conf."""
    conf = (proxy.logs["native"].parent / "squid.conf").read_text().splitlines()
    (line,) = [x for x in conf if x.startswith("logformat ")]
    return line


def _collector(variant: str, *, explicit: bool, proxy: SquidProxy | None = None):
    from monitor.collectors.squid import SquidCollector

    if variant == "custom":
        # "explicit": the whole squid.conf directive; "auto": the bare format string
        fmt = _logformat_line(proxy) if explicit and proxy else CUSTOM_LOGFORMAT
        return SquidCollector(logformat=fmt)
    return SquidCollector(variant=variant if explicit else "auto")


def _parse(path: Path, collector, host_filter=None) -> tuple[list, Diagnostics]:
    diag = Diagnostics()
    opened = open_input(str(path))
    try:
        observations = list(collector.parse(opened.stream, str(path), diag, host_filter))
    finally:
        opened.close()
    return observations, diag


def _key(method: str | None, host: str | None, port: int | None) -> tuple:
    return (method, host, port)


def _match(sent: list[SentRequest], observations: list) -> dict[str, object]:
    """Pair each sent request with the one observation of the same (method, host, port).

    Squid logs a tunnel when it closes, so lines are matched by request, not by order."""
    by_key: dict[tuple, list] = {}
    for obs in observations:
        by_key.setdefault(_key(obs.method, obs.dest_host, obs.dest_port), []).append(obs)
    expected = Counter(_key(s.method, s.host, s.port) for s in sent)
    got = Counter({k: len(v) for k, v in by_key.items()})
    assert got == expected, f"parsed {sorted(got.items())}\nsent {sorted(expected.items())}"
    return {s.label: by_key[_key(s.method, s.host, s.port)][0] for s in sent}


# --------------------------------------------------------------------------------------------
# the harness itself: what Squid did, independently of apiwatch


def test_squid_resolved_through_hosts_file_and_reached_local_origins(squid_run: SquidProxy):
    """No DNS server exists on 127.0.0.1: every allowed request reaching our origin (and
    Squid logging the origin's loopback address as the peer) proves the hosts_file answered."""
    allowed = [s for s in squid_run.sent if not s.denied]
    hits = Counter((h.method, h.host_header.split(":")[0]) for h in squid_run.origin_hits)
    assert hits == Counter((s.request_method, s.host) for s in allowed)
    native = squid_run.logs["native"].read_text().splitlines()
    for line in native:
        hier = line.split()[8]
        if "TCP_DENIED/403" in line:
            assert hier == "HIER_NONE/-", line
        else:
            assert hier == f"HIER_DIRECT/{squid_run.origin_ip}", line
    assert sum("TCP_DENIED/403" in line for line in native) == 2


# --------------------------------------------------------------------------------------------
# 1. the collector reads every log Squid wrote


@pytest.mark.parametrize("explicit", [False, True], ids=["auto", "explicit"])
@pytest.mark.parametrize("variant", list(LOG_FILES))
def test_collector_reads_real_squid_log(squid_run: SquidProxy, variant: str, explicit: bool):
    path = squid_run.logs[variant]
    collector = _collector(variant, explicit=explicit, proxy=squid_run)
    observations, diag = _parse(path, collector)

    assert diag.malformed == 0, [str(p) for p in diag.problems]
    assert diag.problems == [] and diag.file_errors == []
    assert len(observations) == len(squid_run.sent)
    assert sorted(o.line for o in observations) == list(range(1, len(squid_run.sent) + 1))

    matched = _match(squid_run.sent, observations)
    # %tl in common/combined has whole seconds only
    slack = 0.5 if variant in ("native", "custom") else 1.5
    for sent in squid_run.sent:
        obs = matched[sent.label]
        where = f"{variant} {sent.label}: {obs}"
        assert obs.source == str(path), where
        assert obs.method == sent.method, where
        assert obs.dest_host == sent.host, where
        assert obs.dest_port == sent.port, where
        assert obs.status == sent.status, where
        assert obs.client_ip == LOOPBACK_CLIENT, where
        assert obs.host_source == sent.host_source, where
        assert squid_run.started - slack <= obs.ts <= squid_run.stopped + slack, where
        if sent.host_source == "url":
            assert obs.url == sent.url, where
        if variant in ("native", "custom"):  # %Ss exactly as Squid wrote it
            tag = (
                "TCP_DENIED"
                if sent.denied
                else "TCP_TUNNEL"
                if sent.method == "CONNECT"
                else "TCP_MISS"
            )
            assert obs.result == tag, where
        elif obs.result is not None:  # %Ss:%Sh in common/combined
            assert obs.result.startswith("TCP_DENIED") == sent.denied, where
        if variant in ("native", "custom"):
            assert obs.bytes_in is not None and obs.bytes_in > 0, where
            assert obs.dest_ip == (None if sent.denied else squid_run.origin_ip), where
            assert obs.duration is not None and 0 <= obs.duration < 15, where
        if variant == "custom":
            # %>p and %>st: the client's source port and the bytes it sent
            assert obs.client_port == sent.client_port, where
            assert obs.bytes_out is not None and obs.bytes_out > sent.body_len, where
    if variant == "custom":
        ports = [o.client_port for o in observations]
        assert len(set(ports)) == len(ports), "one connection per request"


def test_detect_names_each_builtin_format(squid_run: SquidProxy):
    expected = {"native": "squid", "common": "squid-common", "combined": "squid-combined"}
    for variant, name in expected.items():
        opened = open_input(str(squid_run.logs[variant]))
        try:
            assert detect(opened) == name, variant
        finally:
            opened.close()


def test_all_formats_agree(squid_run: SquidProxy):
    """The same eight requests, whichever format Squid wrote them in."""
    seen = {}
    for variant, path in squid_run.logs.items():
        observations, _ = _parse(path, _collector(variant, explicit=False))
        seen[variant] = sorted(
            (o.method, o.dest_host, o.dest_port, o.status, o.client_ip, o.host_source)
            for o in observations
        )
    first = seen["native"]
    assert all(v == first for v in seen.values()), seen


def test_host_filter_keeps_every_accepted_record(squid_run: SquidProxy):
    """A host filter may drop rejected hosts early but must never lose an accepted one."""

    def wanted(host: str) -> bool:
        return host.endswith("openai.com")  # includes the look-alike notopenai.com

    observations, diag = _parse(
        squid_run.logs["native"], _collector("native", explicit=True), host_filter=wanted
    )
    assert diag.malformed == 0
    kept = sorted(o.dest_host for o in observations if o.dest_host and wanted(o.dest_host))
    assert kept == ["api.openai.com", "notopenai.com"]


@pytest.mark.parametrize(
    "variant",
    [
        "native",
        "common",
        "combined",
        "custom",
    ],
)
def test_connection_without_request_is_not_malformed(squid_probe_run: SquidProxy, variant: str):
    """Load-balancer health checks and port probes leave a well-formed Squid line with no
    destination (``NONE_NONE/000 ... error:transaction-end-before-headers``). It is not a
    malformed record, it raises nothing, and the request after it is read as usual."""
    path = squid_probe_run.logs[variant]
    observations, diag = _parse(path, _collector(variant, explicit=True, proxy=squid_probe_run))
    assert diag.malformed == 0, [str(p) for p in diag.problems]
    assert diag.file_errors == []
    with_dest = [o for o in observations if o.dest_host is not None]
    (sent,) = squid_probe_run.sent
    assert [(o.method, o.dest_host, o.dest_port, o.status, o.line) for o in with_dest] == [
        (sent.method, sent.host, sent.port, sent.status, 2)
    ]
    for obs in observations:
        if obs.dest_host is None:  # the probe, when yielded at all
            assert obs.line == 1 and obs.status in (0, None) and obs.host_source is None, obs
            assert obs.method in (None, "-"), obs
            if variant == "custom":
                assert obs.client_port == squid_probe_run.bare_connections[0], obs


# --------------------------------------------------------------------------------------------
# 2. end to end through the CLI


def _incidents(runner, main, db: Path) -> list[dict]:
    result = runner.invoke(main, ["--db", str(db), "incidents", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_cli_scan_raises_region_incidents_idempotently(squid_run: SquidProxy, tmp_path: Path):
    from click.testing import CliRunner

    from monitor import cli

    # no user config or database leaks in from the machine running the tests
    runner = CliRunner(env={"HOME": str(tmp_path), "APIWATCH_CONFIG": None, "APIWATCH_DB": None})
    db = tmp_path / "apiwatch.db"
    log = squid_run.logs["native"]
    scan = ["--db", str(db), "scan", str(log), "--egress-country", "CN"]

    first = runner.invoke(cli.main, scan, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    incidents = _incidents(runner, cli.main, db)
    assert incidents, "no incident from OpenAI/Anthropic/Gemini traffic leaving from CN"
    for inc in incidents:
        for key in ("id", "rule", "severity", "provider", "dest_host", "client_ip",
                    "egress_country", "count", "status"):  # fmt: skip
            assert key in inc, (key, inc)
        assert inc["egress_country"] == "CN", inc
        assert inc["client_ip"] == LOOPBACK_CLIENT, inc
    hosts_in_incidents = {inc["dest_host"] for inc in incidents}
    assert "notopenai.com" not in hosts_in_incidents, "look-alike host taken for OpenAI"

    region = {
        inc["dest_host"]: inc for inc in incidents if inc["rule"] == "provider-region-unsupported"
    }
    assert set(region) >= REGION_UNSUPPORTED_FROM_CN, sorted(region)
    # DeepSeek is headquartered in CN, and the provider's own country always counts as served
    assert "api.deepseek.com" not in region, region.get("api.deepseek.com")
    sent_per_host = Counter(s.host for s in squid_run.sent)
    for host in REGION_UNSUPPORTED_FROM_CN:
        inc = region[host]
        assert inc["severity"] == "high", inc
        assert inc["provider"], inc
        assert inc["count"] == sent_per_host[host], inc

    second = runner.invoke(cli.main, scan, catch_exceptions=False)
    assert second.exit_code == 0, second.output
    again = _incidents(runner, cli.main, db)
    by_id = {inc["id"]: inc for inc in incidents}
    again_by_id = {inc["id"]: inc for inc in again}
    assert set(again_by_id) == set(by_id), "a re-scan created or lost incidents"
    for inc_id, inc in by_id.items():
        assert again_by_id[inc_id]["count"] == inc["count"], (inc, again_by_id[inc_id])
        assert again_by_id[inc_id] == inc, "a re-scan changed an incident"


# --------------------------------------------------------------------------------------------
# the harness's own policy: skip locally, fail in CI


@pytest.mark.parametrize("ci", ["true", ""])
def test_missing_tools_skip_locally_and_fail_in_ci(monkeypatch: pytest.MonkeyPatch, ci: str):
    import tests.squid_harness as harness

    monkeypatch.setenv("CI", ci)
    monkeypatch.setattr(harness.shutil, "which", lambda _name: None)
    expected = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(expected, match="squid, curl, openssl"):
        harness.require_real_tools()
