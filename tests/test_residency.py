"""Where the model runs: regional endpoints, residency rules, entities, packs, the overlay.

Real Squid native log lines go through the real collector and the real CLI (parse, scan,
incidents, providers, rules, config check) with a real SQLite file.
"""

from __future__ import annotations

import json
import sqlite3
import textwrap
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from monitor.catalog import Catalog, CatalogError
from monitor.cli import main
from monitor.policy import load_packs
from monitor.residency import ResidencyTables
from monitor.resources import rules_dir

RULES = rules_dir()


def run(*args, ok=(0,)):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code in ok, result.output + result.stderr
    return result


def squid_line(n: int, client: str, host: str) -> str:
    """One Squid native access.log line: a CONNECT tunnel to ``host``."""
    return (
        f"{1764806400 + n}.{n % 1000:03d}    240 {client} TCP_TUNNEL/200 {4000 + n} "
        f"CONNECT {host}:443 - HIER_DIRECT/203.0.113.{n % 250 + 1} -"
    )


def write_log(path: Path, hosts: list[str], client: str = "10.1.0.5") -> Path:
    path.write_text("".join(squid_line(i, client, h) + "\n" for i, h in enumerate(hosts)))
    return path


#: host -> (provider, kind, processing_region, processing_geo, residency_basis, caveat)
FAMILIES = {
    # OpenAI: global host and the data-residency hosts
    "api.openai.com": ("openai", "api", None, None, "global", None),
    "eu.api.openai.com": ("openai", "api", "openai:eu", "EU", "hostname", "openai-regional-processing"),
    "us.api.openai.com": ("openai", "api", "openai:us", "US", "hostname", "openai-regional-processing"),
    "jp.api.openai.com": ("openai", "api", "openai:jp", "JP", "hostname", "openai-regional-processing"),
    "au.api.openai.com": ("openai", "api", "openai:au", "AU", "hostname", "openai-regional-processing"),
    "in.api.openai.com": ("openai", "api", "openai:in", "IN", "hostname", "openai-regional-processing"),
    "ae.api.openai.com": ("openai", "api", "openai:ae", "AE", "hostname", "openai-regional-processing"),
    # Azure OpenAI / Foundry: the resource name hides the region
    "fabrikam-ai.openai.azure.com": ("azure_openai", "api", None, None, "unknown", "azure-deployment-type"),
    "fabrikam-ai.cognitiveservices.azure.com": ("azure_openai", "api", None, None, "unknown", "azure-deployment-type"),
    "fabrikam-ai.services.ai.azure.com": ("azure_openai", "api", None, None, "unknown", "azure-deployment-type"),
    "llama-ep.swedencentral.models.ai.azure.com": ("azure_openai", "api", "azure:swedencentral", "SE", "hostname", "azure-deployment-type"),
    "gov-ai.openai.azure.us": ("azure_openai", "api", None, "US", "hostname", None),
    "cn-ai.openai.azure.cn": ("azure_openai", "api", None, "CN", "hostname", None),
    # AWS Bedrock: commercial, FIPS, GovCloud, China partition, the OpenAI-compatible Mantle
    "bedrock-runtime.eu-central-1.amazonaws.com": ("aws_bedrock", "api", "aws:eu-central-1", "DE", "hostname", "aws-cross-region-inference"),
    "bedrock-runtime-fips.us-east-1.amazonaws.com": ("aws_bedrock", "api", "aws:us-east-1", "US", "hostname", "aws-cross-region-inference"),
    "bedrock-runtime.us-gov-west-1.amazonaws.com": ("aws_bedrock", "api", "aws:us-gov-west-1", "US", "hostname", "aws-cross-region-inference"),
    "bedrock-runtime.cn-north-1.amazonaws.com.cn": ("aws_bedrock", "api", "aws:cn-north-1", "CN", "hostname", "aws-cross-region-inference"),
    "bedrock-mantle.eu-west-1.api.aws": ("aws_bedrock", "api", "aws:eu-west-1", "IE", "hostname", "aws-cross-region-inference"),
    # Claude Platform on AWS
    "aws-external-anthropic.eu-west-3.api.aws": ("anthropic", "api", "aws:eu-west-3", "FR", "hostname", None),
    "api.anthropic.com": ("anthropic", "api", None, None, "global", "anthropic-inference-geo"),
    # Vertex AI: regional, global and the multi-region hosts
    "europe-west4-aiplatform.googleapis.com": ("google_vertex", "api", "gcp:europe-west4", "NL", "hostname", "vertex-ml-processing"),
    "aiplatform.googleapis.com": ("google_vertex", "api", None, None, "global", None),
    "aiplatform.eu.rep.googleapis.com": ("google_vertex", "api", "gcp:eu", "EU", "hostname", None),
    "aiplatform.us.rep.googleapis.com": ("google_vertex", "api", "gcp:us", "US", "hostname", None),
    # Mistral's regional hosts
    "api.mistral.ai": ("mistral", "api", None, None, "global", None),
    "api.eu.mistral.ai": ("mistral", "api", "mistral:eu", "EU_EFTA", "hostname", "mistral-control-plane"),
    "api.us.mistral.ai": ("mistral", "api", "mistral:us", "US", "hostname", "mistral-control-plane"),
    # other providers publishing regional endpoints
    "us-east-1.api.x.ai": ("xai", "api", "xai:us-east-1", "US", "hostname", None),
    "llm-gateway.eu.assemblyai.com": ("assemblyai_llm_gateway", "relay", "assemblyai:eu", "EU", "hostname", None),
    # assistants and coding tools
    "api.githubcopilot.com": ("github_copilot", "api", None, None, "unknown", None),
    "api.business.githubcopilot.com": ("github_copilot", "api", None, None, "unknown", None),
    "copilot-proxy.githubusercontent.com": ("github_copilot", "api", None, None, "unknown", None),
    "copilot.microsoft.com": ("microsoft_copilot", "consumer", None, None, "unknown", None),
    "api2.cursor.sh": ("cursor", "relay", None, None, "unknown", None),
    "api.cursor.sh": ("cursor", "relay", None, None, "unknown", None),
    "server.codeium.com": ("windsurf", "relay", None, None, "unknown", None),
    "api.jetbrains.ai": ("jetbrains_ai", "relay", None, None, "unknown", None),
    "www.perplexity.ai": ("perplexity", "consumer", None, None, "unknown", None),
    "manus.im": ("manus", "consumer", None, None, "unknown", None),
    "kimi.com": ("moonshot", "consumer", None, None, "unknown", None),
    "www.doubao.com": ("volcengine_ark", "consumer", None, None, "unknown", None),
    "chat.qwen.ai": ("alibaba_dashscope", "consumer", None, None, "unknown", None),
    "poe.com": ("poe_api", "relay", None, None, "unknown", None),
}  # fmt: skip


def test_every_host_family_through_the_squid_collector(tmp_path):
    log = write_log(tmp_path / "access.log", [*FAMILIES, "www.example.org"])
    rows = [json.loads(x) for x in run("parse", log, "--json").stdout.splitlines()]
    assert len(rows) == len(FAMILIES) + 1
    for row in rows:
        got = (
            row["provider"],
            row["provider_kind"],
            row["processing_region"],
            row["processing_geo"],
            row["residency_basis"],
            row["residency_caveat"],
        )
        if row["dest_host"] == "www.example.org":
            assert got == (None,) * 6  # not LLM traffic: nothing said about processing
        else:
            assert got == FAMILIES[row["dest_host"]], row["dest_host"]


def test_issue_hosts_are_recognised_by_providers_command():
    hosts = [
        "eu.api.openai.com",
        "us.api.openai.com",
        "api.eu.mistral.ai",
        "aiplatform.eu.rep.googleapis.com",
        "api.githubcopilot.com",
        "api.cursor.sh",
        "copilot.microsoft.com",
    ]
    rows = [json.loads(x) for x in run("providers", *hosts, "--json").stdout.splitlines()]
    assert all(r["provider"] for r in rows)
    eu = rows[0]
    assert (eu["processing_region"], eu["processing_geo"], eu["residency_basis"]) == (
        "openai:eu",
        "EU",
        "hostname",
    )
    assert "regional processing" in eu["caveat"]
    table = run("providers", "bedrock-runtime.eu-west-1.amazonaws.com").stdout
    assert "aws:eu-west-1" in table and "aws-cross-region-inference" in table


def test_unlisted_host_under_a_provider_domain_is_a_low_lead():
    cat = Catalog.load()
    m = cat.match_host("xx.api.openai.com")
    assert m is not None and m.provider.id == "openai" and not m.listed
    assert (m.kind, m.confidence, m.processing.basis) == ("api", "low", "unknown")
    assert cat.match_host("api.ap.mistral.ai").listed is False
    assert cat.match_host("eu.api.openai.com").listed  # a listed host is not a lead
    assert cat.match_host("platform.openai.com") is None  # docs hosts stay out


# --------------------------------------------------------------------------- rules end to end

CONFIG = """\
[organisation]
packs = ["provider-region-lists", "no-china-llm-providers"]

[sites.frankfurt]
client_cidrs = ["10.1.0.0/16"]
egress_ips = ["198.51.100.10"]
country = "DE"
data_residency = ["EU"]

[sites.shanghai]
client_cidrs = ["10.20.0.0/16"]
egress_ips = ["198.51.100.20"]
country = "US"                       # egress through a US proxy

[sites.dc]
client_cidrs = ["10.30.0.0/16"]
egress_ips = ["198.51.100.30"]
country = "US"

[entities.acme_sh]
controlled_from = "CN"
sites = ["shanghai"]

[residency.azure_resources]
contoso-gpt = "swedencentral"
contoso-us = "eastus"
"""


def scan_and_list(tmp_path: Path, config: str, lines: list[str]) -> list[dict]:
    cfg = tmp_path / "apiwatch.toml"
    cfg.write_text(config)
    log = tmp_path / "access.log"
    log.write_text("".join(line + "\n" for line in lines))
    db = tmp_path / "apiwatch.db"
    run("--config", cfg, "--db", db, "scan", log, ok=(0, 3))
    out = run("--config", cfg, "--db", db, "incidents", "--json").stdout
    return [json.loads(x) for x in out.splitlines()]


def test_residency_entity_pack_and_unknown_endpoint_rules(tmp_path):
    lines = [
        squid_line(1, "10.1.0.5", "us.api.openai.com"),  # EU site -> US region: violation
        squid_line(2, "10.1.0.5", "eu.api.openai.com"),  # EU site -> EU region: fine
        squid_line(3, "10.1.0.5", "api.openai.com"),  # EU site -> global: unverifiable
        squid_line(4, "10.1.0.5", "contoso-gpt.openai.azure.com"),  # mapped to Sweden: fine
        squid_line(5, "10.1.0.5", "contoso-us.openai.azure.com"),  # mapped to East US
        squid_line(6, "10.1.0.5", "bedrock-runtime.eu-central-1.amazonaws.com"),  # DE: fine
        squid_line(7, "10.20.0.9", "api.anthropic.com"),  # CN-controlled entity, US egress
        squid_line(8, "10.30.0.7", "api.anthropic.com"),  # same, US entity: fine
        squid_line(9, "10.30.0.7", "api.deepseek.com"),  # pack: China-based provider
        squid_line(10, "10.30.0.7", "xx.api.openai.com"),  # unlisted regional host
    ]
    rows = scan_and_list(tmp_path, CONFIG, lines)
    found = {(i["rule"], i["dest_host"], i["site"]) for i in rows}
    assert ("data-residency", "us.api.openai.com", "frankfurt") in found
    assert ("data-residency", "contoso-us.openai.azure.com", "frankfurt") in found
    assert ("residency-unverifiable", "api.openai.com", "frankfurt") in found
    assert ("provider-entity-restricted", "api.anthropic.com", "shanghai") in found
    assert ("china-based-llm-provider", "api.deepseek.com", "dc") in found
    assert ("unknown-provider-endpoint", "xx.api.openai.com", "dc") in found
    flagged = {
        host for rule, host, _ in found if rule in ("data-residency", "residency-unverifiable")
    }
    assert flagged == {"us.api.openai.com", "contoso-us.openai.azure.com", "api.openai.com"}
    assert not {r for r, h, s in found if h == "api.anthropic.com" and s == "dc"}
    severities = {i["rule"]: i["severity"] for i in rows}
    with sqlite3.connect(tmp_path / "apiwatch.db") as con:
        stored = {
            r[0]: r[1:]
            for r in con.execute(
                "SELECT dest_host, processing_region, processing_geo, residency_basis,"
                " residency_caveat FROM observations"
            )
        }
    assert stored["contoso-gpt.openai.azure.com"] == (
        "azure:swedencentral", "SE", "config", "azure-deployment-type"
    )  # fmt: skip
    assert stored["bedrock-runtime.eu-central-1.amazonaws.com"][:3] == (
        "aws:eu-central-1", "DE", "hostname"
    )  # fmt: skip
    assert stored["api.openai.com"] == (None, None, "global", None)
    assert severities["data-residency"] == "high"
    assert severities["residency-unverifiable"] == "low"
    assert severities["provider-entity-restricted"] == "high"
    assert severities["unknown-provider-endpoint"] == "low"


def test_site_requirement_overrides_the_organisation(tmp_path):
    config = CONFIG.replace(
        "[organisation]\n", '[organisation]\ndata_residency = ["US"]\n'
    ).replace('data_residency = ["EU"]', 'data_residency = ["EEA", "CH"]')
    lines = [
        squid_line(1, "10.1.0.5", "api.eu.mistral.ai"),  # EU/EFTA is inside EEA + CH
        squid_line(2, "10.30.0.7", "api.eu.mistral.ai"),  # dc inherits the org's US
    ]
    found = {(i["rule"], i["site"]) for i in scan_and_list(tmp_path, config, lines)}
    assert ("data-residency", "dc") in found and ("data-residency", "frankfurt") not in found


def test_eu_personal_data_pack(tmp_path):
    config = CONFIG.replace('"no-china-llm-providers"', '"eu-personal-data"')
    lines = [
        squid_line(1, "10.30.0.7", "bedrock-runtime.us-west-2.amazonaws.com"),
        squid_line(2, "10.30.0.7", "europe-west3-aiplatform.googleapis.com"),
        squid_line(3, "10.30.0.7", "aiplatform.googleapis.com"),
    ]
    found = {(i["rule"], i["dest_host"]) for i in scan_and_list(tmp_path, config, lines)}
    assert ("processing-outside-eu-adequate", "bedrock-runtime.us-west-2.amazonaws.com") in found
    assert ("processing-global-for-eu-data", "aiplatform.googleapis.com") in found
    assert not {h for _, h in found if h.startswith("europe-west3")}


def test_rules_lists_packs_and_which_are_on(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG)
    packs = {
        p["id"]: p
        for p in map(
            json.loads, run("--config", cfg, "rules", "--packs", "--json").stdout.splitlines()
        )
    }
    assert packs["no-china-llm-providers"]["on"] and packs["provider-region-lists"]["on"]
    assert not packs["eu-personal-data"]["on"] and packs["provider-region-lists"]["default"]
    table = run("--config", cfg, "rules").stdout
    assert "china-based-llm-provider" in table and "eu-personal-data" in table
    # a pack left out takes its rules with it, even those kept in rules/policies
    cfg.write_text(CONFIG.replace('"provider-region-lists", ', ""))
    ids = {json.loads(x)["id"] for x in run("--config", cfg, "rules", "--json").stdout.splitlines()}
    assert "provider-region-unsupported" not in ids and "china-based-llm-provider" in ids


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('["EU"]', '["EUROPE"]'), "sites.frankfurt.data_residency: unknown zone 'EUROPE'"),
        (('"swedencentral"', '"swedencentrl"'), "residency.azure_resources.contoso-gpt"),
        (('"no-china-llm-providers"', '"no-such-pack"'), "unknown pack 'no-such-pack'"),
        (('sites = ["shanghai"]', 'sites = ["paris"]'), "entities.acme_sh.sites: unknown site"),
        (
            ('controlled_from = "CN"', 'controlled_from = "China"'),
            "entities.acme_sh.controlled_from",
        ),
    ],
)
def test_config_check_names_the_bad_key(tmp_path, change, message):
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG.replace(*change))
    result = run("config", "check", cfg, ok=(1,))
    assert message in result.stderr and "Traceback" not in result.stderr


# --------------------------------------------------------------------------- the overlay

OVERLAY = """\
version: "2026-12-01"
providers:
- id: corp_llm_gateway
  checked: "2026-12-01"
  name: Corp LLM gateway (internal)
  kind: relay
  category: ai_gateway
  approved: true
  hq_country: DE
  region_list: null
  hosts:
  - use: api
    exact: [llm.corp.example]
    sources: [https://wiki.corp.example/llm-gateway]
    processing: {region: "azure:germanywestcentral", basis: config}
- id: shady_relay
  checked: "2026-12-01"
  name: A relay seen in our logs
  kind: relay
  category: reseller_relay
  hq_country: null
  region_list: null
  hosts:
  - {use: api, exact: [api.shady-relay.example], sources: [https://intel.corp.example/case/42]}
"""


def test_overlay_adds_an_approved_gateway_and_a_relay(tmp_path):
    (tmp_path / "corp-llm.yaml").write_text(OVERLAY)
    config = CONFIG + '\n[catalog]\nextra = ["corp-llm.yaml"]\n'
    (tmp_path / "c.toml").write_text(config)
    out = run("config", "check", tmp_path / "c.toml").stdout
    assert "corp-llm.yaml (overlay)" in out
    lines = [
        squid_line(1, "10.1.0.5", "llm.corp.example"),
        squid_line(2, "10.1.0.5", "api.shady-relay.example"),
    ]
    found = {(i["rule"], i["dest_host"]) for i in scan_and_list(tmp_path, config, lines)}
    assert found == {("relay-service", "api.shady-relay.example"),
                     ("residency-unverifiable", "api.shady-relay.example")}  # fmt: skip
    rows = [
        json.loads(x)
        for x in run(
            "--config", tmp_path / "c.toml", "providers", "llm.corp.example", "--json"
        ).stdout.splitlines()
    ]
    assert (rows[0]["provider"], rows[0]["processing_geo"], rows[0]["residency_basis"]) == (
        "corp_llm_gateway",
        "DE",
        "config",
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("exact: [llm.corp.example]", "exact: [api.openai.com]"), "'api.openai.com' is already listed by entry 'openai'"),
        (('  checked: "2026-12-01"\n  name: Corp', "  name: Corp"), "hosts[1]: missing 'checked'"),
        (("sources: [https://wiki.corp.example/llm-gateway]", "sources: []"), "missing sources"),
        (("- id: shady_relay", "- id: openai"), "duplicate provider id"),
    ],
)  # fmt: skip
def test_bad_overlay_names_file_entry_and_reason(tmp_path, change, message):
    (tmp_path / "corp-llm.yaml").write_text(OVERLAY.replace(*change))
    (tmp_path / "c.toml").write_text('[catalog]\nextra = ["corp-llm.yaml"]\n')
    result = run("config", "check", tmp_path / "c.toml", ok=(1,))
    assert "corp-llm.yaml" in result.stderr and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_approved_only_in_an_overlay(tmp_path):
    for name in ("providers.yaml", "regions.yaml", "residency.yaml"):
        (tmp_path / name).write_text((RULES / name).read_text())
    text = (RULES / "providers.yaml").read_text()
    (tmp_path / "providers.yaml").write_text(
        text.replace("- id: groq\n", "- id: groq\n  approved: true\n", 1)
    )
    with pytest.raises(CatalogError, match="groq: 'approved' belongs in an organisation overlay"):
        Catalog.load(tmp_path)


# --------------------------------------------------------------------------- facts have sources


def _host_groups():
    data = yaml.safe_load((RULES / "providers.yaml").read_text())
    for entry in data["providers"]:
        for key in ("hosts", "ingress_ranges"):
            for group in entry.get(key) or []:
                yield entry, group
        if entry.get("unlisted_endpoints"):
            yield entry, entry["unlisted_endpoints"]
        for group in entry.get("restrictions") or []:
            yield entry, group


def test_every_catalogue_fact_has_a_source_and_a_date():
    n = 0
    for entry, group in _host_groups():
        n += 1
        assert group.get("sources"), entry["id"]
        assert (
            any(s.startswith("http") for s in group["sources"]) or group.get("confidence") == "low"
        ), entry["id"]
        assert str(group.get("checked") or entry.get("checked") or "")[:2] == "20", entry["id"]
    assert n > 100
    residency = yaml.safe_load((RULES / "residency.yaml").read_text())
    for table in ("zones", "regions", "caveats"):
        for key, body in residency[table].items():
            assert body["sources"] and body["checked"], f"{table}.{key}"
    for pack in load_packs(RULES / "packs").values():
        assert pack.references
        assert all(rule.references for rule in pack.rules), pack.id


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('- id: openai\n  checked: "2026-11-28"\n', "- id: openai\n", "openai: hosts[4]: missing 'checked'"),
        ("    sources: [*anthropic_ownership]\n", "", "anthropic: missing sources for restrictions[1]"),
        ("processing: {region: \"openai:ae\", caveat: openai-regional-processing}",
         "processing: {region: \"openai:xx\", caveat: openai-regional-processing}",
         "region 'openai:xx' is not in residency.yaml"),
    ],
)  # fmt: skip
def test_loader_rejects_a_fact_without_source_or_date(tmp_path, old, new, message):
    for name in ("regions.yaml", "residency.yaml"):
        (tmp_path / name).write_text((RULES / name).read_text())
    text = (RULES / "providers.yaml").read_text()
    assert old in text
    (tmp_path / "providers.yaml").write_text(text.replace(old, new, 1))
    with pytest.raises(CatalogError, match=message.replace("[", r"\[").replace("*", r"\*")):
        Catalog.load(tmp_path)


def test_residency_table_without_date_is_rejected(tmp_path):
    for name in ("providers.yaml", "regions.yaml"):
        (tmp_path / name).write_text((RULES / name).read_text())
    text = (RULES / "residency.yaml").read_text()
    (tmp_path / "residency.yaml").write_text(text.replace('    checked: "2026-12-04"\n', "", 1))
    with pytest.raises(CatalogError, match=r"zones.EU: 'checked' must be the date"):
        Catalog.load(tmp_path)


def test_zone_containment():
    tables = Catalog.load().residency
    eu = tables.allowed_geos(("EU",))
    assert {"EU", "DE", "FR"} <= eu and "EEA" not in eu and "EU_EFTA" not in eu
    eea_ch = tables.allowed_geos(("EEA", "CH"))
    assert {"EU", "EEA", "EU_EFTA", "NO", "CH"} <= eea_ch
    assert "EU" not in tables.allowed_geos(("DE",))  # the EU zone might be anywhere in it
    assert tables.allowed_geos(()) == frozenset()
    assert ResidencyTables().allowed_geos(("US",)) == {"US"}


def test_every_catalogue_region_has_a_geo():
    cat = Catalog.load()
    tables = cat.residency
    for region, geo in tables.region_geo.items():
        assert geo in tables.zones or len(geo) == 2, region
    assert textwrap.dedent(cat.residency.caveats["aws-cross-region-inference"]).startswith("AWS")


def test_older_database_gains_the_processing_columns(tmp_path):
    import sqlite_utils

    from monitor.store import MIGRATIONS, Store

    path = tmp_path / "old.db"
    db = sqlite_utils.Database(sqlite3.connect(path))  # a version-2 database, by its own steps
    for step in (1, 2):
        MIGRATIONS[step](db)
    db.execute("PRAGMA user_version = 2")
    db.conn.commit()
    db.conn.close()
    store = Store(path)
    names = {c.name for c in store.db["observations"].columns}
    store.close()
    assert {"processing_region", "processing_geo", "residency_basis", "residency_caveat"} <= names


def test_load_overlay_api_for_promote(tmp_path):
    """``discovered --promote`` writes entries in this schema and validates with load_overlay."""
    from monitor.catalog import load_overlay

    path = tmp_path / "corp-llm.yaml"
    path.write_text(OVERLAY)
    cat = load_overlay(path)
    m = cat.match_host("api.shady-relay.example")
    assert m is not None and m.kind == "relay" and m.provider.origin == str(path)
    assert [e.origin for e in cat.entries()][-2:] == ["overlay", "overlay"]
    assert cat.overlays == (str(path),)
    path.write_text(OVERLAY.replace("kind: relay\n  category: reseller_relay", "kind: relay"))
    with pytest.raises(CatalogError, match="shady_relay: relay category None"):
        load_overlay(path)


# --------------------------------------------------------------------------- the report section


def test_report_section_where_prompts_are_processed(tmp_path):
    config = CONFIG.replace("[organisation]\n", '[organisation]\ndata_residency = ["US"]\n')
    cfg = tmp_path / "c.toml"
    cfg.write_text(config)
    db = tmp_path / "r.db"
    lines = [
        squid_line(1, "10.1.0.5", "us.api.openai.com"),  # frankfurt (EU): outside
        squid_line(2, "10.1.0.5", "us.api.openai.com"),
        squid_line(3, "10.1.0.5", "eu.api.openai.com"),  # inside
        squid_line(4, "10.1.0.5", "api.openai.com"),  # unverifiable (global)
        squid_line(5, "10.1.0.6", "contoso-gpt.openai.azure.com"),  # config: SE, inside
        squid_line(6, "10.30.0.7", "bedrock-runtime.us-east-1.amazonaws.com"),  # dc: org US
        squid_line(7, "10.30.0.7", "bedrock-runtime.us-west-2.amazonaws.com"),
    ]
    log = tmp_path / "access.log"
    log.write_text("".join(x + "\n" for x in lines))
    run("--config", cfg, "--db", db, "scan", log, ok=(0, 3))
    span = ("--since", "2025-12-01", "--until", "2025-12-31")
    rep = json.loads(run("--config", cfg, "--db", db, "report", *span, "--format", "json").stdout)
    p = rep["processing"]
    rows = {(r["site"], r["processing_geo"], r["residency_basis"]): r for r in p["rows"]}
    assert rows[("frankfurt", "US", "hostname")]["status"] == "outside"
    assert rows[("frankfurt", "US", "hostname")]["requests"] == 2
    assert rows[("frankfurt", "US", "hostname")]["regions"] == ["openai:us"]
    assert rows[("frankfurt", "EU", "hostname")]["status"] == "inside"
    assert rows[("frankfurt", "SE", "config")]["status"] == "inside"
    assert rows[("frankfurt", None, "global")]["status"] == "unverifiable"
    dc = rows[("dc", "US", "hostname")]
    assert dc["status"] == "inside" and dc["requirement"] == ["US"] and dc["requests"] == 2
    assert dc["regions"] == ["aws:us-east-1", "aws:us-west-2"]
    assert p["totals"] == {"outside": 2, "unverifiable": 1, "inside": 4, "no_requirement": 0}
    assert p["rows"][0]["status"] == "outside"  # most urgent first
    md = run("--config", cfg, "--db", db, "report", *span, "--format", "md").stdout
    assert "## Where prompts are processed" in md and "`openai:us`" in md
    html = run("--config", cfg, "--db", db, "report", *span, "--format", "html").stdout
    assert 'id="processing"' in html and "Where prompts are processed" in html
    csv_text = run("--config", cfg, "--db", db, "report", *span, "--format", "csv").stdout
    assert "processing,total,,outside,2" in csv_text
    assert "processing,frankfurt,US/hostname,status,outside" in csv_text
