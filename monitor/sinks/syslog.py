"""Syslog (RFC 5424) over UDP, TCP or TLS (RFC 5425), carrying CEF or LEEF.

The message is one RFC 5424 record: ``<PRI>1 TIMESTAMP HOST apiwatch PID MSGID - CEF:0|…``
with facility 13 (log audit) and a syslog severity derived from the finding's. Over TCP and
TLS each record is framed by octet counting (RFC 6587 §3.4.1, mandatory for RFC 5425), which
rsyslog, syslog-ng, ArcSight and QRadar connectors accept; over UDP it is one datagram.
The CEF and LEEF field mapping is in docs/alerts.md.
"""

from __future__ import annotations

import os
import socket
import ssl
from urllib.parse import urlsplit

from monitor import __version__
from monitor.events import FindingEvent, epoch_ms
from monitor.sinks.base import TIMEOUT, AlertSpec, SinkError, check_format

KEYS = frozenset({"address", "format"})
FORMATS = ("cef", "leef")
SCHEMES = {"udp": 514, "tcp": 514, "tls": 6514}
FACILITY = 13  # log audit
#: finding severity → syslog severity (3 error … 6 informational)
SYSLOG_SEVERITY = {"critical": 2, "high": 3, "medium": 4, "low": 5, "info": 6}
#: finding severity → CEF 0-10 / LEEF 1-10 severity
NUMERIC_SEVERITY = {"info": 1, "low": 3, "medium": 5, "high": 8, "critical": 10}
MAX_UDP = 8192  # bytes; longer CEF messages are cut (the fields come first, the text last)


def check(spec: AlertSpec) -> None:
    if not spec.address:
        raise ValueError("address: missing (udp://host:514, tcp://host:514 or tls://host:6514)")
    parse_address(spec.address)
    check_format(spec, FORMATS)


def parse_address(address: str) -> tuple[str, str, int]:
    """(scheme, host, port) of ``udp://host:port`` and the like; raises ValueError."""
    parts = urlsplit(address)
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise ValueError(f"address: {address!r}: expected udp://, tcp:// or tls://host[:port]")
    try:
        port = parts.port or SCHEMES[parts.scheme]
    except ValueError:
        raise ValueError(f"address: {address!r}: bad port") from None
    return parts.scheme, parts.hostname, port


# -- CEF ----------------------------------------------------------------------------------


def _cef_header(value: object) -> str:
    return (
        str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")
    )


def _cef_value(value: object) -> str:
    text = str(value).replace("\\", "\\\\").replace("=", "\\=")
    return text.replace("\r", "\\r").replace("\n", "\\n")


def cef(e: FindingEvent) -> str:
    """ArcSight Common Event Format, version 0."""
    ext = {
        "rt": epoch_ms(e.time),
        "start": epoch_ms(e.first_seen),
        "end": epoch_ms(e.last_seen),
        "cnt": e.count,
        "act": e.event_type,
        "externalId": e.event_id,
        "src": e.client_ip,
        "dhost": e.dest_host,
        "cat": "apiwatch/" + e.rule,
        "outcome": e.status,
        "cs1Label": "rule",
        "cs1": e.rule,
        "cs2Label": "provider",
        "cs2": e.provider,
        "cs3Label": "site",
        "cs3": e.site,
        "cs4Label": "egressCountry",
        "cs4": e.egress_country,
        "cs5Label": "findingId",
        "cs5": e.finding_id,
        "cs6Label": "idempotencyKey",
        "cs6": e.idempotency_key,
        "cn1Label": "newCount",
        "cn1": e.new_count,
        "reason": e.note,
        "flexString1Label": "actor" if e.actor else None,
        "flexString1": e.actor,
        "flexString2Label": "exceptionUntil" if e.exception_until else None,
        "flexString2": e.exception_until,
        "msg": e.summary(),
    }
    header = "|".join(
        _cef_header(v)
        for v in ("CEF:0", "apiwatch", "apiwatch", __version__, e.rule, e.title or e.rule,
                  NUMERIC_SEVERITY.get(e.severity, 0))
    )  # fmt: skip
    return header + "|" + " ".join(f"{k}={_cef_value(v)}" for k, v in ext.items() if v is not None)


# -- LEEF ---------------------------------------------------------------------------------

LEEF_DELIMITER = "^"


def _leef_value(value: object) -> str:
    text = str(value).replace("\r", " ").replace("\n", " ").replace("\t", " ")
    return text.replace(LEEF_DELIMITER, " ")


def leef(e: FindingEvent) -> str:
    """IBM QRadar Log Event Extended Format 2.0, with ``^`` as the attribute delimiter."""
    attrs = {
        "devTime": epoch_ms(e.time),  # epoch milliseconds: no devTimeFormat needed
        "sev": NUMERIC_SEVERITY.get(e.severity, 1),
        "cat": e.rule,
        "src": e.client_ip,
        "dstHost": e.dest_host,
        "findingId": e.finding_id,
        "eventId": e.event_id,
        "idempotencyKey": e.idempotency_key,
        "eventType": e.event_type,
        "rule": e.rule,
        "severity": e.severity,
        "provider": e.provider,
        "site": e.site,
        "egressCountry": e.egress_country,
        "firstSeen": e.first_seen,
        "lastSeen": e.last_seen,
        "count": e.count,
        "newCount": e.new_count,
        "status": e.status,
        "title": e.title,
        "actor": e.actor,
        "note": e.note,
        "exceptionUntil": e.exception_until,
    }
    header = "|".join(
        _cef_header(v)
        for v in ("LEEF:2.0", "apiwatch", "apiwatch", __version__, e.rule, LEEF_DELIMITER)
    )
    return (
        header
        + "|"
        + LEEF_DELIMITER.join(f"{k}={_leef_value(v)}" for k, v in attrs.items() if v is not None)
    )


RENDER = {"cef": cef, "leef": leef}


def rfc5424(e: FindingEvent, body: str, hostname: str) -> bytes:
    pri = FACILITY * 8 + SYSLOG_SEVERITY.get(e.severity, 6)
    msgid = e.event_type.upper()[:32]
    return f"<{pri}>1 {e.time} {hostname} apiwatch {os.getpid()} {msgid} - {body}".encode()


class Sink:
    def __init__(self, spec: AlertSpec):
        self.spec = spec
        self.scheme, self.host, self.port = parse_address(spec.address or "")
        self._render = RENDER[spec.format or "cef"]
        self._hostname = socket.gethostname().split(".")[0] or "-"
        self._sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        try:
            if self.scheme == "udp":
                family = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0][0]
                sock = socket.socket(family, socket.SOCK_DGRAM)
                sock.connect((self.host, self.port))
            else:
                sock = socket.create_connection((self.host, self.port), timeout=TIMEOUT)
                if self.scheme == "tls":
                    ctx: ssl.SSLContext = self.spec.tls_context()
                    sock = ctx.wrap_socket(sock, server_hostname=self.host)
            sock.settimeout(TIMEOUT)
        except (OSError, ssl.SSLError) as exc:
            raise SinkError(f"{self.spec.address}: cannot connect: {exc}") from None
        self._sock = sock
        return sock

    def send(self, event: FindingEvent) -> None:
        message = rfc5424(event, self._render(event), self._hostname)
        sock = self._connect()
        try:
            if self.scheme == "udp":
                sock.send(message[:MAX_UDP])
            else:
                sock.sendall(b"%d " % len(message) + message)
        except (OSError, ssl.SSLError) as exc:
            self.close()
            raise SinkError(f"{self.spec.address}: cannot send: {exc}") from None

    def close(self) -> None:
        """A TLS session ends with close_notify: rsyslog drops the data of a session that
        ends without one, however complete."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            if isinstance(sock, ssl.SSLSocket):
                sock = sock.unwrap()
        except (OSError, ssl.SSLError):
            pass
        finally:
            sock.close()
