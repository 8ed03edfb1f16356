"""Test captures: scapy builds the packets and writes pcap/pcapng; struct writes the odd
link types scapy does not (SLL2, BSD loopback) and the large generated benchmark capture.

Nothing here is used by apiwatch itself; :func:`parse_capture` reads a capture with it.
"""

from __future__ import annotations

import gzip
import random
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting
from scapy.layers.l2 import CookedLinux, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw
from scapy.utils import PcapNgWriter, wrpcap

from monitor.collectors import open_input
from monitor.collectors.base import Diagnostics
from monitor.collectors.pcap import PcapCollector

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z

CONFORMANCE = Path(__file__).resolve().parents[2] / "shared" / "conformance"


# ----------------------------------------------------------------------------- payloads


def client_hello(
    sni: str | None,
    *,
    pq: bool = False,
    ech: bool = False,
    shuffle: int | None = None,
    version: int = 0x0303,
) -> bytes:
    """A TLS ClientHello in one record. ``pq`` adds a ~1.2 KB X25519MLKEM768 key share
    (with the rest, ~1.8 KB as browsers send); ``ech`` an encrypted_client_hello extension;
    ``shuffle`` a seed to randomise the extension order (as Chrome does)."""
    exts: list[tuple[int, bytes]] = []
    if sni is not None:
        name = sni.encode()
        entry = b"\x00" + struct.pack("!H", len(name)) + name
        exts.append((0, struct.pack("!H", len(entry)) + entry))
    exts.append((0x000A, bytes.fromhex("0008001d001700180019")))  # supported_groups
    exts.append((0x000D, bytes.fromhex("000804030804040105010201")))  # signature_algorithms
    exts.append((0x0010, bytes.fromhex("000c02683208687474702f312e31")))  # ALPN h2, http/1.1
    exts.append((0x002B, bytes.fromhex("0403040303")))  # supported_versions 1.3, 1.2
    shares = struct.pack("!HH", 0x001D, 32) + bytes(range(32))
    if pq:
        shares = struct.pack("!HH", 0x11EC, 1216) + bytes(i & 0xFF for i in range(1216)) + shares
    exts.append((0x0033, struct.pack("!H", len(shares)) + shares))
    if ech:
        exts.append(
            (0xFE0D, b"\x00\x00\x01\x00\x01\x42\x00\x20" + bytes(32) + b"\x00\x90" + bytes(144))
        )
    if shuffle is not None:
        random.Random(shuffle).shuffle(exts)
    ext_bytes = b"".join(struct.pack("!HH", t, len(v)) + v for t, v in exts)
    body = (
        struct.pack("!H", version)
        + bytes(range(32))  # random
        + b"\x20"
        + bytes(32)  # session id
        + bytes.fromhex("0006130113021303")  # cipher suites
        + b"\x01\x00"  # compression: null
        + struct.pack("!H", len(ext_bytes))
        + ext_bytes
    )
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def http_request(
    method: str, target: str, host: str | None, body: bytes = b"", extra: str = ""
) -> bytes:
    head = f"{method} {target} HTTP/1.1\r\n"
    if host is not None:
        head += f"Host: {host}\r\n"
    head += "User-Agent: apiwatch-test\r\n" + extra
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


def http_response(status: int, body: bytes = b"", chunked: bool = False) -> bytes:
    reason = {200: "OK", 404: "Not Found", 101: "Switching Protocols"}.get(status, "X")
    head = f"HTTP/1.1 {status} {reason}\r\nServer: test\r\n"
    if chunked:
        chunks = b"".join(
            f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in (body[:5], body[5:]) if c
        )
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + chunks + b"0\r\n\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def dns_response(
    qname: str, answers: Sequence[tuple[str, str, str]], qtype: str = "A", ident: int = 7
) -> bytes:
    """A DNS response built by scapy; ``answers`` are (name, type, value)."""
    rrs = [DNSRR(rrname=name, type=rtype, ttl=300, rdata=value) for name, rtype, value in answers]
    return bytes(DNS(id=ident, qr=1, rd=1, ra=1, qd=[DNSQR(qname=qname, qtype=qtype)], an=rrs))


# ----------------------------------------------------------------------------- sessions


class Tcp:
    """Builds the packets of one TCP connection with coherent sequence numbers."""

    def __init__(
        self, client: str, server: str, sport: int, dport: int, ts: float = T0, v6: bool = False
    ):
        self.client, self.server, self.sport, self.dport = client, server, sport, dport
        self.ts = ts
        self.v6 = v6
        self.cseq = 1000
        self.sseq = 50_000
        self.packets: list[Packet] = []

    def _ip(self, out: bool) -> Packet:
        src, dst = (self.client, self.server) if out else (self.server, self.client)
        return IPv6(src=src, dst=dst) if self.v6 else IP(src=src, dst=dst)

    def _add(self, p: Packet, dt: float = 0.001) -> Packet:
        self.ts += dt
        p.time = self.ts
        self.packets.append(p)
        return p

    def seg(self, out: bool, flags: str, payload: bytes = b"", seq: int | None = None) -> Packet:
        sp, dp = (self.sport, self.dport) if out else (self.dport, self.sport)
        s = (self.cseq if out else self.sseq) if seq is None else seq
        a = self.sseq if out else self.cseq
        p = self._ip(out) / TCP(
            sport=sp, dport=dp, flags=flags, seq=s, ack=a if "A" in flags else 0
        )
        if payload:
            p = p / Raw(payload)
        return p

    def handshake(self) -> Tcp:
        self._add(self.seg(True, "S"))
        self.cseq += 1
        self._add(self.seg(False, "SA"))
        self.sseq += 1
        self._add(self.seg(True, "A"))
        return self

    def send(self, out: bool, data: bytes, mss: int = 1400) -> Tcp:
        for i in range(0, len(data), mss):
            chunk = data[i : i + mss]
            self._add(self.seg(out, "PA", chunk))
            if out:
                self.cseq += len(chunk)
            else:
                self.sseq += len(chunk)
        return self

    def segments(self, out: bool, data: bytes, cuts: Sequence[int]) -> list[Packet]:
        """The segments of ``data`` cut at ``cuts`` (not added: the caller orders them)."""
        bounds = [0, *cuts, len(data)]
        base = self.cseq if out else self.sseq
        segs = [
            self.seg(out, "PA", data[a:b], seq=base + a)
            for a, b in zip(bounds, bounds[1:], strict=False)
        ]
        if out:
            self.cseq += len(data)
        else:
            self.sseq += len(data)
        return segs

    def add(self, packets: Iterable[Packet]) -> Tcp:
        for p in packets:
            self._add(p.copy())
        return self

    def close(self) -> Tcp:
        self._add(self.seg(True, "FA"))
        self.cseq += 1
        self._add(self.seg(False, "FA"))
        self.sseq += 1
        self._add(self.seg(True, "A"))
        return self


def udp(
    src: str, dst: str, sport: int, dport: int, payload: bytes, ts: float, v6: bool = False
) -> Packet:
    ip = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
    p = ip / UDP(sport=sport, dport=dport) / Raw(payload)
    p.time = ts
    return p


def with_ether(packets: Iterable[Packet], vlan: Sequence[int] = ()) -> list[Packet]:
    """Ethernet (optionally 802.1Q tags, outer first; two tags = QinQ with 802.1ad outer)."""
    out = []
    for p in packets:
        l2: Packet = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        for i, tag in enumerate(vlan):
            l2 = l2 / (Dot1AD(vlan=tag) if i == 0 and len(vlan) > 1 else Dot1Q(vlan=tag))
        q = l2 / p
        q.time = p.time
        out.append(q)
    return out


def with_sll(packets: Iterable[Packet]) -> list[Packet]:
    out = []
    for p in packets:
        q = (
            CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6, proto=0x86DD if IPv6 in p else 0x0800)
            / p
        )
        q.time = p.time
        out.append(q)
    return out


def with_v6_ext(packets: Iterable[Packet]) -> list[Packet]:
    """Insert hop-by-hop, routing and destination-options headers into IPv6 packets."""
    out = []
    for p in packets:
        ip = p[IPv6]
        inner = ip.payload.copy()
        q = (
            IPv6(src=ip.src, dst=ip.dst)
            / IPv6ExtHdrHopByHop()
            / IPv6ExtHdrRouting()
            / IPv6ExtHdrDestOpt()
            / inner
        )
        q.time = p.time
        out.append(q)
    return out


# ----------------------------------------------------------------------------- writers


def write_scapy(
    path: Path,
    packets: Sequence[Packet],
    *,
    ng: bool = False,
    nano: bool = False,
    big: bool = False,
) -> Path:
    """pcap (scapy's ``wrpcap``; ``big``: re-written big-endian) or pcapng (PcapNgWriter)."""
    if ng:
        with PcapNgWriter(str(path)) as w:
            for p in packets:
                w.write(p)
        return path
    wrpcap(str(path), list(packets), nano=nano)
    if big:
        frames = _read_le_pcap(path.read_bytes())
        lt = struct.unpack_from("<I", path.read_bytes(), 20)[0]
        write_raw(path, frames, lt, endian=">", nano=nano)
    return path


def _read_le_pcap(data: bytes) -> list[tuple[float, bytes]]:
    nano = data[:4] == b"\x4d\x3c\xb2\xa1"
    pos, out = 24, []
    while pos + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack_from("<IIII", data, pos)
        out.append((sec + frac / (1e9 if nano else 1e6), data[pos + 16 : pos + 16 + incl]))
        pos += 16 + incl
    return out


def write_raw(
    path: Path,
    frames: Iterable[tuple[float, bytes]],
    linktype: int,
    *,
    endian: str = "<",
    nano: bool = False,
    gz: bool = False,
) -> Path:
    """A pcap file from (ts, frame bytes) with struct: any link type, either byte order."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    chunks = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 262144, linktype)]
    scale = 1_000_000_000 if nano else 1_000_000
    for ts, frame in frames:
        sec = int(ts)
        frac = round((ts - sec) * scale)
        chunks.append(struct.pack(endian + "IIII", sec, frac, len(frame), len(frame)) + frame)
    data = b"".join(chunks)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_pcapng_raw(
    path: Path,
    interfaces: Sequence[int],
    frames: Iterable[tuple[int, float, bytes]],
    *,
    endian: str = "<",
    tsresol: int | None = None,
) -> Path:
    """pcapng with struct: several interfaces (link types), ``(iface, ts, frame)`` packets;
    ``tsresol`` sets if_tsresol (e.g. 9 for nanoseconds) on every interface."""
    e = endian

    def block(btype: int, body: bytes) -> bytes:
        body += b"\x00" * (-len(body) % 4)
        n = len(body) + 12
        return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)

    out = [block(0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))]
    for lt in interfaces:
        opts = b""
        if tsresol is not None:
            opts = (
                struct.pack(e + "HH", 9, 1)
                + bytes([tsresol])
                + b"\x00\x00\x00"
                + struct.pack(e + "HH", 0, 0)
            )
        out.append(block(1, struct.pack(e + "HHI", lt, 0, 262144) + opts))
    scale = 10**tsresol if tsresol is not None else 1_000_000
    for iface, ts, frame in frames:
        t = round(ts * scale)
        out.append(
            block(
                6,
                struct.pack(e + "IIIII", iface, t >> 32, t & 0xFFFFFFFF, len(frame), len(frame))
                + frame,
            )
        )
    path.write_bytes(b"".join(out))
    return path


def sll2(frame_ip: bytes) -> bytes:
    """Linux cooked v2 header (20 bytes) in front of an IP packet."""
    proto = 0x86DD if frame_ip[0] >> 4 == 6 else 0x0800
    return (
        struct.pack("!HHIHBB8s", proto, 0, 1, 1, 0, 6, b"\x02\x00\x00\x00\x00\x01\x00\x00")
        + frame_ip
    )


def bsd_loopback(frame_ip: bytes, endian: str = "<") -> bytes:
    fam = 30 if frame_ip[0] >> 4 == 6 else 2
    return struct.pack(endian + "I", fam) + frame_ip


# ----------------------------------------------------------------------------- benchmark


def bulk_capture(
    path: Path, n_packets: int = 200_000, *, flows: int = 400, seed: int = 1
) -> dict[str, int]:
    """A large Ethernet/IPv4 capture written with struct (fast): ``flows`` TLS connections
    (handshake, ClientHello, then bulk encrypted segments of 1448 bytes, mostly
    server->client with client ACKs), a DNS answer before every tenth one, and closes.
    Checksums are left zero. Returns counts of what was written."""
    rnd = random.Random(seed)
    eth = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)]
    count = 0
    ts = T0

    def frame(src: bytes, dst: bytes, proto: int, l4: bytes) -> bytes:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0, src, dst)
        return eth + ip + l4

    def tcp(sp: int, dp: int, seq: int, ack: int, flags: int, payload: bytes = b"") -> bytes:
        return (
            struct.pack(
                "!HHIIBBHHH", sp, dp, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0x50, flags, 65535, 0, 0
            )
            + payload
        )

    def emit(fr: bytes) -> None:
        nonlocal count, ts
        ts += 0.00001
        sec = int(ts)
        out.append(struct.pack("<IIII", sec, int((ts - sec) * 1e6), len(fr), len(fr)) + fr)
        count += 1

    payload = bytes(rnd.getrandbits(8) for _ in range(1448))
    hellos = 0
    dns = 0
    per_flow = max(n_packets // flows, 12)
    i = 0
    while count < n_packets:
        i += 1
        c = bytes([10, 0, (i >> 8) & 0xFF, i & 0xFF])
        s = bytes([160, 79, 104, 10]) if i % 7 == 0 else bytes([93, 184, (i >> 8) & 0xFF, i & 0xFF])
        sp, dp = 40000 + i % 20000, 443
        if i % 10 == 0:
            msg = dns_response(
                f"host{i}.example.com", [(f"host{i}.example.com", "A", ".".join(map(str, s)))]
            )
            emit(
                frame(
                    s[:0] + bytes([10, 0, 0, 53]),
                    c,
                    17,
                    struct.pack("!HHHH", 53, 5353 + i % 100, 8 + len(msg), 0) + msg,
                )
            )
            dns += 1
        ci, si = rnd.getrandbits(32), rnd.getrandbits(32)
        emit(frame(c, s, 6, tcp(sp, dp, ci, 0, 0x02)))
        emit(frame(s, c, 6, tcp(dp, sp, si, ci + 1, 0x12)))
        emit(frame(c, s, 6, tcp(sp, dp, ci + 1, si + 1, 0x10)))
        ch = client_hello(
            "api.anthropic.com" if i % 3 == 0 else f"www{i}.example.org", pq=i % 2 == 0
        )
        emit(frame(c, s, 6, tcp(sp, dp, ci + 1, si + 1, 0x18, ch)))
        hellos += 1
        cseq, sseq = ci + 1 + len(ch), si + 1
        for k in range(per_flow - 7):
            if k % 4 == 3:
                emit(frame(c, s, 6, tcp(sp, dp, cseq, sseq, 0x10)))
            else:
                emit(frame(s, c, 6, tcp(dp, sp, sseq, cseq, 0x18, payload)))
                sseq += len(payload)
        emit(frame(c, s, 6, tcp(sp, dp, cseq, sseq, 0x11)))
        emit(frame(s, c, 6, tcp(dp, sp, sseq, cseq + 1, 0x11)))
        emit(frame(c, s, 6, tcp(sp, dp, cseq + 1, sseq + 1, 0x10)))
    path.write_bytes(b"".join(out))
    return {"packets": count, "flows": i, "client_hellos": hellos, "dns": dns}


def parse_capture(path: Path, catalog=None) -> tuple[list, Diagnostics, PcapCollector]:
    """apiwatch's reading of a capture file: (observations, diagnostics, the collector)."""
    diag = Diagnostics()
    col = PcapCollector(catalog)
    opened = open_input(str(path))
    try:
        obs = list(col.parse(opened.stream, path.name, diag))
    finally:
        opened.close()
    return obs, diag, col
