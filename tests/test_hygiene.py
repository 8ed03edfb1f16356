"""Privacy and database hygiene: pseudonymisation, prune, check, migrations."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from monitor import store as store_module
from monitor.cli import EXIT_ERROR
from monitor.store import SCHEMA_VERSION, Store
from tests.conftest import run

ROOT = Path(__file__).resolve().parents[1]
LOG = ROOT / "examples" / "logs" / "shanghai-access.log"
CONFIG = ROOT / "examples" / "apiwatch.toml"
KEY = "k" * 32


def test_pseudonymize_keeps_no_client_address_or_user(tmp_path):
    db = tmp_path / "p.db"
    log = tmp_path / "a.log"
    log.write_text(
        "1795741200.000    120 203.0.113.77 TCP_TUNNEL/200 5000 CONNECT api.openai.com:443 alice HIER_DIRECT/1.2.3.4 -\n"
        "1795741201.000    120 10.20.1.15 TCP_TUNNEL/200 5000 CONNECT api.openai.com:443 bob HIER_DIRECT/1.2.3.4 -\n"
    )
    env = {"APIWATCH_PSEUDONYMIZE_KEY": KEY}
    run("--config", CONFIG, "--db", db, "scan", log, "--pseudonymize", env=env)
    incs = [json.loads(x) for x in run("--db", db, "incidents", "--json").stdout.splitlines()]
    assert incs and all(i["client_ip"].startswith("anon:") for i in incs)
    # the public client was its own egress: its address is hidden there too
    assert {i["site"] for i in incs} >= {"shanghai"}  # sites are decided on the real address
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("p.db*"))
    for secret in (b"203.0.113.77", b"10.20.1.15", b"alice", b"bob"):
        assert secret not in raw
    # the same key gives the same incidents on another database
    db2 = tmp_path / "p2.db"
    run("--config", CONFIG, "--db", db2, "scan", log, "--pseudonymize", env=env)

    def ids(d):
        return sorted(
            json.loads(x)["id"] for x in run("--db", d, "incidents", "--json").stdout.splitlines()
        )

    assert ids(db) == ids(db2)


def test_pseudonymize_without_a_key_is_an_error(tmp_path):
    r = run(
        "--db",
        tmp_path / "x.db",
        "scan",
        LOG,
        "--pseudonymize",
        env={"APIWATCH_PSEUDONYMIZE_KEY": ""},
        ok=(EXIT_ERROR,),
    )
    assert "needs a key" in r.stderr


def test_privacy_key_file_in_config(tmp_path):
    (tmp_path / "key").write_text(KEY + "\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[privacy]\npseudonymize = true\nkey_file = "key"\n')
    db = tmp_path / "x.db"
    run("--config", cfg, "--db", db, "scan", LOG, "--egress-country", "CN")
    clients = {
        json.loads(x)["client_ip"]
        for x in run("--db", db, "incidents", "--json").stdout.splitlines()
    }
    assert clients and all(c.startswith("anon:") for c in clients)
    cfg.write_text("[privacy]\npseudonymize = true\n")
    assert "privacy.key" in run("--config", cfg, "--db", db, "scan", LOG, ok=(EXIT_ERROR,)).stderr
    cfg.write_text('[privacy]\npseudonymize = true\nkey = "short"\n')
    assert (
        "at least 16 bytes"
        in run("--config", cfg, "--db", db, "scan", LOG, ok=(EXIT_ERROR,)).stderr
    )


def test_prune_keeps_incidents_and_refuses_to_recount(tmp_path):
    db = tmp_path / "x.db"
    run("--db", db, "scan", LOG, "--egress-country", "CN")
    before = run("--db", db, "incidents", "--json").stdout
    out = json.loads(run("--db", db, "db", "prune", "--keep", "2026-11-28", "--json").stdout)
    assert out["observations"] > 0 and out["before"] == "2026-11-28"
    assert run("--db", db, "incidents", "--json").stdout == before  # incidents and counts stay
    again = json.loads(
        run("--db", db, "scan", LOG, "--egress-country", "CN", "--full", "--json").stdout
    )
    assert again["stored"] == 0 and again["expired"] > 0
    assert run("--db", db, "incidents", "--json").stdout == before
    assert run("--db", db, "db", "prune", "--keep", "soon", ok=(2,)).exit_code == 2


def test_db_check(tmp_path):
    db = tmp_path / "x.db"
    run("--db", db, "scan", LOG, "--egress-country", "CN")
    report = json.loads(run("--db", db, "db", "check", "--json").stdout)
    assert report["integrity"] == "ok" and report["schema_version"] == SCHEMA_VERSION
    assert report["tables"]["incidents"] > 0 and report["orphan_hits"] == 0


def test_migrates_a_version_1_database(tmp_path):
    path = tmp_path / "v1.db"
    con = sqlite3.connect(path)
    import sqlite_utils

    store_module._schema_v1(sqlite_utils.Database(con))
    con.execute("PRAGMA user_version = 1")
    con.execute(
        "INSERT INTO incidents (id, rule, severity, severity_rank, day, first_seen, last_seen, count, status)"
        " VALUES ('old', 'r', 'high', 3, '2026-01-01', '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z', 7, 'open')"
    )
    con.commit()
    con.close()
    store = Store(path)
    assert store.check()["schema_version"] == SCHEMA_VERSION
    assert store.incident("old")["count"] == 7
    assert store.source_state("nothing") is None


def test_database_files_are_private(tmp_path):
    db = tmp_path / "x.db"
    run("--db", db, "scan", LOG, "--egress-country", "CN")
    assert db.stat().st_mode & 0o777 == 0o600


def test_reports_say_when_the_period_was_pruned(tmp_path):
    db = tmp_path / "x.db"
    run("--db", db, "scan", LOG, "--egress-country", "CN")
    args = ("--db", db, "report", "--period", "daily", "--date", "2026-11-27")
    before = json.loads(run(*args, "--format", "json").stdout)
    assert before["methods"]["retention"]["affects_period"] is False
    run("--db", db, "db", "prune", "--keep", "2026-11-28")
    after = json.loads(run(*args, "--format", "json").stdout)
    assert after["methods"]["retention"] == {"pruned_before": "2026-11-28", "affects_period": True}
    assert "was pruned" in run(*args, "--format", "md").stdout
    assert "was pruned" in run(*args, "--format", "html").stdout
