"""Optional C accelerators for the collectors' hot loops (and the producers' batches, and
the store's inserts of a batch's rows: ``monitor/sqlbind.py``).

An accelerator does, in C, exactly what a stretch of pure-Python collector code does, for
the common case only; whatever it is unsure of it hands back to the Python code, which
stays the reference (tests compare the two on the same inputs). The build compiles them
when a C compiler is present (``hatch_build.py``); without one, or with
``APIWATCH_PURE_PYTHON=1`` in the environment, every collector runs in pure Python.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

PURE_ENV = "APIWATCH_PURE_PYTHON"


def load(name: str) -> ModuleType | None:
    """The accelerator module ``name`` (e.g. ``monitor.collectors._squidscan``), or None."""
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        return None
