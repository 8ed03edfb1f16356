"""Reading field values, as the log collectors share it: the JSON parser, conversions
memoised per value, and the host filter's verdicts memoised per host name.

Logs repeat the same addresses, host names and URLs over and over, so each collector
converts a value once and remembers the result in a dict that is emptied when it outgrows
its bound (simpler and cheaper per call than an LRU, and as good for a stream). The helpers
return plain closures: calling one costs no more than the bound method it replaces.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from monitor.collectors.base import HostFilter, ingress_of, requests_of

try:  # optional: a faster parser for the same JSON (3-4x faster than json.loads)
    import orjson

    loads: Callable[[bytes | str], Any] = orjson.loads
    JSON_ERRORS: tuple[type[Exception], ...] = (orjson.JSONDecodeError, ValueError, RecursionError)
except ImportError:  # pragma: no cover - exercised when orjson is absent
    loads = json.loads
    JSON_ERRORS = (ValueError, RecursionError)

__all__ = ["JSON_ERRORS", "loads", "host_keeper", "memoised", "record_keeper", "RecordKeeper"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_MISSING: Any = object()


def memoised(convert: Callable[[K], V], limit: int) -> Callable[[K], V]:
    """``convert`` remembered per argument (results may be None); the memory is emptied
    whenever it holds more than ``limit`` values. For pure conversions of field values."""
    cache: dict[K, V] = {}
    get = cache.get

    def call(key: K) -> V:
        v = get(key, _MISSING)
        if v is _MISSING:
            if len(cache) > limit:
                cache.clear()
            v = cache[key] = convert(key)
        return v

    return call


def _keep_all(host: str | None) -> bool:
    return True


def host_keeper(host_filter: HostFilter | None, limit: int) -> Callable[[str | None], bool]:
    """Whether a record naming ``host`` is kept: ``host_filter``'s verdict, remembered per
    host name (at most ``limit`` of them at a time). A record whose host is not known
    (None) is kept, and every record when there is no filter."""
    if host_filter is None:
        return _keep_all
    cache: dict[str, bool] = {}
    get = cache.get

    def keep(host: str | None) -> bool:
        if host is None:
            return True
        v = get(host)
        if v is None:
            if len(cache) > limit:
                cache.clear()
            v = cache[host] = bool(host_filter(host))
        return v

    return keep


RecordKeeper = Callable[..., bool]


def _keep_record(host, dest_ip=None, url=None, user_agent=None, ja4=None) -> bool:
    return True


def record_keeper(host_filter: HostFilter | None, limit: int) -> RecordKeeper:
    """Whether a record ``(host, dest_ip, url, user_agent, ja4)`` is kept: its host passes
    the host filter (:func:`host_keeper`); or, a host the filter rejects, its destination
    address is in a provider's published ingress ranges (the filter's ``ingress``: fronted
    traffic), or its request looks like an LLM API's (``requests``: its URL path, its
    User-Agent; ``ja4s``: a JA4 only LLM clients send). Addresses are asked once each; a
    URL is asked only when it holds one of the filter's ``markers`` (the byte strings every
    LLM API path holds)."""
    if host_filter is None:
        return _keep_record
    keep_host = host_keeper(host_filter, limit)
    ingress = ingress_of(host_filter)
    in_ranges = memoised(ingress, limit) if ingress is not None else None
    requests = requests_of(host_filter)
    markers = tuple(m.decode("ascii", "replace") for m in getattr(host_filter, "markers", ()))
    ja4s = getattr(host_filter, "ja4s", frozenset())

    def keep(
        host: str | None,
        dest_ip: str | None = None,
        url: str | None = None,
        user_agent: str | None = None,
        ja4: str | None = None,
    ) -> bool:
        if keep_host(host):
            return True
        if dest_ip is not None and in_ranges is not None and in_ranges(dest_ip):
            return True
        if ja4 is not None and ja4 in ja4s:
            return True
        if requests is None or (
            user_agent is None and (url is None or not any(m in url for m in markers))
        ):
            return False
        return requests(url, user_agent)

    return keep
