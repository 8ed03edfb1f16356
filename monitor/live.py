"""Live capture for ``watch --interface``: tcpdump writes pcap to a pipe, the pcap collector
reads it as it comes.

Why a ``tcpdump`` pipe and not a libpcap binding: tcpdump is Debian's maintained libpcap
front end (BPF compiled and checked by libpcap, privileges dropped with ``-Z``, no compiled
Python extension to build), and the pipe feeds the same pcap collector and C accelerator
that read capture files, so live and offline parsing cannot differ. The pipe costs one copy
of the packet bytes; the measured rates are in the README.

The flow table reports a flow when it ends (FIN plus a short linger, or idle), and its clock
is the capture's: with no packets, no time passes. So when the interface is quiet for
``TICK`` seconds, a tick frame (an Ethernet frame of the local experimental EtherType,
which the decoder skips as not IP) carrying the current time is inserted between records,
and flows that ended are reported without waiting for more traffic.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import shutil
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Callable

from monitor.collectors import Diagnostics, make_collector
from monitor.collectors.pcap import PCAP_MAGICS
from monitor.errors import ApiwatchError
from monitor.observation import Observation
from monitor.pipeline import Pipeline, place

TICK = 0.5  # seconds of silence before a tick frame
ETHERNET = 1
TICK_FRAME = b"\0" * 12 + b"\x88\xb5"  # IEEE 802 local experimental EtherType 1
READ = 1 << 16


class CaptureError(ApiwatchError):
    """tcpdump is missing, refused the interface or filter, or lacks the permission."""


def tcpdump_command(interface: str, bpf: str | None) -> list[str]:
    tcpdump = shutil.which("tcpdump") or shutil.which("/usr/sbin/tcpdump")
    if tcpdump is None:
        raise CaptureError("watch --interface needs tcpdump (apt-get install tcpdump)")
    cmd = [tcpdump, "-i", interface, "-n", "-s", "0", "-U", "--immediate-mode", "-w", "-"]
    return cmd + ([bpf] if bpf else [])


class LiveCapture:
    """tcpdump → (ticks) → pcap collector, in two threads; :meth:`drain` hands over the
    LLM observations found so far, with their catalogue match."""

    def __init__(self, pipeline: Pipeline, interface: str, bpf: str | None,
                 log: Callable[[str], None], command: list[str] | None = None,
                 tick: float | None = TICK):  # fmt: skip
        """``command``: what writes pcap to stdout instead of tcpdump on ``interface``
        (``tcpdump -r FILE -w -`` in the benchmark, with ``tick=None``: a recorded
        capture's clock is not now)."""
        self.tick = tick
        self.pipeline = pipeline
        self.source = f"live:{interface}"
        self.log = log
        self.diag = Diagnostics()
        self.found: queue.Queue[tuple[Observation, object]] = queue.Queue()
        self.process = subprocess.Popen(
            command or tcpdump_command(interface, bpf),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,  # unbuffered: the forwarder reads the descriptor itself
        )
        read_end, self._write_end = os.pipe()
        self._reader = os.fdopen(read_end, "rb", buffering=0)
        self._threads = [
            threading.Thread(target=self._forward, name="capture-forward", daemon=True),
            threading.Thread(target=self._parse, name="capture-parse", daemon=True),
        ]
        self._header = self._first_bytes(24)
        for t in self._threads:
            t.start()

    def _first_bytes(self, n: int) -> bytes:
        """The pcap header, or tcpdump's own error (bad interface, filter or permission)."""
        assert self.process.stdout is not None
        head = b""
        while len(head) < n:
            more = self.process.stdout.read(n - len(head))
            if not more:
                self.process.wait(10)
                err = (self.process.stderr.read() if self.process.stderr else b"").decode(
                    "utf-8", "replace"
                )
                lines = [x for x in err.splitlines() if x.strip()]
                raise CaptureError(f"{self.source}: tcpdump: {lines[-1] if lines else 'exited'}")
            head += more
        if head[:4] not in PCAP_MAGICS:
            raise CaptureError(f"{self.source}: tcpdump wrote no pcap header")
        return head

    def _forward(self) -> None:
        """Copy tcpdump's records to the collector's pipe, adding a tick when it is quiet."""
        out = self._write_end
        head = self._header
        order, scale = PCAP_MAGICS[head[:4]]
        linktype = struct.unpack(order + "I", head[20:24])[0] & 0x0FFFFFF
        record = struct.Struct(order + "IIII")
        units = round(1 / scale)
        fd = self.process.stdout.fileno()  # type: ignore[union-attr]
        left = 0  # bytes of the current record's data still to come
        partial = b""  # bytes of a record header not complete yet
        try:
            os.write(out, head)
            while True:
                ready, _, _ = select.select([fd], [], [], self.tick)
                if not ready:
                    if linktype == ETHERNET and left == 0 and not partial:
                        now = time.time()
                        secs = int(now)
                        tick = record.pack(secs, int((now - secs) * units), 14, 14) + TICK_FRAME
                        os.write(out, tick)
                    continue
                chunk = os.read(fd, READ)
                if not chunk:
                    break
                pos = 0
                while pos < len(chunk):  # follow record boundaries: ticks go between them
                    if left:
                        step = min(left, len(chunk) - pos)
                        left -= step
                        pos += step
                    else:
                        need = 16 - len(partial)
                        partial += chunk[pos : pos + need]
                        pos += min(need, len(chunk) - pos)
                        if len(partial) == 16:
                            left = record.unpack(partial)[2]
                            partial = b""
                os.write(out, chunk)
        except OSError:
            pass
        finally:
            os.close(out)

    def _parse(self) -> None:
        identify = self.pipeline.identifier.identify
        collector = make_collector("pcap", self.pipeline.collect_options, self.pipeline.catalog)
        for obs in collector.parse(self._reader, self.source, self.diag,  # type: ignore[arg-type]
                                   self.pipeline.identifier.host_filter):  # fmt: skip
            match = identify(obs)
            if match is not None:
                place(obs, match)  # where the endpoint processes it, as a scan stores it
                self.found.put((obs, match))

    def drain(self) -> list[tuple[Observation, object]]:
        out = []
        with contextlib.suppress(queue.Empty):
            while True:
                out.append(self.found.get_nowait())
        return out

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        """Stop tcpdump (by its PID) and let the collector report the flows still open."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        for t in self._threads:
            t.join(10)
        self._reader.close()
