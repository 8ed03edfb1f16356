"""Compile a Squid ``logformat`` definition into a line parser.

Squid writes each access-log line by expanding ``%`` codes of a ``logformat`` directive
(``logformat name %ts.%03tu %6tr %>a ...``). This module reads such a definition with
Squid's own grammar::

    % ["|[|#|'|/] [-] [0] [width][.max] [{arg}] code [{arg}]

and turns it into one anchored regular expression plus a plan saying which Observation
input each captured group feeds. Codes the monitor has no use for are still matched (so
the columns line up) and then ignored. An unknown code fails at compile time with a
:class:`LogformatError` naming it.

Matching rules, derived from how Squid pads and quotes its output:

* a literal space in the format matches a run of spaces (``%6tr`` right-aligns with
  spaces, ``%-10un`` left-aligns), and fields with a width also accept padding;
* numeric codes match ``-`` or an integer, so a shifted column fails the match instead of
  being read as a wrong field;
* a code between literal ``"..."`` or ``[...]`` matches lazily up to the closing quote, so
  header values with spaces (User-Agent) are read whole; ``%"`` values are un-escaped;
* fields Squid could not fill are logged as ``-`` and come back as ``None``;
* extra fields after the last one of the format are tolerated (sites append some).
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import datetime

__all__ = [
    "COMBINED",
    "COMMON",
    "NATIVE",
    "CompiledLogformat",
    "LogformatError",
    "Token",
    "compile_logformat",
    "parse_clf_time",
    "tokenize",
]

#: Squid's built-in formats (squid.conf.documented, ``logformat``).
NATIVE = "%ts.%03tu %6tr %>a %Ss/%03>Hs %<st %rm %ru %[un %Sh/%<a %mt"
COMMON = '%>a %[ui %[un [%tl] "%rm %ru HTTP/%rv" %>Hs %<st %Ss:%Sh'
COMBINED = (
    '%>a %[ui %[un [%tl] "%rm %ru HTTP/%rv" %>Hs %<st "%{Referer}>h" "%{User-Agent}>h" %Ss:%Sh'
)
BUILTIN = {"squid": NATIVE, "common": COMMON, "combined": COMBINED}


class LogformatError(ValueError):
    """The logformat definition cannot be compiled (unknown code, bad syntax)."""


# --- the code table -------------------------------------------------------------------
# role: which Observation input the value feeds (None: matched, then ignored).
# kind: "int" (``-`` or an integer), "dec" (``-`` or a decimal), "time" (%tl/%tg),
#       "tag" (Squid status words: TCP_MISS, HIER_DIRECT), "word" (anything without spaces).

_INT, _DEC, _TIME, _WORD, _TAG = "int", "dec", "time", "word", "tag"

_CODES: dict[str, tuple[str | None, str]] = {
    # time
    "ts": ("ts_sec", _INT),
    "tu": ("ts_ms", _INT),
    "tl": ("ts_local", _TIME),
    "tg": ("ts_gmt", _TIME),
    "tS": ("ts_start", _DEC),
    "tr": ("elapsed", _INT),
    "dt": (None, _INT),
    "busy_time": (None, _INT),
    # connection
    ">a": ("client_ip", _WORD),
    ">A": (None, _WORD),
    ">p": ("client_port", _INT),
    ">eui": (None, _WORD),
    ">la": (None, _WORD),
    ">lp": (None, _INT),
    "la": (None, _WORD),
    "lp": (None, _INT),
    "<a": ("peer_ip", _WORD),
    "<A": (None, _WORD),
    "<p": ("peer_port", _INT),
    "<la": (None, _WORD),
    "<lp": (None, _INT),
    ">qos": (None, _WORD),
    "<qos": (None, _WORD),
    ">nfmark": (None, _WORD),
    "<nfmark": (None, _WORD),
    ">handshake": (None, _WORD),
    # access control / users
    "et": (None, _WORD),
    "ea": (None, _WORD),
    "un": ("user_un", _WORD),
    "ul": ("user_ul", _WORD),
    "ue": ("user_ue", _WORD),
    "ui": ("user_ui", _WORD),
    "us": ("user_us", _WORD),
    "credentials": (None, _WORD),
    # request
    "rm": ("method", _WORD),
    ">rm": ("method_client", _WORD),
    "<rm": (None, _WORD),
    "ru": ("url", _WORD),
    ">ru": ("url_client", _WORD),
    "<ru": (None, _WORD),
    ">rs": ("scheme", _WORD),
    "<rs": (None, _WORD),
    ">rd": ("domain", _WORD),
    "<rd": (None, _WORD),
    ">rP": ("url_port", _INT),
    "<rP": (None, _INT),
    "rp": (None, _WORD),
    ">rp": (None, _WORD),
    "<rp": (None, _WORD),
    "rv": (None, _WORD),
    ">rv": (None, _WORD),
    "<rv": (None, _WORD),
    ">h": (None, _WORD),  # role "host_header" / "user_agent" when the argument is Host / User-Agent
    ">ha": (None, _WORD),
    "<h": (None, _WORD),
    # reply / status
    ">Hs": ("status", _INT),
    "Hs": ("status", _INT),
    "<Hs": ("status_next", _INT),
    "mt": (None, _WORD),
    "Ss": ("result", _TAG),
    "Sh": ("hier", _TAG),
    # sizes and timers
    "st": (None, _INT),
    ">st": ("bytes_out", _INT),
    "<st": ("bytes_in", _INT),
    ">sh": (None, _INT),
    "<sh": (None, _INT),
    "<sH": (None, _INT),
    "<sS": (None, _INT),
    "<bs": (None, _INT),
    "<pt": (None, _INT),
    "<tt": (None, _INT),
    "<tS": (None, _DEC),
    # misc
    "sn": (None, _INT),
    "err_code": (None, _WORD),
    "err_detail": (None, _WORD),
    "note": (None, _WORD),
    "master_xaction": (None, _WORD),
    "transport::>connection_id": (None, _WORD),
    "proxy_protocol::>h": (None, _WORD),
    "adapt::<last_h": (None, _WORD),
    "adapt::sum_trs": (None, _WORD),
    "adapt::all_trs": (None, _WORD),
    "icap::tt": (None, _INT),
    "icap::<last_h": (None, _WORD),
    "icap::<A": (None, _WORD),
    "icap::<service_name": (None, _WORD),
    "icap::ru": (None, _WORD),
    "icap::rm": (None, _WORD),
    "icap::>st": (None, _INT),
    "icap::<st": (None, _INT),
    "icap::<bs": (None, _INT),
    "icap::tr": (None, _INT),
    "icap::tio": (None, _INT),
    "icap::to": (None, _WORD),
    "icap::Hs": (None, _INT),
    "icap::>h": (None, _WORD),
    "icap::<h": (None, _WORD),
    "ssl::bump_mode": (None, _WORD),
    "ssl::>sni": ("sni", _WORD),
    "ssl::>cert_subject": (None, _WORD),
    "ssl::>cert_issuer": (None, _WORD),
    "ssl::<cert_subject": (None, _WORD),
    "ssl::<cert_issuer": (None, _WORD),
    "ssl::<cert_errors": (None, _WORD),
    "ssl::>cert": (None, _WORD),
    "ssl::<cert": (None, _WORD),
    "ssl::>negotiated_version": (None, _WORD),
    "ssl::<negotiated_version": (None, _WORD),
    "ssl::>negotiated_cipher": (None, _WORD),
    "ssl::<negotiated_cipher": (None, _WORD),
    "ssl::>received_hello_version": (None, _WORD),
    "ssl::<received_hello_version": (None, _WORD),
    "ssl::>received_supported_version": (None, _WORD),
    "ssl::<received_supported_version": (None, _WORD),
}
_CODES_BY_LENGTH = sorted(_CODES, key=len, reverse=True)
_NAMESPACES = ("http::",)  # ``%http::>Hs`` == ``%>Hs``
_QUOTES = {'"': "quote", "[": "mime", "#": "url", "'": "raw", "/": "shell"}
_MODIFIERS = re.compile(r"""(["\[#'/]?)(-?)(0?)(\d*)(?:\.(\d+))?""")


@dataclass(frozen=True, slots=True)
class Token:
    """One ``%`` code of a logformat definition."""

    code: str
    arg: str | None = None
    quote: str | None = None  # "quote" (%"), "mime" (%[), "url" (%#), "raw" (%'), "shell" (%/)
    left: bool = False
    zero: bool = False
    width: int | None = None

    @property
    def role(self) -> str | None:
        if self.code in (">h", ">ha") and self.arg and self.arg.lower() == "host":
            return "host_header"
        if self.code in (">h", ">ha") and self.arg and self.arg.lower() == "user-agent":
            return "user_agent"
        return _CODES[self.code][0]

    @property
    def kind(self) -> str:
        return _CODES[self.code][1]


def tokenize(fmt: str) -> list[str | Token]:
    """Split a format string into literal text and :class:`Token` s (Squid's grammar)."""
    out: list[str | Token] = []
    lit: list[str] = []
    i, n = 0, len(fmt)
    while i < n:
        c = fmt[i]
        if c == "\\" and i + 1 < n:  # squid.conf escapes: \" \\ \t \n
            nxt = fmt[i + 1]
            lit.append({"t": "\t", "n": "\n"}.get(nxt, nxt))
            i += 2
            continue
        if c != "%":
            lit.append(c)
            i += 1
            continue
        if fmt.startswith("%%", i):
            lit.append("%")
            i += 2
            continue
        start = i
        i += 1
        m = _MODIFIERS.match(fmt, i)
        assert m is not None  # every part of the pattern is optional
        quote_c, left, zero, width = m.group(1), m.group(2), m.group(3), m.group(4)
        i = m.end()
        arg = None
        if i < n and fmt[i] == "{":
            end = fmt.find("}", i)
            if end < 0:
                raise LogformatError(f"unclosed {{ in {fmt[start:]!r}")
            arg = fmt[i + 1 : end]
            i = end + 1
        for ns in _NAMESPACES:
            if fmt.startswith(ns, i):
                i += len(ns)
        code = next((c for c in _CODES_BY_LENGTH if fmt.startswith(c, i)), None)
        if code is None:
            bad = re.match(r"\S*", fmt[start:])
            text = bad.group(0) if bad else fmt[start:]
            raise LogformatError(f"unknown Squid format code {text!r} at column {start + 1}")
        i += len(code)
        if arg is None and i < n and fmt[i] == "{":
            end = fmt.find("}", i)
            if end < 0:
                raise LogformatError(f"unclosed {{ in {fmt[start:]!r}")
            arg = fmt[i + 1 : end]
            i = end + 1
        if lit:
            out.append("".join(lit))
            lit = []
        out.append(
            Token(
                code=code,
                arg=arg,
                quote=_QUOTES.get(quote_c) if quote_c else None,
                left=bool(left),
                zero=bool(zero),
                width=int(width) if width else None,
            )
        )
    if lit:
        out.append("".join(lit))
    return out


# --- time -----------------------------------------------------------------------------

_MONTHS = {
    m.encode(): i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_clf_cache: dict[bytes, float] = {}


def parse_clf_time(text: bytes) -> float:
    """``13/Mar/2026:15:48:42 +0100`` -> UTC epoch seconds. Raises ValueError.

    Parsed by hand and cached per distinct string: consecutive lines mostly share it.
    """
    ts = _clf_cache.get(text)
    if ts is not None:
        return ts
    if len(text) != 26 or text[2:3] != b"/" or text[6:7] != b"/" or text[20:21] != b" ":
        raise ValueError(f"bad time {text!r}")
    month = _MONTHS.get(text[3:6])
    if month is None:
        raise ValueError(f"bad month in {text!r}")
    tz = text[21:]
    if tz[:1] not in (b"+", b"-") or not tz[1:].isdigit():
        raise ValueError(f"bad zone in {text!r}")
    fields = (text[0:2], text[7:11], text[12:14], text[15:17], text[18:20])
    if not all(f.isdigit() for f in fields) or text[11:12] != b":":
        raise ValueError(f"bad time {text!r}")
    day, year, hh, mm, ss = (int(f) for f in fields)
    if not (1 <= day <= 31 and hh < 24 and mm < 60 and ss < 61):
        raise ValueError(f"bad time {text!r}")
    offset = (int(tz[1:3]) * 3600 + int(tz[3:5]) * 60) * (1 if tz[:1] == b"+" else -1)
    ts = float(calendar.timegm((year, month, day, hh, mm, ss, 0, 0, 0)) - offset)
    if len(_clf_cache) > 100_000:
        _clf_cache.clear()
    _clf_cache[text] = ts
    return ts


_STRFTIME_RE = {
    "Y": r"\d{4}",
    "y": r"\d{2}",
    "m": r"\d{1,2}",
    "d": r"\d{1,2}",
    "e": r" ?\d{1,2}",
    "H": r"\d{1,2}",
    "M": r"\d{2}",
    "S": r"\d{2}",
    "j": r"\d{3}",
    "b": r"[A-Za-z]{3}",
    "h": r"[A-Za-z]{3}",
    "B": r"[A-Za-z]+",
    "a": r"[A-Za-z]{3}",
    "A": r"[A-Za-z]+",
    "z": r"[+-]\d{4}",
    "p": r"[AaPp][Mm]",
    "I": r"\d{1,2}",
    "%": "%",
}
_STRFTIME_EXPAND = {"T": "%H:%M:%S", "F": "%Y-%m-%d", "D": "%m/%d/%y", "R": "%H:%M"}


class _StrftimeParser:
    """A custom ``%{strftime}tl`` / ``%{...}tg`` argument, parsed with strptime (cached)."""

    def __init__(self, spec: str, gmt: bool):
        for k, v in _STRFTIME_EXPAND.items():
            spec = spec.replace("%" + k, v)
        parts: list[str] = []
        i = 0
        while i < len(spec):
            if spec[i] == "%" and i + 1 < len(spec):
                d = spec[i + 1]
                if d not in _STRFTIME_RE:
                    raise LogformatError(
                        f"strftime directive %{d} in a time argument is not supported"
                    )
                parts.append(_STRFTIME_RE[d])
                i += 2
            else:
                parts.append(re.escape(spec[i]))
                i += 1
        if not gmt and "%z" not in spec:
            raise LogformatError(
                "%tl with a strftime argument lacking %z is local time of an unknown zone; "
                "add %z or use %tg"
            )
        self.regex = "".join(parts)
        self.spec = spec
        self.has_zone = "%z" in spec
        self._cache: dict[bytes, float] = {}

    def __call__(self, text: bytes) -> float:
        ts = self._cache.get(text)
        if ts is None:
            dt = datetime.strptime(text.decode("ascii"), self.spec)
            ts = dt.timestamp() if self.has_zone else float(calendar.timegm(dt.timetuple()))
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[text] = ts
        return ts


def _default_time(text: bytes) -> float:
    return parse_clf_time(text)


# --- compile --------------------------------------------------------------------------

_KIND_RE = {
    _INT: r"-|-?\d+",
    _DEC: r"-|\d+(?:\.\d+)?",
    _TIME: r"\d{1,2}/[A-Za-z]{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}",
    _TAG: r"-|[A-Za-z][A-Za-z0-9_]*",
}


@dataclass(slots=True)
class CompiledLogformat:
    """A compiled definition: ``match(line)`` -> dict of role -> bytes, or None."""

    name: str | None
    format: str
    tokens: list[str | Token]
    regex: re.Pattern[bytes]
    plan: list[tuple[int, str, str | None]]  # (group, role, quote)
    time_parsers: dict[str, object]  # role -> callable(bytes) -> float
    starts_with_timestamp: bool

    def match(self, line: bytes) -> dict[str, bytes | None] | None:
        m = self.regex.match(line)
        if m is None:
            return None
        groups = m.groups()
        out: dict[str, bytes | None] = {}
        for idx, role, quote in self.plan:
            v = groups[idx]
            if v is None or v == b"-" or v == b"":
                if role not in out:
                    out[role] = None
                continue
            if quote == "quote":
                v = v.replace(b'\\"', b'"').replace(b"\\\\", b"\\")
            if out.get(role) is None:  # first non-empty wins (e.g. %rm before %>rm)
                out[role] = v
        return out


def compile_logformat(definition: str, *, any_protocol: bool = False) -> CompiledLogformat:
    """Compile ``logformat NAME FORMAT`` or just ``FORMAT`` (see module docstring).

    ``any_protocol``: a literal ``HTTP/`` just before ``%rv`` matches any protocol name.
    Squid's built-in common/combined writers print the protocol they saw there (``NONE/0.0``
    for a connection that sent no request) although their documented definition reads
    ``HTTP/%rv``; a user's own logformat prints the literal as written."""
    text = definition.strip()
    name = None
    if text.startswith("logformat ") or text.startswith("logformat\t"):
        rest = text[len("logformat") :].strip()
        name, _, fmt = rest.partition(" ")
        fmt = fmt.strip()
        if not fmt and name in BUILTIN:
            fmt = BUILTIN[name]
        if not fmt:
            raise LogformatError(f"logformat {name!r} has no format string")
    else:
        fmt = text
    if not fmt:
        raise LogformatError("empty logformat")
    tokens = tokenize(fmt)
    if not any(isinstance(t, Token) for t in tokens):
        raise LogformatError("logformat has no % codes")

    pieces: list[str] = ["^"]
    plan: list[tuple[int, str, str | None]] = []
    time_parsers: dict[str, object] = {}
    group = 0
    for pos, tok in enumerate(tokens):
        if isinstance(tok, str):
            proto = ""
            nxt_tok = tokens[pos + 1] if pos + 1 < len(tokens) else None
            if (
                any_protocol
                and tok.endswith("HTTP/")
                and isinstance(nxt_tok, Token)
                and nxt_tok.code in ("rv", ">rv")
            ):
                tok, proto = tok[: -len("HTTP/")], "[A-Za-z]+/"
            # a run of spaces matches one or more spaces (padding, left alignment)
            lit = "".join(" +" if ch == " " else re.escape(ch) for ch in tok)
            pieces.append(re.sub(r"(?: \+)+", " +", lit) + proto)
            continue
        prev = tokens[pos - 1] if pos > 0 else None
        nxt = tokens[pos + 1] if pos + 1 < len(tokens) else None
        prev_c = prev[-1:] if isinstance(prev, str) else ""
        next_c = nxt[:1] if isinstance(nxt, str) else ""
        enclosed = (prev_c, next_c) in (('"', '"'), ("[", "]"), ("'", "'"))
        if tok.code in ("tl", "tg"):
            if tok.arg:
                parser = _StrftimeParser(tok.arg, gmt=tok.code == "tg")
                body = parser.regex
                time_parsers[tok.role or tok.code] = parser
            else:
                body = _KIND_RE[_TIME]
                time_parsers[tok.role or tok.code] = _default_time
            body = f"-|{body}"
        elif tok.kind in (_INT, _DEC, _TAG):
            body = _KIND_RE[tok.kind]
        elif enclosed:  # no raw closing quote inside (Squid escapes it), \-escapes allowed
            body = r'(?:[^"\\]|\\.)*' if prev_c == '"' else f"[^{re.escape(next_c)}]*"
        elif next_c and not next_c.isspace():
            body = f"[^\\s{re.escape(next_c)}]+"
        else:
            body = r"\S+"
        pad = " *" if tok.width else ""
        if tok.left:
            pieces.append(f"({body}){pad}")
        else:
            pieces.append(f"{pad}({body})")
        role = tok.role
        if role is not None:
            plan.append((group, role, tok.quote))
        group += 1
    pieces.append(r"(?:[ \t].*)?$")
    try:
        regex = re.compile("".join(pieces).encode(), re.DOTALL)
    except re.error as exc:  # pragma: no cover - literals are escaped
        raise LogformatError(f"cannot compile logformat: {exc}") from exc
    first = tokens[0]
    return CompiledLogformat(
        name=name,
        format=fmt,
        tokens=tokens,
        regex=regex,
        plan=plan,
        time_parsers=time_parsers,
        starts_with_timestamp=isinstance(first, Token) and first.code == "ts",
    )
