"""What the tests share: the hypothesis profile, fixtures, and helpers to run the CLI and
parse bytes or files with a collector (``from tests.conftest import run, parse, …``)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from calendar import timegm
from collections.abc import Iterable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import settings

import monitor.batch as batch_module
from monitor.catalog import Catalog
from monitor.cli import main
from monitor.collectors import CollectOptions, Diagnostics, collect
from monitor.observation import Observation

# Under CI every run draws the same examples, so a red build is reproducible and a green one
# is not luck; locally they vary, which finds more over time.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev")
settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A database path in the test's directory (created by the first command)."""
    return tmp_path / "apiwatch.db"


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return Catalog.load()


@pytest.fixture
def every_batch(monkeypatch):
    """Roll-up rows of every batch a producer makes, however few requests per client a small
    test file has (``monitor.batch._SPARSE``; a child process: ``EVERY_BATCH`` in
    tests/test_rollup_rows.py)."""
    monkeypatch.setattr(batch_module, "_SPARSE", 1.0)


def run(*args, ok: Iterable[int] = (0,), input: str | None = None, env=None) -> Result:
    """``apiwatch ARGS`` in-process; fails the test unless it exits with a code in ``ok``."""
    result = CliRunner(env=env).invoke(
        main, [str(a) for a in args], input=input, catch_exceptions=False
    )
    assert result.exit_code in ok, result.output + result.stderr
    return result


def parse(collector, data: bytes, source: str = "t", host_filter=None):
    """(observations, diagnostics) of ``data`` read by ``collector``."""
    diag = Diagnostics()
    return list(collector.parse(io.BytesIO(data), source, diag, host_filter)), diag


def collect_file(path: Path, options: CollectOptions | None = None, host_filter=None):
    """(observations, diagnostics) of a file read as ``apiwatch parse`` reads it."""
    diag = Diagnostics()
    return list(collect(str(path), options or CollectOptions(), diag, host_filter)), diag


def generated_squid_log(path: Path, *options: str) -> dict:
    """A native Squid log written by the benchmark generator (``--lines N`` etc. in
    ``options``); returns what it says the log holds (its truth file)."""
    gen = Path(__file__).resolve().parent.parent / "benchmarks" / "gen_squid_log.py"
    subprocess.run([sys.executable, str(gen), "-o", str(path), "-q", *options], check=True)
    return json.loads(path.with_name(path.name + ".truth.json").read_text())


def epoch(y: int, mo: int, d: int, h: int, mi: int, s: int) -> float:
    """Seconds since the epoch of a UTC date and time."""
    return float(timegm((y, mo, d, h, mi, s, 0, 0, 0)))


def by_line(obs: Iterable[Observation]) -> dict[int, Observation]:
    return {o.line: o for o in obs}


@pytest.fixture
def small_fs(tmp_path):
    """A real 1 MB tmpfs (root); where mounting is not allowed, None."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs",
                                            str(mnt)], capture_output=True).returncode:  # fmt: skip
        if os.environ.get("CI") == "true":
            pytest.fail("CI runs as root and must be able to mount a tmpfs")
        yield None
        return
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
