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
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GENERATOR = HERE / "gen_pcap.py"
GNU_TIME = "/usr/bin/time"
DEFAULT_PACKETS = 250_000
MEMORY_CHECK_SIZE = "2G"
RSS_TARGET_MB = 200.0
STDERR_TAIL = 1500
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
class Run:
    seconds: float
    max_rss_kb: int | None
    exit_code: int
    stderr_tail: str = ""
    timed_out: bool = False


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


def gnu_time_usable() -> bool:
    if not os.access(GNU_TIME, os.X_OK):
        return False
    try:
        p = subprocess.run(
            [GNU_TIME, "-f", "%e %M", "true"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return p.returncode == 0 and len(p.stderr.split()) == 2


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - STDERR_TAIL))
            return fh.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def run_measured(
    cmd: list[str],
    *,
    timer: str,
    workdir: Path,
    stdout: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> Run:
    """Run ``cmd``; wall time, its own peak RSS, exit code. stdout to ``stdout`` or null."""
    err_path = workdir / "stderr.txt"
    rss_path = workdir / "time.txt"
    full = [GNU_TIME, "-f", "%e %M", "-o", str(rss_path), *cmd] if timer == "gnu-time" else cmd
    rss_path.unlink(missing_ok=True)
    timed_out = False
    with open(err_path, "wb") as err, open(stdout or os.devnull, "wb") as out:
        t0 = time.perf_counter()
        try:
            proc = subprocess.Popen(full, stdout=out, stderr=err, env=env, start_new_session=True)
        except OSError as exc:
            return Run(0.0, None, 127, f"cannot start {cmd[0]!r}: {exc}")
        killer = None
        if timeout:

            def expire() -> None:
                nonlocal timed_out
                timed_out = True
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)

            killer = threading.Timer(timeout, expire)
            killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            if killer:
                killer.cancel()
        seconds = time.perf_counter() - t0
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    rss_kb: int | None = None
    if timer == "gnu-time":
        try:
            rss_kb = int(rss_path.read_text().strip().splitlines()[-1].split()[1])
        except (OSError, IndexError, ValueError):
            rss_kb = None
    else:
        rss_kb = usage.ru_maxrss
    tail = _tail(err_path) if code != 0 or timed_out else ""
    if timed_out:
        tail = (tail + f"\n[killed after {timeout:.0f} s]").strip()
    return Run(seconds, rss_kb, code, tail, timed_out)


def measure(
    tool: str,
    cmd: list[str],
    *,
    packets: int,
    nbytes: int,
    repeat: int,
    timer: str,
    workdir: Path,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    before_each=None,
    stdout: Path | None = None,
    ok_codes: tuple[int, ...] = (0,),
) -> Row:
    """Best wall time of ``repeat`` runs; peak RSS is the largest of them."""
    row = Row(tool=tool, command=shlex.join(cmd), packets=packets, bytes=nbytes)
    best: float | None = None
    peak = 0
    for _ in range(max(1, repeat)):
        if before_each:
            before_each()
        r = run_measured(cmd, timer=timer, workdir=workdir, stdout=stdout, env=env, timeout=timeout)
        if r.exit_code not in ok_codes or r.timed_out:
            row.exit_code, row.stderr_tail = r.exit_code, r.stderr_tail
            row.seconds = round(r.seconds, 3)
            return row
        row.runs.append(round(r.seconds, 3))
        peak = max(peak, r.max_rss_kb or 0)
        best = r.seconds if best is None else min(best, r.seconds)
    assert best is not None
    row.ok, row.exit_code = True, 0
    row.seconds = round(best, 3)
    if best > 0:
        row.packets_per_s = round(packets / best)
        row.mb_per_s = round(nbytes / 1e6 / best, 1)
    row.peak_rss_mb = round(peak / 1024, 1) if peak else None
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
    t = Path(f"{path}.truth.json")
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


def warm_cache(path: Path) -> None:
    with open(path, "rb") as fh:
        while fh.read(1 << 24):
            pass


def apiwatch_command(override: str | None) -> tuple[list[str], dict[str, str]]:
    """apiwatch on PATH, else ``python -m monitor`` with this repository on PYTHONPATH."""
    env = dict(os.environ)
    if override:
        return shlex.split(override), env
    exe = shutil.which("apiwatch")
    if exe:
        return [exe], env
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return [sys.executable, "-m", "monitor"], env


def generate(out: Path, args_gen: list[str], *, timer: str, workdir: Path) -> Row:
    cmd = [sys.executable, str(GENERATOR), "-o", str(out), *args_gen, "-q"]
    row = measure(
        "gen_pcap.py (write)", cmd, packets=0, nbytes=0, repeat=1, timer=timer, workdir=workdir
    )
    truth = load_truth(out)
    if row.ok and truth and row.seconds:
        row.packets, row.bytes = truth["packets"], truth["bytes"]
        row.packets_per_s = round(row.packets / row.seconds)
        row.mb_per_s = round(row.bytes / 1e6 / row.seconds, 1)
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
    import re

    m = re.search(r"(\d+) records read, (\d+) malformed, (\d+) LLM observations", summary)
    if not m:
        return {"match": False, "summary": summary[:300]}
    got = {"packets": int(m[1]), "llm_observations": int(m[3])}
    want = {"packets": truth["packets"], "llm_observations": truth["llm_observations"]}
    return {"got": got, "truth": want, "match": got == want}


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
    sni_ok = sum((sni_want & sni_got).values())
    http_ok = sum((http_want & http_got).values())
    want = sum(sni_want.values()) + sum(http_want.values())
    return {
        "sni": f"{sni_ok}/{sum(sni_want.values())}",
        "http_host": f"{http_ok}/{sum(http_want.values())}",
        "percent": round(100.0 * (sni_ok + http_ok) / want, 3) if want else 100.0,
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
    sni_ok = sum((sni_want & sni).values())
    host_ok = sum((host_want & host).values())
    want = sum(sni_want.values()) + sum(host_want.values())
    return {
        "sni": f"{sni_ok}/{sum(sni_want.values())}",
        "http_host": f"{host_ok}/{sum(host_want.values())}",
        "percent": round(100.0 * (sni_ok + host_ok) / want, 3) if want else 100.0,
        "dns_messages": f"{dns}/{truth['dns_messages']}",
    }


# --------------------------------------------------------------------------- the run


def fresh_db(db: Path):
    def clean() -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(str(db) + suffix).unlink(missing_ok=True)

    return clean


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


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


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
                    _fmt(r.seconds, ".2f"),
                    _fmt(r.packets_per_s, ",.0f"),
                    _fmt(r.mb_per_s, ",.1f"),
                    _fmt(r.peak_rss_mb, ",.1f"),
                    _fmt(r.startup_s, ".2f"),
                    _fmt(r.net_packets_per_s, ",.0f"),
                    _fmt(r.vs_suricata, ".2f"),
                    agree,
                )
            )
        else:
            body.append((r.tool, f"{r.packets:,}", f"FAILED (exit {r.exit_code})", *[""] * 7))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]

    def line(cells) -> str:
        return "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = [line(head), line(["-" * w for w in widths])] + [line(b) for b in body]
    for r in rows:
        if not r.ok and not r.note:
            out.append(f"\n{r.tool} failed, exit {r.exit_code}: {r.command}")
            out += ["  | " + ln for ln in r.stderr_tail.splitlines()[-12:]]
    return "\n".join(out)


def render_agreement(rows: list[Row]) -> str:
    out = []
    for r in rows:
        if not r.agreement:
            continue
        a = {k: v for k, v in r.agreement.items() if v not in ([], None)}
        out.append(f"  {r.tool}: {json.dumps(a)}")
    return "\n".join(out)


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


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
    ap.add_argument("--apiwatch", help="apiwatch command line (default: PATH, else python -m)")
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

    timer = args.timer
    if timer == "auto":
        timer = "gnu-time" if gnu_time_usable() else "wait4"
    elif timer == "gnu-time" and not gnu_time_usable():
        ap.error(f"{GNU_TIME} is not GNU time (apt-get install time); use --timer wait4")
    only = (
        {s.strip() for s in args.only.split(",")}
        if args.only
        else {"parse", "scan", "suricata", "tshark"}
    )
    tmp = Path(tempfile.mkdtemp(prefix="apiwatch-pcap-bench-", dir=args.tmpdir))
    result: dict = {"timer": timer, "targets": {}}
    rows: list[Row] = []
    missed: list[str] = []
    try:
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
    finally:
        if args.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
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
        Path(f"{cap}.truth.json").unlink(missing_ok=True)
    return rows, info


if __name__ == "__main__":
    sys.exit(main())
