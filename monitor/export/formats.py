"""Every export format, registered in one place: ``FORMATS[name]``."""

from __future__ import annotations

from monitor.export.dns import DNSMASQ, RPZ
from monitor.export.model import Format
from monitor.export.plain import HOSTS, JSON
from monitor.export.sigma import FORMAT as SIGMA
from monitor.export.squid import FORMAT as SQUID
from monitor.export.suricata import FORMAT as SURICATA
from monitor.export.zeek import FORMAT as ZEEK_INTEL

FORMATS: dict[str, Format] = {
    f.name: f for f in (SQUID, SURICATA, SIGMA, RPZ, DNSMASQ, ZEEK_INTEL, HOSTS, JSON)
}
