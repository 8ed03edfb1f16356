"""Encrypted Client Hello: the flow is named from the client's DNS answers, not the outer SNI.

The DNS part is real: dnsmasq, started here on 127.0.0.1, answers an HTTPS query (an
``ech`` parameter whose ECHConfig gives the public name ``cloudflare-ech.com``, and an
``ipv4hint``) and an A query for ``chatgpt.com``; tcpdump records the exchange on loopback.
dnsmasq listens on a free port, not 53 (other tests may hold it), so the copy read here has
the port rewritten to 53, the answers' bytes unchanged.

One ClientHello is real too: NSS's ``tstclnt`` (Debian bookworm's libnss3-tools, NSS
3.87) is an ECH client (``-N`` takes the ECHConfigList of the HTTPS answer); it connects to
a listener on 127.0.0.1 under tcpdump, and the copy read here has the server's address and
port rewritten to the answered address and 443, the ClientHello's bytes unchanged. Debian
bookworm's curl 7.88 and OpenSSL 3.0 have no ECH, and chromium's ECH needs its own
DNS-over-HTTPS resolver, which cannot run offline. The other ClientHellos (ECH to an
address with no answer, GREASE ECH) are written by scapy following draft-ietf-tls-esni
section 5: an outer ClientHello whose server_name is the public name, with an
encrypted_client_hello extension (type outer, HPKE suite, config id, enc, payload).
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import rdpcap, wrpcap

from monitor.collectors.dns import parse_message
from tests.pcaps import client_hello, parse_capture
from tests.receivers import start_dnsmasq
from tests.test_real_capture import _free_port, _need, _start_tcpdump

pytestmark = pytest.mark.realtools

SERVICE, ADDRESS, PUBLIC = "chatgpt.com", "104.18.32.47", "cloudflare-ech.com"


def ech_config_list(public_name: str) -> bytes:
    """An ECHConfigList holding one version 0xfe0d ECHConfig (draft-ietf-tls-esni s. 4)."""
    name = public_name.encode()
    key_config = struct.pack("!BHH", 0x42, 0x0020, 32) + bytes(range(32))  # id, X25519, key
    key_config += struct.pack("!HHH", 4, 0x0001, 0x0001)  # HKDF-SHA256, AES-128-GCM
    contents = key_config + bytes([0, len(name)]) + name + b"\x00\x00"  # max len, name, exts
    config = struct.pack("!HH", 0xFE0D, len(contents)) + contents
    return struct.pack("!H", len(config)) + config


def https_rdata() -> bytes:
    """HTTPS RR (RFC 9460): priority 1, target ".", alpn h2, ipv4hint, ech."""

    def param(key: int, value: bytes) -> bytes:
        return struct.pack("!HH", key, len(value)) + value

    return (
        struct.pack("!H", 1)
        + b"\x00"
        + param(1, b"\x02h2")
        + param(4, socket.inet_aton(ADDRESS))
        + param(5, ech_config_list(PUBLIC))
    )


def _query(port: int, qtype: str, ident: int) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(5)
        s.sendto(
            bytes(DNS(id=ident, rd=1, qd=DNSQR(qname=SERVICE, qtype=qtype))), ("127.0.0.1", port)
        )
        return s.recv(4096)


def _answers(port: int) -> bool:
    try:
        _query(port, "A", 1)
    except OSError:
        return False
    return True


def _dns_capture(tmp: Path) -> Path:
    """dnsmasq answering HTTPS and A for SERVICE, recorded by tcpdump; the raw capture."""
    exe = shutil.which("dnsmasq")
    _need(exe is not None, "dnsmasq is not installed")
    _need(shutil.which("tcpdump") is not None, "tcpdump is not installed")
    proc, port = start_dnsmasq(
        exe,
        ["--no-poll", "--conf-file=/dev/null", "--user=root" if os.geteuid() == 0 else "--user=",
         f"--pid-file={tmp / 'dnsmasq.pid'}", f"--host-record={SERVICE},{ADDRESS}",
         f"--dns-rr={SERVICE},65,{https_rdata().hex()}"],
        _answers,
    )  # fmt: skip
    cap = tmp / "dns.pcap"
    dump = None
    try:
        deadline = time.monotonic() + 10
        dump = subprocess.Popen(
            ["tcpdump", "-i", "lo", "-n", "-U", "--immediate-mode", "-w", str(cap), f"udp port {port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        while time.monotonic() < deadline + 10:  # probe until tcpdump writes packets
            _query(port, "A", 2)
            time.sleep(0.2)
            if cap.exists() and cap.stat().st_size > 24 + 2 * 60:
                break
        else:
            _need(False, "tcpdump could not capture on lo")
        assert parse_message(_query(port, "HTTPS", 0x65)).answers
        _query(port, "A", 0x41)
        time.sleep(0.5)
    finally:
        if dump is not None:
            dump.terminate()
            dump.wait(10)
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    return cap


def _tls_flow(t0: float, sport: int, dst: str, hello: bytes) -> list:
    c, s = ("127.0.0.1", sport), (dst, 443)
    pkts = [
        IP(src=c[0], dst=s[0]) / TCP(sport=c[1], dport=s[1], flags="S", seq=100),
        IP(src=s[0], dst=c[0]) / TCP(sport=s[1], dport=c[1], flags="SA", seq=500, ack=101),
        IP(src=c[0], dst=s[0]) / TCP(sport=c[1], dport=s[1], flags="A", seq=101, ack=501),
        IP(src=c[0], dst=s[0])
        / TCP(sport=c[1], dport=s[1], flags="PA", seq=101, ack=501)
        / Raw(hello),
        IP(src=s[0], dst=c[0])
        / TCP(sport=s[1], dport=c[1], flags="A", seq=501, ack=101 + len(hello)),
    ]
    out = []
    for i, p in enumerate(pkts):
        f = Ether() / p
        f.time = t0 + i * 0.01
        out.append(f)
    return out


def _hello_listener(port: int, stop: threading.Event) -> None:
    """Takes what each connection sends first (a ClientHello), then hangs up."""
    with socket.create_server(("127.0.0.1", port)) as srv:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except (TimeoutError, OSError):
                continue
            with conn, contextlib.suppress(OSError):
                conn.settimeout(2)
                conn.recv(65536)


def _nss_ech_flow(tmp: Path, t0: float, sport: int) -> list:
    """A real ECH ClientHello: tstclnt, given the ECHConfigList of the HTTPS answer, asks
    for SERVICE; its connection to a listener on 127.0.0.1, recorded by tcpdump, with the
    server made ADDRESS:443 and the client port ``sport``, from ``t0`` on."""
    exe, certutil = shutil.which("tstclnt"), shutil.which("certutil")
    _need(exe is not None and certutil is not None, "tstclnt is not installed (libnss3-tools)")
    db = tmp / "nssdb"
    db.mkdir()
    subprocess.run([certutil, "-N", "-d", f"sql:{db}", "--empty-password"], check=True, timeout=30)
    port = _free_port()
    stop = threading.Event()
    listener = threading.Thread(target=_hello_listener, args=(port, stop), daemon=True)
    listener.start()
    cap = tmp / "nss.pcap"
    with contextlib.ExitStack() as cleanup:  # (undone last first)
        cleanup.callback(listener.join, 5)
        cleanup.callback(stop.set)
        dump = _start_tcpdump(cap, [port])
        cleanup.callback(dump.wait, 10)
        cleanup.callback(dump.terminate)
        configs = base64.b64encode(ech_config_list(PUBLIC)).decode()
        # it fails (the listener hangs up after the ClientHello): only the hello counts
        subprocess.run(
            [exe, "-d", f"sql:{db}", "-h", "127.0.0.1", "-p", str(port), "-a", SERVICE,
             "-V", "tls1.3:tls1.3", "-Q", "-N", configs],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False,
        )  # fmt: skip
        time.sleep(0.5)
    pkts = rdpcap(str(cap))
    hellos = [p for p in pkts if TCP in p and bytes(p[TCP].payload)[:1] == b"\x16"]
    assert hellos, "tstclnt sent no ClientHello"
    client = hellos[0][TCP].sport
    flow = []
    for p in pkts:
        if TCP not in p or client not in (p[TCP].sport, p[TCP].dport):
            continue
        ip, tcp = p[IP], p[TCP]
        if tcp.dport == port:
            ip.dst, tcp.dport, tcp.sport = ADDRESS, 443, sport
        else:
            ip.src, tcp.sport, tcp.dport = ADDRESS, 443, sport
        del ip.chksum, tcp.chksum
        q = Ether(bytes(p))
        q.time = t0 + float(p.time - pkts[0].time)
        flow.append(q)
    return flow


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    """The real DNS exchange (port made 53), then four TLS flows: ECH to the answered
    address, ECH to an address with no answer, a GREASE ECH (real SNI) to the answered one,
    and tstclnt's real ECH to the answered one."""
    tmp = tmp_path_factory.mktemp("ech")
    raw = rdpcap(str(_dns_capture(tmp)))
    port = raw[0][UDP].dport if raw[0][UDP].sport != 53 else raw[0][UDP].sport
    dns = []
    for p in raw:
        u = p[UDP]
        u.sport, u.dport = (
            (53 if u.sport == port else u.sport),
            (53 if u.dport == port else u.dport),
        )
        del u.chksum
        q = Ether(bytes(p))
        q.time = p.time
        dns.append(q)
    t0 = float(raw[-1].time) + 1
    frames = dns + _tls_flow(t0, 41001, ADDRESS, client_hello(PUBLIC, ech=True))
    frames += _tls_flow(t0 + 1, 41002, "104.18.33.47", client_hello(PUBLIC, ech=True))
    frames += _tls_flow(t0 + 2, 41003, ADDRESS, client_hello("api.openai.com", ech=True))
    frames += _nss_ech_flow(tmp, t0 + 3, 41004)
    path = tmp / "ech.pcap"
    wrpcap(str(path), frames)
    return path


def _parse(path: Path) -> dict:
    obs, diag, _ = parse_capture(path)
    assert not diag.file_errors
    return {o.client_port: o for o in obs}


def test_ech_flow_is_named_from_the_clients_dns_answer(capture):
    obs = _parse(capture)
    o = obs[41001]
    assert (o.dest_host, o.host_source, o.ech, o.ech_outer) == (SERVICE, "dns", True, PUBLIC)
    assert (o.dest_ip, o.dest_port) == (ADDRESS, 443)
    # no answer for that address: the outer name is all there is, and it says so
    o = obs[41002]
    assert (o.dest_host, o.host_source, o.ech, o.ech_outer) == (PUBLIC, "sni", True, PUBLIC)
    # GREASE ECH (browsers send it to every server): the SNI is the real name
    o = obs[41003]
    assert (o.dest_host, o.host_source, o.ech, o.ech_outer) == ("api.openai.com", "sni", True, None)
    # a real client's ECH (NSS): its outer name, and the name its DNS answer gives
    o = obs[41004]
    assert (o.dest_host, o.host_source, o.ech, o.ech_outer) == (SERVICE, "dns", True, PUBLIC)
    assert (o.dest_ip, o.dest_port, o.ja4[:4]) == (ADDRESS, 443, "t13d")


def test_dns_answer_is_real_and_tshark_reads_the_same(capture):
    _need(shutil.which("tshark") is not None, "tshark is not installed")

    def fields(expr: str, *names: str) -> list[list[str]]:
        out = subprocess.run(
            ["tshark", "-n", "-r", str(capture), "-Y", expr, "-T", "fields",
             *[a for n in names for a in ("-e", n)]],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        return [line.split("\t") for line in out.splitlines()]

    answers = fields(
        "dns.flags.response == 1 && dns.qry.type == 65", "dns.qry.name", "dns.svcb.svcparam.key"
    )
    assert answers and answers[0][0] == SERVICE and {"1", "4", "5"} <= set(answers[0][1].split(","))
    hellos = fields(
        "tls.handshake.type == 1",
        "tcp.srcport",
        "tls.handshake.extensions_server_name",
        "tls.handshake.extension.type",
    )
    assert {int(p): sni for p, sni, _ in hellos} == {
        41001: PUBLIC,
        41002: PUBLIC,
        41003: "api.openai.com",
        41004: PUBLIC,
    }
    assert all("65037" in types.split(",") for _, _, types in hellos)  # encrypted_client_hello
