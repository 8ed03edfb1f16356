#!/usr/bin/env python3
"""Benchmark ``apiwatch reevaluate`` on 1 M stored observations.

A Squid native log of LLM traffic only (2,000 clients on two sites, users, four providers,
a week) is scanned once with settings A (the Shanghai site declared DE); then the site's
country is corrected to CN and ``apiwatch reevaluate`` is timed as a command (process start
to exit). Target: under 60 s. The scan time is printed beside it, measured in the same run:
a fresh scan of the same log is what re-evaluation replaces.

Usage::

    python benchmarks/bench_reevaluate.py                        # 1 M observations
    python benchmarks/bench_reevaluate.py --observations 200000 --json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, remove_db  # noqa: E402

TARGET_SECONDS = 60.0
HOSTS = [
    ("api.openai.com", "104.18.7.192"),
    ("api.anthropic.com", "160.79.104.10"),
    ("generativelanguage.googleapis.com", "142.250.72.10"),
    ("api.mistral.ai", "104.18.32.47"),
]
START = 1795392000  # 2026-11-23T00:00:00Z
CONFIG = """[sites.shanghai]
client_cidrs = ["10.20.0.0/16"]
country = "{country}"

[sites.frankfurt]
client_cidrs = ["10.30.0.0/16"]
country = "DE"
"""


def write_log(path: Path, n: int) -> None:
    step = 7 * 86400 / n
    with path.open("w") as out:
        for i in range(n):
            c = i % 2000
            client = f"10.{20 if c < 1000 else 30}.{c // 250}.{c % 250 + 1}"
            host, ip = HOSTS[(i // 7) % len(HOSTS)]
            out.write(
                f"{START + i * step:.3f}    120 {client} TCP_TUNNEL/200 {900 + i % 500} "
                f"CONNECT {host}:443 user{c:04d} HIER_DIRECT/{ip} -\n"
            )


def apiwatch(db: Path, cfg: Path, *args: str) -> tuple[float, str]:
    started = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "monitor", "--db", str(db), "--config", str(cfg), *args],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if res.returncode not in (0, 3):
        sys.exit(f"apiwatch {' '.join(args)} failed ({res.returncode}): {res.stderr[-2000:]}")
    return time.perf_counter() - started, res.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--observations", type=int, default=1_000_000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/apiwatch-bench-reevaluate"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    log, db, cfg = args.dir / "access.log", args.dir / "bench.db", args.dir / "config.toml"
    remove_db(db)
    write_log(log, args.observations)
    cfg.write_text(CONFIG.format(country="DE"))
    scan_s, _ = apiwatch(db, cfg, "scan", str(log), "--json")
    cfg.write_text(CONFIG.format(country="CN"))
    re_s, out = apiwatch(db, cfg, "reevaluate", "--json")
    result = json.loads(out)
    figures = {
        "observations": result["observations"], "changed": result["changed"],
        "scan_seconds": round(scan_s, 1), "reevaluate_seconds": round(re_s, 1),
        "reevaluate_per_second": round(result["observations"] / re_s),
        "findings_new": len(result["findings_new"]),
        "findings_superseded": len(result["findings_superseded"]),
        "target_seconds": TARGET_SECONDS,
    }  # fmt: skip
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:<24} {value}")
    return 0 if re_s < TARGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
