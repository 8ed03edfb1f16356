"""Names from a TLS server's certificate, for connections captured after their ClientHello.

Up to TLS 1.2 the server's first flight (ServerHello, Certificate, ...) is plaintext, so a
capture that starts mid-handshake still shows whom the client reached: the certificate's
subject names (``host_source = cert``). TLS 1.3 encrypts the Certificate message: its
connections are named from DNS or the catalogue's ranges instead.

:func:`certificate_from_records` reads the first server bytes of a TCP stream (TLS record
layer) as :func:`~monitor.collectors.tls.client_hello_from_records` reads the client's;
:func:`certificate_name` picks the name a flow gets from the DER certificate (parsed with
``cryptography``, imported on first use).
"""

from __future__ import annotations

__all__ = ["certificate_from_records", "certificate_name", "looks_server_hello"]

_HANDSHAKE = 0x16
_SERVER_HELLO = 2
_CERTIFICATE = 11
#: handshake messages that may come before the Certificate in a TLS <= 1.2 server flight
_BEFORE_CERT = frozenset({0, _SERVER_HELLO})
MAX_CERT = 64 * 1024


def looks_server_hello(p: bytes | bytearray) -> bool:
    """The bytes start with a TLS record holding a ServerHello."""
    return len(p) >= 6 and p[0] == _HANDSHAKE and p[1] == 3 and p[5] == _SERVER_HELLO


def certificate_from_records(s: bytes) -> tuple[bytes | None, int]:
    """The first certificate (DER) of the server's Certificate message in the server bytes
    ``s`` of a TCP stream: ``(der, 0)``; ``(None, need)`` with ``need > 0`` when more bytes
    are needed; ``(None, -1)`` when there is none to read (not TLS, a record other than
    handshake before it, as TLS 1.3's encrypted flight, or a message out of place)."""
    hs = bytearray()
    p, n = 0, len(s)
    while True:
        # every complete handshake message collected so far
        q = 0
        while q + 4 <= len(hs):
            mtype, mlen = hs[q], (hs[q + 1] << 16) | (hs[q + 2] << 8) | hs[q + 3]
            if mtype == _CERTIFICATE:
                if mlen > MAX_CERT:
                    return None, -1
                if q + 4 + mlen > len(hs):
                    break  # the rest is in later records
                return _first_cert(bytes(hs[q + 4 : q + 4 + mlen]))
            if mtype not in _BEFORE_CERT:
                return None, -1
            if q + 4 + mlen > len(hs):
                break
            q += 4 + mlen
        if p + 5 > n:
            return None, p + 5 - n
        if s[p] != _HANDSHAKE or s[p + 1] != 3:
            return None, -1
        rlen = (s[p + 3] << 8) | s[p + 4]
        if rlen == 0 or p + 5 + rlen > n:
            return (None, -1) if rlen == 0 else (None, p + 5 + rlen - n)
        hs += s[p + 5 : p + 5 + rlen]
        p += 5 + rlen


def _first_cert(body: bytes) -> tuple[bytes | None, int]:
    # certificate_list<0..2^24-1> of ASN.1Cert<1..2^24-1> (TLS 1.2, RFC 5246 section 7.4.2)
    if len(body) < 6:
        return None, -1
    clen = (body[3] << 16) | (body[4] << 8) | body[5]
    if clen == 0 or 6 + clen > len(body):
        return None, -1
    return body[6 : 6 + clen], 0


def certificate_name(der: bytes) -> str | None:
    """The name a certificate gives its server: the first subjectAltName DNS name that is
    not a wildcard, else the subject's common name, else the first wildcard name without
    its ``*.``; lower-case. None when the certificate does not parse or names nothing."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = [str(n) for n in san.value.get_values_for_type(x509.DNSName)]
    except (x509.ExtensionNotFound, ValueError):
        pass
    try:
        cns = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    except ValueError:
        cns = []
    for name in [*(n for n in names if not n.startswith("*")), *cns, *names]:
        name = name.strip().lower().rstrip(".")
        if name.startswith("*."):
            name = name[2:]
        if name and all(33 <= ord(c) <= 126 for c in name):
            return name
    return None
