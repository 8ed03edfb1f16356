"""`scan --cluster`: the producers run as tasks on a real Dask cluster (a scheduler and two
workers started here on loopback), and the database is the one a local scan makes.

Small parts (``PART_SIZE``) make a modest log several tasks, so ordering, merging and the
retry of a killed worker's parts are exercised without gigabytes of input."""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from monitor import scanner
from monitor.cli import EXIT_ERROR, main
from tests.test_durability import stored

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from dask_local import DaskCluster, free_port, wait_for  # noqa: E402

GEN = ROOT / "benchmarks" / "gen_squid_log.py"
#: columns that say when, not what: they differ between any two scans
WHEN = {"started", "finished", "updated", "options", "at", "changed"}  # when, not what

pytestmark = pytest.mark.realtools


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if shutil.which("dask") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("dask (distributed) is not installed: .ci/run installs the test extras")
        pytest.skip("dask (distributed) is not installed")
    c = DaskCluster(tmp_path_factory.mktemp("dask"), pythonpath=ROOT)
    yield c
    c.stop()


@pytest.fixture
def small_parts(monkeypatch):
    """Parts of ~256 KB: the cluster gets many tasks from a few megabytes."""
    monkeypatch.setattr(scanner, "PART_SIZE", 256 << 10)
    monkeypatch.setattr(scanner, "MIN_PART", 64 << 10)
    monkeypatch.setattr(scanner, "IN_PROCESS_BELOW", 64 << 10)


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("logs")
    plain, gz = d / "access.log", d / "access.log.1.gz"
    for out, lines, seed in ((plain, 40_000, 1), (gz, 8_000, 2)):
        subprocess.run([sys.executable, str(GEN), "-o", str(out), "--lines", str(lines),
                        "--seed", str(seed), "--malformed-rate", "0.001", "--no-truth", "-q"],
                       check=True)  # fmt: skip
    return {"plain": plain, "gz": gz}


def dump(db: Path) -> dict[str, list[tuple]]:
    """Every table (and view: what readers see), every row, in a stable order, without the
    columns that record when."""
    con = sqlite3.connect(db)
    try:
        out = {}
        tables = [
            r[0]
            for r in con.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
        ]
        for t in sorted(tables):
            cols = [r[1] for r in con.execute(f"PRAGMA table_info({t})") if r[1] not in WHEN]
            rows = con.execute(f"SELECT {', '.join(cols)} FROM {t}").fetchall()  # noqa: S608
            out[t] = sorted(rows, key=repr)
        return out
    finally:
        con.close()


def scan(db: Path, *args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, ["--db", str(db), "scan", "--egress-country", "CN", *args])
    return r.exit_code, r.output


def test_cluster_scan_stores_what_a_local_scan_stores(cluster, logs, small_parts, tmp_path):
    files = [str(logs["plain"]), str(logs["gz"])]
    code, out = scan(tmp_path / "local.db", "-j", "2", *files)
    assert code == 0, out
    code, out = scan(tmp_path / "cluster.db", "--cluster", cluster.address, *files)
    assert code == 0, out
    local, remote = dump(tmp_path / "local.db"), dump(tmp_path / "cluster.db")
    assert local["observations"], "the logs hold LLM traffic"
    assert local["incidents"] and local["scan_problems"]
    for table in local:
        assert remote[table] == local[table], table


def test_cluster_scan_is_incremental_like_a_local_one(cluster, logs, small_parts, tmp_path):
    """A second cluster scan of the same files reads nothing new and stores nothing."""
    db = tmp_path / "c.db"
    assert scan(db, "--cluster", cluster.address, str(logs["plain"]))[0] == 0
    before = dump(db)["observations"]
    code, out = scan(db, "--cluster", cluster.address, "--json", str(logs["plain"]))
    assert code == 0, out
    assert '"records": 0' in out and '"stored": 0' in out
    assert dump(db)["observations"] == before


def test_killed_worker_parts_are_run_again_and_nothing_counts_twice(
    cluster, logs, small_parts, tmp_path
):
    big = tmp_path / "big.log"
    subprocess.run([sys.executable, str(GEN), "-o", str(big), "--lines", "400000", "--seed", "7",
                    "--no-truth", "-q"], check=True)  # fmt: skip
    code, out = scan(tmp_path / "local.db", "-j", "1", str(big))
    assert code == 0, out

    result: dict[str, object] = {}

    def run() -> None:
        result["r"] = scan(tmp_path / "cluster.db", "--cluster", cluster.address, str(big))

    before = cluster.worker_pids()
    t = threading.Thread(target=run)
    t.start()
    # killed once the first parts are committed: mid-scan however fast the scan is
    wait_for(lambda: stored(tmp_path / "cluster.db") > 0, 120, "the first parts to be stored")
    assert t.is_alive(), "the scan must still be running when a worker is killed"
    os.kill(before[0], signal.SIGKILL)  # the worker, not its nanny: the nanny starts a new one
    t.join(300)
    assert not t.is_alive()
    code, out = result["r"]  # type: ignore[misc]
    assert code == 0, out
    wait_for(lambda: len(cluster.worker_pids()) == 2, 60, "the nanny to restart the worker")
    assert before[0] not in cluster.worker_pids()
    local, remote = dump(tmp_path / "local.db"), dump(tmp_path / "cluster.db")
    for table in local:
        assert remote[table] == local[table], table


def test_file_urls_are_read_by_the_workers(cluster, logs, tmp_path):
    url = logs["gz"].as_uri()  # file:///…: shared storage as fsspec sees it
    code, out = scan(tmp_path / "local.db", url)
    assert code == 0, out
    code, out = scan(tmp_path / "cluster.db", "--cluster", cluster.address, url)
    assert code == 0, out
    local, remote = dump(tmp_path / "local.db"), dump(tmp_path / "cluster.db")
    assert local["observations"]
    assert {r for r in local["observations"]} == {r for r in remote["observations"]}
    assert local["incidents"] == remote["incidents"]


def test_a_missing_input_is_reported_and_the_rest_scanned(cluster, logs, tmp_path):
    code, out = scan(tmp_path / "c.db", "--cluster", cluster.address,
                     str(tmp_path / "nosuch.log"), str(logs["gz"]))  # fmt: skip
    assert code == EXIT_ERROR
    assert "nosuch.log" in out and "No such file" in out
    assert dump(tmp_path / "c.db")["observations"]


def test_an_unreachable_scheduler_is_one_clear_line(tmp_path, logs):
    address = f"tcp://127.0.0.1:{free_port()}"
    code, out = scan(tmp_path / "c.db", "--cluster", address, str(logs["gz"]))
    assert code == EXIT_ERROR
    assert "cannot reach the Dask scheduler" in out and "Traceback" not in out


def test_without_cluster_nothing_of_dask_is_imported(tmp_path, logs):
    script = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from monitor.cli import main\n"
        f"r = CliRunner().invoke(main, ['--db', {str(tmp_path / 'x.db')!r}, 'scan', "
        f"{str(logs['gz'])!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=ROOT, check=True)  # fmt: skip
    assert out.stdout.strip() == "[]"


def test_gz_input_on_the_cluster_keeps_its_line_numbers(cluster, tmp_path):
    """Evidence file:line from a worker points at the same line as a local scan's."""
    log = tmp_path / "a.log.gz"
    lines = [
        f"{1764460800 + i}.000 12 10.0.0.{i % 7} TCP_TUNNEL/200 4000 CONNECT "
        f"api.openai.com:443 - HIER_DIRECT/162.159.140.245 -"
        for i in range(50)
    ]
    log.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    assert scan(tmp_path / "c.db", "--cluster", cluster.address, str(log))[0] == 0
    con = sqlite3.connect(tmp_path / "c.db")
    got = sorted(r[0] for r in con.execute("SELECT line FROM observations"))
    con.close()
    assert got == list(range(1, 51))
