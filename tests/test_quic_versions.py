"""QUIC beyond v1 and v2: IETF drafts, mvfst, Google QUIC (Q043, Q046, Q050, T050, T051).

No capture in ../shared/conformance carries one of these versions (checked with tshark,
2026-12-04), and no client packaged here speaks them, so the client hellos are built here
following each version's published structure (see ``monitor/collectors/quic_versions.py``
for the sources): Initial packets protected with the version's salt, CRYPTO data split
over packets sent out of order; Google QUIC's CHLO tag-value message. tshark decodes the
same capture: for every flow it names, apiwatch names the same.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from monitor.collectors.quic import QuicInitialTracker, chlo_length, parse_chlo
from tests.pcaps import T0, client_hello, parse_capture
from tests.test_quic import _varint, crypto_frame, padded, protect
from tests.test_real_capture import _need

#: IETF-style versions whose Initial carries TLS: name -> version
TLS_VERSIONS = {
    "draft-27": 0xFF00001B,
    "draft-29": 0xFF00001D,
    "draft-32": 0xFF000020,
    "draft-34": 0xFF000022,
    "mvfst-draft-27": 0xFACEB002,
    "mvfst-experimental": 0xFACEB00E,
}
#: Google's: Google QUIC frame types; CRYPTO carries TLS (T) or a CHLO (Q050)
GQUIC_VERSIONS = {"t050": 0x54303530, "t051": 0x54303531}
Q050 = 0x51303530


def chlo(sni: str, version: bytes = b"Q043") -> bytes:
    """A QUIC Crypto CHLO: tag ``CHLO``, entry count, then (tag, end offset) entries in
    ascending tag order and the values."""
    tags = sorted(
        [(b"SNI\x00", sni.encode()), (b"VER\x00", version), (b"PAD\x00", b"-" * 300)],
        key=lambda t: struct.unpack("<I", t[0])[0],
    )
    head, values, end = b"CHLO" + struct.pack("<HH", len(tags), 0), b"", 0
    for tag, value in tags:
        end += len(value)
        head += tag + struct.pack("<I", end)
        values += value
    return head + values


def _stream_frame(data: bytes) -> bytes:
    # gQUIC STREAM frame: 1fdooossB = 0xA0 (data length present, no offset, 1-byte id),
    # stream 1 (the crypto stream), 2-byte length (big-endian since Q039)
    return b"\xa0\x01" + struct.pack(">H", len(data)) + data


def gquic_plain(version: bytes, cid: bytes, sni: str) -> bytes:
    """A Google QUIC client packet with the CHLO in the clear (null encryption: a 12-byte
    message hash before the frames)."""
    frames = _stream_frame(chlo(sni, version))
    if version == b"Q046":  # IETF invariant long header: Initial, 4-byte packet number
        header = b"\xc3" + version + b"\x50" + cid + (1).to_bytes(4, "big")
    else:  # public header: version flag, 8-byte connection ID, 1-byte packet number
        header = b"\x09" + cid + version + b"\x01"
    return header + bytes(12) + padded(frames, 1200)


def gquic_crypto(offset: int, data: bytes) -> bytes:
    """Google QUIC's CRYPTO frame (type 0x08; offset and length as IETF varints)."""
    return b"\x08" + _varint(offset) + _varint(len(data)) + data


def datagrams() -> dict[str, tuple[list[bytes], str]]:
    """name -> (client datagrams in capture order, the server name they carry)."""
    out: dict[str, tuple[list[bytes], str]] = {}
    versions = {**TLS_VERSIONS, **GQUIC_VERSIONS}
    for i, (name, version) in enumerate(sorted(versions.items())):
        sni = f"{name}.example.com"
        ch = client_hello(sni, pq=True)[5:]  # the handshake message (~1.8 KB): two packets
        dcid = bytes([0x80 + i]) * 8
        frame = gquic_crypto if name in GQUIC_VERSIONS else crypto_frame
        first = protect(padded(frame(0, ch[:900])), dcid=dcid, version=version)
        second = protect(padded(frame(900, ch[900:])), dcid=dcid, pn=1, version=version)
        out[name] = ([second, first], sni)  # CRYPTO data out of order
    msg = chlo("q050.example.com", b"Q050")
    out["q050"] = (
        [protect(padded(gquic_crypto(0, msg)), dcid=b"Q" * 8, version=Q050)],
        "q050.example.com",
    )
    msg = chlo("q050-split.example.com", b"Q050")
    dcid = b"\x50" * 8
    out["q050-split"] = (
        [
            protect(padded(gquic_crypto(200, msg[200:])), dcid=dcid, pn=1, version=Q050),
            protect(padded(gquic_crypto(0, msg[:200])), dcid=dcid, version=Q050),
        ],
        "q050-split.example.com",
    )
    for version in (b"Q043", b"Q046"):
        sni = f"{version.decode().lower()}.example.com"
        out[version.decode().lower()] = ([gquic_plain(version, b"\x43" * 8, sni)], sni)
    return out


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    frames = []
    for i, (_name, (dgs, _sni)) in enumerate(sorted(datagrams().items())):
        for dg in dgs:
            f = Ether() / IP(src="10.0.0.5", dst="10.0.9.9") / UDP(sport=50000 + i, dport=443) / dg
            f.time = T0 + len(frames) * 0.01
            frames.append(f)
    path = tmp_path_factory.mktemp("quic") / "versions.pcap"
    wrpcap(str(path), frames)
    return path


def test_every_version_is_named(capture):
    obs, diag, _ = parse_capture(capture)
    assert not diag.file_errors
    expected = {50000 + i: sni for i, (_n, (_d, sni)) in enumerate(sorted(datagrams().items()))}
    got = {o.client_port: (o.dest_host, o.host_source) for o in obs}
    assert got == {port: (sni, "sni") for port, sni in expected.items()}


def test_tshark_names_the_same(capture):
    _need(shutil.which("tshark") is not None, "tshark is not installed")
    out = subprocess.run(
        ["tshark", "-n", "-r", str(capture), "-T", "fields", "-e", "udp.srcport",
         "-e", "tls.handshake.extensions_server_name", "-e", "gquic.tag.sni"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    theirs: dict[int, str] = {}
    for line in out.splitlines():
        port, sni, gsni = line.split("\t")
        if sni or gsni:
            theirs[int(port)] = sni or gsni
    ours = {o.client_port: o.dest_host for o in parse_capture(capture)[0]}
    # tshark 4.0 decrypts all of them but does not put Google QUIC CRYPTO data split over
    # packets back together: it names all but T050, T051 and the split Q050
    assert len(theirs) >= 9, theirs
    assert {p: ours.get(p) for p in theirs} == theirs


def test_chlo_bounds():
    msg = chlo("api.openai.com")
    assert (
        chlo_length(msg) == len(msg) and chlo_length(msg[:6]) == 0 and chlo_length(b"GET /") == -1
    )
    assert parse_chlo(msg).sni == "api.openai.com"
    assert parse_chlo(msg[:-1]) is None  # a value cut short
    bad = bytearray(msg)
    bad[12:16] = struct.pack("<I", 10_000)  # an end offset past the message
    assert parse_chlo(bytes(bad)) is None
    t = QuicInitialTracker()
    assert t.feed(gquic_plain(b"Q043", b"\x01" * 8, "x.example")[:60], 1) is None  # cut: no CHLO
    assert t.feed(gquic_plain(b"Q043", b"\x01" * 8, "x.example"), 2).sni == "x.example"
    assert t.feed(gquic_plain(b"Q043", b"\x01" * 8, "x.example"), 2) is None  # once per flow
    assert t.errors == 0
