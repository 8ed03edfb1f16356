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
from dataclasses import dataclass
from types import ModuleType

PURE_ENV = "APIWATCH_PURE_PYTHON"

#: the interface each accelerator's caller calls (see :func:`expect`): module name -> the
#: module attribute that names its version, the version, whether a later one does too
_CALLED: dict[str, tuple[str, int, bool]] = {}


@dataclass(frozen=True)
class Stale:
    """An accelerator built from another version of its source than the code calls: not
    used (its work runs in Python, slower) until it is built again."""

    name: str
    attr: str
    built: object  # what the module says (None: nothing)
    called: int

    def __str__(self) -> str:
        built = self.built if type(self.built) is int else repr(self.built)
        return (f"C accelerator {self.name} is built from another version of its source "
                f"({self.attr} {built}, this code calls {self.called}): it is not used, what it "
                "speeds up runs in pure Python (slower); reinstall apiwatch to build it again")  # fmt: skip


#: the accelerators :func:`load` left out as stale, by name (see :func:`stale`)
_LEFT_OUT: dict[str, Stale] = {}


def expect(name: str, version: int, attr: str = "ABI", exact: bool = False) -> None:
    """Say which interface of accelerator ``name`` this code calls: its ``attr`` is
    ``version`` (or later, unless ``exact``). :func:`load` then gives no module built from
    another version of its source, and :func:`stale` names it."""
    _CALLED[name] = (attr, version, exact)


def _pure() -> bool:
    return os.environ.get(PURE_ENV, "") not in ("", "0")


def _imported(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _stale(name: str, module: ModuleType) -> Stale | None:
    """What is wrong with ``module`` as accelerator ``name`` (None: nothing, or nothing
    expected of it)."""
    called = _CALLED.get(name)
    if called is None:
        return None
    attr, version, exact = called
    built = getattr(module, attr, None)
    if type(built) is int and (built == version or (built > version and not exact)):
        return None
    return Stale(name, attr, built, version)


def load(name: str) -> ModuleType | None:
    """The accelerator module ``name`` (e.g. ``monitor.collectors._squidscan``), or None:
    pure Python asked for, not built, or built from another version of its source than the
    code calls (:func:`expect`; then kept for :func:`stale`)."""
    if _pure():
        return None
    module = _imported(name)
    if module is None:
        return None
    found = _stale(name, module)
    if found is None:
        _LEFT_OUT.pop(name, None)
        return module
    _LEFT_OUT[name] = found
    return None


def stale() -> list[Stale]:
    """The accelerators the code calls (those :func:`expect` named so far) that are built
    from another version of their source: silently slower otherwise, so the commands that
    parse say so. Those :func:`load` left out, and those it has not been asked for here: a
    scan's producer processes load the Squid pre-pass, not the process that says it. One
    that fails to import in any way is left unsaid (not built, or broken: as before)."""
    if _pure():
        return []
    found = dict(_LEFT_OUT)
    for name in _CALLED.keys() - found.keys():
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001, S112 - whatever its init raises: nothing to say
            continue
        if (seen := _stale(name, module)) is not None:
            found[name] = seen
    return [found[name] for name in sorted(found)]
