"""Reading the bundled and user YAML (catalogue, rules, packs, client signatures).

libyaml's safe loader when PyYAML was built with it: every ``apiwatch`` command reads the
rules and the catalogue at start-up, and the pure-Python loader took most of that time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

#: PyYAML's SafeLoader, in C when available (same documents, same errors: yaml.YAMLError)
SafeLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(text: str) -> Any:
    return yaml.load(text, Loader=SafeLoader)  # noqa: S506 - a safe loader


def safe_load_all(text: str) -> Iterator[Any]:
    return yaml.load_all(text, Loader=SafeLoader)  # noqa: S506 - a safe loader
