"""Egress points: from which public address, in which country, a request left the organisation.

Providers see the egress address, not the client, so region policy is judged on it.
Precedence for the country: ``--egress-country`` > overrides file (for the egress IP) >
the site's declared country (for the site's own egress IPs, or any when it names none) >
geolocation of the egress IP. An egress IP given on the command line (``--egress-ip``) or by
the log itself that is not one of the site's is geolocated: what the operator says for this
scan beats the config. Each answer carries its source, and the geolocated country is kept
beside the decided one (``egress_geo_country``) so rules can use either.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache

from monitor.config import Site
from monitor.geo import GeoResolver


@dataclass(frozen=True, slots=True)
class Egress:
    ip: str | None
    country: str | None
    site: str | None
    source: str  # how the country was decided, e.g. "site:shanghai", "geo:embedded:…"
    geo_country: str | None = None  # geolocation of ``ip``, whatever decided ``country``


@dataclass(frozen=True, slots=True)
class EgressOptions:
    """What the operator said about a log source on the command line."""

    egress_ip: str | None = None
    egress_country: str | None = None
    site: str | None = None


class EgressResolver:
    """Maps a client address to its egress point; memoised per distinct client. Equal
    answers are one object, so that comparing the egress points of two clients (as the
    record path does for every new client of a destination) is mostly an identity test."""

    SHARED = 65536  # distinct answers shared (then forgotten, and shared anew)

    def __init__(self, sites: dict[str, Site], geo: GeoResolver, options: EgressOptions):
        if options.site is not None and options.site not in sites:
            known = ", ".join(sorted(sites)) or "none configured"
            raise ValueError(f"unknown site {options.site!r} (sites: {known})")
        self._sites = sites
        self._geo = geo
        self._opts = options
        self._forced_site = sites.get(options.site) if options.site else None
        self._answers: dict[Egress, Egress] = {}
        self.resolve = lru_cache(maxsize=65536)(self._shared)

    def _shared(self, client_ip: str | None, logged_egress: str | None = None) -> Egress:
        answer = self._resolve(client_ip, logged_egress)
        if len(self._answers) >= self.SHARED:
            self._answers.clear()
        return self._answers.setdefault(answer, answer)

    def _site_for(self, client_ip: str | None, is_public: bool) -> Site | None:
        if self._forced_site is not None:
            return self._forced_site
        if client_ip is None:
            return None
        addr = ipaddress.ip_address(client_ip)
        for site in self._sites.values():
            if (is_public and client_ip in site.egress_ips) or any(
                addr in net for net in site.client_cidrs if net.version == addr.version
            ):
                return site
        return None

    def _resolve(self, client_ip: str | None, logged_egress: str | None = None) -> Egress:
        """``logged_egress`` is the public address the log itself gives for the record
        (gateways such as Zscaler log it); it beats the site's egress and declared country."""
        client_geo = self._geo.lookup(client_ip) if client_ip else None
        is_public = client_geo is not None and client_geo.scope == "public"
        site = self._site_for(client_ip, is_public)
        site_name = site.name if site else (client_geo.site if client_geo else None)

        if self._opts.egress_ip:
            egress_ip: str | None = self._opts.egress_ip
        elif logged_egress:
            egress_ip = logged_egress
        elif is_public:
            egress_ip = client_ip
        elif site and site.egress_ips:
            egress_ip = site.egress_ips[0]
        else:
            egress_ip = None

        answer = self._geo.lookup(egress_ip) if egress_ip else None
        geo_cc = answer.country if answer else None
        if self._opts.egress_country:
            return Egress(
                egress_ip, self._opts.egress_country, site_name, "option:--egress-country", geo_cc
            )
        if answer and answer.country_source and answer.country_source.startswith("override"):
            return Egress(
                egress_ip, answer.country, site_name or answer.site, answer.country_source, geo_cc
            )
        # a site's declared country is that of its own egress (or of the site, when it names
        # none), not of an address the command line or the log names instead
        named_elsewhere = (
            egress_ip is not None
            and egress_ip in (self._opts.egress_ip, logged_egress)
            and site is not None
            and egress_ip not in site.egress_ips
        )
        if site and site.country and not named_elsewhere:
            return Egress(egress_ip, site.country, site_name, f"site:{site.name}", geo_cc)
        if answer and answer.country:
            return Egress(egress_ip, answer.country, site_name or answer.site,
                          answer.country_source or "geo", geo_cc)  # fmt: skip
        return Egress(egress_ip, None, site_name, "unknown", geo_cc)


def contradictions(
    sites: dict[str, Site], geo: GeoResolver, options: EgressOptions | None = None
) -> list[str]:
    """Where a declared country (a site's, or ``--egress-country``) contradicts the
    geolocation of the same egress address: said by ``config check`` and the scan summary."""
    found = []
    declared = [(f"sites.{s.name}", ip, s.country) for s in sites.values() if s.country
                for ip in s.egress_ips]  # fmt: skip
    if options and options.egress_country and options.egress_ip:
        declared.append(("--egress-country", options.egress_ip, options.egress_country))
    for where, ip, country in declared:
        answer = geo.lookup(ip)
        if (
            answer.country
            and answer.country != country
            and not (answer.country_source or "").startswith("override")
        ):
            found.append(
                f"{where}: declares {country} for egress {ip}, which geolocates to "
                f"{answer.country} ({answer.country_source}); rules see {country} as "
                f"egress.country and {answer.country} as egress.geo_country"
            )
    return found
