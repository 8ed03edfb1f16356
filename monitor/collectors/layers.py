"""A captured frame's link, IP and tunnel layers, down to its TCP or UDP segment.

:meth:`Decoder.frame` takes one frame (pcap link type, buffer and offsets: nothing is
copied) and returns where its transport segment is, or None when there is none (the reason
is counted in :attr:`Decoder.stats`). It reads

* the link types of :data:`LINKTYPES`; 802.1Q/802.1ad VLAN stacks, MPLS label stacks (IP,
  or Ethernet behind a pseudowire control word) and PPPoE sessions inside Ethernet;
* IPv4 (options, fragments) and IPv6 (extension headers, fragments); fragments are put
  back together (bounded) and the whole datagram goes on;
* tunnels, nested, to :data:`MAX_DEPTH` encapsulations (a frame nested deeper is counted
  in ``tunnel_depth_limit`` and dropped): IP in IP (4in4, 6in4, 4in6, 6in6), GRE with
  checksum, key and sequence number, ERSPAN types I, II and III and transparent Ethernet
  bridging over GRE, VXLAN (UDP 4789, AWS VPC Traffic Mirroring, Azure virtual network
  TAP), GENEVE (UDP 6081, Google Cloud Packet Mirroring, AWS Gateway Load Balancer), GTP-U
  (UDP 2152) G-PDUs. UDP to those ports is always taken as the tunnel (as Wireshark does):
  it never makes a flow of its own.

The segment found is the innermost one; :attr:`Decoder.tunnel` then says how it was
carried: the encapsulations, outermost first, joined by ``+`` (e.g. ``vxlan``,
``gre+6in4``), and the outermost tunnel's IP addresses: the mirror or tunnel endpoints.
"""

from __future__ import annotations

from struct import Struct

__all__ = [
    "Decoder",
    "LINKTYPES",
    "MAX_DEPTH",
    "MAX_FRAGS",
    "FRAG_TIMEOUT",
    "TUNNEL_PORTS",
    "VLAN_TYPES",
]

#: Link types read (pcap LINKTYPE_* values).
LINKTYPES = {
    0: "BSD loopback (NULL)",
    1: "Ethernet (802.1Q, QinQ)",
    9: "PPP",
    12: "raw IP (OpenBSD DLT_RAW)",
    14: "raw IP (DLT_RAW)",
    101: "raw IP",
    108: "OpenBSD loopback (LOOP)",
    113: "Linux cooked (SLL)",
    228: "raw IPv4",
    229: "raw IPv6",
    276: "Linux cooked v2 (SLL2)",
}

MAX_FRAGS = 1024
FRAG_TIMEOUT = 30.0
#: encapsulations read inside one frame (VLAN tags and MPLS labels are not counted)
MAX_DEPTH = 8
MAX_LABELS = 16  # MPLS labels in one stack

#: UDP destination ports of the tunnels read -> tunnel name
TUNNEL_PORTS = {4789: "vxlan", 6081: "geneve", 2152: "gtpu"}

#: EtherTypes of a VLAN tag (802.1Q, 802.1ad, and the older QinQ values)
VLAN_TYPES = frozenset({0x8100, 0x88A8, 0x9100, 0x9200})
_V6_EXT = frozenset({0, 43, 60, 135, 139, 140, 253, 254})
_U32LE = Struct("<I")
_U32BE = Struct("!I")
_IP_IN_IP = {(4, 4): "ipip", (4, 41): "6in4", (6, 4): "4in6", (6, 41): "6in6"}
_ETH_TEB, _ERSPAN_2, _ERSPAN_3 = 0x6558, 0x88BE, 0x22EB
_MPLS = frozenset({0x8847, 0x8848})
_PPPOE_SESSION = 0x8864

#: what :meth:`Decoder.frame` returns: (IP protocol 6 or 17, source + destination address
#: bytes, buffer, offset of the TCP/UDP header, end of the IP payload as declared, end of
#: the bytes present, number of the datagram's first packet)
Segment = tuple[int, bytes, bytes, int, int, int, int]


class Decoder:
    """Decodes frames for one capture; keeps the IP fragments being reassembled."""

    def __init__(self, stats: dict[str, int], max_frags: int = MAX_FRAGS):
        self.stats = stats
        for key in ("not_ip", "not_tcp_udp", "short", "fragments", "fragments_reassembled"):
            stats.setdefault(key, 0)
        for key in ("fragment_limit", "unknown_linktype", "tunnelled", "tunnel_depth_limit"):
            stats.setdefault(key, 0)
        self.max_frags = max_frags
        self.frags: dict[tuple, list] = {}
        self.unknown_linktypes: set[int] = set()
        #: how the last segment returned was carried: (encapsulations, outer source,
        #: outer destination address bytes), or None when it was not in a tunnel
        self.tunnel: tuple[str, bytes, bytes] | None = None
        self._ts = 0.0
        self._pktno = 0

    # -- link layer -----------------------------------------------------------------------

    def frame(self, ts: float, pktno: int, lt: int, b: bytes, off: int, end: int):
        """The TCP/UDP segment of frame ``b[off:end]`` of link type ``lt`` (a
        :data:`Segment`), or None."""
        self._ts, self._pktno = ts, pktno
        self.tunnel = None
        if lt == 1:
            return self._ethernet(b, off, end, 0)
        if lt == 113:
            if end - off < 16:
                return self._short()
            return self._ether_type((b[off + 14] << 8) | b[off + 15], b, off + 16, end, 0)
        if lt == 276:
            if end - off < 20:
                return self._short()
            return self._ether_type((b[off] << 8) | b[off + 1], b, off + 20, end, 0)
        if lt == 101 or lt == 12 or lt == 14 or lt == 228 or lt == 229:
            return self._raw_ip(b, off, end, 0)
        if lt == 9:  # PPP, with or without the HDLC address/control bytes
            if end - off >= 2 and b[off] == 0xFF and b[off + 1] == 0x03:
                off += 2
            return self._ppp(b, off, end, 0)
        if lt == 0 or lt == 108:
            if end - off < 4:
                return self._short()
            fam = (_U32BE if lt == 108 else _U32LE).unpack_from(b, off)[0]
            if lt == 0 and fam > 0xFFFF:  # written on a big-endian host
                fam = _U32BE.unpack_from(b, off)[0]
            et = 0x0800 if fam == 2 else 0x86DD if fam in (10, 24, 28, 30) else 0
            return self._ether_type(et, b, off + 4, end, 0)
        self.stats["unknown_linktype"] += 1
        self.unknown_linktypes.add(lt)
        return None

    def _short(self) -> None:
        self.stats["short"] += 1

    def _ethernet(self, b: bytes, off: int, end: int, depth: int):
        if end - off < 14:
            return self._short()
        return self._ether_type((b[off + 12] << 8) | b[off + 13], b, off + 14, end, depth)

    def _ether_type(self, et: int, b: bytes, off: int, end: int, depth: int):
        """The payload of EtherType ``et`` at ``b[off:end]``: VLAN tags, MPLS, PPPoE, IP."""
        while et in VLAN_TYPES:
            if end - off < 4:
                return self._short()
            et = (b[off + 2] << 8) | b[off + 3]
            off += 4
        if et == 0x0800:
            return self._ip4(b, off, end, depth)
        if et == 0x86DD:
            return self._ip6(b, off, end, depth)
        if et in _MPLS:
            return self._mpls(b, off, end, depth)
        if et == _PPPOE_SESSION:
            if end - off < 6 or b[off] != 0x11 or b[off + 1] != 0:
                return self._short()
            return self._ppp(b, off + 6, end, depth)
        self.stats["not_ip"] += 1
        return None

    def _ppp(self, b: bytes, off: int, end: int, depth: int):
        if end - off < 2:
            return self._short()
        ppp = (b[off] << 8) | b[off + 1]
        et = 0x0800 if ppp == 0x0021 else 0x86DD if ppp == 0x0057 else 0
        return self._ether_type(et, b, off + 2, end, depth)

    def _raw_ip(self, b: bytes, off: int, end: int, depth: int):
        if end <= off:
            return self._short()
        v = b[off] >> 4
        return self._ether_type(0x0800 if v == 4 else 0x86DD if v == 6 else 0, b, off, end, depth)

    def _mpls(self, b: bytes, off: int, end: int, depth: int):
        """An MPLS label stack, then IP (by its version) or, behind a pseudowire control
        word (first nibble 0), Ethernet."""
        for _ in range(MAX_LABELS):
            if end - off < 4:
                return self._short()
            bottom = b[off + 2] & 1
            off += 4
            if bottom:
                break
        else:
            self.stats["not_ip"] += 1
            return None
        if end <= off:
            return self._short()
        if b[off] >> 4 == 0:  # a pseudowire: counts as an encapsulation (bounded)
            if depth >= MAX_DEPTH:
                self.stats["tunnel_depth_limit"] += 1
                return None
            return self._ethernet(b, off + 4, end, depth + 1)
        return self._raw_ip(b, off, end, depth)

    # -- network layer --------------------------------------------------------------------

    def _ip4(self, b: bytes, off: int, end: int, depth: int):
        if end - off < 20 or b[off] >> 4 != 4:
            return self._short()
        ihl = (b[off] & 15) << 2
        tot = (b[off + 2] << 8) | b[off + 3]
        iend = off + tot if tot >= ihl else end  # 0 with TSO: take the frame
        dend = iend if iend <= end else end
        proto = b[off + 9]
        l4 = off + ihl
        addrs = b[off + 12 : off + 20]
        fo = (b[off + 6] << 8) | b[off + 7]
        if fo & 0x3FFF:  # a fragment
            ident = (b[off + 4] << 8) | b[off + 5]
            data = b[l4:dend]
            return self._fragment(proto, addrs, ident, (fo & 0x1FFF) << 3, fo & 0x2000, data, depth)
        if proto == 6 or proto == 17 and not self._tunnel_port(b, l4, dend):
            return proto, addrs, b, l4, iend, dend, self._pktno
        return self._inner(proto, addrs, b, l4, iend, dend, depth)

    def _ip6(self, b: bytes, off: int, end: int, depth: int):
        if end - off < 40:
            return self._short()
        plen = (b[off + 4] << 8) | b[off + 5]
        proto = b[off + 6]
        l4 = off + 40
        iend = l4 + plen if plen else end
        dend = iend if iend <= end else end
        addrs = b[off + 8 : off + 40]
        while proto in _V6_EXT or proto == 44 or proto == 51:
            if dend - l4 < 8:
                return self._short()
            if proto == 44:
                fo = (b[l4 + 2] << 8) | b[l4 + 3]
                ident = _U32BE.unpack_from(b, l4 + 4)[0]
                data = b[l4 + 8 : dend]
                return self._fragment(b[l4], addrs, ident, fo & 0xFFF8, fo & 1, data, depth)
            nxt = b[l4]
            l4 += (b[l4 + 1] + 2) << 2 if proto == 51 else (b[l4 + 1] + 1) << 3
            proto = nxt
        if proto == 6 or proto == 17 and not self._tunnel_port(b, l4, dend):
            return proto, addrs, b, l4, iend, dend, self._pktno
        return self._inner(proto, addrs, b, l4, iend, dend, depth)

    def _fragment(self, proto, addrs, ident, offset, more, data, depth):
        """Reassemble fragmented datagrams (bounded); the whole datagram then goes on,
        numbered as its first fragment."""
        self.stats["fragments"] += 1
        half = len(addrs) >> 1
        key = (addrs[:half], addrs[half:], ident, proto)
        frags = self.frags
        ent = frags.get(key)
        if ent is None:
            if len(frags) >= self.max_frags:
                self.stats["fragment_limit"] += 1
                del frags[next(iter(frags))]
            ent = frags[key] = [self._ts, self._pktno, {}, None]
        parts: dict[int, bytes] = ent[2]
        parts[offset] = data
        if not more:
            ent[3] = offset + len(data)
        total = ent[3]
        if total is None or total > 65535:
            return None
        have = 0
        for o in sorted(parts):
            if o > have:
                return None
            have = max(have, o + len(parts[o]))
        if have < total:
            return None
        buf = bytearray(total)
        for o in sorted(parts):
            buf[o : o + len(parts[o])] = parts[o]
        del frags[key]
        self.stats["fragments_reassembled"] += 1
        self._pktno = ent[1]
        seg = bytes(buf)
        if proto == 6 or proto == 17 and not self._tunnel_port(seg, 0, total):
            return proto, addrs, seg, 0, total, total, ent[1]
        return self._inner(proto, addrs, seg, 0, total, total, depth)

    def expire(self, ts: float) -> None:
        """Forget datagrams whose fragments came more than ``FRAG_TIMEOUT`` ago."""
        if self.frags:
            for k in [k for k, v in self.frags.items() if ts - v[0] > FRAG_TIMEOUT]:
                del self.frags[k]

    # -- tunnels --------------------------------------------------------------------------

    @staticmethod
    def _tunnel_port(b: bytes, l4: int, dend: int) -> bool:
        return dend - l4 >= 4 and ((b[l4 + 2] << 8) | b[l4 + 3]) in TUNNEL_PORTS

    def _enter(self, kind: str, addrs: bytes, depth: int) -> bool:
        """One encapsulation more around what follows: False when too deep."""
        if depth >= MAX_DEPTH:
            self.stats["tunnel_depth_limit"] += 1
            return False
        t = self.tunnel
        if t is None:
            half = len(addrs) >> 1
            self.tunnel = (kind, addrs[:half], addrs[half:])
            self.stats["tunnelled"] += 1
        else:
            self.tunnel = (f"{t[0]}+{kind}", t[1], t[2])
        return True

    def _inner(self, proto, addrs, b, l4, iend, dend, depth):
        """What an IP datagram of protocol ``proto`` (not TCP or UDP to a non-tunnel port)
        carries at ``b[l4:dend]``."""
        if proto == 4 or proto == 41:
            if not self._enter(_IP_IN_IP[(4 if len(addrs) == 8 else 6, proto)], addrs, depth):
                return None
            return (self._ip4 if proto == 4 else self._ip6)(b, l4, dend, depth + 1)
        if proto == 47:
            return self._gre(addrs, b, l4, dend, depth)
        if proto == 17:
            if dend - l4 < 8:
                return self._short()
            kind = TUNNEL_PORTS[(b[l4 + 2] << 8) | b[l4 + 3]]
            if not self._enter(kind, addrs, depth):
                return None
            p = l4 + 8
            if kind == "vxlan":
                if dend - p < 8 or not b[p] & 0x08:
                    return self._short()
                return self._ethernet(b, p + 8, dend, depth + 1)
            if kind == "geneve":
                if dend - p < 8 or b[p] >> 6:
                    return self._short()
                et = (b[p + 2] << 8) | b[p + 3]
                p += 8 + ((b[p] & 0x3F) << 2)
                if et == _ETH_TEB:
                    return self._ethernet(b, p, dend, depth + 1)
                return self._ether_type(et, b, p, dend, depth + 1)
            return self._gtpu(b, p, dend, depth + 1)
        self.stats["not_tcp_udp"] += 1
        return None

    def _gre(self, addrs: bytes, b: bytes, p: int, end: int, depth: int):
        """GRE (RFC 2784, 2890: checksum, key, sequence number); ERSPAN I/II/III, Ethernet
        (transparent bridging), IP, MPLS inside."""
        if end - p < 4:
            return self._short()
        flags, et = (b[p] << 8) | b[p + 1], (b[p + 2] << 8) | b[p + 3]
        if flags & 7:  # version 1 (PPTP) and others are not read
            self.stats["not_ip"] += 1
            return None
        seq = flags & 0x1000
        p += 4 + ((flags & 0x8000) >> 13) + ((flags & 0x2000) >> 11) + (seq >> 10)
        if et == _ERSPAN_2:  # type II has a sequence number and an 8-byte header; I neither
            kind, p = ("erspan", p + 8) if seq else ("erspan", p)
        elif et == _ERSPAN_3:
            if end - p < 12:
                return self._short()
            kind, p = "erspan", p + (20 if b[p + 11] & 1 else 12)
        else:
            kind = "gre"
        if not self._enter(kind, addrs, depth):
            return None
        if kind == "erspan" or et == _ETH_TEB:
            return self._ethernet(b, p, end, depth + 1)
        return self._ether_type(et, b, p, end, depth + 1)

    def _gtpu(self, b: bytes, p: int, end: int, depth: int):
        """A GTP-U (version 1) G-PDU: its optional fields and extension headers, then IP."""
        if end - p < 8:
            return self._short()
        flags = b[p]
        if flags >> 5 != 1 or b[p + 1] != 0xFF:  # not a G-PDU: signalling, echo
            self.stats["not_ip"] += 1
            return None
        q = p + 8
        if flags & 7:
            if end - q < 4:
                return self._short()
            nxt = b[q + 3] if flags & 4 else 0
            q += 4
            while nxt:
                if end - q < 4 or not b[q]:
                    return self._short()
                q += b[q] << 2
                if q > end:  # (its next-type byte would be past the frame)
                    return self._short()
                nxt = b[q - 1]
        return self._raw_ip(b, q, end, depth)
