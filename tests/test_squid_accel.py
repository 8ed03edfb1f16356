"""The Squid collector's C pre-pass (``_squidscan.c``) against the pure-Python loop.

The pre-pass reads whole read chunks. It may only count and drop lines that the Python code
would also count and drop, and only split into fields lines that the Python code would read
the same way; whatever it hands back must come out of the Python loop exactly as before. So
every test here parses the same bytes both ways (also read in small pieces, so that lines
straddle the chunks) and asserts equal observations, line numbers, counts and problems.
"""

from __future__ import annotations

import gc
import io
import os
import re
import struct
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv6Address, ip_network
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from monitor import accel
from monitor.batch import ROW_FIELDS
from monitor.catalog import Catalog
from monitor.collectors import CollectOptions, Diagnostics, make_collector, squid
from monitor.collectors.base import MAX_LINE
from monitor.ids import observation_id, record_id
from monitor.observation import MAX_COUNT, RUN_RECORD, Observation, run_records
from monitor.pipeline import Identifier
from tests.conftest import generated_squid_log

ROOT = Path(__file__).resolve().parent.parent
MODULE = "monitor.collectors._squidscan"

built = accel.load(MODULE)
if built is not None and getattr(built, "ABI", 1) < squid._ACCEL_ABI:
    built = None  # compiled from an older _squidscan.c: squid.py does not use it either
if built is None and os.environ.get("CI") and not os.environ.get(accel.PURE_ENV):
    pytest.fail("the C accelerator was not built (hatch_build.py needs a C compiler)")
pytestmark = pytest.mark.skipif(built is None, reason="C accelerator not built, or outdated")

HOST_FILTER = Identifier(Catalog.load()).host_filter


@contextmanager
def pure_python():
    old = os.environ.get(accel.PURE_ENV)
    os.environ[accel.PURE_ENV] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ[accel.PURE_ENV]
        else:
            os.environ[accel.PURE_ENV] = old


class Trickle(io.RawIOBase):
    """A stream that gives at most ``piece`` bytes per read, so chunks end anywhere."""

    def __init__(self, data: bytes, piece: int):
        self.data, self.piece, self.pos = data, piece, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        got = self.data[self.pos : self.pos + min(self.piece, len(buffer))]
        buffer[: len(got)] = got
        self.pos += len(got)
        return len(got)


def parse(data: bytes, piece: int | None = None, warm: bool = False) -> tuple[list[dict], tuple]:
    """What the collector reads from ``data``: with the caches a process keeps across its
    parses (``warm``: as earlier parses left them), else cold, as for the first."""
    if not warm:
        squid._KEPT.clear()
    diag = Diagnostics()
    collector = make_collector("squid", CollectOptions(format="squid"))
    raw = io.BytesIO(data) if piece is None else Trickle(data, piece)
    stream = io.BufferedReader(raw)
    found = [
        o.to_dict() | {"id": o.record_id} for o in collector.parse(stream, "t", diag, HOST_FILTER)
    ]
    problems = [(p.line, p.reason, p.excerpt) for p in (*diag.problems, *diag.notices)]
    return found, (diag.records, diag.malformed, diag.skipped, problems, diag.lines)


def two_ways(data: bytes, piece: int | None = None) -> tuple[tuple, tuple]:
    """What the accelerated parse and the pure-Python reference read from ``data``."""
    fast = parse(data, piece)
    with pure_python():
        assert accel.load(MODULE) is None
        reference = parse(data, piece)
    return fast, reference


def both_ways(data: bytes, piece: int | None = None) -> tuple[list[dict], tuple]:
    fast, reference = two_ways(data, piece)
    assert fast == reference
    return fast


#: the %Sh/%<a field of OTHER, and peers for it inside, beside and around Anthropic's
#: published ingress ranges (160.79.104.0/23, 153.61.224.0/22, 2607:6bc0::/48): whatever
#: the C pre-pass cannot rule out goes to Python, which keeps the direct ones (fronted)
PEER = b"HIER_DIRECT/62.39.132.77"
PEERS = [
    b"HIER_DIRECT/160.79.104.10",
    b"HIER_DIRECT/160.79.104.0",
    b"HIER_DIRECT/160.79.105.255",
    b"HIER_DIRECT/160.79.106.0",
    b"HIER_DIRECT/160.79.103.255",
    b"HIER_DIRECT/153.61.227.255",
    b"HIER_DIRECT/2607:6bc0::10",
    b"HIER_DIRECT/[2607:6bc0:0:ffff::1]",
    b"HIER_DIRECT/2607:6bc1::",
    b"HIER_DIRECT/2607:6bc0::1%eth0",  # a zone index: Python reads it
    b"HIER_DIRECT/::ffff:160.79.104.10",  # IPv4-mapped: an IPv6 address, in no range
    b"HIER_DIRECT/::160.79.104.10",
    b"HIER_DIRECT/160.79.104.010",  # a leading zero: no address
    b"HIER_DIRECT/160.79.104",
    b"HIER_DIRECT/160.79.104.10.1",
    b"HIER_DIRECT/160.79.104.10/x",
    b"HIER_DIRECT/160.79.104.256",
    b"HIER_DIRECT/[]",
    b"HIER_DIRECT/[-]",
    b"HIER_DIRECT/",
    b"HIER_DIRECT/" + b"2607:6bc0:" * 6,  # too long for inet_pton's buffer
    b"HIER_DIRECT/\xc3\xa9:1",
    b"hier_direct/160.79.104.10",
    b"TIMEOUT_HIER_DIRECT/160.79.104.10",
    b"ORIGINAL_DST/2607:6bc0::1",
    b"FIRSTUP_PARENT/160.79.104.10",  # a parent: not the origin
    b"/160.79.104.10",
    b"160.79.104.10",
    b"HIER_DIRECT/proxy.example.com",
]

LLM = b"1732752001.203  70428 10.1.88.196 TCP_TUNNEL/200 2475 CONNECT api.openai.com:443 - HIER_DIRECT/172.66.0.243 -"
OTHER = b"1732752001.372     27 10.20.115.79 TCP_MISS/200 778 GET http://anan.co.jp/x?q=1 - HIER_DIRECT/62.39.132.77 text/html"


#: changes to LLM, whose target the host filter keeps: the pre-pass splits the line into
#: its fields when it is sure to read them as Python does, else hands it back
KEPT = [
    (b"1732752001.203", b"1732752001"),
    (b"1732752001.203", b"0.5"),
    (b"1732752001.203", b"1732752001." + b"0" * 40 + b"1"),  # long: to Python
    (b"1732752001.203", b"1732752001.2039999999999999"),
    (b" 70428 ", b" -70428 "),
    (b" 70428 ", b" 0 "),
    (b" 2475 ", b" - "),
    (b" 2475 ", b" 999999999999999999 "),  # 18 digits: above MAX_COUNT, to Python
    (b" 2475 ", b" 9999999999999999999999 "),  # more: to Python
    (b" 2475 ", b" 1_0 "),  # int() reads it; C hands it back
    (b" - HIER", b" ana%20b HIER"),
    (b" - HIER", b" \xc3\xa9 HIER"),
    (b"HIER_DIRECT/172.66.0.243", b"HIER_NONE/-"),
    (b"HIER_DIRECT/172.66.0.243", b"FIRSTUP_PARENT/10.0.0.1"),
    (b"TCP_TUNNEL/200", b"NONE/000"),
    (b"TCP_TUNNEL/200", b"TCP_DENIED/403"),
    (b"TCP_TUNNEL/200", b"TCP_TUNNEL/99999999999999999999"),
    (b"10.1.88.196", b"::ffff:10.1.88.196"),
    (b"CONNECT api.openai.com:443", b"GET api.openai.com:443"),
    (b" ", b"\t"),
    (b" -", b" text/html extra"),  # eleven fields
    # bytes that the word-at-a-time field scan must step over or stop at
    (b" - HIER", b" an\x01a\x1f\x7f\x80\xff\xa0\x85bcdefghijk HIER"),
    (b" - HIER", b" \xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7 HIER"),
    (b" - HIER", b" abcdefg\x0bhijklmn HIER"),  # a vertical tab splits the field: eleven
    (b" - HIER", b" abcdefgh\x0chijklmn HIER"),
    (b" - HIER", b" abcdefghijklmnopqrstuvw\x1c HIER"),
    (b"HIER_DIRECT/172.66.0.243 -", b"HIER_DIRECT/172.66.0.243\t\t-"),
]


@pytest.mark.parametrize(
    "line",
    [
        OTHER,
        OTHER.replace(b"1732752001.372", b"1732752001"),  # no fraction
        OTHER.replace(b"1732752001.372", b"1e9"),  # float() reads it, C hands it back
        OTHER.replace(b"1732752001.372", b"99999999999.5"),  # 11 digits: < 1e11 in Python
        OTHER.replace(b"1732752001.372", b"123456789012"),  # >= 1e11: malformed
        OTHER.replace(b"1732752001.372", b"-5.0"),
        OTHER.replace(b"TCP_MISS/200", b"TCP_MISS/2x0"),
        OTHER.replace(b"TCP_MISS/200", b"_TCP/200"),
        OTHER.replace(b"TCP_MISS/200", b"T\xc3\xa9/200"),
        OTHER.replace(b"TCP_MISS/200", b"/200"),
        OTHER.replace(b" 778 ", b" - "),
        OTHER.replace(b" 27 ", b" -1 "),
        OTHER.replace(b"text/html", b"text/html extra"),  # eleven fields
        OTHER.replace(b" text/html", b""),  # nine
        OTHER.replace(b"GET http://anan.co.jp/x?q=1", b"GET http://api.openai.com/v1/x"),
        OTHER.replace(b"GET http://anan.co.jp/x?q=1", b"GET http://anan.co.jp"),  # no path
        OTHER.replace(b"GET http://anan.co.jp/x?q=1", b"GET ://api.openai.com/v1"),
        OTHER.replace(b"GET http://anan.co.jp/x?q=1", b"GET api.openai.com:443"),
        OTHER.replace(b"GET http://anan.co.jp/x?q=1", b"CONNECT anan.co.jp:443"),
        OTHER.replace(b" ", b"\t"),
        OTHER.replace(b"anan", b"an\x00an"),
        OTHER + b"\r",
        LLM,
        *[LLM.replace(a, b) for a, b in KEPT],  # the pre-pass splits these, or hands back
        LLM + b" " + OTHER,  # two records glued
        LLM[:50],
        b"",
        b"   ",
        *[OTHER.replace(PEER, peer) for peer in PEERS],
        *[
            OTHER.replace(b"GET http://anan.co.jp/x?q=1", b"CONNECT anan.co.jp:443").replace(
                PEER, peer
            )
            for peer in PEERS[:8]
        ],  # fmt: skip
    ],
)
def test_line_shapes(line: bytes) -> None:
    """Each line after a warm-up that teaches ``rejects`` the target, so the pre-pass
    really decides (a first sighting always goes to Python)."""
    found, _ = both_ways(b"\n".join([OTHER, LLM, line, line, OTHER]) + b"\n")
    assert sum(o["dest_host"] == "api.openai.com" for o in found) >= 1


TOKENS = st.sampled_from(
    [b"1732752001.203", b"1732752001", b"1e9", b"  70428", b"0", b"-", b"10.1.88.196",
     b"TCP_TUNNEL/200", b"TCP_DENIED/403", b"NONE/000", b"x/1", b"2475", b"CONNECT", b"GET",
     b"api.openai.com:443", b"anan.co.jp:443", b"http://api.anthropic.com/v1/messages",
     b"http://anan.co.jp/", b"https://claude.ai", b"HIER_DIRECT/1.2.3.4", b"HIER_NONE/-",
     b"HIER_DIRECT/160.79.104.10", b"FIRSTUP_PARENT/160.79.105.1", b"HIER_DIRECT/2607:6bc0::a",
     b"text/html", b"\x00", b"\xff\xfe", b"\t", b"\r"]
)  # fmt: skip


@st.composite
def logs(draw) -> bytes:
    lines = []
    for _ in range(draw(st.integers(1, 40))):
        if draw(st.booleans()):
            lines.append(draw(st.sampled_from([LLM, OTHER])))
        else:
            lines.append(b" ".join(draw(st.lists(TOKENS, min_size=0, max_size=12))))
    return b"\n".join(lines) + draw(st.sampled_from([b"\n", b""]))


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(logs(), st.one_of(st.none(), st.integers(1, 300)))
def test_generated_lines_agree(data: bytes, piece: int | None) -> None:
    fast, reference = two_ways(data, piece)
    assert fast == reference


#: a count field around MAX_COUNT, the bound of what a record may carry (and 18 digits, the
#: most C reads), some with leading zeros
COUNTS = st.tuples(
    st.one_of(st.integers(MAX_COUNT - 2, MAX_COUNT + 2), st.integers(0, 10**19),
              st.integers(0, 999)),
    st.integers(0, 20),
).map(lambda v: b"0" * v[1] + str(v[0]).encode())  # fmt: skip


#: a Squid status: at most 999, leading zeros or not, or more (not an HTTP status: the record
#: is malformed)
STATUSES = st.sampled_from([b"200", b"000", b"0200", b"0000000999", b"2000", b"01000",
                            b"99999999999999999999"])  # fmt: skip


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(st.lists(st.tuples(COUNTS, COUNTS, st.booleans(), STATUSES), min_size=1, max_size=8))
def test_counts_around_the_bound_agree(lines) -> None:
    """Elapsed times and sizes around MAX_COUNT, and statuses up to 999 and beyond, in
    kept lines (and in rejected ones): what C keeps, Python keeps with the same values;
    what it hands back, Python reports as malformed with the same reason."""
    made = [(LLM if kept else OTHER).replace(b" 70428 " if kept else b" 27 ", b" %s " % e)
            .replace(b" 2475 " if kept else b" 778 ", b" %s " % size)
            .replace(b"/200 ", b"/%s " % status)
            for e, size, kept, status in lines]  # fmt: skip
    found, (_, malformed, _, problems, _) = both_ways(b"\n".join([OTHER, LLM, *made]) + b"\n")
    bounded = [int(e) <= MAX_COUNT and int(size) <= MAX_COUNT and int(status) <= 999
               for e, size, kept, status in lines if kept]  # fmt: skip
    assert len(found) == 1 + bounded.count(True)
    # (a rejected line out of range is dropped, or malformed when read field by field)
    assert bounded.count(False) <= malformed == len(problems)


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(st.binary(max_size=600), st.integers(0, 4))
def test_random_bytes_agree(junk: bytes, copies: int) -> None:
    """Arbitrary bytes between well-formed lines (the pre-pass reads raw memory)."""
    fast, reference = two_ways(b"\n".join([OTHER, junk, *[OTHER] * copies, junk[::-1], LLM]))
    assert fast == reference


def test_fuzz_corpus_agrees() -> None:
    corpus = sorted((ROOT / "tests" / "corpus").glob("*"))
    assert corpus, "tests/corpus is empty"
    for path in corpus:
        fast, reference = two_ways(OTHER + b"\n" + path.read_bytes())
        assert fast == reference, path.name


def test_benchmark_log_agrees(tmp_path: Path) -> None:
    """The benchmark generator's log, with a malformed line in every hundred."""
    out = tmp_path / "access.log"
    generated_squid_log(out, "--lines", "30000", "--malformed-rate", "0.01")
    found, (records, malformed, _, problems, lines) = both_ways(out.read_bytes())
    assert found and malformed > 100 and problems and records > 29000 and lines == 30000


def test_parts_read_with_warm_caches_agree(tmp_path: Path) -> None:
    """A producer reads several parts of a log with the caches of the one before (targets,
    verdicts, clients, peers): each part reads as it does cold, and as the pure-Python loop
    reads it; the warm second part has the pre-pass make the kept CONNECTs itself."""
    out = tmp_path / "access.log"
    generated_squid_log(out, "--lines", "20000", "--malformed-rate", "0.01")
    data = out.read_bytes()
    cut = data.index(b"\n", len(data) // 2) + 1
    first, second = data[:cut], data[cut:]
    parse(first)
    kept = squid._targets(HOST_FILTER)
    assert kept.rejects and kept.ips and kept.verdicts is not None and len(kept.verdicts)
    warm = parse(second, warm=True)
    assert squid._targets(HOST_FILTER) is kept  # the same caches, not new ones
    cold = parse(second)
    with pure_python():
        reference = parse(second)
    assert warm == cold == reference
    assert len(warm[0]) > 100


@pytest.mark.parametrize("piece", [1, 7, 100, 4096, 70_000])
def test_lines_across_chunks(piece: int) -> None:
    """Lines cut by the reads, CRLF, blank, NUL-bearing and over-long lines (one ending
    inside a chunk, one running past it, one that ends the file without a newline)."""
    long = b"x" * (MAX_LINE + 5)
    body = [OTHER, LLM, b"", OTHER + b"\r", LLM + b"\r\r", long, OTHER, long + b"\r", LLM,
            OTHER.replace(b"anan", b"an\x00an"), LLM + b" " + OTHER, b"  ", LLM]  # fmt: skip
    data = b"\n".join(body * 3) + b"\n" + long
    found, (records, malformed, skipped, problems, lines) = both_ways(data, piece)
    assert [o["line"] for o in found if o["dest_host"] == "api.openai.com"][:4] == [2, 5, 9, 11]
    assert skipped == 6 and records == 27 and lines == len(body) * 3 + 1
    assert [line for line, reason, _ in problems if "longer" in reason] == [
        6,
        8,
        19,
        21,
        32,
        34,
        40,
    ]


def test_native_chunk_contract() -> None:
    """The pre-pass alone: over the lines of a chunk it drops only what ``rejects``
    rejects, splits what it keeps into its fields, and hands back the rest as lines."""
    rejects = {b"anan.co.jp:443": True, b"http://anan.co.jp": True, b"api.openai.com:443": False}
    connect = OTHER.replace(b"GET http://anan.co.jp/x?q=1", b"CONNECT anan.co.jp:443")
    lines = [OTHER, connect, LLM, b"", OTHER.replace(b"anan", b"other"), connect + b" x"]
    fields = (2, 1732752001.203, 70428, b"10.1.88.196", b"TCP_TUNNEL/200", 2475, b"CONNECT",
              b"api.openai.com:443", b"-", b"HIER_DIRECT/172.66.0.243", record_id(LLM))  # fmt: skip
    todo = [fields, (3, b""), (4, lines[4]), (5, lines[5])]
    for end in (b"\n", b"\r\n", b"\r\r\n"):
        chunk = end.join(lines) + end
        assert built.native_chunk(chunk, True, MAX_LINE, rejects) == (2, todo, 6)
        assert built.native_chunk(chunk, False, MAX_LINE, rejects) == (2, todo, 6)
    # after the last newline: the start of a line the next chunk holds, not read
    assert built.native_chunk(b"\n".join(lines), True, MAX_LINE, rejects) == (2, todo[:-1], 5)
    assert built.native_chunk(LLM + b"\n", True, len(LLM) - 1, rejects) == (0, [(0, LLM)], 1)
    assert built.native_chunk(b"", True, MAX_LINE, rejects) == (0, [], 0)
    nul = LLM.replace(b"10.1.88.196", b"10.1.88.1\x00")
    assert built.native_chunk(nul + b"\n", False, MAX_LINE, rejects) == (0, [(0, nul)], 1)
    with pytest.raises(TypeError):
        built.native_chunk(lines, True, MAX_LINE, rejects)
    marked = OTHER.replace(b"/x?q=1", b"/x/v1/messages")
    assert built.native_chunk(marked + b"\n", True, MAX_LINE, rejects, (b"/v1/messages",)) == (
        0,
        [(0, marked)],
        1,
    )
    assert built.native_chunk(marked + b"\n", True, MAX_LINE, rejects, (b"/v2/",)) == (1, [], 1)


MARKERS = (b"/v1/messages", b"/v1/chat", b"/api/x/", b":gen", b"#", b"/")


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    st.lists(st.sampled_from([b"/", b"v1", b"/v1", b"messages", b"chat", b"api", b"x", b":",
                              b"gen", b"#", b"?q=", b"e"]), max_size=12).map(b"".join),
    st.lists(st.sampled_from(MARKERS), max_size=4).map(tuple),
)  # fmt: skip
def test_rejected_urls_kept_by_their_path_as_python_keeps_them(path: bytes, markers) -> None:
    """A rejected URL with a path is handed back (for its path to be read) exactly when the
    Python loop's marker search finds a marker in the path: markers of one byte, and pairs
    of first bytes the markers share."""
    rejects = {b"http://anan.co.jp": True}
    line = OTHER.replace(b"/x?q=1", b"/" + path)
    search = re.compile(b"|".join(re.escape(m) for m in markers)).search if markers else None
    url = line.split()[6]
    kept = search is not None and search(url, len(b"http://anan.co.jp")) is not None
    got = built.native_chunk(line + b"\n", True, MAX_LINE, rejects, markers)
    assert got == ((0, [(0, line)], 1) if kept else (1, [], 1)), (path, markers)


#: PEERS the pre-pass hands back with the bundled ranges: an address in them, or text with a
#: ':' that inet_pton does not read; every other rejected line is dropped
HANDED_BACK = {
    b"HIER_DIRECT/160.79.104.10", b"HIER_DIRECT/160.79.104.0", b"HIER_DIRECT/160.79.105.255",
    b"HIER_DIRECT/153.61.227.255", b"HIER_DIRECT/2607:6bc0::10",
    b"HIER_DIRECT/[2607:6bc0:0:ffff::1]", b"HIER_DIRECT/2607:6bc0::1%eth0",
    b"HIER_DIRECT/" + b"2607:6bc0:" * 6, b"HIER_DIRECT/\xc3\xa9:1", b"hier_direct/160.79.104.10",
    b"TIMEOUT_HIER_DIRECT/160.79.104.10", b"ORIGINAL_DST/2607:6bc0::1",
    b"FIRSTUP_PARENT/160.79.104.10", b"/160.79.104.10",
}  # fmt: skip


def test_native_chunk_ranges() -> None:
    """A rejected line whose peer address may lie in the ranges is handed back, whatever
    its hierarchy code (Python reads that); one outside them, or without them, is dropped."""
    assert squid.intervals([ip_network("2607:6bc0::/48"), ip_network("160.79.104.0/23"),
                            ip_network("160.79.106.0/24"), ip_network("10.0.0.0/8")]) == (
        bytes([10, 0, 0, 0, 10, 255, 255, 255, 160, 79, 104, 0, 160, 79, 106, 255]),
        bytes.fromhex("26076bc0" + "00" * 12 + "26076bc00000" + "ff" * 10),
    )  # fmt: skip
    ranges = squid.intervals(HOST_FILTER.networks)
    rejects = {b"http://anan.co.jp": True}
    for peer in PEERS:
        line = OTHER.replace(PEER, peer) + b"\n"
        back = (0, [(0, line[:-1])], 1) if peer in HANDED_BACK else (1, [], 1)
        assert built.native_chunk(line, True, MAX_LINE, rejects, (), ranges) == back, peer
        assert built.native_chunk(line, True, MAX_LINE, rejects) == (1, [], 1)
        assert built.native_chunk(line, True, MAX_LINE, rejects, (), None) == (1, [], 1)
        assert built.native_chunk(line, True, MAX_LINE, rejects, (), (b"", b"")) == (1, [], 1)
    inside = OTHER.replace(PEER, PEERS[0]) + b"\n"
    with pytest.raises(ValueError):
        built.native_chunk(inside, True, MAX_LINE, rejects, (), (b"123", b""))
    with pytest.raises(TypeError):
        built.native_chunk(inside, True, MAX_LINE, rejects, (), [b"", b""])


NETWORKS = st.lists(
    st.one_of(
        st.builds(lambda a, p: ip_network((a, p), strict=False),
                  st.integers(0, 2**32 - 1), st.integers(8, 32)),
        st.builds(lambda a, p: ip_network((a, p), strict=False),
                  st.integers(0, 2**128 - 1), st.integers(16, 128)),
    ),
    max_size=6,
)  # fmt: skip


@settings(max_examples=300, deadline=None, derandomize=True)
@given(NETWORKS, st.data())
def test_range_search_is_membership(networks, data) -> None:
    """The pre-pass's binary search over :func:`squid.intervals` (overlapping networks
    merged) agrees with ``ipaddress``, at the edges of every network and anywhere else."""
    ranges = squid.intervals(networks)
    edges = [
        (IPv4Address if n.version == 4 else IPv6Address)(v)
        for n in networks
        for v in (int(n[0]) - 1, int(n[0]), int(n[-1]), int(n[-1]) + 1)
        if 0 <= v < 2**n.max_prefixlen
    ]
    picks = data.draw(st.lists(st.sampled_from(edges), max_size=8)) if edges else []
    anywhere = data.draw(st.lists(st.one_of(
        st.builds(IPv4Address, st.integers(0, 2**32 - 1)),
        st.builds(IPv6Address, st.integers(0, 2**128 - 1))), max_size=4))  # fmt: skip
    rejects = {b"http://anan.co.jp": True}
    for addr in [*picks, *anywhere]:
        line = OTHER.replace(PEER, b"HIER_DIRECT/" + str(addr).encode()) + b"\n"
        dropped, _, _ = built.native_chunk(line, True, MAX_LINE, rejects, (), ranges)
        assert dropped == (not any(addr in n for n in networks)), (addr, networks)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    st.one_of(
        st.binary(max_size=600),
        st.sampled_from([b"x" * n for n in (127, 128, 129, 256, 257, MAX_LINE)]),
    )
)
def test_record_id_is_ids_record_id(line: bytes) -> None:
    """The pre-pass names a kept line as :func:`monitor.ids.record_id` does (BLAKE2b in C)."""
    assert built.record_id(line) == record_id(line)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    st.one_of(
        st.binary(min_size=12, max_size=12).map(bytes.hex),  # what record ids are
        st.text(max_size=300),
        st.sampled_from(["x" * n for n in (0, 127, 128, 129, 256, 257)] + ["\ud800"]),
    )
)
def test_observation_id_is_ids_observation_id(rid: str) -> None:
    """The pipeline numbers records with the accelerator's observation id (BLAKE2b in C)
    when it is built: the same as :func:`monitor.ids.observation_id`, the reference."""
    try:
        expected = observation_id(rid)
    except UnicodeEncodeError:  # a lone surrogate: no id either way
        with pytest.raises(UnicodeEncodeError):
            built.observation_id(rid)
        return
    assert built.observation_id(rid) == expected
    assert squid.first_observation_id() is built.observation_id
    with pure_python():
        assert squid.first_observation_id() is observation_id


def _maker(t: squid._Targets, first: int, layout) -> tuple:
    return (Observation, "t", "squid", first, t.codes, t.words, t.connect, t.ips, t.hier,
            ("record_id",), layout)  # fmt: skip


def test_native_chunk_makes_observations() -> None:
    """With ``maker``, a kept CONNECT whose values the caches hold becomes the Observation
    the Python loop makes of it, counted; one a cache lacks stays a tuple, uncounted; a
    layout that is not the class's slots is refused. Filling the slots or calling the class
    gives the same Observation; filled with atoms only, the cycle collector does not track it."""
    (reference,), _ = parse(LLM + b"\n")
    t = squid._Targets(HOST_FILTER)
    rejects = {b"api.openai.com:443": False}
    plain = built.native_chunk(LLM + b"\n", True, MAX_LINE, rejects)
    assert plain == (0, [(0, *plain[1][0][1:])], 1)  # caches empty: the fields
    assert (
        built.native_chunk(LLM + b"\n", True, MAX_LINE, rejects, (), None, _maker(t, 4, None))
        == plain
    )
    t.code_status(b"TCP_TUNNEL/200"), t.word(b"CONNECT"), t.ip(b"10.1.88.196")
    t.peer(b"HIER_DIRECT/172.66.0.243"), t.target("CONNECT", b"api.openai.com:443")
    slots, defaults, rid = squid._layout()
    boxed = (slots, (*defaults[:18], [], *defaults[19:]), rid)  # a container: ts_end
    for layout, watched in ((squid._layout(), False), (boxed, True), (None, True)):
        done, (blank, o), lines = built.native_chunk(
            b"\n" + LLM + b"\n", True, MAX_LINE, rejects, (), None, _maker(t, 4, layout)
        )
        assert done == 1 and lines == 2 and blank == (0, b"") and type(o) is Observation
        if layout is not boxed:
            assert o.to_dict() | {"id": o.record_id} == reference | {"line": 6}
        # made of atoms only, it can be in no cycle: the cycle collector need not watch it
        assert gc.is_tracked(o) == watched
    t.ips.clear()
    assert (
        built.native_chunk(
            LLM + b"\n", True, MAX_LINE, rejects, (), None, _maker(t, 4, squid._layout())
        )
        == plain
    )
    bad = (squid._layout()[0][:-1] + (None,), *squid._layout()[1:])
    with pytest.raises(ValueError):
        built.native_chunk(LLM + b"\n", True, MAX_LINE, rejects, (), None, _maker(t, 4, bad))


def _line_key(line: bytes, ts: float) -> bytes:
    """The line key of a kept CONNECT (``_squidscan.c``, Maker): the day's double, then the
    fields client, code/status, target, user and peer."""
    f = line.split()
    return struct.pack("=d", ts // 86400) + b" " + b" ".join(f[k] for k in (2, 3, 6, 7, 8))


def test_native_chunk_names_known_connects() -> None:
    """With ``known``, a kept CONNECT the maker makes comes as (Observation, line key); one
    of a key ``known`` holds comes in a run (its entry, its per-request values and ids
    packed), whose record is its per-request values in the order asked, record id and
    observation id, counted, with no Observation made; other kept lines are split as
    before, and a line too long for a key comes with None."""
    t = squid._Targets(HOST_FILTER)
    rejects = {b"api.openai.com:443": False, b"http://api.openai.com": False}
    t.code_status(b"TCP_TUNNEL/200"), t.word(b"CONNECT"), t.ip(b"10.1.88.196")
    t.peer(b"HIER_DIRECT/172.66.0.243"), t.target("CONNECT", b"api.openai.com:443")
    values = tuple(reversed(ROW_FIELDS[1:]))
    known: dict[bytes, object] = {}
    maker = (*_maker(t, 4, squid._layout()), known)
    get = LLM.replace(b"CONNECT api.openai.com:443", b"GET http://api.openai.com/v1/x")
    chunk = LLM + b"\n" + get + b"\n"
    done, (named, split), lines = built.native_chunk(
        chunk, True, MAX_LINE, rejects, (), None, maker
    )
    o, key = named
    assert (done, lines) == (1, 2) and type(o) is Observation and split[0] == 1 and len(split) == 11
    assert key == _line_key(LLM, o.ts) and o.record_id == record_id(LLM)
    known[key] = entry = object()
    again = built.native_chunk(chunk, True, MAX_LINE, rejects, (), None, maker)
    packed = RUN_RECORD.pack(o.ts, o.line, o.bytes_in, o.duration, observation_id(o.record_id),
                             bytes.fromhex(o.record_id))  # fmt: skip
    assert again == (1, [([entry], packed), split], 2)
    assert run_records(again[1][0], squid._known_codes(values)) == [
        (entry, tuple(getattr(o, f) for f in values), o.record_id, observation_id(o.record_id))
    ]
    other_day = LLM.replace(b"1732752001.203", b"1732838401.203")
    _, [(_, key2)], _ = built.native_chunk(
        other_day + b"\n", True, MAX_LINE, rejects, (), None, maker
    )
    assert key2 != key and key2[8:] == key[8:]
    long_user = LLM.replace(b" - HIER", b" " + b"u" * 600 + b" HIER")
    t.word(b"u" * 600)
    _, [(long_o, none)], _ = built.native_chunk(
        long_user + b"\n", True, MAX_LINE, rejects, (), None, maker
    )
    assert none is None and long_o.user == "u" * 600
    with pytest.raises(TypeError):
        built.native_chunk(chunk, True, MAX_LINE, rejects, (), None, (*maker[:-1], [known]))
    assert squid._known_codes(("ts", "status")) is None, "a field a line key decides"


def test_native_chunk_gives_known_records_in_runs() -> None:
    """Consecutive records of known line keys come in one run, in line order: lines the
    filter drops between them do not part a run, any other item does; a record of a key
    not yet known comes as its (Observation, key) pair between runs."""
    t = squid._Targets(HOST_FILTER)
    rejects = {b"api.openai.com:443": False, b"anan.co.jp:443": True, b"http://anan.co.jp": True}
    t.code_status(b"TCP_TUNNEL/200"), t.word(b"CONNECT"), t.ip(b"10.1.88.196")
    t.peer(b"HIER_DIRECT/172.66.0.243"), t.target("CONNECT", b"api.openai.com:443")
    codes = squid._known_codes(("line",))
    known: dict[bytes, object] = {}
    maker = (*_maker(t, 0, squid._layout()), known)
    other_client = LLM.replace(b"10.1.88.196", b"10.1.88.197")
    t.ip(b"10.1.88.197")
    _, [(o, key)], _ = built.native_chunk(LLM + b"\n", True, MAX_LINE, rejects, (), None, maker)
    known[key] = entry = object()
    lines = [LLM, CONNECT, OTHER, LLM, other_client, LLM, LLM, b"junk", LLM]
    done, todo, count = built.native_chunk(
        b"\n".join(lines) + b"\n", True, MAX_LINE, rejects, (), None, maker
    )
    assert (done, count) == (8, 9)
    runs = [run_records(item, codes) for item in todo if type(item[0]) is list]
    assert [[record[1] for record in run] for run in runs] == [[(1,), (4,)], [(6,), (7,)], [(9,)]]
    assert all(r[0] is entry and r[2] == record_id(LLM) for run in runs for r in run)
    assert [type(item[0]) for item in todo] == [list, Observation, list, int, list]
    assert todo[1][0].client_ip == "10.1.88.197" and todo[3] == (7, b"junk")


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.integers(0, 9_999_999_999), st.text("0123456789", max_size=26))
@example(86399, "9" * 20)
@example(1732838399, "9999")
@example(0, "")
def test_line_key_day_is_pythons(sec: int, frac: str) -> None:
    """The day in a line key is Python's ``ts // 86400`` of the float ts, whatever the
    digits (a fraction that rounds up to the next day, the last millisecond of one)."""
    ts = f"{sec}.{frac}".encode() if frac else str(sec).encode()
    line = LLM.replace(b"1732752001.203", ts)
    t = squid._Targets(HOST_FILTER)
    t.code_status(b"TCP_TUNNEL/200"), t.word(b"CONNECT"), t.ip(b"10.1.88.196")
    t.peer(b"HIER_DIRECT/172.66.0.243"), t.target("CONNECT", b"api.openai.com:443")
    maker = (*_maker(t, 0, squid._layout()), {})
    _, [(o, key)], _ = built.native_chunk(
        line + b"\n", True, MAX_LINE, {b"api.openai.com:443": False}, (), None, maker
    )
    assert o.ts == float(ts) and key == _line_key(line, float(ts))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text("0123456789", min_size=1, max_size=10), st.text("0123456789", max_size=12))
@example("9999999999", "99999")  # 15 digits: the most read as an integer
@example("9999999999", "999999")  # 16: strtod's
@example("1732752001", "2035")
@example("0", "000000000000")
def test_kept_line_ts_is_pythons_float(whole: str, frac: str) -> None:
    """A kept line's ts is ``float()`` of its text: up to 15 digits read as an integer and
    divided by a power of ten (both exact, the quotient rounded once), more by strtod."""
    ts = f"{whole}.{frac}".encode() if frac else whole.encode()
    line = LLM.replace(b"1732752001.203", ts)
    rejects = {b"api.openai.com:443": False}
    _, [fields], _ = built.native_chunk(line + b"\n", True, MAX_LINE, rejects)
    assert type(fields[1]) is float and fields[1] == float(ts)


CONNECT = OTHER.replace(b"GET http://anan.co.jp/x?q=1", b"CONNECT anan.co.jp:443")


def test_verdicts_mirror_rejects() -> None:
    """A Verdicts table answers for the targets (of at most 48 bytes) it copied from
    ``rejects``, as rejects did: the same results with it, and without rejects once it
    holds them; a long target is always looked up in rejects; cleared, it holds none."""
    far = b"a" * 60 + b".example:443"
    rejects = {b"http://anan.co.jp": True, b"api.openai.com:443": False, b"anan.co.jp:443": True}
    rejects[far] = True
    lines = [OTHER, LLM, CONNECT, CONNECT.replace(b"anan.co.jp:443", far), OTHER + b" x"]
    chunk = b"\n".join(lines) + b"\n"
    plain = built.native_chunk(chunk, True, MAX_LINE, rejects)
    assert plain[0] == 3 and plain[2] == 5
    held = built.Verdicts()
    assert built.native_chunk(chunk, True, MAX_LINE, rejects, (), None, None, held) == plain
    assert len(held) == 3
    done, todo, count = built.native_chunk(chunk, True, MAX_LINE, {}, (), None, None, held)
    assert (done, count) == (2, 5) and todo == sorted([*plain[1], (3, lines[3])])
    held.clear()
    assert len(held) == 0
    assert built.native_chunk(chunk, True, MAX_LINE, {}, (), None, None, held)[0] == 0
    with pytest.raises(TypeError):
        built.native_chunk(chunk, True, MAX_LINE, rejects, (), None, None, rejects)
    with pytest.raises(TypeError):
        built.Verdicts(1)


def test_verdicts_bounded() -> None:
    """More targets than the table may hold: it empties itself when full and never holds
    more than CAPACITY; what it no longer holds is read from rejects again."""
    capacity = built.Verdicts.CAPACITY
    hosts = [b"h%d.example:443" % k for k in range(capacity + capacity // 2)]
    rejects = dict.fromkeys(hosts, True)
    chunk = b"".join(CONNECT.replace(b"anan.co.jp:443", h) + b"\n" for h in hosts)
    held = built.Verdicts()
    for _ in range(2):
        assert built.native_chunk(chunk, True, MAX_LINE, rejects, (), None, None, held) == (
            len(hosts),
            [],
            len(hosts),
        )
        assert 0 < len(held) <= capacity
    done, todo, _ = built.native_chunk(chunk, True, MAX_LINE, {}, (), None, None, held)
    assert done == len(held) and len(todo) == len(hosts) - done


@pytest.mark.parametrize("limit", [3, 40])
def test_caches_emptied_agree(monkeypatch, limit: int) -> None:
    """The collector's caches emptied over and over (the Verdicts table with ``rejects``),
    with a target that is a CONNECT's and a URL's: the same as the pure-Python loop."""
    monkeypatch.setattr(squid, "_CACHE_LIMIT", limit)
    odd = OTHER.replace(b"GET http://anan.co.jp/x?q=1", b"CONNECT http://api.openai.com")
    lines = []
    for k in range(120):
        host = b"h%d.example" % (k % 50)
        lines += [OTHER.replace(b"anan.co.jp", host), CONNECT.replace(b"anan.co.jp", host)]
        lines += [LLM, odd, OTHER.replace(b"anan.co.jp/x", b"api.openai.com/v1")][k % 3 :][:1]
    found, _ = both_ways(b"\n".join(lines) + b"\n", 997)
    assert sum(o["dest_host"] == "api.openai.com" for o in found) >= 40


def test_layout_only_for_a_plain_dataclass() -> None:
    """C fills the slots only of a dataclass whose generated ``__init__`` only stores."""
    import dataclasses

    assert squid._layout() is not None and squid._layout()[2] == 34

    @dataclasses.dataclass(slots=True)
    class Checked(Observation.__mro__[0]):  # type: ignore[misc]
        def __post_init__(self) -> None:
            pass

    assert squid._layout(Checked) is None


def _warm_for(t: squid._Targets, lines: list[bytes]) -> None:
    """The collector's caches holding every value of the kept CONNECT ``lines``, as the
    Python loop leaves them (so that the pre-pass makes their Observations itself)."""
    for line in lines:
        f = line.split()
        t.code_status(f[3]), t.word(f[5]), t.ip(f[2]), t.peer(f[8]), t.target("CONNECT", f[6])


def _read_named(chunks: list[bytes], rejects: dict, t: squid._Targets, held) -> list:
    """What the pre-pass gives for ``chunks`` read in order by a consumer that, as
    Pipeline.process does, lets ``known`` name every key it is given (its entry: the key's
    text and the first record's line); runs as (entries, packed), pairs as (the
    Observation's fields, key)."""
    known: dict[bytes, object] = {}
    out: list = []
    first = 0
    for chunk in chunks:
        maker = (*_maker(t, first, squid._layout()), known)
        done, todo, lines = built.native_chunk(chunk, True, MAX_LINE, rejects, (), None, maker,
                                               held)  # fmt: skip
        out.append((done, lines))
        for item in todo:
            if type(item[0]) is list:
                out.append(("run", item[0], item[1]))
            else:
                o, key = item
                if key is not None:
                    known.setdefault(key, (bytes(key), o.line))
                out.append(("pair", o.to_dict() | {"id": o.record_id}, key))
        first += lines
    return out


def test_verdicts_remember_line_keys() -> None:
    """With a Verdicts table, a kept CONNECT's line key is the bytes object made for its
    text the first time (which ``known`` then holds), and a later line of it is found in
    ``known`` by that object; ``known`` still decides: a key it does not hold comes as a
    pair again, with the same object, and once the table is cleared with a new equal one.
    The items are those made without the table."""
    t = squid._Targets(HOST_FILTER)
    rejects = {b"api.openai.com:443": False}
    _warm_for(t, [LLM])
    known: dict[bytes, object] = {}
    maker = (*_maker(t, 0, squid._layout()), known)
    held = built.Verdicts()
    chunk = LLM + b"\n"

    def read(table):
        return built.native_chunk(chunk, True, MAX_LINE, rejects, (), None, maker, table)

    _, [(o, key)], _ = read(held)
    assert key == _line_key(LLM, o.ts) and type(key) is bytes
    _, [(_, again)], _ = read(held)
    assert again is key, "the key made the first time"
    known[key] = entry = object()
    found = read(held)
    assert found == read(None) and found[1][0][0] == [entry]
    known.clear()
    _, [(_, again)], _ = read(held)
    assert again is key, "known decides: a pair again, with the remembered object"
    held.clear()
    _, [(_, fresh)], _ = read(held)
    assert fresh == key and fresh is not key
    assert len(held) == 1, "len counts the verdicts only"


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 3), st.integers(0, 2), st.booleans()),
        min_size=1,
        max_size=60,
    ),
    st.integers(1, 7),
)
def test_remembered_line_keys_agree(picks, per_chunk: int) -> None:
    """Kept CONNECTs of a few clients, peers and days, read chunk by chunk while ``known``
    fills: the same runs, pairs, keys and counts with a Verdicts table remembering line keys
    as without one; and with it, the key a run's entry names is the object first made."""
    lines = []
    for client, peer, day, denied in picks:
        line = LLM.replace(b"10.1.88.196", b"10.1.88.%d" % (190 + client))
        line = line.replace(b"172.66.0.243", b"172.66.0.%d" % (240 + peer))
        line = line.replace(b"1732752001", b"%d" % (1732752001 + 86400 * day))
        lines.append(line.replace(b"TCP_TUNNEL/200", b"TCP_DENIED/403") if denied else line)
    chunks = [b"".join(x + b"\n" for x in lines[k : k + per_chunk])
              for k in range(0, len(lines), per_chunk)]  # fmt: skip
    t = squid._Targets(HOST_FILTER)
    _warm_for(t, lines)
    rejects = {b"api.openai.com:443": False}
    held = built.Verdicts()
    remembered = _read_named(chunks, rejects, t, held)
    assert remembered == _read_named(chunks, rejects, t, None)
    keys = [item[2] for item in remembered if item[0] == "pair"]
    assert len({id(k) for k in keys}) == len(set(keys)), "one object per key text"
    assert sum(n for n, _ in (x for x in remembered if type(x[0]) is int)) == len(lines)


def test_remembered_line_keys_bounded() -> None:
    """More distinct line keys than a Verdicts table remembers (NAMES): once full it lets
    them all go and remembers those made after, so an early key comes as a new equal object
    and a late one as the object made for it; the runs are those made without the table."""
    count = built.Verdicts.NAMES + 2_000
    lines = [LLM.replace(b"10.1.88.196", b"10.%d.%d.%d" % (k >> 16, k >> 8 & 255, k & 255))
             for k in range(count)]  # fmt: skip
    t = squid._Targets(HOST_FILTER)
    _warm_for(t, lines)
    rejects = {b"api.openai.com:443": False}
    held = built.Verdicts()
    maker = (*_maker(t, 0, squid._layout()), {})  # known holds no key: every line a pair

    def keys(chunk_lines: list[bytes]) -> list[bytes]:
        chunk = b"".join(x + b"\n" for x in chunk_lines)
        _, todo, _ = built.native_chunk(chunk, True, MAX_LINE, rejects, (), None, maker, held)
        return [key for _, key in todo]

    made = keys(lines)
    assert len(made) == count and len({id(k) for k in made}) == count
    early, late = keys([lines[0], lines[-1]])
    assert early == made[0] and early is not made[0], "let go when the table was full"
    assert late is made[-1], "remembered after"
    chunk = b"".join(x + b"\n" for x in lines)
    remembered = _read_named([chunk, chunk], rejects, t, built.Verdicts())
    assert remembered == _read_named([chunk, chunk], rejects, t, None)
    run = remembered[-1]
    assert run[0] == "run" and len(run[1]) == count and remembered[-2] == (count, count)
