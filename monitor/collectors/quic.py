"""Server names in QUIC: decrypt client Initial packets and read the ClientHello they carry.

QUIC Initial packets are encrypted, but with keys anyone can derive from the Destination
Connection ID the client chose (RFC 9001 §5.2, RFC 9369 §3.3.1), so a passive monitor can
recover the TLS ClientHello and its server name. :class:`QuicInitialTracker` is fed the
client→server UDP datagrams of each flow and returns a
:class:`~monitor.collectors.tls.ClientHelloInfo` once a connection's ClientHello is complete.

What it handles: several packets coalesced in one datagram; QUIC v1 and v2, the IETF
drafts 23 to 34, mvfst's versions and Google QUIC T050/T051 (TLS) and Q050 (a QUIC Crypto
``CHLO`` in CRYPTO frames) -- their salts, labels and long-header type bits are in
:mod:`monitor.collectors.quic_versions`; Google QUIC Q039 to Q046, whose ``CHLO`` is sent in
the clear (read when it fits one datagram, as browsers pad it to); header protection; packet number decoding; AES-128-GCM;
the frames allowed in Initial packets (PADDING, PING, ACK, CRYPTO, CONNECTION_CLOSE);
CRYPTO data spread over several frames, packets and datagrams in any order (a ClientHello
with a post-quantum key share needs two Initial packets or more; Chrome also scatters it
over many small CRYPTO frames). Initial keys are derived once per (version, DCID) and cached.

What it ignores: short-header packets, Retry, Version Negotiation, 0-RTT and Handshake
packets, unknown versions, and packets sent by the server (recognised by their DCID being
the client's SCID, or failing to decrypt with the client's keys).

Bounds: at most ``max_connections`` connections in progress (the oldest is dropped, counted
in ``evicted``), at most ``max_crypto_bytes`` of CRYPTO data per connection (counted in
``crypto_overflow``). A connection stops being tracked once its ClientHello is parsed or a
bound is hit; its flow then keeps a small tombstone (as many as ``max_connections``) so
retransmissions are skipped cheaply and no ClientHello is reported twice.

``feed`` never raises: unexpected errors are counted in ``errors``.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Hashable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from monitor.collectors.quic_versions import (
    CHLO_VERSIONS,
    GQUIC_FRAMES,
    INITIAL_VERSIONS,
    PLAIN_GQUIC,
    QUIC_V1,
    QUIC_V2,
)
from monitor.collectors.tls import (
    MAX_CLIENT_HELLO,
    ClientHelloInfo,
    _decode_host,  # the SNI rules, for the CHLO's SNI tag too
    parse_client_hello,
)

__all__ = [
    "QUIC_V1",
    "QUIC_V2",
    "QuicInitialTracker",
    "derive_initial_keys",
    "is_quic_long_header_initial",
]


@dataclass(frozen=True, slots=True)
class _Version:
    salt: bytes
    key_label: bytes
    iv_label: bytes
    hp_label: bytes
    initial: int  # long-header type bits of an Initial packet
    retry: int  # ... of a Retry packet (no Length field)


_VERSIONS: dict[int, _Version] = {
    version: _Version(
        bytes.fromhex(salt),
        f"{prefix} key".encode(),
        f"{prefix} iv".encode(),
        f"{prefix} hp".encode(),
        initial=initial,
        retry=retry,
    )
    for version, (_name, salt, prefix, initial, retry) in INITIAL_VERSIONS.items()
}
_INITIAL_TYPE = {v: p.initial for v, p in _VERSIONS.items()}

#: Connection IDs are at most 20 bytes in QUIC v1 and v2.
MAX_CID = 20
#: Out-of-order CRYPTO fragments held per connection before giving up.
MAX_FRAGMENTS = 512
#: Derived key sets kept (one per version and DCID).
KEY_CACHE = 4096

_COUNTERS = (
    "datagrams",
    "initial_packets",
    "decrypted",
    "decrypt_failures",
    "client_hellos",
    "not_client_hello",
    "closed",
    "unsupported_version",
    "evicted",
    "crypto_overflow",
    "errors",
)
_I = struct.Struct(">I").unpack_from
_NONZERO = re.compile(rb"[^\x00]").search


def _hkdf_expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """TLS 1.3 HKDF-Expand-Label with an empty context (RFC 8446 §7.1)."""
    full = b"tls13 " + label
    info = struct.pack(">HB", length, len(full)) + full + b"\x00"
    return HKDFExpand(hashes.SHA256(), length, info).derive(secret)


def derive_initial_keys(dcid: bytes, version: int = QUIC_V1) -> tuple[bytes, bytes, bytes]:
    """Client Initial (key, iv, hp) for a Destination Connection ID (RFC 9001 §5.2)."""
    params = _VERSIONS[version]
    h = hmac.HMAC(params.salt, hashes.SHA256())  # HKDF-Extract(salt, dcid)
    h.update(dcid)
    client = _hkdf_expand_label(h.finalize(), b"client in", 32)
    return (
        _hkdf_expand_label(client, params.key_label, 16),
        _hkdf_expand_label(client, params.iv_label, 12),
        _hkdf_expand_label(client, params.hp_label, 16),
    )


class _Keys:
    __slots__ = ("aead", "iv", "hp")

    def __init__(self, dcid: bytes, version: int) -> None:
        key, iv, hp = derive_initial_keys(dcid, version)
        self.aead = AESGCM(key)
        self.iv = int.from_bytes(iv, "big")
        self.hp = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()  # ECB: stateless reuse


class _Conn:
    __slots__ = (
        "odcid",
        "scid",
        "cids",
        "largest_pn",
        "buf",
        "pending",
        "pending_bytes",
        "total",
        "chlo",
        "crypto_type",
        "ping_type",
    )

    def __init__(self, odcid: bytes, scid: bytes, version: int) -> None:
        self.odcid = odcid  # the DCID the client's Initial keys come from
        self.scid = scid  # the client's SCID: a packet sent to it comes from the server
        self.cids = {odcid}  # DCIDs seen on this connection's client packets
        self.largest_pn = -1
        self.buf = bytearray()  # CRYPTO stream, contiguous from offset 0
        self.pending: dict[int, bytes] = {}  # fragments past the end of buf
        self.pending_bytes = 0
        self.total = 0  # 4 + ClientHello length, once known (CHLO: its whole length)
        self.chlo = version in CHLO_VERSIONS  # the CRYPTO stream holds a CHLO, not TLS
        gquic = version in GQUIC_FRAMES  # Google QUIC frame types
        self.crypto_type, self.ping_type = (0x08, 0x07) if gquic else (0x06, 0x01)


def is_quic_long_header_initial(datagram: bytes) -> bool:
    """Cheap check: does the datagram start with a long-header Initial packet of a version
    whose Initial keys are known?"""
    try:
        if len(datagram) < 7 or not datagram[0] & 0x80:
            return False
        t = _INITIAL_TYPE.get(_I(datagram, 1)[0])
        return t is not None and (datagram[0] >> 4) & 3 == t
    except Exception:
        return False


def _varint(b: bytes, i: int) -> tuple[int, int]:
    """QUIC variable-length integer at ``b[i]``; IndexError when truncated."""
    v = b[i]
    n = 1 << (v >> 6)
    v &= 0x3F
    for k in range(i + 1, i + n):
        v = v << 8 | b[k]
    return v, i + n


def _decode_pn(largest: int, truncated: int, nbits: int) -> int:
    """RFC 9000 Appendix A.3."""
    expected = largest + 1
    win = 1 << nbits
    hwin = win >> 1
    mask = win - 1
    candidate = (expected & ~mask) | truncated
    if candidate <= expected - hwin and candidate < (1 << 62) - win:
        return candidate + win
    if candidate > expected + hwin and candidate >= win:
        return candidate - win
    return candidate


class _Closed(Exception):
    """The client sent CONNECTION_CLOSE."""


class QuicInitialTracker:
    """Feed client→server UDP datagrams; returns ClientHelloInfo once the ClientHello is complete.

    ``flow_key`` is whatever identifies the UDP flow to the caller (e.g. the 5-tuple). The
    counters below are plain attributes, for the collector's diagnostics.
    """

    def __init__(self, max_connections: int = 10000, max_crypto_bytes: int = 65536) -> None:
        self.max_connections = max(1, max_connections)
        self.max_crypto_bytes = max(4, min(max_crypto_bytes, MAX_CLIENT_HELLO + 4))
        self._conns: dict[Hashable, _Conn] = {}
        self._done: dict[Hashable, set[bytes]] = {}  # tombstones: DCIDs to skip per flow
        self._keys: dict[tuple[int, bytes], _Keys] = {}
        # counters
        self.datagrams = 0
        self.initial_packets = 0  # client Initial packets tried
        self.decrypted = 0
        self.decrypt_failures = 0  # Initial packets the client keys do not open
        self.client_hellos = 0  # ClientHellos returned
        self.not_client_hello = 0  # CRYPTO stream that is not (or not a parsable) ClientHello
        self.closed = 0  # connections abandoned on the client's CONNECTION_CLOSE
        self.unsupported_version = 0  # long-header packets of another QUIC version
        self.evicted = 0  # bound: connections dropped because max_connections were open
        self.crypto_overflow = 0  # bound: CRYPTO data past max_crypto_bytes / too fragmented
        self.errors = 0  # unexpected exceptions (never expected; nothing escapes feed)

    # -- public -------------------------------------------------------------------------

    @property
    def bound_hits(self) -> int:
        return self.evicted + self.crypto_overflow

    def counters(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in _COUNTERS}

    def __len__(self) -> int:
        """Connections in progress."""
        return len(self._conns)

    def tracking(self, flow_key: Hashable) -> bool:
        return flow_key in self._conns

    def forget(self, flow_key: Hashable) -> None:
        """Drop all state for a flow (e.g. when the caller's flow table expires it)."""
        self._conns.pop(flow_key, None)
        self._done.pop(flow_key, None)

    def feed(self, datagram: bytes, flow_key: Hashable) -> ClientHelloInfo | None:
        """Process one client→server UDP payload; the ClientHelloInfo when this completes it."""
        self.datagrams += 1
        try:
            if type(datagram) is not bytes:
                datagram = bytes(datagram)
            return self._feed(datagram, flow_key)
        except Exception:
            self.errors += 1
            return None

    # -- internals ------------------------------------------------------------------------

    def _feed(self, d: bytes, flow_key: Hashable) -> ClientHelloInfo | None:
        n = len(d)
        pos = 0
        if n >= 7 and (
            d[1:5] in PLAIN_GQUIC or (not d[0] & 0x80 and d[0] & 9 == 9 and d[9:13] in PLAIN_GQUIC)
        ):
            return self._plain_chlo(d, flow_key)
        while pos + 7 <= n:
            b0 = d[pos]
            if not b0 & 0x80:
                return None  # short header: the rest of the datagram is one 1-RTT packet
            version = _I(d, pos + 1)[0]
            params = _VERSIONS.get(version)
            if params is None:
                if version:
                    self.unsupported_version += 1
                return None  # version negotiation (0) or unknown: lengths unknowable
            p = pos + 6
            dcil = d[pos + 5]
            if dcil > MAX_CID or p + dcil >= n:
                return None
            dcid = d[p : p + dcil]
            p += dcil
            scil = d[p]
            p += 1
            if scil > MAX_CID or p + scil > n:
                return None
            scid = d[p : p + scil]
            p += scil
            ptype = (b0 >> 4) & 3
            if ptype == params.retry:
                return None
            if ptype == params.initial:
                if p >= n or p + (1 << (d[p] >> 6)) > n:
                    return None
                token_len, p = _varint(d, p)
                p += token_len
            if p >= n or p + (1 << (d[p] >> 6)) > n:
                return None
            length, p = _varint(d, p)
            end = p + length
            if end > n:
                return None  # truncated (snap length) or not QUIC
            if ptype == params.initial:
                info = self._initial(d, pos, p, end, dcid, scid, version, flow_key)
                if info is not None:
                    return info
            pos = end
        return None

    def _keys_for(self, dcid: bytes, version: int) -> _Keys:
        k = (version, dcid)
        keys = self._keys.get(k)
        if keys is None:
            if len(self._keys) >= KEY_CACHE:
                del self._keys[next(iter(self._keys))]
            keys = self._keys[k] = _Keys(dcid, version)
        return keys

    def _initial(
        self,
        d: bytes,
        start: int,
        pn_off: int,
        end: int,
        dcid: bytes,
        scid: bytes,
        version: int,
        flow_key: Hashable,
    ) -> ClientHelloInfo | None:
        conn = self._conns.get(flow_key)
        if conn is None:
            tomb = self._done.get(flow_key)
            if tomb is not None and dcid in tomb:
                return None  # a finished connection's retransmission, ACK or the server
            if len(dcid) < 8:
                return None  # RFC 9000 §7.2: a client's first Initial has a DCID of 8+ bytes
        elif dcid == conn.scid and dcid not in conn.cids:
            return None  # sent to the client: a server packet
        self.initial_packets += 1
        if conn is None:
            plain = self._open(d, start, pn_off, end, self._keys_for(dcid, version), -1)
        else:
            plain = self._open(
                d, start, pn_off, end, self._keys_for(conn.odcid, version), conn.largest_pn
            )
            if plain is None and dcid not in conn.cids:
                # after a Retry the client derives its keys from the new DCID
                plain = self._open(
                    d, start, pn_off, end, self._keys_for(dcid, version), conn.largest_pn
                )
                if plain is not None:
                    conn.odcid = dcid
        if plain is None:
            self.decrypt_failures += 1
            tomb = self._done.get(flow_key) if conn is None else None
            if tomb is not None and len(tomb) < 16:
                tomb.add(dcid)  # e.g. the client's Initial ACKs sent to the server's CID
            return None
        pn, payload = plain
        self.decrypted += 1
        if conn is None:
            if len(self._conns) >= self.max_connections:
                del self._conns[next(iter(self._conns))]
                self.evicted += 1
            conn = self._conns[flow_key] = _Conn(dcid, scid, version)
            self._done.pop(flow_key, None)
        conn.cids.add(dcid)
        if pn > conn.largest_pn:
            conn.largest_pn = pn
        try:
            if not self._frames(conn, payload):
                self._finish(flow_key, conn)
                return None
        except _Closed:
            self.closed += 1
            self._finish(flow_key, conn)
            return None
        if conn.total and len(conn.buf) >= conn.total:
            msg = bytes(conn.buf[: conn.total])
            info = parse_chlo(msg) if conn.chlo else parse_client_hello(msg)
            self._finish(flow_key, conn)
            if info is None:
                self.not_client_hello += 1
                return None
            self.client_hellos += 1
            return info
        return None

    def _open(
        self, d: bytes, start: int, pn_off: int, end: int, keys: _Keys, largest: int
    ) -> tuple[int, bytes] | None:
        """Remove header protection and decrypt one packet: (packet number, payload)."""
        sample = pn_off + 4
        if sample + 16 > end:
            return None
        mask = keys.hp.update(d[sample : sample + 16])
        b0 = d[start] ^ (mask[0] & 0x0F)
        pn_len = (b0 & 3) + 1
        pn_end = pn_off + pn_len
        truncated = int.from_bytes(d[pn_off:pn_end], "big") ^ int.from_bytes(
            mask[1 : 1 + pn_len], "big"
        )
        header = bytes((b0,)) + d[start + 1 : pn_off] + truncated.to_bytes(pn_len, "big")
        pn = _decode_pn(largest, truncated, pn_len * 8)
        nonce = (keys.iv ^ pn).to_bytes(12, "big")
        try:
            return pn, keys.aead.decrypt(nonce, d[pn_end:end], header)
        except InvalidTag:
            return None

    def _frames(self, conn: _Conn, b: bytes) -> bool:
        """Walk an Initial payload, collecting CRYPTO data. False: stop tracking (bound hit or
        not a ClientHello). Raises _Closed on CONNECTION_CLOSE."""
        i = 0
        n = len(b)
        try:
            while i < n:
                ft = b[i]
                if ft == 0x00:  # PADDING: skip the whole run
                    m = _NONZERO(b, i)
                    if m is None:
                        break
                    i = m.start()
                elif ft == conn.crypto_type:  # CRYPTO
                    off, i = _varint(b, i + 1)
                    length, i = _varint(b, i)
                    if i + length > n:
                        break
                    if not self._crypto(conn, off, b[i : i + length]):
                        return False
                    i += length
                elif ft == conn.ping_type:  # PING
                    i += 1
                elif conn.crypto_type == 0x08:  # Google QUIC frames: nothing else is read
                    if ft == 0x02:  # CONNECTION_CLOSE
                        raise _Closed
                    break
                elif ft == 0x02 or ft == 0x03:  # ACK
                    _, i = _varint(b, i + 1)  # largest acknowledged
                    _, i = _varint(b, i)  # ack delay
                    count, i = _varint(b, i)
                    _, i = _varint(b, i)  # first range
                    for _ in range(min(count, n)):
                        _, i = _varint(b, i)  # gap
                        _, i = _varint(b, i)  # range length
                    if ft == 0x03:
                        for _ in range(3):  # ECT0, ECT1, ECN-CE counts
                            _, i = _varint(b, i)
                elif ft == 0x1C or ft == 0x1D:
                    raise _Closed
                else:
                    break  # not allowed in an Initial packet: ignore the rest
        except IndexError:
            pass  # truncated frame: keep what came before
        return True

    def _crypto(self, conn: _Conn, off: int, data: bytes) -> bool:
        limit = self.max_crypto_bytes
        end = off + len(data)
        if end > limit:
            self.crypto_overflow += 1
            return False
        buf = conn.buf
        have = len(buf)
        if off <= have:
            if end > have:
                buf += data[have - off :]
                pending = conn.pending
                while pending:  # pull in fragments that now touch the end
                    have = len(buf)
                    ready = [o for o in pending if o <= have]
                    if not ready:
                        break
                    for o in sorted(ready):
                        frag = pending.pop(o)
                        conn.pending_bytes -= len(frag)
                        have = len(buf)
                        if o + len(frag) > have:
                            buf += frag[have - o :]
        elif data:
            old = conn.pending.get(off)
            if old is None or len(old) < len(data):
                if len(conn.pending) >= MAX_FRAGMENTS:
                    self.crypto_overflow += 1
                    return False
                conn.pending[off] = data
                conn.pending_bytes += len(data) - (len(old) if old else 0)
                if conn.pending_bytes > limit:
                    self.crypto_overflow += 1
                    return False
        if not conn.total and conn.chlo:
            conn.total = chlo_length(buf)
            if conn.total < 0:
                self.not_client_hello += 1
                return False
            if conn.total > limit:
                self.crypto_overflow += 1
                return False
        elif not conn.total and len(buf) >= 4:
            if buf[0] != 1:  # the client's first handshake message must be a ClientHello
                self.not_client_hello += 1
                return False
            conn.total = 4 + (buf[1] << 16 | buf[2] << 8 | buf[3])
            if conn.total > limit:
                self.crypto_overflow += 1
                return False
        return True

    def _plain_chlo(self, d: bytes, flow_key: Hashable) -> ClientHelloInfo | None:
        """Google QUIC before Q050: the CHLO is in the clear, in the client's first packets;
        read when the whole message is in this datagram."""
        if flow_key in self._done:
            return None
        at = d.find(b"CHLO")
        if at < 0:
            return None
        total = chlo_length(d[at:])
        if total <= 0 or at + total > len(d):
            return None
        info = parse_chlo(d[at : at + total])
        self._done[flow_key] = set()
        if len(self._done) > self.max_connections:
            del self._done[next(iter(self._done))]
        if info is None:
            self.not_client_hello += 1
            return None
        self.client_hellos += 1
        return info

    def _finish(self, flow_key: Hashable, conn: _Conn) -> None:
        self._conns.pop(flow_key, None)
        if len(self._done) >= self.max_connections:
            del self._done[next(iter(self._done))]
        conn.cids.add(conn.odcid)
        if conn.scid:
            conn.cids.add(conn.scid)
        self._done[flow_key] = conn.cids


# -- Google QUIC's handshake message ----------------------------------------------------

_TAG_SNI = b"SNI\x00"
_MAX_TAGS = 128


def chlo_length(b: bytes | bytearray) -> int:
    """The whole length of the QUIC Crypto handshake message (tag ``CHLO``, a little-endian
    entry count and padding, then (tag, end offset) entries and the values) starting ``b``:
    0 when more bytes are needed to tell, -1 when it is not a CHLO."""
    if len(b) < 8:
        return 0 if bytes(b[:4]) == b"CHLO"[: len(b[:4])] else -1
    if bytes(b[:4]) != b"CHLO":
        return -1
    count = b[4] | b[5] << 8
    if count > _MAX_TAGS:
        return -1
    head = 8 + 8 * count
    if len(b) < head:
        return 0
    last = struct.unpack_from("<I", b, head - 4)[0] if count else 0
    return head + last


def parse_chlo(msg: bytes) -> ClientHelloInfo | None:
    """A CHLO's server name (tag ``SNI``) as a :class:`ClientHelloInfo` (no TLS fields);
    None when the message is malformed."""
    total = chlo_length(msg)
    if total <= 0 or total > len(msg):
        return None
    count = msg[4] | msg[5] << 8
    base = 8 + 8 * count
    start = 0
    sni = None
    for i in range(count):
        tag = msg[8 + 8 * i : 12 + 8 * i]
        end = struct.unpack_from("<I", msg, 12 + 8 * i)[0]
        if end < start or base + end > total:
            return None
        if tag == _TAG_SNI:
            sni = _decode_host(msg[base + start : base + end])
        start = end
    return ClientHelloInfo(sni=sni, ech=False, legacy_version=0, versions=(), alpn=())
