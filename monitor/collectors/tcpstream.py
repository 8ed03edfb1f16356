"""The first bytes of one direction of a TCP connection, put back in order.

The flow table (:mod:`monitor.collectors.flows`) keeps one :class:`Stream` per direction it
still reads (the client's ClientHello or HTTP requests, the server's HTTP responses or TLS
certificate); the bound keeps memory flat whatever the connection sends.
"""

from __future__ import annotations

__all__ = ["Stream", "STREAM_LIMIT"]

STREAM_LIMIT = 16 * 1024


class Stream:
    """The first bytes of one direction of a TCP connection, in order.

    ``base`` is the sequence number of the first byte. Segments may come out of order,
    overlap or repeat; bytes are appended to :attr:`data` once contiguous. At most
    ``limit`` bytes are held in :attr:`data` plus the out-of-order segments; beyond that
    :attr:`overflow` is set and bytes are dropped (the consumer gives up)."""

    __slots__ = ("next", "data", "pending", "pending_bytes", "limit", "overflow", "consumed")

    def __init__(self, base: int, limit: int = STREAM_LIMIT):
        self.next = base & 0xFFFFFFFF
        self.data = bytearray()
        self.pending: dict[int, bytes] = {}
        self.pending_bytes = 0
        self.limit = limit
        self.overflow = False
        self.consumed = 0  # bytes removed from the front of ``data`` by the consumer

    def add(self, seq: int, seg: bytes) -> bool:
        """Add a segment; True when new contiguous bytes were appended."""
        if not seg:
            return False
        rel = (seq - self.next) & 0xFFFFFFFF
        if rel == 0:
            self._append(seg)
        elif rel < 0x80000000:  # in the future: keep it for later, bounded
            if rel > self.limit or self.pending_bytes + len(seg) > self.limit:
                self.overflow = True
                return False
            old = self.pending.get(seq)
            if old is None or len(old) < len(seg):
                self.pending_bytes += len(seg) - (len(old) if old else 0)
                self.pending[seq] = seg
            return False
        else:  # starts in the past: retransmission, maybe with new bytes at its end
            overlap = 0x100000000 - rel
            if overlap >= len(seg):
                return False
            self._append(seg[overlap:])
        while self.pending:
            progressed = False
            for s in list(self.pending):
                r = (s - self.next) & 0xFFFFFFFF
                if r < 0x80000000 and r > 0:
                    continue
                seg2 = self.pending.pop(s)
                self.pending_bytes -= len(seg2)
                overlap = 0 if r == 0 else 0x100000000 - r
                if overlap < len(seg2):
                    self._append(seg2[overlap:])
                    progressed = True
            if not progressed:
                break
        return True

    def _append(self, seg: bytes) -> None:
        room = self.limit - len(self.data)
        if len(seg) > room:
            self.overflow = True
            seg = seg[: max(room, 0)]
        self.data += seg
        self.next = (self.next + len(seg)) & 0xFFFFFFFF

    def take(self, n: int) -> None:
        """The consumer is done with the first ``n`` bytes of :attr:`data`."""
        del self.data[:n]
        self.consumed += n
