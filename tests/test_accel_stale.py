"""C accelerators built from another version of their source than the code calls: not
used (their work done in Python, with the same results) and named by the commands that
parse, on real modules: a Python module file, and ``_batchscan`` compiled again from its
source as a build of an older version."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

import pytest

from monitor import accel
from monitor.batch import _ACCEL_ABI as BATCH_ABI
from tests.conftest import run
from tests.receivers import wait_until
from tests.test_rollup_rows import _squid_log

ROOT = Path(__file__).resolve().parent.parent
PROBE = "apiwatch_probe_accel"


@pytest.fixture
def probe(tmp_path, monkeypatch):
    """A module ``PROBE`` that says ``ABI = 3``, importable; what the code calls of it is
    this test's own (the real accelerators' expectations are left alone)."""
    (tmp_path / f"{PROBE}.py").write_text("ABI = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(accel, "_CALLED", {})
    monkeypatch.setattr(accel, "_LEFT_OUT", {})
    monkeypatch.delenv(accel.PURE_ENV, raising=False)
    yield
    sys.modules.pop(PROBE, None)


@pytest.mark.usefixtures("probe")
def test_a_module_built_from_another_version_is_not_used_and_is_named(monkeypatch):
    accel.expect(PROBE, 4)
    assert accel.load(PROBE) is None
    assert accel.stale() == [accel.Stale(PROBE, "ABI", 3, 4)]
    line = str(accel.stale()[0])
    assert PROBE in line and "(ABI 3, this code calls 4)" in line and "\n" not in line
    for version, exact in ((3, False), (3, True), (2, False)):  # the same, or a later one
        accel.expect(PROBE, version, exact=exact)
        assert accel.load(PROBE) is sys.modules[PROBE] and accel.stale() == []
    accel.expect(PROBE, 2, exact=True)  # a later one where only this one will do
    assert accel.load(PROBE) is None and accel.stale() == [accel.Stale(PROBE, "ABI", 3, 2)]
    accel.expect(PROBE, 3, attr="SCAN_VERSION")  # says no version at all
    assert accel.load(PROBE) is None
    assert accel.stale() == [accel.Stale(PROBE, "SCAN_VERSION", None, 3)]
    monkeypatch.setenv(accel.PURE_ENV, "1")  # pure Python asked for: nothing to say
    assert accel.load(PROBE) is None and accel.stale() == []


@pytest.mark.usefixtures("probe")
def test_one_not_built_is_not_stale():
    accel.expect("apiwatch_probe_not_built", 1)
    assert accel.load("apiwatch_probe_not_built") is None and accel.stale() == []


@pytest.mark.usefixtures("probe")
def test_one_not_loaded_here_is_named_and_a_broken_one_is_not(tmp_path):
    """An accelerator this process never loaded (a scan's producers load the Squid
    pre-pass): named all the same; one whose import fails in any way: not."""
    accel.expect(PROBE, 4)
    assert accel.stale() == [accel.Stale(PROBE, "ABI", 3, 4)]
    broken = "apiwatch_probe_broken"
    (tmp_path / f"{broken}.py").write_text("raise OSError('its init fails')\n")
    accel.expect(broken, 1)
    assert accel.stale() == [accel.Stale(PROBE, "ABI", 3, 4)]


def test_each_caller_calls_the_interface_it_checked_before():
    """Which version each accelerator's caller takes: the same or a later ABI for the batch
    and Squid modules, only the one for the insert binding and the capture scan."""
    from monitor import batch, sqlbind
    from monitor.collectors import flows, squid

    assert {name: accel._CALLED[name] for name in (
        "monitor._batchscan", "monitor._sqlbind", "monitor.collectors._squidscan",
        "monitor.collectors._pcapscan")} == {
        "monitor._batchscan": ("ABI", batch._ACCEL_ABI, False),
        "monitor._sqlbind": ("ABI", sqlbind._ACCEL_ABI, True),
        "monitor.collectors._squidscan": ("ABI", squid._ACCEL_ABI, False),
        "monitor.collectors._pcapscan": ("SCAN_VERSION", flows.SCAN_VERSION, True),
    }  # fmt: skip


@pytest.mark.usefixtures("probe")
def test_the_warning_is_one_escaped_line(tmp_path):
    """A stale module whose version prints as control characters and a line break: the
    command's warning stays one line, escaped (a module's value is data)."""
    (tmp_path / f"{PROBE}.py").write_text(
        "class Odd:\n    def __repr__(self):\n"
        "        return '\\x1b]0;title\\x07\\nwarning: forged'\n\nABI = Odd()\n"
    )
    accel.expect(PROBE, 1)
    assert accel.load(PROBE) is None
    log = tmp_path / "access.log"
    _squid_log(log, 50, 3)
    result = run("parse", log, "--json")
    warned = [x for x in result.stderr.splitlines() if "C accelerator" in x]
    assert result.exit_code == 0 and len(warned) == 1, result.stderr
    assert "\x1b" not in warned[0] and "forged" in warned[0] and "\\x1b" in warned[0]
    assert "warning: forged" not in result.stderr.replace(warned[0], "")


def _observed(db: Path) -> dict[str, list[tuple]]:
    con = sqlite3.connect(db)
    try:
        return {
            "observations": con.execute("SELECT * FROM observations ORDER BY id").fetchall(),
            "hits": con.execute("SELECT * FROM hits ORDER BY 1, 2").fetchall(),
            "monthly": con.execute("SELECT * FROM obs_monthly ORDER BY 1, 2, 3").fetchall(),
        }
    finally:
        con.close()


def test_a_scan_with_an_older_build_names_it_and_stores_the_same(tmp_path):
    """``_batchscan`` compiled from its source with the interface before this one, found
    first on ``monitor``'s path: the scan says so in one line on stderr, exits 0 and stores
    what a scan with the current build stores; ``parse`` says it too."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        if os.environ.get("CI") == "true":
            pytest.fail("a C compiler is needed in CI")
        pytest.skip("no C compiler")
    source = (ROOT / "monitor" / "_batchscan.c").read_text()
    current = f'"ABI", {BATCH_ABI})'
    assert source.count(current) == 1
    older = tmp_path / "older"
    older.mkdir()
    (older / "_batchscan.c").write_text(source.replace(current, f'"ABI", {BATCH_ABI - 1})'))
    include = sysconfig.get_paths()["include"]
    built = older / ("_batchscan" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run([cc, "-shared", "-fPIC", "-O2", f"-I{include}", f"-I{ROOT / 'monitor'}",
                    str(older / "_batchscan.c"), "-o", str(built)], check=True)  # fmt: skip
    log = tmp_path / "access.log"
    _squid_log(log, 3_000, 7)
    code = f"import monitor; monitor.__path__.insert(0, {str(older)!r}); from monitor.cli import main; main()"
    env = {k: v for k, v in os.environ.items() if k != accel.PURE_ENV}
    env["PYTHONPATH"] = str(ROOT)

    def run(*args: str, stale: bool) -> subprocess.CompletedProcess:
        command = [sys.executable, "-c", code] if stale else [sys.executable, "-m", "monitor"]
        return subprocess.run([*command, *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip

    scans = {}
    for stale in (True, False):
        db = tmp_path / f"{stale}.db"
        done = run("--db", str(db), "scan", str(log), "--egress-country", "CN", stale=stale)
        assert done.returncode == 0, done.stderr
        warned = [x for x in done.stderr.splitlines() if "C accelerator" in x]
        expected = (f"warning: C accelerator monitor._batchscan is built from another version of"
                    f" its source (ABI {BATCH_ABI - 1}, this code calls {BATCH_ABI})")  # fmt: skip
        assert [x.startswith(expected) for x in warned] == ([True] if stale else [])
        scans[stale] = _observed(db)
    assert scans[True] == scans[False] and len(scans[True]["observations"]) > 500
    parsed = run("parse", str(log), "--json", stale=True)
    assert parsed.returncode == 0 and parsed.stdout.count("\n") == 3_000
    assert sum("C accelerator monitor._batchscan" in x for x in parsed.stderr.splitlines()) == 1


@pytest.mark.usefixtures("probe")
def test_daily_says_it_too_unless_quiet(tmp_path):
    """``daily`` (the cron path) names a stale accelerator through its log on stderr, with
    ``--json`` too (stdout holds only the JSON); ``--quiet`` prints nothing but errors."""
    accel.expect(PROBE, 4)
    shutil.copy(ROOT / "examples" / "apiwatch.toml", tmp_path / "apiwatch.toml")
    shutil.copytree(ROOT / "examples" / "logs", tmp_path / "logs")
    for flags, lines in (("--json",), 1), (("--json", "--quiet"), 0):
        result = run("--db", tmp_path / "d.db", "daily", "--config", tmp_path / "apiwatch.toml",
                     "--date", "2026-11-30", "--no-reports", *flags, ok=(0, 3))  # fmt: skip
        warned = [x for x in result.stderr.splitlines() if f"C accelerator {PROBE}" in x]
        assert len(warned) == lines and "C accelerator" not in result.stdout
        assert json.loads(result.stdout)["today"] == "2026-11-30"


def test_watch_names_it_in_its_log(tmp_path):
    """``watch`` (a service: after an update without a reinstall it would only run slower)
    names a stale accelerator in its log, once, after the line saying what it follows; here
    a module file saying the interface before ``_batchscan``'s, found first on ``monitor``'s
    path."""
    older = tmp_path / "older"
    older.mkdir()
    (older / "_batchscan.py").write_text(f"ABI = {BATCH_ABI - 1}\n")
    log = tmp_path / "access.log"
    _squid_log(log, 300, 7)
    code = f"import monitor; monitor.__path__.insert(0, {str(older)!r}); from monitor.cli import main; main()"
    env = {k: v for k, v in os.environ.items() if k != accel.PURE_ENV}
    env["PYTHONPATH"] = str(ROOT)
    process = subprocess.Popen(
        [sys.executable, "-c", code, "--db", str(tmp_path / "w.db"), "watch", str(log),
         "--egress-country", "CN"],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()

    def following() -> int | None:
        return next((i for i, x in enumerate(lines) if "watch: following" in x), None)

    try:  # (what it logs next comes at once, or only when it stops)
        wait_until(lambda: following() is not None or process.poll() is not None, 60, "watch")
        wait_until(lambda: len(lines) > (following() or 0) + 1, 10, "its next line")
    finally:
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(30)
        reader.join(5)
    assert exit_code == 0, "".join(lines)
    at = following()
    warned = [x for x in lines if "C accelerator" in x]
    assert at is not None and len(warned) == 1 and lines[at + 1] == warned[0], "".join(lines)
    expected = (f"warning: C accelerator monitor._batchscan is built from another version of its"
                f" source (ABI {BATCH_ABI - 1}, this code calls {BATCH_ABI})")  # fmt: skip
    assert warned[0].split(" ", 1)[1].startswith(expected)
