"""Tiny MaxMind DB files for tests, written with mmdb-writer and read back by geoip2.

Each helper takes ``{cidr: value}`` and writes a file whose ``database_type`` makes
``geoip2.database.Reader`` accept the matching method (``.country()``, ``.city()``, ``.asn()``,
``.isp()``, ``.enterprise()``). Nothing here is MaxMind data: the records are invented.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet


def write_mmdb(
    path: Path,
    database_type: str,
    records: Mapping[str, Any],
    *,
    ip_version: int = 6,
    build_epoch: int | None = None,
) -> Path:
    """Write ``{cidr: record}`` to ``path``; IPv4 CIDRs go under ``::/96`` in IPv6 files."""
    writer = MMDBWriter(
        ip_version=ip_version,
        ipv4_compatible=ip_version == 6,
        database_type=database_type,
        languages=["en"],
        description={"en": f"apiwatch test database ({database_type})"},
        int_type="u32",
    )
    # Shorter prefixes first, so that more specific networks carve holes in them.
    for cidr in sorted(records, key=lambda c: int(c.rsplit("/", 1)[1]) if "/" in c else 128):
        writer.insert_network(IPSet([cidr]), records[cidr])
    path.parent.mkdir(parents=True, exist_ok=True)
    writer.to_db_file(str(path))
    if build_epoch is not None:
        _patch_build_epoch(path, build_epoch)
    return path


def _patch_build_epoch(path: Path, epoch: int) -> None:
    """Rewrite the metadata's ``build_epoch`` (mmdb-writer always stamps the current time)."""
    import maxminddb
    from mmdb_writer import Encoder

    data = path.read_bytes()
    marker = b"\xab\xcd\xefMaxMind.com"
    at = data.rindex(marker) + len(marker)
    with maxminddb.open_database(str(path)) as r:
        md = r.metadata()
    meta = {
        "node_count": md.node_count,
        "record_size": md.record_size,
        "ip_version": md.ip_version,
        "database_type": md.database_type,
        "languages": md.languages,
        "binary_format_major_version": md.binary_format_major_version,
        "binary_format_minor_version": md.binary_format_minor_version,
        "description": md.description,
        "build_epoch": epoch,
    }
    path.write_bytes(data[:at] + Encoder(cache=False).encode_meta(meta))


def country_db(path: Path, countries: Mapping[str, str], *, database_type="GeoIP2-Country", **kw):
    """GeoIP2-Country schema: ``{"country": {"iso_code": ..}, "registered_country": ..}``."""
    return write_mmdb(
        path,
        database_type,
        {
            cidr: {
                "country": {"iso_code": cc, "names": {"en": f"Country {cc}"}},
                "registered_country": {"iso_code": cc, "names": {"en": f"Country {cc}"}},
                "continent": {"code": "XX", "names": {"en": "Test"}},
            }
            for cidr, cc in countries.items()
        },
        **kw,
    )


def city_db(path: Path, countries: Mapping[str, str], *, database_type="GeoIP2-City", **kw):
    """GeoIP2-City schema (``.country()`` refuses these files; ``.city()`` must be used)."""
    return write_mmdb(
        path,
        database_type,
        {
            cidr: {
                "city": {"geoname_id": 1, "names": {"en": f"City in {cc}"}},
                "country": {"iso_code": cc, "names": {"en": f"Country {cc}"}},
                "location": {"latitude": 1.5, "longitude": 2.5, "accuracy_radius": 100},
            }
            for cidr, cc in countries.items()
        },
        **kw,
    )


def asn_db(path: Path, asns: Mapping[str, tuple[int, str]], *, database_type="GeoLite2-ASN", **kw):
    """GeoLite2-ASN schema: ``autonomous_system_number`` / ``autonomous_system_organization``."""
    return write_mmdb(
        path,
        database_type,
        {
            cidr: {"autonomous_system_number": asn, "autonomous_system_organization": org}
            for cidr, (asn, org) in asns.items()
        },
        **kw,
    )


def isp_db(
    path: Path, rows: Mapping[str, tuple[int, str, str]], *, database_type="GeoIP2-ISP", **kw
):
    """GeoIP2-ISP schema: ASN, AS organisation, ``isp`` and ``organization``."""
    return write_mmdb(
        path,
        database_type,
        {
            cidr: {
                "autonomous_system_number": asn,
                "autonomous_system_organization": org,
                "isp": isp,
                "organization": isp,
            }
            for cidr, (asn, org, isp) in rows.items()
        },
        **kw,
    )


def enterprise_db(
    path: Path,
    rows: Mapping[str, tuple[str, int, str]],
    *,
    database_type="GeoIP2-Enterprise",
    **kw,
):
    """GeoIP2-Enterprise schema: country plus ``traits.autonomous_system_*``."""
    return write_mmdb(
        path,
        database_type,
        {
            cidr: {
                "country": {"iso_code": cc, "names": {"en": f"Country {cc}"}},
                "traits": {
                    "autonomous_system_number": asn,
                    "autonomous_system_organization": org,
                },
            }
            for cidr, (cc, asn, org) in rows.items()
        },
        **kw,
    )


def flat_db(path: Path, rows: Mapping[str, dict], *, database_type="country ipvAll", **kw):
    """A non-GeoIP2 schema (like sapics' ``{"country_code": "US"}``): read raw."""
    return write_mmdb(path, database_type, dict(rows), **kw)
