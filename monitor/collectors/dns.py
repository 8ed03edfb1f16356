"""DNS messages by hand, and the address -> name map that names SNI-less flows.

:func:`parse_message` reads one DNS message (RFC 1035 wire format, as carried by UDP or,
after the two-byte length prefix, by TCP). It never raises: a malformed message gives
``None``, and a message whose answer section is cut short gives the records read so far
(``truncated`` is then set). Names follow compression pointers; a pointer must point
strictly before the label that contains it, so a pointer loop cannot be followed, and a
name is at most 255 bytes long.

:class:`DnsMap` keeps, for each address seen in an A or AAAA answer, the most recent names
(bounded, with the time of the answer; also per client the answer went to, when the
caller says, so a flow is named by its own client's answer first; a name answered again keeps the time of its first
answer, so a flow is named by the answer in force when it started). A CNAME chain is
walked back to the name the client asked for, so ``api.openai.com CNAME x.cdn.net, x.cdn.net A 1.2.3.4`` maps
``1.2.3.4`` to ``api.openai.com``. Both bounds (names per address, addresses in total)
are counted when hit.

HTTPS and SVCB answers (RFC 9460) count as address answers for their ``ipv4hint`` and
``ipv6hint`` addresses; their ``ech`` parameter (an ECHConfigList, draft-ietf-tls-esni
section 4) says the service offers Encrypted Client Hello and gives the *public name* its
clients put in the outer ClientHello's SNI: :meth:`DnsMap.is_ech_public` knows those names,
so that a flow whose SNI is one is named from DNS instead (see docs/formats.md, ECH).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from struct import Struct

__all__ = ["DnsAnswer", "DnsMessage", "DnsMap", "parse_message", "TYPE_NAMES"]

TYPE_A = 1
TYPE_NS = 2
TYPE_CNAME = 5
TYPE_PTR = 12
TYPE_MX = 15
TYPE_AAAA = 28
TYPE_SVCB = 64
TYPE_HTTPS = 65
#: outer SNIs of real ECH without a DNS answer in the capture: Cloudflare's public name
#: (https://blog.cloudflare.com/announcing-encrypted-client-hello/, 2023-09-29)
KNOWN_ECH_PUBLIC_NAMES = frozenset({"cloudflare-ech.com"})
MAX_ECH_NAMES = 4096
TYPE_NAMES = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    12: "PTR",
    15: "MX",
    16: "TXT",
    28: "AAAA",
    33: "SRV",
    41: "OPT",
    46: "RRSIG",
    47: "NSEC",
    48: "DNSKEY",
    64: "SVCB",
    65: "HTTPS",
    255: "*",
}
_NAME_TYPES = frozenset({TYPE_NS, TYPE_CNAME, TYPE_PTR})
MAX_NAME = 255
MAX_RECORDS = 512  # per section; a message has at most 64 KB anyway

#: label bytes -> text (a capture's names share few distinct labels); emptied when full
_LABELS: dict[bytes, str] = {}
MAX_LABELS_KEPT = 65_536

_HEADER = Struct("!HHHHHH")
_RR = Struct("!HHIH")
_QTAIL = Struct("!HH")


@dataclass(slots=True)
class DnsAnswer:
    name: str
    rtype: int
    ttl: int
    value: str | None  # A/AAAA: address text; CNAME/NS/PTR/MX: a name; other types: None
    raw: bytes = b""  # A/AAAA: the packed address
    hints: tuple[bytes, ...] = ()  # HTTPS/SVCB: ipv4hint and ipv6hint addresses, packed
    ech_names: tuple[str, ...] = ()  # HTTPS/SVCB: public names of the ech parameter's configs


@dataclass(slots=True)
class DnsMessage:
    id: int
    response: bool
    rcode: int
    questions: list[tuple[str, int]] = field(default_factory=list)
    answers: list[DnsAnswer] = field(default_factory=list)  # answer section only
    truncated: bool = False  # a section ended early; the records before it are kept


def read_name(msg: bytes, pos: int) -> tuple[str, int] | None:
    """(name, position after the name in the message) or ``None`` when malformed.

    Labels are lower-cased ASCII; bytes outside printable ASCII (and ``.`` inside a
    label) are written ``\\DDD`` as in zone files, so a name is always printable."""
    labels: list[str] = []
    end = -1  # where the name ends in the original position (before the first pointer)
    total = 0
    n = len(msg)
    limit = pos  # a pointer must point before the start of the label holding it
    hops = 0
    while True:
        if pos >= n:
            return None
        ln = msg[pos]
        if ln == 0:
            if end < 0:
                end = pos + 1
            break
        if ln & 0xC0 == 0xC0:
            if pos + 1 >= n:
                return None
            target = ((ln & 0x3F) << 8) | msg[pos + 1]
            if end < 0:
                end = pos + 2
            if target >= limit or hops > 127:
                return None  # forward or self pointer: a loop, or garbage
            hops += 1
            limit = target
            pos = target
            continue
        if ln & 0xC0:
            return None  # 0x40 / 0x80: obsolete extended label types
        start = pos + 1
        pos = start + ln
        if pos > n:
            return None
        total += ln + 1
        if total > MAX_NAME:
            return None
        raw = msg[start:pos]
        label = _LABELS.get(raw)
        if label is None:
            if len(_LABELS) >= MAX_LABELS_KEPT:
                _LABELS.clear()
            label = _LABELS[raw] = _label(raw)
        labels.append(label)
        if end < 0:
            limit = pos  # labels read in place move the bound on
    return ".".join(labels), end


def _label(raw: bytes) -> str:
    """The text of one label (see :func:`read_name`)."""
    if raw.isalnum() or all(c == 45 or c == 95 or 48 <= c <= 57 or 65 <= c <= 122 for c in raw):
        return raw.decode("ascii").lower()
    return "".join(
        chr(c).lower() if 33 <= c <= 126 and c not in (46, 92) else f"\\{c:03d}" for c in raw
    )


def parse_message(msg: bytes) -> DnsMessage | None:
    """One DNS message; ``None`` when even the header or the questions do not parse."""
    if len(msg) < 12:
        return None
    ident, flags, qd, an, _ns, _ar = _HEADER.unpack_from(msg, 0)
    m = DnsMessage(ident, bool(flags & 0x8000), flags & 0xF)
    pos = 12
    if qd > MAX_RECORDS or an > MAX_RECORDS:
        return None
    for _ in range(qd):
        r = read_name(msg, pos)
        if r is None or r[1] + 4 > len(msg):
            return None
        qtype = _QTAIL.unpack_from(msg, r[1])[0]
        m.questions.append((r[0], qtype))
        pos = r[1] + 4
    for _ in range(an):
        r = read_name(msg, pos)
        if r is None or r[1] + 10 > len(msg):
            m.truncated = True
            break
        name, pos = r
        rtype, _cls, ttl, rdlen = _RR.unpack_from(msg, pos)
        pos += 10
        rend = pos + rdlen
        if rend > len(msg):
            m.truncated = True
            break
        value: str | None = None
        raw = b""
        if rtype == TYPE_A and rdlen == 4:
            raw = msg[pos:rend]
            value = socket.inet_ntop(socket.AF_INET, raw)
        elif rtype == TYPE_AAAA and rdlen == 16:
            raw = msg[pos:rend]
            value = socket.inet_ntop(socket.AF_INET6, raw)
        elif rtype in _NAME_TYPES or (rtype == TYPE_MX and rdlen > 2):
            t = read_name(msg[:rend], pos + 2 if rtype == TYPE_MX else pos)
            value = t[0] if t is not None else None
        elif rtype in (TYPE_HTTPS, TYPE_SVCB) and rdlen > 2:
            svc = _service(msg[:rend], pos)
            if svc is not None:
                value, hints, ech = svc
                m.answers.append(DnsAnswer(name, rtype, ttl, value, raw, hints, ech))
                pos = rend
                continue
        m.answers.append(DnsAnswer(name, rtype, ttl, value, raw))
        pos = rend
    return m


def _service(msg: bytes, pos: int) -> tuple[str, tuple[bytes, ...], tuple[str, ...]] | None:
    """An HTTPS/SVCB RDATA ending at ``len(msg)``: (target name, address hints, ECH public
    names); None when malformed."""
    t = read_name(msg, pos + 2)
    if t is None:
        return None
    target, p = t
    end = len(msg)
    hints: list[bytes] = []
    ech: list[str] = []
    while p + 4 <= end:
        key, ln = _QTAIL.unpack_from(msg, p)
        v, p = p + 4, p + 4 + ln
        if p > end:
            return None
        if key == 4:  # ipv4hint
            hints += [msg[i : i + 4] for i in range(v, p - 3, 4)]
        elif key == 6:  # ipv6hint
            hints += [msg[i : i + 16] for i in range(v, p - 15, 16)]
        elif key == 5:  # ech: ECHConfigList
            ech += _ech_public_names(msg[v:p])
    return target, tuple(hints), tuple(ech)


def _ech_public_names(b: bytes) -> list[str]:
    """The public names of an ECHConfigList's version 0xfe0d configs (others skipped)."""
    names: list[str] = []
    if len(b) < 2:
        return names
    p, end = 2, min(len(b), 2 + ((b[0] << 8) | b[1]))
    while p + 4 <= end:
        version, ln = _QTAIL.unpack_from(b, p)
        c, p = p + 4, p + 4 + ln
        if p > end or version != 0xFE0D:
            continue
        # HpkeKeyConfig: config_id, kem_id, public_key<1..2^16-1>, cipher_suites<4..2^16-4>
        c += 3
        if c + 2 > p:
            continue
        c += 2 + ((b[c] << 8) | b[c + 1])
        if c + 2 > p:
            continue
        c += 2 + ((b[c] << 8) | b[c + 1])
        c += 1  # maximum_name_length
        if c + 1 > p or c + 1 + b[c] > p:
            continue
        name = b[c + 1 : c + 1 + b[c]].decode("ascii", "replace").lower().rstrip(".")
        if name:
            names.append(name)
    return names


class DnsMap:
    """Address -> names learned from DNS answers, with the time of each answer.

    ``names_per_address`` bounds the names kept for one address (the oldest go first);
    ``max_addresses`` bounds the addresses (the least recently answered go first). Every
    entry dropped because of a bound is counted in ``dropped_names``/``dropped_addresses``.
    """

    def __init__(self, names_per_address: int = 8, max_addresses: int = 262_144):
        self.names_per_address = names_per_address
        self.max_addresses = max_addresses
        self._by_ip: dict[bytes, list[tuple[float, str]]] = {}
        #: client address + address -> names, from the answers that went to that client
        #: (bounded by ``max_addresses`` too, counted in ``dropped_addresses``)
        self._by_client: dict[bytes, list[tuple[float, str]]] = {}
        self.answers = 0
        self.dropped_names = 0
        self.dropped_addresses = 0
        #: public names of the ECH configs seen in HTTPS/SVCB answers (bounded)
        self.ech_public: set[str] = set(KNOWN_ECH_PUBLIC_NAMES)

    def __len__(self) -> int:
        return len(self._by_ip)

    def add(self, msg: DnsMessage, ts: float, client: bytes | None = None) -> None:
        """Learn from a response: every A/AAAA answer maps its address to the head of its
        CNAME chain (the name the client asked for when the chain leads back to it); with
        ``client`` (the packed address the response went to), for that client too."""
        if not msg.response or not msg.answers:
            return
        alias_of: dict[str, str] = {}  # CNAME target -> owner
        for a in msg.answers:
            if a.rtype == TYPE_CNAME and a.value and a.value != a.name:
                alias_of.setdefault(a.value, a.name)
        for a in msg.answers:
            if not (a.raw or a.hints):
                continue
            name = a.name
            seen = {name}
            while name in alias_of:
                name = alias_of[name]
                if name in seen or len(seen) > 16:
                    break
                seen.add(name)
            addresses = (a.raw, *a.hints) if a.raw else a.hints
            for ip in addresses if name else ():
                self.answers += 1
                self._remember(self._by_ip, ip, name, ts)
                if client:
                    self._remember(self._by_client, client + ip, name, ts)
            for public in a.ech_names:
                if len(self.ech_public) < MAX_ECH_NAMES:
                    self.ech_public.add(public)

    def is_ech_public(self, name: str) -> bool:
        """``name`` is the public (outer) name of an ECH config seen in DNS, or known."""
        return name in self.ech_public

    def _remember(self, table: dict, ip: bytes, name: str, ts: float) -> None:
        entries = table.pop(ip, None)
        if entries is None:
            entries = []
            if len(table) >= self.max_addresses:
                del table[next(iter(table))]
                self.dropped_addresses += 1
        if entries and entries[-1][1] == name:
            # the same answer again: the name has held since the earlier one (keeping the
            # later time would hide it from a flow that started between the two answers)
            if ts < entries[-1][0]:
                entries[-1] = (ts, name)
        elif not entries or ts >= entries[-1][0]:
            entries.append((ts, name))
        else:  # an answer older than the latest one (capture slightly out of order)
            entries.append((ts, name))
            entries.sort(key=lambda e: e[0])
        if len(entries) > self.names_per_address:
            self.dropped_names += len(entries) - self.names_per_address
            del entries[: len(entries) - self.names_per_address]
        table[ip] = entries  # re-inserted: most recently answered last

    def lookup(self, ip: bytes, ts: float, client: bytes | None = None) -> str | None:
        """The name of the latest answer for ``ip`` (packed) given at or before ``ts``: to
        ``client`` when one is given and it had one, else to anyone."""
        if client and self._by_client:
            name = self._lookup(self._by_client, client + ip, ts)
            if name is not None:
                return name
        return self._lookup(self._by_ip, ip, ts)

    @staticmethod
    def _lookup(table: dict, key: bytes, ts: float) -> str | None:
        entries = table.get(key)
        if not entries:
            return None
        for t, name in reversed(entries):
            if t <= ts:
                return name
        return None

    def names(self, ip: bytes) -> list[str]:
        """The names kept for ``ip``, oldest answer first (each name once, at its latest)."""
        out: dict[str, None] = {}
        for _t, n in self._by_ip.get(ip, ()):
            out.pop(n, None)
            out[n] = None
        return list(out)
