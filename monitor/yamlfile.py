"""Reading the bundled and user YAML (catalogue, rules, packs, client signatures).

Every ``apiwatch`` command reads the catalogue and the rules at start-up, and parsing them
(with importing PyYAML) was most of that. So what a document parses to is kept in the cache
directory (:func:`monitor.resources.cache_dir`, ``yaml/``), marshalled and named by a digest
of the text itself: a changed file is a new name, never a stale answer, and a damaged or
unwritable cache only means parsing again. PyYAML is imported only to parse: with libyaml's
safe loader when PyYAML was built with it, else its own.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import sys
import tempfile
from typing import Any

from monitor.resources import cache_dir


class YamlError(ValueError):
    """The text is not valid YAML (or, with ``unique_keys``, gives a key twice); the
    message is PyYAML's, with the line and column."""


def safe_load(text: str, *, unique_keys: bool = False) -> Any:
    """The one document ``text`` holds. ``unique_keys``: a key given twice in a mapping is
    an error (YAML itself keeps the last)."""
    return _cached(text, "one-unique" if unique_keys else "one")


def safe_load_all(text: str) -> list[Any]:
    """Every document of a multi-document ``text``."""
    return _cached(text, "all")


def _cached(text: str, how: str) -> Any:
    raw = text.encode("utf-8", "surrogatepass")
    key = hashlib.sha256(f"{how}\0{sys.implementation.cache_tag}\0".encode() + raw).hexdigest()
    path = cache_dir() / "yaml" / f"{key}.marshal"
    try:
        return marshal.loads(path.read_bytes())
    except (OSError, ValueError, EOFError, TypeError):
        pass  # not cached yet, or damaged: parse
    data = _parse(text, how)
    try:
        blob = marshal.dumps(data)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(blob)
            os.replace(tmp, path)  # concurrent commands write the same bytes
        except OSError:
            os.unlink(tmp)  # a full disk leaves no partial file behind
            raise
    except (OSError, ValueError):
        pass  # an unwritable cache (or a value marshal cannot keep) costs a parse next time
    return data


def _parse(text: str, how: str) -> Any:
    import yaml  # only here: a cached document needs no parser

    loader = _unique_key_loader() if how == "one-unique" else _safe_loader()
    try:
        if how == "all":
            return list(yaml.load_all(text, Loader=loader))  # noqa: S506 - a safe loader
        return yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        raise YamlError(str(exc)) from exc


def _safe_loader() -> type:
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


_UNIQUE: list[type] = []


def _unique_key_loader() -> type:
    """The safe loader, rejecting a key given twice in one mapping."""
    if _UNIQUE:
        return _UNIQUE[0]
    import yaml

    class UniqueKeyLoader(_safe_loader()):  # type: ignore[misc]
        pass

    def construct_mapping(loader: Any, node: yaml.MappingNode, deep: bool = False) -> Any:
        loader.flatten_mapping(node)
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return loader.construct_mapping(node, deep=deep)

    UniqueKeyLoader.add_constructor(
        yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping
    )
    _UNIQUE.append(UniqueKeyLoader)
    return UniqueKeyLoader
