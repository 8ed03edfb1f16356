#!/usr/bin/env python3
"""Benchmark apiwatch on a packet capture beside Suricata and tshark, in one run.

Rows (each timed for wall clock and the peak RSS of that command alone):

* ``apiwatch parse``  -- ``apiwatch parse FILE --json`` (pcap collector, catalogue, JSON lines)
* ``apiwatch scan``   -- ``apiwatch --db DB scan FILE --egress-country CN`` (the same plus
  geolocation, policy and the SQLite store; a forked producer parses, the parent stores)
* ``suricata``        -- ``suricata -r FILE -k none --runmode single -l OUTDIR`` with the
  packaged ``/etc/suricata/suricata.yaml`` (eve.json with tls/http/dns/flow records)
* ``tshark``          -- ``tshark -r FILE -T fields -e tls.handshake.extensions_server_name
  -e http.host -e dns.qry.name -Y 'tls.handshake.type==1 || http.request || dns'``

A missing peer is a row that says so ("suricata not installed (install from
bookworm-backports)", see ``install_peers.sh``); a crashing command is a FAILED row with its
exit code and stderr tail. Neither fails the benchmark.

Every tool's output is checked against the generator's ``FILE.truth.json``:

* apiwatch parse: every expected observation (client address and port, server address and
  port, name, how it was named: sni / http_host / dns / ip / none) must be there, nothing
  more;
* apiwatch scan: the summary's packet count and LLM observation count;
* Suricata: TLS SNIs and HTTP hostnames per connection (4-tuple) from eve.json, DNS
  queries and answers logged;
* tshark: the multiset of SNIs and HTTP Host values, and the DNS messages printed.

Each command is also run on a one-packet capture cut from the same file: that is its
start-up time, and "net packets/s" is packets / (seconds - start-up).

Peak RSS: GNU ``/usr/bin/time -f '%e %M'`` (Debian package ``time``) when installed, else
``os.wait4`` on the child (which never reports less than this script's own RSS).

Usage::

    python benchmarks/bench_pcap.py                     # generates 250,000 packets in a temp dir
    python benchmarks/bench_pcap.py /tmp/bench.pcap --repeat 3
    python benchmarks/bench_pcap.py --packets 1000000 --json
    python benchmarks/bench_pcap.py --memory-check      # + parse/scan of a generated 2 GiB capture
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import shlex
import shutil
import struct
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    GNU_TIME,
    SCAN_SUMMARY_RE,
    apiwatch_command,
    best_of,
    failed_cells,
    failure_lines,
    fmt,
    format_table,
    fresh_db,
    kb_to_mb,
    parse_only,
    pick_timer,
    rates,
    run_measured,
    say,
    scratch_dir,
    truth_path,
    warm_cache,
)

HERE = Path(__file__).resolve().parent
GENERATOR = HERE / "gen_pcap.py"
DEFAULT_PACKETS = 250_000
MEMORY_CHECK_SIZE = "2G"
RSS_TARGET_MB = 200.0
SURICATA_MISSING = "suricata not installed (install from bookworm-backports)"
TSHARK_MISSING = "tshark not installed (apt-get install tshark)"
TSHARK_FIELDS = [
    "-T",
    "fields",
    "-e",
    "tls.handshake.extensions_server_name",
    "-e",
    "http.host",
    "-e",
    "dns.qry.name",
    "-Y",
    "tls.handshake.type==1 || http.request || dns",
]


@dataclass
class Row:
    tool: str
    command: str
    packets: int
    bytes: int
    ok: bool = False
    note: str = ""  # "not installed ..." rows
    seconds: float | None = None  # best of the runs
    packets_per_s: float | None = None
    mb_per_s: float | None = None
    peak_rss_mb: float | None = None  # largest over the runs
    startup_s: float | None = None  # the same command on a one-packet capture
    net_packets_per_s: float | None = None  # packets / (seconds - startup)
    vs_suricata: float | None = None  # packets/s ratio to Suricata's
    agreement: dict | None = None
    exit_code: int | None = None
    stderr_tail: str = ""
    runs: list[float] = field(default_factory=list)


# --------------------------------------------------------------------------- measuring


def measure(tool: str, cmd: list[str], *, packets: int, nbytes: int, **kw) -> Row:
    """Best wall time of ``repeat`` runs; peak RSS is the largest of them.

    ``kw``: ``repeat``, ``timer``, ``workdir`` and optionally ``env``, ``timeout``,
    ``before_each``, ``ok_codes`` and ``stdout`` (a file for the command's output; see
    ``common.best_of``).
    """
    row = Row(tool=tool, command=shlex.join(cmd), packets=packets, bytes=nbytes)
    b = best_of(cmd, **kw)
    row.runs = b.runs
    row.seconds = round(b.run.seconds, 3)
    if not b.ok:
        row.exit_code, row.stderr_tail = b.run.exit_code, b.run.stderr_tail
        return row
    row.ok, row.exit_code = True, 0
    if b.run.seconds > 0:
        row.packets_per_s, row.mb_per_s = rates(packets, nbytes, b.run.seconds)
    row.peak_rss_mb = kb_to_mb(b.peak_rss_kb)
    return row


def startup(cmd: list[str], *, timer: str, workdir: Path, env=None, before_each=None) -> float:
    """Best of three runs of ``cmd`` (already pointing at the one-packet capture)."""
    best = None
    for _ in range(3):
        if before_each:
            before_each()
        r = run_measured(cmd, timer=timer, workdir=workdir, env=env, timeout=120)
        if r.exit_code != 0:
            return float("nan")
        best = r.seconds if best is None else min(best, r.seconds)
    return best or float("nan")


# --------------------------------------------------------------------------- inputs


def load_truth(path: Path) -> dict | None:
    t = truth_path(path)
    if not t.exists():
        return None
    try:
        return json.loads(t.read_text())
    except ValueError:
        return None


def count_packets(path: Path) -> int:
    """Packets of a classic pcap or pcapng file (walks the record headers)."""
    with open(path, "rb") as fh:
        data = fh.read(4)
        if data == b"\x0a\x0d\x0d\x0a":
            return _count_pcapng(fh)
        order = "<" if data in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
        fh.read(20)
        n = 0
        rec = struct.Struct(order + "IIII")
        while True:
            h = fh.read(16)
            if len(h) < 16:
                return n
            fh.seek(rec.unpack(h)[2], os.SEEK_CUR)
            n += 1


def _count_pcapng(fh) -> int:
    fh.seek(0)
    n = 0
    order = "<"
    while True:
        h = fh.read(12)
        if len(h) < 12:
            return n
        btype = struct.unpack(order + "I", h[:4])[0]
        if btype == 0x0A0D0D0A:
            order = "<" if h[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
        blen = struct.unpack(order + "I", h[4:8])[0]
        if btype in (2, 3, 6):
            n += 1
        fh.seek(blen - 12, os.SEEK_CUR)


def one_packet_copy(src: Path, dst: Path) -> None:
    """The header (and pcapng SHB/IDB) and the first packet of ``src``: for start-up times."""
    with open(src, "rb") as fh:
        head = fh.read(1 << 20)
    if head[:4] == b"\x0a\x0d\x0d\x0a":
        pos = 0
        while pos + 12 <= len(head):
            btype, blen = struct.unpack_from("<II", head, pos)
            pos += blen
            if btype == 6:
                break
        dst.write_bytes(head[:pos])
        return
    order = "<" if head[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    incl = struct.unpack_from(order + "I", head, 24 + 8)[0]
    dst.write_bytes(head[: 24 + 16 + incl])


def generate(out: Path, args_gen: list[str], *, timer: str, workdir: Path) -> Row:
    cmd = [sys.executable, str(GENERATOR), "-o", str(out), *args_gen, "-q"]
    row = measure(
        "gen_pcap.py (write)", cmd, packets=0, nbytes=0, repeat=1, timer=timer, workdir=workdir
    )
    truth = load_truth(out)
    if row.ok and truth and row.seconds:
        row.packets, row.bytes = truth["packets"], truth["bytes"]
        row.packets_per_s, row.mb_per_s = rates(row.packets, row.bytes, row.seconds)
    return row


# --------------------------------------------------------------------------- ground truth


def _expected(truth: dict) -> Counter:
    exp: Counter = Counter()
    for f in truth["flow_list"]:
        key = (f["client_ip"], f["client_port"], f["server_ip"], f["server_port"])
        exp[(*key, f["name"], f["how"])] += f.get("requests", 1)
    return exp


def check_parse(out: Path, truth: dict) -> dict:
    """Every expected observation, exactly (addresses, ports, name and how), nothing more."""
    exp = _expected(truth)
    got: Counter = Counter()
    with open(out, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            o = json.loads(line)
            key = (o["client_ip"], o["client_port"], o["dest_ip"], o["dest_port"])
            got[(*key, o["dest_host"], o["host_source"])] += 1
    missing, extra = exp - got, got - exp
    want = sum(exp.values())
    found = want - sum(missing.values())
    by_how: dict[str, list[int]] = {}
    for k, n in exp.items():
        by_how.setdefault(str(k[5]), [0, 0])[1] += n
    for k, n in (exp & got).items():
        by_how[str(k[5])][0] += n
    return {
        "expected": want,
        "found": found,
        "extra": sum(extra.values()),
        "percent": round(100.0 * found / want, 3) if want else 100.0,
        "by_how": {k: f"{a}/{b}" for k, (a, b) in sorted(by_how.items())},
        "missing_sample": [list(k) for k in list(missing)[:5]],
        "extra_sample": [list(k) for k in list(extra)[:5]],
    }


def check_scan(summary: str, truth: dict) -> dict:
    m = SCAN_SUMMARY_RE.search(summary)
    if not m:
        return {"match": False, "summary": summary[:300]}
    got = {"packets": int(m[1]), "llm_observations": int(m[3])}
    want = {"packets": truth["packets"], "llm_observations": truth["llm_observations"]}
    return {"got": got, "truth": want, "match": got == want}


def _names_found(
    sni_want: Counter, sni_got: Counter, http_want: Counter, http_got: Counter
) -> dict:
    """SNIs and HTTP hostnames found of those expected ("found/expected") and the percentage
    of both together."""
    sni_ok = sum((sni_want & sni_got).values())
    http_ok = sum((http_want & http_got).values())
    want = sum(sni_want.values()) + sum(http_want.values())
    return {
        "sni": f"{sni_ok}/{sum(sni_want.values())}",
        "http_host": f"{http_ok}/{sum(http_want.values())}",
        "percent": round(100.0 * (sni_ok + http_ok) / want, 3) if want else 100.0,
    }


def check_suricata(eve: Path, truth: dict) -> dict:
    """SNIs and HTTP hostnames per connection; DNS queries and answers logged."""
    sni_want: Counter = Counter()
    http_want: Counter = Counter()
    for f in truth["flow_list"]:
        key = (f["client_ip"], f["client_port"], f["server_ip"], f["server_port"])
        if f["how"] == "sni":
            sni_want[(*key, f["name"])] += 1
        elif f["how"] == "http_host":
            http_want[(*key, f["name"])] += f.get("requests", 1)
    sni_got: Counter = Counter()
    http_got: Counter = Counter()
    dns_q = dns_a = 0
    types: Counter = Counter()
    with open(eve, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            et = e.get("event_type")
            types[et] += 1
            key = (
                _ip(e.get("src_ip")),
                e.get("src_port"),
                _ip(e.get("dest_ip")),
                e.get("dest_port"),
            )
            if et == "tls" and e.get("tls", {}).get("sni"):
                sni_got[(*key, e["tls"]["sni"].lower())] += 1
            elif et == "http" and e.get("http", {}).get("hostname"):
                http_got[(*key, e["http"]["hostname"].lower())] += 1
            elif et == "dns":
                d = e.get("dns", {})
                if d.get("type") == "query":
                    dns_q += 1
                elif d.get("type") == "answer":
                    dns_a += 1
    return {
        **_names_found(sni_want, sni_got, http_want, http_got),
        "dns_queries": f"{dns_q}/{truth['counts']['dns_queries']}",
        "dns_answers": f"{dns_a}/{truth['counts']['dns_responses']}",
        "events": dict(types.most_common()),
    }


def _ip(text: str | None) -> str | None:
    """Suricata writes IPv6 addresses in full ("2a02:26f0:0041:0000:..."): compress them."""
    if text and ":" in text:
        with contextlib.suppress(ValueError):
            return str(ipaddress.ip_address(text))
    return text


def check_tshark(out: Path, truth: dict) -> dict:
    """SNIs and Host values as multisets (tshark prints no ports here); DNS messages."""
    sni: Counter = Counter()
    host: Counter = Counter()
    dns = 0
    with open(out, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            parts += [""] * (3 - len(parts))
            if parts[0]:
                sni[parts[0].lower()] += 1
            if parts[1]:
                host[parts[1].lower()] += 1
            if parts[2]:
                dns += 1
    sni_want = Counter(truth["sni_per_host"])
    host_want = Counter(truth["http_requests_per_host"])
    return {
        **_names_found(sni_want, sni, host_want, host),
        "dns_messages": f"{dns}/{truth['dns_messages']}",
    }


# --------------------------------------------------------------------------- the run


def fresh_dir(d: Path):
    def clean() -> None:
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)

    return clean


def bench_file(
    cap: Path,
    truth: dict | None,
    args,
    timer: str,
    tmp: Path,
    aw_cmd: list[str],
    aw_env: dict[str, str],
    only: set[str],
    tiny: Path | None,
) -> list[Row]:
    packets = truth["packets"] if truth else count_packets(cap)
    nbytes = cap.stat().st_size
    common = dict(packets=packets, nbytes=nbytes, repeat=args.repeat, timer=timer, workdir=tmp)
    rows: list[Row] = []

    def start_of(cmd_for, **kw) -> float | None:
        if tiny is None:
            return None
        s = startup(cmd_for(tiny), timer=timer, workdir=tmp, **kw)
        return None if s != s else round(s, 3)  # NaN: the tiny run failed

    if "parse" in only:
        say("running apiwatch parse ...")
        out = tmp / "parse.jsonl"

        def parse_cmd(f: Path) -> list[str]:
            return [*aw_cmd, "parse", str(f), "--json"]

        row = measure(
            "apiwatch parse", parse_cmd(cap), env=aw_env, timeout=args.timeout, stdout=out, **common
        )
        row.startup_s = start_of(parse_cmd, env=aw_env)
        if row.ok and truth:
            row.agreement = check_parse(out, truth)
        out.unlink(missing_ok=True)
        rows.append(row)
    if "scan" in only:
        say("running apiwatch scan ...")
        db = tmp / "bench.db"
        out = tmp / "scan.txt"

        def scan_cmd(f: Path) -> list[str]:
            return [*aw_cmd, "--db", str(db), "scan", str(f), "--egress-country", args.country]

        row = measure(
            "apiwatch scan",
            scan_cmd(cap),
            env=aw_env,
            timeout=args.timeout,
            before_each=fresh_db(db),
            stdout=out,
            ok_codes=(0, 3),
            **common,
        )
        row.startup_s = start_of(scan_cmd, env=aw_env, before_each=fresh_db(db))
        if row.ok and truth:
            row.agreement = check_scan(out.read_text(errors="replace"), truth)
        rows.append(row)
    if "suricata" in only:
        exe = shutil.which("suricata")
        if exe is None:
            rows.append(
                Row("suricata", "suricata -r FILE ...", packets, nbytes, note=SURICATA_MISSING)
            )
        else:
            say("running suricata ...")
            outdir = tmp / "suricata"

            def suri_cmd(f: Path) -> list[str]:
                return [exe, "-r", str(f), "-k", "none", "--runmode", "single", "-l", str(outdir)]

            row = measure(
                "suricata",
                suri_cmd(cap),
                timeout=args.timeout,
                before_each=fresh_dir(outdir),
                **common,
            )
            eve = outdir / "eve.json"
            if row.ok and truth and eve.exists():
                row.agreement = check_suricata(eve, truth)
            row.startup_s = start_of(suri_cmd, before_each=fresh_dir(outdir))
            rows.append(row)
    if "tshark" in only:
        exe = shutil.which("tshark")
        if exe is None:
            rows.append(Row("tshark", "tshark -r FILE ...", packets, nbytes, note=TSHARK_MISSING))
        else:
            say("running tshark ...")
            out = tmp / "tshark.tsv"

            def tshark_cmd(f: Path) -> list[str]:
                return [exe, "-r", str(f), *TSHARK_FIELDS]

            row = measure("tshark", tshark_cmd(cap), timeout=args.timeout, stdout=out, **common)
            if row.ok and truth:
                row.agreement = check_tshark(out, truth)
            out.unlink(missing_ok=True)
            row.startup_s = start_of(tshark_cmd)
            rows.append(row)
    suri = next((r for r in rows if r.tool == "suricata" and r.ok), None)
    for r in rows:
        if r.ok and r.seconds and r.startup_s is not None and r.seconds > r.startup_s:
            r.net_packets_per_s = round(r.packets / (r.seconds - r.startup_s))
        if r.ok and suri and suri.packets_per_s and r.packets_per_s:
            r.vs_suricata = round(r.packets_per_s / suri.packets_per_s, 2)
    return rows


def render_table(rows: list[Row]) -> str:
    head = (
        "tool",
        "packets",
        "seconds",
        "packets/s",
        "MB/s",
        "peak RSS MB",
        "start-up s",
        "net packets/s",
        "vs Suricata",
        "truth",
    )
    body = []
    for r in rows:
        if r.note:
            body.append((r.tool, f"{r.packets:,}", r.note, "", "", "", "", "", "", ""))
        elif r.ok:
            agree = "-"
            if r.agreement:
                if "percent" in r.agreement:
                    agree = f"{r.agreement['percent']:.2f}%"
                else:
                    agree = "match" if r.agreement.get("match") else "DIFFERS"
            body.append(
                (
                    r.tool,
                    f"{r.packets:,}",
                    fmt(r.seconds, ".2f"),
                    fmt(r.packets_per_s, ",.0f"),
                    fmt(r.mb_per_s, ",.1f"),
                    fmt(r.peak_rss_mb, ",.1f"),
                    fmt(r.startup_s, ".2f"),
                    fmt(r.net_packets_per_s, ",.0f"),
                    fmt(r.vs_suricata, ".2f"),
                    agree,
                )
            )
        else:
            body.append(failed_cells(r.tool, r.packets, r.exit_code, len(head)))
    out = format_table(head, body)
    for r in rows:
        if not r.ok and not r.note:
            out += failure_lines(r.tool, r.exit_code, r.command, r.stderr_tail)
    return "\n".join(out)


def render_agreement(rows: list[Row]) -> str:
    out = []
    for r in rows:
        if not r.agreement:
            continue
        a = {k: v for k, v in r.agreement.items() if v not in ([], None)}
        out.append(f"  {r.tool}: {json.dumps(a)}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Benchmark apiwatch parse/scan beside Suricata and tshark on a capture."
    )
    ap.add_argument("capture", nargs="?", type=Path, help="pcap/pcapng (else one is generated)")
    ap.add_argument("--packets", type=int, default=DEFAULT_PACKETS, help="packets to generate")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--format", choices=("pcap", "pcapng"), default="pcap")
    ap.add_argument("--repeat", type=int, default=1, help="runs per command; best time kept")
    ap.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    ap.add_argument("--country", default="CN", help="--egress-country of the scan row")
    ap.add_argument(
        "--apiwatch",
        help="apiwatch command line (default: beside this Python, else PATH, else python -m)",
    )
    ap.add_argument("--only", help="comma-separated subset: parse,scan,suricata,tshark")
    ap.add_argument("--timer", choices=("auto", "gnu-time", "wait4"), default="auto")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per command")
    ap.add_argument("--tmpdir", type=Path, help="where generated captures and outputs go")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--no-warm", action="store_true", help="do not pre-read the capture")
    ap.add_argument("--no-startup", action="store_true", help="skip the one-packet runs")
    ap.add_argument(
        "--memory-check",
        action="store_true",
        help=f"also parse and scan a generated {MEMORY_CHECK_SIZE} capture (peak RSS target)",
    )
    ap.add_argument("--memory-size", default=MEMORY_CHECK_SIZE, help="size of that capture")
    ap.add_argument("--memory-file", type=Path, help="use this capture for the memory check")
    ap.add_argument(
        "--memory-peers", action="store_true", help="run Suricata on the memory capture too"
    )
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args(argv)

    timer = pick_timer(args.timer)
    if timer is None:
        ap.error(f"{GNU_TIME} is not GNU time (apt-get install time); use --timer wait4")
    only = parse_only(args.only, {"parse", "scan", "suricata", "tshark"})
    result: dict = {"timer": timer, "targets": {}}
    rows: list[Row] = []
    missed: list[str] = []
    with scratch_dir("apiwatch-pcap-bench-", args.tmpdir, args.keep) as tmp:
        aw_cmd, aw_env = apiwatch_command(args.apiwatch)
        result["apiwatch"] = shlex.join(aw_cmd)
        cap = args.capture
        if cap is None:
            cap = tmp / f"bench.{args.format}"
            say(f"generating {args.packets:,} packets into {cap} ...")
            gen = ["--packets", str(args.packets), "--seed", str(args.seed)]
            g = generate(cap, gen + ["--format", args.format], timer=timer, workdir=tmp)
            rows.append(g)
            if not g.ok:
                say(render_table(rows))
                return 2
        elif not cap.exists():
            ap.error(f"{cap}: no such file")
        truth = load_truth(cap)
        if not args.no_warm:
            warm_cache(cap)
        tiny = None
        if not args.no_startup:
            tiny = tmp / f"one-packet{cap.suffix or '.pcap'}"
            one_packet_copy(cap, tiny)
        rows += bench_file(cap, truth, args, timer, tmp, aw_cmd, aw_env, only, tiny)
        result.update(capture=str(cap), bytes=cap.stat().st_size)
        result["packets"] = next((r.packets for r in rows if r.packets), None)

        parse = next((r for r in rows if r.tool == "apiwatch parse"), None)
        suri = next((r for r in rows if r.tool == "suricata" and r.ok), None)
        if parse and suri:
            met = bool(parse.ok and parse.vs_suricata and parse.vs_suricata >= 1.0)
            result["targets"]["parse_vs_suricata"] = {"ratio": parse.vs_suricata, "met": met}
            if not met:
                missed.append("parse_vs_suricata")
        if parse and parse.agreement:
            met = parse.agreement["percent"] == 100.0 and not parse.agreement["extra"]
            result["targets"]["ground_truth"] = {"percent": parse.agreement["percent"], "met": met}
            if not met:
                missed.append("ground_truth")

        if args.memory_check:
            mem_rows, mem = memory_check(args, timer, tmp, aw_cmd, aw_env)
            result["memory_check"] = {**mem, "rows": [asdict(r) for r in mem_rows]}
            result["targets"]["peak_rss"] = {
                "target_mb": RSS_TARGET_MB,
                "peak_rss_mb": mem["peak_rss_mb"],
                "met": mem["met"],
            }
            if not mem["met"]:
                missed.append("peak_rss")

        result["rows"] = [asdict(r) for r in rows]
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            mb = result["bytes"] / 1e6
            print(f"capture: {cap}  ({result['packets'] or 0:,} packets, {mb:,.1f} MB)")
            print(f"timer: {timer}   apiwatch: {result['apiwatch']}\n")
            print(render_table(rows))
            agree = render_agreement(rows)
            if agree:
                print("\nground truth:\n" + agree)
            if "memory_check" in result:
                m = result["memory_check"]
                print(f"\nmemory check ({m['packets']:,} packets, {m['bytes'] / 1e9:.2f} GB):")
                print(render_table(mem_rows))
                agree = render_agreement(mem_rows)
                if agree:
                    print("ground truth:\n" + agree)
            print()
            for name, t in result["targets"].items():
                print(f"target {name}: {'met' if t['met'] else 'NOT met'} {t}")
    return 1 if (args.strict and missed) else 0


def memory_check(args, timer, tmp, aw_cmd, aw_env) -> tuple[list[Row], dict]:
    cap = args.memory_file
    rows: list[Row] = []
    if cap is None:
        cap = tmp / "memory.pcap"
        say(f"memory check: generating {args.memory_size} into {cap} ...")
        gen = ["--size", args.memory_size, "--seed", str(args.seed)]
        g = generate(cap, gen, timer=timer, workdir=tmp)
        rows.append(g)
        if not g.ok:
            return rows, {"packets": 0, "bytes": 0, "peak_rss_mb": None, "met": False}
    truth = load_truth(cap)
    if not args.no_warm:
        warm_cache(cap)
    only = {"parse", "scan"} | ({"suricata"} if args.memory_peers else set())
    sub = argparse.Namespace(**{**vars(args), "repeat": 1})
    rows += bench_file(cap, truth, sub, timer, tmp, aw_cmd, aw_env, only, None)
    peaks = [r.peak_rss_mb for r in rows if r.tool.startswith("apiwatch") and r.ok]
    peak = max(peaks) if peaks else None
    met = bool(peak is not None and len(peaks) == 2 and peak < RSS_TARGET_MB)
    info = {
        "capture": str(cap),
        "packets": truth["packets"] if truth else count_packets(cap),
        "bytes": cap.stat().st_size,
        "peak_rss_mb": peak,
        "met": met,
    }
    if args.memory_file is None:
        cap.unlink(missing_ok=True)
        truth_path(cap).unlink(missing_ok=True)
    return rows, info


if __name__ == "__main__":
    sys.exit(main())
