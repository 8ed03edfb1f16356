"""The C accelerators under AddressSanitizer and UndefinedBehaviorSanitizer.

They read hostile input (log lines, capture records) at raw addresses, so their
equivalence tests run once more against builds instrumented for out-of-bounds reads, use
after free and undefined arithmetic: a copy of the package with sanitized modules, loaded
by an ordinary CPython with the sanitizer runtimes preloaded. Any report fails the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "monitor").rglob("_*.c"))
TESTS = [str(ROOT / "tests" / t)
         for t in ("test_squid_accel.py", "test_squid_prepass.py", "test_pcap_accel.py",
                   "test_batch_accel.py", "test_batch_columns.py", "test_sqlbind.py")]  # fmt: skip


def _runtime(cc: str, name: str) -> str | None:
    out = subprocess.run([cc, f"-print-file-name={name}"], capture_output=True, text=True)
    path = out.stdout.strip()
    return path if out.returncode == 0 and os.path.isabs(path) and os.path.exists(path) else None


@pytest.mark.realtools
def test_accelerators_clean_under_sanitizers(tmp_path: Path) -> None:
    cc = shutil.which("gcc")
    runtimes = [_runtime(cc, n) for n in ("libasan.so", "libubsan.so")] if cc else []
    if not cc or None in runtimes:
        if os.environ.get("CI"):
            pytest.fail("gcc with libasan and libubsan is needed in CI")
        pytest.skip("gcc with libasan/libubsan not found")
    package = tmp_path / "monitor"
    shutil.copytree(ROOT / "monitor", package, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    for data in ("rules", "geodata"):  # found next to the package, as in a clone
        (tmp_path / data).symlink_to(ROOT / data)
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    include = sysconfig.get_paths()["include"]
    for src in SOURCES:
        target = package / src.relative_to(ROOT / "monitor").with_name(src.stem + suffix)
        subprocess.run(
            [cc, "-shared", "-fPIC", "-g", "-O1", "-fno-omit-frame-pointer",
             "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
             f"-I{include}", str(src), "-o", str(target)],
            check=True,
        )  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "LD_PRELOAD": ":".join(runtimes),  # type: ignore[arg-type]
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:exitcode=86",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1:exitcode=87",
        "PYTHONMALLOC": "malloc",  # every object its own allocation, with red zones around it
        "CI": "true",  # the accelerator tests must not skip, and run derandomised
    }
    env.pop("APIWATCH_PURE_PYTHON", None)
    # import the sanitized copy first, so that pytest's own path handling cannot swap it;
    # --capture=sys leaves file descriptor 2 alone, where a sanitizer writes its report
    script = (
        "import sys, pytest, monitor.collectors._squidscan as m, monitor.collectors._pcapscan;"
        "import monitor._batchscan as b, monitor._sqlbind as q;"
        f"assert m.__file__.startswith({str(tmp_path)!r}), m.__file__;"
        f"assert b.__file__.startswith({str(tmp_path)!r}), b.__file__;"
        f"assert q.__file__.startswith({str(tmp_path)!r}), q.__file__;"
        f"sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '--capture=sys', *{TESTS!r}]))"
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=40 * 60,
    )
    report = run.stdout[-3000:] + run.stderr[-3000:]
    assert run.returncode == 0, report
    assert "ERROR: AddressSanitizer" not in report and "runtime error" not in report, report
