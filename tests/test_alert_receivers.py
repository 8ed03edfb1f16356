"""Alert sinks against real receivers on loopback: rsyslogd (CEF and LEEF over UDP, TCP and
TLS with a test CA) and an HTTP server for the webhook and Splunk HEC. Each test checks the
received fields against the stored finding."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from datetime import date, timedelta

import pytest

from tests.alerting import (
    OTHER_PROVIDERS,
    cli,
    cli_process_async,
    findings,
    jsonl,
    squid_line,
    write_config,
)
from tests.receivers import HttpReceiver, Rsyslog

SECRET = "s3cr3t-token-value-0123"


def cef_fields(msg: str) -> tuple[list[str], dict[str, str]]:
    """Header fields and extension of a CEF message (escapes undone)."""
    parts = re.split(r"(?<!\\)\|", msg.strip(), maxsplit=7)
    ext = {}
    for m in re.finditer(r"(\w+)=((?:[^=\\]|\\.)*?)(?= \w+=|$)", parts[7]):
        ext[m.group(1)] = re.sub(r"\\(.)", r"\1", m.group(2))
    return parts[:7], ext


def leef_fields(msg: str) -> tuple[list[str], dict[str, str]]:
    parts = msg.strip().split("|", 6)
    return parts[:6], dict(kv.split("=", 1) for kv in parts[6].split("^"))


@pytest.fixture
def log(tmp_path):
    path = tmp_path / "access.log"
    path.write_text(
        "".join(squid_line(i) for i in range(3))
        + squid_line(3, host="openrouter.ai")
        + squid_line(4, host="api.anthropic.com", client="10.0.0.2")
    )
    return path


@pytest.fixture
def rsyslog(tmp_path):
    receiver = Rsyslog(tmp_path / "rsyslog").start()
    yield receiver
    receiver.stop()


def test_syslog_cef_over_udp_tcp_and_tls(tmp_path, log, rsyslog):
    sinks = [
        f'name = "{t}"\nkind = "syslog"\naddress = "{rsyslog.address(t)}"\nformat = "cef"\n'
        f'min_severity = "info"\nca_file = "{rsyslog.ca["ca"]}"'
        for t in ("udp", "tcp", "tls")
    ]
    config = write_config(tmp_path / "c.toml", *sinks)
    db = tmp_path / "db.sqlite"
    cli(config, db, "scan", log, "--egress-country", "CN")
    found = findings(config, db)
    assert len(found) == 3
    for transport in ("udp", "tcp", "tls"):
        lines = rsyslog.wait_for(transport, 3)
        assert len(lines) == 3, transport
        seen = set()
        for facility, severity, app, msgid, msg in lines:
            header, ext = cef_fields(msg)
            inc = found[ext["cs5"]]
            seen.add(inc["id"])
            assert (facility, app, msgid) == ("13", "apiwatch", "NEW")
            assert severity == {"high": "3", "medium": "4"}[inc["severity"]]
            assert header[0] == "CEF:0" and header[1:3] == ["apiwatch", "apiwatch"]
            assert header[4] == inc["rule"] and header[5] == inc["title"]
            assert header[6] == {"high": "8", "medium": "5"}[inc["severity"]]
            assert ext["cs1Label"] == "rule" and ext["cs1"] == inc["rule"]
            assert ext["cs2"] == inc["provider"] and ext["cs4"] == "CN"
            assert ext["cnt"] == str(inc["count"]) and ext["src"] == inc["client_ip"]
            assert ext["dhost"] == inc["dest_host"] and ext["act"] == "new"
            assert ext["cs6"] == f"{inc['id']}:{ext['externalId']}"
        assert seen == set(found), transport


def test_syslog_leef_and_a_tls_peer_we_do_not_trust(tmp_path, log, rsyslog):
    config = write_config(
        tmp_path / "c.toml",
        f'name = "qradar"\nkind = "syslog"\naddress = "{rsyslog.address("tcp")}"\nformat = "leef"',
        # no ca_file: the test CA is not trusted, so the TLS handshake must fail
        f'name = "untrusted"\nkind = "syslog"\naddress = "{rsyslog.address("tls")}"\nformat = "cef"',
    )
    db = tmp_path / "db.sqlite"
    result = cli(config, db, "scan", log, "--egress-country", "CN")
    assert "sink untrusted failed" in result.stderr and "CERTIFICATE_VERIFY_FAILED" in result.stderr
    found = findings(config, db)
    lines = rsyslog.wait_for("tcp", 3)
    for _f, _s, _app, _msgid, msg in lines:
        header, attrs = leef_fields(msg)
        assert header[:3] == ["LEEF:2.0", "apiwatch", "apiwatch"] and header[5] == "^"
        inc = found[attrs["findingId"]]
        assert attrs["rule"] == inc["rule"] == header[4]
        assert attrs["provider"] == inc["provider"] and attrs["egressCountry"] == "CN"
        assert attrs["count"] == str(inc["count"]) and attrs["firstSeen"] == inc["first_seen"]
        assert attrs["idempotencyKey"] == f"{inc['id']}:{attrs['eventId']}"
    assert rsyslog.lines("tls") == []
    status = {
        r["name"]: r
        for r in map(json.loads, cli(config, db, "alerts", "--json").stdout.splitlines())
    }
    assert status["untrusted"]["pending"] == 3 and status["qradar"]["pending"] == 0


def test_webhook_with_token_down_then_up_exactly_once(tmp_path, log, monkeypatch):
    monkeypatch.setenv("APIWATCH_TEST_TOKEN", SECRET)
    hook = HttpReceiver(tmp_path).start()
    try:
        config = write_config(
            tmp_path / "c.toml",
            f'name = "oncall"\nkind = "webhook"\nurl = "{hook.url}/hooks/T000/{SECRET}"\n'
            'token_env = "APIWATCH_TEST_TOKEN"\nheaders = { X-Team = "soc" }\nmin_severity = "info"',
        )
        db = tmp_path / "db.sqlite"
        out = cli(config, db, "scan", log, "--egress-country", "CN")
        found = findings(config, db)
        got = hook.wait_for(3)
        assert len(got) == 3
        for req in got:
            event = req["body"]["event"]
            inc = found[event["finding_id"]]
            assert req["path"] == f"/hooks/T000/{SECRET}"
            assert req["headers"]["Authorization"] == f"Bearer {SECRET}"
            assert req["headers"]["X-Team"] == "soc"
            assert req["headers"]["Idempotency-Key"] == event["idempotency_key"]
            assert event["idempotency_key"] == f"{inc['id']}:{event['event_id']}"
            for k in ("rule", "severity", "provider", "site", "egress_country", "first_seen",
                      "last_seen", "count"):  # fmt: skip
                assert event[k] == inc[k], k
            assert event["event_type"] == "new"
            assert req["body"]["text"].startswith("[apiwatch] new ")
        # the receiver goes down: new findings (four more providers) wait in the outbox
        hook.stop()
        with log.open("a") as f:
            f.writelines(squid_line(10 + i, host=h) for i, h in enumerate(OTHER_PROVIDERS[:4]))
        down = cli(config, db, "scan", log, "--egress-country", "CN")
        assert "sink oncall failed" in down.stderr and "Connection refused" in down.stderr
        shown = cli(config, db, "alerts")
        assert "pending 4" in shown.stdout
        assert cli(config, db, "alerts", "deliver", ok=(1,)).exit_code == 1
        for text in (out.stdout, out.stderr, down.stdout, down.stderr, shown.stdout):
            assert SECRET not in text  # neither the token nor the URL path is ever printed
        # back up: every waiting event arrives, exactly once
        hook.start()
        cli(config, db, "alerts", "deliver")
        cli(config, db, "alerts", "deliver")
        keys = [r["body"]["event"]["idempotency_key"] for r in hook.requests()]
        assert len(keys) == len(set(keys)) == 7
        assert {k.split(":")[0] for k in keys} == set(findings(config, db))
    finally:
        hook.stop()


def test_splunk_hec(tmp_path, log):
    token = tmp_path / "hec.token"
    token.write_text(SECRET + "\n")
    hec = HttpReceiver(tmp_path).start()
    refusing = HttpReceiver(tmp_path, status=503).start()
    try:
        config = write_config(
            tmp_path / "c.toml",
            f'name = "splunk"\nkind = "splunk_hec"\nurl = "{hec.url}/services/collector/event"\n'
            'token_file = "hec.token"\nmin_severity = "high"',
            f'name = "busy"\nkind = "splunk_hec"\nurl = "{refusing.url}/services/collector/event"\n'
            'token_file = "hec.token"',
        )
        db = tmp_path / "db.sqlite"
        result = cli(config, db, "scan", log, "--egress-country", "CN")
        assert "sink busy failed" in result.stderr and "HTTP 503" in result.stderr
        assert SECRET not in result.stderr + result.stdout
        high = {i["id"]: i for i in findings(config, db).values() if i["severity"] == "high"}
        got = hec.wait_for(len(high))
        assert len(got) == len(high) == 2
        for req in got:
            assert req["path"] == "/services/collector/event"
            assert req["headers"]["Authorization"] == f"Splunk {SECRET}"
            body = req["body"]
            assert body["sourcetype"] == "apiwatch:finding" and body["source"] == "apiwatch"
            assert isinstance(body["time"], float)
            event = body["event"]
            inc = high[event["finding_id"]]
            assert (event["rule"], event["severity"], event["count"]) == (
                inc["rule"], "high", inc["count"])  # fmt: skip
            assert req["headers"]["X-Idempotency-Key"] == event["idempotency_key"]
        assert len(refusing.requests()) == 1  # tried once, then waits for the next run
    finally:
        hec.stop()
        refusing.stop()


def test_alerts_test_reaches_each_sink(tmp_path, rsyslog):
    hook = HttpReceiver(tmp_path).start()
    try:
        config = write_config(
            tmp_path / "c.toml",
            f'name = "siem"\nkind = "syslog"\naddress = "{rsyslog.address("tls")}"\nformat = "cef"\n'
            f'ca_file = "{rsyslog.ca["ca"]}"',
            f'name = "chat"\nkind = "webhook"\nurl = "{hook.url}/x"',
        )
        db = tmp_path / "db.sqlite"
        out = cli(config, db, "alerts", "test").stdout
        assert "siem: sent to tls://127.0.0.1" in out and "chat: sent to http://127.0.0.1" in out
        (_f, _s, _a, msgid, msg) = rsyslog.wait_for("tls", 1)[0]
        assert msgid == "TEST" and cef_fields(msg)[1]["act"] == "test"
        assert hook.wait_for(1)[0]["body"]["event"]["event_type"] == "test"
        cli(config, db, "alerts", "test", "--sink", "chat")
        assert len(hook.wait_for(2)) == 2 and len(rsyslog.lines("tls")) == 1
    finally:
        hook.stop()


def test_two_processes_delivering_at_once_send_each_event_once(tmp_path, log):
    """watch and a cron daily (here: two `alerts deliver`) share the outbox: a lease per
    sink keeps them from sending the same event twice."""
    slow = HttpReceiver(tmp_path, delay=0.2)
    with log.open("a") as f:
        f.writelines(squid_line(10 + i, host=h) for i, h in enumerate(OTHER_PROVIDERS))
    config = write_config(
        tmp_path / "c.toml",
        f'name = "oncall"\nkind = "webhook"\nurl = "{slow.url}/h"\nmin_severity = "info"',
    )
    db = tmp_path / "db.sqlite"
    cli(config, db, "scan", log, "--egress-country", "CN")  # the receiver is not up yet
    slow.start()
    try:
        both = [cli_process_async(config, db, "alerts", "deliver") for _ in range(2)]
        codes = [p.wait(120) for p in both]
    finally:
        slow.stop()
    assert codes.count(0) >= 1
    keys = [r["headers"]["Idempotency-Key"] for r in slow.requests()]
    assert len(keys) == len(set(keys)) == len(findings(config, db)) == 11


def test_one_alert_per_finding_and_reopened_after_resolve(tmp_path):
    """50 clients of one site calling one provider are one finding: one `new` alert, with
    the finding's id and figures. Resolving it and new traffic: a `reopened` alert."""
    log = tmp_path / "access.log"
    log.write_text("".join(squid_line(i, client=f"10.9.0.{i + 1}") for i in range(50)))
    hook = HttpReceiver(tmp_path).start()
    try:
        config = write_config(
            tmp_path / "c.toml",
            f'name = "oncall"\nkind = "webhook"\nurl = "{hook.url}/h"',
            extra='[sites.shanghai]\nclient_cidrs = ["10.9.0.0/16"]\ncountry = "CN"\n',
        )
        db = tmp_path / "db.sqlite"
        cli(config, db, "scan", log)
        (finding,) = findings(config, db).values()
        assert (finding["site"], finding["provider"], finding["clients"]) == (
            "shanghai",
            "openai",
            50,
        )
        (req,) = hook.wait_for(1)
        event = req["body"]["event"]
        assert event["event_type"] == "new" and event["finding_id"] == finding["id"]
        assert event["finding_id"].startswith("F-")
        for k in ("rule", "severity", "provider", "site", "egress_country", "first_seen",
                  "last_seen", "count"):  # fmt: skip
            assert event[k] == finding[k], k
        assert event["count"] == 50
        cli(config, db, "resolve", finding["id"], "--note", "blocked at the proxy")
        with log.open("a") as f:
            f.writelines(squid_line(100 + i, client="10.9.0.7") for i in range(2))
        cli(config, db, "scan", log)
        got = hook.wait_for(3)
        time.sleep(0.5)  # anything more would be a duplicate
        got = hook.requests()
    finally:
        hook.stop()
    events = [r["body"]["event"] for r in got]
    assert [e["event_type"] for e in events] == ["new", "resolved", "reopened"]
    assert {e["finding_id"] for e in events} == {finding["id"]}
    reopened = events[-1]
    assert (reopened["status"], reopened["count"], reopened["new_count"]) == ("reopened", 52, 2)
    assert reopened["last_seen"] == findings(config, db)[finding["id"]]["last_seen"]
    assert len({e["idempotency_key"] for e in events}) == 3


def test_exceptions_granted_and_expired_reach_every_sink(tmp_path, rsyslog):
    """An exception (``ack --until``, a config ``[[exceptions]]`` entry) raises `excepted`,
    its end `exception-expired`, at every kind of sink, with who, why and until; the expiry
    is noticed by ``alerts deliver`` without any new traffic."""
    token = tmp_path / "hec.token"
    token.write_text(SECRET)
    hook, hec = HttpReceiver(tmp_path).start(), HttpReceiver(tmp_path).start()
    site = '[sites.sh]\nclient_cidrs = ["10.0.0.0/16"]\ncountry = "CN"\n'
    sinks = (
        f'name = "cef"\nkind = "syslog"\naddress = "{rsyslog.address("udp")}"\nformat = "cef"',
        f'name = "leef"\nkind = "syslog"\naddress = "{rsyslog.address("tcp")}"\nformat = "leef"',
        f'name = "hook"\nkind = "webhook"\nurl = "{hook.url}/h"',
        f'name = "hec"\nkind = "splunk_hec"\nurl = "{hec.url}/services/collector/event"\n'
        'token_file = "hec.token"',
        'name = "ocsf"\nkind = "jsonl"\npath = "ocsf.jsonl"\nformat = "ocsf"',
        'name = "ecs"\nkind = "jsonl"\npath = "ecs.jsonl"\nformat = "ecs"',
    )
    tomorrow = (date.today() + timedelta(days=1)).isoformat()
    yesterday = (date.today() - timedelta(days=1)).isoformat()
    register = ('\n[[exceptions]]\nprovider = "anthropic"\nuntil = {}\nreason = "SEC-3: legal '
                'approved the pilot"\napprover = "legal"\n')  # fmt: skip
    config = write_config(tmp_path / "c.toml", *sinks, extra=site)
    db = tmp_path / "db.sqlite"
    log = tmp_path / "access.log"
    log.write_text(squid_line(0) + squid_line(1, host="api.anthropic.com", client="10.0.0.2"))
    try:
        cli(config, db, "scan", log)
        by = {f["provider"]: f for f in findings(config, db).values()}
        openai, anthropic = by["openai"]["id"], by["anthropic"]["id"]
        # granted: by ack (delivered at once), and by the register (on the next run)
        cli(config, db, "ack", openai, "--until", tomorrow, "--note", "SEC-2: pilot",
            "--actor", "ciso")  # fmt: skip
        write_config(config, *sinks, extra=site + register.format(tomorrow))
        cli(config, db, "alerts", "deliver")
        # a day later (the stored date of the ack and the register's entry lie in the past):
        # no traffic at all, yet the next `alerts deliver` says both exceptions ran out
        con = sqlite3.connect(db)
        con.execute("UPDATE findings SET exception_until = ? WHERE id = ?", [yesterday, openai])
        con.commit()
        con.close()
        write_config(config, *sinks, extra=site + register.format(yesterday))
        cli(config, db, "alerts", "deliver")
        wanted = [  # (finding, event type, actor, exception until)
            (openai, "excepted", "ciso", tomorrow),
            (anthropic, "excepted", "legal", tomorrow),
            (openai, "exception-expired", None, yesterday),
            (anthropic, "exception-expired", None, yesterday),
        ]
        statuses = ["acknowledged", "open", "open", "open"]  # the finding's, after each
        n = 2 + len(wanted)  # the two `new` first

        def check(got: list[tuple], sink: str) -> None:
            """(finding, type, actor, until, note) per event received, in order."""
            assert [g[:4] for g in got[2:]] == wanted, sink
            notes = [g[4] for g in got[2:]]
            assert "SEC-2: pilot" in notes[0] and "SEC-3" in notes[1], sink
            assert "ran out after" in notes[2] and "ran out after" in notes[3], sink

        cef = [cef_fields(m[4])[1] for m in rsyslog.wait_for("udp", n)]
        check([(e["cs5"], e["act"], e.get("flexString1"), e.get("flexString2"), e.get("reason"))
               for e in cef], "cef")  # fmt: skip
        assert [e["outcome"] for e in cef[2:]] == statuses
        assert (cef[2]["flexString1Label"], cef[2]["flexString2Label"]) == (
            "actor",
            "exceptionUntil",
        )
        assert [m[3] for m in rsyslog.lines("udp")][2:] == ["EXCEPTED"] * 2 + [
            "EXCEPTION-EXPIRED"
        ] * 2
        leef = [leef_fields(m[4])[1] for m in rsyslog.wait_for("tcp", n)]
        check([(e["findingId"], e["eventType"], e.get("actor"), e.get("exceptionUntil"),
                e.get("note")) for e in leef], "leef")  # fmt: skip
        assert [e["status"] for e in leef[2:]] == statuses
        for receiver, name in ((hook, "webhook"), (hec, "hec")):
            events = [r["body"]["event"] for r in receiver.wait_for(n)]
            check([(e["finding_id"], e["event_type"], e["actor"], e["exception_until"], e["note"])
                   for e in events], name)  # fmt: skip
            assert [e["status"] for e in events[2:]] == statuses
        text = hook.requests()[2]["body"]["text"]
        assert text.endswith(f"; exception until {tomorrow}; by ciso: SEC-2: pilot")
        ocsf = jsonl(tmp_path / "ocsf.jsonl")
        check([(d["finding_info"]["uid"], d["metadata"]["event_code"], d["unmapped"].get("actor"),
                d["unmapped"].get("exception_until"), d["unmapped"].get("note")) for d in ocsf],
              "ocsf")  # fmt: skip
        # under an exception the OCSF status is Suppressed; once it ran out, New again
        assert [d["status"] for d in ocsf[2:]] == ["Suppressed", "Suppressed", "New", "New"]
        ecs = jsonl(tmp_path / "ecs.jsonl")
        check([(d["apiwatch"]["finding"]["id"], d["event"]["action"], d["apiwatch"].get("actor"),
                d["apiwatch"]["finding"].get("exception_until"), d["event"].get("reason"))
               for d in ecs], "ecs")  # fmt: skip
        assert [d["apiwatch"]["finding"]["status"] for d in ecs[2:]] == statuses
        assert [d["apiwatch"]["finding"]["excepted"] for d in ecs[2:]] == [True, True, False, False]
        # delivered once each: running again sends nothing
        cli(config, db, "alerts", "deliver")
        assert (
            len(hook.requests()) == len(hec.requests()) == len(jsonl(tmp_path / "ecs.jsonl")) == n
        )
    finally:
        hook.stop()
        hec.stop()
