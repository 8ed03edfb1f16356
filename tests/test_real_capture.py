"""A real capture: TLS and HTTP clients on loopback, recorded by tcpdump, read by apiwatch.

Servers listen on 127.0.0.1 only; every step has a timeout. Skipped locally when tcpdump,
curl or openssl is missing (or capturing is not permitted); required when ``CI=true``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.collectors import open_input
from monitor.collectors.base import Diagnostics
from monitor.collectors.pcap import PcapCollector

pytestmark = pytest.mark.realtools
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _need(condition: bool, reason: str) -> None:
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI requires this test: {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """Accepts connections on 127.0.0.1 (``port`` 0: any free one, then :attr:`port`),
    optionally TLS, answers one HTTP request each with ``body`` and keeps its head."""

    def __init__(self, port: int, ctx: ssl.SSLContext | None, body: bytes = b"ok"):
        self.sock = socket.create_server(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.5)
        self.ctx = ctx
        self.body = body
        self.heads: list[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            if self.ctx is not None:
                conn = self.ctx.wrap_socket(conn, server_side=True)
            data = b""
            while b"\r\n\r\n" not in data:
                more = conn.recv(4096)
                if not more:
                    break
                data += more
            self.heads.append(data.split(b"\r\n\r\n", 1)[0])
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (len(self.body), self.body)
            )
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def tools() -> Iterator[None]:
    for tool in ("tcpdump", "curl", "openssl"):
        _need(shutil.which(tool) is not None, f"{tool} is not installed")
    yield


def _cert(tmp: Path) -> tuple[Path, Path]:
    key, crt = tmp / "key.pem", tmp / "crt.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(crt), "-days", "1", "-subj", "/CN=apiwatch-test"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return key, crt


def _start_tcpdump(
    path: Path, ports: list[int], udp_ports: tuple[int, ...] = ()
) -> subprocess.Popen:
    flt = " or ".join([*(f"tcp port {p}" for p in ports), *(f"udp port {p}" for p in udp_ports)])
    proc = subprocess.Popen(
        ["tcpdump", "-i", "lo", "-n", "-U", "--immediate-mode", "-w", str(path), flt],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    line = b""
    assert proc.stderr is not None
    os.set_blocking(proc.stderr.fileno(), False)
    while time.monotonic() < deadline:
        chunk = proc.stderr.read() or b""
        line += chunk
        if b"listening on" in line:
            break
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    # "listening on" comes a moment before the filter sees packets: probe until one is written
    while b"listening on" in line and proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", ports[-1]), timeout=1).close()
        time.sleep(0.1)
        if path.exists() and path.stat().st_size > 24:
            return proc
    proc.kill()
    proc.wait(5)
    _need(False, f"tcpdump could not capture on lo: {line.decode(errors='replace').strip()}")
    raise AssertionError("unreachable")


def _py_client(port: int, name: str, version: ssl.TLSVersion) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = version
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname=name) as s:
        s.sendall(f"GET /v1/models HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
        s.recv(100)


EXPECTED_SNIS = sorted(
    ["api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com", "api.cohere.com"]
)


def _stop_tcpdump(dump: subprocess.Popen) -> None:
    """Stop tcpdump by its PID (it writes what it holds), killing it when it hangs."""
    dump.terminate()
    try:
        dump.wait(10)
    except subprocess.TimeoutExpired:
        dump.kill()
        dump.wait(5)


def _capture_exchange(tmp_path: Path, attempt: int):
    """Run the servers and clients under tcpdump; return the parsed flows and tcpdump's report."""
    key, crt = _cert(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    tls_port, http_port = _free_port(), _free_port()
    servers = [_Server(tls_port, ctx), _Server(http_port, None)]
    cap = tmp_path / f"lo-{attempt}.pcap"
    dump = _start_tcpdump(cap, [tls_port, http_port])
    try:
        curl = ["curl", "-sk", "--max-time", "10", "-o", "/dev/null"]
        subprocess.run([*curl, "--tlsv1.3", "--resolve", f"api.openai.com:{tls_port}:127.0.0.1",
                        f"https://api.openai.com:{tls_port}/v1/models"], check=True, timeout=20)  # fmt: skip
        subprocess.run([*curl, "--tlsv1.2", "--tls-max", "1.2", "--resolve",
                        f"api.anthropic.com:{tls_port}:127.0.0.1",
                        f"https://api.anthropic.com:{tls_port}/v1/messages"], check=True, timeout=20)  # fmt: skip
        subprocess.run([*curl, "--resolve", f"api.mistral.ai:{http_port}:127.0.0.1",
                        f"http://api.mistral.ai:{http_port}/v1/models"], check=True, timeout=20)  # fmt: skip
        _py_client(tls_port, "generativelanguage.googleapis.com", ssl.TLSVersion.TLSv1_3)
        _py_client(tls_port, "api.cohere.com", ssl.TLSVersion.TLSv1_2)
        time.sleep(0.5)  # -U writes each packet at once; leave time for the last ones
    finally:
        _stop_tcpdump(dump)
        for srv in servers:
            srv.close()
    report = (dump.stderr.read() or b"").decode(errors="replace") if dump.stderr else ""
    diag = Diagnostics()
    opened = open_input(str(cap))
    try:
        obs = list(PcapCollector().parse(opened.stream, str(cap), diag))
    finally:
        opened.close()
    assert not diag.file_errors, diag.file_errors
    return obs, report, tls_port, http_port


def test_tcpdump_capture_of_tls_and_http_on_loopback(tmp_path, tools):
    # A loaded CI machine can make a capture miss packets (tcpdump says so on exit); the
    # parser is deterministic on a given file, so one more exchange is a fair retry.
    for attempt in range(2):
        obs, report, tls_port, http_port = _capture_exchange(tmp_path, attempt)
        snis = sorted(o.dest_host for o in obs if o.host_source == "sni")
        if snis == EXPECTED_SNIS:
            break
    flows = [(o.client_port, o.dest_port, o.host_source, o.dest_host, o.packets_out) for o in obs]
    assert snis == EXPECTED_SNIS, f"flows={flows}\ntcpdump: {report}"
    https = [o for o in obs if o.host_source == "sni"]
    assert {o.dest_port for o in https} == {tls_port}
    assert all(
        o.client_ip == "127.0.0.1" and o.packets_out and o.packets_in and o.bytes_in for o in https
    )
    (req,) = [o for o in obs if o.host_source == "http_host"]
    assert (req.dest_host, req.method, req.status, req.dest_port) == (
        "api.mistral.ai",
        "GET",
        200,
        http_port,
    )
    assert req.url == f"http://api.mistral.ai:{http_port}/v1/models"
