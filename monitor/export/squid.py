"""Squid: ACL definitions and the ``http_access deny`` lines, one file to ``include``.

Exact names and suffixes are ``dstdomain`` entries (``*.a.b`` becomes ``.a.b``, which in
Squid also matches ``a.b`` itself); only the one-label wildcards (``x.*.a.b``, ``*-x.a.b``)
need ``dstdom_regex``. Names a selected suffix already covers are left out, since Squid
warns about them (and ignores them). One value per ``acl`` line, so exports diff by host.
"""

from __future__ import annotations

from monitor.export.model import EXACT, SUFFIX, Export, Format, by_provider, commented, host_regex

ACL = "apiwatch_llm"
ACL_REGEX = "apiwatch_llm_re"


def _covered(host: str, suffixes: set[str]) -> str | None:
    """The selected ``.a.b`` that already matches ``host`` in Squid, if any."""
    name = host[1:] if host.startswith(".") else host
    labels = name.split(".")
    for i in range(len(labels) - 1):
        parent = "." + ".".join(labels[i:])
        if parent in suffixes and parent != host:
            return parent
    return None


def render(export: Export) -> str:
    suffixes = {"." + e.host[2:] for e in export.entries if e.shape == SUFFIX}
    lines = commented(
        export,
        "#",
        "Include this file in squid.conf above your http_access allow lines, e.g.",
        "  include /etc/squid/conf.d/apiwatch.conf",
        "dstdomain .a.b also matches a.b itself (Squid's suffix semantics).",
    )
    plain = regex = 0
    for label, entries in by_provider(export.entries):
        lines.append(f"# {label}")
        for e in entries:
            if e.shape == EXACT or e.shape == SUFFIX:
                value = e.host if e.shape == EXACT else "." + e.host[2:]
                cover = _covered(value, suffixes)
                if cover:
                    lines.append(f"#   {e.host}: covered by {cover}")
                    continue
                lines.append(f"acl {ACL} dstdomain {value}")
                plain += 1
            else:
                lines.append(f"acl {ACL_REGEX} dstdom_regex -i {host_regex(e.host)}")
                regex += 1
    if plain:
        lines.append(f"http_access deny {ACL}")
    if regex:
        lines.append(f"http_access deny {ACL_REGEX}")
    if not (plain or regex):
        lines.append("# nothing selected: no acl, no http_access line")
    return "\n".join(lines) + "\n"


FORMAT = Format("squid", "Squid ACLs and http_access deny lines (include file)", render, "#")
