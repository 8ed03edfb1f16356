"""Identities: of raw records, of stored observations and of incidents.

De-duplication and aggregation rest on these digests, so each is defined once here: a
collector names a record with :func:`record_id`, the pipeline turns that into the stored
observation's :func:`observation_id`, and traffic aggregates under its :func:`incident_id`,
which rolls up into its :func:`finding_id`.
Changing any of them changes what a re-scan considers already stored.
"""

from __future__ import annotations

from functools import lru_cache
from hashlib import blake2b
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from monitor.observation import Observation


#: an empty hash per digest size: a copy costs less than a new one made with its parameters
_B6, _B8, _B12 = (blake2b(digest_size=n) for n in (6, 8, 12))


def record_id(raw: bytes) -> str:
    """Stable identity of one raw record (a log line, an eve.json event, a flow key)."""
    h = _B12.copy()
    h.update(raw)
    return h.hexdigest()


def observed_record_id(obs: Observation) -> str:
    """Identity of a record whose collector gave none: its observed values."""
    key = "\x1f".join(
        str(v)
        for v in (obs.ts, obs.source, obs.client_ip, obs.client_port, obs.method, obs.dest_host,
                  obs.dest_port, obs.url, obs.status, obs.bytes_out, obs.bytes_in)
    )  # fmt: skip
    return record_id(key.encode("utf-8", "surrogatepass"))


def observation_id(record_id: str, nth: int = 0) -> int:
    """63-bit integer id of the nth identical record in one input."""
    h = _B8.copy()
    h.update((record_id if nth == 0 else f"{record_id}/{nth}").encode())
    return int.from_bytes(h.digest(), "big") >> 1


def incident_id(
    rule: str,
    provider: str,
    dest_host: str | None,
    client_ip: str | None,
    egress_ip: str | None,
    egress_country: str | None,
    day: str,
    user: str | None = None,
) -> str:
    """Deterministic: the same traffic always aggregates into the same incident. The user is
    part of the key only when the log names one (ids of user-less traffic do not change)."""
    # one tuple display, no comprehension (its own frame): the record path makes one per
    # new client of a destination and rule
    key = "\x1f".join((rule or "", provider or "", dest_host or "", client_ip or "",
                       egress_ip or "", egress_country or "", day or ""))  # fmt: skip
    if user:
        key += "\x1f" + user
    h = _B8.copy()
    h.update(key.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


@lru_cache(maxsize=4096)  # a scan makes one per incident row, from a few distinct values
def finding_id(rule: str, provider: str, site: str | None, egress_country: str | None) -> str:
    """The finding detail rolls up into: ``F-`` and 12 hex digits (never a prefix of an
    incident id, which is all hex). With a site, the egress country is not part of it."""
    key = "\x1f".join((rule, provider or "", site or "", "" if site else egress_country or ""))
    h = _B6.copy()
    h.update(key.encode("utf-8", "surrogatepass"))
    return "F-" + h.hexdigest()
