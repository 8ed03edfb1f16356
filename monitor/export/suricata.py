"""Suricata 7 rules on ``tls.sni``, ``http.host`` and ``dns.query``.

Exact names match the whole buffer (``startswith; endswith``), suffixes ``*.a.b`` match
``content:".a.b"; endswith`` (never ``a.b`` itself, as in the catalogue), the one-label
wildcards add a ``pcre`` behind the fixed suffix. ``nocase`` on SNI and DNS names; not on
``http.host``, which Suricata lower-cases itself and rejects ``nocase`` for.

``sid``s are derived from the buffer and the host, so a re-export of the same hosts keeps
its sids and diffs cleanly: :data:`SID_BASE` plus a hash in :data:`SID_SPAN` (a block no
public rule set allocates). The rare hash collision inside one export moves the later host
(in sorted order) to the next free sid.
"""

from __future__ import annotations

import hashlib

from monitor.export.model import (
    EXACT,
    SUFFIX,
    Entry,
    Export,
    Format,
    commented,
    fixed_suffix,
    host_regex,
)

SID_BASE = 1_610_000_000
SID_SPAN = 400_000_000
#: (app-layer protocol, sticky buffer, what the message calls it, nocase allowed)
BUFFERS = (
    ("tls", "tls.sni", "TLS SNI", True),
    ("http", "http.host", "HTTP Host", False),
    ("dns", "dns.query", "DNS query", True),
)


def sid_for(buffer: str, host: str) -> int:
    digest = hashlib.blake2b(f"{buffer} {host}".encode(), digest_size=8).digest()
    return SID_BASE + int.from_bytes(digest, "big") % SID_SPAN


def _text(value: str) -> str:
    """Safe inside a quoted rule option or a metadata value: no quote, ';', '\\' or ','."""
    return "".join(c if c.isprintable() and c not in '";\\,' else " " for c in value)


def _match(e: Entry, nocase: bool) -> str:
    nc = " nocase;" if nocase else ""
    if e.shape == EXACT:
        return f'content:"{e.host}";{nc} startswith; endswith;'
    if e.shape == SUFFIX:
        return f'content:"{e.host[1:]}";{nc} endswith;'
    flags = "i" if nocase else ""
    return f'content:"{fixed_suffix(e.host)}";{nc} endswith; pcre:"/{host_regex(e.host)}/{flags}";'


def rules(export: Export) -> list[str]:
    used: set[int] = set()
    sids: dict[tuple[str, str], int] = {}
    for _, buffer, _, _ in BUFFERS:
        for host in sorted(e.host for e in export.entries):
            sid = sid_for(buffer, host)
            while sid in used:
                sid = SID_BASE + (sid - SID_BASE + 1) % SID_SPAN
            used.add(sid)
            sids[buffer, host] = sid
    out = []
    for e in export.entries:
        why = ",".join(e.rule_ids) or "selected"
        source = e.provider.sources[0] if e.provider.sources else "-"
        meta = (
            f"apiwatch_provider {e.provider.id}, apiwatch_kind {e.kind}, apiwatch_rule {why}, "
            f"apiwatch_catalogue {export.catalog_version}, apiwatch_source {_text(source)}"
        )
        for proto, buffer, what, nocase in BUFFERS:
            msg = _text(f"apiwatch {why}: {e.provider.name} ({e.provider.id}) {e.host} {what}")
            out.append(
                f'alert {proto} any any -> any any (msg:"{msg}"; {buffer}; {_match(e, nocase)} '
                f"classtype:policy-violation; metadata:{meta}; "
                f"sid:{sids[buffer, e.host]}; rev:1;)"
            )
    return out


def render(export: Export) -> str:
    return "\n".join([*commented(export, "#"), *rules(export)]) + "\n"


FORMAT = Format("suricata", "Suricata 7 rules on tls.sni, http.host and dns.query", render, "#")
