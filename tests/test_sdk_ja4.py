"""The SDK fingerprint catalogue (``rules/clients.yaml`` ``tls_clients``) against real
clients: the OpenAI, Anthropic and Google Gen AI Python SDKs, requests and curl talk to a
local TLS server under tcpdump (:mod:`tests.sdk_clients`); apiwatch's JA4 of each
ClientHello equals the one computed from tshark's dissection, and is the catalogue's.

A JA4 depends on the TLS library and its version: when this fails after an upgrade of
Python, OpenSSL, httpx or curl, measure again (``python3 -m tests.sdk_clients``) and record
the new value with what was measured.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from monitor.catalog import bundled_catalog
from monitor.clients import Signatures, bundled_signatures
from monitor.collectors import open_input
from monitor.collectors.base import Diagnostics
from monitor.collectors.pcap import PcapCollector
from monitor.pipeline import Identifier
from tests.sdk_clients import available, measure
from tests.test_real_capture import _need, tools

__all__ = ["tools"]  # the fixture, used by name
pytestmark = pytest.mark.realtools

#: client -> (catalogue id of its JA4, catalogue id of its User-Agent)
EXPECTED = {
    "openai": ("python_httpx_openssl3", "openai_python"),
    "anthropic": ("python_httpx_openssl3", "anthropic_python"),
    "google-genai": ("python_httpx_openssl3", "google_genai"),
    "requests": ("python_requests_urllib3_openssl3", None),
    "curl": ("curl_openssl3", "curl"),
}


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict:
    for name in EXPECTED:
        _need(available(name) is None, f"{name}: {available(name)}")
    _need(shutil.which("tshark") is not None, "tshark is not installed")
    tmp = tmp_path_factory.mktemp("sdk")
    return {
        "results": measure(tmp, list(EXPECTED)),
        "pcap": tmp / "sdk-clients.pcap",
    }


def test_real_sdk_clients_send_the_catalogued_ja4(tools, measured):
    sig = bundled_signatures()
    for name, (tls_id, agent_id) in EXPECTED.items():
        m = measured["results"][name]
        assert m.ja4, f"{name}: no ClientHello captured"
        # an independent reading: the JA4 computed from tshark's fields
        assert m.ja4 == m.tshark_ja4, (name, m.ja4, m.tshark_ja4)
        known = sig.tls_client(m.ja4[0])
        assert known is not None and known.id == tls_id, (
            f"{name} sent {m.ja4[0]}, not {tls_id}'s JA4, with {m.versions}: a JA4 follows the "
            "TLS library and its version; measure again (python3 -m tests.sdk_clients)"
        )
        assert not known.llm  # shared TLS stacks: evidence, never a match by themselves
        # the SDK's own User-Agent is recognised too
        client = sig.user_agent(m.user_agents[0]) if m.user_agents else None
        assert (client.id if client else None) == agent_id, (name, m.user_agents)


def _parse(pcap: Path, host_filter=None) -> list:
    diag = Diagnostics()
    opened = open_input(str(pcap))
    try:
        return list(PcapCollector(bundled_catalog()).parse(opened.stream, "sdk", diag, host_filter))
    finally:
        opened.close()


def test_sdk_ja4_is_evidence_and_matches_only_when_marked_llm(tools, measured, tmp_path):
    """Bundled catalogue: the SDKs' TLS to a host outside the provider catalogue is no
    observation (httpx is everyone's). A catalogue that marks the value ``llm: true`` (an
    organisation whose only httpx clients are LLM SDKs) makes the same capture an
    ``llm-api-unknown-host`` candidate matched by its JA4."""
    pcap = measured["pcap"]
    openai_port = measured["results"]["openai"].port
    everything = _parse(pcap)
    assert any(o.dest_port == openai_port and o.dest_host == "localhost" for o in everything)
    bundled = Identifier(bundled_catalog())
    assert [o for o in _parse(pcap, bundled.host_filter) if o.dest_host] == []
    rules = tmp_path / "rules"
    rules.mkdir()
    text = (Path(__file__).resolve().parents[1] / "rules" / "clients.yaml").read_text()
    value = "ja4: [t13d1812h1_85036bcba153_d41ae481755e]\n  llm: "
    marked = text.replace(value + "false", value + "true", 1)
    assert marked != text
    (rules / "clients.yaml").write_text(marked)
    identifier = Identifier(bundled_catalog(), signatures=Signatures.load(rules))
    kept = [o for o in _parse(pcap, identifier.host_filter) if o.dest_host]
    assert {o.dest_port for o in kept} == {
        measured["results"][n].port for n in ("openai", "anthropic", "google-genai")
    }
    match = identifier.identify(kept[0])
    assert (match.on, match.pattern, match.confidence) == (
        "request",
        "ja4:python_httpx_openssl3",
        "low",
    )
