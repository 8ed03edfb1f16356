"""Finding events: what the store tells registered sinks when a finding changes.

The store writes each event to its outbox in the same transaction as the change it reports
(new, updated, escalated, reopened, acknowledged, resolved, excepted, exception-expired,
superseded), so an event exists if and only
if its change was committed. Delivery happens after the commit (:mod:`monitor.alerts`), and
every event carries an ``idempotency_key`` (finding id + event id) so that a receiver can
drop the one copy a crash between its acknowledgement and our commit may send again.

One shape for every sink: the formats (CEF, LEEF, OCSF, ECS, Slack text) are renderings of
:class:`FindingEvent`, made in the sink modules under :mod:`monitor.sinks`.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Any

from monitor.policy import SEVERITY_RANK

#: Event types: a finding appeared, gained traffic (at most once per digest window), rose in
#: severity, came back after being resolved (or superseded), an analyst changed its status,
#: an exception now covers it (``ack --until``, a config ``[[exceptions]]`` entry) or no
#: longer does (it ran out, or the entry was withdrawn), or ``reevaluate`` found its basis
#: gone. The names are the finding's audit-trail actions. ``test`` is ``alerts test``'s.
EVENT_TYPES = ("new", "updated", "escalated", "reopened", "acknowledged", "resolved",
               "excepted", "exception-expired", "superseded", "test")  # fmt: skip

#: A finding that keeps receiving traffic raises one ``updated`` event per this many seconds
#: at most, carrying the requests since the previous event (``new_count``).
DEFAULT_DIGEST_SECONDS = 600


@dataclass(frozen=True, slots=True)
class FindingEvent:
    """One change of one finding, with the finding's state after the change."""

    event_id: str
    finding_id: str
    event_type: str
    time: str  # when the change was committed, ISO 8601 UTC
    rule: str
    severity: str
    title: str | None = None
    provider: str | None = None
    site: str | None = None
    egress_country: str | None = None
    egress_ip: str | None = None
    dest_host: str | None = None
    client_ip: str | None = None
    status: str | None = None
    first_seen: str | None = None
    last_seen: str | None = None
    count: int = 0  # requests behind the finding so far (all its detail rows)
    new_count: int = 0  # requests since the previous event of this finding
    blocked: int = 0
    actor: str | None = None  # who made the change (ack, resolve, an exception's approver)
    note: str | None = None  # why: the analyst's note, the exception's reason
    exception_until: str | None = None  # YYYY-MM-DD, the last day the exception holds (held)

    @property
    def idempotency_key(self) -> str:
        return f"{self.finding_id}:{self.event_id}"

    @property
    def severity_rank(self) -> int:
        return SEVERITY_RANK.get(self.severity, 0)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "idempotency_key": self.idempotency_key}

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FindingEvent:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def of_finding(
        cls, finding: dict[str, Any], event_type: str, new_count: int = 0, at: str | None = None,
        actor: str | None = None, note: str | None = None, until: str | None = None,
    ) -> FindingEvent:  # fmt: skip
        """An event about ``finding`` (a stored finding row, with where/who/host from its
        latest detail) as it is now; ``until``: the exception's last day when the finding
        no longer holds it (an expiry)."""
        return cls(
            event_id=new_event_id(),
            finding_id=finding["id"],
            event_type=event_type,
            time=at or now_iso(),
            rule=finding["rule"],
            severity=finding["severity"],
            title=finding.get("title"),
            provider=finding.get("provider"),
            site=finding.get("site"),
            egress_country=finding.get("egress_country"),
            egress_ip=finding.get("egress_ip"),
            dest_host=finding.get("dest_host"),
            client_ip=finding.get("client_ip"),
            status=finding.get("status"),
            first_seen=finding.get("first_seen"),
            last_seen=finding.get("last_seen"),
            count=finding.get("count") or 0,
            new_count=new_count,
            blocked=finding.get("blocked") or 0,
            actor=actor,
            note=note,
            exception_until=until or finding.get("exception_until"),
        )

    def summary(self) -> str:
        """One line for chat channels and consoles."""
        where = self.site or self.egress_country or "unknown egress"
        country = f" ({self.egress_country})" if self.site and self.egress_country else ""
        extra = f", +{self.new_count} since last alert" if self.event_type == "updated" else ""
        if self.exception_until and self.event_type in ("excepted", "exception-expired"):
            extra += f"; exception until {self.exception_until}"
        if self.actor or self.note:
            by = f"by {self.actor}" if self.actor else ""
            extra += "; " + ": ".join(x for x in (by, self.note) if x)
        return (
            f"[apiwatch] {self.event_type} {self.severity} finding {self.finding_id}: "
            f"{self.title or self.rule} — {self.provider or '?'} from {where}{country}, "
            f"{self.count} request(s), last seen {self.last_seen or '?'}{extra}"
        )


def new_event_id() -> str:
    """Unique across databases, so idempotency keys never collide at a receiver."""
    return uuid.uuid4().hex


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def epoch_ms(iso: str | None) -> int | None:
    """Milliseconds since the epoch of an ISO 8601 UTC time (as stored), or None."""
    if not iso:
        return None
    dt = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def sample_event() -> FindingEvent:
    """What ``apiwatch alerts test`` sends: a complete event, marked as a test."""
    now = now_iso()
    return FindingEvent(
        event_id=new_event_id(),
        finding_id="test",
        event_type="test",
        time=now,
        rule="apiwatch-test",
        severity="info",
        title="apiwatch test alert: this sink works",
        provider="openai",
        site="test",
        egress_country="ZZ",
        status="open",
        first_seen=now,
        last_seen=now,
        count=1,
        new_count=1,
    )
