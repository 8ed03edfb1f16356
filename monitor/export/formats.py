"""Every export format, registered in one place: ``FORMATS[name]``."""

from __future__ import annotations

from monitor.export import dns, plain, sigma, squid, suricata, zeek
from monitor.export.model import Format

FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        squid.FORMAT,
        suricata.FORMAT,
        sigma.FORMAT,
        dns.RPZ,
        dns.DNSMASQ,
        zeek.FORMAT,
        plain.HOSTS,
        plain.JSON,
    )
}
