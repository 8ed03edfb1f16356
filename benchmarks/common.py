"""Helpers shared by the benchmark scripts in this folder (not a benchmark itself).

The scripts run as ``python benchmarks/X.py``, so this folder is ``sys.path[0]`` and they
import this module as ``common`` (each one also puts its own folder first on ``sys.path``,
so that importing them from elsewhere works too).

* measuring a child: :func:`run_measured` (one run: wall time, its own peak RSS from GNU
  ``/usr/bin/time -f '%e %M'`` or ``os.wait4``, exit code, stderr tail) and
  :func:`best_of` (the fastest of N runs, the largest peak RSS);
* choosing that RSS source: :func:`gnu_time_usable`, :func:`pick_timer`;
* finding apiwatch: :func:`apiwatch_command`;
* plain-text tables: :func:`format_table`, :func:`failure_lines`, :func:`fmt`;
* small chores: :func:`say`, :func:`scratch_dir`, :func:`warm_cache`, :func:`fresh_db`,
  :func:`remove_db`, :func:`truth_path`, :func:`ensure_parent`, :func:`parse_only`,
  :func:`rates`, :func:`kb_to_mb`.
"""

from __future__ import annotations

import contextlib
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GNU_TIME = "/usr/bin/time"
STDERR_TAIL = 1500  # characters of stderr kept for a failed run

# The summary line ``apiwatch scan`` prints.
SCAN_SUMMARY_RE = re.compile(r"(\d+) records read, (\d+) malformed, (\d+) LLM observations")


# --------------------------------------------------------------------------- measuring


@dataclass
class Run:
    """One run of a command."""

    seconds: float
    max_rss_kb: int | None
    exit_code: int
    stderr_tail: str = ""  # only for a failed or timed-out run
    timed_out: bool = False
    stdout_head: str = ""  # only with ``keep_head``


@dataclass
class Best:
    """What :func:`best_of` found: the fastest successful run, or the first failed one."""

    ok: bool
    run: Run  # the fastest run when ``ok``, else the run that failed
    runs: list[float] = field(default_factory=list)  # seconds (3 decimals) of the good runs
    peak_rss_kb: int = 0  # largest over the good runs (0: unknown)


def gnu_time_usable() -> bool:
    """True when ``/usr/bin/time`` is GNU time (understands ``-f '%e %M'``)."""
    if not os.access(GNU_TIME, os.X_OK):
        return False
    try:
        p = subprocess.run(
            [GNU_TIME, "-f", "%e %M", "true"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return p.returncode == 0 and len(p.stderr.split()) == 2


def pick_timer(choice: str) -> str | None:
    """``--timer`` value to use: ``auto`` picks ``gnu-time`` when usable, else ``wait4``.

    None when ``gnu-time`` was asked for and is not usable (the caller reports it).
    """
    if choice == "auto":
        return "gnu-time" if gnu_time_usable() else "wait4"
    if choice == "gnu-time" and not gnu_time_usable():
        return None
    return choice


def tail(path: Path, limit: int = STDERR_TAIL) -> str:
    """The last ``limit`` bytes of a file as text ("" when it cannot be read)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - limit))
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
    stdout: Path | None = None,
    keep_head: bool = False,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    timeout_note: str = "[killed after {timeout:.0f} s]",
) -> Run:
    """Run ``cmd`` once: wall time, its own peak RSS and exit code.

    ``timer`` is ``gnu-time`` (RSS from ``/usr/bin/time -f '%e %M'``) or ``wait4``
    (``ru_maxrss`` of the child and its waited-for descendants). stdout goes to ``stdout``,
    else to ``workdir/stdout.txt`` with ``keep_head`` (its first 2,000 bytes are returned),
    else to /dev/null; stderr to ``workdir/stderr.txt``, whose tail is returned when the
    command fails. After ``timeout`` seconds the child's process group is killed and
    ``timeout_note`` is appended to the tail.
    """
    err_path = workdir / "stderr.txt"
    rss_path = workdir / "time.txt"
    if stdout is None and keep_head:
        stdout = workdir / "stdout.txt"
    full = [GNU_TIME, "-f", "%e %M", "-o", str(rss_path), *cmd] if timer == "gnu-time" else cmd
    rss_path.unlink(missing_ok=True)
    timed_out = False
    with open(err_path, "wb") as err, open(stdout or os.devnull, "wb") as out:
        t0 = time.perf_counter()
        try:
            proc = subprocess.Popen(full, stdout=out, stderr=err, env=env, start_new_session=True)
        except OSError as exc:
            return Run(0.0, None, 127, f"cannot start {cmd[0]!r}: {exc}")
        killer = None
        if timeout:

            def expire() -> None:
                nonlocal timed_out
                timed_out = True
                _killpg(proc.pid)

            killer = threading.Timer(timeout, expire)
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
            rss_kb = int(rss_path.read_text().strip().splitlines()[-1].split()[1])
        except (OSError, IndexError, ValueError):
            rss_kb = None
    else:
        # Caveat: Linux keeps the pre-exec high-water mark, so a child forked from this
        # Python process never reports less than our own RSS at fork time (~20-30 MB).
        rss_kb = usage.ru_maxrss // (1024 if sys.platform == "darwin" else 1)
    err_tail = tail(err_path) if code != 0 or timed_out else ""
    if timed_out:
        err_tail = (err_tail + "\n" + timeout_note.format(timeout=timeout)).strip()
    head = ""
    if keep_head and stdout is not None:
        with open(stdout, "rb") as fh:
            head = fh.read(2000).decode("utf-8", "replace").strip()
    return Run(seconds, rss_kb, code, err_tail, timed_out, head)


def best_of(
    cmd: list[str],
    *,
    repeat: int,
    before_each: Callable[[], None] | None = None,
    ok_codes: tuple[int, ...] = (0,),
    **run_kw,
) -> Best:
    """Run ``cmd`` ``repeat`` times (at least once) with :func:`run_measured` (``run_kw``).

    ``before_each`` runs before every run (e.g. :func:`fresh_db`). Stops at the first run
    whose exit code is not in ``ok_codes`` or that timed out.
    """
    runs: list[float] = []
    best: Run | None = None
    peak = 0
    for _ in range(max(1, repeat)):
        if before_each:
            before_each()
        r = run_measured(cmd, **run_kw)
        if r.exit_code not in ok_codes or r.timed_out:
            return Best(False, r, runs, peak)
        runs.append(round(r.seconds, 3))
        peak = max(peak, r.max_rss_kb or 0)
        if best is None or r.seconds < best.seconds:
            best = r
    assert best is not None
    return Best(True, best, runs, peak)


def rates(count: int, nbytes: int, seconds: float) -> tuple[int, float]:
    """(items per second, MB per second) of ``count`` items and ``nbytes`` bytes."""
    return round(count / seconds), round(nbytes / 1e6 / seconds, 1)


def kb_to_mb(kb: int | None) -> float | None:
    """KiB to MiB with one decimal; None for an unknown (0 or None) value."""
    return round(kb / 1024, 1) if kb else None


# --------------------------------------------------------------------------- inputs


def apiwatch_command(override: str | None) -> tuple[list[str], dict[str, str]]:
    """The apiwatch command line and environment: ``override`` (a shell-quoted command
    line), else the apiwatch script installed beside this Python (not a version manager's
    shim on PATH: pyenv's is a shell script that runs pyenv first, ~0.07 s a run), else
    apiwatch on PATH, else ``python -m monitor`` with this repository on PYTHONPATH.
    apiwatch runs as installed, with its bytecode cached: a development shell
    that sets ``PYTHONDONTWRITEBYTECODE`` would have every timed run compile the modules
    whose cache is missing or stale first (0.1-0.2 s before the producers start on a fresh
    checkout, 1.3 s scans), which no installed copy does; the first run caches it."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if override:
        return shlex.split(override), env
    beside = Path(sys.executable).with_name("apiwatch")
    exe = str(beside) if os.access(beside, os.X_OK) else shutil.which("apiwatch")
    if exe:
        return [exe], env
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return [sys.executable, "-m", "monitor"], env


def truth_path(path: Path) -> Path:
    """``FILE.truth.json``: where the generators write what a file holds."""
    return path.with_name(path.name + ".truth.json")


def warm_cache(path: Path) -> None:
    """Read a file once so that the timed runs find it in the page cache."""
    with open(path, "rb") as fh:
        while fh.read(1 << 24):
            pass


def remove_db(db: Path) -> None:
    """Delete an SQLite database and its -wal, -shm and -journal files."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(db) + suffix).unlink(missing_ok=True)


def fresh_db(db: Path) -> Callable[[], None]:
    """A ``before_each`` for :func:`best_of` that starts every run on no database."""
    return lambda: remove_db(db)


def ensure_parent(path: Path) -> None:
    """Create the folder a generated file goes into."""
    if path.parent and not path.parent.exists():
        os.makedirs(path.parent, exist_ok=True)


def parse_only(text: str | None, default: set[str]) -> set[str]:
    """The rows an ``--only a,b,c`` option selects (all of ``default`` without it)."""
    return {s.strip() for s in text.split(",")} if text else set(default)


@contextlib.contextmanager
def scratch_dir(prefix: str, parent: Path | None, keep: bool) -> Iterator[Path]:
    """A temporary directory for generated inputs and outputs; removed at the end unless
    ``keep`` (then its name goes to stderr)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield tmp
    finally:
        if keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- report


def say(*parts: object) -> None:
    """Progress goes to stderr so that --json output stays clean."""
    print(*parts, file=sys.stderr, flush=True)


def fmt(v, spec: str) -> str:
    """``format(v, spec)``, or "-" for None."""
    return "-" if v is None else format(v, spec)


def format_table(head: Sequence[str], body: Sequence[Sequence[object]]) -> list[str]:
    """Lines of a plain-text table: the first column left-aligned, the others right-aligned,
    a dashed rule under the head."""
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]

    def line(cells: Sequence[object]) -> str:
        return "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return [line(head), line(["-" * w for w in widths])] + [line(b) for b in body]


def failed_cells(tool: str, count: int, exit_code: int | None, columns: int) -> tuple:
    """A table row for a failed command: tool, count, "FAILED (exit N)", blanks."""
    return (tool, f"{count:,}", f"FAILED (exit {exit_code})", *[""] * (columns - 3))


def failure_lines(tool: str, exit_code: int | None, command: str, stderr_tail: str) -> list[str]:
    """What follows a table for a failed command: its command line and stderr tail."""
    out = [f"\n{tool} failed, exit {exit_code}: {command}"]
    return out + ["  | " + ln for ln in stderr_tail.splitlines()[-12:]]
