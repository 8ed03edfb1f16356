"""The HTML report in real headless Chromium (Debian ``chromium``, installed by .ci/run).

Chromium is driven over the DevTools protocol on ``--remote-debugging-pipe`` (fd 3 in,
fd 4 out, NUL-separated JSON) with the standard library only. The test loads the report
from a file:// URL with the network cut off, and checks that it renders without console
errors or CSP violations, that the charts are drawn, that the tables sort, and that the
hostile strings from the logs stayed text (``document.title`` would change if any ran).

Skipped with the reason when chromium is missing, except under ``CI=true`` where it fails.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests import test_report as base
from tests.test_report import CONFIG, LONG_HOST, WEEK, run

built = base.built  # the module's database, built by real scans (a pytest fixture)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TIMEOUT = 60.0
BASH = shutil.which("bash") or "/bin/bash"  # dash cannot redirect fds above 9

pytestmark = pytest.mark.realtools


@pytest.fixture(scope="module")
def chromium():
    if CHROMIUM is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is not installed (CI=true): .ci/run installs Debian's chromium")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return CHROMIUM


class Browser:
    """A headless Chromium with a DevTools session over a pipe. Everything bounded in time."""

    def __init__(self, binary: str, profile: Path):
        cmd_r, self._cmd_w = os.pipe()  # we write commands -> chromium reads fd 3
        self._res_r, res_w = os.pipe()  # chromium writes fd 4 -> we read
        args = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--proxy-server=127.0.0.1:9",  # nothing may be fetched: any request would fail
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "--window-size=1280,2000",
            "about:blank",
        ]
        self.log = open(profile.parent / "chromium.log", "wb")  # noqa: SIM115 - closed in close()
        # the child must see the pipes as fds 3 and 4
        self.proc = subprocess.Popen(
            [BASH, "-c", f'exec "$@" 3<&{cmd_r} 4>&{res_w}', "bash", *args],
            pass_fds=(cmd_r, res_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.log,  # a file, never a pipe nobody reads (chromium logs a lot)
        )
        os.close(cmd_r)
        os.close(res_w)
        self._buf = b""
        self._next = 0
        self.events: list[dict] = []
        self.deadline = time.monotonic() + TIMEOUT

    def _read_message(self) -> dict:
        while b"\0" not in self._buf:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self._res_r], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._res_r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next += 1
        msg = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read_message()
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        for ev in self.events:
            if ev.get("method") == method:
                return ev
        while True:
            ev = self._read_message()
            self.events.append(ev)
            if ev.get("method") == method:
                return ev

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._cmd_w, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for fd in (self._cmd_w, self._res_r):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.log.close()


def open_page(browser: Browser, url: str) -> str:
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
        "sessionId"
    ]
    for domain in ("Runtime", "Log", "Page"):
        browser.send(f"{domain}.enable", session=session)
    browser.send("Page.navigate", {"url": url}, session=session)
    browser.wait_for("Page.loadEventFired")
    return session


def evaluate(browser: Browser, session: str, expression: str):
    result = browser.send(
        "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session
    )
    if "exceptionDetails" in result:
        raise AssertionError(f"{expression}: {result['exceptionDetails']}")
    return result["result"].get("value")


def problems(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions and browser log errors (CSP violations included)."""
    out = []
    for ev in events:
        method, params = ev.get("method"), ev.get("params", {})
        if method == "Runtime.exceptionThrown":
            out.append(json.dumps(params.get("exceptionDetails", {}))[:300])
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            out.append(json.dumps(params.get("args", []))[:300])
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            out.append(params["entry"].get("text", "")[:300])
    return out


def weekly_in_chromium(chromium, db, tmp_path) -> tuple[Browser, str]:
    """The weekly report of the module's database, open in a fresh Chromium."""
    page = tmp_path / "weekly.html"
    run("--db", db, "--config", CONFIG, "report", "--period", "weekly", "--date", WEEK, "-o", page)
    browser = Browser(chromium, tmp_path / "profile")
    try:
        return browser, open_page(browser, page.as_uri())
    except BaseException:
        browser.close()
        raise


def test_html_report_in_chromium(chromium, built, tmp_path):
    browser, session = weekly_in_chromium(chromium, built[0], tmp_path)
    try:
        title = evaluate(browser, session, "document.title")
        assert title.startswith("apiwatch weekly report"), title  # no injected script ran
        assert evaluate(browser, session, "document.scripts.length") == 1
        assert evaluate(browser, session, "document.querySelectorAll('img').length") == 0
        charts = evaluate(
            browser,
            session,
            "Array.from(document.querySelectorAll('svg.chart')).map(s => ["
            "s.querySelectorAll('rect.bar').length, s.getBoundingClientRect().width,"
            " s.getBoundingClientRect().height])",
        )
        assert len(charts) == 3  # traffic by provider over time, incidents by severity, countries
        assert all(bars > 0 and w > 100 and h > 30 for bars, w, h in charts), charts
        # the hostile strings are on the page as text
        body = evaluate(browser, session, "document.body.innerText")
        assert "<script>document.title='pwned'" in body
        assert "\\u202e" in body and "\u202e" not in body
        assert LONG_HOST not in body and "aaaaaaaa…" in body
        cut = evaluate(
            browser,
            session,
            "Array.from(document.querySelectorAll('span.cut')).map(s => s.title)",
        )
        assert any(LONG_HOST in t for t in cut)
        # sorting: click the "requests" header of the by-provider table twice
        order = evaluate(
            browser,
            session,
            """(() => {
                 const t = document.querySelectorAll('#traffic table.sortable')[0];
                 const th = t.tHead.rows[0].cells[2];
                 const col = () => Array.from(t.tBodies[0].rows).map(r => +r.cells[2].dataset.v);
                 th.click(); const asc = col(); th.click(); const desc = col();
                 return [asc, desc, th.getAttribute('aria-sort')];
               })()""",
        )
        asc, desc, aria = order
        assert asc == sorted(asc) and desc == sorted(desc, reverse=True) and aria == "descending"
        assert len(asc) > 1
        shot = browser.send("Page.captureScreenshot", {"format": "png"}, session=session)
        png = base64.b64decode(shot["data"])
        assert png.startswith(b"\x89PNG") and len(png) > 20_000
        (tmp_path / "weekly.png").write_bytes(png)
        errors = problems(browser.events)
        assert not errors, errors
    finally:
        browser.close()


def test_print_layout_has_no_errors(chromium, built, tmp_path):
    """Printable: Chromium prints it to PDF (what "Save as PDF" does) without errors."""
    db, _ = built
    page = tmp_path / "daily.html"
    run("--db", db, "report", "--period", "daily", "--date", "2026-11-25", "-o", page)
    browser = Browser(chromium, tmp_path / "profile")
    try:
        session = open_page(browser, page.as_uri())
        pdf = browser.send("Page.printToPDF", {"printBackground": True}, session=session)
        data = base64.b64decode(pdf["data"])
        assert data.startswith(b"%PDF") and len(data) > 10_000
        assert not problems(browser.events)
    finally:
        browser.close()


OPEN_DETAILS = """(() => { const all = document.querySelectorAll('#findings details');
  all.forEach(d => { d.open = true; }); return all.length; })()"""

LAYOUT = """(() => {
  const vw = document.documentElement.clientWidth;
  const overflowing = Array.from(document.querySelectorAll('table'))
    .filter(t => t.getClientRects().length)  // laid out: not inside a closed <details>
    .filter(t => t.scrollWidth > t.parentElement.clientWidth + 1
                 || t.getBoundingClientRect().right > vw + 1)
    .map(t => (t.closest('section') || {}).id + ': ' + t.tHead.innerText.replace(/\\s+/g, ' '));
  const lines = el => { const r = document.createRange(); r.selectNodeContents(el);
                        return new Set(Array.from(r.getClientRects()).map(c => Math.round(c.top))).size; };
  const wrappedRules = Array.from(document.querySelectorAll('td.rule'))
    .filter(td => lines(td) > 1).map(td => td.innerText);
  const sev = document.querySelector('#incidents svg.chart.h');
  const fl = document.querySelector('#findings-list');
  return {vw, page: document.documentElement.scrollWidth, overflowing, wrappedRules,
          findingsFit: fl.scrollWidth <= fl.parentElement.clientWidth + 1
                       && fl.getBoundingClientRect().right <= vw + 1,
          findingRules: document.querySelectorAll('#findings-list td.rule').length,
          rules: document.querySelectorAll('td.rule').length,
          sevLabels: Array.from(sev.querySelectorAll('text.label')).map(t => t.textContent),
          sevZeros: Array.from(sev.querySelectorAll('text.value')).filter(t => t.textContent === '0').length,
          lastHeader: Array.from(document.querySelectorAll('#incidents table.sortable thead'))
            .map(h => { const c = h.rows[0].cells; const r = c[c.length - 1].getBoundingClientRect();
                        return [c[c.length - 1].innerText.trim(), r.right <= vw]; })};
})()"""


@pytest.mark.parametrize("width, media", [(1400, "screen"), (718, "print")])  # 718: A4 at 96 dpi
def test_layout_fits_at_1400_px_and_print_width(chromium, built, tmp_path, width, media):
    """Every table fits, the findings list (12 columns, hostile user names) included, at
    print width too, and on screen with each finding's detail open; rule ids stay on one
    line; severities without incidents draw no row of zeros."""
    db, _ = built
    browser, session = weekly_in_chromium(chromium, db, tmp_path)
    try:
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": width, "height": 1200, "deviceScaleFactor": 1, "mobile": False},
                     session=session)  # fmt: skip
        browser.send("Emulation.setEmulatedMedia", {"media": media}, session=session)
        if media == "screen":  # each finding's detail opened: its table fits too
            opened = evaluate(browser, session, OPEN_DETAILS)
            assert opened > 5, opened
        got = evaluate(browser, session, LAYOUT)
        assert got["page"] <= got["vw"], got
        assert got["overflowing"] == [], got["overflowing"]
        assert got["findingsFit"] and got["findingRules"] > 5, got
        assert got["rules"] > 5 and got["wrappedRules"] == [], got["wrappedRules"]
        assert got["lastHeader"] and all(ok for name, ok in got["lastHeader"])
        assert "status" in {name for name, _ in got["lastHeader"]}
        by_severity = json.loads(
            run(
                "--db", db, "report", "--period", "weekly", "--date", WEEK, "--format", "json"
            ).stdout
        )["incidents"]["by_severity"]
        busy = [s["severity"] for s in by_severity
                if s["new"] or s["open"] or s["acknowledged"] or s["resolved"]]  # fmt: skip
        assert len(busy) < len(by_severity)  # some severities are empty this week
        assert got["sevLabels"] == busy and got["sevZeros"] == 0
        assert not problems(browser.events)
    finally:
        browser.close()
