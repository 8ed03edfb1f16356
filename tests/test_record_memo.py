"""The record path's memo (:class:`monitor.pipeline.RecordMemo`): enrichment, rules and
incident rows are worked out once per key, so the key must hold every observation field
they read, and a memoised run must give exactly what the stages give record by record."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

import pytest

from monitor import accel
from monitor.app import App, Settings
from monitor.batch import Batch, Deltas
from monitor.collectors import CollectOptions, Diagnostics
from monitor.egress import Egress, EgressOptions
from monitor.ids import observation_id, observed_record_id
from monitor.observation import Observation
from monitor.pipeline import (
    OBS_READS,
    PLACED,
    RECORD_READS,
    Enriched,
    Evaluator,
    Part,
    Pipeline,
    RecordMemo,
    incident_rows,
    observation_row,
)
from monitor.privacy import Pseudonymizer
from monitor.rows import COL
from tests.conftest import generated_squid_log

CONFIG = """\
[organisation]
allowed_providers = ["anthropic"]

[sites.sh]
client_cidrs = ["10.1.0.0/16"]
country = "CN"

[entities.acme-cn]
client_cidrs = ["10.1.2.0/24"]
controlled_from = "CN"
"""

#: a second value for each observation field a rule may read (the first: ``_record``)
OTHER = {
    "source": "other.log",
    "line": 99,
    "format": "zeek",
    "client_port": 4444,
    "method": "POST",
    "dest_port": 8443,
    "url": "https://api.openai.com/v1/chat/completions",
    "bytes_out": 1,
    "bytes_in": 2,
    "host_source": "sni",
    "duration": 9.5,
    "ts_end": 1795741300.0,
    "packets_out": 7,
    "packets_in": 8,
    "ech": True,
    "ech_outer": "cloudflare-ech.com",
    "tunnel": "vxlan",
    "tunnel_src": "10.9.0.1",
    "tunnel_dst": "10.9.0.2",
    "ja4": "t13d1516h2_8daaf6152771_e5627efa2ab1",
    "user_agent": "OpenAI/Python 1.54.0",
    "response_excerpt": '{"error": {"code": "unsupported_country_region_territory"}}',
    "processing_region": "azure:westeurope",
    "processing_geo": "NL",
    "residency_basis": "config",
    "residency_caveat": "c",
    "record_id": "other",
}


def _record(**kw) -> Observation:
    base = dict(ts=1795741200.5, source="a.log", line=7, format="squid", client_ip="10.1.2.3",
                user="ana", method="CONNECT", dest_host="api.openai.com", dest_port=443,
                dest_ip="162.159.140.245", status=403, result="TCP_DENIED", host_source="connect",
                url="http://example.com/", user_agent="curl/8.5.0", ja4="t13d1517h2_aaaaaaaaaaaa_bbbbbbbbbbbb")  # fmt: skip
    return Observation(**{**base, **kw})


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> App:
    tmp = tmp_path_factory.mktemp("memo")
    cfg = tmp / "apiwatch.toml"
    cfg.write_text(CONFIG)
    return App(Settings(db=tmp / "m.db", config=cfg))


def test_every_rule_field_reads_only_the_observation_fields_declared(app):
    """A getter reading an observation field that neither RECORD_READS nor OBS_READS names
    would make the memo hand one record's verdict to another."""
    evaluator = Evaluator(app.rules, app.catalog, app.config)
    obs = _record()
    match = app.catalog.match_host(obs.dest_host)
    egress = Egress("203.0.113.1", "CN", "sh", "site", "CN")
    before = evaluator.context(Enriched(obs, match, egress, None, "blocked"))
    assert set(OBS_READS) <= set(before), "OBS_READS names a field no getter serves"
    changed_by: dict[str, set[str]] = {}
    for name in [f.name for f in dataclasses.fields(Observation)]:
        if name in RECORD_READS or name == "ts":  # in the key (ts: by its day)
            continue
        other = dataclasses.replace(obs, **{name: OTHER[name]})
        after = evaluator.context(Enriched(other, match, egress, None, "blocked"))
        for field, value in after.items():
            if value != before[field]:
                changed_by.setdefault(field, set()).add(name)
    for field, names in changed_by.items():
        assert names <= set(OBS_READS.get(field, ())), f"{field} reads {names}, undeclared"
    # the declarations are not empty words: each changes what its field reads
    assert changed_by["request.api_path"] == {"url"}
    assert changed_by["client.software"] == {"user_agent"}
    assert changed_by["provider_refused"] == {"response_excerpt"}
    assert changed_by["dest.address_source"] == {"format"}


def _reference(pipeline: Pipeline, obs: Observation, match) -> tuple[list, list]:
    """Stages 3–4 record by record, without any memo of the record path."""
    enriched = pipeline.enricher.enrich(obs, match)
    rules = pipeline.evaluator.rules.evaluate(pipeline.evaluator.context(enriched))
    if pipeline.pseudonymizer is not None:
        enriched = pipeline.pseudonymizer.apply(enriched)
    row = observation_row(enriched)
    return row, incident_rows(enriched, rules, row[1], pipeline.evaluator.evidence)


def _records() -> list[Observation]:
    """Records that share keys and differ in what the key holds and what it does not."""
    out = []
    hosts = ("api.openai.com", "openrouter.ai", "api.deepseek.com", "unknown.example.org")
    clients = ("10.1.2.3", "10.1.9.9", "192.168.0.5")
    statuses = (
        (200, "TCP_TUNNEL"),
        (200, "TCP_DENIED"),
        (403, "TCP_TUNNEL"),
        (0, "TCP_MISS_ABORTED"),
    )
    extras = (
        {},
        {"url": "https://x.example/v1/chat/completions", "method": "POST", "dest_host": None},
        {"response_excerpt": OTHER["response_excerpt"]},
        {"user_agent": "OpenAI/Python 1.54.0", "user": None},
        {"format": "zeek", "host_source": "sni"},
    )
    for n, (host, client, (status, result), extra, day) in enumerate(
        itertools.product(hosts, clients, statuses, extras, (0, 1))
    ):
        kw = dict(dest_host=host, client_ip=client, status=status, result=result, line=n,
                  ts=1795741200.5 + day * 86400 + n)  # fmt: skip
        out.append(_record(**{**kw, **extra}))
    return out * 2  # every key seen again


@pytest.mark.parametrize("pseudonymize", [False, True])
def test_memoised_record_path_equals_the_stages_record_by_record(app, pseudonymize):
    pseud = Pseudonymizer("k" * 32) if pseudonymize else None
    memoised = Pipeline(app.catalog, app.geo, app.rules, app.config, EgressOptions(),
                        CollectOptions(), pseud)  # fmt: skip
    plain = Pipeline(app.catalog, app.geo, app.rules, app.config, EgressOptions(),
                     CollectOptions(), pseud)  # fmt: skip
    seen_rules = set()
    identified = 0
    for obs in _records():
        match = memoised.identifier.identify(obs)
        if match is None:
            continue
        identified += match.provider.id != "unknown"  # request shapes: a match per record
        got = memoised.record(dataclasses.replace(obs), match)
        want = _reference(plain, dataclasses.replace(obs), match)
        assert got == want, obs
        seen_rules |= {i["rule"] for i in got[1]}
    # the records raise rules whose evidence the key holds, and one whose it does not
    assert {"provider-region-unsupported", "relay-service", "llm-api-unknown-host"} <= seen_rules
    keys = [c for c in memoised.memo._memo.values() if c.match.provider.id != "unknown"]
    assert len(keys) <= identified // 2


@pytest.mark.parametrize("pseudonymize", [False, True])
def test_records_of_one_key_differ_in_every_field_the_key_does_not_hold(app, pseudonymize):
    """Records of one key share the first one's row but for the fields the key does not
    hold, which each record's row reads from the record itself: a record differing from
    the first in any one field gets the row (and id) the stages give it alone."""
    pseud = Pseudonymizer("k" * 32) if pseudonymize else None
    memoised = Pipeline(app.catalog, app.geo, app.rules, app.config, EgressOptions(),
                        CollectOptions(), pseud)  # fmt: skip
    plain = Pipeline(app.catalog, app.geo, app.rules, app.config, EgressOptions(),
                     CollectOptions(), pseud)  # fmt: skip
    first = _record(status=200, result="TCP_TUNNEL")
    match = memoised.identifier.identify(first)
    key = memoised.memo.key
    records = [first]
    for name, value in OTHER.items():
        if name in PLACED:  # the match decides them (place): never apart from the key
            continue
        other = dataclasses.replace(first, **{name: value})
        if key(other, match) == key(first, match):
            records.append(other)
    varied = {f.name for f in dataclasses.fields(Observation)} - {
        n for n in OTHER if all(getattr(r, n) == getattr(first, n) for r in records)
    }
    assert {"ts", "line", "source", "url", "bytes_in", "duration", "tunnel", "record_id"} <= varied
    got = list(memoised.records([(dataclasses.replace(r), match) for r in records]))
    assert len({id(memoised.memo.get(r, match)) for r in records}) == 1, "one key"
    for obs, (record_id, row, incidents) in zip(records, got, strict=True):
        want_row, want_incidents = _reference(plain, dataclasses.replace(obs), match)
        want_id = obs.record_id or observed_record_id(obs)
        want_row[0] = observation_id(want_id)
        assert (record_id, row, incidents) == (want_id, want_row, want_incidents), obs
    assert len({tuple(row) for _, row, _ in got}) == len(records), "each row its own"


@pytest.mark.parametrize("pseudonymize", [False, True])
def test_process_batches_equal_the_batches_of_the_records_rows(app, tmp_path, pseudonymize):
    """The scan's record loop builds the store's batches without a row per record (a
    context and client per memo key and the context fields the key does not hold): they
    are the batches of the rows :meth:`Pipeline.records` gives, field by field, across
    batch boundaries, with rules whose evidence the key holds and one whose it does not."""
    log = tmp_path / "access.log"
    generated_squid_log(log, "--lines", "20000", "--llm-share", "0.3", "--seed", "5")
    with log.open("a") as f:  # LLM API calls to a host outside the catalogue: evidence per URL
        for n in range(300):
            f.write(f"{1732752000 + 20 * n}.5 {n:6d} 10.0.{n % 3}.{n % 7} TCP_MISS/200 {n} POST "
                    f"http://relay{n % 2}.example.net/v1/{('chat/completions', 'embeddings')[n % 3 > 1]}"
                    f" - HIER_DIRECT/203.0.113.{n % 4} application/json\n")  # fmt: skip
    pseud = Pseudonymizer("k" * 32) if pseudonymize else None

    def pipeline() -> Pipeline:
        return Pipeline(app.catalog, app.geo, app.rules, app.config,
                        EgressOptions(egress_country="CN"), CollectOptions(), pseud)  # fmt: skip

    size = 1000
    fused = list(pipeline().process(Part(str(log)), Diagnostics(), size=size))
    plain = pipeline()
    items = list(plain.records(plain.observe(str(log), Diagnostics(), only_llm=True)))
    want = [Batch.of(items[i : i + size]) for i in range(0, len(items), size)]
    assert len(items) > 5 * size and len(fused) == len(want)
    rules = set()
    for got, expected in zip(fused, want, strict=True):
        for name in Batch.__slots__:
            assert getattr(got, name) == getattr(expected, name), name
        rules |= {inc["rule"] for incs, _ in got.groups for inc in incs}
    assert {"provider-region-unsupported", "relay-service", "llm-api-unknown-host"} <= rules
    assert sum(len(b.contexts) for b in fused) < len(items) // 4, "contexts are shared"


@pytest.mark.parametrize("pseudonymize", [False, True])
def test_records_known_by_line_key_give_the_records_batches(
    app, tmp_path, monkeypatch, pseudonymize
):
    """Records the Squid pre-pass names by a line key the memo knows (:class:`Known`) skip
    the Observation and the memo: the batches are those of the rows :meth:`Pipeline.records`
    gives all the same, on a first pass, on a third (every CONNECT known), with a memo
    that forgets (known entries go with it) and in pure Python (no line keys)."""
    log = tmp_path / "access.log"
    generated_squid_log(log, "--lines", "6000", "--llm-share", "0.4", "--seed", "9")
    pseud = Pseudonymizer("k" * 32) if pseudonymize else None

    def pipeline(limit: int = 1 << 16) -> Pipeline:
        p = Pipeline(app.catalog, app.geo, app.rules, app.config,
                     EgressOptions(egress_country="CN"), CollectOptions(), pseud)  # fmt: skip
        p.memo = RecordMemo(p, limit)
        return p

    size = 500
    plain = pipeline()
    items = list(plain.records(plain.observe(str(log), Diagnostics(), only_llm=True)))
    want = [Batch.of(items[i : i + size]) for i in range(0, len(items), size)]

    def same(got: list[Batch], grouped: bool = True) -> None:
        """Equal batches; not ``grouped``: their groups may cut the rows of one incident
        list differently (a memo that forgets makes a key's incident rows anew), so their
        (incident, row) links come in another order: the same pairs."""
        assert len(got) == len(want)
        for batch, expected in zip(got, want, strict=True):
            for name in Batch.__slots__:
                if grouped or name not in ("groups", "linked", "deltas"):
                    assert getattr(batch, name) == getattr(expected, name), name
            if not grouped:
                assert unordered(batch.deltas) == unordered(expected.deltas)
            assert raised(batch) == raised(expected)

    def unordered(d: Deltas) -> tuple[list[Any], set[tuple[str, int]]]:
        """Deltas per incident, and their links as a set of (incident id, row) pairs."""
        fields = [getattr(d, f.name) for f in dataclasses.fields(d) if f.name not in ("of", "row")]
        return fields, {(d.ids[k], r) for k, r in zip(d.of, d.row, strict=True)}

    def raised(batch: Batch) -> dict[int, list[dict]]:
        return {i: incs for incs, rows in batch.groups for i in rows}

    fused = pipeline()
    for _ in range(2):  # the first warms the collector's caches, the second names the lines
        same(list(fused.process(Part(str(log)), Diagnostics(), size=size)))
    keyed = fused.memo.key
    calls = []
    fused.memo.key = lambda o, m: calls.append(o) or keyed(o, m)
    same(list(fused.process(Part(str(log)), Diagnostics(), size=size)))
    if accel.load("monitor.collectors._squidscan") is not None:  # no CONNECT asked the memo
        connects = sum(1 for _, row, _ in items if row[COL["method"]] == "CONNECT")
        assert connects > len(items) // 2 and len(calls) == len(items) - connects
    forgetful = pipeline(limit=64)
    for _ in range(3):
        same(list(forgetful.process(Part(str(log)), Diagnostics(), size=size)), grouped=False)
    assert len(forgetful.memo.known(str(log)).entries) <= 64
    monkeypatch.setenv(accel.PURE_ENV, "1")
    same(list(pipeline().process(Part(str(log)), Diagnostics(), size=size)))


CLIENT_RULE = """\
id: client-watch
title: A watched client
severity: low
description: Traffic of one client (a rule that reads the client's address).
when:
  client.ip: {in: ["10.1.2.3"]}
"""


@pytest.mark.parametrize("pseudonymize", [False, True])
@pytest.mark.parametrize(
    ("config", "rule"),
    [
        (CONFIG, None),  # an entity by client network: the rules read the client
        (CONFIG.replace('client_cidrs = ["10.1.2.0/24"]', 'sites = ["sh"]'), None),
        (CONFIG.replace('client_cidrs = ["10.1.2.0/24"]', 'sites = ["sh"]'), CLIENT_RULE),
    ],
)
def test_each_client_gets_its_own_rows_and_incidents(tmp_path, config, rule, pseudonymize):
    """Records of other clients with the same egress point, whether the rules read the
    client (an entity by client network, a rule on client.ip) or not (an entity by site):
    each record's row and incident rows (whose ids hold the client) are the stages' own,
    though most are made from another client's of the same destination context."""
    cfg = tmp_path / "apiwatch.toml"
    cfg.write_text(config)
    rules = ()
    if rule:
        (tmp_path / "rules").mkdir()
        (tmp_path / "rules" / "client.yaml").write_text(rule)
        rules = (Path(__file__).parent.parent / "rules" / "policies", tmp_path / "rules")
    app = App(Settings(db=tmp_path / "m.db", config=cfg, rules=rules))
    pseud = Pseudonymizer("k" * 32) if pseudonymize else None
    memoised = Pipeline(app.catalog, app.geo, app.rules, app.config, EgressOptions(),
                        CollectOptions(), pseud)  # fmt: skip
    plain = Pipeline(app.catalog, app.geo, app.rules, app.config, EgressOptions(),
                     CollectOptions(), pseud)  # fmt: skip
    clients = ("10.1.2.3", "10.1.2.4", "10.2.0.9", "192.168.0.5", "8.8.8.8")
    raised = set()
    for obs in _records():
        # and one client as another user: a client is its address and user
        for client, user in [*((c, obs.user) for c in clients), (clients[0], "bob")]:
            other = dataclasses.replace(obs, client_ip=client, user=user, egress_ip=None)
            match = memoised.identifier.identify(other)
            if match is None:
                continue
            got = memoised.record(dataclasses.replace(other), match)
            assert got == _reference(plain, dataclasses.replace(other), match), other
            raised |= {(i["rule"], i["client_ip"]) for i in got[1]}
    assert len({c for _, c in raised}) >= 4, "incidents per client"
    memo = memoised.memo
    if not pseudonymize:  # most keys were a sibling's other client (RecordMemo._client_of)
        assert memo._siblings and len(memo._siblings) * 3 < len(memo._memo)
    if rule:
        assert "client-watch" in {r for r, _ in raised}


def test_pseudonymised_clients_of_a_sibling_are_stored_as_the_stages_store_them(app):
    """Pseudonymised, another client of a destination context is made from the context's
    first client too, its row and incident rows pseudonymised as the stages make them:
    also a public client as another user (its own address is its egress, shown as its
    pseudonym in both), and never when the egress address or the logged one is shown as
    one client's own but not the other's (a public client, a logged egress that is one
    client's address, also where --egress-ip names the egress): those take the stages."""
    pseud = Pseudonymizer("k" * 32)
    clients = [("10.1.2.3", "ana"), ("10.1.9.9", "bo"), ("10.1.9.9", None), ("8.8.8.8", "ana"),
               ("8.8.8.8", "bo"), ("8.8.4.4", "ana"), ("203.0.113.7", "ana"),
               ("198.51.100.9", "ana")]  # fmt: skip
    # --egress-ip: an address no client has, and one a client has (shown as its own)
    for option in (EgressOptions(), EgressOptions(egress_ip="198.18.0.1"),
                   EgressOptions(egress_ip="10.1.9.9")):  # fmt: skip
        memoised = Pipeline(app.catalog, app.geo, app.rules, app.config, option,
                            CollectOptions(), pseud)  # fmt: skip
        plain = Pipeline(app.catalog, app.geo, app.rules, app.config, option,
                         CollectOptions(), pseud)  # fmt: skip
        calls: list[Any] = []
        made = memoised.memo._client_of
        memoised.memo._client_of = lambda *a, made=made, calls=calls: (
            calls.append(made(*a)) or calls[-1]
        )
        stored = set()
        # a context's first client is its sibling: for the second host, a public one
        for host, order in (("api.openai.com", clients), ("api.deepseek.com", clients[3:])):
            for logged in (None, "203.0.113.7"):
                for client, user in order:
                    obs = _record(dest_host=host, client_ip=client, user=user, egress_ip=logged)
                    match = memoised.identifier.identify(obs)
                    got = memoised.record(dataclasses.replace(obs), match)
                    assert got == _reference(plain, dataclasses.replace(obs), match), obs
                    stored.add(got[0][COL["client_ip"]])
                    assert all(i["client_ip"].startswith("anon:") for i in got[1])
        assert all(c.startswith("anon:") for c in stored) and len(stored) == 6  # the addresses
        made_here = [c for c in calls if c is not None]
        # (where --egress-ip is a client's own address, that client's records take the stages)
        assert len(made_here) >= (6 if option.egress_ip == "10.1.9.9" else 8), "from a sibling"
        assert None in calls, "a client whose egress is shown as its own: the stages"
        if option.egress_ip is None:
            assert any(c.egress.ip == "8.8.8.8" for c in made_here), "a public client, two users"


def test_runs_of_known_records_are_cut_at_the_batch_size(app, tmp_path):
    """A run of records of known line keys longer than what a batch has room for is cut
    there: the batches are those of the records one by one (every size, any cut)."""
    log = tmp_path / "access.log"
    generated_squid_log(log, "--lines", "3000", "--llm-share", "0.5", "--seed", "4")
    p = Pipeline(app.catalog, app.geo, app.rules, app.config,
                 EgressOptions(egress_country="CN"), CollectOptions())  # fmt: skip
    items = list(p.records(p.observe(str(log), Diagnostics(), only_llm=True)))
    for _ in range(2):  # then every CONNECT of a key seen is known by its line key
        list(p.process(Part(str(log)), Diagnostics()))
    for size in (1, 7, 250, len(items) - 1, len(items)):
        got = list(p.process(Part(str(log)), Diagnostics(), size=size))
        want = [Batch.of(items[i : i + size]) for i in range(0, len(items), size)]
        assert [len(b) for b in got] == [len(b) for b in want]
        for batch, expected in zip(got, want, strict=True):
            assert batch.columns == expected.columns and batch.record_ids == expected.record_ids
            assert batch.contexts == expected.contexts and batch.ctx == expected.ctx
