"""Start-up stays short: each command imports what it uses and nothing more. Checked from the
modules a real ``python -m monitor`` process has loaded (not from timings, which vary)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from monitor.cli import main
from tests.conftest import run

ROOT = Path(__file__).resolve().parents[1]
SQUID_LOG = ROOT / "tests" / "data" / "squid" / "native.log"

#: what no command needs before it runs: the store, alerting, correlation, exports, reports,
#: live capture, the cluster, and the third-party libraries behind them
NOT_FOR_HELP = {
    "monitor.alerts",
    "monitor.collectors",
    "monitor.correlate",
    "monitor.egress",
    "monitor.export",
    "monitor.follow",
    "monitor.geo",
    "monitor.live",
    "monitor.pipeline",
    "monitor.report",
    "monitor.scanner",
    "monitor.store",
    "dask",
    "distributed",
    "geoip2",
    "jinja2",
    "maxminddb",
    "pandas",
    "sqlite3",
    "sqlite_utils",
    "yaml",
}

#: what ``parse`` (which stores nothing, alerts nothing, looks up no address) never loads
NOT_FOR_PARSE = NOT_FOR_HELP - {"monitor.collectors", "monitor.egress", "monitor.geo",
                                "monitor.pipeline", "yaml"}  # fmt: skip

#: what ``scan`` never loads: exports, reports, live capture, the cluster, geoip2's models,
#: sqlite-utils (the store uses SQLite directly, but for old databases' upgrade steps)
NOT_FOR_SCAN = {"monitor.export", "monitor.follow", "monitor.live", "monitor.report",
                "dask", "distributed", "geoip2", "jinja2", "pandas", "sqlite_utils"}  # fmt: skip
#: what the main process of a scan has not loaded yet when it starts the producers (they
#: need none of it, and every millisecond before them is the whole scan's)
NOT_BEFORE_PRODUCERS = {"monitor.store", "monitor.correlate", "monitor.alerts", "sqlite3",
                        "sqlite_utils"}  # fmt: skip
#: what reading a Squid log never loads: detection tests the other formats' first bytes
#: with monitor.collectors.sniff and Squid's lines vote first, so the capture reader, the
#: Zeek, Suricata, Zscaler, W3C and mapped collectors (and orjson) stay unloaded
NOT_FOR_A_SQUID_LOG = {"monitor.collectors.pcap", "monitor.collectors.flows",
                       "monitor.collectors.zeek", "monitor.collectors.suricata",
                       "monitor.collectors.zscaler", "monitor.collectors.elff",
                       "monitor.collectors.mapped", "orjson"}  # fmt: skip


def _loaded(args: list[str], tmp_path: Path, setup: str = "") -> set[str]:
    """Modules loaded by ``python -m monitor ARGS`` once it has run (its own process);
    ``setup``: code run first."""
    out = tmp_path / "modules.json"
    code = (
        "import json, runpy, sys\n"
        f"{setup}"
        f"sys.argv = ['apiwatch', *{args!r}]\n"
        "try:\n"
        "    runpy.run_module('monitor', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (None, 0, 3), exc.code\n"
        f"open({str(out)!r}, 'w').write(json.dumps(sorted(sys.modules)))\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, timeout=120
    )
    return set(json.loads(out.read_text()))


def _noting(seen: Path, where: str, what: str = "sorted(sys.modules)", first: str = "") -> str:
    """``setup`` for :func:`_loaded`: producers however small the input (a small log is
    parsed in-process unless told otherwise), and ``what`` (an expression) written as JSON
    to ``seen`` when ``where`` of monitor.scanner (``Scanner._fork``: in the main process
    before it forks; ``_producer``: in a producer as it starts) is called; ``first``: code
    run before."""
    owner, _, name = where.rpartition(".")
    target = f"s.{owner}" if owner else "s"
    return (
        "import gc, monitor.scanner as s\n"
        "s.IN_PROCESS_BELOW = 0\n"
        f"{first}"
        f"real = {target}.{name}\n"
        "def noted(*args):\n"
        f"    open({str(seen)!r}, 'w').write(json.dumps({what}))\n"
        "    return real(*args)\n"
        f"{target}.{name} = noted\n"
    )


def _heavy(loaded: set[str], forbidden: set[str]) -> list[str]:
    return sorted(m for m in loaded if m in forbidden or m.split(".")[0] in forbidden
                  or any(m.startswith(f + ".") for f in forbidden))  # fmt: skip


def test_import_and_help_load_no_command_parts(tmp_path):
    assert _heavy(_loaded(["--help"], tmp_path), NOT_FOR_HELP) == []


def test_parse_loads_neither_store_nor_alerting(tmp_path):
    loaded = _loaded(["parse", "--json", str(SQUID_LOG)], tmp_path)
    assert {"monitor.pipeline", "monitor.collectors.squid"} <= loaded  # it did parse
    assert _heavy(loaded, NOT_FOR_PARSE) == []


def test_scan_loads_no_exporters_reports_or_cluster(tmp_path):
    db = tmp_path / "a.db"
    args = ["--db", str(db), "scan", str(SQUID_LOG), "--egress-country", "CN", "-q"]
    for _new_then_existing in range(2):
        loaded = _loaded([*args, "--full"], tmp_path)
        assert {"monitor.store", "monitor.scanner", "maxminddb"} <= loaded  # it did scan, locate
        assert _heavy(loaded, NOT_FOR_SCAN) == []
    assert sqlite3.connect(db).execute("SELECT count(*) FROM scans").fetchone() == (2,)


def test_scan_starts_its_producers_before_loading_the_store(tmp_path):
    """The main process forks the producers first, then loads what storing needs."""
    seen = tmp_path / "at_fork.json"
    args = ["--db", str(tmp_path / "a.db"), "scan", str(SQUID_LOG), "-j", "2", "-q"]
    loaded = _loaded(args, tmp_path, _noting(seen, "Scanner._fork"))
    assert "monitor.store" in loaded  # it did store
    at_fork = set(json.loads(seen.read_text()))
    assert _heavy(at_fork, NOT_BEFORE_PRODUCERS) == []
    assert _heavy(loaded, NOT_FOR_A_SQUID_LOG) == []
    commands = {m for m in loaded if m.startswith("monitor.cli.")}
    assert commands == {"monitor.cli.base", "monitor.cli.collect"}  # the scan's module only


def test_producers_inherit_their_collector_module(tmp_path):
    """The main process loads the collector of what it forks producers for (a capture's:
    detection only reads its magic number), so that they do not each import it."""
    from tests.pcaps import write_raw

    capture = write_raw(tmp_path / "empty.pcap", [], 1)
    seen = tmp_path / "in_producer.json"
    args = ["--db", str(tmp_path / "a.db"), "scan", str(capture), "-j", "2", "-q"]
    _loaded(args, tmp_path, _noting(seen, "_producer"))
    assert "monitor.collectors.pcap" in json.loads(seen.read_text())


def test_command_table_names_what_each_module_registers():
    """Each command is looked up in the module the table names: importing that module
    registers it, and every registered command is in the table."""
    table = main.commands._modules
    registered = {name: command.callback.__module__ for name, command in main.commands.items()}
    assert registered == table
    # a command module the table leaves out would never be imported: its commands gone
    files = {f"monitor.cli.{p.stem}" for p in (ROOT / "monitor" / "cli").glob("*.py")}
    assert files - {"monitor.cli.__init__", "monitor.cli.base"} == set(table.values())


def test_format_registry_is_what_the_collector_modules_define():
    """The registry names each format, in detection order, with what its module's
    FORMAT_SPECS say, before loading the module: its module, whether it splits, its
    first-bytes test (the very function) and whether it votes on lines."""
    import importlib

    from monitor.collectors import _REGISTRY, FORMAT_NAMES, FORMATS, LINE_FORMATS

    modules = dict.fromkeys(f.module for f in _REGISTRY)
    # a collector module the registry leaves out would never be loaded: its formats gone
    defining = {f"monitor.collectors.{p.stem}" for p in (ROOT / "monitor" / "collectors").glob("*.py")
                if "\nFORMAT_SPECS" in p.read_text(encoding="utf-8")}  # fmt: skip
    assert defining == set(modules)
    specs = [(m, s) for m in modules for s in importlib.import_module(m).FORMAT_SPECS]
    assert [(f.module, f.name) for f in _REGISTRY] == [(m, s.name) for m, s in specs]
    for f, (_, spec) in zip(_REGISTRY, specs, strict=True):
        assert f.splittable == spec.splittable, f.name
        assert f.head is spec.sniff_head, f.name
        assert f.votes == (spec.sniff_line is not None), f.name
    assert list(FORMATS) == list(FORMAT_NAMES) == [s.name for _, s in specs]
    assert {s.name for _, s in specs if s.splittable} == LINE_FORMATS


def test_parse_of_a_squid_log_loads_no_other_collector(tmp_path):
    loaded = _loaded(["parse", "--json", str(SQUID_LOG)], tmp_path)
    assert "monitor.collectors.squid" in loaded
    assert _heavy(loaded, NOT_FOR_A_SQUID_LOG) == []


def test_help_still_lists_every_command_and_choice():
    text = run("--help").stdout
    for name, command in main.commands.items():
        assert name in text
        assert command.get_short_help_str(limit=45).split()[0] in text, name
    scan_help = " ".join(run("scan", "--help").stdout.split())
    assert "[auto|pcap|" in scan_help  # the --format choices, loaded when first needed
    assert run("parse", "--format", "nonsense", "x", ok=(2,)).exit_code == 2


def test_export_help_names_the_default_severity():
    from monitor.export import DEFAULT_SEVERITY, FORMATS

    text = " ".join(run("export", "--help").stdout.split())
    assert f"[default: {DEFAULT_SEVERITY}]" in text
    refused = run("export", "nonsense", ok=(2,)).stderr  # FORMAT's choices load when needed
    assert all(name in refused for name in FORMATS)


def test_exit_leaves_the_last_collections_nothing_to_walk(tmp_path):
    """Once a command has run and closed what it opened, what it made is frozen out of the
    cycle collector's view, so that the interpreter's last collections do not walk it."""
    db, out = tmp_path / "a.db", tmp_path / "frozen.txt"
    code = (
        "import atexit, gc, runpy, sys\n"
        f"atexit.register(lambda: open({str(out)!r}, 'w').write(str(gc.get_freeze_count())))\n"
        f"sys.argv = ['apiwatch', '--db', {str(db)!r}, 'scan', {str(SQUID_LOG)!r}, '-q']\n"
        "runpy.run_module('monitor', run_name='__main__')\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
    assert int(out.read_text()) > 10_000  # (the handler above ran after the freeze)
    assert not Path(f"{db}-wal").exists()  # the database was closed first (checkpointed)


def test_scan_start_up_sets_off_few_collections(tmp_path):
    """Start-up (imports, catalogue, rules, the scan's options) runs without the cycle
    collector and freezes what it made: a handful of collections before the producers
    start, not 40 walking the same long-lived objects again and again (issue 15)."""
    seen = tmp_path / "collections.json"
    counting = (
        "counted = []\n"
        "gc.callbacks.append(lambda phase, info: phase == 'start' and counted.append(1))\n"
    )
    setup = _noting(seen, "Scanner._fork", "[len(counted), gc.isenabled()]", counting)
    args = ["--db", str(tmp_path / "a.db"), "scan", str(SQUID_LOG), "-j", "2", "-q"]
    _loaded(args, tmp_path, setup)
    collections, enabled = json.loads(seen.read_text())
    assert collections <= 4 and not enabled  # (13 before; on again once they are forked)


def test_importing_the_cli_leaves_the_collector_on():
    """Importing the commands runs without the cycle collector and freezes what it made,
    then turns the collector on again."""
    code = "import gc, monitor.cli; print(gc.isenabled(), gc.get_freeze_count())"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60,
                          capture_output=True, text=True)  # fmt: skip
    enabled, frozen = done.stdout.split()
    assert enabled == "True"
    assert int(frozen) > 0
