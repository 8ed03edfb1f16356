"""Where a request is processed, and whether that is inside a residency requirement.

The facts live in ``rules/residency.yaml`` (loaded and validated by :mod:`monitor.catalog`):
region ids per provider namespace (``aws:eu-central-1`` -> ``DE``), named zones (``EU``,
``EEA`` …) and the caveats providers publish about their regional endpoints. This module holds
the shapes and the one piece of logic: is a processing geo (a country or a zone) inside a
requirement (a list of countries and zones)?
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: How the processing location of an observation is known.
#:   hostname  the endpoint's name pins the region (eu.api.openai.com, bedrock-runtime.REGION…)
#:   config    the organisation mapped the endpoint to a region ([residency.azure_resources])
#:   global    a global endpoint: the provider may process anywhere
#:   unknown   nothing says
BASES = ("hostname", "config", "global", "unknown")


@dataclass(frozen=True, slots=True)
class Processing:
    """Processing location of one endpoint (the same for every request to it)."""

    region: str | None = None  # provider's region id with a namespace, e.g. "aws:eu-central-1"
    geo: str | None = None  # country (DE) or zone (EU) the region is in
    basis: str = "unknown"  # one of BASES
    caveat: str | None = None  # id in residency.yaml caveats: the provider's own warning
    resource_map: str | None = None  # "azure": the first label is a resource the org may map


UNKNOWN = Processing()


@dataclass(frozen=True)
class ResidencyTables:
    """The contents of ``rules/residency.yaml``."""

    version: str = ""
    zones: dict[str, frozenset[str]] = field(default_factory=dict)  # id -> countries
    region_geo: dict[str, str] = field(default_factory=dict)  # "aws:eu-central-1" -> "DE"
    namespaces: frozenset[str] = frozenset()
    caveats: dict[str, str] = field(default_factory=dict)  # id -> text
    sources: dict[str, tuple[str, ...]] = field(default_factory=dict)  # table -> URLs

    def geo_of(self, region: str | None) -> str | None:
        return self.region_geo.get(region) if region else None

    def countries_of(self, geo: str) -> frozenset[str]:
        return self.zones.get(geo) or frozenset((geo,))

    def allowed_geos(self, requirement: tuple[str, ...]) -> frozenset[str]:
        """Every geo inside ``requirement``: its countries, and each zone all of whose
        countries are in it (``["EEA"]`` admits ``EU`` and ``DE``; ``["DE"]`` not ``EU``).
        Empty for no requirement."""
        if not requirement:
            return frozenset()
        countries = frozenset().union(*(self.countries_of(g) for g in requirement))
        zones = {z for z, members in self.zones.items() if members <= countries}
        return countries | zones | frozenset(requirement)
