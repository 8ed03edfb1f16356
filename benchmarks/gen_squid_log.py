#!/usr/bin/env python3
"""Generate a realistic, deterministic Squid *native* access.log for benchmarks.

Format (Squid's default ``squid`` logformat)::

    %ts.%03tu %6tr %>a %Ss/%03>Hs %<st %rm %ru %[un %Sh/%<a %mt

e.g.::

    1732752000.123   5012 10.4.17.201 TCP_TUNNEL/200 6624 CONNECT api.openai.com:443 - HIER_DIRECT/162.159.140.245 -

Content: ~85% CONNECT host:443 tunnels, GET/POST/... with absolute ``http://`` URLs, hundreds
of clients (10.x plus a few public addresses), thousands of hosts over many TLDs, a few per
cent of lines to LLM API hosts (some of them ``TCP_DENIED/403``), timestamps non-decreasing
over about one day, and a configurable rate of malformed lines (truncated, glued, binary).

The same ``--seed`` and ``--lines`` always give the same bytes. Next to the log,
``<out>.truth.json`` records what was written (line counts, malformed lines by kind, LLM
lines per host) so a parser can be checked against it.

Speed: records (elapsed, request, verdict, bytes, upstream...) are drawn from precomputed
pools; per batch the random indices come from ``Random.randbytes`` and every line is
assembled by C-level ``map``/slice assignment and a single ``str.join``, so no Python code
runs per line. Expect well over 1 M lines/s for plain output on a laptop-class CPU.

Usage::

    python benchmarks/gen_squid_log.py -o /tmp/access.log --lines 2000000 --seed 1
    python benchmarks/gen_squid_log.py -o /tmp/access.log.gz --lines 100000
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import math
import operator
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ensure_parent, say, truth_path  # noqa: E402

DEFAULT_LINES = 2_000_000
DEFAULT_SEED = 1
DEFAULT_MALFORMED_RATE = 1e-5  # 1 line in 100,000
DEFAULT_START = 1732752000  # 2024-11-28T00:00:00Z
DAY_MS = 86_400_000
BATCH = 1 << 16
# Pool sizes are fixed: indices are drawn straight from random bytes (uint16 / uint8).
RECORD_POOL = 1 << 16  # distinct (elapsed, request...) records; small enough to stay in cache
CLIENT_POOL = 1 << 16  # weighted client draw table
INC_POOL = 1 << 8  # inter-arrival time quantiles
LLM_SHARE = 0.03  # default share of the record pool that goes to LLM API hosts

# host -> (weight within LLM traffic, share of lines denied by the proxy, upstream addresses)
LLM_HOSTS: dict[str, tuple[float, float, tuple[str, ...]]] = {
    "api.openai.com": (30, 0.08, ("162.159.140.245", "172.66.0.243")),
    "api.anthropic.com": (18, 0.08, ("160.79.104.10",)),
    "generativelanguage.googleapis.com": (10, 0.10, ("142.250.74.106", "2a00:1450:4001:82b::200a")),
    "chatgpt.com": (12, 0.15, ("104.18.32.47", "172.64.155.209")),
    "claude.ai": (8, 0.15, ("160.79.104.10",)),
    "api.deepseek.com": (6, 0.60, ("116.205.40.114", "116.205.40.120")),
    "openrouter.ai": (6, 0.20, ("104.18.2.115", "104.18.3.115")),
    "gateway.ai.cloudflare.com": (4, 0.05, ("104.18.4.70",)),
    "xyz.openai.azure.com": (4, 0.02, ("20.119.128.9",)),
    "acme-prod.openai.azure.com": (2, 0.02, ("20.62.58.4",)),
}
#: registrable domains nothing random may collide with (truth must stay exact)
LLM_DOMAINS = ("openai.com", "anthropic.com", "deepseek.com", "openrouter.ai", "claude.ai")

# Popular real hosts (heavy hitters). Includes near-misses of LLM hosts on purpose
# (other googleapis/cloudflare/azure names): they are NOT LLM traffic in the truth file.
POPULAR_HOSTS = (
    "www.google.com",
    "clients4.google.com",
    "update.googleapis.com",
    "www.googleapis.com",
    "safebrowsing.googleapis.com",
    "fonts.gstatic.com",
    "www.youtube.com",
    "i.ytimg.com",
    "login.microsoftonline.com",
    "outlook.office365.com",
    "teams.microsoft.com",
    "graph.microsoft.com",
    "management.azure.com",
    "settings-win.data.microsoft.com",
    "github.com",
    "api.github.com",
    "objects.githubusercontent.com",
    "slack.com",
    "edgeapi.slack.com",
    "zoom.us",
    "pypi.org",
    "files.pythonhosted.org",
    "registry.npmjs.org",
    "s3.amazonaws.com",
    "sts.amazonaws.com",
    "cdnjs.cloudflare.com",
    "www.cloudflare.com",
    "api.segment.io",
    "browser-intake-datadoghq.com",
    "incoming.telemetry.mozilla.org",
    "firefox.settings.services.mozilla.com",
    "www.bing.com",
    "edge.microsoft.com",
    "www.linkedin.com",
    "static.licdn.com",
    "www.wikipedia.org",
    "en.wikipedia.org",
    "docs.python.org",
    "stackoverflow.com",
)
# Plain-http hosts (package mirrors, OCSP, captive-portal checks) for GET lines.
HTTP_HOSTS = (
    "ocsp.digicert.com",
    "ocsp.pki.goog",
    "r3.o.lencr.org",
    "ctldl.windowsupdate.com",
    "detectportal.firefox.com",
    "connectivity-check.ubuntu.com",
    "archive.ubuntu.com",
    "security.ubuntu.com",
    "deb.debian.org",
    "security.debian.org",
    "download.docker.com",
    "dl.google.com",
    "crl3.digicert.com",
    "www.msftconnecttest.com",
)
TLDS = (
    ("com", 40),
    ("net", 8),
    ("org", 6),
    ("io", 5),
    ("ai", 2),
    ("dev", 2),
    ("app", 2),
    ("co", 2),
    ("de", 3),
    ("co.uk", 3),
    ("fr", 2),
    ("jp", 2),
    ("cn", 2),
    ("ru", 2),
    ("com.br", 1),
    ("in", 1),
    ("nl", 1),
    ("it", 1),
    ("es", 1),
    ("pl", 1),
    ("com.au", 1),
    ("ca", 1),
    ("ch", 1),
    ("se", 1),
    ("kr", 1),
    ("tw", 1),
    ("xyz", 1),
    ("info", 1),
    ("cloud", 1),
    ("tech", 1),
    ("me", 1),
    ("tv", 1),
    ("us", 1),
    ("eu", 1),
    ("be", 1),
    ("at", 1),
    ("cz", 1),
    ("fi", 1),
    ("no", 1),
    ("dk", 1),
    ("co.jp", 1),
    ("com.cn", 1),
    ("ir", 0.5),
    ("vn", 0.5),
    ("id", 0.5),
    ("mx", 0.5),
    ("ar", 0.5),
    ("za", 0.5),
)
SUBDOMAINS = (
    ("www", 30),
    ("", 15),
    ("api", 10),
    ("cdn", 6),
    ("static", 5),
    ("img", 3),
    ("login", 3),
    ("auth", 3),
    ("assets", 3),
    ("edge", 2),
    ("telemetry", 2),
    ("update", 2),
    ("mail", 2),
    ("m", 2),
    ("app", 3),
    ("eu-west-1.s3", 1),
    ("metrics", 1),
    ("ws", 1),
    ("files", 1),
)
SYLLABLES = (
    "ka",
    "lo",
    "mi",
    "ra",
    "te",
    "no",
    "vi",
    "su",
    "da",
    "pe",
    "zo",
    "an",
    "el",
    "or",
    "ix",
    "qu",
    "bra",
    "tri",
    "sto",
    "fle",
    "gra",
    "clo",
    "spa",
    "dri",
    "net",
    "soft",
    "data",
    "cloud",
    "hub",
    "ly",
    "fy",
    "io",
    "zen",
    "pro",
    "max",
    "go",
    "ex",
    "tek",
    "lab",
    "box",
)
USERS = ("alice", "bob", "carol", "dave", "svc-build", "jdoe@CORP.EXAMPLE", "mallory")
MIME_GET = (
    ("text/html", 30),
    ("application/json", 20),
    ("application/javascript", 10),
    ("image/png", 8),
    ("image/jpeg", 6),
    ("text/css", 5),
    ("application/octet-stream", 8),
    ("application/pkix-cert", 2),
    ("application/ocsp-response", 6),
    ("text/plain", 4),
    ("application/x-debian-package", 3),
    ("application/pgp-signature", 2),
)
# (Squid result code, HTTP status, weight) for non-CONNECT requests
GET_RESULTS = (
    ("TCP_MISS", 200, 55),
    ("TCP_HIT", 200, 6),
    ("TCP_MEM_HIT", 200, 4),
    ("TCP_REFRESH_UNMODIFIED", 304, 6),
    ("TCP_REFRESH_MODIFIED", 200, 3),
    ("TCP_MISS", 301, 4),
    ("TCP_MISS", 302, 5),
    ("TCP_MISS", 404, 6),
    ("TCP_MISS", 500, 1),
    ("TCP_MISS", 503, 1),
    ("TCP_MISS_ABORTED", 0, 2),
    ("TCP_DENIED", 403, 3),
    ("TCP_CLIENT_REFRESH_MISS", 200, 2),
    ("TCP_INM_HIT", 304, 2),
)
# Public client addresses (MaxMind GeoIP2 test-database ranges: GB, CN, SE, US, ...).
PUBLIC_CLIENTS = (
    "81.2.69.142",
    "81.2.69.160",
    "175.16.199.37",
    "89.160.20.112",
    "216.160.83.56",
    "2.125.160.216",
    "67.43.156.14",
)


@dataclass
class Pools:
    elapsed: list[str]  # "%6d " per record
    tail: list[str]  # "%Ss/%03>Hs %<st %rm %ru %[un %Sh/%<a %mt\n" per record
    host: list[str]  # destination host per record
    denied: list[bool]
    n_llm: int  # records [0, n_llm) go to LLM API hosts, the rest do not
    clients: list[str]  # weighted draw table, "addr " each
    incs: list[int]  # inter-arrival times in ms


def _public_ip(rng: random.Random) -> str:
    while True:
        a = rng.randint(1, 223)
        if a in (10, 100, 127, 169, 172, 192, 198, 203):
            continue
        return f"{a}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def _ipv6(rng: random.Random) -> str:
    head = rng.choice(("2606:4700", "2a00:1450", "2620:1ec", "2a03:2880", "2001:4860"))
    return f"{head}:{rng.randint(0, 0xFFFF):x}::{rng.randint(1, 0xFFFF):x}"


def _hostnames(rng: random.Random, n: int) -> list[str]:
    """``n`` distinct random but plausible host names over many TLDs."""
    out: set[str] = set()
    tlds = [t for t, _ in TLDS]
    tw = [w for _, w in TLDS]
    subs = [s for s, _ in SUBDOMAINS]
    sw = [w for _, w in SUBDOMAINS]
    while len(out) < n:
        word = "".join(rng.choices(SYLLABLES, k=rng.choice((2, 2, 3, 3, 4))))
        if rng.random() < 0.1:
            word += "-" + rng.choice(("cdn", "app", "group", "shop", "media", "labs", "tech"))
        if rng.random() < 0.05:
            word += str(rng.randint(1, 99))
        domain = f"{word}.{rng.choices(tlds, weights=tw)[0]}"
        sub = rng.choices(subs, weights=sw)[0]
        host = f"{sub}.{domain}" if sub else domain
        if any(host == d or host.endswith("." + d) for d in LLM_DOMAINS):
            continue
        out.add(host)
    return sorted(out)  # sorted: set order must not leak into the output


def _paths(rng: random.Random, n: int) -> list[str]:
    words = ("index", "main", "app", "vendor", "logo", "hero", "items", "search", "feed", "user")
    out = ["/", "/favicon.ico", "/robots.txt", "/success.txt", "/canonical.html"]
    while len(out) < n:
        kind = rng.randrange(7)
        w = rng.choice(words)
        if kind == 0:
            out.append(f"/static/js/{w}.{rng.getrandbits(32):08x}.js")
        elif kind == 1:
            out.append(f"/api/v{rng.randint(1, 3)}/{w}/{rng.randint(1, 99999)}")
        elif kind == 2:
            out.append(f"/images/{w}-{rng.randint(1, 500)}.png")
        elif kind == 3:
            out.append(f"/{w}?q={rng.getrandbits(24):x}&page={rng.randint(1, 20)}")
        elif kind == 4:
            pkg = rng.choice(("openssl", "curl", "libc6", "python3.11", "zlib1g", "git"))
            out.append(f"/ubuntu/pool/main/{pkg[0]}/{pkg}/{pkg}_{rng.randint(1, 9)}.deb")
        elif kind == 5:
            out.append(f"/MFEwTzBNMEswSTAJBgUrDgMCGgUABBQ{rng.getrandbits(40):x}")
        else:
            out.append(f"/{w}/{rng.getrandbits(16):x}.html")
    return out


def _lognormal_int(rng: random.Random, median: float, sigma: float, cap: int) -> int:
    return min(cap, int(rng.lognormvariate(math.log(median), sigma)))


def build_pools(rng: random.Random, lines: int, llm_share: float = LLM_SHARE) -> Pools:
    n_hosts = 6000
    random_hosts = _hostnames(rng, n_hosts)
    host_ip: dict[str, str] = {}
    for h in (*POPULAR_HOSTS, *HTTP_HOSTS, *random_hosts):
        host_ip[h] = _ipv6(rng) if rng.random() < 0.04 else _public_ip(rng)
    # Zipf-like popularity: popular hosts first, then the random ones.
    https_hosts = list(POPULAR_HOSTS) + random_hosts
    https_w = [1.0 / (i + 1) ** 0.9 for i in range(len(https_hosts))]
    http_hosts = list(HTTP_HOSTS) + random_hosts[:1500]
    http_w = [
        (8.0 if i < len(HTTP_HOSTS) else 1.0) / (i + 1) ** 0.5 for i in range(len(http_hosts))
    ]
    paths = _paths(rng, 600)
    llm_names = list(LLM_HOSTS)
    llm_w = [LLM_HOSTS[h][0] for h in llm_names]
    # cumulative weights once: rng.choices(weights=...) would re-sum them on every call
    https_cw = list(itertools.accumulate(https_w))
    http_cw = list(itertools.accumulate(http_w))
    llm_cw = list(itertools.accumulate(llm_w))
    get_results = [(c, s) for c, s, _ in GET_RESULTS]
    get_cw = list(itertools.accumulate(w for _, _, w in GET_RESULTS))
    mimes = [m for m, _ in MIME_GET]
    mime_cw = list(itertools.accumulate(w for _, w in MIME_GET))
    methods = ("GET", "POST", "HEAD", "PUT", "OPTIONS")
    method_cw = list(itertools.accumulate((80, 12, 5, 2, 1)))

    recs: list[tuple[bool, str, str, str, bool]] = []  # (not llm, elapsed, tail, host, denied)

    def user() -> str:
        return rng.choice(USERS) if rng.random() < 0.03 else "-"

    def add(el: int, host: str, t: str, is_llm: bool, is_denied: bool) -> None:
        recs.append((not is_llm, f"{el:6d} ", t, host, is_denied))

    for _ in range(RECORD_POOL):
        r = rng.random()
        to_llm = r < llm_share
        if not to_llm:  # the other traffic keeps its mix whatever the LLM share
            r = LLM_SHARE + (r - llm_share) / (1 - llm_share) * (1 - LLM_SHARE)
        if to_llm:
            host = rng.choices(llm_names, cum_weights=llm_cw)[0]
            _, deny_share, addrs = LLM_HOSTS[host]
            u = user()
            if rng.random() < deny_share:
                t = f"TCP_DENIED/403 {rng.randint(3800, 4100)} CONNECT {host}:443 {u} HIER_NONE/- text/html\n"
                add(rng.randint(0, 2), host, t, True, True)
            elif rng.random() < 0.02 and host in ("chatgpt.com", "claude.ai"):
                t = f"TCP_MISS/301 {rng.randint(300, 700)} GET http://{host}/ {u} HIER_DIRECT/{addrs[0]} text/html\n"
                add(rng.randint(20, 400), host, t, True, False)
            else:
                size = _lognormal_int(rng, 9000, 1.6, 400_000_000)
                t = f"TCP_TUNNEL/200 {size} CONNECT {host}:443 {u} HIER_DIRECT/{rng.choice(addrs)} -\n"
                add(_lognormal_int(rng, 4000, 1.5, 3_600_000), host, t, True, False)
        elif r < 0.82 + LLM_SHARE:
            host = rng.choices(https_hosts, cum_weights=https_cw)[0]
            u = user()
            port = 443 if rng.random() < 0.985 else rng.choice((8443, 5228, 993, 5223))
            target = f"{host}:{port}"
            if rng.random() < 0.01:  # CONNECT to an IP literal
                target = f"{_public_ip(rng)}:443"
            p = rng.random()
            if p < 0.03:
                t = f"TCP_DENIED/403 {rng.randint(3800, 4100)} CONNECT {target} {u} HIER_NONE/- text/html\n"
                add(rng.randint(0, 2), host, t, False, True)
            elif p < 0.035:
                t = f"NONE_NONE/503 0 CONNECT {target} {u} HIER_NONE/- -\n"
                add(rng.randint(0, 30), host, t, False, False)
            else:
                code = "TCP_TUNNEL_ABORTED" if rng.random() < 0.02 else "TCP_TUNNEL"
                size = _lognormal_int(rng, 6000, 1.8, 2_000_000_000)
                ip = host_ip.get(host) or target.rsplit(":", 1)[0]
                t = f"{code}/200 {size} CONNECT {target} {u} HIER_DIRECT/{ip} -\n"
                # a few very long tunnels overflow the 6-character padding
                el = _lognormal_int(rng, 3000, 1.9, 7_200_000)
                add(el, host, t, False, False)
        else:
            host = rng.choices(http_hosts, cum_weights=http_cw)[0]
            code, status = rng.choices(get_results, cum_weights=get_cw)[0]
            method = rng.choices(methods, cum_weights=method_cw)[0]
            url = f"http://{host}{rng.choice(paths)}"
            u = user()
            if code == "TCP_DENIED":
                t = f"TCP_DENIED/403 {rng.randint(3800, 4100)} {method} {url} {u} HIER_NONE/- text/html\n"
                add(rng.randint(0, 2), host, t, False, True)
                continue
            hier = "HIER_NONE/-" if "HIT" in code else f"HIER_DIRECT/{host_ip[host]}"
            size = 0 if status == 0 else _lognormal_int(rng, 2500, 1.7, 500_000_000)
            mime = "-" if status in (0, 304) else rng.choices(mimes, cum_weights=mime_cw)[0]
            t = f"{code}/{status:03d} {size} {method} {url} {u} {hier} {mime}\n"
            el = rng.randint(0, 3) if "HIT" in code else _lognormal_int(rng, 90, 1.3, 120_000)
            add(el, host, t, False, False)

    # Clients: ~600 internal 10.x addresses with Zipf-like activity plus a few public ones.
    internal = sorted(
        {f"10.{rng.randint(0, 40)}.{rng.randint(0, 255)}.{rng.randint(2, 254)}" for _ in range(600)}
    )
    rng.shuffle(internal)
    cand = internal + list(PUBLIC_CLIENTS)
    cw = [1.0 / (i + 1) ** 0.7 for i in range(len(internal))] + [0.02] * len(PUBLIC_CLIENTS)
    clients = [c + " " for c in rng.choices(cand, weights=cw, k=CLIENT_POOL)]

    # Inter-arrival times (ms): quantiles of an exponential law, rescaled so that N lines
    # span about one day; stochastic rounding keeps the mean.
    mean = DAY_MS / max(lines, 1)
    raw = [-math.log(1 - (i + 0.5) / INC_POOL) for i in range(INC_POOL)]
    scale = mean * INC_POOL / sum(raw)
    incs = [int(x * scale + rng.random()) for x in raw]

    recs.sort(key=operator.itemgetter(0))  # stable: LLM records first
    n_llm = sum(1 for r in recs if not r[0])
    return Pools(
        elapsed=[r[1] for r in recs],
        tail=[r[2] for r in recs],
        host=[r[3] for r in recs],
        denied=[r[4] for r in recs],
        n_llm=n_llm,
        clients=clients,
        incs=incs,
    )


def _malformed_line(rng: random.Random, pools: Pools, ts: str) -> tuple[str, str]:
    """One broken physical line (without the newline) and its kind."""

    def normal() -> str:
        i = rng.randrange(pools.n_llm, len(pools.tail))
        return f"{ts} {pools.elapsed[i]}{rng.choice(pools.clients)}{pools.tail[i]}"[:-1]

    kind = rng.choice(("truncated", "glued", "binary"))
    if kind == "truncated":
        line = normal()
        # cut somewhere before the user field so at least three fields are missing
        cut_max = max(12, len(" ".join(line.split(" ")[:-3])))
        return line[: rng.randint(10, cut_max)], kind
    if kind == "glued":
        return normal() + normal(), kind
    junk = bytes(rng.choice([b for b in range(256) if b != 10]) for _ in range(rng.randint(8, 160)))
    return junk.decode("utf-8", "surrogateescape"), kind


def _open_out(path: Path, gzip_level: int):
    if path.suffix == ".gz":
        return gzip.open(path, "wb", compresslevel=gzip_level)
    return open(path, "wb", buffering=1 << 20)  # noqa: SIM115


def generate(
    out: Path,
    lines: int = DEFAULT_LINES,
    seed: int = DEFAULT_SEED,
    malformed_rate: float = DEFAULT_MALFORMED_RATE,
    start: int = DEFAULT_START,
    gzip_level: int = 1,
    write_truth: bool = True,
    llm_share: float = LLM_SHARE,
) -> dict:
    """Write ``lines`` lines to ``out`` (gzip when it ends in .gz); return the truth dict."""
    rng = random.Random(seed)
    t0 = time.perf_counter()
    pools = build_pools(rng, lines, llm_share)
    t_pools = time.perf_counter() - t0

    # Positions of malformed lines (geometric gaps), drawn up front from their own stream.
    mrng = random.Random(f"{seed}-malformed")
    bad_at: list[int] = []
    if malformed_rate > 0:
        pos = -1
        while True:
            pos += 1 + int(mrng.expovariate(malformed_rate))
            if pos >= lines:
                break
            bad_at.append(pos)
    bad_iter = iter(bad_at)
    next_bad = next(bad_iter, lines)

    ms_strs = [f".{i:03d} " for i in range(1000)]
    el, tl, cl, inc = pools.elapsed, pools.tail, pools.clients, pools.incs
    mod, floordiv = operator.mod, operator.floordiv
    rep = itertools.repeat
    n_llm = pools.n_llm
    sentinel = RECORD_POOL  # index given to malformed lines: neither LLM nor a real record
    rec_counts: Counter[int] = Counter()  # LLM records only
    rec_seen: set[int] = set()
    client_seen: set[str] = set()
    n_pool_clients = len(set(cl))
    malformed_kinds: Counter[str] = Counter()
    now_ms = start * 1000
    first_ts = last_ts = None
    written = 0
    n_bytes = 0

    with _open_out(out, gzip_level) as fh:
        done = 0
        while done < lines:
            b = min(BATCH, lines - done)
            # RECORD_POOL == 2**16, so an unsigned short is a uniform record index
            idx = list(memoryview(rng.randbytes(2 * b)).cast("H"))
            cidx = memoryview(rng.randbytes(2 * b)).cast("H")
            gaps = map(inc.__getitem__, rng.randbytes(b))
            ms = list(itertools.accumulate(gaps, initial=now_ms))[1:]
            now_ms = ms[-1]
            clients = list(map(cl.__getitem__, cidx))
            flat: list[str] = [""] * (5 * b)
            flat[0::5] = map(str, map(floordiv, ms, rep(1000, b)))
            flat[1::5] = map(ms_strs.__getitem__, map(mod, ms, rep(1000, b)))
            flat[2::5] = map(el.__getitem__, idx)
            flat[3::5] = clients
            flat[4::5] = map(tl.__getitem__, idx)
            # Replace the lines chosen to be malformed (rare) and keep them out of the truth.
            while next_bad < done + b:
                k = next_bad - done
                ts = flat[5 * k] + flat[5 * k + 1][:-1]
                text, kind = _malformed_line(mrng, pools, ts)
                flat[5 * k : 5 * k + 5] = [text + "\n", "", "", "", ""]
                malformed_kinds[kind] += 1
                idx[k] = sentinel
                clients[k] = ""
                next_bad = next(bad_iter, lines)
            rec_counts.update(filter(n_llm.__gt__, idx))
            # distinct records/clients: stop looking once every one has been seen
            if len(rec_seen) < RECORD_POOL:
                rec_seen.update(idx)
                rec_seen.discard(sentinel)
            if len(client_seen) < n_pool_clients:
                client_seen.update(clients)
                client_seen.discard("")
            if first_ts is None:
                first_ts = ms[0] / 1000
            last_ts = ms[-1] / 1000
            data = "".join(flat).encode("utf-8", "surrogateescape")
            fh.write(data)
            n_bytes += len(data)
            done += b
            written += b

    elapsed_s = time.perf_counter() - t0
    llm_per_host: Counter[str] = Counter()
    denied_per_host: Counter[str] = Counter()
    for i, n in rec_counts.items():
        h = pools.host[i]
        llm_per_host[h] += n
        if pools.denied[i]:
            denied_per_host[h] += n
    hosts_seen = {pools.host[i] for i in rec_seen}
    n_bad = sum(malformed_kinds.values())
    truth = {
        "format": "squid-native",
        "logformat": "%ts.%03tu %6tr %>a %Ss/%03>Hs %<st %rm %ru %[un %Sh/%<a %mt",
        "generator": "benchmarks/gen_squid_log.py",
        "seed": seed,
        "lines": written,
        "well_formed": written - n_bad,
        "malformed": n_bad,
        "malformed_by_kind": dict(sorted(malformed_kinds.items())),
        "malformed_rate": malformed_rate,
        "llm_lines": sum(llm_per_host.values()),
        "llm_lines_per_host": dict(sorted(llm_per_host.items())),
        "llm_denied_per_host": dict(sorted(denied_per_host.items())),
        "distinct_hosts": len(hosts_seen),
        "distinct_clients": len(client_seen),
        "first_ts": first_ts,
        "last_ts": last_ts,
        "uncompressed_bytes": n_bytes,
        "file_bytes": out.stat().st_size,
        "seconds": round(elapsed_s, 3),
        "seconds_pools": round(t_pools, 3),
        "lines_per_s": round(written / elapsed_s) if elapsed_s > 0 else None,
        "notes": (
            "Malformed lines are built from non-LLM records and are never counted as LLM "
            "lines; a 'glued' line holds two records on one physical line."
        ),
    }
    if write_truth:
        truth_path(out).write_text(json.dumps(truth, indent=2) + "\n")
    return truth


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", required=True, type=Path, help="log file (.gz => gzip)")
    ap.add_argument("--lines", type=int, default=DEFAULT_LINES, help="number of lines")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument(
        "--malformed-rate",
        type=float,
        default=DEFAULT_MALFORMED_RATE,
        help="share of malformed lines (default 1e-5 = 1 in 100k; 0 for none)",
    )
    ap.add_argument("--start", type=int, default=DEFAULT_START, help="first timestamp (epoch s)")
    ap.add_argument("--gzip-level", type=int, default=1, help="compression level for .gz")
    ap.add_argument(
        "--llm-share",
        type=float,
        default=LLM_SHARE,
        help=f"share of records that go to LLM API hosts (default {LLM_SHARE}; 0.25 for a "
        "developer-heavy proxy)",
    )
    ap.add_argument("--no-truth", action="store_true", help="do not write <out>.truth.json")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.lines < 0:
        ap.error("--lines must be >= 0")
    if not 0 <= args.malformed_rate < 1:
        ap.error("--malformed-rate must be in [0, 1)")
    if not 0 < args.llm_share < 1:
        ap.error("--llm-share must be in (0, 1)")
    out = args.output
    ensure_parent(out)
    truth = generate(
        out,
        lines=args.lines,
        seed=args.seed,
        malformed_rate=args.malformed_rate,
        start=args.start,
        gzip_level=args.gzip_level,
        write_truth=not args.no_truth,
        llm_share=args.llm_share,
    )
    if not args.quiet:
        mb = truth["uncompressed_bytes"] / 1e6
        say(
            f"wrote {truth['lines']:,} lines ({mb:,.1f} MB uncompressed) to {out} in "
            f"{truth['seconds']:.2f} s ({truth['lines_per_s'] or 0:,} lines/s); "
            f"{truth['llm_lines']:,} LLM lines, {truth['malformed']} malformed"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
