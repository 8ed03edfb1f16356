"""Finding events, the outbox and the JSON-lines sink (OCSF, ECS), end to end through the CLI."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest

from monitor.config import ConfigError, parse_config
from monitor.events import FindingEvent
from tests.alerting import cli, findings, incidents, jsonl, squid_line, write_config

OCSF = 'name = "lake"\nkind = "jsonl"\npath = "ocsf.jsonl"\nformat = "ocsf"\nmin_severity = "info"'
ECS = 'name = "elastic"\nkind = "jsonl"\npath = "ecs.jsonl"\nformat = "ecs"'


@pytest.fixture
def env(tmp_path):
    log = tmp_path / "access.log"
    log.write_text(
        "".join(squid_line(i) for i in range(3))
        + squid_line(3, host="openrouter.ai")  # relay-service, medium
        + squid_line(4, host="api.anthropic.com", client="10.0.0.2")
    )
    config = write_config(tmp_path / "apiwatch.toml", OCSF, ECS)
    return tmp_path, config, tmp_path / "db.sqlite", log


def test_scan_delivers_every_new_finding_in_ocsf_and_ecs(env):
    tmp, config, db, log = env
    cli(config, db, "scan", log, "--egress-country", "CN")
    found = findings(config, db)
    detail = {i["finding_id"]: i for i in incidents(config, db).values()}  # one each here
    ocsf = jsonl(tmp / "ocsf.jsonl")
    assert len(ocsf) == len(found) == 3
    for doc in ocsf:
        inc = found[doc["finding_info"]["uid"]]
        assert doc["class_uid"] == 2004 and doc["type_uid"] == 200401
        assert doc["activity_name"] == "Create" and doc["metadata"]["event_code"] == "new"
        assert doc["finding_info"]["analytic"]["uid"] == inc["rule"]
        assert doc["severity"].lower() == inc["severity"]
        assert doc["count"] == inc["count"]
        assert doc["unmapped"]["provider"] == inc["provider"]
        assert doc["unmapped"]["egress_country"] == "CN"
        key = doc["unmapped"]["idempotency_key"]
        assert key == f"{inc['id']}:{doc['metadata']['uid']}"
    assert len({d["metadata"]["uid"] for d in ocsf}) == 3
    # ECS sink: min_severity defaults to medium; every finding here is medium or high
    ecs = {d["apiwatch"]["finding"]["id"]: d for d in jsonl(tmp / "ecs.jsonl")}
    assert set(ecs) == set(found)
    for fid, doc in ecs.items():
        inc = found[fid]
        assert doc["event"]["kind"] == "alert" and doc["event"]["action"] == "new"
        assert doc["rule"]["id"] == inc["rule"]
        assert doc["apiwatch"]["provider"] == inc["provider"]
        assert doc["apiwatch"]["egress"]["country"] == inc["egress_country"]
        assert doc["apiwatch"]["finding"]["first_seen"] == inc["first_seen"]
        assert doc["apiwatch"]["finding"]["last_seen"] == inc["last_seen"]
        assert doc["source"]["ip"] == detail[fid]["client_ip"]
    # scanning again delivers nothing more: every event went once to each sink
    cli(config, db, "scan", log, "--egress-country", "CN", "--full")
    assert len(jsonl(tmp / "ocsf.jsonl")) == 3 and len(jsonl(tmp / "ecs.jsonl")) == 3


def test_filters_threshold_rules_and_sites(tmp_path):
    log = tmp_path / "access.log"
    log.write_text(
        squid_line(0) + squid_line(1, host="openrouter.ai") + squid_line(2, client="10.9.0.1")
    )
    config = write_config(
        tmp_path / "c.toml",
        'name = "high"\nkind = "jsonl"\npath = "high.jsonl"\nformat = "ecs"\nmin_severity = "high"',
        'name = "relays"\nkind = "jsonl"\npath = "relays.jsonl"\nformat = "ecs"\n'
        'rules = ["relay-service"]',
        'name = "sh"\nkind = "jsonl"\npath = "sh.jsonl"\nformat = "ecs"\nsites = ["shanghai"]\n'
        'min_severity = "info"',
        extra='[sites.shanghai]\nclient_cidrs = ["10.9.0.0/16"]\ncountry = "CN"\n'
        'egress_ips = ["114.114.114.114"]\n',
    )
    db = tmp_path / "db.sqlite"
    cli(config, db, "scan", log, "--egress-country", "CN")
    assert {d["event"]["severity"] for d in jsonl(tmp_path / "high.jsonl")} == {8}
    assert {d["rule"]["id"] for d in jsonl(tmp_path / "relays.jsonl")} == {"relay-service"}
    sh = jsonl(tmp_path / "sh.jsonl")
    assert [d["apiwatch"]["site"] for d in sh] == ["shanghai"]
    status = {
        r["name"]: r
        for r in map(json.loads, cli(config, db, "alerts", "--json").stdout.splitlines())
    }
    assert status["sh"]["delivered"] == 1 and status["sh"]["pending"] == 0


def test_status_changes_and_digest_of_a_flood(env):
    tmp, config, db, log = env
    cli(config, db, "scan", log, "--egress-country", "CN")
    openai = next(i for i in findings(config, db).values() if i["provider"] == "openai")
    # a flood into the same finding inside the digest window: no new alert
    with log.open("a") as f:
        f.writelines(squid_line(10 + i) for i in range(50))
    cli(config, db, "scan", log, "--egress-country", "CN")
    assert len(jsonl(tmp / "ocsf.jsonl")) == 3
    # once the window has passed, one `updated` event carries the requests since
    con = sqlite3.connect(db)
    con.execute("UPDATE finding_alerts SET last_event_at = last_event_at - 3600")
    con.commit()
    cli(config, db, "alerts", "deliver")  # nothing new yet: digests come with traffic or watch
    with log.open("a") as f:
        f.write(squid_line(70))
    cli(config, db, "scan", log, "--egress-country", "CN")
    updated = [d for d in jsonl(tmp / "ocsf.jsonl") if d["metadata"]["event_code"] == "updated"]
    assert len(updated) == 1
    assert updated[0]["finding_info"]["uid"] == openai["id"]
    assert updated[0]["count"] == 3 + 51 and updated[0]["unmapped"]["new_count"] == 51
    assert updated[0]["activity_name"] == "Update"
    # ack and resolve raise events of their own, delivered by the next run
    cli(config, db, "ack", openai["id"], "--note", "SEC-1")
    cli(config, db, "resolve", openai["id"], "--note", "moved")
    cli(config, db, "alerts", "deliver")
    kinds = [d["metadata"]["event_code"] for d in jsonl(tmp / "ocsf.jsonl")]
    assert kinds[-2:] == ["acknowledged", "resolved"]
    assert jsonl(tmp / "ocsf.jsonl")[-1]["status"] == "Resolved"


def test_a_failing_sink_keeps_its_events_until_it_works(env):
    tmp, config, db, log = env
    config.write_text(config.read_text().replace('path = "ocsf.jsonl"', 'path = "out/ocsf.jsonl"'))
    result = cli(config, db, "scan", log, "--egress-country", "CN")
    assert "warning: alerts: sink lake failed" in result.stderr
    assert "No such file or directory" in result.stderr
    status = {
        r["name"]: r
        for r in map(json.loads, cli(config, db, "alerts", "--json").stdout.splitlines())
    }
    assert status["lake"]["pending"] == 3 and status["lake"]["attempts"] == 1
    assert "No such file" in status["lake"]["last_error"]
    assert status["elastic"]["pending"] == 0  # one sink down does not hold up the others
    shown = cli(config, db, "alerts").stdout
    assert "FAILING" in shown and "pending 3" in shown
    assert cli(config, db, "alerts", "deliver", ok=(1,)).exit_code == 1
    (tmp / "out").mkdir()
    cli(config, db, "alerts", "deliver")
    docs = jsonl(tmp / "out" / "ocsf.jsonl")
    assert len(docs) == 3 and len({d["metadata"]["uid"] for d in docs}) == 3
    cli(config, db, "alerts", "deliver")
    assert len(jsonl(tmp / "out" / "ocsf.jsonl")) == 3
    status = {
        r["name"]: r
        for r in map(json.loads, cli(config, db, "alerts", "--json").stdout.splitlines())
    }
    assert status["lake"]["pending"] == 0 and status["lake"]["last_error"] is None


def test_alerts_test_and_stdout(tmp_path):
    config = write_config(
        tmp_path / "c.toml", 'name = "out"\nkind = "jsonl"\npath = "-"\nformat = "ocsf"'
    )
    result = cli(config, tmp_path / "db.sqlite", "alerts", "test", "--sink", "out")
    doc = json.loads(result.stdout.splitlines()[0])
    assert doc["metadata"]["event_code"] == "test" and doc["finding_info"]["uid"] == "test"
    bad = cli(config, tmp_path / "db.sqlite", "alerts", "test", "--sink", "nope", ok=(2,))
    assert "no sink named 'nope'" in bad.stderr


def test_daily_delivers(tmp_path):
    log = tmp_path / "access.log"
    log.write_text(squid_line(0))
    config = write_config(
        tmp_path / "c.toml",
        ECS,
        extra='[[sources]]\npath = "access.log"\negress_country = "CN"\n',
    )
    result = cli(config, tmp_path / "db.sqlite", "daily", "--no-reports", "--json")
    assert json.loads(result.stdout)["alerts_sent"] == 1
    assert len(jsonl(tmp_path / "ecs.jsonl")) == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('name = "x"\nkind = "pager"', "alerts[0].kind: expected one of webhook"),
        ('kind = "jsonl"\npath = "-"\nformat = "ocsf"', "alerts[0].name: missing"),
        ('name = "x"\nkind = "jsonl"\nformat = "ocsf"', "alerts[0].path: missing"),
        ('name = "x"\nkind = "jsonl"\npath = "-"\nformat = "cef"', "alerts[0].format: expected one of ocsf, ecs"),
        ('name = "x"\nkind = "jsonl"\npath = "-"\nformat = "ecs"\nurl = "http://a"', "alerts[0].url: unknown key"),
        ('name = "x"\nkind = "jsonl"\npath = "-"\nformat = "ecs"\nmin_severity = "urgent"', "alerts[0].min_severity"),
        ('name = "x"\nkind = "jsonl"\npath = "-"\nformat = "ecs"\nsites = ["paris"]', "unknown site 'paris'"),
    ],
)  # fmt: skip
def test_config_errors_name_the_key(tmp_path, body, message):
    import tomllib

    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(tomllib.loads(f"[[alerts]]\n{body}\n"), tmp_path / "c.toml")


def test_duplicate_sink_names(tmp_path):
    import tomllib

    body = 'name = "x"\nkind = "jsonl"\npath = "-"\nformat = "ecs"'
    with pytest.raises(ConfigError, match="used by another sink"):
        parse_config(tomllib.loads(f"[[alerts]]\n{body}\n[[alerts]]\n{body}\n"))


def test_event_round_trip():
    e = FindingEvent(event_id="e1", finding_id="f1", event_type="new", time="2026-11-27T00:00:00Z",
                     rule="r", severity="high", count=2)  # fmt: skip
    assert FindingEvent.from_json(e.to_json()) == e
    assert e.as_dict()["idempotency_key"] == "f1:e1"


def test_config_check_lists_the_sinks(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_SUCH_TOKEN_VAR", raising=False)
    config = write_config(
        tmp_path / "c.toml",
        OCSF,
        'name = "hook"\nkind = "webhook"\nurl = "https://hooks.example/T0/secretpath"\n'
        'token_env = "NO_SUCH_TOKEN_VAR"\nmin_severity = "high"',
    )
    result = cli(config, tmp_path / "db.sqlite", "config", "check", config)
    assert "alerts[0]  lake: jsonl ocsf →" in result.stdout
    assert "alerts[1]  hook: webhook → https://hooks.example/… (>= high)" in result.stdout
    assert "secretpath" not in result.stdout
    assert "alerts[1].token_env: $NO_SUCH_TOKEN_VAR is not set" in result.stderr
    bad = config.read_text().replace('format = "ocsf"', 'format = "cef"')
    config.write_text(bad)
    failed = cli(config, tmp_path / "db.sqlite", "config", "check", config, ok=(1,))
    assert "alerts[0].format: expected one of ocsf, ecs" in failed.stderr


def test_prune_drops_alert_events_every_sink_has_had(env):
    tmp, config, db, log = env
    config.write_text(config.read_text().replace('path = "ocsf.jsonl"', 'path = "no/ocsf.jsonl"'))
    cli(config, db, "scan", log, "--egress-country", "CN")  # lake is down, elastic got 3
    con = sqlite3.connect(db)
    con.execute("UPDATE outbox SET at = '2020-01-01T00:00:00Z'")
    con.commit()
    out = json.loads(cli(config, db, "db", "prune", "--keep", "1d", "--json").stdout)
    assert out["alert_events"] == 0  # lake has not had them yet
    (tmp / "no").mkdir()
    cli(config, db, "alerts", "deliver")
    out = json.loads(cli(config, db, "db", "prune", "--keep", "1d", "--json").stdout)
    assert out["alert_events"] == 3
    assert len(jsonl(tmp / "no" / "ocsf.jsonl")) == 3
