"""SOCKS 4, 4a and 5 CONNECT requests at the start of a TCP connection's client bytes: the
target they ask the proxy for names the tunnelled flow (``host_source = connect``)."""

from __future__ import annotations

import ipaddress

__all__ = ["socks_request"]


def socks_request(d: bytearray) -> tuple[tuple[str | None, int], int] | None | bool:
    """A SOCKS 5 greeting and CONNECT request, or a SOCKS 4/4a CONNECT, at the start of
    the client bytes: ((host or None, port), bytes used); None: need more; False: not SOCKS."""
    n = len(d)
    if d[0] == 5:
        if n < 2:
            return None
        p = 2 + d[1]
        if d[1] == 0 or d[1] > 16:
            return False
        if n < p + 5:
            return None
        if d[p] != 5 or d[p + 1] != 1 or d[p + 2] != 0:
            return False
        atyp = d[p + 3]
        q = p + 4
        if atyp == 1:
            host, q = str(ipaddress.IPv4Address(bytes(d[q : q + 4]))) if n >= q + 4 else None, q + 4
        elif atyp == 4:
            host, q = (
                str(ipaddress.IPv6Address(bytes(d[q : q + 16]))) if n >= q + 16 else None,
                q + 16,
            )
        elif atyp == 3:
            ln = d[q]
            host, q = bytes(d[q + 1 : q + 1 + ln]).decode("ascii", "replace").lower(), q + 1 + ln
        else:
            return False
        if n < q + 2:
            return None
        return (host, (d[q] << 8) | d[q + 1]), q + 2
    if d[0] == 4:
        if n < 9:
            return None
        if d[1] != 1:
            return False
        port = (d[2] << 8) | d[3]
        end = d.find(b"\x00", 8)
        if end < 0:
            return None if n < 256 else False
        host: str | None = str(ipaddress.IPv4Address(bytes(d[4:8])))
        if d[4:7] == b"\x00\x00\x00" and d[7]:  # SOCKS 4a: the name follows
            e2 = d.find(b"\x00", end + 1)
            if e2 < 0:
                return None if n < 512 else False
            host = bytes(d[end + 1 : e2]).decode("ascii", "replace").lower()
            end = e2
        return (host, port), end + 1
    return False
