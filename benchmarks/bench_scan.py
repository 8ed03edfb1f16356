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

    python benchmarks/bench_scan.py                      # 2 M generated lines
    python benchmarks/bench_scan.py /var/log/squid/access.log --repeat 3
    python benchmarks/bench_scan.py --lines 500000 --json
    python benchmarks/bench_scan.py --memory-check       # + scan of 10 M lines, RSS target
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GENERATOR = HERE / "gen_squid_log.py"
GNU_TIME = "/usr/bin/time"

SCAN_RATIO_TARGET = 0.5  # scan lines/s must be at least half of awk's
RSS_TARGET_MB = 300.0  # peak RSS of a 10 M-line scan
MEMORY_CHECK_LINES = 10_000_000
STDERR_TAIL = 1500  # characters of stderr kept for a failed row


@dataclass
class Run:
    seconds: float
    max_rss_kb: int | None
    exit_code: int
    stderr_tail: str = ""
    timed_out: bool = False
    stdout_head: str = ""


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


def _gnu_time_usable() -> bool:
    if not os.access(GNU_TIME, os.X_OK):
        return False
    try:
        p = subprocess.run(
            [GNU_TIME, "-f", "%e %M", "true"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return p.returncode == 0 and len(p.stderr.split()) == 2


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - STDERR_TAIL))
            return fh.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _killpg(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def run_measured(
    cmd: list[str],
    *,
    timer: str,
    workdir: Path,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    keep_stdout: bool = False,
) -> Run:
    """Run ``cmd`` (stdout to /dev/null), return wall time, its own peak RSS and exit code."""
    err_path = workdir / "stderr.txt"
    out_path = workdir / "stdout.txt"
    rss_path = workdir / "time.txt"
    full = [GNU_TIME, "-f", "%e %M", "-o", str(rss_path), *cmd] if timer == "gnu-time" else cmd
    rss_path.unlink(missing_ok=True)
    timed_out = False
    with (
        open(err_path, "wb") as err,
        open(out_path if keep_stdout else os.devnull, "wb") as out,
    ):
        t0 = time.perf_counter()
        try:
            proc = subprocess.Popen(full, stdout=out, stderr=err, env=env, start_new_session=True)
        except OSError as exc:
            return Run(0.0, None, 127, f"cannot start {cmd[0]!r}: {exc}")
        killer = None
        if timeout:

            def _expire() -> None:
                nonlocal timed_out
                timed_out = True
                _killpg(proc.pid)

            killer = threading.Timer(timeout, _expire)
            killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            if killer:
                killer.cancel()
        seconds = time.perf_counter() - t0
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    rss_kb: int | None = None
    if timer == "gnu-time":
        # "%e %M" is the last line; GNU time puts "Command exited with non-zero status N"
        # or "Command terminated by signal N" before it.
        try:
            last = rss_path.read_text().strip().splitlines()[-1].split()
            rss_kb = int(last[1])
        except (OSError, IndexError, ValueError):
            rss_kb = None
    else:
        # Caveat: Linux keeps the pre-exec high-water mark, so a child forked from this
        # Python process never reports less than our own RSS at fork time (~20-30 MB).
        rss_kb = usage.ru_maxrss // (1024 if sys.platform == "darwin" else 1)
    tail = _tail(err_path) if code != 0 or timed_out else ""
    if timed_out:
        tail = (tail + f"\n[killed after {timeout:.0f} s timeout]").strip()
    head = ""
    if keep_stdout:
        with open(out_path, "rb") as fh:
            head = fh.read(2000).decode("utf-8", "replace").strip()
    return Run(seconds, rss_kb, code, tail, timed_out, head)


def measure(
    tool: str,
    cmd: list[str],
    *,
    lines: int,
    nbytes: int,
    repeat: int,
    timer: str,
    workdir: Path,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    before_each=None,
    ok_codes: tuple[int, ...] = (0,),
    keep_stdout: bool = False,
) -> Row:
    row = Row(tool=tool, command=shlex.join(cmd), lines=lines, bytes=nbytes)
    best: Run | None = None
    peak = 0
    for _ in range(max(1, repeat)):
        if before_each:
            before_each()
        r = run_measured(
            cmd, timer=timer, workdir=workdir, env=env, timeout=timeout, keep_stdout=keep_stdout
        )
        if r.exit_code not in ok_codes or r.timed_out:
            row.ok = False
            row.exit_code = r.exit_code
            row.stderr_tail = r.stderr_tail
            row.seconds = round(r.seconds, 3)
            if r.max_rss_kb:
                row.peak_rss_mb = round(r.max_rss_kb / 1024, 1)
            return row
        row.runs.append(round(r.seconds, 3))
        peak = max(peak, r.max_rss_kb or 0)
        if best is None or r.seconds < best.seconds:
            best = r
    assert best is not None
    row.ok = True
    row.exit_code = best.exit_code
    row.stdout_head = best.stdout_head
    row.seconds = round(best.seconds, 3)
    if best.seconds > 0:
        row.lines_per_s = round(lines / best.seconds)
        row.mb_per_s = round(nbytes / 1e6 / best.seconds, 1)
    row.peak_rss_mb = round(peak / 1024, 1) if peak else None
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
    truth = path.with_name(path.name + ".truth.json")
    if truth.exists():
        try:
            t = json.loads(truth.read_text())
            return int(t["lines"]), int(t["uncompressed_bytes"])
        except (ValueError, KeyError, TypeError):
            pass
    return count_lines(path)


def generate(out: Path, lines: int, seed: int, *, timer: str, workdir: Path, repeat=1) -> Row:
    cmd = [sys.executable, str(GENERATOR), "-o", str(out), "--lines", str(lines)]
    cmd += ["--seed", str(seed), "-q"]
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


SUMMARY_RE = re.compile(r"(\d+) records read, (\d+) malformed, (\d+) LLM observations")


def check_scan(row: Row, log: Path) -> dict | None:
    """Compare the scan's summary line with the generator's truth file (when both exist)."""
    truth_file = log.with_name(log.name + ".truth.json")
    m = SUMMARY_RE.search(row.stdout_head or "")
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


def warm_cache(path: Path) -> None:
    with open(path, "rb") as fh:
        while fh.read(1 << 24):
            pass


def apiwatch_command(override: str | None) -> tuple[list[str], dict[str, str]]:
    """The apiwatch command line and environment: --apiwatch, PATH, else python -m monitor."""
    env = dict(os.environ)
    if override:
        return shlex.split(override), env
    exe = shutil.which("apiwatch")
    if exe:
        return [exe], env
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return [sys.executable, "-m", "monitor"], env


# --------------------------------------------------------------------------- report


def _fmt(v, spec: str, dash: str = "-") -> str:
    return dash if v is None else format(v, spec)


def render_table(rows: list[Row]) -> str:
    head = ("tool", "lines", "seconds", "lines/s", "MB/s", "peak RSS MB", "vs awk")
    body = []
    for r in rows:
        if r.ok:
            body.append(
                (
                    r.tool,
                    f"{r.lines:,}",
                    _fmt(r.seconds, ".2f"),
                    _fmt(r.lines_per_s, ",.0f"),
                    _fmt(r.mb_per_s, ",.1f"),
                    _fmt(r.peak_rss_mb, ",.1f"),
                    _fmt(r.ratio_to_awk, ".2f"),
                )
            )
        else:
            body.append((r.tool, f"{r.lines:,}", f"FAILED (exit {r.exit_code})", "", "", "", ""))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=False)]
    fmt_row = lambda cells: "  ".join(  # noqa: E731
        str(c).ljust(w) if i == 0 else str(c).rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )
    out = [fmt_row(head), fmt_row(["-" * w for w in widths])]
    out += [fmt_row(b) for b in body]
    for r in rows:
        if not r.ok:
            out.append(f"\n{r.tool} failed, exit {r.exit_code}: {r.command}")
            if r.stderr_tail:
                out += ["  | " + ln for ln in r.stderr_tail.splitlines()[-12:]]
    return "\n".join(out)


def add_ratios(rows: list[Row]) -> None:
    awk = next((r for r in rows if r.tool.startswith("awk") and r.ok), None)
    if not awk or not awk.lines_per_s:
        return
    for r in rows:
        if r.ok and r.lines_per_s and r.tool.startswith(("awk", "apiwatch")):
            r.ratio_to_awk = round(r.lines_per_s / awk.lines_per_s, 3)


# --------------------------------------------------------------------------- main


def say(*parts: object) -> None:
    """Progress goes to stderr so that --json output stays clean."""
    print(*parts, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Benchmark apiwatch parse/scan against awk|sort|uniq on a Squid log."
    )
    ap.add_argument("log", nargs="?", type=Path, help="Squid native access.log (.gz allowed)")
    ap.add_argument("--lines", type=int, default=2_000_000, help="lines to generate (no log)")
    ap.add_argument("--seed", type=int, default=1, help="generator seed")
    ap.add_argument("--repeat", type=int, default=1, help="runs per command; best time kept")
    ap.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    ap.add_argument("--country", default="CN", help="--egress-country for the scan row")
    ap.add_argument(
        "--apiwatch",
        help="apiwatch command line (default: apiwatch on PATH, else python -m monitor)",
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

    timer = args.timer
    if timer == "auto":
        timer = "gnu-time" if _gnu_time_usable() else "wait4"
    elif timer == "gnu-time" and not _gnu_time_usable():
        ap.error(f"{GNU_TIME} is not GNU time (apt-get install time) -- use --timer wait4")
    ok_codes = tuple(int(c) for c in args.ok_exit.split(",") if c.strip())
    only = {s.strip() for s in args.only.split(",")} if args.only else {"awk", "parse", "scan"}

    tmp = Path(tempfile.mkdtemp(prefix="apiwatch-bench-", dir=args.tmpdir))
    result: dict = {"timer": timer, "targets": {}}
    rows: list[Row] = []
    failed_targets: list[str] = []
    try:
        aw_cmd, aw_env = apiwatch_command(args.apiwatch)
        result["apiwatch"] = shlex.join(aw_cmd)

        log = args.log
        if log is None:
            log = tmp / "access.log"
            say(f"generating {args.lines:,} lines into {log} ...")
            gen_row = generate(log, args.lines, args.seed, timer=timer, workdir=tmp)
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
        if scan and awk and awk.ok:
            met = bool(scan.ok and scan.ratio_to_awk and scan.ratio_to_awk >= SCAN_RATIO_TARGET)
            result["targets"]["scan_vs_awk"] = {
                "target_ratio": SCAN_RATIO_TARGET,
                "ratio": scan.ratio_to_awk,
                "met": met,
            }
            if not met:
                failed_targets.append("scan_vs_awk")

        if scan:
            result["scan_check"] = check_scan(scan, log)

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
                    print(f"target {name}: {state} ({got}; need >= {t['target_ratio']}x)")
                else:
                    got = "failed" if t["peak_rss_mb"] is None else f"{t['peak_rss_mb']} MB"
                    print(f"target {name}: {state} ({got}; need < {t['target_mb']:.0f} MB)")
    finally:
        if args.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 1 if (args.strict and failed_targets) else 0


def _fresh_db(db: Path):
    def clean() -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(str(db) + suffix).unlink(missing_ok=True)

    return clean


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
                before_each=_fresh_db(db),
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
        before_each=_fresh_db(db),
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
