"""Tunnels and mirrored traffic: encapsulated copies of a real loopback capture.

A real capture (curl and Python's ssl on loopback, recorded by tcpdump: see
``test_real_capture.py``) is wrapped packet by packet, with scapy, in each encapsulation
that mirrors and tunnels use (IP in IP, GRE, ERSPAN II/III, VXLAN, GENEVE, GTP-U, MPLS,
PPPoE, and nestings of them). tshark decodes each file on its own; for every flow tshark
names, apiwatch names the same, with the same counters as the plain capture and the outer
addresses in ``tunnel_src``/``tunnel_dst``. Copies whose encapsulation headers are cut
short are read without harm. Skipped locally when a tool is missing; required in CI.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from scapy.contrib.erspan import ERSPAN_II, ERSPAN_III
from scapy.contrib.geneve import GENEVE
from scapy.contrib.gtp import GTP_U_Header
from scapy.contrib.mpls import MPLS
from scapy.layers.inet import GRE, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.layers.ppp import PPP, PPPoE
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw
from scapy.utils import rdpcap, wrpcap

from monitor.collectors.base import Diagnostics
from monitor.collectors.layers import MAX_DEPTH
from monitor.observation import split_host_port
from tests.pcaps import T0, client_hello, parse_capture
from tests.test_real_capture import EXPECTED_SNIS, _capture_exchange, _need

pytestmark = pytest.mark.realtools

OUT4 = ("198.51.100.7", "203.0.113.9")  # the mirror source and the collector
OUT6 = ("2001:db8::7", "2001:db8::9")
INNER6 = "fd00::1"  # 127.0.0.1 when the inner packets are made IPv6 (6in4, 6in6)


def _eth():
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def _o4():
    return IP(src=OUT4[0], dst=OUT4[1])


def _o6():
    return IPv6(src=OUT6[0], dst=OUT6[1])


def _v6(ip):
    """The same TCP segment over IPv6 (checksum recomputed)."""
    seg = ip[TCP].copy()
    del seg.chksum
    return IPv6(src=INNER6, dst=INNER6) / seg


#: name -> (wrap(inner IPv4 packet, frame index), expected ``tunnel``, outer addresses)
VARIANTS = {
    "ipip": (lambda ip, i: _eth() / _o4() / ip, "ipip", OUT4),
    "4in6": (lambda ip, i: _eth() / _o6() / ip, "4in6", OUT6),
    "6in4": (lambda ip, i: _eth() / _o4() / _v6(ip), "6in4", OUT4),
    "6in6": (lambda ip, i: _eth() / _o6() / _v6(ip), "6in6", OUT6),
    "gre-key-seq-csum": (
        lambda ip, i: (
            _eth()
            / _o4()
            / GRE(chksum_present=1, key_present=1, key=42, seqnum_present=1, sequence_number=i)
            / ip
        ),
        "gre",
        OUT4,
    ),
    "erspan2": (
        lambda ip, i: (
            _eth()
            / _o4()
            / GRE(seqnum_present=1, sequence_number=i, proto=0x88BE)
            / ERSPAN_II(session_id=7, index=i)
            / _eth()
            / ip
        ),
        "erspan",
        OUT4,
    ),
    "erspan3": (
        lambda ip, i: _eth() / _o4() / GRE(proto=0x22EB) / ERSPAN_III(session_id=7) / _eth() / ip,
        "erspan",
        OUT4,
    ),
    "vxlan-aws": (
        lambda ip, i: (
            _eth() / _o4() / UDP(sport=49152 + i % 1000, dport=4789) / VXLAN(vni=3001) / _eth() / ip
        ),
        "vxlan",
        OUT4,
    ),
    "geneve-gcp": (
        lambda ip, i: (
            _eth()
            / _o6()
            / UDP(sport=50000, dport=6081)
            / GENEVE(vni=5, proto=0x6558, optionlen=2)
            # an option (class 0x0103, 4 bytes of data) to step over
            / Raw(bytes.fromhex("0103 8001 0000 0001".replace(" ", "")))
            / _eth()
            / ip
        ),
        "geneve",
        OUT6,
    ),
    "gtpu": (
        lambda ip, i: _eth() / _o4() / UDP(sport=2152, dport=2152) / GTP_U_Header(teid=9) / ip,
        "gtpu",
        OUT4,
    ),
    "mpls": (lambda ip, i: _eth() / MPLS(label=100, s=0) / MPLS(label=200, s=1) / ip, None, None),
    "pppoe": (lambda ip, i: _eth() / PPPoE(sessionid=3) / PPP(proto=0x0021) / ip, None, None),
    "nested-qinq-vxlan-gre-4in6": (
        lambda ip, i: (
            _eth()
            / Dot1AD(vlan=10)
            / Dot1Q(vlan=20)
            / _o4()
            / UDP(sport=40000, dport=4789)
            / VXLAN(vni=1)
            / _eth()
            / IP(src="10.0.0.1", dst="10.0.0.2")
            / GRE(key_present=1, key=1)
            / _o6()
            / ip
        ),
        "vxlan+gre+4in6",
        OUT4,
    ),
}


@pytest.fixture(scope="module")
def loopback(tmp_path_factory) -> tuple[Path, int, int]:
    """A real capture of TLS 1.2/1.3 and HTTP on loopback: (path, TLS port, HTTP port)."""
    for tool in ("tcpdump", "curl", "openssl", "tshark"):
        _need(shutil.which(tool) is not None, f"{tool} is not installed")
    tmp = tmp_path_factory.mktemp("loopback")
    for attempt in range(2):  # a loaded machine can make tcpdump miss packets
        obs, _report, tls_port, http_port = _capture_exchange(tmp, attempt)
        if sorted(o.dest_host for o in obs if o.host_source == "sni") == EXPECTED_SNIS:
            break
    return tmp / f"lo-{attempt}.pcap", tls_port, http_port


def parse(path: Path) -> tuple[list, Diagnostics, dict]:
    obs, diag, col = parse_capture(path)
    return obs, diag, col.last_stats


def encapsulate(src: Path, dst: Path, name: str, cut: float = 0.0) -> None:
    """Write ``dst``: every frame of ``src`` wrapped as VARIANTS[name]; with ``cut``, that
    share of the frames is cut short somewhere inside the encapsulation headers."""
    wrap = VARIANTS[name][0]
    rng = random.Random(name)
    out = []
    for i, pkt in enumerate(rdpcap(str(src))):
        ip = pkt[IP].copy()
        new = wrap(ip, i)
        if cut and rng.random() < cut:
            raw = bytes(new)
            head = len(raw) - len(bytes(ip))
            new = Ether(raw[: rng.randrange(14, head)])
        new.time = pkt.time
        out.append(new)
    wrpcap(str(dst), out)


def tshark_names(path: Path, tls_port: int, http_port: int) -> dict[tuple, str]:
    """(client address, port, server address, port) -> the name tshark decodes: the SNI of
    a ClientHello or the Host of a request, with the innermost addresses."""
    fields = ["frame.protocols", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst", "tcp.srcport",
              "tcp.dstport", "tls.handshake.extensions_server_name", "http.host"]  # fmt: skip
    cmd = ["tshark", "-n", "-r", str(path), "-d", f"tcp.port=={tls_port},tls",
           "-d", f"tcp.port=={http_port},http", "-Y", "tls.handshake.type == 1 || http.request",
           "-T", "fields", "-E", "occurrence=l", *[a for f in fields for a in ("-e", f)]]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    names: dict[tuple, str] = {}
    for line in out.splitlines():
        protos, s4, d4, s6, d6, sport, dport, sni, host = line.split("\t")
        innermost = [p for p in protos.split(":") if p in ("ip", "ipv6")][-1]
        src, dst = (s6, d6) if innermost == "ipv6" else (s4, d4)
        name = sni or split_host_port(host)[0]
        if name:
            names[(src, int(sport), dst, int(dport))] = name
    return names


def ours(obs) -> dict[tuple, str]:
    return {
        (o.client_ip, o.client_port, o.dest_ip, o.dest_port): o.dest_host
        for o in obs
        if o.host_source in ("sni", "http_host")
    }


def _plain(o):
    return dataclasses.replace(o, tunnel=None, tunnel_src=None, tunnel_dst=None, source="")


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_encapsulated_copy_named_as_tshark_names_it(loopback, tmp_path, name):
    src, tls_port, http_port = loopback
    plain, _, _ = parse(src)
    path = tmp_path / f"{name}.pcap"
    encapsulate(src, path, name)
    obs, diag, stats = parse(path)
    assert not diag.file_errors, diag.file_errors
    theirs = tshark_names(path, tls_port, http_port)
    assert len(theirs) == len(EXPECTED_SNIS) + 1, theirs  # four TLS clients, one HTTP request
    assert ours(obs) == theirs
    _, kind, outer = VARIANTS[name]
    assert {(o.tunnel, o.tunnel_src, o.tunnel_dst) for o in obs} == {
        (kind, *(outer or (None, None)))
    }
    assert stats["tunnelled"] == (len(rdpcap(str(src))) if kind else 0)
    if "6in" not in name:  # the inner packets unchanged: the same flows, counted the same
        assert [_plain(o) for o in obs] == [_plain(o) for o in plain]
    else:
        assert {o.client_ip for o in obs} == {INNER6}
        assert [o.packets_out for o in obs] == [o.packets_out for o in plain]


@pytest.mark.parametrize("name", ["vxlan-aws", "erspan2", "gtpu", "nested-qinq-vxlan-gre-4in6"])
def test_truncated_encapsulations(loopback, tmp_path, name):
    """A third of the frames cut inside their tunnel headers: counted as short, nothing
    raised, and every flow tshark can still name is named the same."""
    src, tls_port, http_port = loopback
    path = tmp_path / f"{name}-cut.pcap"
    encapsulate(src, path, name, cut=0.33)
    obs, diag, stats = parse(path)
    assert not diag.file_errors, diag.file_errors
    assert stats["short"] > 0 and diag.skipped >= stats["short"]
    theirs = tshark_names(path, tls_port, http_port)
    mine = ours(obs)
    assert {k: mine.get(k) for k in theirs} == theirs


def test_tunnel_depth_bound_is_counted(tmp_path):
    """IP in IP nested to the bound is read; one level deeper is dropped and counted."""
    hello = client_hello("api.openai.com")

    def flow(depth: int, sport: int) -> list:
        pkts = [
            IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=sport, dport=443, flags="S", seq=1),
            IP(src="10.0.0.2", dst="10.0.0.1") / TCP(sport=443, dport=sport, flags="SA", ack=2),
            IP(src="10.0.0.1", dst="10.0.0.2")
            / TCP(sport=sport, dport=443, flags="PA", seq=2, ack=1)
            / Raw(hello),
        ]
        out = []
        for p in pkts:
            for level in range(depth):
                p = IP(src=f"192.0.2.{level + 1}", dst="192.0.2.200") / p
            out.append(_eth() / p)
        return out

    frames = flow(MAX_DEPTH, 40001) + flow(MAX_DEPTH + 1, 40002)
    for i, f in enumerate(frames):
        f.time = T0 + i
    path = tmp_path / "deep.pcap"
    wrpcap(str(path), frames)
    obs, diag, stats = parse(path)
    (o,) = obs
    assert (o.client_port, o.dest_host, o.tunnel) == (
        40001,
        "api.openai.com",
        "+".join(["ipip"] * MAX_DEPTH),
    )
    assert (o.tunnel_src, o.tunnel_dst) == ("192.0.2.8", "192.0.2.200")  # the outermost
    assert stats["tunnel_depth_limit"] == 3
    assert any("tunnel" in str(n) and "3" in str(n) for n in diag.notices), diag.notices
