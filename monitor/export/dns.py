"""DNS policy: a Response Policy Zone (BIND, Unbound, Knot, PowerDNS) and dnsmasq lines.

Both answer NXDOMAIN for a listed name (RPZ ``CNAME .``; dnsmasq ``address=/name/`` with no
address). RPZ triggers take a wildcard only as the whole first label, and dnsmasq (2.86+)
only as a leading ``*.``: so ``*.a.b`` translates to both, while one-label wildcards
(``x.*.a.b``, ``*-x.a.b``) cannot be expressed and are listed in a comment instead.
"""

from __future__ import annotations

from collections.abc import Callable

from monitor.export.model import EXACT, SUFFIX, WILDCARD, Export, Format, by_provider, commented

RPZ_TTL = 300
_NOT_EXPRESSIBLE = "not expressible (a wildcard inside a label or the name, not a leading *.):"


def _policy(export: Export, prefix: str, line: Callable[[str], str]) -> list[str]:
    """One ``line(host)`` per expressible host under its provider comment, then the rest."""
    out = []
    for label, entries in by_provider(export.entries):
        out.append(f"{prefix} {label}")
        out += [line(e.host) for e in entries if e.shape in (EXACT, SUFFIX)]
    unexpressed = [e.host for e in export.entries if e.shape == WILDCARD]
    return out + [f"{prefix} {_NOT_EXPRESSIBLE} {h}" for h in unexpressed]


def render_rpz(export: Export) -> str:
    serial = export.generated.strftime("%Y%m%d%H")  # fits the 32-bit serial, grows over time
    lines = commented(
        export,
        ";",
        'Load as a response-policy zone (BIND: response-policy { zone "apiwatch.rpz"; };).',
        "Policy answer: NXDOMAIN (CNAME .) for each listed name.",
    )
    lines += [
        f"$TTL {RPZ_TTL}",
        f"@ IN SOA localhost. hostmaster.localhost. {serial} 3600 600 86400 {RPZ_TTL}",
        "@ IN NS localhost.",
    ]
    lines += _policy(export, ";", "{} CNAME .".format)
    return "\n".join(lines) + "\n"


def render_dnsmasq(export: Export) -> str:
    lines = commented(
        export,
        "#",
        "dnsmasq --conf-file=THIS (or conf-dir): NXDOMAIN for each listed name.",
        "address=/a.b/ also covers every name under a.b; /*.a.b/ only the names under it.",
    )
    lines += _policy(export, "#", "address=/{}/".format)
    return "\n".join(lines) + "\n"


RPZ = Format("rpz", "DNS Response Policy Zone (NXDOMAIN)", render_rpz, ";", ("@ IN SOA",))
DNSMASQ = Format("dnsmasq", "dnsmasq address= lines (NXDOMAIN)", render_dnsmasq, "#")
