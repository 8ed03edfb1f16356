"""Egress points: which address and country a record left from, and who said so."""

from __future__ import annotations

from ipaddress import ip_network

import pytest

from monitor.config import Site
from monitor.egress import EgressOptions, EgressResolver
from monitor.geo import GeoResolver
from tests.mmdbs import country_db

SITES = {
    "shanghai": Site("shanghai", (ip_network("10.20.0.0/16"),), ("114.114.114.7",)),
    "hongkong": Site("hongkong", (ip_network("10.30.0.0/16"),), ("114.114.114.8",), country="HK"),
}


@pytest.fixture
def geo(tmp_path):
    db = country_db(tmp_path / "c.mmdb", {"114.114.114.0/24": "CN", "133.1.1.0/24": "JP"})
    ov = tmp_path / "overrides.csv"
    ov.write_text(
        "cidr,country,site,asn,org,note\n114.114.114.8/32,SG,,,,leased line really lands in SG\n"
    )
    with GeoResolver([db], [ov], search_dirs=(), use_embedded=False) as resolver:
        yield resolver


def resolve(geo, client, **opts):
    return EgressResolver(SITES, geo, EgressOptions(**opts)).resolve(client)


def test_site_by_client_cidr_then_geolocation_of_its_egress(geo):
    e = resolve(geo, "10.20.3.4")
    assert (e.ip, e.country, e.site) == ("114.114.114.7", "CN", "shanghai")
    assert e.source.startswith("mmdb:")


def test_override_beats_declared_site_country(geo):
    e = resolve(geo, "10.30.0.9")
    assert (e.ip, e.country, e.site) == ("114.114.114.8", "SG", "hongkong")
    assert e.source.startswith("override:")


def test_public_client_is_its_own_egress(geo):
    e = resolve(geo, "133.1.1.50")
    assert (e.ip, e.country, e.site) == ("133.1.1.50", "JP", None)


def test_equal_answers_are_one_object(geo):
    """Clients of one site leave by one egress point: one answer object for them all (the
    record path compares egress points by identity first); other answers stay apart, and
    once the shared answers are forgotten, equal ones still compare equal."""
    resolver = EgressResolver(SITES, geo, EgressOptions())
    first, second = resolver.resolve("10.20.3.4"), resolver.resolve("10.20.9.9", None)
    assert first is second and first.site == "shanghai"
    assert resolver.resolve("10.30.0.9") != first
    assert resolver.resolve("133.1.1.50") is not resolver.resolve("133.1.1.51")
    resolver._answers.clear()
    later = resolver.resolve("10.20.7.7")
    assert later == first and later is not first


def test_options_beat_everything(geo):
    e = resolve(geo, "10.20.3.4", egress_country="DE")
    assert (e.country, e.source) == ("DE", "option:--egress-country")
    e = resolve(geo, "10.99.0.1", egress_ip="133.1.1.9")
    assert (e.ip, e.country) == ("133.1.1.9", "JP")
    e = resolve(geo, "10.99.0.1", site="hongkong")
    assert (e.site, e.ip, e.country) == ("hongkong", "114.114.114.8", "SG")


def test_unknown_client_without_options_has_no_egress(geo):
    e = resolve(geo, "10.99.0.1")
    assert (e.ip, e.country, e.source) == (None, None, "unknown")


def test_unknown_site_is_an_error(geo):
    with pytest.raises(ValueError, match="unknown site 'paris'"):
        EgressResolver(SITES, geo, EgressOptions(site="paris"))


def test_egress_logged_by_the_gateway_beats_the_site(geo):
    # Zscaler logs the client's public address: that is what the provider saw
    r = EgressResolver(SITES, geo, EgressOptions())
    e = r.resolve("10.30.0.9", "133.1.1.40")
    assert (e.ip, e.country, e.site) == ("133.1.1.40", "JP", "hongkong")
    # ... unless it is the site's own egress, whose declared country then applies
    e = r.resolve("10.20.3.4", "114.114.114.7")
    assert (e.ip, e.country, e.site) == ("114.114.114.7", "CN", "shanghai")
    # and an operator's --egress-ip still wins
    e = EgressResolver(SITES, geo, EgressOptions(egress_ip="114.114.114.7")).resolve(
        "10.30.0.9", "133.1.1.40"
    )
    assert e.ip == "114.114.114.7"
