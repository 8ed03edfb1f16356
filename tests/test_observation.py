"""The record shape's helpers: address and host normalisation."""

from __future__ import annotations

import ipaddress
import math
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.observation import canonical_ip, iso_utc, normalise_host


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


@given(st.one_of(st.floats(-(2**33), 2**35, allow_nan=False),
                 st.integers(0, 2**35).map(lambda ms: ms / 1000),
                 st.integers(-(2**33), 2**35),
                 st.sampled_from([0.0, -0.0, 0.9995, 0.9999, 1732800000.9996, 86399.9999])))  # fmt: skip
def test_iso_utc_is_strftime_with_milliseconds(ts):
    """``iso_utc`` (memoised per second, tables of minutes, seconds and milliseconds) is the
    second's ``strftime`` and its fraction rounded to milliseconds, 999 at most (a fraction
    that rounds up stays within its second)."""
    second = math.floor(ts)
    millis = min(999, round((ts - second) * 1000))
    expected = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    assert iso_utc(ts) == f"{expected}.{millis:03d}Z" and iso_utc(None) is None
