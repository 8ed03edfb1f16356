"""Every registered input format, fuzzed: no exception may escape a collector's parse.

Hypothesis runs with a fixed budget and derandomised, so CI is repeatable. Inputs that
ever broke a parser live in ``tests/corpus/`` and are replayed through every format.
Longer coverage-guided runs: ``python tests/fuzz_atheris.py -max_total_time=600``.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.collectors import SPECS, CollectOptions, Diagnostics, InputError, make_collector

ROOT = Path(__file__).resolve().parent
CORPUS = ROOT / "corpus"
SEED_FILES = [
    *sorted((ROOT.parent / "examples" / "logs").glob("*.log")),
    *sorted((ROOT / "data").rglob("*")),
    *sorted(CORPUS.glob("*")),
]
OPTIONS = CollectOptions(
    squid_logformat="%ts.%03tu %6tr %>a %>p %Ss/%03>Hs %<st %>st %rm %ru %un %Sh/%<a %mt"
)
BUDGET = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def seeds() -> list[bytes]:
    out = []
    for path in SEED_FILES:
        if path.is_file() and path.stat().st_size < 1 << 20:
            out.append(path.read_bytes()[:8192])
    return out or [b""]


SEEDS = seeds()


def run_parser(fmt: str, data: bytes) -> list[str]:
    """Parse ``data`` as ``fmt`` (any exception escapes and fails the test); what the
    observations and the damage reports break of their contract (nothing, when sound)."""
    diag = Diagnostics()
    collector = make_collector(fmt, OPTIONS)
    bad = []
    for obs in collector.parse(io.BufferedReader(io.BytesIO(data)), "fuzz", diag):
        if not (obs.source == "fuzz" and obs.line >= 0):
            bad.append(f"observation from {obs.source}:{obs.line}")
        if not (obs.dest_host is None or obs.dest_host == obs.dest_host.lower()):
            bad.append(f"host {obs.dest_host!r}")
    # damage is reported against this input, as file:line where there is a line
    bad += [f"problem in {p.source}" for p in (*diag.problems, *diag.notices, *diag.file_errors)
            if p.source != "fuzz"]  # fmt: skip
    bad += [f"problem at line {p.line}" for p in diag.problems if p.line is not None and p.line < 1]
    return bad


@st.composite
def mutated(draw) -> bytes:
    base = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "duplicate"]))
        pos = draw(st.integers(0, max(0, len(base))))
        if op == "flip" and base:
            base[min(pos, len(base) - 1)] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            base[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del base[pos : pos + draw(st.integers(1, 64))]
        elif op == "truncate":
            del base[pos:]
        elif op == "duplicate":
            base[pos:pos] = base[max(0, pos - 200) : pos]
    return bytes(base)


def _buildable(fmt: str) -> bool:
    try:
        make_collector(fmt, OPTIONS)
    except InputError:  # needs options this generic harness cannot invent (its own tests fuzz it)
        return False
    return True


FORMATS = [fmt for fmt in sorted(SPECS) if _buildable(fmt)]


@pytest.mark.parametrize("fmt", FORMATS)
@BUDGET
@given(data=st.binary(max_size=4096))
def test_random_bytes_never_escape(fmt, data):
    assert run_parser(fmt, data) == []


@pytest.mark.parametrize("fmt", FORMATS)
@BUDGET
@given(data=mutated())
def test_mutated_real_inputs_never_escape(fmt, data):
    assert run_parser(fmt, data) == []


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", sorted(CORPUS.glob("*")), ids=lambda p: p.name)
def test_regression_corpus(fmt, case):
    assert run_parser(fmt, case.read_bytes()) == []
