"""Where the bundled data lives: ``rules/`` and ``geodata/``.

In a wheel they are packaged as ``monitor/_data/{rules,geodata}``; in a source checkout
(editable install, tests) they are the top-level folders beside the package.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


@cache
def _bundled(name: str) -> Path:
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"bundled {name}/ not found next to {_PACKAGE}")


def rules_dir() -> Path:
    """The bundled provider catalogue, region lists and policy rules."""
    return _bundled("rules")


def geodata_dir() -> Path:
    """The bundled geolocation databases, overrides and their licences."""
    return _bundled("geodata")


def cache_dir() -> Path:
    """``$APIWATCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/apiwatch``, else ``~/.cache/apiwatch``."""
    if os.environ.get("APIWATCH_CACHE_DIR"):
        return Path(os.environ["APIWATCH_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "apiwatch"
    return Path.home() / ".cache" / "apiwatch"
