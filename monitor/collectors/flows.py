"""Flows from packets: the flow table of one capture and what names each flow.

:class:`FlowTable` takes one captured frame at a time (link type, buffer and offsets, so
nothing is copied for the bulk of the traffic). :mod:`monitor.collectors.layers` finds the
frame's TCP or UDP segment (link layers, IP, fragments, tunnels); the table keeps one
:class:`Flow` per TCP or UDP 5-tuple (the innermost one for tunnelled traffic, with the
tunnel kept beside it). What each flow is called comes, in order of preference, from

* an HTTP/1 request (:mod:`monitor.collectors.http1`): ``CONNECT host:port``
  (``connect``), an absolute-form target (``url``) or the ``Host`` header
  (``http_host``), one observation per request;
* the TLS ClientHello SNI (``sni``), read from the reassembled client bytes
  (:mod:`monitor.collectors.tcpstream`: the ClientHello may span several segments, out of
  order or retransmitted), or the SNI of a QUIC Initial when :mod:`monitor.collectors.quic`
  is available; a SOCKS CONNECT target (:mod:`monitor.collectors.socks`);
* for TLS <= 1.2 whose ClientHello was missed (a capture started mid-connection), the
  server certificate's name (``cert``, :mod:`monitor.collectors.tlscert`);
* the latest DNS answer for the server address seen before the flow's first packet, the
  flow's own client's first (``dns``, see :mod:`monitor.collectors.dns`); also instead of
  an SNI that is an Encrypted Client Hello public name (``ech_outer`` keeps it);
* the catalogue's published IP ranges (``ip``; ``dest_host`` is then the address itself).

Client and server. The client is the side that sent the SYN (a SYN-ACK names the server).
Without a handshake in the capture, the side whose first payload is a TLS ClientHello or an
HTTP request is the client, a side answering ``HTTP/`` is the server; otherwise the side
with the lower port is taken as the server (equal ports: the first sender is the client).
For UDP the first sender is the client, unless it sent from a well-known port (below 1024,
or 443/853/3478/5353/8443) to a port >= 1024.

Counters. ``packets_*`` count every frame of the flow; ``bytes_*`` count transport payload
bytes as declared by the IP and TCP/UDP headers (so a capture with a short snap length still
counts what was sent), like Zeek's ``orig_bytes``/``resp_bytes`` but without the sequence-
number arithmetic. For HTTP each packet is attributed to the request the client is sending
or the response the server is sending at that moment.

A flow ends when both sides have sent FIN (or one RST) and a short linger has passed (late
ACKs still count), when it has been idle for ``idle_timeout`` seconds of capture time, when
a new SYN reuses its 5-tuple after it closed, when the table is full (the oldest flows go
first, counted in :attr:`FlowTable.stats`), or at the end of the capture. DNS (port 53 and
mDNS 5353) is parsed to feed the name map, and is not reported as flows.

Bounds (memory stays flat whatever the capture size): ``max_flows`` flows, ``STREAM_LIMIT``
bytes of buffered client (and, for HTTP, server) data per flow, ``MAX_HEAD`` bytes per HTTP
head, ``MAX_EXCHANGES`` requests kept per flow before the earliest are reported, ``MAX_FRAGS``
IP datagrams being reassembled, ``MAX_DEPTH`` encapsulations; each bound counts in
:attr:`FlowTable.stats` when hit.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from struct import Struct
from typing import Any

from monitor import accel
from monitor.collectors.base import requests_of
from monitor.collectors.dns import DnsMap, parse_message
from monitor.collectors.fields import host_keeper, memoised
from monitor.collectors.http1 import (
    Exchange,
    HttpConnection,
    is_token,
    request_name,
)
from monitor.collectors.layers import LINKTYPES, TUNNEL_PORTS, VLAN_TYPES, Decoder
from monitor.collectors.quic_versions import worth_watching
from monitor.collectors.socks import socks_request
from monitor.collectors.tcpstream import Stream
from monitor.collectors.tls import ClientHelloInfo, client_hello_from_records
from monitor.collectors.tlscert import (
    certificate_from_records,
    certificate_name,
    looks_server_hello,
)
from monitor.ids import record_id
from monitor.observation import Observation, canonical_ip

__all__ = [
    "FlowTable",
    "Flow",
    "LINKTYPES",
    "MAX_FRAME",
]

IDLE_TIMEOUT = 120.0
CLOSE_LINGER = 2.0
#: after a closed flow is reported, stray segments on its 5-tuple (retransmissions, late
#: RSTs) are dropped rather than starting a new flow, for this long (TCP's TIME_WAIT)
TIME_WAIT = 60.0
MAX_TOMBSTONES = 65_536
MAX_FLOWS = 131_072
MAX_EXCHANGES = 256
MAX_QUIC_DATAGRAMS = 16

_UDP_SERVER_PORTS = frozenset({443, 853, 3478, 5353, 8443})
_DNS_PORTS = frozenset({53, 5353})
_U16 = Struct("!H")
_U32BE = Struct("!I")
#: Ethernet + IPv4 (20 bytes) + TCP: ethertype, version/IHL, total length, flags/fragment,
#: protocol, and the TCP data offset and flags bytes (read for UDP too: frames >= 54 bytes)
_ETH_IP4 = Struct("!12xHBxH2xHxB22xBB")
#: Ethernet + IPv6 header: ethertype, version/class, payload length, next header
_ETH_IP6 = Struct("!12xHB3xHB")
MAX_FRAME = 256 * 1024  # longest pcap record read (a longer one is damage)
#: the interface of ``_pcapscan.scan`` that :meth:`FlowTable.scan` calls (its arguments and
#: what it does); the C module says which one it was built with
SCAN_VERSION = 4
accel.expect("monitor.collectors._pcapscan", SCAN_VERSION, attr="SCAN_VERSION", exact=True)

# flow.app
# (APP_CERT: TLS read from the server's side, the ClientHello having been missed)
APP_UNKNOWN, APP_TLS, APP_HTTP, APP_DNS, APP_OPAQUE, APP_QUIC, APP_CERT = range(7)

# ----------------------------------------------------------------------------- flows


class Flow:
    __slots__ = (
        "proto",
        "ckey",
        "skey",
        "cip",
        "cport",
        "sip",
        "sport",
        "first",
        "last",
        "pktno",
        "pk_out",
        "pk_in",
        "by_out",
        "by_in",
        "watch",
        "app",
        "isn_c",
        "isn_s",
        "cs",
        "ss",
        "fin_c",
        "fin_s",
        "closed",
        "sni",
        "ech",
        "http",
        "quic",
        "known",
        "datagrams",
        "socks",
        "hello",
        "cert",
        "tunnel",
    )

    def __init__(
        self, proto: int, cip: bytes, cport: int, sip: bytes, sport: int, ts: float, pktno: int
    ):
        self.proto = proto
        self.cip, self.cport, self.sip, self.sport = cip, cport, sip, sport
        self.ckey = cip + sip + _U16.pack(cport) + _U16.pack(sport)
        self.skey = sip + cip + _U16.pack(sport) + _U16.pack(cport)
        self.first = self.last = ts
        self.pktno = pktno
        self.pk_out = self.pk_in = self.by_out = self.by_in = 0
        self.watch = True  # payload still looked at
        self.app = APP_UNKNOWN
        self.isn_c: int | None = None
        self.isn_s: int | None = None
        self.cs: Stream | None = None
        self.ss: Stream | None = None
        self.fin_c = self.fin_s = False
        self.closed: float | None = None
        self.sni: str | None = None
        self.ech: bool | None = None
        self.http: HttpConnection | None = None
        self.quic: Any = None
        self.known = False  # client/server decided by a handshake or by content
        self.datagrams = 0
        self.socks: tuple[str | None, int] | None = None  # SOCKS 4/5 CONNECT target
        self.hello: ClientHelloInfo | None = None  # the ClientHello read (TCP or QUIC)
        self.cert: str | None = None  # the server certificate's name (ClientHello missed)
        self.tunnel: tuple[str, bytes, bytes] | None = None  # see layers.Decoder.tunnel

    def count(self, out: bool, n: int, ts: float) -> None:
        """One packet of ``n`` transport payload bytes, from the client when ``out``."""
        if out:
            self.pk_out += 1
            self.by_out += n
        else:
            self.pk_in += 1
            self.by_in += n
        self.last = ts


def _looks_client_start(p: bytes) -> bool:
    if len(p) >= 6 and p[0] == 0x16 and p[1] == 3 and p[5] == 1:
        return True
    sp = p.find(b" ", 0, 33)
    return (
        sp > 2
        and p[:sp].isupper()
        and is_token(p[:sp])
        and b" HTTP/1." in p[: p.find(b"\n") if b"\n" in p else 8192]
    )


def _address_text(raw: bytes) -> str:
    return ".".join(map(str, raw)) if len(raw) == 4 else str(ipaddress.ip_address(raw))


#: the text of a packed address (a capture's observations name the same ones over and over)
_ip_text = memoised(_address_text, 65536)


class FlowTable:
    """The flow table of one capture. Feed frames with :meth:`packet`; observations are
    appended to :attr:`ready` (the caller drains it); call :meth:`finish` at the end."""

    def __init__(
        self,
        source: str,
        fmt: str = "pcap",
        catalog: Any = None,
        host_filter: Callable[[str], bool] | None = None,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        max_flows: int = MAX_FLOWS,
        dns: DnsMap | None = None,
    ):
        self.source = source
        self.fmt = fmt
        self.catalog = catalog
        self.host_filter = host_filter
        self.idle_timeout = idle_timeout
        self.max_flows = max_flows
        self.dns = dns if dns is not None else DnsMap()
        self.tcp: dict[bytes, tuple[Flow, bool]] = {}
        self.udp: dict[bytes, tuple[Flow, bool]] = {}
        self.closing: dict[int, Flow] = {}  # id(flow) -> flow, in order of closing
        self.tombstones: dict[bytes, float] = {}  # keys of closed TCP flows -> time reported
        self._quic: Any = None  # QuicInitialTracker, made on first use (see :attr:`quic`)
        self.ready: list[Observation] = []
        self.now = float("-inf")
        self.next_linger = float("-inf")
        self.next_idle = float("-inf")
        #: packed server address -> its text when the catalogue's ranges hold it (memoised)
        self._in_ranges = memoised(self._catalog_ip, 65536) if catalog is not None else None
        self._keep = host_keeper(host_filter, 65536)
        self._requests = requests_of(host_filter)
        #: JA4 values that alone make a TLS connection worth reporting (LLM-only clients)
        self._ja4s = getattr(host_filter, "ja4s", frozenset())
        self.stats: dict[str, int] = {
            "packets": 0,
            "dns_messages": 0,
            "dns_malformed": 0,
            "flows": 0,
            "flows_dns": 0,
            "flows_evicted_table_full": 0,
            "reassembly_limit": 0,
            "http_requests_early": 0,
            "late_segments": 0,
        }
        #: link, IP and tunnel layers (it counts into :attr:`stats` too)
        self._decoder = Decoder(self.stats)
        self.unknown_linktypes = self._decoder.unknown_linktypes
        #: the C accelerator of :meth:`scan` (``monitor/collectors/_pcapscan.c``), or None;
        #: one built from another version of the source is not used (rebuild it): load
        #: gives none, and whatever module it gives is checked here too
        cscan = accel.load("monitor.collectors._pcapscan")
        self._cscan = cscan if getattr(cscan, "SCAN_VERSION", None) == SCAN_VERSION else None

    @property
    def quic(self) -> Any:
        """The :class:`~monitor.collectors.quic.QuicInitialTracker` of this capture."""
        if self._quic is None:
            from monitor.collectors.quic import QuicInitialTracker

            self._quic = QuicInitialTracker()
        return self._quic

    # -- frames ---------------------------------------------------------------------------

    def scan(
        self,
        buf: bytes,
        pos: int,
        n: int,
        pktno: int,
        order: str,
        scale: float,
        lt: int,
        ifaces: list | None = None,
    ) -> tuple[int, int]:
        """Read the records of a capture chunk ``buf[pos:n]`` while they are complete and
        plain; returns (offset of the first record not read, packet number).

        ``order`` is the file's (or section's) byte order, ``<`` or ``>``. Classic pcap when
        ``ifaces`` is None (``scale`` and ``lt`` are the file's); pcapng otherwise (``ifaces``
        holds (link type, scale, offset, snaplen) per interface). It stops before anything the caller must look at: a record
        that is incomplete or impossible, a pcapng block other than an EPB of a declared
        interface; and after a frame that made observations ready (:attr:`ready`).

        This is the hot loop. Ethernet frames of TCP/UDP flows whose payload is no longer
        inspected (their name is known, or the flow is opaque) only have their counters
        updated here, without a call per packet; every other frame goes to :meth:`packet`.
        """
        ready = self.ready
        packet = self.packet
        counted = self._counted
        next_linger = self.next_linger
        ng = ifaces is not None
        # a record header; pcapng: a block header and an Enhanced Packet Block's fixed fields
        rec = Struct(order + ("IIIIIII" if ng else "IIII")).unpack_from
        eth = lt == 1
        cur = -1  # pcapng: the interface whose (link type, scale, offset) are loaded
        nif = len(ifaces) if ng else 0
        sc = tsoff = 0.0
        first = pktno
        slow = 0
        ts = self.now
        # The C accelerator, when built, counts the run of packets from ``pos`` that
        # :meth:`_counted` or :meth:`packet` would only count (of any link type, VLAN,
        # MPLS, PPPoE and tunnels as :class:`Decoder` reads them), and stops before the
        # first record it does not handle entirely (returning its offset, the packet number
        # and timestamp so far), which the Python code below then reads as usual; the
        # Python code stays the reference.
        cscan = self._cscan.scan if self._cscan is not None else None
        big = int(order == ">")
        tcp_d, udp_d, closing, stats = self.tcp, self.udp, self.closing, self.stats
        try:
            while True:
                if cscan is not None:
                    pos, pktno, ts = cscan(buf, pos, n, pktno, ts, next_linger, big, scale, lt,
                                           ifaces, tcp_d, udp_d, closing, stats)  # fmt: skip
                if ng:
                    if pos + 32 > n:
                        break
                    btype, blen, iface, th, tl, incl, _orig = rec(buf, pos)
                    if btype != 6 or blen & 3 or incl > blen - 32 or pos + blen > n:
                        break
                    if iface != cur:  # another interface than the last packet's
                        if iface >= nif:
                            break
                        cur = iface
                        lt, sc, tsoff, _snap = ifaces[iface]
                        eth = lt == 1
                    ts = ((th << 32) | tl) * sc + tsoff
                    p = pos + 28
                    e = p + incl
                    pos += blen
                else:
                    if pos + 16 > n:
                        break
                    sec, frac, incl, _orig = rec(buf, pos)
                    p = pos + 16
                    e = p + incl
                    if e > n or incl > MAX_FRAME:
                        break
                    ts = sec + frac * scale
                    pos = e
                pktno += 1
                # (``now`` is left to the general path: it lags by less than a second.)
                if eth and ts < next_linger and incl >= 54 and counted(buf, p, e, ts, pktno):
                    if ready:
                        break
                    continue
                # everything else: the general path (it runs the timers too)
                slow += 1
                packet(ts, pktno, lt, buf, p, e)
                next_linger = self.next_linger
                if ready:
                    break
        finally:
            if ts > self.now:
                self.now = ts
            self.stats["packets"] += pktno - first - slow
        return pos, pktno

    def _counted(
        self, buf: bytes, p: int, e: int, ts: float, pktno: int, outer: bool = True
    ) -> bool:
        """The fast path of :meth:`scan` for an Ethernet frame ``buf[p:e]`` of at least 54
        bytes (past up to two VLAN tags) when no timer is due: IPv4 without options and not
        a fragment, or IPv6 with TCP/UDP right after its header, of a flow in the table, TCP
        but a pure SYN (which may open a new connection); when ``outer``, also such a frame
        carried by VXLAN or GENEVE (Ethernet inside) in such a frame. The packet is counted
        in its flow, and only when the flow is still inspected (or for a SYN-ACK, FIN or
        RST) does it go on to the TCP/UDP step, skipping the general path's header parsing.
        False: for the general path (nothing was changed). UDP to a tunnel's port is never
        a flow's, as in :class:`Decoder`. ``frame()`` in ``_pcapscan.c`` is the C twin of
        this and of :meth:`packet` (every link type, encapsulation and nesting the decoder
        reads, but fragments) for the segments that need no payload read: of flows no
        longer inspected, and ACKs, SYN-ACKs, FINs and RSTs without payload of flows that
        are not HTTP."""
        # the IP header gives: where the ports start (l4), the 5-tuple key buf[ka : l4 + 4]
        # (addresses from ka), the IP payload's length and end
        et, vihl, tot, frag, proto, doff, fl = _ETH_IP4.unpack_from(buf, p)
        if et in VLAN_TYPES:  # up to two VLAN tags: the frame read as if they were not there
            p += 4
            if e - p < 54:
                return False
            et, vihl, tot, frag, proto, doff, fl = _ETH_IP4.unpack_from(buf, p)
            if et in VLAN_TYPES:
                p += 4
                if e - p < 54:
                    return False
                et, vihl, tot, frag, proto, doff, fl = _ETH_IP4.unpack_from(buf, p)
        if et == 0x0800:
            if vihl != 0x45 or frag & 0x3FFF:
                return False
            l4, ka, size, ipend = p + 34, p + 26, tot - 20, p + 14 + tot
        elif et == 0x86DD and e - p >= 74:
            et, vtc, size, proto = _ETH_IP6.unpack_from(buf, p)
            if vtc >> 4 != 6 or not size:
                return False
            l4, ka, ipend = p + 54, p + 22, p + 54 + size
            doff, fl = buf[p + 66], buf[p + 67]
        else:
            return False
        if proto == 6:
            ent = self.tcp.get(buf[ka : l4 + 4])
            if ent is None or fl & 0x12 == 0x02:
                return False
            hl = (doff >> 4) << 2
            plen = size - hl
            if plen < 0:
                return False
            f, out = ent
            f.count(out, plen, ts)
            if f.watch or fl & 7:
                if plen or fl & 7:
                    self._tcp(ts, pktno, f, out, buf[ka:l4], buf, l4, hl, fl, plen, min(ipend, e))
                elif f.http is not None:  # an ACK: counted
                    self._http_count(f, out, ts, 0)
            return True
        if proto == 17:
            if ((buf[l4 + 2] << 8) | buf[l4 + 3]) in TUNNEL_PORTS:  # never a flow's
                return outer and self._tunnelled(buf, l4, min(ipend, e), ts, pktno)
            ent = self.udp.get(buf[ka : l4 + 4])
            if ent is None:
                return False
            if size < 8:
                return False
            f, out = ent
            f.count(out, size - 8, ts)
            if f.watch:
                self._udp_watch(f, out, buf[l4 + 8 : min(ipend, e)], ts)
            return True
        return False

    def _tunnelled(self, buf: bytes, l4: int, end: int, ts: float, pktno: int) -> bool:
        """:meth:`_counted` for the Ethernet frame a VXLAN or GENEVE datagram (UDP header
        at ``l4``, IP payload ending at ``end``) carries, counted as the decoder counts it
        (``tunnelled``)."""
        if end - l4 < 16 + 54:
            return False
        port, q = (buf[l4 + 2] << 8) | buf[l4 + 3], l4 + 8
        if port == 4789 and buf[q] & 0x08:
            q += 8
        elif port == 6081 and not buf[q] >> 6 and buf[q + 2 : q + 4] == b"\x65\x58":
            q += 8 + ((buf[q] & 0x3F) << 2)
        else:
            return False
        if end - q < 54 or not self._counted(buf, q, end, ts, pktno, False):
            return False
        self.stats["tunnelled"] += 1
        return True

    def packet(self, ts: float, pktno: int, lt: int, b: bytes, off: int, end: int) -> None:
        """One captured frame ``b[off:end]`` of link type ``lt`` (pcap LINKTYPE_*)."""
        self.stats["packets"] += 1
        if ts > self.now:
            self.now = ts
            if ts >= self.next_linger:
                self._timers(ts)
        seg = self._decoder.frame(ts, pktno, lt, b, off, end)
        if seg is None:
            return
        proto, addrs, b, l4, iend, dend, pktno = seg
        if proto == 6:
            if dend - l4 < 20:
                self.stats["short"] += 1
                return
            ent = self.tcp.get(addrs + b[l4 : l4 + 4])
            hl = (b[l4 + 12] >> 4) << 2
            flags = b[l4 + 13]
            plen = max(iend - l4 - hl, 0)
            if ent is None:
                self._tcp(ts, pktno, None, True, addrs, b, l4, hl, flags, plen, dend)
                return
            f, out = ent
            f.count(out, plen, ts)
            if f.watch or flags & 7:
                self._tcp(ts, pktno, f, out, addrs, b, l4, hl, flags, plen, dend)
            return
        if dend - l4 < 8:
            self.stats["short"] += 1
            return
        plen = max(iend - l4 - 8, 0)
        ent = self.udp.get(addrs + b[l4 : l4 + 4])
        if ent is None:
            self._udp_new(ts, pktno, addrs, b, l4, plen, dend)
            return
        f, out = ent
        f.count(out, plen, ts)
        if f.watch:
            self._udp_watch(f, out, b[l4 + 8 : dend], ts)

    # -- TCP ------------------------------------------------------------------------------

    def _tcp(self, ts, pktno, f, out, addrs, b, l4, hl, flags, plen, dend) -> None:
        half = len(addrs) >> 1
        if f is None or (
            flags & 0x12 == 0x02
            and (
                f.closed is not None
                or (f.isn_c is not None and f.isn_c != _U32BE.unpack_from(b, l4 + 4)[0])
            )
        ):
            if f is not None:  # a new connection on a 5-tuple that closed: end the old one
                self._end(f)
            elif not flags & 0x02 and self.tombstones:
                key = addrs + b[l4 : l4 + 4]
                t = self.tombstones.get(key)
                if t is not None and 0 <= ts - t <= TIME_WAIT:
                    self.stats["late_segments"] += 1  # a straggler of a flow already reported
                    return
            sport, dport = (b[l4] << 8) | b[l4 + 1], (b[l4 + 2] << 8) | b[l4 + 3]
            src, dst = addrs[:half], addrs[half:]
            pstart = l4 + hl
            payload = bytes(b[pstart:dend]) if dend > pstart else b""
            syn = flags & 0x12
            if syn == 0x02:
                client, known = True, True
            elif syn == 0x12:
                client, known = False, True
            elif payload and _looks_client_start(payload):
                client, known = True, True
            elif payload[:5] == b"HTTP/" or looks_server_hello(payload):
                client, known = False, True
            elif sport != dport:
                client, known = sport > dport, False
            else:
                client, known = True, False
            if client:
                f = Flow(6, src, sport, dst, dport, ts, pktno)
                f.pk_out, f.by_out = 1, plen
            else:
                f = Flow(6, dst, dport, src, sport, ts, pktno)
                f.pk_in, f.by_in = 1, plen
            f.known = known
            out = client
            if dport in _DNS_PORTS or sport in _DNS_PORTS:
                f.app = APP_DNS
            self._insert(self.tcp, f)
        seq = _U32BE.unpack_from(b, l4 + 4)[0]
        if flags & 0x02:  # SYN / SYN-ACK: initial sequence numbers
            if out:
                f.isn_c = seq
            else:
                f.isn_s = seq
            seq = (seq + 1) & 0xFFFFFFFF
        if flags & 0x04:  # RST
            f.fin_c = f.fin_s = True
        elif flags & 0x01:
            if out:
                f.fin_c = True
            else:
                f.fin_s = True
        if f.watch:
            pstart = l4 + hl
            if dend > pstart:
                if f.http is None or not self._http_skip(f, out, seq, dend - pstart):
                    self._tcp_payload(f, out, seq, bytes(b[pstart:dend]), ts, plen)
                else:
                    self._http_count(f, out, ts, plen)
            elif f.http is not None:
                self._http_count(f, out, ts, plen)
        if f.fin_c and f.fin_s and f.closed is None:
            f.closed = ts
            self.closing[id(f)] = f

    def _http_skip(self, f: Flow, out: bool, seq: int, n: int) -> bool:
        """An in-order segment wholly inside an HTTP body (by length or chunk, or up to the
        close): stepped over without copying it; what :meth:`_tcp_payload` would do with
        it, minus the bytes. False when the segment needs the general path."""
        st = f.cs if out else f.ss
        if st is None or st.data or st.pending or st.overflow or seq != st.next or n > st.limit:
            return False
        if not (f.http.client if out else f.http.server).skip(n):
            return False
        st.next = (seq + n) & 0xFFFFFFFF
        st.consumed += n
        return True

    def _tcp_payload(self, f: Flow, out: bool, seq: int, data: bytes, ts: float, plen: int) -> None:
        if not f.known and f.app == APP_UNKNOWN:
            # no handshake seen: the content may say the ports guessed wrong
            if (not out and _looks_client_start(data)) or (
                out and (data[:5] == b"HTTP/" or looks_server_hello(data))
            ):
                self._swap(f)
                out = not out
            f.known = True
        if out:
            if f.app == APP_CERT:
                return  # the client's bytes after a missed ClientHello
            st = f.cs
            if st is None:
                if f.app == APP_UNKNOWN and f.isn_c is None and not _looks_client_start(data):
                    f.app = APP_OPAQUE  # joined mid-stream, not at a message start
                    f.watch = False
                    return
                st = f.cs = Stream(seq if f.isn_c is None else f.isn_c + 1)
        else:
            if f.app == APP_UNKNOWN and f.cs is None and looks_server_hello(data):
                f.app = APP_CERT  # no ClientHello: the server's certificate names the flow
            if f.app not in (APP_HTTP, APP_DNS, APP_CERT):
                return
            st = f.ss
            if st is None:
                st = f.ss = Stream(seq if f.isn_s is None else f.isn_s + 1)
        if not st.add(seq, data):
            if st.overflow:
                self._give_up(f)
            elif f.http is not None:
                self._http_count(f, out, ts, plen)
            return
        app = f.app
        if app == APP_UNKNOWN and out and st.data[0] in (4, 5) and f.socks is None:
            r = socks_request(st.data)
            if r is None:
                return  # need more bytes
            if r is False:
                f.app = APP_OPAQUE
                f.watch = False
                f.cs = None
                return
            f.socks, used = r
            st.take(used)  # what follows is the tunnelled protocol: look again
            if not st.data:
                return
        if app == APP_UNKNOWN:
            d = st.data
            if d[0] == 0x16:
                app = f.app = APP_TLS
            elif f.http is not None:  # inside a CONNECT tunnel only TLS is read
                self._done(f)
                return
            elif len(d) >= 8 or b" " in d:
                sp = d.find(b" ", 0, 33)
                if sp > 2 and is_token(bytes(d[:sp])) and bytes(d[:sp]).isupper():
                    app = f.app = APP_HTTP
                    f.http = HttpConnection()
                else:
                    f.app = APP_OPAQUE
                    f.watch = False
                    f.cs = None
                    return
            else:
                return
        if app == APP_TLS:
            info, need = client_hello_from_records(bytes(st.data))
            if info is not None:
                f.hello = info
                f.sni = info.sni
                f.ech = info.ech
            self._handshake_read(f, st, info is not None, need)
        elif app == APP_CERT:
            der, need = certificate_from_records(bytes(st.data))
            if der is not None:
                f.cert = certificate_name(der)
            self._handshake_read(f, st, der is not None, need)
        elif app == APP_HTTP:
            h = f.http
            if out:
                used = h.client.feed(st.data, ts, h.on_request)
            else:
                used = h.server.feed(st.data, ts, h.on_response)
            st.take(used)
            self._http_count(f, out, ts, plen)
            if len(h.exchanges) > MAX_EXCHANGES:
                self._emit_early(f)
            if h.dead:
                f.watch = False
                if h.tunnel is not None and not out and f.cs is not None:
                    # CONNECT accepted: the client's bytes not read as HTTP (and those to
                    # come) open the tunnelled TLS
                    f.app, f.watch = APP_UNKNOWN, True
                else:
                    f.cs = None
                f.ss = None
        elif app == APP_DNS and not out:
            d = st.data
            while len(d) >= 2:
                n = (d[0] << 8) | d[1]
                if len(d) < 2 + n:
                    break
                self._dns(bytes(d[2 : 2 + n]), ts, f.cip)
                st.take(2 + n)
                d = st.data

    def _handshake_read(self, f: Flow, st: Stream, found: bool, need: int) -> None:
        """After looking for a handshake message (a ClientHello, a server Certificate) in
        ``st``: the flow is no longer inspected when it was found, cannot be, or would need
        more bytes than the buffer holds (counted)."""
        if found or need < 0:
            self._done(f)
        elif need + len(st.data) > st.limit:
            self.stats["reassembly_limit"] += 1
            self._done(f)

    def _http_count(self, f: Flow, out: bool, ts: float, plen: int) -> None:
        h = f.http
        if not h.exchanges:
            return
        if out:
            x = h.exchanges[-1]
            x.pk_out += 1
            x.by_out += plen
        else:
            x = h.cur_s or (h.awaiting[0] if h.awaiting else h.exchanges[-1])
            x.pk_in += 1
            x.by_in += plen
        if ts > x.ts_end:
            x.ts_end = ts

    def _give_up(self, f: Flow) -> None:
        self.stats["reassembly_limit"] += 1
        if f.http is not None:
            f.http.dead = True
        self._done(f)

    def _done(self, f: Flow) -> None:
        f.watch = False
        f.cs = f.ss = None

    def _swap(self, f: Flow) -> None:
        d = self.tcp if f.proto == 6 else self.udp
        d.pop(f.ckey, None)
        d.pop(f.skey, None)
        f.cip, f.cport, f.sip, f.sport = f.sip, f.sport, f.cip, f.cport
        f.ckey, f.skey = f.skey, f.ckey
        f.pk_out, f.pk_in, f.by_out, f.by_in = f.pk_in, f.pk_out, f.by_in, f.by_out
        f.isn_c, f.isn_s = f.isn_s, f.isn_c
        f.fin_c, f.fin_s = f.fin_s, f.fin_c
        d[f.ckey] = (f, True)
        d[f.skey] = (f, False)

    # -- UDP ------------------------------------------------------------------------------

    def _udp_new(self, ts, pktno, addrs, b, l4, plen, dend) -> None:
        sport, dport = (b[l4] << 8) | b[l4 + 1], (b[l4 + 2] << 8) | b[l4 + 3]
        if sport in _DNS_PORTS or dport in _DNS_PORTS:
            # DNS datagrams make no flow: they only feed the name map
            if dend - l4 > 8:  # a response goes to the client: its destination address
                self._dns(bytes(b[l4 + 8 : dend]), ts, addrs[len(addrs) >> 1 :])
            return
        half = len(addrs) >> 1
        src, dst = addrs[:half], addrs[half:]
        if (
            dport >= 1024
            and (sport < 1024 or sport in _UDP_SERVER_PORTS)
            and dport not in _UDP_SERVER_PORTS
        ):
            f = Flow(17, dst, dport, src, sport, ts, pktno)
            f.pk_in, f.by_in = 1, plen
            out = False
        else:
            f = Flow(17, src, sport, dst, dport, ts, pktno)
            f.pk_out, f.by_out = 1, plen
            out = True
        self._insert(self.udp, f)
        payload = bytes(b[l4 + 8 : dend])
        f.watch = out and worth_watching(payload)
        if f.watch:
            self._udp_watch(f, out, payload, ts)

    def _udp_watch(self, f: Flow, out: bool, data, ts: float) -> None:
        """QUIC: client datagrams go to :class:`~monitor.collectors.quic.QuicInitialTracker`
        until it returns the ClientHello (or ``MAX_QUIC_DATAGRAMS`` client datagrams)."""
        if not out:
            return
        f.datagrams += 1
        info = self.quic.feed(bytes(data), f.ckey)
        if info is not None:
            f.hello = info
            f.sni = info.sni
            f.ech = info.ech
            f.app = APP_QUIC
        if info is not None or f.datagrams >= MAX_QUIC_DATAGRAMS:
            f.watch = False
            self.quic.forget(f.ckey)

    # -- DNS ------------------------------------------------------------------------------

    def _dns(self, msg: bytes, ts: float, client: bytes | None = None) -> None:
        m = parse_message(msg)
        if m is None:
            self.stats["dns_malformed"] += 1
            return
        self.stats["dns_messages"] += 1
        if m.response:
            self.dns.add(m, ts, client)

    # -- table ----------------------------------------------------------------------------

    def _insert(self, d: dict, f: Flow) -> None:
        self.stats["flows"] += 1
        f.tunnel = self._decoder.tunnel  # the frame that opened the flow was in it
        if (len(self.tcp) + len(self.udp)) >> 1 >= self.max_flows:
            self._evict()
        d[f.ckey] = (f, True)
        d[f.skey] = (f, False)

    def _evict(self) -> None:
        """Table full: expire idle flows, then end the oldest eighth of the table."""
        self._expire_idle(self.now)
        if (len(self.tcp) + len(self.udp)) >> 1 < self.max_flows:
            return
        victims: list[Flow] = []
        want = max(self.max_flows >> 3, 1)
        for d in (self.tcp, self.udp):
            for f, fwd in d.values():
                if fwd:
                    victims.append(f)
        victims.sort(key=lambda f: f.last)
        victims = victims[:want]
        self.stats["flows_evicted_table_full"] += len(victims)
        for f in sorted(victims, key=lambda f: f.pktno):
            self._end(f)

    def _timers(self, ts: float) -> None:
        self.next_linger = ts + 1.0
        if self.closing:
            done = [
                f
                for f in self.closing.values()
                if f.closed is not None and ts - f.closed >= CLOSE_LINGER
            ]
            for f in done:
                self._end(f)
        if ts >= self.next_idle:
            self.next_idle = ts + max(self.idle_timeout / 4, 1.0)
            self._expire_idle(ts)
            self._decoder.expire(ts)
            if self.tombstones:
                for k in [k for k, t in self.tombstones.items() if ts - t > TIME_WAIT]:
                    del self.tombstones[k]

    def _expire_idle(self, ts: float) -> None:
        limit = ts - self.idle_timeout
        old = [f for d in (self.tcp, self.udp) for f, fwd in d.values() if fwd and f.last < limit]
        for f in sorted(old, key=lambda f: f.pktno):
            self._end(f)

    def _end(self, f: Flow) -> None:
        d = self.tcp if f.proto == 6 else self.udp
        if d.get(f.ckey, (None,))[0] is f:
            del d[f.ckey]
        if d.get(f.skey, (None,))[0] is f:
            del d[f.skey]
        self.closing.pop(id(f), None)
        if f.watch and f.proto == 17:
            self.quic.forget(f.ckey)
        if f.proto == 6 and f.closed is not None:
            tomb = self.tombstones
            if len(tomb) >= MAX_TOMBSTONES:
                for k in list(tomb)[: MAX_TOMBSTONES >> 2]:
                    del tomb[k]
            tomb[f.ckey] = tomb[f.skey] = self.now
        self._report(f)

    def finish(self) -> None:
        """End of capture: every flow still open is reported, in order of first packet."""
        rest = [f for d in (self.tcp, self.udp) for f, fwd in d.values() if fwd]
        for f in sorted(rest, key=lambda f: f.pktno):
            self._end(f)
        self._decoder.frags.clear()

    # -- observations ---------------------------------------------------------------------

    def _name(self, f: Flow) -> tuple[str | None, str | None]:
        if f.sni:
            if f.ech and self.dns.is_ech_public(f.sni):
                # the outer name of Encrypted Client Hello: the client's DNS answer for the
                # address says which service it asked for (the inner name is encrypted)
                name = self.dns.lookup(f.sip, f.first, f.cip)
                if name and name != f.sni:
                    return name, "dns"
            return f.sni, "sni"
        if f.socks is not None and f.socks[0]:
            return f.socks[0], "connect"
        if f.cert:
            return f.cert, "cert"
        name = self.dns.lookup(f.sip, f.first, f.cip)
        if name:
            return name, "dns"
        if self._in_ranges is not None:
            ip = self._in_ranges(f.sip)
            if ip:
                return ip, "ip"
        return None, None

    def _to_ingress(self, f: Flow) -> bool:
        """The server is in a provider's published ingress ranges (whatever its name)."""
        return self._in_ranges is not None and self._in_ranges(f.sip) is not None

    def _catalog_ip(self, sip: bytes) -> str | None:
        text = _ip_text(sip)
        return text if self.catalog.match_ip(text) is not None else None

    def _report(self, f: Flow) -> None:
        if f.app == APP_DNS:
            self.stats["flows_dns"] += 1
            return
        h = f.http
        if h is not None and (h.exchanges or h.emitted):
            self._report_http(f, h.exchanges, last=True)
            return
        host, src = self._name(f)
        if (
            not self._keep(host)
            and not self._to_ingress(f)
            and not (self._ja4s and f.hello is not None and f.hello.ja4 in self._ja4s)
        ):
            return
        o = self._obs(f, f.first, f.last, host, src, f.pk_out, f.pk_in, f.by_out, f.by_in, None)
        if f.socks is not None:
            o.dest_port = f.socks[1]  # the port asked of the SOCKS proxy
        self.ready.append(o)

    def _emit_early(self, f: Flow) -> None:
        """Too many requests kept for one flow: report all but the newest (bounded memory)."""
        h = f.http
        keep = h.exchanges[-1]
        early = [x for x in h.exchanges[:-1] if x not in h.awaiting]
        if not early:
            return
        self.stats["http_requests_early"] += len(early)
        self._report_http(f, early, last=False)
        h.exchanges = [x for x in h.exchanges if x not in early] or [keep]
        h.emitted += len(early)

    def _report_http(self, f: Flow, exchanges: list[Exchange], last: bool) -> None:
        if last and exchanges:
            # packets not attributed to a request (handshake, FIN, a tunnel) go to the
            # first one (before any request) and the last one (after the parser stopped)
            x0 = exchanges[0]
            if f.http.emitted == 0:
                pre_out = f.pk_out - sum(x.pk_out for x in exchanges)
                pre_in = f.pk_in - sum(x.pk_in for x in exchanges)
                bo = f.by_out - sum(x.by_out for x in exchanges)
                bi = f.by_in - sum(x.by_in for x in exchanges)
                xl = exchanges[-1] if f.http.dead else x0
                xl.pk_out += max(pre_out, 0)
                xl.pk_in += max(pre_in, 0)
                xl.by_out += max(bo, 0)
                xl.by_in += max(bi, 0)
            if f.http.dead or f.closed is not None:
                exchanges[-1].ts_end = max(exchanges[-1].ts_end, f.last)
        tunnel = f.http.tunnel if f.hello is not None else None
        for x in exchanges:
            host, hsrc, port, url = request_name(x, f.sport)
            if host is None or (x is tunnel and f.sni and canonical_ip(host) is not None):
                host, hsrc = self._name(f)  # CONNECT to an address: the tunnel's SNI names it
            if (
                not self._keep(host)
                and not self._to_ingress(f)
                and not (self._requests and self._requests(url or x.target, x.user_agent))
            ):
                continue
            o = self._obs(
                f, x.ts, x.ts_end, host, hsrc, x.pk_out, x.pk_in, x.by_out, x.by_in, x.index
            )
            if x.method == "CONNECT":
                o.dest_ip = None  # the proxy's address, not the destination's
            if x is not tunnel:
                o.ja4 = None  # the ClientHello is the tunnel's
            o.method = x.method
            o.url = url
            o.user_agent = x.user_agent
            if x.body:
                o.response_excerpt = x.body.decode("utf-8", "backslashreplace")
            o.status = x.status
            o.dest_port = port
            self.ready.append(o)

    def _obs(self, f: Flow, ts, ts_end, host, hsrc, pko, pki, bo, bi, index) -> Observation:
        cip, sip = _ip_text(f.cip), _ip_text(f.sip)
        proto = "tcp" if f.proto == 6 else "udp"
        tunnel = f.tunnel
        key = f"{round(f.first * 1e6)}|{proto}|{cip}|{f.cport}|{sip}|{f.sport}"
        if index is not None:
            key += f"|{index}"
        return Observation(
            ts=ts,
            source=self.source,
            line=f.pktno,
            format=self.fmt,
            client_ip=cip,
            client_port=f.cport,
            dest_host=host,
            dest_port=f.sport,
            # a proxy's address (HTTP CONNECT, SOCKS) is not the destination's
            dest_ip=None if hsrc == "connect" or f.socks is not None else sip,
            bytes_out=bo,
            bytes_in=bi,
            host_source=hsrc,
            duration=max(ts_end - ts, 0.0),
            ts_end=ts_end,
            packets_out=pko,
            packets_in=pki,
            ech=f.ech,
            ja4=f.hello.ja4 if f.hello is not None else None,
            ech_outer=f.sni if f.ech and f.sni and self.dns.is_ech_public(f.sni) else None,
            tunnel=tunnel[0] if tunnel else None,
            tunnel_src=_ip_text(tunnel[1]) if tunnel else None,
            tunnel_dst=_ip_text(tunnel[2]) if tunnel else None,
            record_id=record_id(key.encode()),
        )
