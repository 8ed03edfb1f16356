"""``rules/clients.yaml``: a bad entry stops the load naming the file, the entry and why."""

from __future__ import annotations

import pytest

from monitor.catalog import bundled_catalog
from monitor.clients import SignatureError, Signatures
from monitor.pipeline import Identifier

JA4 = "t13d1812h1_85036bcba153_d41ae481755e"
MEASURED = '{client: "openai 1.0", tls: "OpenSSL 3.0.19", date: "2026-12-04", method: "loopback"}'


def _load(tmp_path, entry: str) -> Signatures:
    (tmp_path / "clients.yaml").write_text(f'version: "1"\ntls_clients:\n{entry}')
    return Signatures.load(tmp_path)


def _entry(eid="a", ja4=JA4, llm="false", measured=MEASURED) -> str:
    return (
        f"- id: {eid}\n  name: A\n  ja4: [{ja4}]\n  llm: {llm}\n  measured: [{measured}]\n"
        "  sources: [https://example.org/]\n"
    )


def test_measured_tls_client_loads():
    sig = Signatures.load()
    assert sig.tls_client(JA4).id == "python_httpx_openssl3"
    assert sig.shape(None, None, JA4) is None  # a shared stack matches nothing by itself


def test_llm_tls_client_matches_by_itself(tmp_path):
    sig = _load(tmp_path, _entry(llm="true"))
    assert sig.shape(None, None, JA4) == "ja4:a"
    assert sig.shape(None, None, "t13d3112h2_e8f1e7e78f70_b26ce05bbdd6") is None


@pytest.mark.parametrize(
    "entry, reason",
    [
        (_entry(measured='{client: "x", tls: "y", date: "2026-12-04"}'), "needs exactly"),
        (_entry(measured='{client: "x", tls: "y", date: "4 Dec", method: "m"}'), "YYYY-MM-DD"),
        (_entry(llm='"yes"'), "'llm' is true or false"),
        (_entry() + _entry(eid="b"), "already listed by a"),
        (_entry(ja4="t13d1812h1_xyz"), "is not a JA4 fingerprint"),
    ],
)
def test_bad_tls_clients_are_named(tmp_path, entry, reason):
    with pytest.raises(SignatureError) as err:
        _load(tmp_path, entry)
    assert str(tmp_path / "clients.yaml") in str(err.value) and reason in str(err.value)


def test_one_match_per_request_signature():
    """A request matched by its shape gets the same Match each time (the record memo keys
    on the match's identity: a fresh object per record would defeat it, or collide)."""
    ident = Identifier(bundled_catalog())
    a = ident.shape("https://relay.example/v1/chat/completions", None)
    b = ident.shape("http://gw.example/openai/v1/responses", "curl/8")
    assert a is b and a.pattern == "path:openai_chat_completions"
    c = ident.shape(None, "OpenAI/Python 1.54.0")
    assert c is ident.shape("/x", "OpenAI/Python 2.0") and c.pattern == "user-agent:openai_python"
    assert ident.shape(None, "curl/8.5.0") is None
