"""``watch --interface``: a live capture on loopback (tcpdump), with TLS traffic made by curl
and openssl s_client to an openssl s_server, alerts received by an HTTP server. Skipped with
the reason where capturing is not permitted; required under CI."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import time
from contextlib import closing

from tests.alerting import write_config
from tests.receivers import HttpReceiver, free_port, listening, make_test_ca, need, wait_until
from tests.test_watch import LATENCY_LIMIT, Watch


def test_live_capture_on_loopback_alerts_within_5s(tmp_path):
    for tool in ("tcpdump", "curl", "openssl"):
        need(shutil.which(tool) is not None, f"{tool} is not installed")
    ca = make_test_ca(tmp_path)
    port = free_port()
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(ca["cert"]),
         "-key", str(ca["key"]), "-www", "-quiet"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    hook = HttpReceiver(tmp_path).start()
    watch = None
    try:
        wait_until(lambda: listening(port), 10, "openssl s_server")
        config = write_config(
            tmp_path / "c.toml", f'name = "oncall"\nkind = "webhook"\nurl = "{hook.url}/h"'
        )
        db = tmp_path / "db.sqlite"
        try:
            watch = Watch(config, db, "--interface", "lo", "--bpf", f"tcp port {port}",
                          "--egress-country", "CN", "--interval", "0.2")  # fmt: skip
        except AssertionError as exc:
            need("tcpdump" not in str(exc), f"live capture not possible here: {exc}")
            raise
        time.sleep(1.0)  # the filter is in place a moment after tcpdump starts
        ended = {}
        subprocess.run(
            ["curl", "-sk", "--max-time", "10", "-o", "/dev/null",
             "--resolve", f"api.openai.com:{port}:127.0.0.1", f"https://api.openai.com:{port}/"],
            check=True, timeout=20,
        )  # fmt: skip
        ended["api.openai.com"] = time.time()
        subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername",
             "api.anthropic.com", "-CAfile", str(ca["ca"])],
            input=b"", capture_output=True, timeout=20,
        )  # fmt: skip
        ended["api.anthropic.com"] = time.time()
        # per host: the region finding, and endpoint-network-mismatch (the provider's name
        # at a loopback address is what a hosts-file override looks like)
        got = hook.wait_for(4, timeout=15)
        assert watch.stop(signal.SIGTERM) == 0, "\n".join(watch.log)
        watch = None
    finally:
        if watch is not None:
            watch.stop(signal.SIGKILL)
        hook.stop()
        server.terminate()
        server.wait(10)
    rules = {(r["body"]["event"]["dest_host"], r["body"]["event"]["rule"]) for r in got}
    assert {rule for _, rule in rules} == {
        "provider-region-unsupported",
        "endpoint-network-mismatch",
    }
    events = {
        r["body"]["event"]["dest_host"]: (r, r["body"]["event"])
        for r in got
        if r["body"]["event"]["rule"] == "provider-region-unsupported"
    }
    assert set(events) == {"api.openai.com", "api.anthropic.com"}
    latency = {}
    for host, (request, e) in events.items():
        assert e["provider"] == host.split(".")[1] and e["client_ip"] == "127.0.0.1"
        assert (e["egress_country"], e["rule"], e["event_type"]) == (
            "CN", "provider-region-unsupported", "new")  # fmt: skip
        latency[host] = request["received_at"] - ended[host]
    print("\nlive capture: connection closed to alert received: "
          + ", ".join(f"{h} {s:.2f} s" for h, s in latency.items()))  # fmt: skip
    assert max(latency.values()) < LATENCY_LIMIT
    # where each endpoint processes requests, as a scan of the same traffic stores it (the
    # catalogue's: both are global endpoints; Anthropic's with its inference-geo caveat)
    with closing(sqlite3.connect(db)) as con:
        placed = set(con.execute("SELECT dest_host, residency_basis, residency_caveat"
                                 " FROM observations"))  # fmt: skip
    assert placed == {("api.openai.com", "global", None),
                      ("api.anthropic.com", "global", "anthropic-inference-geo")}  # fmt: skip
