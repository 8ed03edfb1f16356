#!/usr/bin/env python3
"""Benchmark the Suricata eve.json collector against ``jq -r .tls.sni`` on the same file,
in one run.

Rows (each a separate process, wall time including start-up; peak RSS from GNU
``/usr/bin/time`` when installed):

* ``jq -r .tls.sni``           -- the peer: parse every line, print one field
* ``collector (orjson)``       -- ``SuricataCollector.parse`` over the file, every
  observation built (no host filter), as ``apiwatch parse`` uses it; orjson when installed
* ``collector (json)``         -- the same with the standard library's ``json.loads``
* ``apiwatch scan``            -- ``apiwatch --db TMP scan FILE --egress-country CN``
  (collector with the catalogue's host filter, identify, geolocate, evaluate, store)

Without a file, a deterministic eve.json is generated (``--lines``, ``--seed``): a sensor's
mix of event types (flow ~39%, dns ~31%, tls ~15%, fileinfo ~5%, http ~4%, alert ~2.5%,
anomaly ~2.5%, quic ~2%, stats), events of one flow near each other and its ``flow`` event a
little later (as Suricata writes it at flow end), extended tls/http fields, DNS answers with
CNAMEs, ~3% of TLS/QUIC/HTTP to LLM API hosts. The number of observations the collector
must produce is known from the generator and checked.

Usage::

    python benchmarks/bench_eve.py                         # 1,000,000 generated lines
    python benchmarks/bench_eve.py /var/log/suricata/eve.json --repeat 3
    python benchmarks/bench_eve.py --lines 200000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import GNU_TIME, REPO, apiwatch_command  # noqa: E402

LLM_HOSTS = ["api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com"]
LLM_HOSTS += ["api.deepseek.com", "api.mistral.ai", "openrouter.ai"]
OTHER = ["www.google.com", "update.googleapis.com", "cdnjs.cloudflare.com", "github.com"]
OTHER += [f"host{i}.example{i % 50}.com" for i in range(3000)]

INNER = r"""
import json, sys, time
sys.path.insert(0, {repo!r})
import monitor.collectors.suricata as s
from monitor.collectors.base import Diagnostics
if {std!r}:
    s._loads, s._JSON_ERRORS = json.loads, (ValueError, RecursionError)
diag = Diagnostics()
n = 0
with open({path!r}, "rb") as f:
    for _o in s.SuricataCollector().parse(f, {path!r}, diag):
        n += 1
print(json.dumps({{"observations": n, "records": diag.records, "skipped": diag.skipped,
                  "malformed": diag.malformed, "parser": s._loads.__module__}}))
"""


# ----------------------------------------------------------------------------- generator


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+0000")


def generate(path: Path, lines: int, seed: int = 1) -> dict[str, int]:
    """Write a deterministic eve.json of about ``lines`` lines; returns the truth counts."""
    rnd = random.Random(seed)
    ts = 1_732_752_000.0
    counts: dict[str, int] = {"lines": 0, "observations": 0, "llm": 0}
    late: list[tuple[int, str]] = []  # (line index to write at, flow event)
    out = []
    fid = 10_000_000_000_000

    def put(d: dict) -> None:
        out.append(json.dumps(d, separators=(",", ":")))
        counts[d["event_type"]] = counts.get(d["event_type"], 0) + 1

    def base(event_type: str, t: float, f: int, src: str, sp: int, dst: str, dp: int, proto: str):
        return {
            "timestamp": _iso(t),
            "flow_id": f,
            "in_iface": "eth0",
            "event_type": event_type,
            "src_ip": src,
            "src_port": sp,
            "dest_ip": dst,
            "dest_port": dp,
            "proto": proto,
            "pkt_src": "wire/pcap",
        }

    def flow_event(t, f, src, sp, dst, dp, proto, app):
        d = base("flow", t + rnd.uniform(1, 60), f, src, sp, dst, dp, proto)
        if app:
            d["app_proto"] = app
        d["flow"] = {
            "pkts_toserver": rnd.randint(3, 400),
            "pkts_toclient": rnd.randint(3, 900),
            "bytes_toserver": rnd.randint(300, 90000),
            "bytes_toclient": rnd.randint(300, 900000),
            "start": _iso(t),
            "end": _iso(t + rnd.uniform(0.01, 60)),
            "age": rnd.randint(0, 60),
            "state": "closed",
            "reason": "timeout",
            "alerted": False,
        }
        if proto == "TCP":
            d["tcp"] = {"tcp_flags": "1b", "tcp_flags_ts": "1b", "tcp_flags_tc": "1b", "syn": True}
            d["tcp"] |= {"fin": True, "psh": True, "ack": True, "state": "closed"}
        return json.dumps(d, separators=(",", ":"))

    while len(out) < lines:
        while late and late[0][0] <= len(out):
            out.append(late.pop(0)[1])
            counts["flow"] = counts.get("flow", 0) + 1
        ts += rnd.expovariate(2000)
        fid += rnd.randint(1, 10**6)
        src = f"10.{rnd.randint(0, 3)}.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}"
        sp = rnd.randint(1024, 65535)
        sp += sp == 5353  # mDNS flows are not observations
        dst = f"{rnd.randint(1, 223)}.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}"
        llm = rnd.random() < 0.03
        host = rnd.choice(LLM_HOSTS) if llm else rnd.choice(OTHER)
        r = rnd.random()
        app = None
        proto, dp = "TCP", 443
        if r < 0.30:  # TLS connection
            d = base("tls", ts, fid, src, sp, dst, dp, proto)
            d["tls"] = {
                "subject": f"CN={host}",
                "issuerdn": "C=US, O=Let's Encrypt, CN=R3",
                "serial": "04:1D:" + ":".join(f"{rnd.randint(0, 255):02X}" for _ in range(14)),
                "fingerprint": ":".join(f"{rnd.randint(0, 255):02x}" for _ in range(20)),
                "sni": host,
                "version": "TLS 1.3",
                "notbefore": "2024-10-01T00:00:00",
                "notafter": "2024-12-30T23:59:59",
                "ja3": {"hash": f"{rnd.getrandbits(128):032x}"},
                "ja3s": {"hash": f"{rnd.getrandbits(128):032x}"},
            }
            put(d)
            app = "tls"
            counts["observations"] += 1
            counts["llm"] += llm
        elif r < 0.36:  # HTTP: one or two requests
            dp = 80
            for i in range(rnd.choice((1, 1, 2))):
                d = base("http", ts + i * 0.05, fid, src, sp, dst, dp, proto)
                d["tx_id"] = i
                d["http"] = {
                    "hostname": host,
                    "url": f"/v1/items/{rnd.randint(1, 99999)}?q={rnd.getrandbits(32):x}",
                    "http_user_agent": "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0",
                    "http_content_type": "application/json",
                    "http_method": rnd.choice(("GET", "GET", "POST")),
                    "protocol": "HTTP/1.1",
                    "status": rnd.choice((200, 200, 304, 404)),
                    "length": rnd.randint(0, 50000),
                }
                put(d)
                counts["observations"] += 1
                counts["llm"] += llm
            app = "http"
        elif r < 0.40:  # QUIC
            proto = "UDP"
            d = base("quic", ts, fid, src, sp, dst, dp, proto)
            d["quic"] = {"version": "1", "sni": host, "ua": "Chrome/130.0.0.0"}
            put(d)
            app = "quic"
            counts["observations"] += 1
            counts["llm"] += llm
        elif r < 0.72:  # DNS: query + answer, the flow is not an observation
            proto, dp = "UDP", 53
            dst = "10.0.0.53"
            name = host
            q = base("dns", ts, fid, src, sp, dst, dp, proto)
            q["dns"] = {"version": 2, "type": "query", "id": rnd.getrandbits(16)}
            q["dns"] |= {"rrname": name, "rrtype": "A", "tx_id": 0, "opcode": 0}
            put(q)
            a = base("dns", ts + 0.01, fid, dst, dp, src, sp, proto)
            ip = f"{rnd.randint(1, 223)}.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}"
            a["dns"] = {
                "version": 2,
                "type": "answer",
                "id": q["dns"]["id"],
                "flags": "8180",
                "qr": True,
                "rd": True,
                "ra": True,
                "opcode": 0,
                "rrname": name,
                "rrtype": "A",
                "rcode": "NOERROR",
                "answers": [
                    {"rrname": name, "rrtype": "CNAME", "ttl": 300, "rdata": f"edge.{name}"},
                    {"rrname": f"edge.{name}", "rrtype": "A", "ttl": 60, "rdata": ip},
                ],
                "grouped": {"A": [ip], "CNAME": [f"edge.{name}"]},
            }
            put(a)
            app = "dns"
        elif r < 0.80:  # bare flow (no app-layer event): an observation of its own
            counts["observations"] += 1
        elif r < 0.90:  # fileinfo on a TLS-less HTTP-ish flow: not an observation, no flow
            d = base("fileinfo", ts, fid, dst, 80, src, sp, proto)
            d["fileinfo"] = {"filename": "/x.js", "gaps": False, "state": "CLOSED", "stored": False}
            d["fileinfo"] |= {"size": rnd.randint(100, 90000), "tx_id": 0}
            put(d)
            continue
        elif r < 0.95:  # alert
            d = base("alert", ts, fid, src, sp, dst, dp, proto)
            d["alert"] = {"action": "allowed", "gid": 1, "signature_id": 2013028, "rev": 7}
            d["alert"] |= {"signature": "ET POLICY curl User-Agent Outbound", "category": "x"}
            d["alert"] |= {"severity": 2, "metadata": {"created_at": ["2011_06_14"]}}
            put(d)
            continue
        elif r < 0.999:  # anomaly
            d = base("anomaly", ts, fid, src, sp, dst, dp, proto)
            d["anomaly"] = {"type": "stream", "event": "stream.pkt_invalid_ack", "code": 44}
            put(d)
            continue
        else:
            put({"timestamp": _iso(ts), "event_type": "stats", "stats": {"uptime": int(ts)}})
            continue
        late.append(
            (len(out) + rnd.randint(1, 200), flow_event(ts, fid, src, sp, dst, dp, proto, app))
        )
        late.sort(key=lambda x: x[0])
    for _i, line in late:
        out.append(line)
        counts["flow"] = counts.get("flow", 0) + 1
    data = ("\n".join(out) + "\n").encode()
    path.write_bytes(data)
    counts["lines"] = len(out)
    counts["bytes"] = len(data)
    return counts


# ----------------------------------------------------------------------------- timing


def timed(cmd: list[str], keep_stdout: bool = False) -> tuple[float, float | None, int, str]:
    """(seconds, peak RSS MB or None, exit code, stdout) of one command (stdout goes to
    /dev/null unless ``keep_stdout``)."""
    use_time = os.path.exists(GNU_TIME)
    full = [GNU_TIME, "-f", "%M", "-o", "/dev/stderr", *cmd] if use_time else cmd
    t0 = time.perf_counter()
    out = subprocess.PIPE if keep_stdout else subprocess.DEVNULL
    proc = subprocess.run(full, stdout=out, stderr=subprocess.PIPE, check=False)
    secs = time.perf_counter() - t0
    rss = None
    if use_time:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()
        if tail and tail[-1].strip().isdigit():
            rss = int(tail[-1]) / 1024
    return secs, rss, proc.returncode, (proc.stdout or b"").decode(errors="replace")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file", nargs="?", help="an eve.json (default: generate one)")
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1, help="keep the best of N runs")
    ap.add_argument("--only", default="jq,orjson,json,scan")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench_eve."))
    try:
        truth: dict[str, int] | None = None
        if args.file:
            path = Path(args.file)
        else:
            path = tmp / "eve.json"
            t0 = time.perf_counter()
            truth = generate(path, args.lines, args.seed)
            if not args.json:
                print(f"generated {path} ({truth['lines']:,} lines, {truth['bytes'] / 1e6:.1f} MB)"
                      f" in {time.perf_counter() - t0:.1f} s", file=sys.stderr)  # fmt: skip
        size = path.stat().st_size
        with open(path, "rb") as f:  # warm the page cache; count lines
            nlines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 22), b""))
        rows = []
        wanted = set(args.only.split(","))
        db = tmp / "bench.db"
        aw_cmd, _ = apiwatch_command(None)  # the command only: it runs in our environment
        cmds = {
            "jq": ("jq -r .tls.sni", ["jq", "-r", ".tls.sni", str(path)]),
            "orjson": (
                "collector (orjson)",
                [sys.executable, "-c", INNER.format(repo=str(REPO), path=str(path), std=False)],
            ),
            "json": (
                "collector (json)",
                [sys.executable, "-c", INNER.format(repo=str(REPO), path=str(path), std=True)],
            ),
            "scan": (
                "apiwatch scan",
                [*aw_cmd, "--db", str(db), "scan", str(path), "--egress-country", "CN"]
                + ["--json"],
            ),
        }
        env_ok = shutil.which("jq") is not None
        for key, (label, cmd) in cmds.items():
            if key not in wanted or (key == "jq" and not env_ok):
                continue
            best = None
            for _ in range(max(1, args.repeat)):
                if db.exists():
                    db.unlink()
                res = timed(cmd, keep_stdout=key in ("orjson", "json"))
                if best is None or res[0] < best[0]:
                    best = res
            secs, rss, code, out = best  # type: ignore[misc]
            row = {
                "tool": label,
                "ok": code in (0, 3),
                "exit_code": code,
                "seconds": round(secs, 3),
                "lines_per_s": round(nlines / secs) if secs else None,
                "mb_per_s": round(size / 1e6 / secs, 1) if secs else None,
                "peak_rss_mb": round(rss, 1) if rss else None,
            }
            if key in ("orjson", "json") and out.strip():
                info = json.loads(out.strip().splitlines()[-1])
                row["observations"] = info["observations"]
                row["parser"] = info["parser"]
                if truth is not None:
                    row["observations_match_truth"] = info["observations"] == truth["observations"]
            rows.append(row)
        jq = next((r for r in rows if r["tool"].startswith("jq")), None)
        for r in rows:
            if jq and jq["lines_per_s"] and r["lines_per_s"]:
                r["vs_jq"] = round(r["lines_per_s"] / jq["lines_per_s"], 2)
        result = {"file": str(path), "lines": nlines, "bytes": size, "truth": truth, "rows": rows}
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(f"{nlines:,} lines, {size / 1e6:.1f} MB")
            print("| tool | seconds | lines/s | MB/s | peak RSS MB | vs jq | notes |")
            print("|---|---:|---:|---:|---:|---:|---|")
            for r in rows:
                note = "" if r["ok"] else f"FAILED (exit {r['exit_code']})"
                if "observations" in r:
                    note += f"{r['observations']:,} observations ({r['parser']})"
                    if "observations_match_truth" in r:
                        note += ", = truth" if r["observations_match_truth"] else ", != TRUTH"
                print(
                    f"| {r['tool']} | {r['seconds']:.2f} | {r['lines_per_s']:,} | {r['mb_per_s']}"
                    f" | {r['peak_rss_mb']} | {r.get('vs_jq', '-')} | {note} |"
                )
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
