"""The record shape's helpers: address and host normalisation."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.observation import canonical_ip, normalise_host


def reference(text: str) -> str | None:
    """What :func:`canonical_ip` is defined as: :mod:`ipaddress`'s text form."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


@pytest.mark.parametrize(
    "text",
    ["1.2.3.4", "0.0.0.0", "255.255.255.255", "256.1.1.1", "01.2.3.4", "1.2.3.004", "1.2.3",
     "1.2.3.4.", "1..2.3", " 1.2.3.4", "1.2.3.4 ", "1.2.3.4\n", "1.2.3.4\x00", "1.2.3.\u0661",
     "\udcff1.2.3.4", "1.2.3.4%eth0", "1.2.3.4/8", "+1.2.3.4", "1.2.3.0x1", "4294967295", "0",
     "api.openai.com", "a.b.c.d", "2001:DB8::1", "::ffff:1.2.3.4", "fe80::1%eth0", "::", ":",
     "-", "", "1.2.3.4:80"],
)  # fmt: skip
def test_canonical_ip_is_ipaddress_text_form(text: str) -> None:
    assert canonical_ip(text) == (reference(text) if text not in ("", "-") else None)


octet = st.sampled_from(["0", "00", "01", "1", "9", "25", "255", "256", "099", "999", "1000", ""])


@given(st.lists(octet, min_size=1, max_size=6).map(".".join))
def test_canonical_ip_agrees_on_dotted_numbers(text: str) -> None:
    """Dotted quads take a fast path: it accepts exactly what ipaddress does."""
    assert canonical_ip(text) == reference(text)


@given(st.text(alphabet="0123456789.:%abfx \t\x00\u0661", min_size=1, max_size=20))
def test_canonical_ip_agrees_on_any_text(text: str) -> None:
    assert canonical_ip(text) == (reference(text) if text != "-" else None)


def test_normalise_host_of_addresses() -> None:
    assert normalise_host("10.1.2.3:443") == "10.1.2.3"
    assert normalise_host("[2001:DB8::1]:443") == "2001:db8::1"
    assert normalise_host("API.OpenAI.com.") == "api.openai.com"
