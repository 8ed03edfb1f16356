"""The daily job: scan every configured source, write the reports that are due, say how it went.

``apiwatch daily --config FILE`` from cron or a systemd timer calls :func:`run_daily`. It is
safe to run more than once a day: the store keeps each record once, so a second run adds
nothing, and the reports it rewrites have the same figures.

Exit code (:attr:`DailyResult.exit_code`): 0 success; 1 a source failed (unreadable file,
a pattern that matched nothing, bad options) or a report could not be written — the other
sources and reports are still done; 3 ``fail_on`` matched: findings at or above that severity
that a scan of today (UTC) raised, reopened or added detail to are still open (or reopened)
and not under an exception, so the second run of a day gives the same answer as the first,
until someone acknowledges or resolves them.
"""

from __future__ import annotations

import glob
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo

from monitor.collectors import CollectOptions
from monitor.config import ReportSpec, Source
from monitor.egress import EgressOptions
from monitor.errors import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK, ApiwatchError
from monitor.report import (
    ReportQuery,
    ReportSource,
    build_report,
    output_path,
    period_ended,
    period_window,
    render,
    write_atomic,
)

if TYPE_CHECKING:
    from monitor.pipeline import ScanSummary

#: Errors that fail one source (and the run's exit code) without stopping the others.
SOURCE_ERRORS = (ApiwatchError, ValueError)


class DailySource(ReportSource, Protocol):
    """What the daily job needs: a report's sources, and scans (:class:`monitor.app.App`)."""

    def scan(
        self,
        paths: list[str],
        egress: EgressOptions,
        collect: CollectOptions,
        on_read: Callable[[int], None] | None = None,
        jobs: int | None = None,
    ) -> tuple[int, ScanSummary]: ...

    def apply_exceptions(self, today: str | None = None) -> list[dict[str, Any]]: ...

    def raised_findings(
        self, scan_ids: list[int], fail_on: str, today: str | None = None, since: str | None = None
    ) -> list[dict[str, Any]]: ...


@dataclass
class SourceResult:
    key: str  # sources[0]
    pattern: str
    files: list[str] = field(default_factory=list)
    scan_id: int | None = None
    summary: dict[str, Any] | None = None
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None or bool(self.summary and self.summary.get("file_errors"))


@dataclass
class ReportResult:
    key: str
    period: str
    format: str
    path: str | None = None
    written: bool = False
    skipped: str | None = None  # why it was not due
    error: str | None = None


@dataclass
class DailyResult:
    today: str
    sources: list[SourceResult] = field(default_factory=list)
    reports: list[ReportResult] = field(default_factory=list)
    fail_on: str | None = None
    findings: list[dict[str, Any]] = field(default_factory=list)  # what fail_on matched
    alerts_sent: int = 0
    exit_code: int = EXIT_OK

    def as_dict(self) -> dict[str, Any]:
        return {
            "today": self.today,
            "exit_code": self.exit_code,
            "fail_on": self.fail_on,
            "findings": len(self.findings),
            "alerts_sent": self.alerts_sent,
            "sources": [
                {
                    "key": s.key,
                    "pattern": s.pattern,
                    "files": s.files,
                    "scan_id": s.scan_id,
                    "error": s.error,
                    **(
                        {
                            k: s.summary[k]
                            for k in (
                                "records",
                                "malformed",
                                "llm_observations",
                                "stored",
                                "duplicates",
                                "incidents_new",
                                "incidents_updated",
                                "file_errors",
                            )
                        }
                        if s.summary
                        else {}
                    ),
                }
                for s in self.sources
            ],
            "reports": [vars(r) for r in self.reports],
        }


def expand(source: Source) -> list[str]:
    """Files a source names now: the glob's matches, sorted (rotated logs oldest-name first)."""
    if glob.has_magic(source.path):
        return sorted(p for p in glob.glob(source.path) if Path(p).is_file())
    return [source.path] if Path(source.path).exists() or not source.optional else []


def run_daily(
    app: DailySource,
    today: date | None = None,
    fail_on: str | None = None,
    jobs: int | None = None,
    write_reports: bool = True,
    log: Callable[..., None] = lambda _msg, error=False: None,
    tz: str | None = None,
    now: datetime | None = None,
) -> DailyResult:
    """Scan ``app.config.sources``, write ``app.config.reports`` that are due, return the result.

    The date in each report's time zone (``tz``, else its one site's ``tz``, else UTC) at
    ``now`` decides which reports are due, or ``today`` when given: daily reports cover
    yesterday; weekly reports are written on Mondays for the week that ended, monthly ones
    on the 1st for the month that ended (``when = "always"``: every run, to date).
    """
    started = now or datetime.now(UTC)
    config = app.config
    fail_on = fail_on or config.fail_on
    result = DailyResult(today=(today or started.date()).isoformat(), fail_on=fail_on)
    if not config.sources:
        log("no [[sources]] in the configuration: nothing to scan")
    for source in config.sources:
        result.sources.append(_scan_source(app, source, jobs, log))
    if write_reports:
        for spec in config.reports:
            result.reports.append(_write_report(app, spec, today or started, log, tz))
    # exceptions that ran out open their findings again (with an event, an alert) even on a
    # day without traffic for them
    app.apply_exceptions(started.strftime("%Y-%m-%d"))
    delivery = app.deliver_alerts()
    result.alerts_sent = sum(delivery.sent.values())
    for name, error in delivery.failed.items():
        log(f"alerts: sink {name!r} failed, its events wait in the outbox: {error}", True)
    if fail_on:
        result.findings = _findings(app, fail_on, started)
    failed = any(s.failed for s in result.sources) or any(r.error for r in result.reports)
    if failed:
        result.exit_code = EXIT_ERROR
    elif result.findings:
        result.exit_code = EXIT_FINDINGS
    return result


def _scan_source(app: DailySource, source: Source, jobs: int | None, log) -> SourceResult:
    res = SourceResult(key=source.key, pattern=source.path)
    files = expand(source)
    res.files = files
    if not files:
        if source.optional:
            log(f"{source.key}: {source.path}: no file matches (optional)")
        else:
            res.error = f"{source.key}: {source.path}: no file matches"
            log(res.error, True)
        return res
    egress = EgressOptions(
        egress_ip=source.egress_ip, egress_country=source.egress_country, site=source.site
    )
    collect = CollectOptions(format=source.format, squid_logformat=source.squid_logformat)
    try:
        res.scan_id, summary = app.scan(
            files, egress, collect, None, jobs, cluster=app.config.cluster
        )
    except SOURCE_ERRORS as exc:
        res.error = f"{source.key}: {exc}"
        log(res.error, True)
        return res
    res.summary = summary.as_dict()
    for err in res.summary["file_errors"]:
        log(f"{source.key}: {err}", True)
    log(
        f"{source.key}: scan {res.scan_id}: {len(files)} file(s), {summary.records} records, "
        f"{summary.malformed} malformed, {summary.stored} new LLM observations "
        f"({summary.duplicates} already stored)"
    )
    return res


def _write_report(
    app: DailySource, spec: ReportSpec, when: date | datetime, log, tz: str | None = None
) -> ReportResult:
    """Write ``spec`` if due on ``when`` (a date, or the instant whose date in the report's
    time zone counts). The zone: ``tz`` (``--tz``), else the one site's, else UTC."""
    res = ReportResult(key=spec.key, period=spec.period, format=spec.format)
    zones = {app.config.sites[s].tz for s in spec.site if s in app.config.sites}
    tz = tz or (zones.pop() if len(zones) == 1 and None not in zones else "UTC")
    today = when.astimezone(ZoneInfo(tz)).date() if isinstance(when, datetime) else when
    window = period_window(spec.period, today - timedelta(days=1), tz=tz)
    if spec.when == "period-end" and not period_ended(window, today):
        res.skipped = f"{spec.period} period {window.label} is not over"
        return res
    path = output_path(spec.output, window, spec.format)
    res.path = str(path)
    try:
        report = build_report(
            app,
            ReportQuery(window, sites=spec.site, providers=spec.provider, top=spec.top,
                        now=when if isinstance(when, datetime) else None),
        )  # fmt: skip
        write_atomic(path, render(report, spec.format, spec.spreadsheet_safe))
    except (OSError, ValueError) as exc:
        res.error = f"{spec.key}: {path}: {exc}"
        log(res.error, True)
        return res
    res.written = True
    log(f"{spec.key}: wrote {path}")
    return res


def _findings(app: DailySource, fail_on: str, started: datetime) -> list[dict[str, Any]]:
    """Findings >= ``fail_on`` that scans started today (UTC) raised, reopened or added
    detail to, or whose exception ran out today, still open or reopened and not under an
    exception."""
    midnight = started.replace(hour=0, minute=0, second=0, microsecond=0)
    scans = app.store.scans_started(midnight, midnight + timedelta(days=2))
    since = midnight.strftime("%Y-%m-%dT%H:%M:%SZ")
    return app.raised_findings(scans, fail_on, started.strftime("%Y-%m-%d"), since)
