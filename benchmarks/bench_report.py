#!/usr/bin/env python3
"""Benchmark ``apiwatch report``, ``findings`` and ``incidents`` on a large store.

The database is generated straight into the store, deterministic for a seed: two months of
traffic (October and November 2026, three quarters of it in November) from ~5,000 clients
on 5 sites to 16 providers, daily log files and one scan per day, stored as a scan stores
them (``Store.ingest``, then ``Store.roll_up`` as a scan's finish does); incidents under
findings with a status history are bulk-inserted in one transaction. Rows are built from a
template (a few microseconds each): 10 M take a few minutes, mostly in the store.
Then the monthly report for November is timed end to end as a command (process start,
imports, queries, rendering, writing the file), in HTML and in JSON, and so are the listing
commands (:data:`LISTINGS`).

Targets: the report under 5 s, each listing under 1 s. Usage::

    python benchmarks/bench_report.py                     # generates /tmp/apiwatch-bench-report.db
    python benchmarks/bench_report.py --observations 10000000 --db /tmp/r10m.db
    python benchmarks/bench_report.py --observations 200000 --incidents 20000 --repeat 3
    python benchmarks/bench_report.py --db /tmp/existing.db --reuse --json
"""

# ruff: noqa: S608 - column lists are the store's constants; values are bound

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, remove_db  # noqa: E402

sys.path.insert(0, str(REPO))

TARGET_SECONDS = 5.0

PROVIDERS = [
    ("openai", "api", "api.openai.com"),
    ("openai", "consumer", "chatgpt.com"),
    ("anthropic", "api", "api.anthropic.com"),
    ("google_gemini", "api", "generativelanguage.googleapis.com"),
    ("azure_openai", "api", "acme-prod.openai.azure.com"),
    ("mistral", "api", "api.mistral.ai"),
    ("deepseek", "api", "api.deepseek.com"),
    ("cohere", "api", "api.cohere.com"),
    ("groq", "api", "api.groq.com"),
    ("perplexity", "api", "api.perplexity.ai"),
    ("together", "api", "api.together.xyz"),
    ("fireworks", "api", "api.fireworks.ai"),
    ("openrouter", "relay", "openrouter.ai"),
    ("cloudflare_ai_gateway", "relay", "gateway.ai.cloudflare.com"),
    ("cloudflare_workers_proxy", "relay", "gpt-proxy.workers.dev"),
    ("xai", "api", "api.x.ai"),
]
SITES = [
    ("shanghai", "CN", "114.114.114.114"),
    ("hongkong", "HK", "8.217.0.1"),
    ("frankfurt", "DE", "185.60.216.1"),
    ("london", "GB", "81.2.69.1"),
    ("newyork", "US", "8.8.8.8"),
]
RULES = [
    ("provider-region-unsupported", "high"),
    ("relay-service", "medium"),
    ("unapproved-provider", "medium"),
    ("possible-relay", "low"),
    ("unknown-region-policy", "info"),
]
SEVERITY_RANK = {"info": 0, "low": 1, "medium": 2, "high": 3, "critical": 4}


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def generate(path: Path, observations: int, incidents: int, seed: int) -> dict:
    from monitor.findings import finding_id
    from monitor.rows import COL, observation_values
    from monitor.store import INCIDENT_COLUMNS, Store

    remove_db(path)
    store = Store(path)
    db = store.db.conn
    db.execute("PRAGMA synchronous = OFF")
    rnd = random.Random(seed)
    t0 = time.perf_counter()
    oct1 = datetime(2026, 10, 1, tzinfo=UTC).timestamp()
    nov1 = datetime(2026, 11, 1, tzinfo=UTC).timestamp()
    dec1 = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    clients = [f"10.{20 + 10 * (i % 5)}.{i // 250 % 250}.{i % 250 + 1}" for i in range(5000)]
    cum_weights = list(accumulate(1 / (i + 1) ** 0.8 for i in range(len(clients))))
    users = ["alice", "bob", "carol", None, None, None]

    db.execute("BEGIN")
    days = []
    d = datetime(2026, 10, 1, tzinfo=UTC)
    while d.timestamp() < dec1:
        days.append(d)
        d += timedelta(days=1)
    geodata = json.dumps(
        [
            {"name": "geo-whois-asn-country", "path": "geodata/geo-whois-asn-country.mmdb.xz",
             "database_type": "apiwatch-Country", "capability": "country",
             "build_date": "2026-06-17", "origin": "embedded"},
        ]
    )  # fmt: skip
    rules = json.dumps({"rules": [r for r, _ in RULES]})
    for i, day in enumerate(days, start=1):
        start = (day + timedelta(days=1, hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        db.execute(
            """INSERT INTO scans (id, started, finished, files, options, records, malformed,
               llm_observations, stored, duplicates, incidents_new, incidents_updated, by_rule,
               file_errors, catalog_version, geodata, exit_code)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0, '{}', '[]', '2026-11-28', ?, 0)""",
            [i, start, start, json.dumps([f"/var/log/squid/access.log-{day:%Y%m%d}.gz"]),
             rules, 1_000_000, 7, 0, 0, geodata],
        )  # fmt: skip
        db.executemany(
            "INSERT INTO scan_problems (scan_id, source, line, reason, excerpt) VALUES (?, ?, ?, ?, ?)",
            [(i, f"/var/log/squid/access.log-{day:%Y%m%d}.gz", 100 + k, "truncated record", "x")
             for k in range(7)],
        )  # fmt: skip

    db.execute("COMMIT")
    # rows are built in column order from a template (millions of them: no dict per row)
    base = observation_values(format="squid", method="CONNECT", dest_port=443,
                              dest_ip="162.159.140.245", host_source="connect", duration=1.0,
                              dest_country="US", dest_asn=13335)  # fmt: skip
    by_day = [(f"{d:%Y-%m-%d}", f"/var/log/squid/access.log-{d:%Y%m%d}.gz", i)
              for i, d in enumerate(days, start=1)]  # fmt: skip
    at = {c: COL[c] for c in ("id", "ts", "day", "source", "line", "client_ip", "user",
                              "dest_host", "status", "result", "bytes_in", "provider",
                              "provider_kind", "match_pattern", "site", "egress_ip",
                              "egress_country", "egress_source", "outcome", "scan_id")}  # fmt: skip
    site_of = {c: SITES[int(c.split(".")[1]) // 10 - 2] for c in clients}
    batch = []
    n_oct = observations // 4
    for k in range(observations):
        lo, hi = (oct1, nov1) if k < n_oct else (nov1, dec1)
        ts = lo + (hi - lo) * (k - (0 if k < n_oct else n_oct)) / (
            n_oct if k < n_oct else observations - n_oct
        )
        client = (
            rnd.choices(clients, cum_weights=cum_weights)[0]
            if k % 8 == 0
            else clients[rnd.randrange(len(clients))]
        )
        site, country, egress = site_of[client]
        provider, kind, host = PROVIDERS[min(int(rnd.expovariate(0.35)), len(PROVIDERS) - 1)]
        blocked = rnd.random() < 0.05
        day, source, scan_id = by_day[int((ts - oct1) // 86400)]
        row = base.copy()
        for name, value in (
            ("id", k + 1), ("ts", ts), ("day", day), ("source", source), ("line", k),
            ("client_ip", client), ("user", users[k % len(users)]), ("dest_host", host),
            ("status", 403 if blocked else 200),
            ("result", "TCP_DENIED" if blocked else "TCP_TUNNEL"),
            ("bytes_in", rnd.randint(300, 200_000)), ("provider", provider),
            ("provider_kind", kind), ("match_pattern", host), ("site", site),
            ("egress_ip", egress), ("egress_country", country), ("egress_source", f"site:{site}"),
            ("outcome", "blocked" if blocked else "allowed"), ("scan_id", scan_id),
        ):  # fmt: skip
            row[at[name]] = value
        batch.append((row, []))
        if len(batch) >= 50_000:  # stored as a scan stores them (the store's own layout)
            store.ingest(scan_id, batch)
            batch = []
    if batch:
        store.ingest(scan_id, batch)
    store.roll_up()  # as a scan does when it finishes

    icols = list(INCIDENT_COLUMNS)
    isql = f"INSERT INTO incident_rows ({', '.join(icols)}) VALUES ({', '.join('?' * len(icols))})"
    db.execute("BEGIN")
    rows, events = [], []
    fids = set()
    for i in range(incidents):
        ts = oct1 + (dec1 - oct1) * rnd.random()
        rule, severity = RULES[min(int(rnd.expovariate(0.7)), len(RULES) - 1)]
        provider, kind, host = rnd.choice(PROVIDERS)
        site, country, egress = rnd.choice(SITES)
        status = rnd.choices(["open", "acknowledged", "resolved"], [6, 2, 2])[0]
        iid = f"{rnd.getrandbits(64):016x}"
        count = rnd.randint(1, 40)
        row = {
            "id": iid, "rule": rule, "severity": severity, "severity_rank": SEVERITY_RANK[severity],
            "title": rule, "provider": provider, "provider_kind": kind, "dest_host": host,
            "client_ip": rnd.choice(clients), "site": site, "egress_ip": egress,
            "egress_country": country, "egress_source": f"site:{site}",
            "day": datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d"), "first_seen": iso(ts),
            "last_seen": iso(ts + rnd.random() * 3600), "count": count, "blocked": 0,
            "bytes_out": None, "bytes_in": count * 1000, "outcome": "allowed", "status": status,
            "evidence": "[]", "first_scan": 1, "last_scan": 1, "user": users[i % len(users)],
            "finding_id": finding_id(rule, provider, site, country),
        }  # fmt: skip
        fids.add(row["finding_id"])
        rows.append(store._incident_values(row, icols))  # texts as the store keeps them
        if status != "open":
            at = datetime.fromtimestamp(ts + 86400, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            events.append((iid, at, status, "open", status, "bench", "ops"))
    db.executemany(isql, rows)
    db.executemany(
        """INSERT INTO incident_events (incident_id, at, action, status_from, status_to, note, actor)
           VALUES (?, ?, ?, ?, ?, ?, ?)""",
        events,
    )
    store._refresh_findings(sorted(fids))  # findings rolled up from their detail, as stored
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("ANALYZE")
    store.close()
    return {
        "workload": (
            f"{observations:,} observations (a quarter in October 2026, the rest in November)"
            f" from {len(clients):,} clients on {len(SITES)} sites to {len(PROVIDERS)} providers,"
            f" one scan per day; {incidents:,} incidents under {len(fids)} findings;"
            " report: November 2026"
        ),
        "observations": observations,
        "incidents": incidents,
        "events": len(events),
        "seconds": round(time.perf_counter() - t0, 1),
        "size_mb": round(path.stat().st_size / 1e6, 1),
    }


#: the listing commands timed beside the report (target: each under a second, as a command)
LISTINGS = {
    "findings": ["findings", "--json"],
    "findings --user alice": ["findings", "--user", "alice", "--json"],
    "findings --client 10.20.1.1": ["findings", "--client", "10.20.1.1", "--json"],
    "incidents --limit 100": ["incidents", "--limit", "100", "--json"],
    "incidents --since 7d --severity high": ["incidents", "--since", "2026-11-24",
                                             "--until", "2026-12-01", "--severity", "high",
                                             "--limit", "1000", "--json"],
    "incidents --client 10.20.0.0/16 --limit 100": ["incidents", "--client", "10.20.0.0/16",
                                                    "--limit", "100", "--json"],
    "incidents --finding F… (all its detail)": None,  # the busiest finding, looked up below
}  # fmt: skip
LISTING_TARGET = 1.0


def timed(db: Path, *args: str) -> tuple[float, float, str]:
    """One ``apiwatch --db DB ARGS`` as a command: (wall seconds, CPU seconds, stdout). The
    CPU time (user + system, every thread) says more than the wall time on a busy machine."""
    cmd = [sys.executable, "-m", "monitor", "--db", str(db), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds, cpu, proc.stdout


def best_of(runs: list[tuple[float, float, str]]) -> dict[str, Any]:
    return {"best": round(min(r[0] for r in runs), 2), "runs": [round(r[0], 2) for r in runs],
            "cpu": round(min(r[1] for r in runs), 2)}  # fmt: skip


def time_listings(db: Path, repeat: int) -> dict[str, dict[str, Any]]:
    """Best and all runs of each of :data:`LISTINGS`, with how many lines it printed."""
    findings = [json.loads(x) for x in timed(db, "findings", "--json")[2].splitlines()]
    busiest = max(findings, key=lambda f: f["count"])["id"] if findings else None
    out = {}
    for name, args in LISTINGS.items():
        if args is None and busiest is None:
            continue
        args = args or ["incidents", "--finding", busiest, "--json"]
        runs = [timed(db, *args) for _ in range(repeat)]
        out[name] = {**best_of(runs), "lines": len(runs[0][2].splitlines())}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", type=Path, default=Path("/tmp/apiwatch-bench-report.db"))
    ap.add_argument("--observations", type=int, default=1_000_000)
    ap.add_argument("--incidents", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="Timed runs per format (best and all).")
    ap.add_argument("--reuse", action="store_true", help="Keep an existing --db.")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    setup = None
    if not (args.reuse and args.db.exists()):
        print(f"generating {args.observations:,} observations and {args.incidents:,} incidents "
              f"into {args.db} …", file=sys.stderr)  # fmt: skip
        setup = generate(args.db, args.observations, args.incidents, args.seed)
    results = {}
    for fmt in ("html", "json"):
        out = args.db.with_suffix(f".report.{fmt}")
        report = ("report", "--period", "monthly", "--date", "2026-11-15", "--format", fmt)
        runs = [timed(args.db, *report, "-o", str(out)) for _ in range(args.repeat)]
        results[fmt] = {**best_of(runs), "bytes": out.stat().st_size}
    listings = time_listings(args.db, args.repeat)
    ok = all(
        r["best"] < TARGET_SECONDS and max(r["runs"]) < TARGET_SECONDS for r in results.values()
    ) and all(r["best"] < LISTING_TARGET for r in listings.values())
    summary = {"setup": setup, "reports": results, "listings": listings,
               "target_seconds": TARGET_SECONDS, "listing_target_seconds": LISTING_TARGET,
               "ok": ok}  # fmt: skip
    if args.json:
        print(json.dumps(summary))
    else:
        if setup:
            print(f"setup: {setup}")
        for fmt, r in results.items():
            print(f"monthly report, {fmt:<4}: best {r['best']:.2f} s (CPU {r['cpu']:.2f} s), "
                  f"runs {r['runs']} ({r['bytes'] / 1e3:,.0f} kB)")  # fmt: skip
        for name, r in listings.items():
            print(f"{name:<44}: best {r['best']:.2f} s (CPU {r['cpu']:.2f} s), runs {r['runs']}"
                  f" ({r['lines']:,} lines)")  # fmt: skip
        print(f"target: report < {TARGET_SECONDS:.0f} s, listings < {LISTING_TARGET:.0f} s: "
              f"{'met' if ok else 'MISSED'}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
