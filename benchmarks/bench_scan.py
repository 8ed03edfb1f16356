#!/usr/bin/env python3
"""Benchmark apiwatch on a Squid access.log against a shell baseline, in one run.

Rows (each measured for wall time and the peak RSS of that command alone):

* ``awk | sort | uniq`` -- the peer: ``awk '{print $7}' FILE | LC_ALL=C sort | uniq -c``
* ``apiwatch parse``    -- ``apiwatch parse FILE --json > /dev/null`` (collector only)
* ``apiwatch scan``     -- ``apiwatch --db DB scan FILE --egress-country CN`` (parse, catalogue
  lookup, geolocation, policy evaluation, SQLite store)

Peak RSS comes from GNU ``/usr/bin/time -f '%e %M'`` when it is installed (Debian package
``time``), otherwise from ``os.wait4`` on the child (``ru_maxrss`` of that child and its
waited-for descendants only). For a pipeline that is the largest single process, not the sum.

Without a log file a deterministic one is generated into a temporary directory with
``gen_squid_log.py`` (and timed as an extra row). A missing or crashing apiwatch never fails
the benchmark: its row is reported as failed with the exit code and the tail of stderr.

Usage::

    python benchmarks/bench_scan.py                      # 2 M generated lines, 3 % and 25 % LLM
    python benchmarks/bench_scan.py --llm-share 0.25     # one developer-heavy workload
    python benchmarks/bench_scan.py /var/log/squid/access.log --repeat 3
    python benchmarks/bench_scan.py --lines 500000 --json
    python benchmarks/bench_scan.py --memory-check       # + scan of 10 M lines, RSS target
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    GNU_TIME,
    SCAN_SUMMARY_RE,
    apiwatch_command,
    best_of,
    failed_cells,
    failure_lines,
    fmt,
    format_table,
    fresh_db,
    kb_to_mb,
    parse_only,
    pick_timer,
    rates,
    say,
    scratch_dir,
    truth_path,
    warm_cache,
)

HERE = Path(__file__).resolve().parent
GENERATOR = HERE / "gen_squid_log.py"

#: (share of LLM lines, scan lines/s as a share of awk's) the issue asks for (issue 15): at
#: least awk's speed at 3 % LLM lines, half of it at 25 %
SCAN_RATIO_TARGETS = ((0.03, 1.0), (0.25, 0.5))
RSS_TARGET_MB = 300.0  # peak RSS of a 10 M-line scan
MEMORY_CHECK_LINES = 10_000_000


def scan_ratio_target(llm_share: float) -> float:
    """The scan's target for a share of LLM lines: :data:`SCAN_RATIO_TARGETS`, linear
    between its points and flat beyond them."""
    (lo, at_lo), (hi, at_hi) = SCAN_RATIO_TARGETS
    share = min(max(llm_share, lo), hi)
    return round(at_lo + (at_hi - at_lo) * (share - lo) / (hi - lo), 2)


@dataclass
class Row:
    tool: str
    command: str
    lines: int
    bytes: int
    ok: bool = False
    seconds: float | None = None  # best of the runs
    lines_per_s: float | None = None
    mb_per_s: float | None = None
    peak_rss_mb: float | None = None  # largest over the runs
    ratio_to_awk: float | None = None
    exit_code: int | None = None
    stderr_tail: str = ""
    stdout_head: str = ""  # what the command printed (only kept for the scan summary)
    runs: list[float] = field(default_factory=list)


# --------------------------------------------------------------------------- measuring


def measure(
    tool: str, cmd: list[str], *, lines: int, nbytes: int, keep_stdout: bool = False, **kw
) -> Row:
    """Best wall time of ``repeat`` runs; peak RSS is the largest of them.

    ``kw``: ``repeat``, ``timer``, ``workdir`` and optionally ``env``, ``timeout``,
    ``before_each``, ``ok_codes`` (see ``common.best_of``). ``keep_stdout`` keeps the head of
    what the command prints in ``Row.stdout_head``.
    """
    row = Row(tool=tool, command=shlex.join(cmd), lines=lines, bytes=nbytes)
    note = "[killed after {timeout:.0f} s timeout]"
    b = best_of(cmd, keep_head=keep_stdout, timeout_note=note, **kw)
    row.runs = b.runs
    row.exit_code = b.run.exit_code
    row.seconds = round(b.run.seconds, 3)
    if not b.ok:
        row.stderr_tail = b.run.stderr_tail
        row.peak_rss_mb = kb_to_mb(b.run.max_rss_kb)
        return row
    row.ok = True
    row.stdout_head = b.run.stdout_head
    if b.run.seconds > 0:
        row.lines_per_s, row.mb_per_s = rates(lines, nbytes, b.run.seconds)
    row.peak_rss_mb = kb_to_mb(b.peak_rss_kb)
    return row


# --------------------------------------------------------------------------- inputs


def count_lines(path: Path) -> tuple[int, int]:
    """(lines, uncompressed bytes) of a plain or gzip file."""
    opener = _open_gz if path.suffix == ".gz" else open
    n = size = 0
    with opener(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            n += chunk.count(b"\n")
            size += len(chunk)
    return n, size


def _open_gz(path, mode):
    import gzip

    return gzip.open(path, mode)


def log_facts(path: Path) -> tuple[int, int]:
    """Lines and uncompressed bytes, from the generator's truth file when it is there."""
    truth = truth_path(path)
    if truth.exists():
        try:
            t = json.loads(truth.read_text())
            return int(t["lines"]), int(t["uncompressed_bytes"])
        except (ValueError, KeyError, TypeError):
            pass
    return count_lines(path)


def generate(out: Path, lines: int, seed: int, *, timer: str, workdir: Path, repeat=1,
             llm_share: float = 0.03) -> Row:  # fmt: skip
    cmd = [sys.executable, str(GENERATOR), "-o", str(out), "--lines", str(lines)]
    cmd += ["--seed", str(seed), "--llm-share", str(llm_share), "-q"]
    row = measure(
        "gen_squid_log.py (write)",
        cmd,
        lines=lines,
        nbytes=0,
        repeat=repeat,
        timer=timer,
        workdir=workdir,
    )
    if row.ok and out.exists() and row.seconds:
        _, nbytes = log_facts(out)
        row.bytes = nbytes
        row.mb_per_s = round(nbytes / 1e6 / row.seconds, 1)
    return row


def llm_lines_of(log: Path, check: dict | None) -> int | None:
    """How many LLM lines the log holds: from the generator's truth, else from the scan's
    own count (None: neither is there)."""
    truth_file = truth_path(log)
    if truth_file.exists():
        return int(json.loads(truth_file.read_text())["llm_lines"])
    return check["scan"]["llm_lines"] if check else None


def workload(log: Path, lines: int, check: dict | None) -> str:
    """The share of LLM lines, which decides what a scan costs."""
    llm = llm_lines_of(log, check)
    if llm is None:
        return "share of LLM lines unknown (no generator truth, no scan row)"
    return f"{llm:,} LLM lines = {100 * llm / max(lines, 1):.1f} % of {lines:,}"


def check_scan(row: Row, log: Path) -> dict | None:
    """Compare the scan's summary line with the generator's truth file (when both exist)."""
    truth_file = truth_path(log)
    m = SCAN_SUMMARY_RE.search(row.stdout_head or "")
    if not (row.ok and m and truth_file.exists()):
        return None
    truth = json.loads(truth_file.read_text())
    got = {"records": int(m[1]), "malformed": int(m[2]), "llm_lines": int(m[3])}
    glued = truth.get("malformed_by_kind", {}).get("glued", 0)
    want = {
        # a parser may recover the two records of a glued line: both counts are right
        "records": [truth["well_formed"], truth["well_formed"] + 2 * glued],
        "malformed": truth["malformed"],
        "llm_lines": truth["llm_lines"],
    }
    match = got["llm_lines"] == want["llm_lines"] and got["malformed"] == want["malformed"]
    match = match and want["records"][0] <= got["records"] <= want["records"][1]
    return {"scan": got, "truth": want, "match": match}


# --------------------------------------------------------------------------- report


def render_table(rows: list[Row]) -> str:
    head = ("tool", "lines", "seconds", "lines/s", "MB/s", "peak RSS MB", "vs awk")
    body = []
    for r in rows:
        if r.ok:
            body.append(
                (
                    r.tool,
                    f"{r.lines:,}",
                    fmt(r.seconds, ".2f"),
                    fmt(r.lines_per_s, ",.0f"),
                    fmt(r.mb_per_s, ",.1f"),
                    fmt(r.peak_rss_mb, ",.1f"),
                    fmt(r.ratio_to_awk, ".2f"),
                )
            )
        else:
            body.append(failed_cells(r.tool, r.lines, r.exit_code, len(head)))
    out = format_table(head, body)
    for r in rows:
        if not r.ok:
            out += failure_lines(r.tool, r.exit_code, r.command, r.stderr_tail)
    return "\n".join(out)


def add_ratios(rows: list[Row]) -> None:
    awk = next((r for r in rows if r.tool.startswith("awk") and r.ok), None)
    if not awk or not awk.lines_per_s:
        return
    for r in rows:
        if r.ok and r.lines_per_s and r.tool.startswith(("awk", "apiwatch")):
            r.ratio_to_awk = round(r.lines_per_s / awk.lines_per_s, 3)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Benchmark apiwatch parse/scan against awk|sort|uniq on a Squid log."
    )
    ap.add_argument("log", nargs="?", type=Path, help="Squid native access.log (.gz allowed)")
    ap.add_argument("--lines", type=int, default=2_000_000, help="lines to generate (no log)")
    ap.add_argument("--seed", type=int, default=1, help="generator seed")
    ap.add_argument(
        "--llm-share",
        help="share(s) of LLM lines in the generated log, comma-separated: each is its own "
        "workload and table [default without LOG: 0.03,0.25, a typical and a developer-heavy "
        "proxy]",
    )
    ap.add_argument("--repeat", type=int, default=1, help="runs per command; best time kept")
    ap.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    ap.add_argument("--country", default="CN", help="--egress-country for the scan row")
    ap.add_argument(
        "--apiwatch",
        help="apiwatch command line (default: the apiwatch beside this Python, else on PATH, else python -m monitor)",
    )
    ap.add_argument(
        "--ok-exit",
        default="0",
        help="comma-separated exit codes that count as success for apiwatch (default 0)",
    )
    ap.add_argument("--only", help="comma-separated subset of rows: awk,parse,scan")
    ap.add_argument(
        "--timer", choices=("auto", "gnu-time", "wait4"), default="auto", help="RSS source"
    )
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per command")
    ap.add_argument("--tmpdir", type=Path, help="where generated logs and the DB go")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--no-warm", action="store_true", help="do not pre-read the log")
    ap.add_argument(
        "--memory-check",
        action="store_true",
        help=f"also scan a {MEMORY_CHECK_LINES:,}-line log and check peak RSS < target",
    )
    ap.add_argument("--memory-log", type=Path, help="log for --memory-check (else generated)")
    ap.add_argument("--memory-lines", type=int, default=MEMORY_CHECK_LINES)
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args(argv)
    try:
        given = args.llm_share or ("0.03" if args.log else "0.03,0.25")
        shares = [float(s) for s in given.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--llm-share: {args.llm_share!r} is not a list of numbers")
    if len(shares) > 1:  # one workload after the other, each with its own peer run
        if args.log:
            ap.error("a LOG has the share of LLM lines it has: give one --llm-share or none")
        rest = list(sys.argv[1:] if argv is None else argv)
        codes = [main([*rest, "--llm-share", str(s)]) for s in shares]
        return max(codes)
    args.llm_share_given = args.llm_share is not None
    args.llm_share = shares[0]

    timer = pick_timer(args.timer)
    if timer is None:
        ap.error(f"{GNU_TIME} is not GNU time (apt-get install time) -- use --timer wait4")
    ok_codes = tuple(int(c) for c in args.ok_exit.split(",") if c.strip())
    only = parse_only(args.only, {"awk", "parse", "scan"})

    result: dict = {"timer": timer, "targets": {}}
    rows: list[Row] = []
    failed_targets: list[str] = []
    with scratch_dir("apiwatch-bench-", args.tmpdir, args.keep) as tmp:
        aw_cmd, aw_env = apiwatch_command(args.apiwatch)
        result["apiwatch"] = shlex.join(aw_cmd)

        log = args.log
        if log is None:
            log = tmp / "access.log"
            say(f"generating {args.lines:,} lines into {log} ...")
            gen_row = generate(
                log, args.lines, args.seed, timer=timer, workdir=tmp, llm_share=args.llm_share
            )
            rows.append(gen_row)
            if not gen_row.ok:
                say(render_table(rows))
                return 2
        elif not log.exists():
            ap.error(f"{log}: no such file")
        lines, nbytes = log_facts(log)
        result.update(log=str(log), lines=lines, bytes=nbytes)
        if not args.no_warm:
            warm_cache(log)

        rows += bench_file(
            log, lines, nbytes, args, timer, tmp, aw_cmd, aw_env, ok_codes, only, say
        )
        add_ratios(rows)

        scan = next((r for r in rows if r.tool == "apiwatch scan"), None)
        awk = next((r for r in rows if r.tool.startswith("awk")), None)
        if scan:
            result["scan_check"] = check_scan(scan, log)
        if scan and awk and awk.ok:
            # a LOG given without --llm-share is held to the target of the share it has
            llm = None if args.llm_share_given else llm_lines_of(log, result.get("scan_check"))
            share = args.llm_share if llm is None else llm / max(lines, 1)
            target = scan_ratio_target(share)
            met = bool(scan.ok and scan.ratio_to_awk and scan.ratio_to_awk >= target)
            result["targets"]["scan_vs_awk"] = {
                "target_ratio": target,
                "ratio": scan.ratio_to_awk,
                "met": met,
            }
            if not met:
                failed_targets.append("scan_vs_awk")

        if args.memory_check:
            mem = memory_check(args, timer, tmp, aw_cmd, aw_env, ok_codes, say)
            awk_ok = next((r for r in rows if r.tool.startswith("awk") and r.ok), None)
            mem_lps = mem["row"]["lines_per_s"]
            if awk_ok and awk_ok.lines_per_s and mem_lps:
                mem["row"]["ratio_to_awk"] = round(mem_lps / awk_ok.lines_per_s, 3)
            result["memory_check"] = mem
            result["targets"]["scan_peak_rss"] = {
                "target_mb": RSS_TARGET_MB,
                "peak_rss_mb": mem["row"]["peak_rss_mb"],
                "met": mem["met"],
            }
            if not mem["met"]:
                failed_targets.append("scan_peak_rss")

        result["rows"] = [asdict(r) for r in rows]
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(f"log: {log}  ({lines:,} lines, {nbytes / 1e6:,.1f} MB)  timer: {timer}")
            print(f"workload: {workload(log, lines, result.get('scan_check'))}")
            print(f"apiwatch: {result['apiwatch']}\n")
            print(render_table(rows))
            if result.get("scan_check"):
                c = result["scan_check"]
                verdict = "matches" if c["match"] else "DIFFERS from"
                print(f"\nscan summary {verdict} the generator truth: {c['scan']} vs {c['truth']}")
            if "memory_check" in result:
                m = result["memory_check"]
                print(f"\nmemory check ({m['lines']:,} lines, {m['log']}):")
                print(render_table([Row(**m["row"])]))
                if m.get("scan_check"):
                    c = m["scan_check"]
                    verdict = "matches" if c["match"] else "DIFFERS from"
                    print(
                        f"scan summary {verdict} the generator truth: {c['scan']} vs {c['truth']}"
                    )
            print()
            for name, t in result["targets"].items():
                state = "met" if t["met"] else "NOT met"
                if name == "scan_vs_awk":
                    got = "failed" if t["ratio"] is None else f"{t['ratio']:.2f}x awk"
                    print(f"target {name}: {state} ({got}; need >= {t['target_ratio']:g}x)")
                else:
                    got = "failed" if t["peak_rss_mb"] is None else f"{t['peak_rss_mb']} MB"
                    print(f"target {name}: {state} ({got}; need < {t['target_mb']:.0f} MB)")
    return 1 if (args.strict and failed_targets) else 0


def bench_file(log, lines, nbytes, args, timer, tmp, aw_cmd, aw_env, ok_codes, only, say):
    rows: list[Row] = []
    common = dict(lines=lines, nbytes=nbytes, repeat=args.repeat, timer=timer, workdir=tmp)
    if "awk" in only:
        reader = (
            "gzip -dc \"$1\" | awk '{print $7}'"
            if log.suffix == ".gz"
            else ("awk '{print $7}' \"$1\"")
        )
        script = f"{reader} | LC_ALL=C sort | uniq -c > /dev/null"
        say("running awk | sort | uniq ...")
        rows.append(measure("awk | sort | uniq", ["sh", "-c", script, "sh", str(log)], **common))
    if "parse" in only:
        say("running apiwatch parse ...")
        cmd = [*aw_cmd, "parse", str(log), "--json"]
        rows.append(
            measure(
                "apiwatch parse",
                cmd,
                env=aw_env,
                timeout=args.timeout,
                ok_codes=ok_codes,
                **common,
            )
        )
    if "scan" in only:
        say("running apiwatch scan ...")
        db = tmp / "bench.db"
        cmd = [*aw_cmd, "--db", str(db), "scan", str(log), "--egress-country", args.country]
        rows.append(
            measure(
                "apiwatch scan",
                cmd,
                env=aw_env,
                timeout=args.timeout,
                before_each=fresh_db(db),
                ok_codes=ok_codes,
                keep_stdout=True,
                **common,
            )
        )
    return rows


def memory_check(args, timer, tmp, aw_cmd, aw_env, ok_codes, say) -> dict:
    log = args.memory_log
    gen_row = None
    if log is None:
        log = tmp / f"access-{args.memory_lines}.log"
        say(f"memory check: generating {args.memory_lines:,} lines into {log} ...")
        gen_row = generate(log, args.memory_lines, args.seed, timer=timer, workdir=tmp)
    lines, nbytes = log_facts(log) if log.exists() else (0, 0)
    if not args.no_warm and log.exists():
        warm_cache(log)
    db = tmp / "memcheck.db"
    cmd = [*aw_cmd, "--db", str(db), "scan", str(log), "--egress-country", args.country]
    say("memory check: running apiwatch scan ...")
    row = measure(
        "apiwatch scan",
        cmd,
        lines=lines,
        nbytes=nbytes,
        repeat=1,
        timer=timer,
        workdir=tmp,
        env=aw_env,
        timeout=args.timeout,
        before_each=fresh_db(db),
        ok_codes=ok_codes,
        keep_stdout=True,
    )
    met = bool(row.ok and row.peak_rss_mb is not None and row.peak_rss_mb < RSS_TARGET_MB)
    check = check_scan(row, log) if log.exists() else None
    if args.memory_log is None:
        log.unlink(missing_ok=True)  # 1+ GB; do not keep it around
    return {
        "log": str(log),
        "lines": lines,
        "target_mb": RSS_TARGET_MB,
        "met": met,
        "scan_check": check,
        "row": asdict(row),
        "generator": asdict(gen_row) if gen_row else None,
    }


if __name__ == "__main__":
    sys.exit(main())
