"""Coverage-guided fuzzing of every registered collector with atheris (libFuzzer).

Not part of the test suite: a longer run for maintainers (``pip install atheris``)::

    mkdir -p /tmp/fuzz-corpus && cp tests/corpus/* /tmp/fuzz-corpus/
    python tests/fuzz_atheris.py -max_total_time=600 /tmp/fuzz-corpus

The first input byte picks the format (its high bit: with the scan's host filter, which
turns the C pre-passes on), the rest is the file. Any exception that escapes
a collector is a bug: libFuzzer writes the input to ``crash-*``; add it to
``tests/corpus/`` so ``tests/test_fuzz.py`` replays it on every run.
"""

from __future__ import annotations

import io
import sys

import atheris

with atheris.instrument_imports():
    from monitor.catalog import Catalog
    from monitor.collectors import SPECS, Diagnostics, InputError, make_collector
    from monitor.pipeline import Identifier
    from tests.test_fuzz import OPTIONS

HOST_FILTER = Identifier(Catalog.load()).host_filter

COLLECTORS = []
for name in sorted(SPECS):
    try:
        COLLECTORS.append(make_collector(name, OPTIONS))
    except InputError:
        continue


def one_input(data: bytes) -> None:
    if not data:
        return
    collector = COLLECTORS[(data[0] & 0x7F) % len(COLLECTORS)]
    host_filter = HOST_FILTER if data[0] & 0x80 else None
    stream = io.BufferedReader(io.BytesIO(data[1:]))
    for _ in collector.parse(stream, "fuzz", Diagnostics(), host_filter):
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
