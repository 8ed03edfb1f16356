"""HTTP/1 on a reassembled TCP stream: request and response heads, bodies stepped over by
their framing (length, chunked, to the close), requests paired with their responses.

Used by the flow table (:mod:`monitor.collectors.flows`) for connections whose first client
bytes are an HTTP request; :func:`request_name` says what a request names (``CONNECT``
target, absolute-form URL or ``Host`` header).
"""

from __future__ import annotations

from dataclasses import dataclass

from monitor.observation import split_host_port

__all__ = [
    "HttpHead",
    "HttpConnection",
    "Exchange",
    "parse_request_head",
    "parse_response_head",
    "request_name",
    "is_token",
    "MAX_HEAD",
]

MAX_HEAD = 16 * 1024


@dataclass(slots=True)
class HttpHead:
    """A parsed request or response head (start line and the headers apiwatch uses)."""

    method: str | None = None  # requests
    target: str | None = None  # requests: as sent
    version: str = ""
    status: int | None = None  # responses
    host: str | None = None  # Host header value, as sent
    user_agent: str | None = None  # requests: User-Agent header value
    content_length: int | None = None
    chunked: bool = False


def _text(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


def is_token(b: bytes) -> bool:
    return (
        bool(b)
        and len(b) <= 32
        and all(33 <= c <= 126 and c not in b'()<>@,;:\\"/[]?={}' for c in b)
    )


def _headers(lines: list[bytes], h: HttpHead) -> HttpHead | None:
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon:
            continue  # obsolete line folding, or junk: ignored (as Zeek does)
        name = name.strip().lower()
        value = value.strip()
        if name == b"host":
            if h.host is None:
                h.host = _text(value)
        elif name == b"user-agent":
            if h.user_agent is None:
                h.user_agent = _text(value)
        elif name == b"content-length":
            v = value.split(b",")[0].strip()
            if v.isdigit() and len(v) < 19:
                h.content_length = int(v)
        elif name == b"transfer-encoding" and value.lower().rstrip().endswith(b"chunked"):
            h.chunked = True
    return h


def parse_request_head(head: bytes) -> HttpHead | None:
    """``METHOD SP target SP HTTP/x.y`` and the headers (CRLF or bare LF line ends);
    ``None`` when the start line is not an HTTP/1 request line."""
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    parts = lines[0].split(b" ")
    if len(parts) < 2 or not is_token(parts[0]) or not parts[0].isupper():
        return None
    version = parts[-1]
    if version.startswith(b"HTTP/") and len(version) <= 12 and len(parts) >= 3:
        target = b" ".join(parts[1:-1]).strip(b" ")  # tolerate extra spaces
    elif len(parts) == 2 and parts[1].startswith(b"HTTP/"):  # "OPTIONS HTTP/1.1": no target
        version, target = parts[1], b""
    elif len(parts) == 2 and parts[1]:  # HTTP/0.9 style, or "GET /HTTP/1.1"
        version, target = b"", parts[1]
    else:
        return None
    h = HttpHead(
        method=parts[0].decode("ascii"),
        target=_text(target),
        version=version.decode("ascii", "replace"),
    )
    return _headers(lines[1:], h)


def parse_response_head(head: bytes) -> HttpHead | None:
    """``HTTP/x.y SP status [SP reason]`` and the headers; ``None`` when not a status line."""
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    parts = lines[0].split(b" ", 2)
    if (
        len(parts) < 2
        or not parts[0].startswith(b"HTTP/")
        or not (parts[1].isdigit() and len(parts[1]) == 3)
    ):
        return None
    h = HttpHead(version=parts[0].decode("ascii", "replace"), status=int(parts[1]))
    return _headers(lines[1:], h)


HEAD, BODY, CHUNK_SIZE, CHUNK_DATA, TRAILER, CLOSE, DEAD = range(7)


#: bytes kept of an error response's body (a provider's refusal is a short JSON message)
MAX_BODY_EXCERPT = 2048


class HttpSide:
    """One direction of an HTTP/1 connection: heads, then bodies skipped by length. While
    :attr:`body` is a bytearray, the body's first bytes are kept in it."""

    __slots__ = ("state", "left", "msg_ts", "body")

    def __init__(self) -> None:
        self.state = HEAD
        self.left = 0
        self.msg_ts: float | None = None
        self.body: bytearray | None = None

    def skip(self, n: int) -> bool:
        """``n`` in-order bytes wholly inside a body (by length or chunk, or up to the
        close): stepped over without parsing; False when they need :meth:`feed`."""
        state = self.state
        if self.body is not None and len(self.body) < MAX_BODY_EXCERPT:
            return False  # the bytes are wanted
        if state in (BODY, CHUNK_DATA):
            if self.left < n:
                return False
            self.left -= n
            if self.left == 0:
                self.state = HEAD if state == BODY else CHUNK_SIZE
            return True
        return state == CLOSE

    def feed(self, data: bytearray, ts: float, on_head) -> int:
        """Consume what can be consumed of ``data``; returns the bytes used. ``on_head(head
        bytes, start ts)`` returns the body framing: ("len", n) / ("chunked", 0) /
        ("none", 0) / ("close", 0) / ("dead", 0)."""
        pos = 0
        n = len(data)
        while pos < n:
            st = self.state
            if st == HEAD:
                while pos < n and data[pos] in (13, 10):
                    pos += 1  # stray CRLF between messages
                if pos >= n:
                    break
                if self.msg_ts is None:
                    self.msg_ts = ts
                i = data.find(b"\r\n\r\n", pos)
                j = data.find(b"\n\n", pos)
                if i < 0 and j < 0:
                    if n - pos > MAX_HEAD:
                        self.state = DEAD
                        return n
                    break
                if j >= 0 and (i < 0 or j < i):
                    end, skip = j, 2
                else:
                    end, skip = i, 4
                if end - pos > MAX_HEAD:
                    self.state = DEAD
                    return n
                start_ts = self.msg_ts
                self.msg_ts = None
                mode, size = on_head(bytes(data[pos:end]), start_ts)
                pos = end + skip
                if mode == "len" and size > 0:
                    self.state, self.left = BODY, size
                elif mode == "chunked":
                    self.state = CHUNK_SIZE
                elif mode == "close":
                    self.state = CLOSE
                elif mode == "dead":
                    self.state = DEAD
                    return n
            elif st in (BODY, CHUNK_DATA):
                take = min(self.left, n - pos)
                body = self.body
                if body is not None and len(body) < MAX_BODY_EXCERPT:
                    body += data[pos : pos + min(take, MAX_BODY_EXCERPT - len(body))]
                pos += take
                self.left -= take
                if self.left == 0:
                    self.state = HEAD if st == BODY else CHUNK_SIZE
            elif st == CHUNK_SIZE:
                nl = data.find(b"\n", pos)
                if nl < 0:
                    if n - pos > 1024:
                        self.state = DEAD
                        return n
                    break
                line = bytes(data[pos:nl]).split(b";")[0].strip()
                pos = nl + 1
                if not line:
                    continue  # the CRLF after a chunk's data
                try:
                    size = int(line, 16)
                except ValueError:
                    self.state = DEAD
                    return n
                if size == 0:
                    self.state = TRAILER
                else:
                    self.state, self.left = CHUNK_DATA, size
            elif st == TRAILER:
                nl = data.find(b"\n", pos)
                if nl < 0:
                    if n - pos > MAX_HEAD:
                        self.state = DEAD
                        return n
                    break
                line = bytes(data[pos:nl]).strip()
                pos = nl + 1
                if not line:
                    self.state = HEAD
            else:  # CLOSE, DEAD: everything to the end belongs to the body / tunnel
                body = self.body
                if st == CLOSE and body is not None and len(body) < MAX_BODY_EXCERPT:
                    body += data[pos : pos + MAX_BODY_EXCERPT - len(body)]
                return n
        return pos


class Exchange:
    __slots__ = (
        "ts",
        "ts_end",
        "method",
        "target",
        "host",
        "user_agent",
        "status",
        "body",
        "pk_out",
        "pk_in",
        "by_out",
        "by_in",
        "index",
    )

    def __init__(self, ts: float, head: HttpHead, index: int):
        self.ts = ts
        self.ts_end = ts
        self.method = head.method
        self.target = head.target
        self.host = head.host
        self.user_agent = head.user_agent
        self.status: int | None = None
        self.body: bytearray | None = None  # error responses: the body's first bytes
        self.pk_out = self.pk_in = self.by_out = self.by_in = 0
        self.index = index


class HttpConnection:
    """Both directions of one HTTP/1 connection, and its requests."""

    __slots__ = (
        "client",
        "server",
        "exchanges",
        "awaiting",
        "cur_s",
        "emitted",
        "dead",
        "tunnel",
    )

    def __init__(self) -> None:
        self.client = HttpSide()
        self.server = HttpSide()
        self.exchanges: list[Exchange] = []
        self.awaiting: list[Exchange] = []  # requests whose response has not started
        self.cur_s: Exchange | None = None
        self.emitted = 0  # requests already reported (when over MAX_EXCHANGES)
        self.dead = False
        #: the CONNECT the proxy accepted: the connection carries its tunnel from there on
        self.tunnel: Exchange | None = None

    def on_request(self, raw: bytes, ts: float) -> tuple[str, int]:
        h = parse_request_head(raw)
        if h is None:
            self.dead = True
            return "dead", 0
        x = Exchange(ts, h, self.emitted + len(self.exchanges))
        self.exchanges.append(x)
        self.awaiting.append(x)
        if h.method == "CONNECT":
            return "none", 0  # a 2xx response opens the tunnel (a 407 may be retried)
        if h.chunked:
            return "chunked", 0
        if h.content_length:
            return "len", h.content_length
        return "none", 0

    def on_response(self, raw: bytes, ts: float) -> tuple[str, int]:
        h = parse_response_head(raw)
        if h is None:
            self.dead = True
            return "dead", 0
        st = h.status or 0
        x = self.awaiting[0] if self.awaiting else None
        self.server.body = None
        if x is not None:
            self.cur_s = x
            if st >= 200 or st == 101:
                self.awaiting.pop(0)
                x.status = st
            if st >= 400:  # a refusal explains itself in the body
                x.body = self.server.body = bytearray()
        if st == 101 or (x is not None and x.method == "CONNECT" and 200 <= st < 300):
            self.dead = True
            if st != 101:
                self.tunnel = x
            return "dead", 0
        if 100 <= st < 200 or st in (204, 304) or (x is not None and x.method == "HEAD"):
            return "none", 0
        if h.chunked:
            return "chunked", 0
        if h.content_length is not None:
            return ("len", h.content_length) if h.content_length else ("none", 0)
        return "close", 0


def request_name(x: Exchange, port: int) -> tuple[str | None, str | None, int, str | None]:
    """What a request names: (host, how it was named, port, URL). ``CONNECT host:port``
    (``connect``), an absolute-form target (``url``) or the ``Host`` header (``http_host``);
    host None when the request names nothing. ``port`` is the connection's server port."""
    target = x.target or ""
    if x.method == "CONNECT":  # "CONNECT host:port"; anything else is a bad CONNECT
        host, cport = split_host_port(target.split(" ", 1)[0])
        if host and cport and "/" not in host:
            return host, "connect", cport, None
    if "://" in target[:12]:
        auth = target.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
        host, uport = split_host_port(auth)
        if uport is not None:
            port = uport
        elif target[:6].lower() == "https:":
            port = 443
        elif target[:5].lower() == "http:":
            port = 80
        return host, "url" if host else None, port, target
    host = hsrc = None
    if x.host:
        host, _hp = split_host_port(x.host)
        hsrc = "http_host" if host else None
    if host and target.startswith("/"):
        return host, hsrc, port, f"http://{x.host}{target}"
    return host, hsrc, port, target or None
