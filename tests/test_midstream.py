"""Captures that start after the handshake: a real openssl s_server and curl on loopback,
recorded by tcpdump, with the first packets of the connection cut off.

TLS 1.2 sends the server's certificate in the clear, so the flow is still named: by the
certificate (``host_source = cert``). TLS 1.3 encrypts it: no certificate name. Skipped
locally when a tool is missing; required in CI.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.utils import rdpcap, wrpcap

from tests.pcaps import parse_capture
from tests.test_real_capture import _free_port, _need, _start_tcpdump

pytestmark = pytest.mark.realtools


def _cert(tmp: Path) -> tuple[Path, Path]:
    key, crt = tmp / "key.pem", tmp / "crt.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(crt), "-days", "1", "-subj", "/CN=openai.com",
         "-addext", "subjectAltName=DNS:*.openai.com,DNS:api.openai.com"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return key, crt


def _session(tmp: Path, tls: str) -> tuple[Path, int]:
    """curl against openssl s_server (``tls``: -tls1_2 or -tls1_3) under tcpdump."""
    key, crt = _cert(tmp)
    port = _free_port()
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(crt), "-key",
         str(key), tls, "-www", "-quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    cap = tmp / f"session{tls}.pcap"
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until it listens
            probe = subprocess.run(["curl", "-sk", "-o", "/dev/null", f"https://127.0.0.1:{port}/"],
                                   timeout=10, check=False)  # fmt: skip
            if probe.returncode == 0:
                break
            time.sleep(0.1)
        dump = _start_tcpdump(cap, [port])
        try:
            max_tls = "1.2" if tls == "-tls1_2" else "1.3"
            subprocess.run(
                ["curl", "-sk", "--max-time", "10", "-o", "/dev/null", "--tls-max", max_tls,
                 "--resolve", f"api.openai.com:{port}:127.0.0.1", f"https://api.openai.com:{port}/"],
                check=True, timeout=20,
            )  # fmt: skip
            time.sleep(0.5)
        finally:
            dump.terminate()
            dump.wait(10)
    finally:
        server.terminate()
        server.wait(10)
    return cap, port


def _cut(cap: Path, port: int, out: Path) -> int:
    """Drop every packet of the connection that carried the ClientHello up to and including
    it (and the probes' connections); returns that connection's client port."""
    pkts = rdpcap(str(cap))
    hello = [p for p in pkts if TCP in p and bytes(p[TCP].payload)[:1] == b"\x16"
             and bytes(p[TCP].payload)[5:6] == b"\x01" and p[TCP].dport == port]  # fmt: skip
    assert hello, "no ClientHello in the capture"
    client = hello[-1][TCP].sport
    at = pkts.index(hello[-1])
    keep = [
        p
        for i, p in enumerate(pkts)
        if IP in p and i > at and client in (p[TCP].sport, p[TCP].dport)
    ]
    wrpcap(str(out), keep)
    return client


def _parse(path: Path) -> list:
    obs, diag, _ = parse_capture(path)
    assert not diag.file_errors, diag.file_errors
    return obs


def _tshark(path: Path, port: int, expr: str) -> str:
    return subprocess.run(
        ["tshark", "-n", "-r", str(path), "-d", f"tcp.port=={port},tls", "-Y", expr],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip


@pytest.fixture
def tools() -> None:
    for tool in ("tcpdump", "curl", "openssl", "tshark"):
        _need(shutil.which(tool) is not None, f"{tool} is not installed")


def test_tls12_joined_after_the_client_hello_is_named_by_the_certificate(tmp_path, tools):
    cap, port = _session(tmp_path, "-tls1_2")
    cut = tmp_path / "cut.pcap"
    client = _cut(cap, port, cut)
    # tshark agrees on what is left: no ClientHello, a Certificate in the clear
    assert not _tshark(cut, port, "tls.handshake.type == 1").strip()
    assert _tshark(cut, port, "tls.handshake.type == 11").strip()
    (o,) = _parse(cut)
    assert (o.dest_host, o.host_source) == ("api.openai.com", "cert")
    assert (o.client_ip, o.client_port, o.dest_ip, o.dest_port) == (
        "127.0.0.1",
        client,
        "127.0.0.1",
        port,
    )
    assert o.packets_out and o.packets_in and o.bytes_in > 500  # the certificate flight
    # the whole session still names it by its SNI
    named = {(x.client_port, x.dest_host, x.host_source) for x in _parse(cap)}
    assert (client, "api.openai.com", "sni") in named


def test_tls13_joined_after_the_client_hello_has_no_certificate_name(tmp_path, tools):
    cap, port = _session(tmp_path, "-tls1_3")
    cut = tmp_path / "cut13.pcap"
    client = _cut(cap, port, cut)
    assert not _tshark(cut, port, "tls.handshake.type == 11").strip()  # encrypted
    (o,) = _parse(cut)
    assert o.client_port == client and o.host_source is None and o.dest_host is None
