"""Findings: what an analyst works, one per (rule, provider, site — or egress country).

Incidents are the detail underneath (one per rule × host × client × user × egress × UTC day);
a finding rolls them up and carries the lifecycle:

    open ──ack──▶ acknowledged ──resolve──▶ resolved ──new traffic──▶ reopened
      ▲                │ (--until DATE: an exception; open again when it expires)
      └────────────────┘            superseded: its basis disappeared on ``reevaluate``

This module holds the identity, the vocabulary and the exception matching; the store keeps
the rows and is the one place a status changes (:meth:`monitor.store.Store.transition`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from monitor.ids import finding_id

__all__ = ["FINDING_FIELDS", "FINDING_STATUSES", "ExceptionEntry", "finding_id", "is_finding_id"]

FINDING_STATUSES = ("open", "acknowledged", "resolved", "reopened", "superseded")
#: statuses that need someone's attention: counted by ``fail_on``
ACTIVE_STATUSES = ("open", "reopened")
#: what ``findings --json`` prints, in this order (users' scripts rely on it)
FINDING_FIELDS = (
    "id", "rule", "severity", "provider", "site", "egress_country", "status", "first_seen",
    "last_seen", "count", "blocked", "bytes_out", "clients", "users", "hosts", "days",
)  # fmt: skip
#: actions recorded in ``finding_events`` (``action`` column)
EVENT_ACTIONS = (
    "new", "acknowledged", "resolved", "open", "reopened", "activity", "excepted",
    "exception-expired", "superseded",
)  # fmt: skip


def is_finding_id(text: str) -> bool:
    return text[:2].upper() == "F-"


@dataclass(frozen=True, slots=True)
class ExceptionEntry:
    """One ``[[exceptions]]`` entry of the config: an approved deviation, until a date.

    ``rule``, ``provider`` and ``site`` narrow which findings it covers (unset: any);
    ``client`` (a CIDR) or ``user`` narrow it to detail: a finding is excepted only when all
    of its detail falls inside."""

    until: str  # YYYY-MM-DD, the last day it holds
    reason: str
    approver: str
    rule: str | None = None
    provider: str | None = None
    site: str | None = None
    client: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    user: str | None = None
    key: str = "exceptions"  # where it was written, e.g. "exceptions[0]"

    def holds(self, today: str) -> bool:
        return today <= self.until

    def covers(
        self, finding: dict, clients: Iterable[str | None], users: Iterable[str | None]
    ) -> bool:
        """Whether this entry covers ``finding``, whose detail has these clients and users."""
        for name in ("rule", "provider", "site"):
            want = getattr(self, name)
            if want is not None and finding.get(name) != want:
                return False
        if self.client is not None and not all(_in_net(c, self.client) for c in clients):
            return False
        return self.user is None or all(u == self.user for u in users)


def _in_net(ip: str | None, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    if not ip:
        return False
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:  # pseudonymised
        return False
    return addr.version == net.version and addr in net


def clients_in(clients: Iterable[str | None], cidrs: Sequence[str]) -> list[str]:
    """The addresses among ``clients`` inside any of ``cidrs`` (a bare address is a /32).
    Each address is looked up per prefix length (network starts in a set), parsed once
    per process: a report's ``--client 10.0.0.0/8`` passes its 5,000 addresses back in as
    /32s for each finding's detail, and testing every address against every network was
    25 M tests per finding."""
    starts: dict[tuple[int, int], set[int]] = {}  # (version, netmask) -> network addresses
    for cidr in cidrs:
        version, mask, start = _network(cidr)
        starts.setdefault((version, mask), set()).add(start)
    out = []
    for c in clients:
        addr = _address(c) if c else None
        if addr is not None and any(
            addr[0] == version and addr[1] & mask in nets
            for (version, mask), nets in starts.items()
        ):
            out.append(c)
    return out


@lru_cache(maxsize=1 << 16)
def _network(cidr: str) -> tuple[int, int, int]:
    """``cidr``'s IP version, netmask and first address, as integers."""
    net = ipaddress.ip_network(cidr, strict=False)
    return net.version, int(net.netmask), int(net.network_address)


@lru_cache(maxsize=1 << 16)
def _address(text: str) -> tuple[int, int] | None:
    """``text``'s IP version and address as an integer (None: not an address)."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:  # pseudonymised
        return None
    return addr.version, int(addr)
