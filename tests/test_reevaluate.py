"""``reevaluate``: the stored traffic under new settings equals a fresh scan under them."""

from __future__ import annotations

import json
import sqlite3

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.app import App, Settings
from monitor.collectors import CollectOptions
from monitor.egress import EgressOptions
from monitor.reevaluate import reevaluate
from monitor.store import FindingQuery
from tests.test_findings import CLIENTS, HOSTS, squid_line

WEEK = 1795392000.0  # 2026-11-23T00:00:00Z


def small_log(path) -> None:
    """Clients inside and outside the site, with and without users, three providers, three days."""
    lines = []
    clients = [*CLIENTS[:6], "192.168.5.5", "8.8.4.4"]
    for day in range(3):
        for n, client in enumerate(clients):
            for k, provider in enumerate(HOSTS):
                if (n + k + day) % 3:
                    ts = WEEK + day * 86400 + n * 60 + k
                    lines.append(squid_line(ts, client, provider, f"u{n}" if n % 2 else None))
    path.write_text("".join(lines))


SITES = st.fixed_dictionaries(
    {
        "client_cidrs": st.sampled_from([["10.20.0.0/16"], ["10.20.0.0/30"], []]),
        "egress_ips": st.sampled_from([[], ["114.114.114.114"], ["8.8.8.8"]]),
        "country": st.sampled_from([None, "CN", "DE", "US", "RU"]),
    }
)
SETTINGS = st.fixed_dictionaries(
    {"site": SITES, "allowed": st.sampled_from([[], ["openai"], ["anthropic", "google_gemini"]])}
)
OPTIONS = st.sampled_from(
    [EgressOptions(), EgressOptions(egress_ip="114.114.114.114"), EgressOptions(site="sh")]
)


def write_config(path, s) -> None:
    site = s["site"]
    text = f"[organisation]\nallowed_providers = {json.dumps(s['allowed'])}\n\n[sites.sh]\n"
    text += f"client_cidrs = {json.dumps(site['client_cidrs'])}\n"
    text += f"egress_ips = {json.dumps(site['egress_ips'])}\n"
    if site["country"]:
        text += f'country = "{site["country"]}"\n'
    path.write_text(text)


def scan(db, cfg, log, options) -> App:
    app = App(Settings(db=db, config=cfg))
    app.scan([str(log)], options, CollectOptions(), jobs=1)
    return app


#: lifecycle and bookkeeping, which re-evaluation keeps and a fresh scan starts anew
LIFECYCLE = {"status", "changed", "exception_until", "exception_reason", "exception_by",
             "exception_source", "settings_digest"}  # fmt: skip


def content(db) -> dict[str, list]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    out = {}
    for table, key in (("observations", "id"), ("incidents", "id"), ("hits", "incident_id, observation_id"),
                       ("findings", "id")):  # fmt: skip
        where = " WHERE status != 'superseded'" if table == "findings" else ""
        rows = con.execute(f"SELECT * FROM {table}{where} ORDER BY {key}").fetchall()  # noqa: S608
        out[table] = [{k: v for k, v in dict(r).items() if k not in LIFECYCLE} for r in rows]
    con.close()
    return out


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(a=SETTINGS, b=SETTINGS, options=OPTIONS)
def test_reevaluate_equals_a_fresh_scan(tmp_path_factory, a, b, options):
    tmp = tmp_path_factory.mktemp("re")
    log = tmp / "access.log"
    small_log(log)
    cfg_a, cfg_b = tmp / "a.toml", tmp / "b.toml"
    write_config(cfg_a, a)
    write_config(cfg_b, b)
    scan(tmp / "re.db", cfg_a, log, options).close()
    # some lifecycle on the way: it is kept, and left out of the comparison
    app = App(Settings(db=tmp / "re.db", config=cfg_b))
    first = next(app.store.findings(FindingQuery()), None)
    if first is not None:
        app.store.set_finding_status([first["id"]], "resolved", "checked", "ana")
    done = reevaluate(app)
    assert done.result.observations == len(log.read_text().splitlines())
    if first is not None:
        status = app.store.finding(first["id"])["status"]
        assert status == ("superseded" if first["id"] in done.result.superseded else "resolved")
        assert app.store.finding_events(first["id"])[1]["action"] == "resolved"
    app.close()
    scan(tmp / "fresh.db", cfg_b, log, options).close()
    assert content(tmp / "re.db") == content(tmp / "fresh.db")


def test_a_fixed_site_country_reevaluated_from_the_cli(tmp_path):
    """The story: the site's country was wrong (DE); fixing it (CN) and re-evaluating raises
    the CN findings, supersedes nothing that still holds, and config check stops warning."""
    from click.testing import CliRunner

    from monitor.cli import main

    def run(*args, ok=(0,)):
        res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
        assert res.exit_code in ok, res.output + res.stderr
        return res

    log = tmp_path / "access.log"
    small_log(log)
    cfg, db = tmp_path / "c.toml", tmp_path / "c.db"
    cfg.write_text('[organisation]\nallowed_providers = ["openai"]\n\n[sites.sh]\n'
                   'client_cidrs = ["10.20.0.0/16"]\ncountry = "DE"\n')  # fmt: skip
    run("--db", db, "--config", cfg, "scan", log)
    before = {json.loads(x)["id"]: json.loads(x) for x in
              run("--db", db, "--config", cfg, "findings", "--json").stdout.splitlines()}  # fmt: skip
    cfg.write_text(cfg.read_text().replace('"DE"', '"CN"'))
    check = run("--db", db, "config", "check", cfg)
    assert "evaluated with other settings" in check.stderr
    out = json.loads(run("--db", db, "--config", cfg, "reevaluate", "--json").stdout)
    assert out["observations"] == len(log.read_text().splitlines()) and out["per_second"] > 0
    after = {json.loads(x)["id"]: json.loads(x) for x in
             run("--db", db, "--config", cfg, "findings", "--json").stdout.splitlines()}  # fmt: skip
    raised = {(f["rule"], f["provider"]) for f in after.values() if f["id"] not in before}
    assert ("provider-region-unsupported", "openai") in raised  # CN is not served; DE was
    assert set(out["findings_new"]) == {f for f in after if f not in before}
    gone = [f for f in before if f not in after or after[f]["status"] == "superseded"]
    assert set(gone) == set(out["findings_superseded"])
    assert "evaluated with other settings" not in run("--db", db, "config", "check", cfg).stderr
    assert "re-evaluated" in run("--db", db, "--config", cfg, "reevaluate").stdout
