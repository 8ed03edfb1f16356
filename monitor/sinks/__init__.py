"""Alert sinks, one module per ``kind`` of ``[[alerts]]`` table.

Like mitmproxy addons, a sink only receives events (:class:`~monitor.events.FindingEvent`)
and knows nothing of scans or the store. A new kind is one module (``KEYS``, ``check``,
``Sink``, see :mod:`monitor.sinks.base`) plus one line in :data:`KINDS`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from monitor.sinks.base import AlertSpec, Sink, SinkError

__all__ = ["KINDS", "AlertSpec", "Sink", "SinkError", "module_of", "open_sink"]

#: kind → module under monitor.sinks
KINDS = {
    "webhook": "webhook",
    "syslog": "syslog",
    "jsonl": "jsonl",
    "splunk_hec": "splunk_hec",
}


def module_of(kind: str) -> ModuleType:
    return importlib.import_module(f"monitor.sinks.{KINDS[kind]}")


def open_sink(spec: AlertSpec) -> Sink:
    return module_of(spec.kind).Sink(spec)
