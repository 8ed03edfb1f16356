"""The fast paths of the C pre-pass's line scan (``_squidscan.c``: ``next_line``).

It reads a line 64 bytes at a time from its start, finding its newline, its NUL bytes and
its field edges in the same pass, and searches a rejected URL's path 16 bytes at a time. So
these tests put every edge, separator, NUL and marker at every offset of those blocks, and
lines across reads and around ``MAX_LINE``, and compare what the collector reads with the
pure-Python loop (``two_ways``), or what ``native_chunk`` does with what ``rejects`` says.
The ids it gives kept lines are BLAKE2b digests computed with a vector compression when the
CPU has one (AVX2), else the portable one: both are compared with hashlib at every length
around the 128-byte message blocks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from importlib.machinery import ExtensionFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.collectors import squid
from monitor.collectors.base import MAX_LINE
from monitor.ids import observation_id, record_id
from tests.conftest import generated_squid_log
from tests.test_squid_accel import HOST_FILTER, LLM, OTHER, built, two_ways

pytestmark = pytest.mark.skipif(built is None, reason="C accelerator not built, or outdated")

ROOT = Path(__file__).resolve().parent.parent
PIECES = [None, 61, 64, 4099]


def agree(lines: list[bytes], pieces=PIECES) -> list[dict]:
    """``lines`` (after a warm-up teaching the filter both targets, so that the pre-pass
    decides them itself) read both ways, whole and in pieces cutting lines anywhere."""
    data = b"\n".join([OTHER, LLM, OTHER, LLM, *lines]) + b"\n"
    for piece in pieces:
        fast, reference = two_ways(data, piece)
        assert fast == reference, piece
    return fast[0]


def test_field_edges_at_every_block_offset() -> None:
    """Runs of 0-129 spaces before each field move every field edge and newline over every
    offset of the 64-byte blocks, and lines start at every offset of the chunk."""
    lines = []
    for base in (OTHER, LLM):
        fields = base.split(b" ")
        for at in (1, 3, 6, 9):
            for pad in range(130):
                lines.append(b" ".join(fields[:at]) + b" " * (pad + 1) + b" ".join(fields[at:]))
    found = agree(lines)
    assert sum(o["dest_host"] == "api.openai.com" for o in found) == 2 + 4 * 130
    # the pre-pass decides each itself: it drops the rejected ones, splits the kept ones
    rejects = {b"http://anan.co.jp": True}
    connects = {b"api.openai.com:443": False}
    for piece in (64, 4099, 1 << 20):
        data = b"\n".join(lines) + b"\n"
        while data:
            cut = data.find(b"\n", piece) + 1 or len(data)
            chunk, data = data[:cut], data[cut:]
            records, todo, count = built.native_chunk(
                chunk, True, MAX_LINE, rejects, (), None, None, None, connects
            )
            split = [line.split() for line in chunk.split(b"\n")[:-1]]
            assert count == len(split) and records + len(todo) == count
            assert [item[0] for item in todo] == [
                i for i, p in enumerate(split) if p[5] == b"CONNECT"
            ]
            for item in todo:
                parts = split[item[0]]
                assert item[3:5] == tuple(parts[2:4]) and item[6:10] == tuple(parts[5:9])


@pytest.mark.parametrize("odd", [b"\x00", b"\r", b"\t", b"\x0b", b"\x0c", b"  ", b"\r\r", b"\xff"])
def test_odd_bytes_at_every_offset(odd: bytes) -> None:
    """A NUL, a carriage return, a tab, other whitespace or a high byte put into each
    offset of a rejected and of a kept line (a NUL hands the line back, whitespace splits or
    joins fields: an eleventh field, nine, glued records)."""
    lines = [base[:k] + odd + base[k:] for base in (OTHER, LLM) for k in range(len(base) + 1)]
    data = b"\n".join([OTHER, LLM, OTHER, LLM, *lines]) + b"\n"
    for piece in (None, 64):
        fast, reference = two_ways(data, piece)
        assert fast == reference, piece
        records, malformed = fast[1][:2]
        assert records + malformed >= 4 + len(lines)  # every line read as a record or not
        if odd == b"\x00":  # a NUL anywhere makes the line malformed, whatever else it holds
            assert malformed == len(lines), piece


def test_long_lines() -> None:
    """Ten-field lines whose target is longer than a block, a chunk read or MAX_LINE, lines
    of MAX_LINE bytes give or take one (with carriage returns after them), an eleventh
    field or a NUL far into a line, and a last line without its newline."""
    lines = []
    for size in (50, 63, 64, 65, 127, 128, 129, 1000, 70_000):
        lines.append(OTHER.replace(b"/x?q=1", b"/" + b"p" * size))
        lines.append(LLM.replace(b":443", b":443" + b"7" * size))  # a long port: Python reads it
    for size in (MAX_LINE - 1, MAX_LINE, MAX_LINE + 1):
        line = OTHER.replace(b"/x?q=1", b"/" + b"p" * (size - len(OTHER) + 5))
        assert len(line) == size
        lines += [line, line + b"\r", line + b"\r" * 3, line[:-1] + b"\x00"]
    lines.append(OTHER.replace(b"/x?q=1", b"/" + b"p" * 5000) + b" eleventh")
    lines.append(OTHER.replace(b"/x?q=1", b"/" + b"p" * 5000 + b"\x00"))
    lines.append(b"x" * (3 * MAX_LINE))
    lines.append(b" " * 200)
    data = b"\n".join([OTHER, LLM, OTHER, *lines, LLM, OTHER])  # the last without newline
    for piece in (None, 64, 4099, 70_000):
        fast, reference = two_ways(data, piece)
        assert fast == reference, piece
    found, (records, malformed, skipped, problems, count) = fast
    assert count == len(lines) + 5 and skipped == 1
    assert sum("longer" in reason for _, reason, _ in problems) == 7


def neighbours(text: bytes) -> list[bytes]:
    """``text`` with one byte changed (its low bit flipped, or upper-cased), one removed,
    one added."""
    out = set()
    for k in range(len(text)):
        out.add(text[:k] + bytes([text[k] ^ 1]) + text[k + 1 :])
        out.add(text[:k] + text[k : k + 1].upper() + text[k + 1 :])
        out.add(text[:k] + text[k + 1 :])
    out.add(text + b"m")
    out.add(text.upper())
    return sorted(out - {text})


def test_hosts_one_byte_from_an_llm_host() -> None:
    """Targets a byte away from an LLM API's (its CONNECT host:port, its URL's scheme and
    authority), upper-cased ones among them, each seen several times so the verdict table
    decides: kept or dropped as the Python loop decides."""
    connect = b"api.openai.com:443"
    url = b"https://api.anthropic.com"
    lines = []
    for target in neighbours(connect):
        lines += [LLM.replace(connect, target)] * 3
    other_url = b"GET http://anan.co.jp/x?q=1"
    for target in neighbours(url):
        lines += [OTHER.replace(other_url, b"POST " + target + b"/x")] * 3
    lines += [OTHER.replace(other_url, b"POST " + url + b"/x")] * 3
    found = agree(lines, pieces=[None, 4099])
    kept = {(o["dest_host"], o["url"]) for o in found}
    assert ("api.openai.com", None) in kept and (
        "api.anthropic.com",
        url.decode() + "/x",
    ) in kept, kept


def test_verdict_table_keys_of_every_length() -> None:
    """Targets of 1 to 60 bytes, each beside one that differs in its last or first byte
    only, with opposite verdicts: read twice (the second time from the verdict table, whose
    hash and key compare take a key's last word whole), each is dropped or kept as
    ``rejects`` says."""
    rejects, connects, lines = {}, {}, []
    for n in range(1, 61):
        for k, target in enumerate((b"h" * n, b"h" * (n - 1) + b"i", b"i" + b"h" * (n - 1))):
            connects[target] = k % 2 == 0
            lines.append(LLM.replace(b"api.openai.com:443", target))
        url = b"http://" + b"u" * n
        rejects[url] = n % 2 == 0
        rejects[url[:-1] + b"v"] = n % 2 == 1
        lines += [
            OTHER.replace(b"http://anan.co.jp", url),
            OTHER.replace(b"http://anan.co.jp", url[:-1] + b"v"),
        ]
    chunk = b"\n".join(lines) + b"\n"
    verdicts = built.Verdicts()
    expected = []
    for i, line in enumerate(lines):
        parts = line.split()
        target = parts[6] if parts[5] == b"CONNECT" else parts[6][: parts[6].index(b"/", 8)]
        verdict = (connects if parts[5] == b"CONNECT" else rejects)[target]
        if not verdict:
            expected.append(i)
    for _ in range(2):
        records, todo, count = built.native_chunk(
            chunk, True, MAX_LINE, rejects, (), None, None, verdicts, connects
        )
        assert count == len(lines) and [item[0] for item in todo] == expected
        assert all(len(item) == 11 for item in todo)  # kept, split into fields
        assert records == len(lines) - len(expected)
    assert 0 < len(verdicts) <= len(connects) + len(rejects)


@pytest.mark.parametrize(
    "markers",
    [
        (
            b"/v1/messages",
            b":generateContent",
            b"/api/x/",
        ),  # two first bytes: searched 16 at a time
        (b"/v1/messages", b"#", b"!x", b"?gen", b"&y", b"=z"),  # six: byte by byte
        (b"q", b"/v1/messages"),  # a marker of one byte
    ],
)
def test_markers_at_every_offset(markers: tuple[bytes, ...]) -> None:
    """A rejected URL whose path holds a marker (at each offset of the path, paths across
    the 16-byte blocks) is handed back; one whose path holds a marker with a byte changed,
    or only its first byte, is dropped."""
    rejects = {b"http://anan.co.jp": True}
    marker, outcomes = markers[0], set()
    for offset in range(40):
        for tail in (b"", b"z" * 17):
            for inner in (marker, marker[:-1] + b"X", marker[:1]):
                path = b"/" + b"a" * offset + inner + tail
                kept = any(m in path for m in markers)
                outcomes.add(kept)
                line = OTHER.replace(b"/x?q=1", path)
                got = built.native_chunk(line + b"\n", True, MAX_LINE, rejects, markers)
                assert got == ((0, [(0, line)], 1) if kept else (1, [], 1)), (path, markers)
    assert outcomes == {True, False}


@pytest.fixture(scope="module")
def portable(tmp_path_factory):
    """``_squidscan`` built with -DACCEL_PORTABLE (byte loops instead of SSE2, which every
    x86-64 has but other machines lack), loaded beside the SSE2 build."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        if os.environ.get("CI"):
            pytest.fail("a C compiler is needed in CI")
        pytest.skip("no C compiler")
    out = tmp_path_factory.mktemp("portable") / (
        "_squidscan" + sysconfig.get_config_var("EXT_SUFFIX")
    )
    source = ROOT / "monitor" / "collectors" / "_squidscan.c"
    include = sysconfig.get_paths()["include"]
    command = [cc, "-shared", "-fPIC", "-O2", "-DACCEL_PORTABLE", f"-I{include}", str(source)]
    subprocess.run([*command, "-o", str(out)], check=True)
    # its own name (the init function is named by the last part): loading a module also
    # puts it into sys.modules, where it must not replace the SSE2 build
    name = "squidscan_portable._squidscan"
    loader = ExtensionFileLoader(name, str(out))
    try:
        module = module_from_spec(spec_from_loader(name, loader))
        loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    assert module.ABI == built.ABI and module.native_chunk is not built.native_chunk
    assert sys.modules[built.__name__] is built
    return module


def test_portable_build_agrees(portable, tmp_path: Path) -> None:
    """The portable build does with every line what the SSE2 build does (tested against
    Python above): the lines of these tests, the benchmark generator's log with malformed
    lines, and junk; cold, then with the verdict table filled."""
    lines = [OTHER, LLM, OTHER.replace(b"/x?q=1", b"/v1/messages"), b"x" * 70_000]
    lines += [base[:k] + odd + base[k:] for base in (OTHER, LLM) for k in range(0, len(base), 7)
              for odd in (b"\x00", b"\r", b"\t", b"  ", b"\xff")]  # fmt: skip
    log = tmp_path / "access.log"
    generated_squid_log(log, "--lines", "5000", "--malformed-rate", "0.02")
    targets = {}
    for line in log.read_bytes().split(b"\n"):
        parts = line.split()
        if len(parts) > 6:
            targets[parts[6].split(b"/x")[0]] = len(targets) % 5 != 0
    rejects = {**targets, b"http://anan.co.jp": True, b"api.openai.com:443": False}
    markers = (b"/v1/messages", b":gen")
    ranges = squid.intervals(HOST_FILTER.networks)
    for chunk in (b"\n".join(lines) + b"\n", log.read_bytes(), bytes(range(256)) * 50):
        for max_line in (MAX_LINE, 100):
            ours, theirs = built.Verdicts(), portable.Verdicts()
            for _ in range(2):
                args = (chunk, b"\x00" not in chunk, max_line, rejects, markers, ranges, None)
                assert built.native_chunk(*args, ours, rejects) == portable.native_chunk(
                    *args, theirs, rejects
                )


def _cpu_flags() -> set[str] | None:
    """The x86 CPU's flags as Linux reports them (AVX2 only when the OS saves its registers);
    None on other systems and CPUs."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = [line.split(":", 1)[1] for line in text.splitlines() if line.startswith("flags")]
    return set(flags[0].split()) if flags else None


def test_blake2b_compressions(portable) -> None:
    """The build in use hashes with AVX2 when the CPU has it, chosen at run time without
    special compile flags; the portable build (-DACCEL_PORTABLE) leaves the vector code out,
    so the tests below compare both compressions with hashlib."""
    ours, theirs = built.BLAKE2B, portable.BLAKE2B
    assert theirs == "portable" and ours in ("avx2", "portable")
    flags = _cpu_flags()
    if flags is not None:
        assert ours == ("avx2" if "avx2" in flags else "portable")


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=601, max_size=601), st.text(max_size=320))
def test_ids_of_every_length_agree_with_hashlib(portable, pool: bytes, text: str) -> None:
    """Record ids and observation ids of messages of every length 0-600 bytes (every
    128-byte block boundary, a byte before and after it, and the empty message) from both
    compressions, the vector one (`built`, when the CPU has AVX2) and the portable one, are
    hashlib's: the same values, of the same types."""
    for n in range(len(pool)):
        line = pool[:n]
        rid = record_id(line)
        assert built.record_id(line) == rid and portable.record_id(line) == rid, n
        assert type(built.record_id(line)) is str and type(portable.record_id(line)) is str
        ascii_text = bytes(b & 0x7F for b in line).decode("ascii")  # n bytes of UTF-8
        for s in (ascii_text, text[:n]):
            oid = observation_id(s)
            assert built.observation_id(s) == oid and portable.observation_id(s) == oid, n
            assert type(built.observation_id(s)) is int is type(portable.observation_id(s))
