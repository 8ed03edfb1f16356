"""Splunk HTTP Event Collector: ``POST /services/collector/event`` with
``Authorization: Splunk <token>``, one event object per request.

The HEC envelope: ``time`` (epoch seconds of the change), ``host``, ``source`` = apiwatch,
``sourcetype`` = ``apiwatch:finding`` and ``event`` = every field of the event, including
its ``idempotency_key`` (also sent as the ``X-Idempotency-Key`` header). Splunk answers
``{"text": "Success", "code": 0}``; any other code is a failure and the event is retried.
"""

from __future__ import annotations

import json
import socket

from monitor.events import FindingEvent, epoch_ms
from monitor.sinks.base import AlertSpec, SinkError, check_url
from monitor.sinks.http import Poster

KEYS = frozenset({"url", "headers", "token_env", "token_file"})
SOURCETYPE = "apiwatch:finding"


def check(spec: AlertSpec) -> None:
    check_url(spec)
    if not (spec.token_env or spec.token_file):
        raise ValueError("token_env: missing (a HEC token, from token_env or token_file)")


def envelope(e: FindingEvent, host: str) -> dict:
    return {
        "time": (epoch_ms(e.time) or 0) / 1000,
        "host": host,
        "source": "apiwatch",
        "sourcetype": SOURCETYPE,
        "event": e.as_dict(),
    }


class Sink:
    def __init__(self, spec: AlertSpec):
        self.spec = spec
        self.poster = Poster(spec, "Splunk")
        self.host = socket.gethostname()

    def send(self, event: FindingEvent) -> None:
        answer = self.poster.post(
            envelope(event, self.host), {"X-Idempotency-Key": event.idempotency_key}
        )
        try:
            code = json.loads(answer or b"{}").get("code", 0)
        except (ValueError, AttributeError):
            code = None
        if code != 0:
            raise SinkError(f"{self.spec.where()}: HEC answered {answer[:200]!r}")

    def close(self) -> None:
        pass
