"""Real LLM SDK clients and common HTTP clients, captured on loopback: how the JA4 values of
``rules/clients.yaml`` (``tls_clients``) were measured, and how the tests check them.

Each client runs in its own process against its own local TLS server (127.0.0.1, a
self-signed certificate for ``localhost`` trusted through the client's usual environment
variable, so that its TLS settings stay its defaults), under tcpdump on ``lo``; apiwatch
reads the capture, and tshark's dissection of each ClientHello gives an independent JA4
(tshark < 4.2 has no ``ja4`` field: :func:`tshark_ja4` computes it from tshark's fields).
A JA4 names the TLS library and its version and settings, not the program: run this where
the versions differ and the values may too.

    python3 -m tests.sdk_clients            # prints the table recorded in rules/clients.yaml
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.pcaps import parse_capture
from tests.test_real_capture import _Server, _start_tcpdump, _stop_tcpdump

#: client -> (what runs it, the packages whose versions say what was measured)
CLIENTS: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "openai": (
        [sys.executable, "-c",
         "import openai, sys\n"
         "c = openai.OpenAI(api_key='sk-test', base_url=sys.argv[1] + '/v1', max_retries=0)\n"
         "try:\n    c.models.list()\nexcept Exception:\n    pass"],
        ("openai", "httpx"),
    ),
    "anthropic": (
        [sys.executable, "-c",
         "import anthropic, sys\n"
         "c = anthropic.Anthropic(api_key='sk-test', base_url=sys.argv[1], max_retries=0)\n"
         "try:\n    c.models.list()\nexcept Exception:\n    pass"],
        ("anthropic", "httpx"),
    ),
    "google-genai": (
        [sys.executable, "-c",
         "import sys\nfrom google import genai\nfrom google.genai import types\n"
         "c = genai.Client(api_key='test', http_options=types.HttpOptions("
         "base_url=sys.argv[1] + '/', retry_options=types.HttpRetryOptions(attempts=1)))\n"
         "try:\n    next(iter(c.models.list()), None)\nexcept Exception:\n    pass"],
        ("google-genai", "httpx"),
    ),
    "requests": (
        [sys.executable, "-c",
         "import requests, sys\n"
         "try:\n    requests.get(sys.argv[1] + '/v1/models', timeout=10)\n"
         "except Exception:\n    pass"],
        ("requests", "urllib3"),
    ),
    "curl": (["curl", "-s", "-o", "/dev/null", "--max-time", "10"], ()),
    # Node's built-in fetch (undici): what the OpenAI and Anthropic TypeScript SDKs call
    "node-fetch": (
        ["node", "-e",
         "fetch(process.argv[1] + '/v1/models').then(r => r.text()).catch(() => {})"],
        (),
    ),
}  # fmt: skip
_URL_LAST = {"curl": "/v1/models"}  # appended to the URL where the client takes a full URL


def available(name: str) -> str | None:
    """Why ``name`` cannot run here (None: it can)."""
    cmd, packages = CLIENTS[name]
    if cmd[0] != sys.executable:
        return None if shutil.which(cmd[0]) else f"{cmd[0]} is not installed"
    for pkg in packages:
        try:
            importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return f"the {pkg} package is not installed"
    return None


def versions(name: str) -> dict[str, str]:
    """What was measured: the client's packages, Python and its OpenSSL (or curl's -V)."""
    cmd, packages = CLIENTS[name]
    if cmd[0] == "node":
        out = subprocess.run(
            ["node", "-p", "process.version + ' OpenSSL ' + process.versions.openssl"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        return {"node": out.stdout.strip()}
    if cmd[0] != sys.executable:
        out = subprocess.run([cmd[0], "--version"], capture_output=True, text=True, timeout=10)
        return {cmd[0]: out.stdout.splitlines()[0] if out.stdout else "?"}
    found = {pkg: importlib.metadata.version(pkg) for pkg in packages}
    found["python"] = ".".join(map(str, sys.version_info[:3]))
    found["tls"] = ssl.OPENSSL_VERSION
    return found


def make_cert(tmp: Path) -> tuple[Path, Path]:
    """A self-signed P-256 certificate for ``localhost`` (key, certificate)."""
    key, crt = tmp / "key.pem", tmp / "crt.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return key, crt


def user_agents(server: _Server) -> list[str]:
    """The User-Agent of each request ``server`` answered."""
    out = []
    for head in server.heads:
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"user-agent":
                out.append(value.strip().decode("latin-1"))
    return out


@dataclass
class Measured:
    client: str
    port: int
    ja4: list[str]  # apiwatch's, one per ClientHello seen
    tshark_ja4: list[str]  # computed from tshark's dissection of the same ClientHellos
    user_agents: list[str]
    versions: dict[str, str]


def measure(tmp: Path, names: list[str]) -> dict[str, Measured]:
    """Run the clients ``names`` under tcpdump on ``lo``; each one's ClientHellos as
    apiwatch and tshark read them."""
    key, crt = make_cert(tmp)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    servers = {name: _Server(0, ctx, b"{}") for name in names}
    cap = tmp / "sdk-clients.pcap"
    env = {
        **os.environ,
        "SSL_CERT_FILE": str(crt),
        "REQUESTS_CA_BUNDLE": str(crt),
        "NODE_EXTRA_CA_CERTS": str(crt),
    }
    dump = _start_tcpdump(cap, [s.port for s in servers.values()])
    try:
        for name, srv in servers.items():
            cmd = list(CLIENTS[name][0])
            url = f"https://localhost:{srv.port}"
            if cmd[0] == "curl":
                cmd += ["--cacert", str(crt)]
            subprocess.run(
                [*cmd, url + _URL_LAST.get(name, "")], env=env, timeout=60, check=False,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        time.sleep(0.5)  # tcpdump -U writes each packet at once; leave time for the last
    finally:
        _stop_tcpdump(dump)
        for srv in servers.values():
            srv.close()
    obs, _diag, _ = parse_capture(cap)
    theirs = tshark_ja4(cap)
    out = {}
    for name, srv in servers.items():
        mine = [o.ja4 for o in obs if o.dest_port == srv.port and o.ja4]
        out[name] = Measured(
            name, srv.port, mine, theirs.get(srv.port, []), user_agents(srv), versions(name)
        )
    return out


# --- an independent JA4: from tshark's dissection --------------------------------------------

_TSHARK_FIELDS = (
    "tcp.dstport",
    "tls.handshake.version",
    "tls.handshake.extensions.supported_version",
    "tls.handshake.extensions_server_name",
    "tls.handshake.ciphersuite",
    "tls.handshake.extension.type",
    "tls.handshake.extensions_alpn_str",
    "tls.handshake.sig_hash_alg",
)
_GREASE = {0x0A0A + 0x1010 * i for i in range(16)}
_VERSIONS = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3"}


def tshark_ja4(cap: Path) -> dict[int, list[str]]:
    """server port -> JA4 of each ClientHello, computed per the JA4 specification
    (github.com/FoxIO-LLC/ja4, technical_details/JA4.md) from the values tshark dissects."""
    cmd = ["tshark", "-r", str(cap), "-Y", "tls.handshake.type == 1", "-T", "fields",
           "-E", "separator=/t", "-E", "aggregator=,", "-E", "occurrence=a"]  # fmt: skip
    for f in _TSHARK_FIELDS:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    found: dict[int, list[str]] = {}
    for line in out.splitlines():
        port, version, supported, sni, ciphers, exts, alpn, sigs = (line.split("\t") + [""] * 8)[:8]

        def nums(text: str) -> list[int]:
            return [int(v, 16) if v.startswith("0x") else int(v) for v in text.split(",") if v]

        ciphers_n = [c for c in nums(ciphers) if c not in _GREASE]
        exts_n = [e for e in nums(exts) if e not in _GREASE]
        sup = [v for v in nums(supported) if v not in _GREASE]
        ver = _VERSIONS.get(max(sup) if sup else nums(version)[0], "00")
        first = alpn.split(",")[0] if alpn else ""
        alpn_code = first[0] + first[-1] if first else "00"
        a = f"t{ver}{'d' if sni else 'i'}{min(len(ciphers_n), 99):02d}"
        a += f"{min(len(exts_n), 99):02d}{alpn_code}"
        b = _hash(",".join(f"{c:04x}" for c in sorted(ciphers_n)))
        rest = ",".join(f"{e:04x}" for e in sorted(e for e in exts_n if e not in (0x0000, 0x0010)))
        sig = ",".join(f"{s:04x}" for s in nums(sigs))
        c = _hash(rest + ("_" + sig if sig else ""))
        found.setdefault(int(port), []).append(f"{a}_{b}_{c}")
    return found


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12] if text else "000000000000"


def main() -> None:  # pragma: no cover - the measurement run recorded in rules/clients.yaml
    import tempfile

    names = [n for n in CLIENTS if available(n) is None]
    with tempfile.TemporaryDirectory() as tmp:
        results = measure(Path(tmp), names)
    for m in results.values():
        print(json.dumps(m.__dict__, sort_keys=True))


if __name__ == "__main__":
    main()
