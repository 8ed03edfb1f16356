"""A real Squid on loopback, with local origins, for end-to-end tests of the Squid collector.

Everything here listens on 127.0.0.0/8 only, every request is bounded in count and time,
and everything stops by itself when the context manager exits:

* a TLS origin and a plain-HTTP origin (``http.server`` in threads) on 127.0.0.2
  (127.0.0.1 when 127.0.0.2 cannot be bound), with a throw-away certificate from
  ``openssl req -x509`` whose SANs name the provider hosts;
* ``squid -N`` in the foreground, with a ``hosts_file`` that maps the provider host names to
  the origin and ``dns_nameservers 127.0.0.1`` so no name ever leaves the machine, no cache,
  one ``http_access deny`` so a ``TCP_DENIED/403`` line appears, and one access log per
  format (native ``squid``, ``common``, ``combined`` and the custom :data:`CUSTOM_LOGFORMAT`).

Usage::

    with squid_proxy(tmp_path) as proxy:
        proxy.curl("https://api.openai.com:{tls}/v1/models")
        proxy.urllib("http://api.anthropic.com:{http}/v1/messages", data=b"{}")
    proxy.logs["native"]   # Path of the access.log copied into tmp_path, complete
    proxy.sent             # what was sent, as Squid is expected to log it (ground truth)

``{tls}`` and ``{http}`` in URLs are replaced with the origins' ports. Call
:func:`require_real_tools` first: it skips when a tool is missing, and fails under ``CI``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

#: Host names the proxy resolves (through its hosts_file) to the local origins.
MAPPED_HOSTS = (
    "api.openai.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
    "openrouter.ai",
    "api.deepseek.com",
    "blocked.deepseek.com",
    "notopenai.com",
    "cdn.example.org",  # a name in no catalogue (fronted traffic, tests/test_squid_fronted.py)
)
#: Requests for this host are refused by ``http_access deny`` (dstdomain ACL).
DENIED_HOST = "blocked.deepseek.com"
#: Name and format of the custom access log (Squid's native layout plus client port and
#: request size: ``%>p`` and ``%>st``).
CUSTOM_LOGFORMAT_NAME = "apiw"
CUSTOM_LOGFORMAT = "%ts.%03tu %6tr %>a %>p %Ss/%03>Hs %<st %>st %rm %ru %un %Sh/%<a %mt"
#: access_log variants written, and their file names.
LOG_FILES = {
    "native": "access.log",
    "common": "access-common.log",
    "combined": "access-combined.log",
    "custom": "access-custom.log",
}
#: The logformat name Squid knows each variant by.
SQUID_FORMAT_NAMES = {
    "native": "squid",
    "common": "common",
    "combined": "combined",
    "custom": CUSTOM_LOGFORMAT_NAME,
}
SQUID_CANDIDATES = ("squid", "/usr/sbin/squid", "/usr/local/sbin/squid")

START_TIMEOUT = 20.0  # seconds for Squid to accept connections
STOP_TIMEOUT = 10.0  # seconds for Squid to exit after SIGTERM
REQUEST_TIMEOUT = 10  # seconds per request through the proxy
MAX_REQUESTS = 100  # a harness never sends more than this
MAX_LIFETIME = 600  # seconds: Squid is killed after this whatever happens to the test run


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def find_squid() -> str | None:
    for cand in SQUID_CANDIDATES:
        found = shutil.which(cand)
        if found:
            return found
    return None


def require_real_tools() -> str:
    """Return the squid binary; skip (locally) or fail (``CI`` set) when a tool is missing."""
    squid = find_squid()
    missing = [
        name
        for name, path in (
            ("squid", squid),
            ("curl", shutil.which("curl")),
            ("openssl", shutil.which("openssl")),
        )
        if not path
    ]
    if missing:
        reason = f"real-tool test needs {', '.join(missing)} (apt-get install squid curl openssl)"
        if in_ci():
            pytest.fail(f"{reason}; CI is set, so this test must run", pytrace=False)
        pytest.skip(reason)
    assert squid is not None
    return squid


# --------------------------------------------------------------------------------------------
# ground truth


@dataclass(frozen=True)
class SentRequest:
    """One request driven through the proxy, as Squid is expected to log it."""

    label: str
    tool: str  # "curl" or "urllib"
    url: str  # what the client asked for
    method: str  # as Squid logs it: "CONNECT" for https, else the HTTP method
    request_method: str  # the HTTP method of the request itself (inside the tunnel for https)
    host: str
    port: int
    status: int  # HTTP status Squid logs (the CONNECT answer for https)
    host_source: str  # "connect" or "url"
    denied: bool
    body_len: int  # request body bytes sent
    client_port: int  # local port of the client's connection to Squid
    origin_status: int | None  # status the client finally saw from the origin (None if denied)


@dataclass(frozen=True)
class OriginHit:
    scheme: str
    method: str
    host_header: str
    path: str
    body_len: int


class _OriginHandler(BaseHTTPRequestHandler):
    server_version = "apiwatch-test-origin/1"
    protocol_version = "HTTP/1.1"
    timeout = REQUEST_TIMEOUT

    def setup(self) -> None:
        ctx = getattr(self.server, "tls_context", None)
        if ctx is not None:  # handshake in the per-connection thread, never the accept loop
            self.request.settimeout(REQUEST_TIMEOUT)
            self.request = ctx.wrap_socket(self.request, server_side=True)
        super().setup()

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        hit = OriginHit(
            "https" if getattr(self.server, "tls_context", None) else "http",
            self.command,
            self.headers.get("Host", ""),
            self.path,
            len(body),
        )
        self.server.hits.append(hit)  # type: ignore[attr-defined]
        payload = json.dumps({"ok": True, "path": self.path, "received": len(body)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        return


class _Origin(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], tls_context: ssl.SSLContext | None):
        self.tls_context = tls_context
        self.hits: list[OriginHit] = []
        super().__init__(addr, _OriginHandler)


def _start_origin(ip: str, tls_context: ssl.SSLContext | None) -> _Origin:
    server = _Origin((ip, 0), tls_context)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    ).start()
    return server


def _origin_ip() -> str:
    """127.0.0.2 when it can be bound (a different address from Squid's), else 127.0.0.1."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.2", 0))
        except OSError:
            return "127.0.0.1"
    return "127.0.0.2"


def _free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """Self-signed EC certificate naming every mapped host; returns (cert, key)."""
    cert, key = directory / "origin.crt", directory / "origin.key"
    san = ",".join(f"DNS:{h}" for h in MAPPED_HOSTS) + ",IP:127.0.0.1,IP:127.0.0.2"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=apiwatch-test-origin", "-addext",
         f"subjectAltName={san}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


def squid_conf(
    workdir: Path,
    proxy_port: int,
    tls_port: int,
    http_port: int,
    effective_user: str | None,
    include: Path | None = None,
) -> str:
    logs = "\n".join(
        f"access_log stdio:{workdir / name} {SQUID_FORMAT_NAMES[v]}"
        for v, name in LOG_FILES.items()
    )
    user = f"cache_effective_user {effective_user}" if effective_user else ""
    return f"""\
# written by tests/squid_harness.py: loopback only, no cache, no DNS beyond hosts_file
http_port 127.0.0.1:{proxy_port}
{user}
pid_filename {workdir / "squid.pid"}
cache_log {workdir / "cache.log"}
coredump_dir {workdir}
netdb_filename none
cache_store_log none
pinger_enable off
cache deny all
cache_mem 8 MB
shutdown_lifetime 0 seconds
connect_timeout 5 seconds
read_timeout 15 seconds
hosts_file {workdir / "hosts"}
dns_nameservers 127.0.0.1
dns_timeout 5 seconds
buffered_logs off
logformat {CUSTOM_LOGFORMAT_NAME} {CUSTOM_LOGFORMAT}
{logs}

acl SSL_ports port {tls_port}
acl Safe_ports port {http_port} {tls_port}
acl CONNECT method CONNECT
acl denied_host dstdomain {DENIED_HOST}
http_access deny !Safe_ports
http_access deny CONNECT !SSL_ports
http_access deny denied_host
{f"include {include}" if include else ""}
http_access allow localhost
http_access deny all
"""


# --------------------------------------------------------------------------------------------
# the running proxy


@dataclass
class SquidProxy:
    squid: str
    workdir: Path  # Squid's own directory (world-traversable, removed on exit)
    results: Path  # where logs are copied on exit (the caller's tmp_path)
    origin_ip: str
    proxy_port: int
    tls_port: int
    http_port: int
    cacert: Path
    sent: list[SentRequest] = field(default_factory=list)
    bare_connections: list[int] = field(default_factory=list)  # client ports, see below
    logs: dict[str, Path] = field(default_factory=dict)  # filled on exit
    started: float = 0.0
    stopped: float = 0.0
    process: subprocess.Popen | None = None
    origins: list[_Origin] = field(default_factory=list)
    denied_hosts: frozenset[str] = frozenset({DENIED_HOST})  # what the config refuses

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def origin_hits(self) -> list[OriginHit]:
        return [hit for origin in self.origins for hit in origin.hits]

    def _url(self, template: str) -> str:
        return template.format(tls=self.tls_port, http=self.http_port)

    def _record(self, label: str, tool: str, url: str, method: str, body_len: int,
                client_port: int, origin_status: int | None, connect_status: int | None
                ) -> SentRequest:  # fmt: skip
        if len(self.sent) >= MAX_REQUESTS:
            raise RuntimeError(f"harness request budget ({MAX_REQUESTS}) exhausted")
        parts = urllib.parse.urlsplit(url)
        host = (parts.hostname or "").lower()
        tunnel = parts.scheme == "https"
        denied = host in self.denied_hosts
        status = 403 if denied else 200
        seen = connect_status if tunnel else origin_status
        if seen is not None and seen != status:
            raise AssertionError(f"{label}: proxy answered {seen}, expected {status} for {url}")
        req = SentRequest(
            label=label,
            tool=tool,
            url=url,
            method="CONNECT" if tunnel else method,
            request_method=method,
            host=host,
            port=parts.port or (443 if tunnel else 80),
            status=status,
            host_source="connect" if tunnel else "url",
            denied=denied,
            body_len=body_len,
            client_port=client_port,
            origin_status=None if denied else origin_status,
        )
        self.sent.append(req)
        return req

    def curl(self, url: str, *, method: str = "GET", data: bytes | None = None,
             label: str | None = None) -> SentRequest:  # fmt: skip
        """One request with curl through the proxy (own connection, exact client port)."""
        url = self._url(url)
        cmd = ["curl", "-sS", "--noproxy", "", "--proxy", self.proxy_url, "--cacert",
               str(self.cacert), "--max-time", str(REQUEST_TIMEOUT), "-o", os.devnull,
               "-w", "%{http_code} %{http_connect} %{local_port}", "-X", method]  # fmt: skip
        if data is not None:
            cmd += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
        proc = subprocess.run(
            [*cmd, url], input=data or b"", capture_output=True, timeout=REQUEST_TIMEOUT + 5
        )
        fields_ = proc.stdout.decode().split()
        if len(fields_) != 3:
            raise AssertionError(f"curl {url}: unexpected output {proc.stdout!r} {proc.stderr!r}")
        code, connect, port = (int(x) for x in fields_)
        if _scheme(url) == "http" and proc.returncode != 0:
            raise AssertionError(f"curl {url} failed ({proc.returncode}): {proc.stderr!r}")
        return self._record(label or f"curl {method} {url}", "curl", url, method,
                            len(data or b""), port, code or None, connect or None)  # fmt: skip

    def urllib(self, url: str, *, method: str | None = None, data: bytes | None = None,
               label: str | None = None) -> SentRequest:  # fmt: skip
        """One request with ``urllib.request`` and an explicit ``ProxyHandler``."""
        url = self._url(url)
        method = method or ("POST" if data is not None else "GET")
        ctx = ssl.create_default_context(cafile=str(self.cacert))
        ports: list[int] = []
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({"http": self.proxy_url, "https": self.proxy_url}),
            _PortRecordingHTTPHandler(ports),
            _PortRecordingHTTPSHandler(ports, context=ctx),
        )
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        origin_status = connect_status = None
        try:
            with opener.open(req, timeout=REQUEST_TIMEOUT) as resp:
                resp.read()
                origin_status = resp.status
                if _scheme(url) == "https":
                    connect_status = 200  # the tunnel was set up, or we could not be here
        except urllib.error.HTTPError as exc:  # a plain-HTTP denial
            origin_status = exc.code
        except OSError as exc:  # http.client: "Tunnel connection failed: 403 Forbidden"
            text = str(exc)
            if "Tunnel connection failed" not in text:
                raise
            connect_status = int(text.split("failed:", 1)[1].split()[0])
        if len(ports) != 1:
            raise AssertionError(f"urllib {url}: {len(ports)} connections to the proxy, not 1")
        return self._record(label or f"urllib {method} {url}", "urllib", url, method,
                            len(data or b""), ports[0], origin_status, connect_status)  # fmt: skip

    def bare_connection(self) -> int:
        """Connect to the proxy and close without a request, as health checks and port
        probes do. Squid logs it as ``NONE_NONE/000 ... error:transaction-end-before-headers``.
        Returns the client port."""
        if len(self.sent) + len(self.bare_connections) >= MAX_REQUESTS:
            raise RuntimeError(f"harness request budget ({MAX_REQUESTS}) exhausted")
        with socket.create_connection(("127.0.0.1", self.proxy_port), timeout=5) as s:
            port = s.getsockname()[1]
        self.bare_connections.append(port)
        return port

    @property
    def expected_lines(self) -> int:
        return len(self.sent) + len(self.bare_connections)

    def wait_for_log_lines(self, timeout: float = 5.0) -> None:
        """Until every access log holds one line per connection (Squid logs unbuffered)."""
        deadline = time.monotonic() + timeout
        while True:
            counts = {v: _count_lines(self.workdir / n) for v, n in LOG_FILES.items()}
            if all(c >= self.expected_lines for c in counts.values()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"Squid logged {counts}, expected {self.expected_lines} each")
            time.sleep(0.05)


def _port_recording(base: type[http.client.HTTPConnection], ports: list[int]) -> type:
    """A connection class that notes the local port of each socket it opens (to the proxy)."""

    class Connection(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            create = self._create_connection

            def create_and_note(*a, **kw):
                sock = create(*a, **kw)
                ports.append(sock.getsockname()[1])
                return sock

            self._create_connection = create_and_note

    return Connection


class _PortRecordingHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, ports: list[int]):
        super().__init__()
        self._conn = _port_recording(http.client.HTTPConnection, ports)

    def http_open(self, req):
        return self.do_open(self._conn, req)


class _PortRecordingHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, ports: list[int], context: ssl.SSLContext):
        super().__init__(context=context)
        self._conn = _port_recording(http.client.HTTPSConnection, ports)
        self._ctx = context

    def https_open(self, req):
        return self.do_open(self._conn, req, context=self._ctx)


def _scheme(url: str) -> str:
    return urllib.parse.urlsplit(url).scheme


def _count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _effective_user() -> str | None:
    """Squid started by root drops to this user; None when not root (Squid keeps ours)."""
    if os.geteuid() != 0:
        return None
    for name in ("proxy", "squid", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root but no unprivileged user for Squid")


def _wait_listening(proxy: SquidProxy) -> None:
    """Until Squid says it accepts connections on our port. Readiness is read from cache.log
    rather than probed with a connection, which Squid would log as a request line
    (``NONE_NONE/000 ... error:transaction-end-before-headers``)."""
    deadline = time.monotonic() + START_TIMEOUT
    assert proxy.process is not None
    ready = f"local=127.0.0.1:{proxy.proxy_port} ".encode()
    while time.monotonic() < deadline:
        if proxy.process.poll() is not None:
            raise AssertionError(f"squid exited with {proxy.process.returncode}:\n{_diag(proxy)}")
        with contextlib.suppress(OSError):
            for line in (proxy.workdir / "cache.log").read_bytes().splitlines():
                if b"Accepting HTTP Socket connections" in line and ready in line + b" ":
                    return
        time.sleep(0.05)
    raise AssertionError(f"squid did not listen within {START_TIMEOUT}s:\n{_diag(proxy)}")


def _diag(proxy: SquidProxy) -> str:
    out = []
    for name in ("squid.out", "cache.log"):
        with contextlib.suppress(OSError):
            out.append(f"--- {name}\n" + (proxy.workdir / name).read_text(errors="replace")[-4000:])
    return "\n".join(out)


def _stop_squid(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    # What `squid -k shutdown` sends (timeout(1), when used, passes it on); lifetime is 0 s.
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(STOP_TIMEOUT)


@contextlib.contextmanager
def squid_proxy(
    results: Path,
    squid: str | None = None,
    include: str | None = None,
    denied: frozenset[str] = frozenset(),
) -> Iterator[SquidProxy]:
    """Run origins and Squid for the duration of the block; logs land in ``results``.
    ``include`` is configuration text (an exported ACL file) included after the harness's own
    deny lines; ``denied`` names the hosts it refuses, which the harness then expects."""
    squid = squid or require_real_tools()
    results.mkdir(parents=True, exist_ok=True)
    # Squid (as the proxy user) must reach its files: pytest's basetemp is 0700, so use a
    # directory of our own under the system temp dir and copy the logs out at the end.
    workdir = Path(tempfile.mkdtemp(prefix="apiwatch-squid-"))
    origins: list[_Origin] = []
    proc: subprocess.Popen | None = None
    proxy: SquidProxy | None = None
    try:
        workdir.chmod(0o755)
        cert, key = make_certificate(workdir)
        ip = _origin_ip()
        tls_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls_ctx.load_cert_chain(cert, key)
        origins.append(_start_origin(ip, tls_ctx))
        origins.append(_start_origin(ip, None))
        tls_port, http_port = (o.server_address[1] for o in origins)
        proxy_port = _free_port("127.0.0.1")
        user = _effective_user()
        (workdir / "hosts").write_text("".join(f"{ip} {h}\n" for h in MAPPED_HOSTS))
        included = None
        if include is not None:
            included = workdir / "included.conf"
            included.write_text(include)
        conf = workdir / "squid.conf"
        conf.write_text(squid_conf(workdir, proxy_port, tls_port, http_port, user, included))
        if user:  # Squid writes its logs and pid file here after dropping privileges
            pw = pwd.getpwnam(user)
            os.chown(workdir, pw.pw_uid, pw.pw_gid)
        proxy = SquidProxy(squid, workdir, results, ip, proxy_port, tls_port, http_port, cert,
                           origins=origins, denied_hosts=frozenset({DENIED_HOST, *denied}))  # fmt: skip
        with open(workdir / "squid.out", "wb") as out:
            # Under coreutils' timeout, so Squid ends even if this process is killed.
            cap = ["timeout", "-k", "5", str(MAX_LIFETIME)] if shutil.which("timeout") else []
            proc = subprocess.Popen(
                [*cap, squid, "-N", "-f", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                start_new_session=True,
            )
        proxy.process = proc
        _wait_listening(proxy)
        proxy.started = time.time()
        yield proxy
        proxy.wait_for_log_lines()
    finally:
        if proc is not None:
            _stop_squid(proc)
        if proxy is not None:
            proxy.stopped = time.time()
        for origin in origins:
            origin.shutdown()
            origin.server_close()
        for variant, name in LOG_FILES.items():
            src = workdir / name
            if src.exists():
                shutil.copyfile(src, results / name)
                if proxy is not None:
                    proxy.logs[variant] = results / name
        for name in ("squid.conf", "included.conf", "cache.log", "squid.out", "hosts"):
            with contextlib.suppress(OSError):
                shutil.copyfile(workdir / name, results / name)
        shutil.rmtree(workdir, ignore_errors=True)


def drive_standard_traffic(proxy: SquidProxy) -> None:
    """The canonical request set: providers over CONNECT and plain HTTP, a denial, a
    look-alike host, from curl and from urllib. Eight requests, one connection each."""
    body = json.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "x" * 200}]})
    proxy.curl("https://api.openai.com:{tls}/v1/models", label="openai-connect")
    proxy.curl("http://api.anthropic.com:{http}/v1/messages", method="POST",
               data=body.encode(), label="anthropic-post")  # fmt: skip
    proxy.curl("https://blocked.deepseek.com:{tls}/v1/chat/completions", label="denied-connect")
    proxy.curl("https://notopenai.com:{tls}/v1/models", label="lookalike-connect")
    proxy.urllib("http://generativelanguage.googleapis.com:{http}/v1beta/models",
                 label="gemini-get")  # fmt: skip
    proxy.urllib("https://openrouter.ai:{tls}/api/v1/chat/completions", data=body.encode(),
                 label="openrouter-connect")  # fmt: skip
    proxy.curl("http://api.deepseek.com:{http}/chat/completions", method="POST",
               data=body.encode(), label="deepseek-post")  # fmt: skip
    proxy.urllib("http://blocked.deepseek.com:{http}/v1/models", label="denied-get")
