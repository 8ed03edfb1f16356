"""Relays and evasion in logs: the User-Agent of Zscaler, W3C ELFF and mapped logs, and
``fronted-llm-traffic`` from the destination address a log records (Zscaler server IP,
ELFF ``s-supplier-ip``, Zeek ``id.resp_h``, Suricata ``dest_ip``, a mapped ``dest_ip``).

Each log holds, in its product's real line format: a request to a host outside the
catalogue sent by an LLM SDK (its User-Agent), a request under an unrelated name to an
address in Anthropic's published range (fronted), ordinary browsing, and ordinary traffic
to the providers; the tests check each rule fires with its evidence and nothing else does.
"""

from __future__ import annotations

import json

import pytest

from monitor.catalog import bundled_catalog
from monitor.collectors.zscaler import DEFAULT_FIELDS, ZscalerCollector
from monitor.pipeline import Identifier
from tests.conftest import parse, run

#: (client, host, URL or path, server address, User-Agent)
SDK = ("10.0.0.1", "llm.example.net", "/chat", "45.77.0.10", "OpenAI/Python 1.54.0")
FRONTED = ("10.0.0.2", "cdn.example.org", "/v1/x", "160.79.104.10", "Mozilla/5.0 (X11)")
BROWSING = ("10.0.0.3", "www.example.com", "/index.html", "93.184.216.34", "Mozilla/5.0 (X11)")
ORDINARY = ("10.0.0.4", "api.anthropic.com", "/v1/messages", "160.79.104.10", "curl/8.5.0")
REQUESTS = (SDK, FRONTED, BROWSING, ORDINARY)
T = 1795741200  # 2026-11-26 22:20:00 UTC


def _zscaler_csv(i, client, host, path, server, agent) -> str:
    values = dict.fromkeys(DEFAULT_FIELDS, "None")
    values.update(
        time=f"Thu Nov 26 22:20:{i:02d} 2026", login=f"u{i}@corp.example", proto="HTTPS",
        eurl=host + path, action="Allowed", reqsize="900", respsize="1200", stime="10",
        ctime="40", cip=client, sip=server, reqmethod="POST", respcode="200", ua=agent,
    )  # fmt: skip
    return ",".join(f'"{values[f]}"' for f in DEFAULT_FIELDS)


def _zscaler_json(i, client, host, path, server, agent) -> str:
    event = {
        "datetime": f"2026-11-26 22:20:{i:02d}", "action": "Allowed", "serverip": server,
        "requestmethod": "POST", "useragent": agent, "ClientIP": client, "status": "200",
        "user": f"u{i}@corp.example", "url": host + path, "hostname": host, "protocol": "HTTPS",
    }  # fmt: skip
    return json.dumps({"sourcetype": "zscalernss-web", "event": event})


def _zscaler_leef(i, client, host, path, server, agent) -> str:
    pairs = [
        "cat=Allowed", f"devTime=Nov 26 2026 22:20:{i:02d} GMT",
        "devTimeFormat=MMM dd yyyy HH:mm:ss z", f"src={client}", f"dst={server}",
        f"usrName=u{i}@corp.example", f"url={host}{path}", f"useragent={agent}",
        f"hostname={host}", "appproto=HTTPS", "reqmethod=POST", "respcode=200",
    ]  # fmt: skip
    return f"<134>Nov 26 22:20:{i:02d} nss01 zscaler-nss: LEEF:1.0|Zscaler|NSS|4.1|Allowed|" + (
        "\t".join(pairs)
    )


def _zscaler_cef(i, client, host, path, server, agent) -> str:
    return (
        f"Nov 26 22:20:{i:02d} nss01 zscaler-nss: CEF:0|Zscaler|NSSWeblog|5.0|Allowed|Allowed|3|"
        f"act=Allowed app=HTTPS dhost={host} dst={server} src={client} in=1200 outcome=200 "
        f"out=900 request={host}{path} rt=Nov 26 2026 22:20:{i:02d} "
        f"requestClientApplication={agent} requestMethod=POST suser=u{i}@corp.example"
    )


ZSCALER = {
    "zscaler-csv": _zscaler_csv,
    "zscaler-json": _zscaler_json,
    "zscaler-leef": _zscaler_leef,
    "zscaler-cef": _zscaler_cef,
}

#: Blue Coat ProxySG bcreportermain_v1 with the upstream columns (as in the SGOS docs)
BLUECOAT_FIELDS = (
    "#Fields: date time time-taken c-ip sc-status s-action sc-bytes cs-bytes cs-method "
    "cs-uri-scheme cs-host cs-uri-port cs-uri-path cs-uri-query cs-username cs-auth-group "
    "s-hierarchy s-supplier-name s-supplier-ip rs(Content-Type) cs(Referer) cs(User-Agent) "
    "sc-filter-result cs-categories x-virus-id s-ip"
)


def _bluecoat(i, client, host, path, server, agent) -> str:
    return (
        f"2026-11-26 22:20:{i:02d} 230 {client} 200 TCP_NC_MISS 6120 1883 POST https {host} 443 "
        f'{path} - u{i} - DIRECT {host} {server} application/json - "{agent}" PROXIED '
        '"Technology/Internet" - 10.20.0.2'
    )


def _log(kind: str) -> str:
    if kind in ZSCALER:
        return "\n".join(ZSCALER[kind](i, *r) for i, r in enumerate(REQUESTS)) + "\n"
    head = "#Software: SGOS 7.3.14.1\n#Version: 1.0\n#Date: 2026-11-26 22:20:00\n"
    return (
        head + BLUECOAT_FIELDS + "\n" + "\n".join(_bluecoat(i, *r) for i, r in enumerate(REQUESTS))
    )


def _scan(tmp_path, name: str, text: str, *options) -> list[dict]:
    log = tmp_path / name
    log.write_text(text)
    db = tmp_path / "apiwatch.db"
    run("--db", db, "scan", log, "--egress-country", "US", *options, ok=(0, 3))
    out = run("--db", db, "incidents", "--json", ok=(0, 3)).stdout
    return [json.loads(line) for line in out.splitlines()]


def _relay_evidence(incs: list[dict]) -> dict:
    """What the relay rules raised: the SDK request's and the fronted request's evidence, and
    every (rule, client) pair but the ordinary provider traffic's ``unapproved-provider``."""
    by_rule = {(i["rule"], i["client_ip"]): i for i in incs}
    sdk = by_rule.get(("llm-api-unknown-host", SDK[0]), {})
    fronted = by_rule.get(("fronted-llm-traffic", FRONTED[0]), {})
    sdk_facts, fronted_facts = sdk.get("facts", {}), fronted.get("facts", {})
    return {
        "sdk": (
            sdk.get("dest_host"),
            sdk.get("provider"),
            sdk_facts.get("client.software"),
            sdk_facts.get("client.user_agent"),
        ),
        "fronted": (
            fronted.get("dest_host"),
            fronted.get("provider"),
            *(
                fronted_facts.get(k)
                for k in ("dest.ip", "dest.range_provider", "dest.address_source")
            ),
        ),
        "rules": set(by_rule) - {("unapproved-provider", ORDINARY[0])},
    }


def _expected(address_source: str) -> dict:
    """:func:`_relay_evidence` when the SDK is named by its User-Agent and the fronted
    request by its address, read from ``address_source``; browsing raises nothing."""
    return {
        "sdk": (SDK[1], "unknown", ["openai_python"], [SDK[4]]),
        "fronted": (FRONTED[1], "anthropic", [FRONTED[3]], ["anthropic"], [address_source]),
        "rules": {("llm-api-unknown-host", SDK[0]), ("fronted-llm-traffic", FRONTED[0])},
    }


@pytest.mark.parametrize("kind", sorted(ZSCALER))
def test_zscaler_user_agent_and_server_ip(tmp_path, kind):
    named = {"zscaler-csv": "sip", "zscaler-json": "sip / serverip"}
    incs = _scan(tmp_path, f"{kind}.log", _log(kind))
    assert _relay_evidence(incs) == _expected(named.get(kind, "dst / sip / serverip"))


def test_zscaler_user_agent_is_read_in_every_feed_type():
    for kind, line in ZSCALER.items():
        (o,), diag = parse(ZscalerCollector(), line(0, *SDK).encode())
        assert not diag.malformed, kind
        assert o.user_agent == SDK[4] and o.dest_ip == SDK[3], kind
    cef = _zscaler_cef(0, *SDK[:4], "OpenAI/Python 1.54.0 (Linux; x86_64)").encode()
    assert parse(ZscalerCollector(), cef)[0][0].user_agent == "OpenAI/Python 1.54.0 (Linux; x86_64)"


@pytest.mark.parametrize("kind", sorted(ZSCALER))
def test_zscaler_filter_keeps_sdk_and_fronted_records_however_read(kind):
    """The filter of a scan keeps the SDK's and the fronted request (after the first
    record, JSON and key=value records are read from their bytes first)."""
    keep = Identifier(bundled_catalog()).host_filter
    data = ("\n".join(ZSCALER[kind](i, *r) for i, r in enumerate(REQUESTS * 3)) + "\n").encode()
    obs, diag = parse(ZscalerCollector(), data, host_filter=keep)
    assert diag.records == 12 and not diag.malformed
    assert [o.client_ip for o in obs] == [SDK[0], FRONTED[0], ORDINARY[0]] * 3
    everything, _ = parse(ZscalerCollector(), data)
    assert obs == [o for o in everything if o.client_ip != BROWSING[0]]


def test_bluecoat_user_agent_and_supplier_ip(tmp_path):
    incs = _scan(tmp_path, "proxysg.log", _log("bluecoat"))
    assert _relay_evidence(incs) == _expected("s-ip / s-supplier-ip")


def test_iis_user_agent_spaces_are_plus_signs(tmp_path):
    log = tmp_path / "u_ex261126.log"
    log.write_text(
        "#Software: Microsoft Internet Information Services 10.0\n#Version: 1.0\n"
        "#Fields: date time s-ip cs-method cs-uri-stem cs-uri-query s-port cs-username c-ip "
        "cs(User-Agent) cs-host sc-status sc-substatus sc-win32-status time-taken\n"
        "2026-11-26 22:20:00 45.77.0.10 POST /chat - 443 - 10.0.0.1 "
        "Mozilla/5.0+LangChain+langchain/0.3.1 llm.example.net 200 0 0 15\n"
    )
    out = run("parse", log, "--json").stdout
    (o,) = [json.loads(line) for line in out.splitlines()]
    assert o["user_agent"] == "Mozilla/5.0 LangChain langchain/0.3.1"


def test_mapped_user_agent_and_dest_ip(tmp_path):
    rows = ["time,src,dhost,path,server,agent"] + [
        f"{T + i},{c},{h},https://{h}{p},{s},{a}" for i, (c, h, p, s, a) in enumerate(REQUESTS)
    ]
    columns = "ts=time,client=src,host=dhost,url=path,dest_ip=server,user_agent=agent"
    incs = _scan(tmp_path, "gw.csv", "\n".join(rows) + "\n", "--columns", columns)
    assert _relay_evidence(incs) == _expected("dest_ip column")


def _zeek_ssl(tmp_path) -> str:
    fields = ["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "version",
              "server_name", "established"]  # fmt: skip
    rows = [
        [f"{T + i}.0", f"C{i}", c, str(40000 + i), s, "443", "TLSv13", h, "T"]
        for i, (c, h, _p, s, _a) in enumerate(REQUESTS)
    ]
    head = ["#separator \\x09", "#path\tssl", "#fields\t" + "\t".join(fields)]
    return "\n".join(head + ["\t".join(r) for r in rows]) + "\n"


def test_zeek_ssl_log_fronted_by_resp_h(tmp_path):
    incs = _scan(tmp_path, "ssl.log", _zeek_ssl(tmp_path))
    hits = [
        (i["rule"], i["client_ip"], i["facts"]) for i in incs if i["rule"] != "unapproved-provider"
    ]
    assert [(r, c) for r, c, _ in hits] == [("fronted-llm-traffic", FRONTED[0])]
    assert hits[0][2]["dest.address_source"] == ["id.resp_h"]
    assert hits[0][2]["request.name_source"] == ["sni"]


def test_suricata_eve_fronted_by_dest_ip(tmp_path):
    events = []
    for i, (c, h, _p, s, _a) in enumerate(REQUESTS):
        events.append(
            {"timestamp": f"2026-11-26T22:20:{i:02d}.000000+0000", "flow_id": 1000 + i,
             "event_type": "tls", "src_ip": c, "src_port": 40000 + i, "dest_ip": s,
             "dest_port": 443, "proto": "TCP", "tls": {"sni": h, "version": "TLS 1.3"}}
        )  # fmt: skip
    text = "\n".join(json.dumps(e) for e in events) + "\n"
    incs = _scan(tmp_path, "eve.json", text)
    hits = [
        (i["rule"], i["client_ip"], i["facts"]) for i in incs if i["rule"] != "unapproved-provider"
    ]
    assert [(r, c) for r, c, _ in hits] == [("fronted-llm-traffic", FRONTED[0])]
    assert hits[0][2]["dest.address_source"] == ["dest_ip"]


def test_zeek_and_suricata_ja4_fields_are_read(tmp_path):
    """Zeek's JA4 package adds ``ja4`` to ssl.log, Suricata logs ``tls.ja4``; a value that is
    no JA4 is dropped."""
    ja4 = "t13d1812h1_85036bcba153_d41ae481755e"
    fields = ["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "server_name", "ja4"]
    head = ["#separator \\x09", "#path\tssl", "#fields\t" + "\t".join(fields)]
    rows = [
        [f"{T}.0", "C1", "10.0.0.1", "40001", "162.159.140.245", "443", "api.openai.com", ja4],
        [f"{T}.5", "C2", "10.0.0.2", "40002", "162.159.140.245", "443", "api.openai.com", "x<y"],
    ]
    (tmp_path / "ssl.log").write_text("\n".join(head + ["\t".join(r) for r in rows]) + "\n")
    events = [
        {"timestamp": "2026-11-26T22:20:00.000000+0000", "flow_id": 7, "event_type": "tls",
         "src_ip": "10.0.0.3", "src_port": 40003, "dest_ip": "162.159.140.245",
         "dest_port": 443, "proto": "TCP", "tls": {"sni": "api.openai.com", "ja4": ja4}},
    ]  # fmt: skip
    (tmp_path / "eve.json").write_text("\n".join(json.dumps(e) for e in events) + "\n")
    got = {}
    for name in ("ssl.log", "eve.json"):
        out = run("parse", tmp_path / name, "--json").stdout
        got.update({o["client_ip"]: o["ja4"] for o in map(json.loads, out.splitlines())})
    assert got == {"10.0.0.1": ja4, "10.0.0.2": None, "10.0.0.3": ja4}
