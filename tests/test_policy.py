"""The rule engine: vocabulary, load-time validation, and the bundled rules' meaning."""

from __future__ import annotations

import pytest

from monitor.catalog import Catalog
from monitor.config import Config
from monitor.egress import Egress
from monitor.observation import Observation
from monitor.pipeline import Enriched, Evaluator
from monitor.policy import FIELDS, RuleError, RuleSet, compile_rule
from monitor.resources import rules_dir

BUNDLED = rules_dir() / "policies"


def rule_doc(**when):
    return {"id": "t", "title": "T", "severity": "low", "description": "d", "when": when}


def test_operators():
    ctx = {
        "provider.id": "openai",
        "egress.country": "CN",
        "provider.allowed_countries": frozenset({"US", "DE"}),
    }
    assert compile_rule(rule_doc(**{"provider.id": {"equals": "openai"}}), "x").matches(ctx)
    assert not compile_rule(rule_doc(**{"provider.id": {"not_equals": "openai"}}), "x").matches(ctx)
    assert compile_rule(
        rule_doc(**{"egress.country": {"not_in": "$provider.allowed_countries"}}), "x"
    ).matches(ctx)
    assert not compile_rule(
        rule_doc(**{"egress.country": {"in": "$provider.allowed_countries"}}), "x"
    ).matches(ctx)
    assert compile_rule(rule_doc(**{"egress.country": {"in": ["CN", "HK"]}}), "x").matches(ctx)
    assert compile_rule(rule_doc(**{"egress.site": {"exists": False}}), "x").matches(ctx)
    assert compile_rule(rule_doc(**{"org.allowed_providers": {"empty": True}}), "x").matches(ctx)


def test_missing_list_semantics():
    # `in` a list that does not exist is false; `not_in` it is true
    ctx = {"egress.country": "CN"}
    assert not compile_rule(
        rule_doc(**{"egress.country": {"in": "$provider.allowed_countries"}}), "x"
    ).matches(ctx)
    assert compile_rule(
        rule_doc(**{"egress.country": {"not_in": "$provider.allowed_countries"}}), "x"
    ).matches(ctx)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            {
                "title": "x",
                "severity": "low",
                "description": "d",
                "when": {"provider.id": {"equals": "a"}},
            },
            "without an 'id'",
        ),
        (
            {**rule_doc(**{"provider.id": {"equals": "a"}}), "severity": "urgent"},
            "rule 't': severity",
        ),
        (
            rule_doc(**{"provider.nonsense": {"equals": "a"}}),
            "rule 't': unknown field 'provider.nonsense'",
        ),
        (
            rule_doc(**{"provider.id": {"matches": "a"}}),
            "rule 't': provider.id: unknown operator 'matches'",
        ),
        (rule_doc(**{"provider.id": {"in": "$nope"}}), "unknown field reference '$nope'"),
        (rule_doc(**{"provider.id": {"in": "openai"}}), "needs a list"),
        (rule_doc(**{"provider.id": {"exists": "yes"}}), "needs true or false"),
        (rule_doc(), "'when' must be a non-empty mapping"),
        (rule_doc(**{"dest.ip": {"in_networks": ["10.0.0.0/33"]}}), "dest.ip: in_networks"),
        (rule_doc(**{"dest.ip": {"in_networks": "10.0.0.0/8"}}), "needs a list"),
        (
            {
                **rule_doc(**{"dest.ip": {"exists": True}}),
                "unless": {"dest.nope": {"exists": True}},
            },
            "rule 't': unless: unknown field 'dest.nope'",
        ),
        ({**rule_doc(**{"dest.ip": {"exists": True}}), "unless": []}, "'unless' must be"),
        (
            {**rule_doc(**{"dest.ip": {"exists": True}}), "evidence": ["dest.nope"]},
            "evidence: unknown field 'dest.nope'",
        ),
        (rule_doc(**{"history.served": {"empty": False}}), "history fields need 'correlate'"),
        (
            {**rule_doc(**{"dest.ip": {"exists": True}}), "correlate": {"window": "24h"}},
            "dest.ip: a correlation rule reads history",
        ),
        (
            {**rule_doc(**{"history.served": {"empty": False}}), "correlate": {"window": "1w"}},
            "correlate: window must be",
        ),
        (
            {**rule_doc(**{"history.served": {"empty": False}}), "correlate": {"by": "site"}},
            "by must be client",
        ),
        (
            {**rule_doc(**{"provider.id": {"equals": "a"}}), "colour": "red"},
            "unknown key(s) colour",
        ),
    ],
)
def test_invalid_rules_fail_at_load_with_name(tmp_path, doc, message):
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(RuleError) as err:
        RuleSet.load([path])
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_duplicate_ids_rejected(tmp_path):
    text = (BUNDLED / "relay-service.yaml").read_text()
    (tmp_path / "a.yaml").write_text(text)
    (tmp_path / "b.yaml").write_text(text)
    with pytest.raises(RuleError, match="duplicate id"):
        RuleSet.load([tmp_path])


def test_disabled_rule_is_loaded_but_not_used(tmp_path):
    (tmp_path / "r.yaml").write_text(
        (BUNDLED / "relay-service.yaml").read_text() + "enabled: false\n"
    )
    assert RuleSet.load([tmp_path]).rules == []


def test_bundled_rules_use_only_documented_fields():
    rules = RuleSet.load([BUNDLED])
    assert {r.id for r in rules.rules} == {
        "egress-hopping",
        "endpoint-network-mismatch",
        "fronted-llm-traffic",
        "llm-api-unknown-host",
        "provider-region-unsupported",
        "unknown-region-policy",
        "relay-service",
        "unapproved-provider",
        "possible-relay",
        "data-residency",
        "residency-unverifiable",
        "provider-entity-restricted",
        "unknown-provider-endpoint",
    }
    for rule in rules.rules:
        assert set(rule.when) <= set(FIELDS)
        assert set(rule.evidence) <= set(FIELDS)


def test_networks_unless_and_evidence():
    doc = {
        **rule_doc(**{"dest.ip": {"not_in_networks": "$provider.ranges"}}),
        "unless": [{"dest.scope": {"equals": "private"}}, {"dest.asn": {"in": [13335]}}],
        "evidence": ["dest.ip"],
    }
    rule = compile_rule(doc, "x")
    ranges = ("160.79.104.0/23", "2607:6bc0::/48")
    assert rule.evidence == ("dest.ip",)
    assert rule.matches({"dest.ip": "159.89.0.10", "provider.ranges": ranges})
    assert not rule.matches({"dest.ip": "160.79.105.1", "provider.ranges": ranges})
    assert not rule.matches({"dest.ip": "2607:6bc0::10", "provider.ranges": ranges})
    assert rule.matches({"dest.ip": "2001:db8::1", "provider.ranges": ranges})
    assert not rule.matches(
        {"dest.ip": "10.0.0.1", "dest.scope": "private", "provider.ranges": ranges}
    )
    assert not rule.matches({"dest.ip": "1.1.1.1", "dest.asn": 13335, "provider.ranges": ranges})
    # a literal list; no address is in no network
    inside = compile_rule(rule_doc(**{"dest.ip": {"in_networks": ["10.0.0.0/8"]}}), "x")
    assert inside.matches({"dest.ip": "10.1.2.3"}) and not inside.matches({"dest.ip": None})
    assert not inside.matches({"dest.ip": "not-an-address"})


def _ctx(catalog: Catalog, host: str, country: str | None, allowed=frozenset()):
    """The context the real pipeline builds for a CONNECT to ``host`` from ``country``."""
    m = catalog.match_host(host)
    assert m is not None, host
    obs = Observation(ts=0.0, source="t", line=1, format="squid", dest_host=host, method="CONNECT")
    enriched = Enriched(obs, m, Egress("203.0.113.1", country, None, "test"), None, None)
    rules = RuleSet.load([BUNDLED])
    return Evaluator(rules, catalog, Config(allowed_providers=tuple(allowed))).context(enriched)


@pytest.mark.parametrize(
    ("host", "country", "expected"),
    [
        ("api.openai.com", "CN", {"provider-region-unsupported"}),
        ("api.openai.com", "HK", {"provider-region-unsupported"}),
        ("api.openai.com", "RU", {"provider-region-unsupported"}),
        ("api.openai.com", "DE", set()),
        ("api.openai.com", "US", set()),
        ("chatgpt.com", "CN", {"provider-region-unsupported"}),
        ("api.anthropic.com", "CN", {"provider-region-unsupported"}),
        ("api.anthropic.com", "JP", set()),
        ("generativelanguage.googleapis.com", "IR", {"provider-region-unsupported"}),
        ("api.openai.com", None, set()),  # unknown egress: nothing to judge
        ("api.deepseek.com", "CN", set()),  # HQ country always served
        ("api.deepseek.com", "HK", {"unknown-region-policy"}),  # no list, HK on no major list
        ("api.deepseek.com", "DE", set()),  # no list, but DE is widely served
        ("api.mistral.ai", "RU", {"unknown-region-policy"}),
        ("openrouter.ai", "DE", {"relay-service"}),
        ("gateway.ai.cloudflare.com", "CN", {"relay-service"}),
        ("my-openai-proxy.example.workers.dev", "CN", {"possible-relay"}),
    ],
)
def test_bundled_rules_meaning(host, country, expected):
    catalog = Catalog.load()
    rules = RuleSet.load([BUNDLED])
    assert {r.id for r in rules.evaluate(_ctx(catalog, host, country))} == expected


def test_unapproved_provider_only_with_a_list():
    catalog = Catalog.load()
    rules = RuleSet.load([BUNDLED])

    def ids(host, allowed):
        return {r.id for r in rules.evaluate(_ctx(catalog, host, "DE", allowed))}

    assert "unapproved-provider" not in ids("api.deepseek.com", frozenset())
    assert "unapproved-provider" in ids("api.deepseek.com", frozenset({"openai"}))
    assert "unapproved-provider" not in ids("api.openai.com", frozenset({"openai"}))
    assert "unapproved-provider" not in ids("x.workers.dev", frozenset({"openai"}))
