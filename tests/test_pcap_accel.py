"""The C accelerator of the capture hot loop (``monitor/collectors/_pcapscan.c``) against
the pure-Python loop of ``FlowTable.scan`` it speeds up: the same observations bit for bit
(timestamps included), the same counters and the same diagnostics, on generated,
hand-made, real and damaged captures.

Each capture is parsed twice, with the accelerator and with ``APIWATCH_PURE_PYTHON=1``.
Skipped when the accelerator is not built (no C compiler); in CI (env ``CI``) it must be,
unless the run is a pure-Python one (``APIWATCH_PURE_PYTHON`` set, as in
``test_squid_accel.py``). When it is built these tests switch the variable themselves.
"""

from __future__ import annotations

import importlib
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from monitor import accel
from monitor.cli import main
from monitor.collectors import open_input
from monitor.collectors.base import Diagnostics
from monitor.collectors.flows import MAX_FRAME, SCAN_VERSION, FlowTable
from monitor.collectors.layers import MAX_DEPTH, MAX_LABELS
from monitor.collectors.pcap import PcapCollector
from tests import pcaps
from tests.pcaps import T0, client_hello, dns_response, http_request, http_response

ROOT = Path(__file__).resolve().parents[1]
CONFORMANCE = pcaps.CONFORMANCE / "pcap"
MODULE = "monitor.collectors._pcapscan"


def _built():
    try:
        return importlib.import_module(MODULE)
    except ImportError:
        return None


CSCAN = _built()


@pytest.fixture(autouse=True)
def _need_accelerator():
    if CSCAN is None:
        if os.environ.get("CI") and not os.environ.get(accel.PURE_ENV):
            pytest.fail(f"{MODULE} is not built (pip install -e . with a C compiler)")
        pytest.skip(f"{MODULE} not built")
    if getattr(CSCAN, "SCAN_VERSION", None) != SCAN_VERSION:  # FlowTable would not use it
        if os.environ.get("CI") and not os.environ.get(accel.PURE_ENV):
            pytest.fail(f"{MODULE} was built from another version of _pcapscan.c")
        pytest.skip(f"{MODULE} was built from another _pcapscan.c: rebuild it (pip install -e .)")


def parse(path: Path, catalog, pure: bool, mp: pytest.MonkeyPatch) -> tuple:
    """Everything a parse says: observations (repr: floats exact), counters, diagnostics."""
    if pure:
        mp.setenv(accel.PURE_ENV, "1")
    else:
        mp.delenv(accel.PURE_ENV, raising=False)
    diag = Diagnostics()
    col = PcapCollector(catalog)
    opened = open_input(str(path))
    try:
        obs = [repr(o) for o in col.parse(opened.stream, path.name, diag)]
    finally:
        opened.close()
    problems = [repr(p) for p in diag.file_errors + diag.notices + diag.problems]
    return obs, col.last_stats, (diag.records, diag.skipped, diag.malformed), problems


def same_and_python_calls(path: Path, catalog, mp: pytest.MonkeyPatch) -> tuple[tuple, int]:
    """:func:`assert_same`'s parse, and how many frames the accelerated parse handed to
    Python (its fast path, FlowTable._counted, or the general one, FlowTable.packet) after
    the C loop stopped at them."""
    fast = assert_same(path, catalog, mp)
    calls = []
    counted, packet = FlowTable._counted, FlowTable.packet

    def python_counted(self, *a):
        done = counted(self, *a)
        calls.append(done)  # (when not done, FlowTable.packet reads it)
        return done

    mp.setattr(FlowTable, "_counted", lambda self, *a: python_counted(self, *a))
    mp.setattr(FlowTable, "packet", lambda self, *a: calls.append(True) or packet(self, *a))
    parse(path, catalog, False, mp)
    return fast, sum(calls)


def assert_same(path: Path, catalog, mp: pytest.MonkeyPatch) -> tuple:
    fast = parse(path, catalog, False, mp)
    pure = parse(path, catalog, True, mp)
    assert fast[1] == pure[1]  # counters first: the clearest message
    assert fast[2:] == pure[2:]
    assert fast[0] == pure[0]
    return fast


def cli_json(path: Path, pure: bool) -> tuple[int, str]:
    env = {accel.PURE_ENV: "1" if pure else None}
    r = CliRunner().invoke(main, ["parse", str(path), "--json"], env=env)
    return r.exit_code, r.output


# ----------------------------------------------------------------------------- captures

ETH = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01"


def _ip4(src, dst, proto, l4, *, ihl=5, frag=0x4000, tot=None) -> bytes:
    opts = l4[:4] * (ihl - 5)  # options that look like the ports, as a trap
    n = 20 + len(opts) + len(l4) if tot is None else tot
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, n, 7, frag, 64, proto, 0, src, dst)
    return ETH + b"\x08\x00" + hdr + opts + l4


def _ip6(src, dst, nh, l4, *, pl=None) -> bytes:
    n = len(l4) if pl is None else pl
    return ETH + b"\x86\xdd" + struct.pack("!IHBB16s16s", 0x60000000, n, nh, 64, src, dst) + l4


def _tcp(sp, dp, seq, flags, payload=b"", doff=5) -> bytes:
    hdr = struct.pack("!HHIIBBHHH", sp, dp, seq & 0xFFFFFFFF, 1, doff << 4, flags, 65535, 0, 0)
    return hdr + b"\x01" * max(4 * (doff - 5), 0) + payload


def _udp(sp, dp, payload=b"", ln=None) -> bytes:
    return struct.pack("!HHHH", sp, dp, 8 + len(payload) if ln is None else ln, 0) + payload


class _Conn:
    def __init__(self, rnd: random.Random, i: int):
        self.v6 = rnd.random() < 0.3
        self.udp = rnd.random() < 0.25
        n = 16 if self.v6 else 4
        self.c = bytes([0xFD if self.v6 else 10, 0, i >> 8 & 0xFF, i & 0xFF]) + bytes(n - 4)
        self.s = bytes([0x2A if self.v6 else 93, 4, 0, i % 7]) + bytes(n - 4)
        self.cp, self.sp = 40000 + i, rnd.choice([443, 80, 8443, 3478, 5000 + i])
        self.seq = [rnd.getrandbits(32), rnd.getrandbits(32)]
        self.started = False


def mixed_frames(seed: int, count: int = 3000, t0: int = int(T0 * 1e6)) -> list:
    """(time in microseconds, frame, captured length): TCP and UDP flows over IPv4 and IPv6,
    mostly packets the fast path only counts, and among them everything it must not count
    (handshakes, FIN/RST, new flows, IP options and fragments, VLAN tags, extension
    headers, odd lengths, short frames, DNS, timers due, idle expiry). ``t0``: the first
    time (a small one shows the rounding of the fraction's product)."""
    rnd = random.Random(seed)
    conns = [_Conn(rnd, i) for i in range(40)]
    t = t0
    out: list[tuple[int, bytes, int]] = []
    payload = bytes(rnd.getrandbits(8) for _ in range(1500))
    while len(out) < count:
        r = rnd.random()
        t += 200_000_000 if r < 0.0007 else 1_500_000 if r < 0.01 else rnd.choice([1, 7, 30, 250])
        c = rnd.choice(conns)
        out_dir = rnd.random() < 0.5
        src, dst = (c.c, c.s) if out_dir else (c.s, c.c)
        sp, dp = (c.cp, c.sp) if out_dir else (c.sp, c.cp)
        ip = _ip6 if c.v6 else _ip4
        n = rnd.choice([0, 0, 1, 100, 1448])
        data = payload[:n]
        if not c.started:  # a first packet that makes the flow (watched or not)
            c.started = True
            kind = rnd.random()
            if c.udp:
                first = b"\xc3\x00\x00\x00\x01\x08" + bytes(60) if kind < 0.2 else data or b"x"
                l4 = _udp(c.cp, c.sp, first)
            elif kind < 0.5:
                l4 = _tcp(c.cp, c.sp, c.seq[0], 0x18, client_hello(f"h{rnd.random():.3f}.ai"))
            elif kind < 0.7:
                l4 = _tcp(c.cp, c.sp, c.seq[0], 0x18, b"GET / HTTP/1.1\r\nHost: x.ai\r\n\r\n")
            elif kind < 0.8:
                l4 = _tcp(c.cp, c.sp, c.seq[0], 0x02)
            else:
                l4 = _tcp(c.cp, c.sp, c.seq[0], 0x18, payload[:300])
            fr = ip(c.c, c.s, 17 if c.udp else 6, l4)
            out.append((t, fr, len(fr)))
            continue
        odd = rnd.random()
        flags = 0x10 if rnd.random() < 0.7 else 0x18
        if odd < 0.03:
            flags = rnd.choice([0x01, 0x04, 0x02, 0x12, 0x11, 0x14, 0x30, 0xD0, rnd.getrandbits(8)])
        if c.udp:
            l4 = _udp(sp, dp, data, ln=rnd.choice([3, 7, 8]) if odd < 0.02 else None)
        else:
            doff = rnd.choice([4, 8, 15]) if 0.03 <= odd < 0.05 else 5
            l4 = _tcp(sp, dp, c.seq[out_dir], flags, data, doff)
            c.seq[out_dir] += n
        proto = 17 if c.udp else 6
        if 0.05 <= odd < 0.06:
            fr = ip(src, dst, proto, l4) if c.v6 else _ip4(src, dst, proto, l4, ihl=6)
        elif 0.06 <= odd < 0.07:
            fr = ip(src, dst, 0, l4) if c.v6 else _ip4(src, dst, proto, l4, frag=0x2000)
        elif 0.07 <= odd < 0.08:
            fr = ip(src, dst, proto, l4)
            fr = fr[:12] + b"\x81\x00\x00\x05" + fr[12:]  # a VLAN tag
        elif 0.08 <= odd < 0.09:
            short = rnd.choice([0, 3, 7, 8, 19, 20, 27, 28, 30])
            if c.v6:
                fr = _ip6(src, dst, proto, l4, pl=short)
            else:
                fr = _ip4(src, dst, proto, l4, tot=short + 20)
        elif 0.09 <= odd < 0.095:
            fr = ETH + b"\x08\x06" + bytes(28)  # ARP
        elif 0.095 <= odd < 0.1:
            msg = dns_response("api.openai.com", [("api.openai.com", "A", "93.4.0.1")])
            fr = _ip4(b"\x0a\x00\x00\x35", c.c[:4], 17, _udp(53, 5353, msg))
        else:
            fr = ip(src, dst, proto, l4)
        snap = len(fr)
        if 0.1 <= odd < 0.12:
            snap = rnd.choice([20, 53, 54, 60, 73, 74, 80])
        out.append((t, fr, min(snap, len(fr))))
    return out


def write_pcap(
    path: Path, frames, *, endian: str = "<", nano: bool = False, linktype: int = 1
) -> Path:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    chunks = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 262144, linktype)]
    for us, fr, incl in frames:
        sec, frac = divmod(us, 1_000_000)
        if nano:
            frac = frac * 1000 + us % 997  # odd nanoseconds: inexact products
        chunks.append(struct.pack(endian + "IIII", sec, frac, incl, len(fr)) + fr[:incl])
    path.write_bytes(b"".join(chunks))
    return path


#: pcapng interfaces: (link type, if_tsresol or None, if_tsoffset or None); frames of the
#: raw IP interface (101) are the Ethernet frames without their Ethernet header
IFACES = [(1, None, None), (1, 9, 3), (1, 0x80 | 30, -7), (101, None, None)]


def write_pcapng(path: Path, frames, *, endian: str = "<", swap_at: int | None = None) -> Path:
    """Packets spread over IFACES, with other blocks (Simple Packet, Name Resolution, an
    EPB of an undeclared interface) among them; from frame ``swap_at`` on, a second
    section in the other byte order."""
    rnd = random.Random(len(frames))
    out: list[bytes] = []
    e = endian

    def block(btype: int, body: bytes) -> None:
        body += b"\x00" * (-len(body) % 4)
        out.append(struct.pack(e + "II", btype, len(body) + 12) + body)
        out.append(struct.pack(e + "I", len(body) + 12))

    def section() -> None:
        block(0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))
        for lt, res, off in IFACES:
            opts = b""
            if res is not None:
                opts += struct.pack(e + "HHB3x", 9, 1, res)
            if off is not None:
                opts += struct.pack(e + "HHq", 14, 8, off)
            block(1, struct.pack(e + "HHI", lt, 0, 262144) + opts + struct.pack(e + "HH", 0, 0))

    section()
    for k, (us, fr, incl) in enumerate(frames):
        if k == swap_at:
            e = ">" if endian == "<" else "<"
            section()
        iface = rnd.choice([0, 0, 0, 0, 1, 1, 2, 3])
        lt, res, off = IFACES[iface]
        secs = us / 1e6 - (off or 0)
        ticks = round(secs * (2 ** (res & 0x7F) if res and res & 0x80 else 10 ** (res or 6)))
        if lt == 101:
            fr, incl = fr[14:], max(incl - 14, 0)
        r = rnd.random()
        if r < 0.01:
            block(3, struct.pack(e + "I", len(fr)) + fr[:incl])
            continue
        if r < 0.015:
            block(4, struct.pack(e + "HH", 0, 0))
        if r < 0.02:
            iface = 9  # undeclared
        body = struct.pack(e + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, incl, len(fr))
        if r > 0.99:
            block(0xBAD, body + fr[:incl])  # a custom block that looks like an EPB: skipped
            continue
        block(6, body + fr[:incl])
    path.write_bytes(b"".join(out))
    return path


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, Path]:
    """benchmarks/gen_pcap.py captures (20,000 packets), pcap and pcapng."""
    d = tmp_path_factory.mktemp("gen")
    out = {}
    for fmt in ("pcap", "pcapng"):
        path = d / f"g.{fmt}"
        subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "gen_pcap.py"), "--packets", "20000"]
            + ["--format", fmt, "-o", str(path), "-q", "--no-truth"],
            check=True,
        )
        out[fmt] = path
    return out


# ----------------------------------------------------------------------------- tests


def test_max_frame_agrees():
    assert CSCAN.MAX_FRAME == MAX_FRAME


def test_decoder_bounds_agree():
    assert (CSCAN.MAX_DEPTH, CSCAN.MAX_LABELS) == (MAX_DEPTH, MAX_LABELS)


def test_a_module_built_from_another_source_is_not_used(monkeypatch):
    """A stale build (another SCAN_VERSION, or none) leaves the Python loop in charge."""
    monkeypatch.delenv(accel.PURE_ENV, raising=False)
    assert FlowTable("s")._cscan is CSCAN
    for version in (None, SCAN_VERSION - 1):
        stale = type(sys)("stale")
        if version is not None:
            stale.SCAN_VERSION = version
        monkeypatch.setattr(accel, "load", lambda name, m=stale: m)
        assert FlowTable("s")._cscan is None


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_generated_capture_parse_json_is_identical(generated, catalog, fmt, monkeypatch):
    path = generated[fmt]
    code, out = cli_json(path, pure=False)
    assert code == 0 and out.count("\n") > 100
    assert (code, out) == cli_json(path, pure=True)
    obs, stats, counts, problems = assert_same(path, catalog, monkeypatch)
    assert len(obs) > 100 and counts[0] >= 20000 and not problems


@pytest.mark.parametrize("cut", ["header", "frame", "odd"])
def test_records_across_reads(generated, catalog, monkeypatch, cut):
    """Records cut by the end of a read (in their header, in their frame) are completed
    from the next one: the same parse, accelerated or not, as from one read of the file."""
    from monitor.collectors import pcap

    path = generated["pcap"]
    starts = _starts(path.read_bytes())
    record = next(p for p in starts if p > MAX_FRAME + 1000)  # (reads start at byte 24)
    chunk = {"header": record + 8, "frame": record + 16 + 30, "odd": 300_007}[cut] - 24
    monkeypatch.setattr(pcap, "CHUNK", path.stat().st_size)
    whole = parse(path, catalog, True, monkeypatch)
    assert whole[2][0] >= 20000
    monkeypatch.setattr(pcap, "CHUNK", chunk)
    assert parse(path, catalog, False, monkeypatch) == whole
    assert parse(path, catalog, True, monkeypatch) == whole


@pytest.mark.parametrize("variant", ["be", "ns", "be-ns"])
def test_generated_capture_byte_orders_and_resolutions(
    generated, catalog, variant, tmp_path, monkeypatch
):
    frames = pcaps._read_le_pcap(generated["pcap"].read_bytes())
    endian = ">" if "be" in variant else "<"
    path = pcaps.write_raw(tmp_path / "v.pcap", frames, 1, endian=endian, nano="ns" in variant)
    obs, _stats, counts, _ = assert_same(path, catalog, monkeypatch)
    assert len(obs) > 100 and counts[0] == len(frames)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize(
    "kind",
    ["pcap-le", "pcap-be-ns", "pcap-ns-early", "pcapng-le", "pcapng-be-swap", "pcapng-early"],
)
def test_mixed_traffic(catalog, tmp_path, monkeypatch, seed, kind):
    early = 5_000_000 if kind.startswith("pcapng") else 0  # (for if_tsoffset 3)
    frames = mixed_frames(seed, t0=early if "early" in kind else int(T0 * 1e6))
    path = tmp_path / "m.cap"
    if kind.startswith("pcapng"):
        write_pcapng(path, frames, endian=">" if "be" in kind else "<", swap_at=1500)
    else:
        write_pcap(path, frames, endian=">" if "be" in kind else "<", nano="ns" in kind)
    obs, stats, counts, _ = assert_same(path, catalog, monkeypatch)
    assert obs and stats["flows"] > 10 and counts[0] >= 2900


def test_the_accelerator_counts_runs_and_stops_where_python_must_look(monkeypatch):
    """Called by hand after the Python loop has made the flow: it counts the ACKs, data
    segments and FINs of a flow named by its ClientHello, closes it as FlowTable._tcp
    does, and stops at the SYN that reuses its 5-tuple."""
    s = pcaps.Tcp("10.1.2.3", "93.184.216.34", 50000, 443).handshake()
    s.send(True, client_hello("api.openai.com"))
    for _ in range(50):
        s.send(False, bytes(1400)).add([s.seg(True, "A")])
    s.close().add([s.seg(True, "S")])
    frames = [(round(float(p.time) * 1e6), bytes(p), len(p)) for p in pcaps.with_ether(s.packets)]
    buf = b"".join(
        struct.pack("<IIII", us // 1_000_000, us % 1_000_000, n, n) + fr for us, fr, n in frames
    )
    monkeypatch.setenv(accel.PURE_ENV, "1")
    ref = FlowTable("s")
    assert ref.scan(buf, 0, len(buf), 0, "<", 1e-6, 1) == (len(buf), len(frames))
    pos = sum(16 + n for _, _, n in frames[:4])  # handshake and ClientHello: Python

    def tables(t: FlowTable) -> tuple:
        return t.tcp, t.udp, t.closing, t.stats

    def started() -> FlowTable:
        t = FlowTable("s")
        assert t.scan(buf, 0, pos, 0, "<", 1e-6, 1) == (pos, 4)
        return t

    t = started()
    (f, _out), *_ = t.tcp.values()
    assert f.watch is False and f.sni == "api.openai.com"
    end, pktno, ts = CSCAN.scan(buf, pos, len(buf), 4, t.now, t.next_linger, 0, 1e-6, 1, None,
                                *tables(t))  # fmt: skip
    fin = len(frames) - 1
    assert pktno == fin and end == sum(16 + n for _, _, n in frames[:fin])

    def at(i: int) -> float:
        us = frames[i][0]
        return us // 1_000_000 + (us % 1_000_000) * 1e-6

    assert ts == at(fin - 1)
    assert (f.pk_out, f.pk_in, f.by_in, f.last) == (55, 52, 50 * 1400, ts)
    assert (f.fin_c, f.fin_s, f.closed, t.closing) == (True, True, at(fin - 2), {id(f): f})
    # the rest through the Python loop: the same flow as the pure run
    t.scan(buf, end, len(buf), pktno, "<", 1e-6, 1)
    t.finish()
    ref.finish()
    assert [repr(o) for o in t.ready] == [repr(o) for o in ref.ready]
    # nothing it does not expect: the arguments back, untouched
    t = started()
    same = (pos, 4, t.now)
    args = [buf, pos, len(buf), 4, t.now, t.next_linger, 0, 1e-6, 1, None, *tables(t)]
    assert CSCAN.scan(*args)[:2] == (end, fin)  # (a flow with its counters in t)
    t = started()
    args = [buf, pos, len(buf), 4, t.now, t.next_linger, 0, 1e-6, 1, None, *tables(t)]
    for at, value in [(0, bytearray(buf)), (0, buf[:-1]), (8, 147), (5, float("-inf"))]:
        assert CSCAN.scan(*args[:at], value, *args[at + 1 :]) == same
    assert CSCAN.scan(*args[:9], [], *args[10:]) == same  # pcapng, no interface
    big = bytearray(buf[: pos + 16 + 80] + bytes(MAX_FRAME - 80))
    big[pos + 8 : pos + 12] = struct.pack("<I", MAX_FRAME + 1)  # impossible: Python's to say
    assert CSCAN.scan(bytes(big), pos, len(big), *args[3:]) == same
    big[pos + 8 : pos + 12] = struct.pack("<I", MAX_FRAME)  # the longest possible: counted
    assert CSCAN.scan(bytes(big), pos, len(big), *args[3:])[:2] == (len(big), 5)
    assert t.tcp[bytes(big[pos + 16 + 26 : pos + 16 + 38])][0].pk_in == 2
    with pytest.raises(TypeError):
        CSCAN.scan(*args[:-1])


def _conformance() -> list:
    if not CONFORMANCE.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason="conformance data absent"))]
    paths = sorted(p for p in CONFORMANCE.rglob("*") if p.suffix in (".pcap", ".pcapng"))
    return [pytest.param(p, id=str(p.relative_to(CONFORMANCE))) for p in paths]


@pytest.mark.parametrize("path", _conformance())
def test_conformance_captures(catalog, monkeypatch, path):
    assert_same(path, catalog, monkeypatch)


def _starts(data: bytes) -> list[int]:
    """Offsets of the records (pcap) or blocks (pcapng, little-endian) of a capture."""
    ng = data[:4] == b"\x0a\x0d\x0d\x0a"
    pos, out = 0 if ng else 24, []
    while pos + 16 <= len(data):
        out.append(pos)
        n = struct.unpack_from("<I", data, pos + (4 if ng else 8))[0]
        pos += max(n, 12) if ng else 16 + n
    return out


def _damaged(data: bytes, starts: list[int], seed: int) -> bytes:
    """Bits flipped in record headers and in the link, IP and TCP/UDP headers after them."""
    rnd = random.Random(seed)
    b = bytearray(data)
    for _ in range(rnd.choice([1, 5, 40])):
        at = rnd.choice(starts) + rnd.randrange(0, 90)
        if at < len(b):
            b[at] ^= 1 << rnd.randrange(8) if rnd.random() < 0.8 else 0xFF
    return bytes(b)


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_damaged_captures(catalog, tmp_path, monkeypatch, fmt):
    frames = mixed_frames(7, 1500)
    src = tmp_path / f"m.{fmt}"
    if fmt == "pcap":
        write_pcap(src, frames)
    else:
        write_pcapng(src, frames, swap_at=700)
    data = src.read_bytes()
    starts = _starts(data)
    rnd = random.Random(fmt)
    bad = tmp_path / "bad.cap"
    errors = 0
    cuts = [rnd.randrange(24, len(data)) for _ in range(8)] + [len(data) - 1, 25, 40]
    cuts += [rnd.choice(starts) - k for k in (1, 2, 4, 5, 17)]  # in a record's (block's) end
    for cut in cuts:
        bad.write_bytes(data[:cut])
        errors += bool(assert_same(bad, catalog, monkeypatch)[3])
    for seed in range(16):
        bad.write_bytes(_damaged(data, starts, seed))
        errors += bool(assert_same(bad, catalog, monkeypatch)[3])
    assert errors  # the damage was seen


def test_damaged_generated_capture(generated, catalog, tmp_path, monkeypatch):
    data = generated["pcap"].read_bytes()[: 3 << 20]  # cut mid-record
    starts = _starts(data)
    bad = tmp_path / "g.pcap"
    for seed in range(4):
        bad.write_bytes(_damaged(data, starts, seed))
        assert_same(bad, catalog, monkeypatch)
    assert cli_json(bad, pure=False) == cli_json(bad, pure=True)


def test_http_states_agree():
    from monitor.collectors import http1

    assert (CSCAN.HTTP_HEAD, CSCAN.HTTP_BODY, CSCAN.HTTP_CHUNK_SIZE) == (
        http1.HEAD,
        http1.BODY,
        http1.CHUNK_SIZE,
    )
    assert (CSCAN.HTTP_CHUNK_DATA, CSCAN.HTTP_CLOSE) == (http1.CHUNK_DATA, http1.CLOSE)
    assert CSCAN.MAX_BODY_EXCERPT == http1.MAX_BODY_EXCERPT


def _http_connection(port: int, rnd: random.Random) -> list:
    """An HTTP/1.1 connection: pipelined requests; responses by length, chunked and to the
    close; ACKs; a body segment out of order, one repeated, one cut by the snap length."""
    s = pcaps.Tcp("10.1.2.3", "93.184.216.34", port, 80).handshake()
    s.send(
        True,
        http_request("GET", "/a", "api.mistral.ai") + http_request("GET", "/b", "api.mistral.ai"),
    )
    s.send(False, http_response(200, bytes(rnd.randrange(256) for _ in range(9000))))
    for _ in range(3):
        s.add([s.seg(True, "A")])
    body = b"".join(b"%x\r\n%s\r\n" % (n, bytes(n)) for n in (3000, 5000, 17)) + b"0\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    segs = s.segments(False, head + body, [700, 2100, 3500, 4900, 6300])
    s.add([segs[0], segs[2], segs[1], segs[1], *segs[3:]])  # out of order, repeated
    s.add([s.seg(True, "A")])
    s.send(True, http_request("GET", "/c", "api.mistral.ai", extra="Connection: close\r\n"))
    s.send(False, b"HTTP/1.0 200 OK\r\n\r\n" + bytes(6000))  # to the close
    s.add([s.seg(True, "A")])
    s.close()
    return s.packets


def test_http_bodies_and_acks_in_c_match_python(catalog, tmp_path, monkeypatch):
    """The C loop steps over in-order body segments and counts ACKs of HTTP flows, as
    FlowTable._http_skip and _http_count do; everything else stays Python's."""
    rnd = random.Random(5)
    pkts = [p for port in range(41000, 41006) for p in _http_connection(port, rnd)]
    frames = [(round(float(p.time) * 1e6), bytes(p), len(p)) for p in pcaps.with_ether(pkts)]
    frames.sort(key=lambda f: f[0])
    # one body segment captured short (snap length): Python's to read
    us, fr, _ = next(f for f in frames if len(f[1]) > 1000)
    frames[frames.index((us, fr, len(fr)))] = (us, fr, 200)
    cut = struct.unpack_from("!H", fr, 14 + 20 + 2)[0]  # its client port: parsing stops there
    path = write_pcap(tmp_path / "http.pcap", frames)
    _, calls = same_and_python_calls(path, catalog, monkeypatch)
    diag = Diagnostics()
    with open(path, "rb") as fh:
        obs = list(PcapCollector(catalog).parse(fh, "http", diag))
    assert [o.url for o in obs if o.client_port == 41000] == [
        "http://api.mistral.ai/a",
        "http://api.mistral.ai/b",
        "http://api.mistral.ai/c",
    ]
    assert len(obs) == 18
    assert all(o.status == 200 and o.packets_in and o.bytes_in for o in obs if o.client_port != cut)
    assert 0 < calls < len(frames) // 2  # the body segments and ACKs counted in C


def _tls_connection(port: int, v6: bool) -> list:
    """A TLS connection named by its ClientHello: bulk data, ACKs, then FIN/ACK."""
    client, server = ("fd00::7", "2a04:4e42::81") if v6 else ("10.1.2.3", "93.184.216.34")
    s = pcaps.Tcp(client, server, port, 443, v6=v6).handshake()
    s.send(True, client_hello("api.openai.com"))
    for _ in range(20):
        s.send(False, bytes(1400)).add([s.seg(True, "A")])
    return s.close().packets


@pytest.mark.parametrize("tags", [(), (5,), (100, 7), (1, 2, 3), (1, 2, 3, 4, 5)])
def test_vlan_tagged_flows_in_c_match_python(catalog, tmp_path, monkeypatch, tags):
    """Frames behind VLAN tags (802.1Q, QinQ, deeper stacks) of known flows, and their
    FINs, are counted in C as the Python loop counts them."""
    pkts = _tls_connection(42000, False) + _tls_connection(42001, True)
    frames = [(round(float(p.time) * 1e6), bytes(p), len(p)) for p in pcaps.with_ether(pkts, tags)]
    frames.sort(key=lambda f: f[0])
    path = write_pcap(tmp_path / "vlan.pcap", frames)
    (obs, stats, *_), calls = same_and_python_calls(path, catalog, monkeypatch)
    assert len(obs) == 2 and stats["packets"] == len(frames)
    assert 0 < calls <= 8  # the handshakes and ClientHellos only


def _damaged_copies(frames: list, seed: str, tmp_path: Path, linktype: int = 1) -> list[Path]:
    """Three copies of ``frames`` with bits flipped and frames cut short at random."""
    rnd = random.Random(seed)
    out = []
    for k in range(3):
        damaged = []
        for us, fr, n in frames:
            b = bytearray(fr)
            if rnd.random() < 0.3:
                b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
            cut = rnd.choice([n, n, n, rnd.randrange(min(14, n), n + 1)])
            damaged.append((us, bytes(b), cut))
        out.append(write_pcap(tmp_path / f"damaged{k}.pcap", damaged, linktype=linktype))
    return out


def _wrapped(wrap, pkts) -> list:
    frames = []
    for i, p in enumerate(pkts):
        fr = bytes(wrap(p, i))
        frames.append((round(float(p.time) * 1e6), fr, len(fr)))
    return frames


def _tunnel_variants() -> list[str]:
    from tests.test_tunnels import VARIANTS

    return sorted(VARIANTS)


@pytest.mark.parametrize("name", _tunnel_variants())
def test_tunnelled_flows_in_c_match_python(catalog, tmp_path, monkeypatch, name):
    """Frames of known flows in every encapsulation the decoder reads (IP in IP, GRE,
    ERSPAN, VXLAN, GENEVE, GTP-U, MPLS, PPPoE, nestings of them), written with scapy, are
    counted in C, and in ``tunnelled``, as the Python loop counts them: only the
    handshake and ClientHello go to Python. Copies cut short and bit-flipped agree too."""
    from tests.test_tunnels import VARIANTS

    wrap, kind, outer = VARIANTS[name]
    pkts = [p for p in _tls_connection(42000, False) if p.haslayer("IP")]
    frames = _wrapped(wrap, pkts)
    path = write_pcap(tmp_path / "tunnel.pcap", frames)
    (obs, stats, *_), calls = same_and_python_calls(path, catalog, monkeypatch)
    assert len(obs) == 1 and stats["tunnelled"] == (len(frames) if kind else 0)
    assert (f"tunnel={kind!r}" in obs[0]) and (not outer or f"tunnel_src={outer[0]!r}" in obs[0])
    assert 0 < calls <= 4  # the handshake and ClientHello only
    for damaged in _damaged_copies(frames, name, tmp_path):
        assert_same(damaged, catalog, monkeypatch)


def test_tunnel_depth_bound_in_c_matches_python(catalog, tmp_path, monkeypatch):
    """IP in IP and MPLS pseudowires nested to the bound are counted in C; one level
    deeper is left to Python, which drops and counts it (``tunnel_depth_limit``)."""
    from scapy.contrib.mpls import MPLS
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether

    _ETHER = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")

    def ipip(depth):
        def wrap(p, i):
            for level in range(depth):
                p = IP(src=f"192.0.2.{level + 1}", dst="192.0.2.200") / p
            return _ETHER / p

        return wrap

    def pseudowire(depth):
        def wrap(p, i):
            b = bytes(_ETHER / p)
            for _ in range(depth):  # Ethernet, a label, the control word, Ethernet
                b = bytes(_ETHER / MPLS(label=16, s=1)) + bytes(4) + b
            return b

        return wrap

    pkts = [p for p in _tls_connection(42000, False) if p.haslayer("IP")]
    for make in (ipip, pseudowire):
        for depth, counted in ((MAX_DEPTH, True), (MAX_DEPTH + 1, False)):
            frames = _wrapped(make(depth), pkts)
            path = write_pcap(tmp_path / f"deep-{depth}.pcap", frames)
            (obs, stats, *_), calls = same_and_python_calls(path, catalog, monkeypatch)
            limit = stats["tunnel_depth_limit"]
            if counted:
                assert len(obs) == 1 and 0 < calls <= 4 and limit == 0
            else:
                assert not obs and calls == len(frames) and limit == len(frames)


def _link_header(lt: int, fr: bytes) -> bytes:
    """Ethernet frame ``fr`` re-framed for link type ``lt``."""
    et, ip = fr[12:14], fr[14:]
    v6 = et == b"\x86\xdd"
    if lt == 113:  # Linux cooked: packet type, ARPHRD, address length, address, protocol
        return struct.pack("!HHH8s", 0, 1, 6, fr[6:12]) + et + ip
    if lt == 276:  # Linux cooked v2: protocol, reserved, ifindex, ARPHRD, type, addr len/addr
        return et + struct.pack("!HIHBB8s", 0, 2, 1, 0, 6, fr[6:12]) + ip
    if lt == 0:
        return struct.pack("<I", 30 if v6 else 2) + ip
    if lt == 108:
        return struct.pack("!I", 24 if v6 else 2) + ip
    if lt == 9:
        return b"\xff\x03" + (b"\x00\x57" if v6 else b"\x00\x21") + ip
    return ip  # raw IP


@pytest.mark.parametrize("lt", [0, 9, 12, 14, 101, 108, 113, 228, 229, 276])
def test_link_types_in_c_match_python(catalog, tmp_path, monkeypatch, lt):
    """Flows captured on each link type the decoder reads (loopback, PPP, raw IP, Linux
    cooked v1/v2), and on raw IP one inside nested tunnels (VXLAN, GRE, 4in6), are counted
    in C as in Python: only the handshakes and ClientHellos go to Python. Damaged copies
    agree too."""
    from tests.test_tunnels import VARIANTS

    v4 = [p for p in _tls_connection(42000, False) if p.haslayer("IP")]
    v6 = _tls_connection(42001, True)
    pkts = v6 if lt == 229 else v4 if lt == 228 else v4 + v6
    ether = [(round(float(p.time) * 1e6), bytes(p)) for p in pcaps.with_ether(pkts)]
    framed = [(us, _link_header(lt, fr)) for us, fr in ether]
    flows = 1 if lt in (228, 229) else 2
    if lt in (12, 14, 101, 228):  # the outer IPv4 datagram of a nested encapsulation
        wrap = VARIANTS["nested-qinq-vxlan-gre-4in6"][0]
        inner = [p for p in _tls_connection(42002, False) if p.haslayer("IP")]
        framed += [(us, fr[14 + 8 :]) for us, fr, _ in _wrapped(wrap, inner)]
        flows += 1
    framed = [(us, fr, len(fr)) for us, fr in sorted(framed, key=lambda f: f[0])]
    path = write_pcap(tmp_path / f"lt{lt}.pcap", framed, linktype=lt)
    (obs, stats, *_), calls = same_and_python_calls(path, catalog, monkeypatch)
    assert len(obs) == flows and stats["packets"] == len(framed)
    assert not stats["unknown_linktype"] and not stats["short"]
    assert 0 < calls <= 4 * flows
    for damaged in _damaged_copies(framed, f"lt{lt}", tmp_path, linktype=lt):
        assert_same(damaged, catalog, monkeypatch)


def test_udp_to_a_tunnel_port_is_never_a_flow_in_either_loop(catalog, tmp_path, monkeypatch):
    """A UDP flow whose client sent from the VXLAN, GENEVE or GTP-U port: the replies to
    that port are read as the tunnel (and dropped as such), never counted in the flow."""
    frames = []
    for k, port in enumerate((4789, 6081, 2152)):
        for i in range(6):
            out = i % 2 == 0
            sp, dp = (port, 5000 + k) if out else (5000 + k, port)
            src, dst = (b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02")[:: 1 if out else -1]
            fr = _ip4(src, dst, 17, _udp(sp, dp, bytes(80)))
            frames.append((int(T0 * 1e6) + 1000 * (10 * k + i), fr, len(fr)))
    path = write_pcap(tmp_path / "ports.pcap", frames)
    (_, stats, *_), _calls = same_and_python_calls(path, catalog, monkeypatch)
    assert stats["tunnelled"] == 9


def test_connect_tunnels_in_c_match_python(catalog, tmp_path, monkeypatch):
    """An HTTP proxy's CONNECT refused, then accepted on the same connection: the tunnel's
    TLS (ClientHello, bulk data, ACKs, FINs) after HTTP gave up reads the same either way."""
    s = pcaps.Tcp("10.1.2.3", "10.0.0.8", 50012, 3128).handshake()
    target = "160.79.104.10:443"
    s.send(True, http_request("CONNECT", target, target))
    s.send(False, b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
    s.send(True, http_request("CONNECT", target, target))
    s.send(False, b"HTTP/1.1 200 Connection established\r\n\r\n")
    s.add([s.seg(True, "A")]).send(True, client_hello("api.anthropic.com"))
    for _ in range(20):
        s.send(False, bytes(1400)).add([s.seg(True, "A")])
    frames = [
        (round(float(p.time) * 1e6), bytes(p), len(p)) for p in pcaps.with_ether(s.close().packets)
    ]
    obs, *_ = assert_same(write_pcap(tmp_path / "connect.pcap", frames), catalog, monkeypatch)
    assert len(obs) == 2 and "api.anthropic.com" in obs[1]
