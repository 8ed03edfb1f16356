#!/usr/bin/env python3
"""Generate a realistic, deterministic packet capture (pcap or pcapng) for benchmarks.

Ethernet frames of many interleaved connections, as a sensor on an office uplink sees them:

* TCP flows with the 3-way handshake, then TLS 1.3 and TLS 1.2 ClientHellos (Chrome-like,
  GREASE; a share with a ~1.2 KB X25519MLKEM768 key share, ~1.8 KB in all, which spans two
  segments; a share with the extension order shuffled), the server's handshake records and
  then mostly bulk encrypted segments (TLS application-data records of 16 KiB cut into
  1448-byte segments, delayed ACKs every second segment), closed by FIN, RST, or left open;
* plain HTTP/1.1 (``Host`` header, keep-alive: one to three requests, bodies by length);
* DNS over UDP before many connections (A/AAAA, CNAME chains), plus unrelated lookups;
* TLS without SNI and opaque protocols, named only by an earlier DNS answer; a few flows
  nobody can name; a few SNI-less flows into a provider's published range (named by IP);
* about 12% of the connections over IPv6.

LLM hosts (``api.openai.com``, ``api.anthropic.com``, ``generativelanguage.googleapis.com``,
``api.deepseek.com``, ``openrouter.ai``, ``chatgpt.com``, ``x.openai.azure.com``) make about
6% of the connections, among ~3,000 ordinary hosts (Zipf-like popularity) that include
near-misses such as ``update.googleapis.com`` and ``management.azure.com``.

Next to the capture, ``FILE.truth.json`` holds what a flow collector must find: per flow
(in order of first packet) the client and server address and port, the name, how it is
known (``sni``, ``http_host``, ``dns``, ``ip`` or null) and, for HTTP, the number of
requests; plus totals (packets, bytes, names by kind, DNS messages, SNIs per host).

Same ``--seed`` and size always give the same bytes. Frames are assembled with ``struct``
from per-flow header templates and slices of one precomputed random "ciphertext" buffer;
the output is written in 4 MiB batches, so memory stays flat for multi-GB captures
(``--size 2G``). Checksums are left zero (as captured on a host with checksum offload:
run Suricata with ``-k none``).

Usage::

    python benchmarks/gen_pcap.py -o /tmp/bench.pcap                    # 250,000 packets
    python benchmarks/gen_pcap.py -o /tmp/bench.pcapng --format pcapng --packets 200000
    python benchmarks/gen_pcap.py -o /tmp/big.pcap --size 2G            # memory check
"""

from __future__ import annotations

import argparse
import bisect
import ipaddress
import itertools
import json
import random
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ensure_parent, say, truth_path  # noqa: E402

DEFAULT_PACKETS = 250_000
DEFAULT_SEED = 1
START = 1_732_752_000  # 2024-11-28T00:00:00Z
MSS = 1448
CONCURRENT = 160  # connections open at once
WRITE_BATCH = 4 << 20
CIPHER_BYTES = 6 << 20  # the server's "ciphertext" stream template
APP_RECORD = 16384 + 17  # TLS 1.3 full application-data record (16 KiB + AEAD tag + type)

LLM_HOSTS: dict[str, tuple[list[str], list[str], list[str]]] = {
    # host: (IPv4 addresses, IPv6 addresses, CNAME chain below the name)
    "api.openai.com": (["162.159.140.245", "172.66.0.243"], ["2606:4700:4400::6812:26b3"], []),
    "api.anthropic.com": (["160.79.104.10"], ["2607:6bc0::10"], []),
    "generativelanguage.googleapis.com": (["142.250.74.42"], ["2a00:1450:4001:82b::200a"], []),
    "api.deepseek.com": (["116.205.40.114"], [], ["api.deepseek.com.w.cdngslb.com"]),
    "openrouter.ai": (["104.18.2.115"], ["2606:4700::6812:273"], []),
    "chatgpt.com": (["104.18.32.47"], ["2606:4700:4400::6812:202f"], []),
    "x.openai.azure.com": (
        ["20.42.65.92"],
        [],
        ["x.privatelink.openai.azure.com", "cognitiveusnorth.cloudapp.azure.com"],
    ),
}
LLM_WEIGHTS = {
    "api.openai.com": 30,
    "api.anthropic.com": 20,
    "generativelanguage.googleapis.com": 12,
    "api.deepseek.com": 8,
    "openrouter.ai": 8,
    "chatgpt.com": 15,
    "x.openai.azure.com": 7,
}
LLM_SHARE = 0.06
#: Anthropic's published API ingress range: SNI-less flows there are named by address
ANTHROPIC_RANGE_V4 = "160.79.104."
HEAVY_HITTERS = [
    "www.google.com",
    "update.googleapis.com",
    "fonts.gstatic.com",
    "www.gstatic.com",
    "clients4.google.com",
    "management.azure.com",
    "login.microsoftonline.com",
    "graph.microsoft.com",
    "outlook.office365.com",
    "cdnjs.cloudflare.com",
    "github.com",
    "api.github.com",
    "objects.githubusercontent.com",
    "slack.com",
    "edgeapi.slack.com",
    "zoom.us",
    "www.youtube.com",
    "i.ytimg.com",
    "static.xx.fbcdn.net",
    "pypi.org",
    "files.pythonhosted.org",
    "registry.npmjs.org",
    "s3.amazonaws.com",
    "dynamodb.us-east-1.amazonaws.com",
    "ocsp.digicert.com",
    "ocsp.pki.goog",
    "ssl.gstatic.com",
    "www.wikipedia.org",
    "en.wikipedia.org",
    "openai.example.org",  # near-miss by name only
]
WORDS = [
    "alpha", "bravo", "cargo", "delta", "echo", "forge", "glint", "harbor", "iris", "jade", "kilo", "lumen", "mango", "nova", "orbit", "pixel", "quartz", "river", "solar", "tango", "umbra", "vivid", "willow", "xenon", "yonder", "zephyr", "amber", "birch", "cobalt", "dune", "ember", "fjord", "grove", "heron", "indigo", "juniper", "kestrel", "lagoon", "maple", "nectar", "onyx", "prism", "quill", "raven", "sable", "thistle", "ultra", "vortex", "wren", "yarrow", "zinc", "atlas", "beacon", "cipher", "drift",
]  # fmt: skip
TLDS = [
    "com", "net", "org", "io", "de", "fr", "co.uk", "co.jp", "com.br", "cn", "ru", "nl",
    "it", "es", "se", "pl", "in", "com.au", "ca", "ch", "dev", "app", "cloud", "tech",
]  # fmt: skip
SUBS = ["www", "api", "cdn", "static", "img", "app", "assets", "edge", "m", "login", "ws"]
HTTP_PATHS = ["/", "/index.html", "/favicon.ico", "/api/v1/status", "/v1/models", "/updates"]

_PCAP_HDR = struct.Struct("<IHHiIII")
_REC = struct.Struct("<IIII")
_EPB = struct.Struct("<IIIIIII")
_IP4 = struct.Struct("!BBHHHBBH4s4s")
_IP6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")

ETH_C2S4 = bytes.fromhex("02005e0000010200c0a80101") + b"\x08\x00"  # client MAC -> router
ETH_S2C4 = bytes.fromhex("0200c0a8010102005e000001") + b"\x08\x00"  # router -> client
ETH_C2S6 = ETH_C2S4[:12] + b"\x86\xdd"
ETH_S2C6 = ETH_S2C4[:12] + b"\x86\xdd"

SYN, ACK, PSH, FIN, RST = 0x02, 0x10, 0x08, 0x01, 0x04


# ----------------------------------------------------------------------------- payloads


def _grease(rnd: random.Random) -> int:
    g = rnd.randrange(16)
    return (g << 12) | 0x0A00 | (g << 4) | 0x0A


def client_hello(
    rnd: random.Random,
    sni: str | None,
    *,
    tls13: bool = True,
    pq: bool = False,
    shuffle: bool = False,
    alpn: tuple[bytes, ...] = (b"h2", b"http/1.1"),
) -> bytes:
    """A Chrome-like ClientHello in one TLS record (~520 bytes; ~1.8 KB with ``pq``)."""
    g1, g2 = _grease(rnd), _grease(rnd)
    exts: list[tuple[int, bytes]] = []
    if sni is not None:
        name = sni.encode()
        entry = b"\x00" + struct.pack("!H", len(name)) + name
        exts.append((0x0000, struct.pack("!H", len(entry)) + entry))
    exts.append((0x0017, b""))  # extended_master_secret
    exts.append((0xFF01, b"\x00"))  # renegotiation_info
    groups = [g2, 0x11EC, 0x001D, 0x0017, 0x0018] if pq else [g2, 0x001D, 0x0017, 0x0018]
    gl = b"".join(struct.pack("!H", g) for g in groups)
    exts.append((0x000A, struct.pack("!H", len(gl)) + gl))  # supported_groups
    exts.append((0x000B, b"\x01\x00"))  # ec_point_formats
    exts.append((0x0023, b""))  # session_ticket
    al = b"".join(bytes([len(a)]) + a for a in alpn)
    exts.append((0x0010, struct.pack("!H", len(al)) + al))  # ALPN
    exts.append((0x0005, b"\x01\x00\x00\x00\x00"))  # status_request
    exts.append((0x000D, bytes.fromhex("0012040308040401050308050501080606010201")))
    exts.append((0x0012, b""))  # signed_certificate_timestamp
    if tls13:
        shares = struct.pack("!HH", g2, 1) + b"\x00"
        if pq:
            shares += struct.pack("!HH", 0x11EC, 1216) + rnd.randbytes(1216)
        shares += struct.pack("!HH", 0x001D, 32) + rnd.randbytes(32)
        exts.append((0x0033, struct.pack("!H", len(shares)) + shares))  # key_share
        exts.append((0x002D, b"\x01\x01"))  # psk_key_exchange_modes
        sv = struct.pack("!BHHH", 6, _grease(rnd), 0x0304, 0x0303)
        exts.append((0x002B, sv))  # supported_versions
        exts.append((0x001B, b"\x02\x00\x02"))  # compress_certificate
        exts.append((0x44CD, b"\x00\x03\x02h2"))  # application_settings
    if shuffle:
        rnd.shuffle(exts)
    exts.insert(0, (g1, b""))
    exts.append((_grease(rnd), b"\x00"))
    ext_bytes = b"".join(struct.pack("!HH", t, len(v)) + v for t, v in exts)
    if not pq and len(ext_bytes) < 400:  # padding (RFC 7685) to ~512 bytes, as Chrome does
        pad = 400 - len(ext_bytes)
        ext_bytes += struct.pack("!HH", 0x0015, pad) + bytes(pad)
    suites = [_grease(rnd), 0x1301, 0x1302, 0x1303] if tls13 else []
    suites += [0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC013, 0xC014, 0x009C, 0x002F]
    sl = b"".join(struct.pack("!H", s) for s in suites)
    body = (
        b"\x03\x03"
        + rnd.randbytes(32)
        + b"\x20"
        + rnd.randbytes(32)
        + struct.pack("!H", len(sl))
        + sl
        + b"\x01\x00"
        + struct.pack("!H", len(ext_bytes))
        + ext_bytes
    )
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def server_hello(rnd: random.Random, tls13: bool) -> bytes:
    """ServerHello record (+ ChangeCipherSpec) that starts the server's byte stream."""
    if tls13:
        exts = struct.pack("!HHH", 0x002B, 2, 0x0304)
        exts += struct.pack("!HHHH", 0x0033, 36, 0x001D, 32) + rnd.randbytes(32)
        suite = 0x1301
    else:
        exts = struct.pack("!HH", 0xFF01, 1) + b"\x00" + struct.pack("!HH", 0x0017, 0)
        suite = 0xC02F
    body = (
        b"\x03\x03"
        + rnd.randbytes(32)
        + b"\x20"
        + rnd.randbytes(32)
        + struct.pack("!HB", suite, 0)
        + struct.pack("!H", len(exts))
        + exts
    )
    hs = b"\x02" + len(body).to_bytes(3, "big") + body
    out = b"\x16\x03\x03" + struct.pack("!H", len(hs)) + hs + b"\x14\x03\x03\x00\x01\x01"
    if not tls13:  # abbreviated handshake: the encrypted Finished
        out += b"\x16\x03\x03\x00\x28" + rnd.randbytes(40)
    return out


def client_finish(rnd: random.Random, tls13: bool, request: int) -> bytes:
    """What the client sends after the ServerHello: CCS, Finished, then its request."""
    out = b"\x14\x03\x03\x00\x01\x01"
    out += (b"\x17\x03\x03\x00\x35" if tls13 else b"\x16\x03\x03\x00\x28") + rnd.randbytes(
        53 if tls13 else 40
    )
    while request > 0:
        n = min(request, 16401)
        out += b"\x17\x03\x03" + struct.pack("!H", n) + rnd.randbytes(n)
        request -= n
    return out


def cipher_stream(rnd: random.Random, size: int) -> bytes:
    """Back-to-back full TLS application-data records: the bulk of every server stream."""
    rec = b"\x17\x03\x03" + struct.pack("!H", APP_RECORD)
    body = rnd.randbytes(size)
    parts = []
    step = APP_RECORD
    for i in range(0, size, step):
        parts.append(rec)
        parts.append(body[i : i + step])
    return b"".join(parts)


def dns_message(
    ident: int, qname: str, qtype: int, answers: list[tuple[str, int, bytes]] | None
) -> bytes:
    """A query (``answers`` None) or a response with compression pointers for the names."""
    flags = 0x0100 if answers is None else 0x8180
    out = bytearray(
        struct.pack("!HHHHHH", ident, flags, 1, len(answers or ()), 0, 0 if answers else 1)
    )
    offsets: dict[str, int] = {}

    def name(n: str) -> None:
        labels = n.split(".")
        for i in range(len(labels)):
            rest = ".".join(labels[i:])
            if rest in offsets:
                out.extend(struct.pack("!H", 0xC000 | offsets[rest]))
                return
            if len(out) < 0x3FFF:
                offsets[rest] = len(out)
            lab = labels[i].encode()
            out.append(len(lab))
            out.extend(lab)
        out.append(0)

    name(qname)
    out.extend(struct.pack("!HH", qtype, 1))
    if answers is None:
        out.extend(b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00")  # EDNS0 OPT
        return bytes(out)
    for owner, rtype, rdata in answers:
        name(owner)
        if rtype == 5:
            out.extend(struct.pack("!HHIH", 5, 1, 300, 0))
            at = len(out)
            name(rdata.decode())
            struct.pack_into("!H", out, at - 2, len(out) - at)
        else:
            out.extend(struct.pack("!HHIH", rtype, 1, 60, len(rdata)) + rdata)
    return bytes(out)


# ----------------------------------------------------------------------------- hosts


class Hosts:
    """Ordinary hosts (Zipf-like popularity) with one address each, and the LLM hosts."""

    def __init__(self, rnd: random.Random, n: int = 3000):
        names = list(HEAVY_HITTERS)
        seen = set(names) | set(LLM_HOSTS)
        while len(names) < n:
            base = rnd.choice(WORDS) + rnd.choice(["", "", "-" + rnd.choice(WORDS), "hub", "ly"])
            host = f"{rnd.choice(SUBS)}.{base}.{rnd.choice(TLDS)}"
            if host not in seen:
                seen.add(host)
                names.append(host)
        self.names = names
        weights = [1.0 / (i + 1) ** 0.9 for i in range(len(names))]
        self.cum = list(itertools.accumulate(weights))
        blocks = [(93, 184), (151, 101), (23, 45), (185, 199), (199, 232), (52, 84), (13, 107)]
        self.v4: dict[str, bytes] = {}
        self.v6: dict[str, bytes] = {}
        for i, h in enumerate(names):
            a, b = blocks[i % len(blocks)]
            j = i // len(blocks)
            self.v4[h] = bytes([a, b, 1 + j // 254, 1 + j % 254])
            self.v6[h] = ipaddress.IPv6Address(f"2a02:26f0:{i:x}::{1 + i % 200:x}").packed
        self.llm = list(LLM_HOSTS)
        self.llm_cum = list(itertools.accumulate(LLM_WEIGHTS[h] for h in self.llm))
        self.llm_v4 = {
            h: [ipaddress.IPv4Address(a).packed for a in v[0]] for h, v in LLM_HOSTS.items()
        }
        self.llm_v6 = {
            h: [ipaddress.IPv6Address(a).packed for a in v[1]] for h, v in LLM_HOSTS.items()
        }

    def pick(self, rnd: random.Random) -> tuple[str, bool]:
        if rnd.random() < LLM_SHARE:
            i = bisect.bisect(self.llm_cum, rnd.random() * self.llm_cum[-1])
            return self.llm[i], True
        i = bisect.bisect(self.cum, rnd.random() * self.cum[-1])
        return self.names[min(i, len(self.names) - 1)], False

    def address(self, rnd: random.Random, host: str, v6: bool) -> bytes | None:
        if host in LLM_HOSTS:
            pool = self.llm_v6[host] if v6 else self.llm_v4[host]
            return rnd.choice(pool) if pool else None
        return (self.v6 if v6 else self.v4)[host]

    def cnames(self, host: str) -> list[str]:
        if host in LLM_HOSTS:
            return LLM_HOSTS[host][2]
        return []


# ----------------------------------------------------------------------------- writer


class Writer:
    """pcap (microsecond, little-endian) or pcapng (one Ethernet interface) records."""

    def __init__(self, path: Path, fmt: str):
        self.fh = open(path, "wb")  # noqa: SIM115 (closed in close())
        self.fmt = fmt
        self.parts: list[bytes] = []
        self.pending = 0
        self.packets = 0
        self.bytes = 0
        if fmt == "pcap":
            self._put(_PCAP_HDR.pack(0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        else:
            shb = struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1)
            self._put(shb + struct.pack("<I", 28))
            idb = struct.pack("<IIHHI", 1, 20, 1, 0, 262144) + struct.pack("<I", 20)
            self._put(idb)

    def _put(self, b: bytes) -> None:
        self.parts.append(b)
        self.pending += len(b)
        self.bytes += len(b)

    def frame(self, ts_us: int, parts: tuple) -> None:
        n = 0
        for p in parts:
            n += len(p)
        self.packets += 1
        if self.fmt == "pcap":
            self.parts.append(_REC.pack(ts_us // 1_000_000, ts_us % 1_000_000, n, n))
            self.parts.extend(parts)
            k = 16 + n
        else:
            pad = -n & 3
            blen = 32 + n + pad
            self.parts.append(_EPB.pack(6, blen, 0, ts_us >> 32, ts_us & 0xFFFFFFFF, n, n))
            self.parts.extend(parts)
            self.parts.append(b"\x00" * pad + struct.pack("<I", blen))
            k = blen
        self.pending += k
        self.bytes += k
        if self.pending >= WRITE_BATCH:
            self.flush()

    def flush(self) -> None:
        self.fh.write(b"".join(self.parts))
        self.parts = []
        self.pending = 0

    def close(self) -> None:
        self.flush()
        self.fh.close()


# ----------------------------------------------------------------------------- flows


class Gen:
    def __init__(self, out: Writer, seed: int):
        self.rnd = random.Random(seed)
        self.out = out
        self.hosts = Hosts(random.Random(seed * 7919 + 1))
        self.cipher = memoryview(cipher_stream(random.Random(seed * 31 + 5), CIPHER_BYTES))
        self.raw = bytes(self.cipher[5 : 1 << 20])  # inside the first record: no headers
        self.http_body = memoryview(random.Random(seed + 99).randbytes(1 << 20))
        self.ts = START * 1_000_000
        self.clients4 = [bytes([10, 20 + (i >> 8), i & 0xFF, 10 + i % 200]) for i in range(400)]
        self.clients6 = [
            ipaddress.IPv6Address(f"fd00:a:b:{i:x}::{i + 2:x}").packed for i in range(60)
        ]
        self.resolver4 = bytes([10, 0, 0, 53])
        self.resolver6 = ipaddress.IPv6Address("fd00:a:b::53").packed
        self.ports: dict[bytes, int] = {}
        self.winding_down = False
        self.flows: list[dict] = []  # the truth, in order of first packet
        self.counts: dict[str, int] = {
            "tcp_flows": 0,
            "ipv6_flows": 0,
            "tls13": 0,
            "tls12": 0,
            "client_hello_two_segments": 0,
            "client_hello_shuffled": 0,
            "client_hello_no_sni": 0,
            "http_flows": 0,
            "http_requests": 0,
            "opaque_flows": 0,
            "dns_queries": 0,
            "dns_responses": 0,
            "dns_noise_lookups": 0,
            "closed_fin": 0,
            "closed_rst": 0,
            "left_open": 0,
        }
        self.sni_per_host: dict[str, int] = {}
        self.http_host_per_host: dict[str, int] = {}
        self.dns_qnames: dict[str, int] = {}

    # -- packets --------------------------------------------------------------------

    def tick(self) -> int:
        self.ts += 2 + int(self.rnd.expovariate(1 / 18))
        return self.ts

    def port(self, client: bytes) -> int:
        p = self.ports.get(client, 32768 + (client[-1] * 97) % 20000)
        p = 32768 + (p - 32768 + 1 + self.rnd.randrange(7)) % 28000
        self.ports[client] = p
        return p

    def udp(self, v6: bool, src: bytes, dst: bytes, sp: int, dp: int, payload: bytes, c2s: bool):
        l4 = _UDP.pack(sp, dp, 8 + len(payload), 0)
        if v6:
            ip = _IP6.pack(0x60000000, 8 + len(payload), 17, 64, src, dst)
            eth = ETH_C2S6 if c2s else ETH_S2C6
        else:
            ip = _IP4.pack(0x45, 0, 28 + len(payload), 0, 0, 64, 17, 0, src, dst)
            eth = ETH_C2S4 if c2s else ETH_S2C4
        self.out.frame(self.tick(), (eth, ip, l4, payload))

    def dns_lookup(self, client: bytes, v6: bool, host: str, addr: bytes | None, rtype: int):
        """A query and its answer (CNAME chain when the host has one) from the resolver."""
        resolver = self.resolver6 if v6 else self.resolver4
        sp = self.port(client)
        ident = self.rnd.randrange(65536)
        self.udp(v6, client, resolver, sp, 53, dns_message(ident, host, rtype, None), True)
        answers: list[tuple[str, int, bytes]] = []
        owner = host
        for cn in self.hosts.cnames(host):
            answers.append((owner, 5, cn.encode()))
            owner = cn
        if addr is not None:
            answers.append((owner, rtype, addr))
        msg = dns_message(ident, host, rtype, answers)
        self.ts += 400 + self.rnd.randrange(4000)  # resolver latency
        self.udp(v6, resolver, client, 53, sp, msg, False)
        self.counts["dns_queries"] += 1
        self.counts["dns_responses"] += 1
        self.dns_qnames[host] = self.dns_qnames.get(host, 0) + 2

    def flow(self):
        """One connection, as a generator of packets (the scheduler interleaves them)."""
        rnd = self.rnd
        r = rnd.random()
        v6 = r < 0.12
        client = rnd.choice(self.clients6 if v6 else self.clients4)
        kind = rnd.random()
        host, llm = self.hosts.pick(rnd)
        addr = self.hosts.address(rnd, host, v6)
        if addr is None:  # this LLM host has no IPv6 address: IPv4 then
            v6 = False
            client = rnd.choice(self.clients4)
            addr = self.hosts.address(rnd, host, False)
        how: str | None
        name: str | None
        dns = rnd.random() < 0.45
        if kind < 0.78:
            app, how, name, sport = "tls", "sni", host, 443
        elif kind < 0.90:
            app, how, name, sport = "http", "http_host", host, 80
        elif kind < 0.95:
            app, how, name, sport, dns = "tls-nosni", "dns", host, 443, True
        elif kind < 0.985:
            app, how, name, dns = "opaque", "dns", host, True
            sport = rnd.choice([5222, 8883, 9000, 22])
        elif kind < 0.993:  # SNI-less TLS into a published provider range: named by address
            app, how, v6, dns = "tls-nosni", "ip", False, False
            client = rnd.choice(self.clients4)
            addr = bytes([160, 79, 104, 20 + rnd.randrange(200)])
            name, llm, sport = str(ipaddress.IPv4Address(addr)), True, 443
        else:  # nobody can name this one
            app, how, name, llm, dns, sport = "opaque", None, None, False, False, 7000
            addr = bytes([198, 51, 100, 1 + rnd.randrange(250)])
            v6 = False
            client = rnd.choice(self.clients4)
        if dns:
            yield from self._dns(client, v6, host, addr)
        cport = self.port(client)
        entry = {
            "proto": "tcp",
            "client_ip": str(ipaddress.ip_address(client)),
            "client_port": cport,
            "server_ip": str(ipaddress.ip_address(addr)),
            "server_port": sport,
            "name": name,
            "how": how,
            "llm": llm,
        }
        if app == "http":
            yield from self._http(entry, v6, client, addr, cport, sport, host)
        else:
            yield from self._tls(entry, app, v6, client, addr, cport, sport, host)

    def _dns(self, client, v6, host, addr):
        # the lookup happens right before the connection; "yield" lets others interleave
        self.dns_lookup(client, v6, host, addr, 28 if v6 else 1)
        yield

    def _start(self, entry, v6, client, addr, cport, sport):
        self.flows.append(entry)
        self.counts["tcp_flows"] += 1
        self.counts["ipv6_flows"] += v6
        rnd = self.rnd
        c = [client, addr, cport, sport, rnd.getrandbits(32), 0, v6, True]
        s = [addr, client, sport, cport, rnd.getrandbits(32), 0, v6, False]
        return c, s

    def tcp(self, side, flags: int, payload=b"", ack_of=None) -> None:
        """One segment from ``side`` ([src, dst, sport, dport, seq, ack, v6, c2s])."""
        src, dst, sp, dp, seq, ack, v6, c2s = side
        if ack_of is not None:
            ack = side[5] = ack_of[4]
        if flags & SYN:  # MSS 1460, SACK permitted (no window scaling: windows as sent)
            l4 = _TCP.pack(sp, dp, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0x70, flags, 64240, 0, 0)
            l4 += b"\x02\x04\x05\xb4\x01\x01\x04\x02"
        else:
            l4 = _TCP.pack(sp, dp, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0x50, flags, 65535, 0, 0)
        n = len(payload) + len(l4) - 20
        if v6:
            ip = _IP6.pack(0x60000000, 20 + n, 6, 64, src, dst)
            eth = ETH_C2S6 if c2s else ETH_S2C6
        else:
            ip = _IP4.pack(0x45, 0, 40 + n, 0, 0x4000, 64, 6, 0, src, dst)
            eth = ETH_C2S4 if c2s else ETH_S2C4
        side[4] = seq + len(payload) + (1 if flags & (SYN | FIN) else 0)
        if payload:
            self.out.frame(self.tick(), (eth, ip, l4, payload))
        else:
            self.out.frame(self.tick(), (eth, ip, l4))

    def _handshake(self, c, s):
        self.tcp(c, SYN)
        yield
        self.tcp(s, SYN | ACK, ack_of=c)
        yield
        self.tcp(c, ACK, ack_of=s)

    def _send(self, a, b, data, bulk=False):
        """``data`` from side ``a`` in MSS segments; ``b`` ACKs every second one. Bulk
        transfers stop early once the packet budget is reached (``self.winding_down``)."""
        n = len(data)
        acked = True
        for k, i in enumerate(range(0, n, MSS), 1):
            if bulk and self.winding_down and k > 1:
                break
            last = i + MSS >= n
            self.tcp(a, PSH | ACK if last else ACK, data[i : i + MSS], ack_of=b)
            acked = False
            if k % 2 == 0 or last:
                yield
                self.tcp(b, ACK, ack_of=a)
                acked = True
            yield
        if not acked:
            self.tcp(b, ACK, ack_of=a)

    def _close(self, c, s):
        r = self.rnd.random()
        if r < 0.84:
            self.counts["closed_fin"] += 1
            first, second = (c, s) if r < 0.6 else (s, c)
            self.tcp(first, FIN | ACK, ack_of=second)
            yield
            self.tcp(second, FIN | ACK, ack_of=first)
            yield
            self.tcp(first, ACK, ack_of=second)
        elif r < 0.95:
            self.counts["closed_rst"] += 1
            self.tcp(c if r < 0.9 else s, RST | ACK, ack_of=s if r < 0.9 else c)
        else:
            self.counts["left_open"] += 1

    def _bulk_size(self) -> int:
        r = self.rnd.random()
        if r < 0.68:
            return self.rnd.randrange(1, 12) * MSS
        if r < 0.95:
            return self.rnd.randrange(12, 250) * MSS
        return self.rnd.randrange(250, 1800) * MSS

    def _tls(self, entry, app, v6, client, addr, cport, sport, host):
        rnd = self.rnd
        c, s = self._start(entry, v6, client, addr, cport, sport)
        yield from self._handshake(c, s)
        yield
        if app == "opaque":
            self.counts["opaque_flows"] += 1
            hello = b"\x00\x00\x00\x2a" + rnd.randbytes(38)  # a binary protocol's greeting
            yield from self._send(c, s, hello)
            yield from self._send(s, c, b"\x00\x00\x01\x00" + rnd.randbytes(252))
            bulk = self._bulk_size() // 2
            yield from self._send(s, c, self.http_body[:bulk], bulk=True)
            yield from self._close(c, s)
            return
        tls13 = rnd.random() < 0.8
        pq = tls13 and rnd.random() < 0.35
        shuffle = tls13 and rnd.random() < 0.5
        ch = client_hello(rnd, host if app == "tls" else None, tls13=tls13, pq=pq, shuffle=shuffle)
        self.counts["tls13" if tls13 else "tls12"] += 1
        self.counts["client_hello_two_segments"] += len(ch) > MSS
        self.counts["client_hello_shuffled"] += shuffle
        if app == "tls":
            self.sni_per_host[host] = self.sni_per_host.get(host, 0) + 1
        else:
            self.counts["client_hello_no_sni"] += 1
        yield from self._send(c, s, ch)
        # server's first flight: ServerHello (+CCS), and for TLS 1.3 the encrypted
        # handshake (EncryptedExtensions..Finished) as one application-data record
        flight = server_hello(rnd, tls13)
        if tls13:
            n = rnd.randrange(2500, 4500)
            off = rnd.randrange(0, 1 << 19)
            flight += b"\x17\x03\x03" + struct.pack("!H", n) + self.raw[off : off + n]
        yield from self._send(s, c, flight)
        req = client_finish(rnd, tls13, rnd.randrange(200, 900 if rnd.random() < 0.8 else 6000))
        yield from self._send(c, s, req)
        bulk = self._bulk_size()
        start = rnd.randrange(0, 64) * (APP_RECORD + 5)
        yield from self._send(s, c, self.cipher[start : start + bulk], bulk=True)
        yield from self._close(c, s)

    def _http(self, entry, v6, client, addr, cport, sport, host):
        rnd = self.rnd
        nreq = 1 if rnd.random() < 0.7 else rnd.randrange(2, 4)
        entry["requests"] = nreq
        self.counts["http_flows"] += 1
        self.counts["http_requests"] += nreq
        self.http_host_per_host[host] = self.http_host_per_host.get(host, 0) + nreq
        c, s = self._start(entry, v6, client, addr, cport, sport)
        yield from self._handshake(c, s)
        yield
        for _ in range(nreq):
            post = rnd.random() < 0.15
            body = rnd.randbytes(rnd.randrange(50, 3000)) if post else b""
            head = (
                f"{'POST' if post else 'GET'} {rnd.choice(HTTP_PATHS)} HTTP/1.1\r\n"
                f"Host: {host}\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n"
                f"Accept: */*\r\nAccept-Encoding: gzip\r\nConnection: keep-alive\r\n"
            )
            if post:
                head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            yield from self._send(c, s, head.encode() + b"\r\n" + body)
            size = self._bulk_size() // 3
            rh = (
                f"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Length: {size}\r\nConnection: keep-alive\r\n\r\n"
            ).encode()
            yield from self._send(s, c, rh + bytes(self.http_body[:size]), bulk=True)
        yield from self._close(c, s)

    def noise_lookup(self):
        """A lookup that no connection follows (prefetch, NXDOMAIN, a name used later)."""
        rnd = self.rnd
        v6 = rnd.random() < 0.3
        client = rnd.choice(self.clients6 if v6 else self.clients4)
        host, _llm = self.hosts.pick(rnd)
        if rnd.random() < 0.2:
            host = f"nx{rnd.randrange(10**6)}.{rnd.choice(WORDS)}.invalid"
            addr = None
        else:
            addr = self.hosts.address(rnd, host, v6)
            if addr is None:  # no IPv6 address for this host: ask over IPv4
                v6 = False
                client = rnd.choice(self.clients4)
                addr = self.hosts.address(rnd, host, False)
        self.counts["dns_noise_lookups"] += 1
        self.dns_lookup(client, v6, host, addr, 28 if v6 else 1)
        yield


def generate(out_path: Path, *, packets: int | None, size: int | None, seed: int, fmt: str) -> dict:
    t0 = time.perf_counter()
    w = Writer(out_path, fmt)
    g = Gen(w, seed)
    rnd = g.rnd
    active: list = []

    def done() -> bool:
        return (packets is not None and w.packets >= packets) or (
            size is not None and w.bytes >= size
        )

    while True:
        starting = not done()
        if starting:
            while len(active) < CONCURRENT:
                active.append(g.noise_lookup() if rnd.random() < 0.04 else g.flow())
        elif not active:
            break
        i = int(rnd.random() * len(active))
        try:
            next(active[i])
        except StopIteration:
            active[i] = active[-1]
            active.pop()
        if not starting:  # budget reached: no new flows, the open ones finish quickly
            g.winding_down = True
    w.close()
    secs = time.perf_counter() - t0
    flows = g.flows
    by_how: dict[str, int] = {}
    observations = 0
    llm_obs = 0
    for f in flows:
        by_how[str(f["how"])] = by_how.get(str(f["how"]), 0) + 1
        n = f.get("requests", 1)
        observations += n
        llm_obs += n if f["llm"] else 0
    truth = {
        "generator": "benchmarks/gen_pcap.py",
        "seed": seed,
        "format": fmt,
        "link_type": "ethernet",
        "packets": w.packets,
        "bytes": w.bytes,
        "flows": len(flows),
        "observations": observations,
        "llm_observations": llm_obs,
        "flows_by_how": by_how,
        "counts": g.counts,
        "sni_per_host": dict(sorted(g.sni_per_host.items(), key=lambda kv: -kv[1])),
        "http_requests_per_host": dict(sorted(g.http_host_per_host.items(), key=lambda kv: -kv[1])),
        "dns_messages": g.counts["dns_queries"] + g.counts["dns_responses"],
        "dns_qnames": g.dns_qnames,
        "first_ts": START,
        "last_ts": g.ts / 1e6,
        "seconds": round(secs, 3),
        "packets_per_s": round(w.packets / secs) if secs else None,
        "flow_list": flows,
    }
    return truth


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1] if t and t[-1] in _UNITS else ""
    return int(float(t[: len(t) - len(unit)]) * _UNITS[unit])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", required=True, type=Path, help="capture file")
    ap.add_argument(
        "--packets", type=int, help=f"about this many packets (default {DEFAULT_PACKETS:,})"
    )
    ap.add_argument("--size", help="about this many bytes instead, e.g. 2G, 500M")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--format", choices=("pcap", "pcapng"), default=None)
    ap.add_argument("--no-truth", action="store_true", help="do not write FILE.truth.json")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    fmt = args.format or ("pcapng" if args.output.suffix == ".pcapng" else "pcap")
    size = parse_size(args.size) if args.size else None
    packets = args.packets if args.packets is not None or size else DEFAULT_PACKETS
    if packets is not None and packets < 1:
        ap.error("--packets must be >= 1")
    ensure_parent(args.output)
    truth = generate(args.output, packets=packets, size=size, seed=args.seed, fmt=fmt)
    if not args.no_truth:
        with open(truth_path(args.output), "w") as fh:
            json.dump(truth, fh, indent=0)
            fh.write("\n")
    if not args.quiet:
        say(
            f"wrote {truth['packets']:,} packets ({truth['bytes'] / 1e6:,.1f} MB, {fmt}) to "
            f"{args.output} in {truth['seconds']:.2f} s ({truth['packets_per_s'] or 0:,} "
            f"packets/s); {truth['flows']:,} flows, {truth['llm_observations']:,} LLM "
            f"observations, {truth['dns_messages']:,} DNS messages"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
