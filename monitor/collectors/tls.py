"""Names in TLS ClientHellos: a hand parser for the few fields apiwatch needs.

Two entry points:

* :func:`parse_client_hello` reads one Handshake message (type 1, 3-byte length, body),
  as found in QUIC CRYPTO frames or after the TLS record layer has been removed;
* :func:`client_hello_from_records` reads the first client bytes of a TCP stream (TLS
  record layer) and says either what the ClientHello holds, or how many more bytes it needs
  before it can tell (a ClientHello may span several records and several TCP segments), or
  that the stream is not TLS.

Only five things are taken from the message: the first ``host_name`` of server_name, the
presence of encrypted_client_hello (``0xfe0d``), the legacy version, supported_versions
(GREASE removed) and the ALPN protocol names; plus, for the JA4 fingerprint
(:mod:`monitor.collectors.ja4`, memoised per client configuration), the cipher suites, the
extension types and the signature algorithms. Every other extension is stepped over without
building anything (server_name, ALPN and supported_versions bodies are memoised by their
bytes), so a typical ClientHello takes a few µs on a plain CPython 3.11 build.

Nothing here raises on any input: a message whose lengths overrun their container (or
whose extensions do not fill their block exactly) is malformed and gives ``None``. The
server name is decoded byte-for-byte (latin-1, so IDNA ``xn--`` labels stay as sent),
lower-cased, with one trailing dot removed; a name holding a C0 control character or DEL is
dropped (``sni=None``) but the rest of the ClientHello is still reported. IP literals (which RFC 6066
forbids but clients send) are kept as given.

Note that Chrome and Firefox send a GREASE ``encrypted_client_hello`` extension on every
connection when they have no ECH config, so ``ech=True`` means "the name may be an outer
name", not "ECH is in use".
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass

from monitor.collectors.ja4 import ja4

__all__ = [
    "MAX_CLIENT_HELLO",
    "ClientHelloInfo",
    "client_hello_from_records",
    "is_grease",
    "parse_client_hello",
]

#: ClientHellos longer than this (handshake body, bytes) are ignored.
MAX_CLIENT_HELLO = 65536
#: Longest TLS record accepted (2^14 plaintext plus the slack RFC 8446 allows ciphertext).
MAX_RECORD = (1 << 14) + 256

_HANDSHAKE = 0x16
_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0x0000
_EXT_ALPN = 0x0010
_EXT_SUPPORTED_VERSIONS = 0x002B
_EXT_ECH = 0xFE0D
_EXT_SIGNATURE_ALGORITHMS = 0x000D
_WANTED = frozenset((_EXT_SERVER_NAME, _EXT_ALPN, _EXT_SUPPORTED_VERSIONS, _EXT_ECH))
_BYTE_TYPES = (bytes, bytearray, memoryview)
_MISS = object()
# Extension bodies repeat across connections (same hosts, same ALPN lists, same version
# lists): their parsed values are memoised, keyed by the raw bytes. Each cache is emptied
# when it reaches _CACHE_LIMIT entries.
_CACHE_LIMIT = 4096
_SNI_CACHE: dict[bytes, str | None] = {}
_ALPN_CACHE: dict[bytes, tuple[str, ...]] = {}
_VERSIONS_CACHE: dict[bytes, tuple[int, ...]] = {}
_HH = struct.Struct(">HH").unpack_from
_H = struct.Struct(">H").unpack_from
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]").search


@dataclass(frozen=True, slots=True)
class ClientHelloInfo:
    """What a ClientHello says about where the client is going."""

    sni: (
        str | None
    )  # first host_name entry, lower-case, trailing dot stripped; IP literals as given
    ech: bool  # encrypted_client_hello (0xfe0d) present: sni is then the outer (public) name
    legacy_version: int  # e.g. 0x0303
    versions: tuple[int, ...]  # supported_versions, GREASE removed; () when absent
    alpn: tuple[str, ...]  # ALPN protocol names, latin-1 decoded, in the client's order
    ja4: str | None = None  # JA4 fingerprint (monitor.collectors.ja4)


def is_grease(value: int) -> bool:
    """RFC 8701 GREASE code point (0x0a0a, 0x1a1a, ... 0xfafa)."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


def parse_client_hello(handshake: bytes) -> ClientHelloInfo | None:
    """Parse one Handshake message holding a ClientHello; ``None`` when it is not one.

    ``handshake`` starts with the handshake type (1) and its 3-byte length; bytes after the
    message are ignored. Messages longer than :data:`MAX_CLIENT_HELLO` are ignored.
    """
    try:
        if type(handshake) is not bytes:
            if not isinstance(handshake, _BYTE_TYPES):
                return None
            handshake = bytes(handshake)
        return _parse(handshake)
    except Exception:  # defensive: the parser checks every bound, this is never expected
        return None


def _parse(d: bytes) -> ClientHelloInfo | None:
    n = len(d)
    # type(1) len(3) version(2) random(32) session_id_len(1) = 39 bytes at least
    if n < 39 or d[0] != _CLIENT_HELLO:
        return None
    end = 4 + (d[1] << 16 | d[2] << 8 | d[3])
    if end > n or end - 4 > MAX_CLIENT_HELLO:
        return None
    legacy_version = d[4] << 8 | d[5]
    p = 39 + d[38]  # past the legacy session id
    if p + 2 > end:
        return None
    suites = p
    p += 2 + (d[p] << 8 | d[p + 1])  # cipher suites
    if p + 1 > end:
        return None
    p += 1 + d[p]  # compression methods
    if p + 2 > end:
        if p > end:
            return None
        # no extensions (SSLv3-like)
        return ClientHelloInfo(
            None,
            False,
            legacy_version,
            (),
            (),
            ja4(
                d[suites + 2 : suites + 2 + (d[suites] << 8 | d[suites + 1])],
                (),
                b"",
                (),
                (),
                legacy_version,
            ),
        )
    ext_end = p + 2 + (d[p] << 8 | d[p + 1])
    if ext_end > end:
        return None
    p += 2
    sni = None
    ech = False
    versions: tuple[int, ...] = ()
    alpn: tuple[str, ...] = ()
    seen_sni = False
    hh = _HH
    types: list[int] = []  # for JA4: every extension type, and the signature algorithms
    add_type = types.append
    sigalgs = b""
    # Extensions must fill their block exactly: one overrunning it, or 1-3 stray bytes at
    # its end, make the message malformed.
    while p + 4 <= ext_end:
        etype, elen = hh(d, p)
        add_type(etype)
        p += 4
        q = p + elen
        if etype == _EXT_SIGNATURE_ALGORITHMS:
            sigalgs = d[p:q]
        elif etype in _WANTED:
            if q > ext_end:
                return None
            if etype == _EXT_SERVER_NAME:
                if not seen_sni:
                    seen_sni = True
                    body = d[p:q]
                    sni = _SNI_CACHE.get(body, _MISS)
                    if sni is _MISS:
                        sni = _remember(_SNI_CACHE, body, _server_name(body))
            elif etype == _EXT_ALPN:
                if not alpn:
                    body = d[p:q]
                    alpn = _ALPN_CACHE.get(body) or _remember(_ALPN_CACHE, body, _alpn(body))
            elif etype == _EXT_SUPPORTED_VERSIONS:
                if not versions:
                    body = d[p:q]
                    versions = _VERSIONS_CACHE.get(body) or _remember(
                        _VERSIONS_CACHE, body, _versions(body)
                    )
            else:
                ech = True
        p = q
    if p != ext_end:
        return None
    n_suites = d[suites] << 8 | d[suites + 1]
    fingerprint = ja4(
        d[suites + 2 : suites + 2 + n_suites], tuple(types), sigalgs, alpn, versions, legacy_version
    )
    return ClientHelloInfo(sni, ech, legacy_version, versions, alpn, fingerprint)


def _remember(cache: dict, key: bytes, value):
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value
    return value


def _server_name(b: bytes) -> str | None:
    """First host_name of a server_name extension body."""
    q = len(b)
    if q < 2:
        return None
    lend = 2 + (b[0] << 8 | b[1])
    if lend > q:
        return None
    p = 2
    while p + 3 <= lend:
        name_type = b[p]
        r = p + 3 + (b[p + 1] << 8 | b[p + 2])
        if r > lend:
            return None
        if name_type == 0:
            return _decode_host(b[p + 3 : r])
        p = r
    return None


def _decode_host(raw: bytes) -> str | None:
    if not raw:
        return None
    name = raw.decode("latin-1")
    if raw.isascii():
        if not name.isprintable():  # C0 controls and DEL
            return None
    elif _CONTROL(raw):  # keep 0x80-0xff (raw UTF-8 names), reject C0 controls and DEL
        return None
    if ":" in name:  # IPv6 literal: keep exactly as sent
        try:
            ipaddress.ip_address(name)
        except ValueError:
            pass
        else:
            return name
    if name[-1] == ".":
        name = name[:-1]
        if not name:
            return None
    return name.lower()


def _alpn(b: bytes) -> tuple[str, ...]:
    q = len(b)
    if q < 2:
        return ()
    lend = 2 + (b[0] << 8 | b[1])
    if lend > q:
        return ()
    p = 2
    out = []
    while p < lend:
        r = p + 1 + b[p]
        if r > lend:
            break
        out.append(b[p + 1 : r].decode("latin-1"))
        p = r
    return tuple(out)


def _versions(b: bytes) -> tuple[int, ...]:
    q = len(b)
    if q < 1:
        return ()
    lend = 1 + b[0]
    if lend > q:
        return ()
    out = []
    for p in range(1, lend - 1, 2):
        v = b[p] << 8 | b[p + 1]
        if (v & 0x0F0F) != 0x0A0A or (v >> 8) != (v & 0xFF):
            out.append(v)
    return tuple(out)


def client_hello_from_records(stream: bytes) -> tuple[ClientHelloInfo | None, int]:
    """Read a ClientHello from the first client bytes of a TCP stream (TLS record layer).

    Returns ``(info, 0)`` when the ClientHello is complete; ``(None, need)`` with ``need > 0``
    when more bytes are needed (``need`` is a lower bound: the exact count when the rest of
    the ClientHello comes in the current record, or in one more record); ``(None, -1)`` when
    the stream is not TLS, does not start with a ClientHello, is malformed, or announces a
    ClientHello longer than :data:`MAX_CLIENT_HELLO` (stop trying).
    """
    try:
        if type(stream) is not bytes:
            if not isinstance(stream, _BYTE_TYPES):
                return None, -1
            stream = bytes(stream)
        s = stream
        n = len(s)
        # Fast path: the whole ClientHello in the first record, all of it present.
        if n >= 9 and s[0] == _HANDSHAKE and s[1] == 3 and s[2] <= 4 and s[5] == _CLIENT_HELLO:
            rlen = s[3] << 8 | s[4]
            hend = 9 + (s[6] << 16 | s[7] << 8 | s[8])
            if hend - 5 <= rlen <= MAX_RECORD and hend <= n:
                info = _parse(s[5:hend])
                return (info, 0) if info is not None else (None, -1)
        return _from_records(s, n)
    except Exception:  # defensive: never expected
        return None, -1


def _from_records(s: bytes, n: int) -> tuple[ClientHelloInfo | None, int]:
    parts: list[bytes] = []
    got = 0  # handshake bytes collected so far
    total = 0  # 4 + ClientHello length, once known
    p = 0
    while True:
        hs_need = (total or 4) - got
        if p >= n:  # at a record boundary with no more bytes
            return None, 5 + hs_need
        # Check the record header bytes we have, one at a time, so non-TLS fails early.
        if s[p] != _HANDSHAKE:
            return None, -1
        if p + 1 < n and s[p + 1] != 3:
            return None, -1
        if p + 2 < n and s[p + 2] > 4:
            return None, -1
        if p + 5 > n:
            return None, (p + 5 - n) + hs_need
        rlen = s[p + 3] << 8 | s[p + 4]
        if rlen == 0 or rlen > MAX_RECORD:  # zero-length handshake fragments are forbidden
            return None, -1
        start = p + 5
        avail = min(rlen, n - start)
        if avail:
            parts.append(s[start : start + avail])
            if got == 0 and s[start] != _CLIENT_HELLO:
                return None, -1
            got += avail
            if not total and got >= 4:
                head = b"".join(parts)
                total = 4 + (head[1] << 16 | head[2] << 8 | head[3])
                if total - 4 > MAX_CLIENT_HELLO:
                    return None, -1
            if total and got >= total:
                info = _parse(b"".join(parts)[:total])
                return (info, 0) if info is not None else (None, -1)
        if avail < rlen:  # the record itself is cut short
            hs_need = (total or 4) - got
            return None, hs_need if hs_need <= rlen - avail else hs_need + 5
        p = start + rlen
