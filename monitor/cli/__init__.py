"""The ``apiwatch`` command: a thin click layer over :mod:`monitor.app`.

:mod:`monitor.cli.base` holds the group and what commands share; each other module registers
its commands on that group when imported, which happens when one of them is first looked up
(see the table below). A new command is one module plus its line below.

Exit codes (for cron): 0 success; 1 error (unreadable input, bad config or rules);
2 usage error; 3 ``--fail-on`` matched new or reopened findings.
"""

import gc

_collecting = gc.isenabled()
gc.disable()  # importing makes no garbage cycles: see monitor.app.uncollected
try:
    from monitor.cli.base import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK, EXIT_USAGE, main
finally:
    gc.freeze()
    if _collecting:
        gc.enable()

#: each module and the commands it registers on ``main``: a module is imported when one of
#: its commands is first looked up (all of them to list them, ``--help``), so that a command
#: loads its own module only
main.commands.provide(
    {
        "monitor.cli.alerts": ("alerts",),
        "monitor.cli.collect": ("scan", "parse"),
        "monitor.cli.database": ("db",),
        "monitor.cli.discovered": ("discovered",),
        "monitor.cli.export": ("export",),
        "monitor.cli.findings": ("findings", "reevaluate"),
        "monitor.cli.query": ("incidents", "show", "providers", "geo", "rules"),
        "monitor.cli.reporting": ("report", "daily", "config"),
        "monitor.cli.triage": ("ack", "resolve"),
        "monitor.cli.watch": ("watch",),
    }
)

__all__ = ["EXIT_ERROR", "EXIT_FINDINGS", "EXIT_OK", "EXIT_USAGE", "main"]
