"""Pseudonymisation of who-did-it fields, for teams that must not store them.

Client addresses and user names are replaced by a keyed HMAC-SHA256 before anything is
stored, and before incident ids are computed (an unkeyed digest of an IPv4 address can be
reversed by trying all 2^32 of them). The same key gives the same pseudonym, so incidents
still aggregate per client and can be matched against the DHCP or proxy-auth logs by
whoever holds the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from functools import lru_cache

from monitor.errors import ApiwatchError

PREFIX = "anon:"
MIN_KEY_BYTES = 16


class PrivacyError(ApiwatchError, ValueError):
    """No key, or one too short to resist guessing."""


def privacy_mode(pseudonymizer: Pseudonymizer | None) -> str:
    """How a scan stores who did it: ``plain``, or ``pseudonymized:<key fingerprint>``."""
    return "plain" if pseudonymizer is None else f"pseudonymized:{pseudonymizer.fingerprint}"


class Pseudonymizer:
    def __init__(self, key: str | bytes):
        raw = key.encode() if isinstance(key, str) else key
        if len(raw) < MIN_KEY_BYTES:
            raise PrivacyError(f"the pseudonymisation key must be at least {MIN_KEY_BYTES} bytes")
        self._key = raw
        self.pseudonym = lru_cache(maxsize=1 << 16)(self._pseudonym)

    @property
    def fingerprint(self) -> str:
        """Names the key without revealing it (recorded in the database, shown in errors)."""
        return hmac.new(self._key, b"apiwatch key fingerprint", hashlib.sha256).hexdigest()[:16]

    def _pseudonym(self, value: str) -> str:
        return (
            PREFIX
            + hmac.new(
                self._key, value.encode("utf-8", "surrogatepass"), hashlib.sha256
            ).hexdigest()[:20]
        )

    def __call__(self, value: str | None) -> str | None:
        if value is None or value.startswith(PREFIX):
            return value
        return self.pseudonym(value)

    def apply(self, enriched):
        """The same record with client address, user and (when it is the client's own
        public address) egress address pseudonymised."""
        obs, egress = enriched.obs, enriched.egress
        client = obs.client_ip
        logged = obs.egress_ip
        new_obs = dataclasses.replace(obs, client_ip=self(client), user=self(obs.user),
                                      egress_ip=self(logged) if logged == client else logged)  # fmt: skip
        if egress.ip is not None and egress.ip == client:
            egress = dataclasses.replace(egress, ip=self(egress.ip))
        return dataclasses.replace(enriched, obs=new_obs, egress=egress)
