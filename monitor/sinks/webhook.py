"""Webhook: an HTTP(S) POST of JSON per event, readable by Slack and Teams as it is.

The body holds ``text`` (the one-line summary that Slack incoming webhooks and Teams
workflows post to the channel) and ``event`` (every field of the event, for anything that
parses it). The ``Idempotency-Key`` header carries the event's key so receivers can drop a
repeat. A token from ``token_env`` or ``token_file`` is sent as ``Authorization: Bearer``;
``headers`` adds any others (e.g. a custom auth header).
"""

from __future__ import annotations

from monitor.events import FindingEvent
from monitor.sinks.base import AlertSpec, check_url
from monitor.sinks.http import Poster

KEYS = frozenset({"url", "headers", "token_env", "token_file"})


def check(spec: AlertSpec) -> None:
    check_url(spec)


def body(e: FindingEvent) -> dict:
    return {"text": e.summary(), "event": e.as_dict()}


class Sink:
    def __init__(self, spec: AlertSpec):
        self.spec = spec
        self.poster = Poster(spec, "Bearer")

    def send(self, event: FindingEvent) -> None:
        self.poster.post(body(event), {"Idempotency-Key": event.idempotency_key})

    def close(self) -> None:
        pass
