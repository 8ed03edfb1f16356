"""What every sink shares: its configuration, its failure, secrets and safe names.

A sink module (one per ``kind``) defines ``KEYS`` (the config keys of its kind), ``check(spec)``
(raises :class:`ValueError` naming the key that is wrong) and ``Sink`` (``send`` one event,
``close``). :mod:`monitor.sinks` registers the modules; :mod:`monitor.alerts` drives them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from monitor.errors import ApiwatchError
from monitor.events import FindingEvent
from monitor.policy import SEVERITY_RANK

if TYPE_CHECKING:  # ssl loads only for a sink that speaks TLS (start-up time)
    import ssl

DEFAULT_MIN_SEVERITY = "medium"
TIMEOUT = 10.0  # seconds for one delivery attempt (connect + send + answer)


class SinkError(ApiwatchError):
    """A delivery attempt failed; the event stays in the outbox and is retried."""


@dataclass(frozen=True)
class AlertSpec:
    """One ``[[alerts]]`` table of the configuration."""

    name: str
    kind: str
    min_severity: str = DEFAULT_MIN_SEVERITY
    rules: tuple[str, ...] = ()
    sites: tuple[str, ...] = ()
    url: str | None = None  # webhook, splunk_hec
    headers: tuple[tuple[str, str], ...] = ()
    token_env: str | None = None
    token_file: Path | None = None
    address: str | None = None  # syslog: udp://, tcp://, tls://host:port
    format: str | None = None  # syslog: cef | leef; jsonl: ocsf | ecs
    path: str | None = None  # jsonl: a file, or - for stdout
    ca_file: Path | None = None  # TLS trust (tls://, https://) beyond the system's
    key: str = "alerts"  # where it was written, e.g. "alerts[0]", for messages

    def wants(self, event: FindingEvent) -> bool:
        """Does this sink take ``event`` (severity threshold, rule and site filters)?"""
        if event.event_type == "test":
            return True
        if event.severity_rank < SEVERITY_RANK[self.min_severity]:
            return False
        if self.rules and event.rule not in self.rules:
            return False
        return not self.sites or event.site in self.sites

    def token(self) -> str | None:
        """The secret from ``token_env`` or ``token_file`` (read when the sink opens, never
        logged, never part of a message)."""
        if self.token_env:
            value = os.environ.get(self.token_env)
            if not value:
                raise SinkError(f"{self.key}.token_env: ${self.token_env} is not set")
            return value.strip()
        if self.token_file:
            try:
                return self.token_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise SinkError(
                    f"{self.key}.token_file: cannot read {self.token_file}: {exc.strerror}"
                ) from None
        return None

    def where(self) -> str:
        """Where it delivers, safe to print: URL paths and queries may hold secrets
        (a Slack webhook URL is its own credential), so only scheme, host and port."""
        if self.url:
            parts = urlsplit(self.url)
            return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/…"
        return self.address or self.path or "-"

    def tls_context(self) -> ssl.SSLContext:
        import ssl

        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)


class Sink(Protocol):
    spec: AlertSpec

    def send(self, event: FindingEvent) -> None:
        """Deliver one event or raise :class:`SinkError` (then it is retried later)."""
        ...

    def close(self) -> None: ...


def check_url(spec: AlertSpec) -> None:
    if not spec.url:
        raise ValueError("url: missing (https://…)")
    parts = urlsplit(spec.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("url: expected an http:// or https:// URL")
    if spec.token_env and spec.token_file:
        raise ValueError("token_env: give token_env or token_file, not both")
    if spec.token_file and not spec.token_file.is_file():
        raise ValueError(f"token_file: {spec.token_file} is not a readable file")


def check_format(spec: AlertSpec, formats: tuple[str, ...]) -> None:
    if spec.format not in formats:
        raise ValueError(f"format: expected one of {', '.join(formats)}")
