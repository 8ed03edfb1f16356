"""TLS ClientHello parser: real OpenSSL hellos cross-checked with scapy, record/segment
splits at every offset, ECH, IP literals, real captures from Zeek and JA4, fuzz, speed."""

from __future__ import annotations

import ipaddress
import json
import logging
import ssl
import struct
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.collectors import tls
from monitor.collectors.socks import socks_request
from monitor.collectors.tls import (
    ClientHelloInfo,
    client_hello_from_records,
    is_grease,
    parse_client_hello,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
PCAP = SHARED / "conformance" / "pcap"


# --- real ClientHellos from Python's ssl (OpenSSL) ----------------------------------------


def openssl_hello(
    server_hostname: str | None = "api.openai.com",
    *,
    tls12_only: bool = False,
    alpn: list[str] | None = None,
) -> bytes:
    """The client's first flight (TLS records) as OpenSSL writes it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if tls12_only:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    out = outgoing.read()
    assert out[0] == 0x16 and out[5] == 1
    return out


def split_records(stream: bytes) -> list[tuple[int, bytes]]:
    """(record version, fragment) of each record."""
    out, p = [], 0
    while p < len(stream):
        rlen = struct.unpack_from(">H", stream, p + 3)[0]
        out.append((struct.unpack_from(">H", stream, p + 1)[0], stream[p + 5 : p + 5 + rlen]))
        p += 5 + rlen
    return out


def handshake_of(stream: bytes) -> bytes:
    return b"".join(frag for _, frag in split_records(stream))


def as_records(handshake: bytes, size: int, version: int = 0x0301) -> bytes:
    """Re-fragment a handshake message into records of ``size`` bytes."""
    return b"".join(
        struct.pack(">BHH", 0x16, version, len(handshake[i : i + size])) + handshake[i : i + size]
        for i in range(0, len(handshake), size)
    )


def extensions_of(hs: bytes) -> tuple[int, list[tuple[int, bytes]]]:
    """(offset of the extensions block, [(type, body)]) of a ClientHello message."""
    p = 39 + hs[38]
    p += 2 + struct.unpack_from(">H", hs, p)[0]
    p += 1 + hs[p]
    start = p
    end = p + 2 + struct.unpack_from(">H", hs, p)[0]
    p += 2
    exts = []
    while p < end:
        t, n = struct.unpack_from(">HH", hs, p)
        exts.append((t, hs[p + 4 : p + 4 + n]))
        p += 4 + n
    return start, exts


def with_extensions(hs: bytes, exts: list[tuple[int, bytes]]) -> bytes:
    """The same ClientHello with its extensions replaced (all lengths fixed up)."""
    start, _ = extensions_of(hs)
    block = b"".join(struct.pack(">HH", t, len(b)) + b for t, b in exts)
    body = hs[4:start] + struct.pack(">H", len(block)) + block
    return b"\x01" + len(body).to_bytes(3, "big") + body


def sni_ext(name: bytes) -> bytes:
    entry = b"\x00" + struct.pack(">H", len(name)) + name
    return struct.pack(">H", len(entry)) + entry


def scapy_view(handshake: bytes) -> dict:
    """What scapy's own TLS dissector reads from the same bytes."""
    scapy_all = pytest.importorskip("scapy.all")
    scapy_all.load_layer("tls")
    from scapy.layers.tls.handshake import TLSClientHello

    msg = TLSClientHello(handshake)
    view = {"legacy_version": msg.version, "sni": None, "versions": (), "alpn": (), "types": []}
    for ext in msg.ext or []:
        view["types"].append(ext.type)
        name = type(ext).__name__
        if name == "TLS_Ext_ServerName" and view["sni"] is None and ext.servernames:
            view["sni"] = ext.servernames[0].servername
        elif name == "TLS_Ext_SupportedVersion_CH":
            view["versions"] = tuple(v for v in ext.versions if not is_grease(v))
        elif name == "TLS_Ext_ALPN":
            view["alpn"] = tuple(p.protocol for p in ext.protocols)
    return view


def assert_matches_scapy(info: ClientHelloInfo, handshake: bytes) -> None:
    view = scapy_view(handshake)
    assert info.legacy_version == view["legacy_version"]
    if view["sni"] is None:
        assert info.sni is None
    else:
        raw = view["sni"].decode("latin-1")
        assert info.sni in (raw, raw.lower().removesuffix("."))
    assert info.versions == view["versions"]
    assert info.alpn == tuple(p.decode("latin-1") for p in view["alpn"])
    assert info.ech == (0xFE0D in view["types"])


HELLO_CASES = {
    "tls13": dict(),
    "tls13-alpn": dict(alpn=["h2", "http/1.1"]),
    "tls12-only": dict(tls12_only=True),
    "tls12-only-alpn": dict(tls12_only=True, alpn=["http/1.1"]),
    "tls13-no-sni": dict(server_hostname=None),
    "tls12-no-sni": dict(server_hostname=None, tls12_only=True),
}


@pytest.mark.parametrize("case", HELLO_CASES)
def test_openssl_hellos_match_scapy(case):
    kwargs = HELLO_CASES[case]
    stream = openssl_hello(**kwargs)
    hs = handshake_of(stream)
    info, need = client_hello_from_records(stream)
    assert need == 0 and info is not None
    assert info == parse_client_hello(hs)
    assert_matches_scapy(info, hs)
    # and what we know independently of scapy
    assert info.legacy_version == 0x0303
    assert info.sni == ("api.openai.com" if kwargs.get("server_hostname", 1) else None)
    assert info.versions == (() if kwargs.get("tls12_only") else (0x0304, 0x0303))
    assert info.alpn == tuple(kwargs.get("alpn") or ())
    assert not info.ech


@pytest.mark.parametrize("case", ["tls13-alpn", "tls12-only"])
def test_every_truncation_asks_for_more(case):
    stream = openssl_hello(**HELLO_CASES[case])
    assert len(split_records(stream)) == 1
    for cut in range(len(stream)):
        info, need = client_hello_from_records(stream[:cut])
        assert info is None
        assert 0 < need <= len(stream) - cut, cut
        if cut >= 9:  # record and handshake headers seen: the count is exact
            assert need == len(stream) - cut


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 64, 200, 511, 16384])
def test_records_of_any_size_and_every_segment_split(size):
    hs = handshake_of(openssl_hello(alpn=["h2"]))
    stream = as_records(hs, size)
    expected = parse_client_hello(hs)
    assert client_hello_from_records(stream) == (expected, 0)
    step = 1 if size >= 64 else 7  # tiny records make long streams: sample the cuts
    for cut in range(0, len(stream), step):
        info, need = client_hello_from_records(stream[:cut])
        assert info is None and 0 < need <= len(stream) - cut, (size, cut)
    # bytes after the ClientHello (the next records, TCP data) do not matter
    assert client_hello_from_records(stream + b"\x17\x03\x03\x00\x05hello") == (expected, 0)


def test_ip_literal_sni_kept_as_given():
    hs = handshake_of(openssl_hello())
    _, exts = extensions_of(hs)
    for literal in ("104.236.167.107", "2001:DB8::1", "fe80::1%eth0"):
        edited = with_extensions(hs, [(0, sni_ext(literal.encode()))] + exts[1:])
        info = parse_client_hello(edited)
        assert info.sni == literal
        ipaddress.ip_address(literal)
        assert_matches_scapy(info, edited)
        assert client_hello_from_records(as_records(edited, 100))[0] == info


@pytest.mark.parametrize(
    "raw,expected",
    [
        (b"API.OpenAI.com.", "api.openai.com"),
        (b"xn--mnchen-3ya.de", "xn--mnchen-3ya.de"),
        (b"M\xc3\xbcnchen.de", "m\xe3\xbcnchen.de"),  # raw UTF-8: bytes kept (latin-1)
        (b"server4:443", "server4:443"),
        (b"a\x00b.com", None),
        (b"evil.com\r\nx", None),
        (b"del\x7f.com", None),
        (b".", None),
        (b"", None),
    ],
)
def test_sni_normalisation(raw, expected):
    hs = handshake_of(openssl_hello(alpn=["h2"]))
    _, exts = extensions_of(hs)
    info = parse_client_hello(with_extensions(hs, [(0, sni_ext(raw))] + exts[1:]))
    assert info is not None  # a bad name drops the name, not the rest
    assert info.sni == expected
    assert info.alpn == ("h2",) and info.versions == (0x0304, 0x0303)


def test_first_host_name_wins_and_other_name_types_are_skipped():
    hs = handshake_of(openssl_hello())
    _, exts = extensions_of(hs)
    entries = b"\x05\x00\x03abc" + b"\x00\x00\x05a.com" + b"\x00\x00\x05b.com"
    body = struct.pack(">H", len(entries)) + entries
    assert parse_client_hello(with_extensions(hs, [(0, body)] + exts[1:])).sni == "a.com"


def test_ech_extension_gives_outer_sni():
    hs = handshake_of(openssl_hello(server_hostname="cloudflare-ech.com", alpn=["h2"]))
    _, exts = extensions_of(hs)
    # ECHClientHello(outer): type 0, HPKE suite, config id, enc, payload
    ech = (
        b"\x00" + b"\x00\x01\x00\x01" + b"\x2a" + b"\x00\x20" + bytes(32) + b"\x00\x90" + bytes(144)
    )
    edited = with_extensions(hs, exts[:-1] + [(0xFE0D, ech)] + exts[-1:])
    info = parse_client_hello(edited)
    assert info.ech and info.sni == "cloudflare-ech.com"
    assert_matches_scapy(info, edited)
    stream = as_records(edited, 300)
    assert client_hello_from_records(stream) == (info, 0)
    assert not parse_client_hello(hs).ech


def test_grease_versions_removed_and_is_grease():
    hs = handshake_of(openssl_hello())
    _, exts = extensions_of(hs)
    sv = bytes((6,)) + b"\x7a\x7a\x03\x04\x03\x03"
    info = parse_client_hello(with_extensions(hs, [(t, sv if t == 43 else b) for t, b in exts]))
    assert info.versions == (0x0304, 0x0303)
    assert [v for v in range(0x10000) if is_grease(v)] == [0x0A0A + 0x1010 * i for i in range(16)]


def test_not_tls_or_not_a_client_hello():
    hello = openssl_hello()
    assert client_hello_from_records(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == (None, -1)
    assert client_hello_from_records(b"SSH-2.0-OpenSSH_9.6\r\n") == (None, -1)
    assert client_hello_from_records(b"\x80\x2e\x01\x00\x02") == (None, -1)  # SSLv2 hello
    assert client_hello_from_records(b"\x16\xfe\xfd" + hello[3:]) == (None, -1)  # DTLS
    assert client_hello_from_records(b"\x17" + hello[1:]) == (None, -1)  # application data
    server_hello = hello[:5] + b"\x02" + hello[6:]
    assert client_hello_from_records(server_hello) == (None, -1)
    assert client_hello_from_records(server_hello[:6]) == (None, -1)  # decided on one byte
    assert client_hello_from_records(b"\x16\x03\x01\x00\x00" + hello) == (None, -1)  # empty rec
    assert client_hello_from_records(b"") == (None, 9)
    assert client_hello_from_records(b"\x16") == (None, 8)
    assert parse_client_hello(b"") is None
    assert parse_client_hello(handshake_of(server_hello)) is None
    assert parse_client_hello("not bytes") is None  # type: ignore[arg-type]
    assert client_hello_from_records(None) == (None, -1)  # type: ignore[arg-type]


def test_oversized_client_hello_is_ignored():
    huge = b"\x01" + (70000).to_bytes(3, "big")
    assert client_hello_from_records(b"\x16\x03\x01\x40\x00" + huge + bytes(100)) == (None, -1)
    assert parse_client_hello(huge + bytes(70000)) is None
    # within the bound, a long ClientHello (padding extension) spanning 4 records is fine
    hs = handshake_of(openssl_hello())
    _, exts = extensions_of(hs)
    big = with_extensions(hs, exts + [(0x0015, bytes(60000))])
    info, need = client_hello_from_records(as_records(big, 16384))
    assert need == 0 and info.sni == "api.openai.com"


def test_malformed_lengths_give_none():
    hs = handshake_of(openssl_hello())
    start, exts = extensions_of(hs)
    assert parse_client_hello(hs[:-1]) is None  # message shorter than announced
    bad = bytearray(hs)
    bad[start + 1] += 1  # extensions block longer than the message
    assert parse_client_hello(bytes(bad)) is None
    assert with_extensions(hs, exts) == hs  # the test helper rebuilds the same bytes
    stray = with_extensions(hs, exts)
    stray = stray[:start] + struct.pack(">H", len(stray) - start - 2 + 2) + stray[start + 2 :]
    stray = b"\x01" + (len(stray) - 4 + 2).to_bytes(3, "big") + stray[4:] + b"\x00\x15"
    assert parse_client_hello(stray) is None  # 2 stray bytes at the end of the block
    # bytes after the message are ignored
    assert parse_client_hello(hs + b"\x00" * 10) == parse_client_hello(hs)
    # a hello with no extensions at all (SSLv3 style)
    bare = hs[4:start]
    msg = b"\x01" + len(bare).to_bytes(3, "big") + bare
    # JA4: TLS 1.2, no SNI (i), 18 suites, no extensions, no ALPN (00), empty extension hash
    assert parse_client_hello(msg) == ClientHelloInfo(
        None, False, 0x0303, (), (), "t12i180000_85036bcba153_000000000000"
    )


# --- real captures: Zeek and JA4 TLS-over-TCP pcaps -----------------------------------------


def _tcp_client_streams(path: Path) -> dict[tuple, bytes]:
    """Per direction of each TCP connection, the payload bytes from the start (in sequence
    order, up to the first gap). A test-only reassembler: no retransmission checks."""
    scapy_all = pytest.importorskip("scapy.all")
    logging.getLogger("scapy").setLevel(logging.ERROR)
    flows: dict[tuple, dict] = {}
    for pkt in scapy_all.rdpcap(str(path)):
        if scapy_all.IP not in pkt and scapy_all.IPv6 not in pkt and scapy_all.Raw in pkt:
            raw = bytes(pkt[scapy_all.Raw])  # DLT_NULL with a family scapy doesn't know
            if raw[:1] and raw[0] >> 4 == 6:
                pkt = scapy_all.IPv6(raw)
            elif raw[:1] and raw[0] >> 4 == 4:
                pkt = scapy_all.IP(raw)
        if scapy_all.TCP not in pkt:
            continue
        ip = pkt[scapy_all.IP] if scapy_all.IP in pkt else pkt[scapy_all.IPv6]
        tcp = pkt[scapy_all.TCP]
        key = (ip.src, tcp.sport, ip.dst, tcp.dport)
        data = bytes(tcp.payload)
        flow = flows.setdefault(key, {"isn": None, "segs": {}})
        if tcp.flags & 0x02:
            flow["isn"] = tcp.seq + 1
            continue
        if not data:
            continue
        if flow["isn"] is None:
            flow["isn"] = tcp.seq
        flow["segs"].setdefault((tcp.seq - flow["isn"]) % (1 << 32), data)
    out = {}
    for key, flow in flows.items():
        buf = bytearray()
        for off in sorted(flow["segs"]):
            if off > len(buf):
                break
            buf += flow["segs"][off][len(buf) - off :]
        if buf:
            out[key] = bytes(buf)
    return out


def _names(path: Path) -> list[tuple[int, str | None]]:
    """(client port, sni) of every stream that holds a complete ClientHello."""
    found = []
    for key, stream in _tcp_client_streams(path).items():
        socks = socks_request(bytearray(stream)) if stream[:1] in (b"\x04", b"\x05") else False
        if socks:  # a SOCKS 4/5 CONNECT first: TLS follows it, as the flow table reads it
            stream = stream[socks[1] :]
        info, need = client_hello_from_records(stream)
        assert need >= -1
        if info is not None:
            found.append((key[1], info.sni))
    return found


def _zeek_tls_cases():
    path = PCAP / "zeek" / "expected_sni.json"
    if not path.is_file():
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=f"{path} is absent"))]
    expected = json.loads(path.read_text())
    return [pytest.param(n, v, id=n) for n, v in expected.items() if n.startswith("tls/")]


@pytest.mark.parametrize("name,expected", _zeek_tls_cases())
def test_zeek_tls_captures(name, expected):
    if not PCAP.is_dir():
        pytest.skip(f"conformance data not found at {PCAP}")
    found = _names(PCAP / "zeek" / name)
    assert sorted({sni for _, sni in found if sni}) == expected
    if "dtls" not in name and "stun" not in name:
        assert found, "a TCP ClientHello was expected in every non-DTLS capture"


def _ja4_tcp_cases():
    path = PCAP / "ja4" / "expected_sni.json"
    if not path.is_file():
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=f"{path} is absent"))]
    cases = []
    for name, entry in json.loads(path.read_text())["files"].items():
        streams = [s for s in entry["rust_streams"] if s["transport"] == "tcp"]
        cases.append(pytest.param(name, streams, id=name))
    return cases


@pytest.mark.parametrize("name,streams", _ja4_tcp_cases())
def test_ja4_tcp_captures(name, streams):
    if not PCAP.is_dir():
        pytest.skip(f"conformance data not found at {PCAP}")
    found = _names(PCAP / "ja4" / name)
    expected = sorted(
        (s["src_port"], s["tls_server_name"]) for s in streams if s["tls_server_name"]
    )
    assert sorted((p, n) for p, n in found if n) == expected


# --- fuzz -------------------------------------------------------------------------------------

_FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_BASE_STREAM: bytes | None = None


def _base() -> bytes:
    global _BASE_STREAM
    if _BASE_STREAM is None:
        _BASE_STREAM = as_records(handshake_of(openssl_hello(alpn=["h2", "http/1.1"])), 180)
    return _BASE_STREAM


def check_hello(info: ClientHelloInfo | None) -> None:
    """What any parse result must be, however damaged its input: nothing, or a ClientHello
    summary as documented (a 16-bit version, GREASE removed, a normalised server name)."""
    if info is None:
        return
    assert isinstance(info, ClientHelloInfo) and 0 <= info.legacy_version <= 0xFFFF
    assert not any(is_grease(v) for v in info.versions)
    assert all(isinstance(a, str) for a in info.alpn)
    assert info.sni is None or (info.sni and not info.sni.endswith("."))


def _check_result(result):
    info, need = result
    if info is not None:
        assert need == 0
        check_hello(info)
    else:
        assert need == -1 or need > 0


@_FUZZ
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data):
    # the private functions have no catch-all: they must not raise by construction
    check_hello(tls._parse(data))
    _check_result(tls._from_records(data, len(data)))
    _check_result(client_hello_from_records(b"\x16\x03\x01" + data))
    check_hello(parse_client_hello(b"\x01" + data))


@_FUZZ
@given(
    st.lists(st.tuples(st.integers(0, 2000), st.integers(1, 255)), min_size=1, max_size=6),
    st.integers(0, 2000),
)
def test_fuzz_mutated_real_hello(flips, cut):
    stream = bytearray(_base())
    for pos, x in flips:
        stream[pos % len(stream)] ^= x
    stream = bytes(stream)
    _check_result(tls._from_records(stream, len(stream)))
    hs = handshake_of(_base())
    mutated = bytearray(hs)
    for pos, x in flips:
        mutated[pos % len(mutated)] ^= x
    check_hello(tls._parse(bytes(mutated)))


@_FUZZ
@given(st.integers(0, 10_000))
def test_fuzz_truncations_need_more(cut):
    stream = _base()
    cut %= len(stream)
    info, need = client_hello_from_records(stream[:cut])
    assert info is None and 0 < need <= len(stream) - cut


# --- speed (measured and printed, not asserted) -----------------------------------------------


def test_speed_report(capsys):
    stream = openssl_hello(alpn=["h2", "http/1.1"])
    hs = handshake_of(stream)
    split = as_records(hs, 100)
    n = 20000
    results = {}
    for label, fn, arg in (
        ("parse_client_hello", parse_client_hello, hs),
        ("client_hello_from_records (1 record)", client_hello_from_records, stream),
        ("client_hello_from_records (6 records)", client_hello_from_records, split),
    ):
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(n):
                fn(arg)
            best = min(best, time.perf_counter() - t)
        results[label] = best / n * 1e6
        assert fn(arg) is not None, label  # what was timed is a parse that succeeds
    assert all(0 < us < 10_000 for us in results.values()), results  # measured, and sane
    with capsys.disabled():
        for label, us in results.items():
            print(f"\n  tls speed: {label}: {us:.2f} us per {len(hs)}-byte ClientHello", end="")
        print()
