#!/usr/bin/env python3
"""Benchmark ``apiwatch scan --cluster`` with 1 and 2 Dask workers beside a local scan and
``awk | sort | uniq``, on the same Squid log, in one run.

Rows: the peer (``awk '{print $7}' FILE | LC_ALL=C sort | uniq -c``), ``apiwatch scan``
(local producer processes), and ``apiwatch scan --cluster`` against a scheduler and N
single-threaded workers started here on 127.0.0.1 (all on this machine: the figures show the
cost of the cluster path, not the gain of more machines). Every scan goes into a fresh
database, and the databases of the cluster scans must hold what the local scan's holds.

Usage::

    python benchmarks/bench_cluster.py                       # 2 M lines, 3 % LLM lines
    python benchmarks/bench_cluster.py --llm-share 0.25 --workers 1,2
    python benchmarks/bench_cluster.py /var/log/squid/access.log --repeat 3
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scan import Row, add_ratios, generate, log_facts, measure, render_table, workload  # noqa: E402
from common import REPO, apiwatch_command, fresh_db, pick_timer, say, scratch_dir, warm_cache  # noqa: E402
from dask_local import DaskCluster  # noqa: E402


def observation_count(db: Path) -> int:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT count(*) FROM observations").fetchone()[0]
    finally:
        con.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("log", nargs="?", type=Path, help="Squid native access.log (else generated)")
    ap.add_argument("--lines", type=int, default=2_000_000, help="lines to generate (no log)")
    ap.add_argument("--llm-share", type=float, default=0.03, help="LLM share when generating")
    ap.add_argument("--workers", default="1,2", help="worker counts to measure, e.g. 1,2")
    ap.add_argument("--repeat", type=int, default=1, help="runs per command; best time kept")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per command")
    ap.add_argument("--tmpdir", type=Path, help="where generated logs and databases go")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument(
        "--apiwatch",
        help="apiwatch command line (default: the apiwatch beside this Python, else on PATH)",
    )
    args = ap.parse_args(argv)
    timer = pick_timer("auto")
    counts = [int(n) for n in args.workers.split(",") if n.strip()]

    with scratch_dir("apiwatch-bench-cluster-", args.tmpdir, args.keep) as tmp:
        rows: list[Row] = []
        log = args.log
        if log is None:
            log = tmp / "access.log"
            say(f"generating {args.lines:,} lines ({args.llm_share:.0%} LLM) into {log} ...")
            rows.append(generate(log, args.lines, 1, timer=timer, workdir=tmp,
                                 llm_share=args.llm_share))  # fmt: skip
        lines, nbytes = log_facts(log)
        warm_cache(log)
        common = dict(lines=lines, nbytes=nbytes, repeat=args.repeat, timer=timer, workdir=tmp,
                      timeout=args.timeout)  # fmt: skip
        aw_cmd, aw_env = apiwatch_command(args.apiwatch)
        say("running awk | sort | uniq ...")
        script = "awk '{print $7}' \"$1\" | LC_ALL=C sort | uniq -c > /dev/null"
        rows.append(measure("awk | sort | uniq", ["sh", "-c", script, "sh", str(log)], **common))

        def scan(label: str, db: Path, *extra: str) -> Row:
            say(f"running {label} ...")
            cmd = [*aw_cmd, "--db", str(db), "scan", "--egress-country", "CN", *extra, str(log)]
            return measure(label, cmd, env=aw_env, before_each=fresh_db(db), **common)

        local_db = tmp / "local.db"
        rows.append(scan("apiwatch scan (local)", local_db))
        want = observation_count(local_db)
        for n in counts:
            with tempfile.TemporaryDirectory(dir=tmp) as ctmp:
                cluster = DaskCluster(Path(ctmp), workers=n, pythonpath=REPO)
                try:
                    db = tmp / f"cluster{n}.db"
                    rows.append(scan(f"apiwatch scan --cluster ({n} worker{'s' * (n > 1)})", db,
                                     "--cluster", cluster.address))  # fmt: skip
                    got = observation_count(db) if rows[-1].ok else None
                    if got != want:
                        say(
                            f"cluster scan with {n} workers stored {got} observations, local {want}"
                        )
                        return 1
                finally:
                    cluster.stop()
        add_ratios(rows)
        print(f"log: {log}  ({lines:,} lines, {nbytes / 1e6:,.1f} MB)  timer: {timer}")
        print(f"workload: {workload(log, lines, None)}")
        print("cluster: scheduler and workers on this machine (1 thread each), 127.0.0.1\n")
        print(render_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
