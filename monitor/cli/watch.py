"""``watch``: follow logs (or a live capture) and alert within seconds."""

from __future__ import annotations

import signal
import sys
import threading
import time

import click

from monitor.cli.base import (
    EXIT_ERROR,
    app_of,
    check_site,
    collect_options,
    guard,
    log_inputs,
    main,
    report_delivery,
    warn_stale_accelerators,
)
from monitor.output import safe_text


@main.command("watch")
@click.argument("paths", nargs=-1, metavar="[FILE…]")
@log_inputs
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05, max=60),
    default=0.5,
    show_default=True,
    help="Seconds between looks at the files.",
)
@click.option(
    "--heartbeat",
    type=click.FloatRange(min=0),
    default=60,
    show_default=True,
    help="Seconds between heartbeat lines on stderr (records/s, alerts, lag); 0: none.",
)
@click.option(
    "--interface",
    "-i",
    metavar="IF",
    help="Capture live on this interface (through tcpdump; needs capture permission).",
)
@click.option(
    "--bpf",
    metavar="FILTER",
    help="Capture filter for --interface, e.g. 'tcp port 443 or udp port 443 or port 53'.",
)
@click.pass_context
@guard
def watch_cmd(ctx, paths, fmt, squid_logformat, columns, mapping, site, egress_ip,
              egress_country, interval, heartbeat, interface, bpf):  # fmt: skip
    """Follow logs as they are written (like tail -F) and send alerts within seconds.

    Without FILE (or --interface), follows every [[sources]] entry of the config. Read
    positions are those of scan and daily: stopping, restarting or alternating with them
    never counts a line twice. SIGTERM (or Ctrl-C) commits what was read and exits 0.

    \b
    apiwatch --config /etc/apiwatch/config.toml watch
    apiwatch watch /var/log/squid/access.log --site shanghai --heartbeat 300
    apiwatch watch --interface eth0 --bpf 'tcp port 443 or udp port 443 or port 53' --site sh
    """
    from monitor.collectors import CollectOptions
    from monitor.egress import EgressOptions
    from monitor.follow import Followed, Upkeep, WatchTotals, watch
    from monitor.live import LiveCapture

    app = app_of(ctx)
    check_site(app, site)
    if bpf and not interface:
        raise click.UsageError("--bpf filters a live capture: give --interface too")
    egress = EgressOptions(egress_ip=egress_ip, egress_country=egress_country, site=site)
    inputs: list[Followed] = []
    if paths:
        pipeline = app.pipeline(egress, collect_options(fmt, squid_logformat, columns, mapping))
        inputs = [Followed(p, pipeline, p) for p in paths]
    elif not interface:
        for src in app.config.sources:
            pipeline = app.pipeline(
                EgressOptions(egress_ip=src.egress_ip, egress_country=src.egress_country,
                              site=src.site),
                CollectOptions(format=src.format, squid_logformat=src.squid_logformat),
            )  # fmt: skip
            inputs.append(Followed(src.path, pipeline, src.key))
    if not inputs and not interface:
        raise click.UsageError(
            "nothing to watch: give FILE…, --interface or [[sources]] in the config"
        )
    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    def log(message: str) -> None:
        click.echo(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} "
                   f"{safe_text(message, 2000)}", err=True)  # fmt: skip

    store = app.store
    captures = []
    if interface:
        live = app.pipeline(egress, CollectOptions(format="pcap"))
        captures.append(LiveCapture(live, interface, bpf, log))
    followed = [i.pattern for i in inputs] + [c.source for c in captures]
    scan_id = store.start_scan(followed, {"watch": True, "bpf": bpf})
    log(f"watch: following {', '.join(followed)} (scan {scan_id})")
    warn_stale_accelerators(log)  # a service slower after an update: its log says why
    dispatcher = app.dispatcher if app.config.alerts else None
    totals = WatchTotals()
    upkeep = Upkeep(app, scan_id, totals)
    watch(store, dispatcher, inputs, scan_id, stop, interval=interval, heartbeat=heartbeat,
          log=log, captures=captures, upkeep=upkeep, totals=totals)  # fmt: skip
    upkeep.finish()  # the correlation over this watch's days, as after a scan
    delivery = app.deliver_alerts()
    totals.alerts_sent += sum(delivery.sent.values())
    report_delivery(delivery)
    record = totals.as_dict()
    record.pop("alerts_sent")
    store.finish_scan(
        scan_id,
        record,
        [{"source": p.source, "line": p.line, "reason": p.reason, "excerpt": p.excerpt}
         for p in (*totals.file_errors, *totals.problems)],
    )  # fmt: skip
    log(
        f"watch: stopped: {totals.records} records, {totals.llm_observations} LLM observations "
        f"({totals.stored} new), {len(totals.incidents_new)} new incident(s), "
        f"{totals.alerts_sent} alert(s) sent"
    )
    sys.stderr.flush()
    if totals.file_errors:
        ctx.exit(EXIT_ERROR)
