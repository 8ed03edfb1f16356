"""Live capture: a tcpdump pipe (what ``watch --interface`` uses) against a libpcap binding.

Both read the same generated capture: through ``tcpdump -r FILE -w -`` piped into
:class:`monitor.live.LiveCapture` (tick forwarder + pcap collector, C accelerator included),
and through pcapy-ng (a maintained libpcap binding, ``open_offline`` gives the same
``next()`` loop as a live handle) feeding each packet to the same flow table, one Python
call per packet, as any binding must. The plain file through the collector is the floor.

    python benchmarks/bench_live.py [--packets 200000] [--pcapy-path DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor.app import App, Settings  # noqa: E402
from monitor.collectors import CollectOptions, Diagnostics, make_collector  # noqa: E402
from monitor.collectors.flows import FlowTable  # noqa: E402
from monitor.egress import EgressOptions  # noqa: E402
from monitor.live import LiveCapture  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--pcapy-path", help="where pcapy-ng is installed (pip --target)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-live-"))
    cap = tmp / "g.pcap"
    subprocess.run([sys.executable, str(ROOT / "benchmarks/gen_pcap.py"), "-o", str(cap),
                    "--packets", str(args.packets), "--no-truth", "-q"], check=True)  # fmt: skip
    app = App(Settings())
    pipeline = app.pipeline(EgressOptions(), CollectOptions(format="pcap"))
    results = {}
    identify = pipeline.identifier.identify  # what counts: LLM observations, as in watch

    t = time.perf_counter()
    diag = Diagnostics()
    with open(cap, "rb") as f:
        n_file = sum(1 for o in make_collector("pcap", pipeline.collect_options, pipeline.catalog).parse(
            f, "file", diag, pipeline.identifier.host_filter) if identify(o))  # fmt: skip
    results["file → collector (floor)"] = (time.perf_counter() - t, diag.records, n_file)

    t = time.perf_counter()
    live = LiveCapture(pipeline, "bench", None, print,
                       command=["tcpdump", "-r", str(cap), "-w", "-", "-U"], tick=None)  # fmt: skip
    live._threads[1].join()  # the parser ends when tcpdump has written everything
    found = len(live.drain())
    live.close()
    results["tcpdump pipe → collector (watch --interface)"] = (
        time.perf_counter() - t, live.diag.records, found)  # fmt: skip

    if args.pcapy_path:
        sys.path.insert(0, args.pcapy_path)
    try:
        import pcapy  # type: ignore[import-not-found]
    except ImportError:
        print("pcapy-ng not importable: pip install --target DIR pcapy-ng, then --pcapy-path DIR")
    else:
        t = time.perf_counter()
        reader = pcapy.open_offline(str(cap))
        lt = reader.datalink()
        table = FlowTable("pcapy", "pcap", pipeline.catalog, pipeline.identifier.host_filter)
        packets = found_b = 0
        while True:
            header, data = reader.next()
            if header is None:
                break
            packets += 1
            sec, usec = header.getts()
            table.packet(sec + usec * 1e-6, packets, lt, data, 0, len(data))
            found_b += sum(1 for o in table.ready if identify(o))
            table.ready.clear()
        table.finish()
        found_b += sum(1 for o in table.ready if identify(o))
        results["pcapy-ng next() → flow table, per packet"] = (
            time.perf_counter() - t, packets, found_b)  # fmt: skip

    print(f"capture: {cap.stat().st_size / 1e6:.0f} MB (shared machine: figures are noisy)")
    for name, (secs, packets, obs) in results.items():
        print(f"  {name:<46} {secs:6.2f} s  {packets / secs / 1e3:7.0f} k packets/s  "
              f"{obs} LLM observations")  # fmt: skip
    app.close()


if __name__ == "__main__":
    main()
