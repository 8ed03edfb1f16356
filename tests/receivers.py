"""Real receivers for the alert tests, started on loopback and stopped by PID: rsyslogd
(Debian's package, its own config, pid file and high ports; CEF/LEEF over UDP, TCP and TLS
with a test CA made by openssl) and a Python http.server process (webhook, Splunk HEC).

Missing tools skip a test locally and fail it under ``CI``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.squid_harness import in_ci

HERE = Path(__file__).resolve().parent
RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
#: rsyslog's TLS driver (Debian's rsyslog-openssl), wherever the architecture puts it
RSYSLOG_TLS = next(iter(sorted(Path("/usr/lib").glob("*/rsyslog/lmnsd_ossl.so"))), None)


def need(ok: bool, reason: str) -> None:
    if not ok:
        if in_ci():
            pytest.fail(f"{reason}; CI is set, so this test must run", pytrace=False)
        pytest.skip(reason)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_dnsmasq(
    exe: str, args: list[str], answering: Callable[[int], bool]
) -> tuple[subprocess.Popen[bytes], int]:
    """dnsmasq (``exe``) in the foreground on 127.0.0.1, with ``args`` after the common ones,
    once ``answering(port)``; stopped by the caller (its PID). The port is free for UDP and
    TCP (dnsmasq binds both); one another process takes meanwhile (dnsmasq exits with 2, a
    network error) is tried again with another."""
    err = b""
    for _ in range(5):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            try:
                t.bind(("127.0.0.1", port))
            except OSError:
                continue
        proc = subprocess.Popen(
            [exe, "--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces",
             "--listen-address=127.0.0.1", f"--port={port}", "--log-facility=-", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            if answering(port):
                return proc, port
            time.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 2, f"dnsmasq exited with {proc.returncode}: {err.decode()}"
    raise AssertionError(f"dnsmasq found no free port in 5 tries: {err.decode()}")


def wait_until(predicate, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def make_test_ca(directory: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost, made by openssl."""
    need(bool(shutil.which("openssl")), "needs openssl (apt-get install openssl)")
    d = directory
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True, cwd=d)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=apiwatch test CA",
        "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", "server.key", "-out", "server.csr")  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem")  # fmt: skip
    return {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}


class Rsyslog:
    """rsyslogd with one input per transport, each written to its own file as
    ``facility|severity|app-name|msgid|msg`` so tests see what rsyslog parsed."""

    FIELDS = "%syslogfacility%|%syslogseverity%|%app-name%|%msgid%|%msg%\\n"

    def __init__(self, directory: Path):
        need(Path(RSYSLOGD).exists(), "needs rsyslogd (apt-get install rsyslog)")
        need(
            RSYSLOG_TLS is not None,
            "needs rsyslog's TLS driver (apt-get install rsyslog-openssl)",
        )
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ports = {
            "udp": free_port(socket.SOCK_DGRAM),
            "tcp": free_port(),
            "tls": free_port(),
        }
        self.ca = make_test_ca(self.dir)
        self.process: subprocess.Popen | None = None

    def address(self, transport: str) -> str:
        return f"{transport}://127.0.0.1:{self.ports[transport]}"

    def out(self, transport: str) -> Path:
        return self.dir / f"{transport}.log"

    def _config(self) -> str:
        d, ca, p = self.dir, self.ca, self.ports
        rulesets = "".join(
            f'ruleset(name="{t}") {{ action(type="omfile" file="{self.out(t)}" template="fields") }}\n'
            for t in p
        )
        return f"""
global(workDirectory="{d}" maxMessageSize="64k"
       defaultNetstreamDriverCAFile="{ca["ca"]}" defaultNetstreamDriverCertFile="{ca["cert"]}"
       defaultNetstreamDriverKeyFile="{ca["key"]}")
module(load="imudp")
module(load="imtcp" maxSessions="100")
template(name="fields" type="string" string="{self.FIELDS}")
{rulesets}
input(type="imudp" address="127.0.0.1" port="{p["udp"]}" ruleset="udp")
input(type="imtcp" address="127.0.0.1" port="{p["tcp"]}" ruleset="tcp")
input(type="imtcp" address="127.0.0.1" port="{p["tls"]}" ruleset="tls"
      streamDriver.name="ossl" streamDriver.mode="1" streamDriver.authMode="anon")
"""

    def start(self) -> Rsyslog:
        conf = self.dir / "rsyslog.conf"
        conf.write_text(self._config())
        check = subprocess.run([RSYSLOGD, "-N1", "-f", str(conf)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr + check.stdout
        self.process = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(conf), "-i", str(self.dir / "rsyslogd.pid")],
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "rsyslogd.err", "wb"),  # noqa: SIM115 - lives with the process
        )
        wait_until(lambda: listening(self.ports["tcp"]) and listening(self.ports["tls"]),
                   what="rsyslogd to listen")  # fmt: skip
        time.sleep(0.3)  # imudp binds with the others; give it the same moment
        return self

    def lines(self, transport: str) -> list[list[str]]:
        path = self.out(transport)
        if not path.exists():
            return []
        return [ln.split("|", 4) for ln in path.read_text().splitlines()]

    def wait_for(self, transport: str, n: int, timeout: float = 15.0) -> list[list[str]]:
        wait_until(lambda: len(self.lines(transport)) >= n, timeout, f"{n} {transport} messages")
        return self.lines(transport)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self.process = None


class HttpReceiver:
    """tests/http_receiver.py in its own process on a fixed loopback port, so it can be
    stopped (the sink is down) and started again on the same address."""

    def __init__(self, directory: Path, status: int = 200, delay: float = 0.0):
        self.port = free_port()
        self.out = directory / f"http-{self.port}.jsonl"
        self.status = status
        self.delay = delay
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HttpReceiver:
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "http_receiver.py"), str(self.port), str(self.out),
             "--status", str(self.status), "--delay", str(self.delay)],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == b"ready"
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            self.process.wait(10)
        self.process = None

    def requests(self) -> list[dict]:
        if not self.out.exists():
            return []
        return [json.loads(x) for x in self.out.read_text().splitlines()]

    def wait_for(self, n: int, timeout: float = 15.0) -> list[dict]:
        wait_until(lambda: len(self.requests()) >= n, timeout, f"{n} HTTP requests")
        return self.requests()
