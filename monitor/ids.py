"""Identities: of raw records, of stored observations and of incidents.

De-duplication and aggregation rest on these digests, so each is defined once here: a
collector names a record with :func:`record_id`, the pipeline turns that into the stored
observation's :func:`observation_id`, and traffic aggregates under its :func:`incident_id`.
Changing any of them changes what a re-scan considers already stored.
"""

from __future__ import annotations

from hashlib import blake2b
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from monitor.observation import Observation


def record_id(raw: bytes) -> str:
    """Stable identity of one raw record (a log line, an eve.json event, a flow key)."""
    return blake2b(raw, digest_size=12).hexdigest()


def observed_record_id(obs: Observation) -> str:
    """Identity of a record whose collector gave none: its observed values."""
    key = "\x1f".join(
        str(v)
        for v in (obs.ts, obs.source, obs.client_ip, obs.client_port, obs.method, obs.dest_host,
                  obs.dest_port, obs.url, obs.status, obs.bytes_out, obs.bytes_in)
    )  # fmt: skip
    return record_id(key.encode("utf-8", "surrogatepass"))


def observation_id(record_id: str, nth: int) -> int:
    """63-bit integer id of the nth identical record in one input."""
    key = record_id if nth == 0 else f"{record_id}/{nth}"
    return int.from_bytes(blake2b(key.encode(), digest_size=8).digest(), "big") >> 1


def incident_id(
    rule: str,
    provider: str,
    dest_host: str | None,
    client_ip: str | None,
    egress_ip: str | None,
    egress_country: str | None,
    day: str,
) -> str:
    """Deterministic: the same traffic always aggregates into the same incident."""
    key = "\x1f".join(
        x or "" for x in (rule, provider, dest_host, client_ip, egress_ip, egress_country, day)
    )
    return blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
