"""The QUIC versions whose client hello apiwatch reads, as data.

Kept apart from :mod:`monitor.collectors.quic` (which loads ``cryptography``) so that the
flow table can tell cheaply whether a UDP datagram is worth handing to it.

Initial packets of every version below are protected like QUIC v1's (RFC 9001 section 5:
HKDF from a salt and the client's Destination Connection ID, AES-128-GCM, header
protection); only the salt, the HKDF label prefix and the long-header type bits differ.
Sources, read 2026-12-04: RFC 9001 section 5.2 and RFC 9369 section 3.3 (v1, v2);
draft-ietf-quic-tls-23 and -29 section 5.2 (draft salts); Chromium
``net/third_party/quiche/src/quiche/quic/core/quic_versions.cc`` (Q050, T050, T051 salts);
Wireshark ``epan/dissectors/packet-quic.c`` ``quic_draft_version()`` (mvfst versions and
which draft each follows).

Google QUIC before Q050 (Q039 to Q046) sends its client hello (``CHLO``) in the clear:
:data:`PLAIN_GQUIC` lists them. Q050, T050 and T051 protect their Initials as above but
keep Google QUIC's frame types; Q050's CRYPTO frames carry a ``CHLO``, the T versions' TLS.
"""

from __future__ import annotations

__all__ = [
    "INITIAL_VERSIONS",
    "CHLO_VERSIONS",
    "GQUIC_FRAMES",
    "PLAIN_GQUIC",
    "QUIC_V1",
    "QUIC_V2",
    "worth_watching",
]

QUIC_V1 = 0x00000001
QUIC_V2 = 0x6B3343CF

_V1 = "38762cf7f55934b34d179ae6a4c80cadccbb7f0a"
_V2 = "0dede3def700a6db819381be6e269dcbf9bd2ed9"
_D22 = "7fbcdb0e7c66bbe9193a96cd21519ebd7a02644a"
_D23 = "c3eef712c72ebb5a11a7d2432bb46365bef9f502"  # drafts 23 to 28
_D29 = "afbfec289993d24c9e9786f19c6111e04390a899"  # drafts 29 to 32; 33 and 34 use v1's
_Q050 = "504574efd066fe2f9d945cfcdbd3a7f0d3b56b45"
_T050 = "7ff579e5acd07291558030 4c43a2367c60488310".replace(" ", "")
_T051 = "7a4edef4e7ccee5fa4506c19124fc8ccda6e033d"


def _draft_salt(n: int) -> str:
    return _D23 if n <= 28 else _D29 if n <= 32 else _V1


#: version -> (name, Initial salt (hex), HKDF label prefix, Initial type bits, Retry type bits)
INITIAL_VERSIONS: dict[int, tuple[str, str, str, int, int]] = {
    QUIC_V1: ("v1", _V1, "quic", 0, 3),
    QUIC_V2: ("v2", _V2, "quicv2", 1, 0),
    **{0xFF000000 + n: (f"draft-{n}", _draft_salt(n), "quic", 0, 3) for n in range(23, 35)},
    0xFACEB001: ("mvfst-draft-22", _D22, "quic", 0, 3),
    0xFACEB002: ("mvfst-draft-27", _D23, "quic", 0, 3),
    0xFACEB00E: ("mvfst-experimental", _D23, "quic", 0, 3),
    0x51303530: ("Q050", _Q050, "quic", 0, 3),
    0x54303530: ("T050", _T050, "quic", 0, 3),
    0x54303531: ("T051", _T051, "quic", 0, 3),
}
#: Google's versions: Google QUIC frame types (CRYPTO is 0x08, PING 0x07) in Initials
GQUIC_FRAMES = frozenset({0x51303530, 0x54303530, 0x54303531})
#: ... of which the CRYPTO frames carry a QUIC Crypto handshake message (CHLO), not TLS
CHLO_VERSIONS = frozenset({0x51303530})
#: Google QUIC versions with the client hello in the clear (version field bytes)
PLAIN_GQUIC = frozenset({b"Q039", b"Q043", b"Q044", b"Q045", b"Q046"})
#: the version field bytes of :data:`INITIAL_VERSIONS`
INITIAL_VERSION_BYTES = frozenset(v.to_bytes(4, "big") for v in INITIAL_VERSIONS)


def worth_watching(p: bytes) -> bool:
    """A client datagram that may carry a readable client hello: a long-header packet of
    a version in :data:`INITIAL_VERSIONS` (Initial, 0-RTT or Handshake: 0-RTT may come
    first), or a Google QUIC packet of a :data:`PLAIN_GQUIC` version."""
    if len(p) < 7:
        return False
    if p[0] & 0x80:
        v = p[1:5]
        return (p[0] & 0x40 != 0 and v in INITIAL_VERSION_BYTES) or v in PLAIN_GQUIC
    # Google QUIC public header: version flag (0x01) and an 8-byte connection ID (0x08)
    return len(p) >= 13 and p[0] & 0x09 == 0x09 and p[9:13] in PLAIN_GQUIC
