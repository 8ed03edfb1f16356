"""Report sections as plug-ins (issue 16): the report of today's code equals, byte for byte,
the report main's code made before sections existed; and a section is one module plus one
registration line.

The golden file ``tests/data/report_golden.json.gz`` was written by main at 4d6b92d (the
findings-first report, before sections) from the database this module builds: real scans of
``examples/logs`` and generated Squid logs (tests/test_report.py's ``built``), then findings
worked on (an exception in force, one that ran out, a reopened finding). What varies from run
to run (scan times, temporary paths, the version) is normalised in the report model before
it is rendered, the same way for both. A change that means to alter the report regenerates
the file with ``APIWATCH_REGEN_GOLDEN=1 python3 -m pytest tests/test_report_sections.py``
and says why in its commit.
"""

# ruff: noqa: S608 - SQL in this test dates lifecycle events into the report week

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import shutil
import sqlite3
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from monitor.app import App, Settings
from monitor.report import ReportQuery, build_report, custom_window, period_window, render
from tests import test_report as base
from tests.test_report import CONFIG, native, run

built = base.built  # the report tests' database, built by real scans (a pytest fixture)

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "report_golden.json.gz"
NOW = datetime(2026, 12, 3, 8, 30, tzinfo=UTC)  # when the reports are "made"
FORMATS = ("html", "md", "csv", "json")

#: (name, window, sites, providers): the reports compared with the golden file
CASES = (
    ("weekly", lambda: period_window("weekly", date(2026, 11, 27)), (), ()),
    ("daily", lambda: period_window("daily", date(2026, 11, 25)), (), ()),
    ("weekly-shanghai", lambda: period_window("weekly", date(2026, 11, 27)), ("shanghai",), ()),
    ("weekly-openai", lambda: period_window("weekly", date(2026, 11, 27)), (), ("openai",)),
    ("custom", lambda: custom_window("2026-11-20T06:00:00Z", "2026-11-28T18:00:00Z"), (), ()),
    ("weekly-tz", lambda: period_window("weekly", date(2026, 11, 27), tz="Asia/Shanghai"), (), ()),
)


@pytest.fixture(scope="module")
def golden_db(built, tmp_path_factory):
    """``built`` plus findings worked on: one excepted until 2099, one whose exception ran
    out in the report week, one resolved and reopened by new traffic in that week."""
    db0, tmp0 = built
    tmp = tmp_path_factory.mktemp("golden")
    db = tmp / "apiwatch.db"
    shutil.copy(db0, db)
    found = [json.loads(line) for line in run("--db", db, "findings", "--json").stdout.splitlines()]
    found.sort(key=lambda f: (-f["count"], f["id"]))
    excepted, lapsed, reopened = found[0], found[1], found[2]
    run("--db", db, "ack", excepted["id"], "--until", "2099-12-31", "--note", "SEC-7 <b>pilot</b>")
    run("--db", db, "ack", lapsed["id"], "--until", "2099-12-30", "--note", "trial | ends")
    run("--db", db, "resolve", reopened["id"], "--note", "moved")
    con = sqlite3.connect(db)
    with con:  # the lapsed exception ran out: as `daily` records it, on a day it has passed
        con.execute(
            "UPDATE findings SET exception_until = '2026-11-26' WHERE id = ?", [lapsed["id"]]
        )
    con.close()
    app = App(Settings(db=db, config=CONFIG))
    app.apply_exceptions("2026-11-27")
    detail = run("--db", db, "incidents", "--json", "--finding", reopened["id"]).stdout
    first = json.loads(detail.splitlines()[0])
    host = first["dest_host"]
    log = tmp / "more.log"
    ts = datetime(2026, 11, 28, 11, 0, 7, 123000, tzinfo=UTC).timestamp()
    log.write_text(native(ts, first["client_ip"], "CONNECT", f"{host}:443") + "\n")
    run("--config", CONFIG, "--db", db, "scan", log, "-q", "--jobs", "1", ok=(0, 3))
    con = sqlite3.connect(db)
    with con:  # lifecycle events happen now, not in the report week: date them into it
        con.execute("UPDATE finding_events SET at = '2026-11-27T09:00:00.000Z'"
                    " WHERE action IN ('exception-expired', 'reopened')")  # fmt: skip
    con.close()
    return db, (tmp0, tmp)


def normalise(report: Any, tmps: tuple[Path, ...]) -> Any:
    """What differs between two builds of the same database: scan times, temporary paths,
    the version, database path and the overrides file's date (its mtime), set to fixed
    values in the model (before rendering)."""
    report.meta["database"] = "/tmp/golden/apiwatch.db"
    report.meta["apiwatch_version"] = "0.0.0"
    for key in ("geodata", "geodata_current"):  # a file's date is its mtime: the checkout's
        for source in report.methods.get(key) or ():
            if source.get("origin") == "override":
                source["build_date"] = "2026-12-04"
    for scan in report.methods["scans"]:
        scan["started"] = f"2026-12-01T00:00:{scan['id']:02d}Z"
        scan["finished"] = f"2026-12-01T00:01:{scan['id']:02d}Z"

    def fix(value: Any) -> Any:
        if isinstance(value, str):
            for old in (*map(str, tmps), str(ROOT)):
                new = "/repo" if old == str(ROOT) else "/tmp/golden"
                value = value.replace(old, new)
            return value
        if isinstance(value, list):
            return [fix(v) for v in value]
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        return value

    for key, value in fix(report.methods).items():
        report.methods[key] = value
    # listed by path: sorted again, as the paths are now (a checkout under /tmp sorts first)
    report.methods["sources"].sort(key=lambda s: (s["source"], s["format"]))
    report.methods["problems_by_source"].sort(key=lambda p: p["source"])
    return report


def render_all(db: Path, tmps: tuple[Path, ...]) -> dict[str, str]:
    app = App(Settings(db=db, config=CONFIG)).for_reading()
    out = {}
    for name, window, sites, providers in CASES:
        q = ReportQuery(window(), sites=sites, providers=providers, now=NOW)
        report = normalise(build_report(app, q), tmps)
        for fmt in FORMATS:
            out[f"{name}.{fmt}"] = render(report, fmt)
    return out


def csv_set(text: str) -> list[tuple[str, ...]]:
    return sorted(tuple(row) for row in csv.reader(io.StringIO(text)))


#: Reports whose period is not whole UTC days: their findings now count the observations of
#: the period (whole local days, issue 11) where main counted the per-UTC-day detail rows
#: overlapping it (tests/test_report_local_days.py checks those figures).
LOCAL_DAYS = {"custom", "weekly-tz"}


def without_detail(text: str, fmt: str) -> str:
    """``text`` without what the findings list gained since main: each finding's detail rows
    (JSON ``detail``, the HTML table under its "detail" disclosure)."""
    if fmt == "json":
        doc = json.loads(text)
        for item in doc["findings"]["items"]:
            assert len(item.pop("detail")) >= 1
        return json.dumps(doc)
    if fmt == "html":
        text, n = re.subn(r'<table class="detail">.*?</table>', "", text)
        assert n == text.count("<summary>detail</summary>")
    return text


def without_findings(text: str, fmt: str) -> str:
    """``text`` without the findings section's figures (the list and the summary)."""
    if fmt == "json":
        doc = json.loads(text)
        fd = doc["findings"]
        doc["findings"] = {"totals": fd["totals"], "exceptions": fd["exceptions"]}
        return json.dumps(doc)
    if fmt == "csv":
        return "".join(line + "\n" for line in text.splitlines() if ",findings,F-" not in line)
    start, end = (
        ("## Findings", "## Summary") if fmt == "md" else ('<section id="findings">', "</section>")
    )
    a = text.index(start)
    return text[:a] + text[text.index(end, a) :]


#: The HTML's intended changes since main (the findings list fits at print width; each
#: finding's detail rows, removed by without_detail, have their style), as
#: (pattern in main's output, replacement) applied to the golden file before comparing.
HTML_CHANGES = (
    (
        r"(td code, td.rule \{ white-space: nowrap; overflow-wrap: normal; \}\n)",
        r"\1td.users code { white-space: normal; overflow-wrap: anywhere; }"
        r"  /* user names as logged: any length */\n"
        r"table.detail { width: auto; margin: 4px 0; font-size: 12px; }"
        r"  /* a finding's detail rows */\n"
        r"table.detail th, table.detail td { padding: 1px 4px; white-space: normal; }\n",
    ),
    (r"(  table \{ font-size: 8px; \}  /\*.*\*/\n)", r"\1  td code { font-size: inherit; }\n"),
    (r'(<span class="sev sev-\w+">\w+</span></td>\n    )<td>', r'\1<td class="rule">'),
    (r"\n    <td>(?=(<code>|–).*<details><summary>detail)", '\n    <td class="users">'),
)


#: CSV sections main did not write: the findings section's rows (a section renders all formats)
NEW_CSV = {"findings", "exceptions_in_force", "exceptions_expired"}


def test_reports_equal_main_before_sections(golden_db):
    """HTML and Markdown byte-identical to main's before sections, JSON equal, CSV the same
    rows (order aside) plus the findings section's."""
    db, tmps = golden_db
    got = render_all(db, tmps)
    if os.environ.get("APIWATCH_REGEN_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_bytes(
            gzip.compress(json.dumps(got, indent=0, sort_keys=True).encode(), mtime=0)
        )
    expected = json.loads(gzip.decompress(GOLDEN.read_bytes()))
    assert sorted(got) == sorted(expected)
    for key, text in got.items():
        name, fmt = key.rsplit(".", 1)
        want = expected[key]
        if fmt == "html":
            for pattern, replacement in HTML_CHANGES:
                want, n = re.subn(pattern, replacement, want)
                assert n, pattern
        text = without_detail(text, fmt)
        if name in LOCAL_DAYS:  # the findings section differs by design: all else is equal
            text, want = without_findings(text, fmt), without_findings(want, fmt)
        if fmt == "json":
            assert json.loads(text) == json.loads(want), key
        elif fmt == "csv":
            rows = csv_set(text)
            assert [r for r in rows if r[2] not in NEW_CSV] == csv_set(want), key
            assert "findings" in {r[2] for r in rows}, key
        else:
            assert text == want, key
    assert {r[2] for r in csv_set(got["weekly.csv"])} >= NEW_CSV
    weekly = json.loads(got["weekly.json"])["findings"]
    first = weekly["items"][0]  # its detail rows: what `incidents --finding` lists for the week
    listed = run("--db", db, "incidents", "--json", "--finding", first["id"], "--since",
                 base.SINCE, "--until", base.UNTIL).stdout.splitlines()  # fmt: skip
    assert [d["id"] for d in first["detail"]] == [json.loads(i)["id"] for i in listed][:10]
    assert weekly["exceptions"]["in_force"] and weekly["exceptions"]["expired"]
    assert weekly["totals"]["reopened"] == 1 and weekly["totals"]["excepted"] >= 1


EXTRA_SECTION = """
from monitor.report.section import Section


class Kinds(Section):
    \"\"\"Requests by destination kind (provider, relay, ...).\"\"\"

    id = "kinds"
    nav = "Kinds"
    template = ('<section id="kinds"><h2>By kind</h2><table><tbody>'
                '{% for k, n in r.kinds.items() %}<tr><td>{{ k|t }}</td>'
                '<td class="n">{{ n|num }}</td></tr>{% endfor %}</tbody></table></section>')

    def compute(self, ctx):
        cur = ctx.current
        return {"kinds": {str(k): int(n) for k, n in cur.groupby("kind").requests.sum().items()}}

    def markdown(self, report):
        return ["\\n## By kind\\n", *(f"- {k}: {n}\\n" for k, n in report.kinds.items())]

    def csv_rows(self, report):
        for k, n in report.kinds.items():
            yield "kinds", k, None, "requests", n


SECTION = Kinds()
"""


def test_a_section_is_one_module_and_one_registration_line(golden_db, tmp_path, monkeypatch):
    """A section written as one module (here outside the package) and registered by one
    line in MODULES appears in every format, after the one before it, with its own
    figures; the other sections are unchanged."""
    from monitor.report import sections

    db, _ = golden_db
    (tmp_path / "apiwatch_extra").mkdir()
    (tmp_path / "apiwatch_extra" / "kinds.py").write_text(EXTRA_SECTION)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = {fmt: run("--config", CONFIG, "--db", db, "report", "--period", "weekly", "--date",
                       "2026-11-27", "--format", fmt).stdout for fmt in FORMATS}  # fmt: skip
    monkeypatch.setattr(sections, "MODULES", (*sections.MODULES, "apiwatch_extra.kinds"))
    got = {fmt: run("--config", CONFIG, "--db", db, "report", "--period", "weekly", "--date",
                    "2026-11-27", "--format", fmt).stdout for fmt in FORMATS}  # fmt: skip
    doc, old = json.loads(got["json"]), json.loads(before["json"])
    kinds = doc.pop("kinds")
    assert sum(kinds.values()) == old["totals"][0]["current"] > 0
    assert kinds["relay"] == old["relays"]["requests"] > 0
    doc["meta"].pop("generated"), old["meta"].pop("generated")
    assert doc == old
    md = got["md"]
    assert md.index("## Methods") < md.index("## By kind")
    assert f"- relay: {kinds['relay']}\n" in md[md.index("## By kind") :]
    html = got["html"]
    assert '<a href="#methods">Methods</a><a href="#kinds">Kinds</a>' in html
    assert html.index('id="methods"') < html.index('<section id="kinds"><h2>By kind</h2>')
    rows = [r for r in csv.reader(io.StringIO(got["csv"])) if r[2] == "kinds"]
    assert sorted((r[3], int(r[6])) for r in rows) == sorted(kinds.items())
