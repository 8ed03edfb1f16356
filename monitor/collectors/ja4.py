"""JA4 fingerprints of TLS ClientHellos (FoxIO's JA4, BSD-3-Clause).

A JA4 names the TLS library and settings a client uses (``t13d1516h2_8daaf6152771_e5627efa2ab1``
is Chrome; Python's ``ssl`` under an SDK has its own), so it tells which software made a
connection whatever host it went to. Spec: https://github.com/FoxIO-LLC/ja4
(``technical_details/JA4.md``); the rules below follow FoxIO's reference implementation
(``rust/ja4/src/tls.rs``) and are checked against its outputs for every capture in
``../shared/conformance/pcap/ja4``:

* ``q`` when the ClientHello carries quic_transport_parameters (0x0039), else ``t``;
* version: the highest of supported_versions (GREASE removed), else the legacy version;
* ``d`` when a server_name extension is present, else ``i``;
* cipher and extension counts, GREASE removed, at most 99 (SNI and ALPN counted);
* first and last character of the first ALPN protocol (a non-ASCII byte is ``9``, a missing
  one ``0``);
* 12 hex digits of SHA-256 of the sorted cipher suites, and of the sorted extensions (SNI and
  ALPN removed) followed by ``_`` and the signature algorithms in the client's order;
  an empty list hashes to ``000000000000``.

:mod:`monitor.collectors.tls` walks the ClientHello once and hands over the parts; the
parts that vary per connection (random, key shares, session ids) are not among them, so
the result is memoised: one hash per distinct client configuration, not per connection.
The memo's key leaves out what JA4 leaves out and clients vary per connection (GREASE
values, the order of extensions and cipher suites: Chrome shuffles its extensions).
"""

from __future__ import annotations

import hashlib
from itertools import filterfalse

__all__ = ["ja4"]

_VERSIONS = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3", 0x0002: "s2"}
_SERVER_NAME = 0x0000
_ALPN = 0x0010
_SUPPORTED_VERSIONS = 0x002B
_QUIC_TRANSPORT_PARAMETERS = 0x0039
_CACHE_LIMIT = 4096
_CACHE: dict[tuple, str] = {}
_GREASE = frozenset(range(0x0A0A, 0x10000, 0x1010)).__contains__  # 0x0a0a, 0x1a1a .. 0xfafa


def ja4(
    suites: bytes,
    types: tuple[int, ...],
    sigalgs: bytes,
    alpn: tuple[str, ...],
    versions: tuple[int, ...],
    legacy_version: int,
) -> str:
    """JA4 from the parts of a well-formed ClientHello: the cipher-suite bytes, every
    extension type in order, the signature_algorithms extension body, the ALPN names and
    supported_versions (GREASE removed) as :mod:`monitor.collectors.tls` parsed them."""
    if len(suites) & 1:  # a stray byte: the suites as they are
        cs: bytes | tuple[int, ...] = suites
    else:  # as 16-bit units of either byte order (a GREASE value reads the same in both)
        cs = tuple(sorted(filterfalse(_GREASE, memoryview(suites).cast("H"))))
    key = (cs, tuple(sorted(filterfalse(_GREASE, types))), sigalgs, alpn[:1], versions)
    key += (legacy_version,)
    found = _CACHE.get(key)
    if found is None:
        if len(_CACHE) >= _CACHE_LIMIT:
            _CACHE.clear()
        found = _CACHE[key] = _fingerprint(
            (suites, types, sigalgs, alpn[:1], versions, legacy_version)
        )
    return found


def _grease(v: int) -> bool:
    return (v & 0x0F0F) == 0x0A0A and (v >> 8) == (v & 0xFF)


def _hash12(text: str) -> str:
    if not text:
        return "000000000000"
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:12]


def _fingerprint(key: tuple) -> str:
    """The fingerprint of the parts :func:`ja4` takes, in its order."""
    suites, types, sigalgs, alpn, versions, legacy_version = key
    cs = [
        f"{v:04x}"
        for i in range(0, len(suites) - 1, 2)
        if not _grease(v := suites[i] << 8 | suites[i + 1])
    ]
    exts = [t for t in types if not _grease(t)]
    version = legacy_version
    if _SUPPORTED_VERSIONS in exts:
        version = max(versions) if versions else -1
    proto = "q" if _QUIC_TRANSPORT_PARAMETERS in exts else "t"
    sni = "d" if _SERVER_NAME in exts else "i"
    head = (
        f"{proto}{_VERSIONS.get(version, '00')}{sni}"
        f"{min(len(cs), 99):02d}{min(len(exts), 99):02d}{_alpn_chars(alpn)}"
    )
    sorted_exts = ",".join(sorted(f"{t:04x}" for t in exts if t not in (_SERVER_NAME, _ALPN)))
    # signature_algorithms body: 2-byte length, then 2-byte code points, in the client's order
    end = min(len(sigalgs), 2 + (sigalgs[0] << 8 | sigalgs[1])) if len(sigalgs) >= 2 else 0
    sigs = ",".join(f"{sigalgs[i] << 8 | sigalgs[i + 1]:04x}" for i in range(2, end - 1, 2))
    tail = f"{sorted_exts}_{sigs}" if sigs else sorted_exts
    return f"{head}_{_hash12(','.join(sorted(cs)))}_{_hash12(tail)}"


def _alpn_chars(alpn: tuple[str, ...]) -> str:
    """First and last character of the first protocol name ('00' without one)."""
    name = alpn[0] if alpn else ""
    if not name:
        return "00"

    def char(c: str) -> str:
        return c if c < "\x80" else "9"

    return char(name[0]) + (char(name[-1]) if len(name) > 1 else "0")
