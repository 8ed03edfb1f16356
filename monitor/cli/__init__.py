"""The ``apiwatch`` command: a thin click layer over :mod:`monitor.app`.

:mod:`monitor.cli.base` holds the group and what commands share; each other module registers
its commands on that group when imported here. A new command is one module plus one line below.

Exit codes (for cron): 0 success; 1 error (unreadable input, bad config or rules);
2 usage error; 3 ``--fail-on`` matched new or reopened findings.
"""

import gc

_collecting = gc.isenabled()
gc.disable()  # importing makes no garbage cycles: see monitor.app.uncollected
try:
    from monitor.cli import (  # noqa: F401 (registration)
        alerts,
        collect,
        database,
        discovered,
        export,
        findings,
        query,
        reporting,
        triage,
        watch,
    )
    from monitor.cli.base import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK, EXIT_USAGE, main
finally:
    gc.freeze()
    if _collecting:
        gc.enable()

__all__ = ["EXIT_ERROR", "EXIT_FINDINGS", "EXIT_OK", "EXIT_USAGE", "main"]
