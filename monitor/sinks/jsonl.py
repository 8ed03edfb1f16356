"""JSON lines to a file or stdout, in OCSF (Detection Finding) or ECS: the shapes Elastic,
Splunk and data lakes ingest from a file shipper (Filebeat, the OTel collector, Vector).

Field mapping: docs/alerts.md. Each event is one line, written whole with one ``write`` to a
file opened for appending and flushed (and fsynced) before it counts as delivered.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from monitor import __version__
from monitor.events import FindingEvent, epoch_ms
from monitor.sinks.base import AlertSpec, SinkError, check_format

KEYS = frozenset({"path", "format"})
FORMATS = ("ocsf", "ecs")

OCSF_VERSION = "1.1.0"
#: OCSF severity_id: 1 Informational, 2 Low, 3 Medium, 4 High, 5 Critical
OCSF_SEVERITY = {"info": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}
#: OCSF Detection Finding activity_id: 1 Create, 2 Update, 3 Close
OCSF_ACTIVITY = {"new": 1, "resolved": 3, "superseded": 3}
OCSF_ACTIVITY_NAME = {1: "Create", 2: "Update", 3: "Close"}
#: OCSF finding status_id: 1 New, 2 In Progress, 3 Suppressed (under an exception),
#: 4 Resolved, 99 Other (superseded)
OCSF_STATUS = {"open": 1, "reopened": 1, "acknowledged": 2, "resolved": 4, "superseded": 99}
OCSF_STATUS_NAME = {1: "New", 2: "In Progress", 3: "Suppressed", 4: "Resolved", 99: "Other"}
SUPPRESSED = 3
#: ECS event.severity: a number; higher is more severe (same scale as CEF's 0-10)
ECS_SEVERITY = {"info": 1, "low": 3, "medium": 5, "high": 8, "critical": 10}


def check(spec: AlertSpec) -> None:
    if not spec.path:
        raise ValueError("path: missing (a file, or - for stdout)")
    check_format(spec, FORMATS)


def ocsf(e: FindingEvent) -> dict[str, Any]:
    """An OCSF 1.1 Detection Finding (class_uid 2004, category Findings)."""
    activity = OCSF_ACTIVITY.get(e.event_type, 2)
    status = OCSF_STATUS.get(e.status or "open", 1)
    if status < OCSF_STATUS["resolved"] and excepted(e):
        status = SUPPRESSED
    return {
        "class_uid": 2004,
        "class_name": "Detection Finding",
        "category_uid": 2,
        "category_name": "Findings",
        "activity_id": activity,
        "activity_name": OCSF_ACTIVITY_NAME[activity],
        "type_uid": 2004 * 100 + activity,
        "type_name": f"Detection Finding: {OCSF_ACTIVITY_NAME[activity]}",
        "time": epoch_ms(e.time),
        "severity_id": OCSF_SEVERITY.get(e.severity, 0),
        "severity": e.severity.capitalize(),
        "status_id": status,
        "status": OCSF_STATUS_NAME[status],
        "message": e.summary(),
        "count": e.count,
        "start_time": epoch_ms(e.first_seen),
        "end_time": epoch_ms(e.last_seen),
        "metadata": {
            "version": OCSF_VERSION,
            "uid": e.event_id,
            "correlation_uid": e.finding_id,
            "event_code": e.event_type,
            "product": {"name": "apiwatch", "vendor_name": "apiwatch", "version": __version__},
        },
        "finding_info": {
            "uid": e.finding_id,
            "title": e.title or e.rule,
            "analytic": {"uid": e.rule, "name": e.rule, "type_id": 1, "type": "Rule"},
            "first_seen_time": epoch_ms(e.first_seen),
            "last_seen_time": epoch_ms(e.last_seen),
        },
        "src_endpoint": _drop_none({"ip": e.client_ip}),
        "dst_endpoint": _drop_none({"hostname": e.dest_host}),
        "unmapped": _drop_none(
            {
                "idempotency_key": e.idempotency_key,
                "event_type": e.event_type,
                "provider": e.provider,
                "site": e.site,
                "egress_country": e.egress_country,
                "egress_ip": e.egress_ip,
                "new_count": e.new_count,
                "blocked": e.blocked,
                "actor": e.actor,
                "note": e.note,
                "exception_until": e.exception_until,
            }
        ),
    }


def excepted(e: FindingEvent) -> bool:
    """Whether the finding is under an exception after this event."""
    return bool(e.exception_until) and e.event_type != "exception-expired"


def ecs(e: FindingEvent) -> dict[str, Any]:
    """An Elastic Common Schema alert document (ECS 8.x field names)."""
    return {
        "@timestamp": e.time,
        "message": e.summary(),
        "ecs": {"version": "8.11.0"},
        "event": {
            "kind": "alert",
            "category": ["network"],
            "type": ["info"],
            "action": e.event_type,
            "id": e.event_id,
            "severity": ECS_SEVERITY.get(e.severity, 0),
            "start": e.first_seen,
            "end": e.last_seen,
            "dataset": "apiwatch.finding",
            "module": "apiwatch",
            **_drop_none({"reason": e.note}),
        },
        "rule": {"id": e.rule, "name": e.title or e.rule, "ruleset": "apiwatch"},
        "observer": {"vendor": "apiwatch", "product": "apiwatch", "version": __version__},
        "source": _drop_none({"ip": e.client_ip}),
        "destination": _drop_none({"domain": e.dest_host}),
        "apiwatch": {
            "finding": _drop_none(
                {
                    "id": e.finding_id,
                    "status": e.status,
                    "severity": e.severity,
                    "count": e.count,
                    "new_count": e.new_count,
                    "blocked": e.blocked,
                    "first_seen": e.first_seen,
                    "last_seen": e.last_seen,
                    "excepted": excepted(e),
                    "exception_until": e.exception_until,
                }
            ),
            "idempotency_key": e.idempotency_key,
            **_drop_none({"actor": e.actor}),
            "provider": e.provider,
            "site": e.site,
            "egress": _drop_none({"country": e.egress_country, "ip": e.egress_ip}),
        },
    }


RENDER = {"ocsf": ocsf, "ecs": ecs}


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


class Sink:
    def __init__(self, spec: AlertSpec):
        self.spec = spec
        self._render = RENDER[spec.format or "ocsf"]
        self._fd: int | None = None

    def send(self, event: FindingEvent) -> None:
        line = (json.dumps(self._render(event), ensure_ascii=False) + "\n").encode()
        try:
            if self.spec.path == "-":
                sys.stdout.buffer.write(line)
                sys.stdout.buffer.flush()
                return
            if self._fd is None:
                self._fd = os.open(self.spec.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            os.write(self._fd, line)  # O_APPEND: one write, one whole line
            os.fsync(self._fd)
        except OSError as exc:
            self.close()
            raise SinkError(f"{self.spec.path}: cannot write: {exc.strerror or exc}") from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
