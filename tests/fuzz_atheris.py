"""Coverage-guided fuzzing of every registered collector with atheris (libFuzzer).

Not part of the test suite: a longer run for maintainers (``pip install atheris``)::

    mkdir -p /tmp/fuzz-corpus && cp tests/corpus/* /tmp/fuzz-corpus/
    python tests/fuzz_atheris.py -max_total_time=600 /tmp/fuzz-corpus

The first input byte picks the format, the rest is the file. Any exception that escapes
a collector is a bug: libFuzzer writes the input to ``crash-*``; add it to
``tests/corpus/`` so ``tests/test_fuzz.py`` replays it on every run.
"""

from __future__ import annotations

import io
import sys

import atheris

with atheris.instrument_imports():
    from monitor.collectors import SPECS, Diagnostics, InputError, make_collector
    from tests.test_fuzz import OPTIONS

COLLECTORS = []
for name in sorted(SPECS):
    try:
        COLLECTORS.append(make_collector(name, OPTIONS))
    except InputError:
        continue


def one_input(data: bytes) -> None:
    if not data:
        return
    collector = COLLECTORS[data[0] % len(COLLECTORS)]
    for _ in collector.parse(io.BufferedReader(io.BytesIO(data[1:])), "fuzz", Diagnostics()):
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
