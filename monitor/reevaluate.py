"""Re-evaluation: apply the current config, catalogue, geodata, overrides and rules to the
stored observations, so the database holds exactly what a fresh scan of the same logs with
the current settings would store — without the logs.

Each stored observation keeps what the log said (client, user, destination, status, bytes,
the egress address the log gave); stages 2–4 (identify, locate, evaluate) run again on it
through :meth:`monitor.pipeline.Pipeline.record`, with the command-line egress options its
scan was run with, once per group of stored rows they cannot tell apart. The store rebuilds detail and findings in one transaction and keeps the
lifecycle (statuses, events); see :meth:`monitor.store.Store.reevaluate`.

After it, ``App.after_evaluation`` hooks run (as after a scan): the place for steps that
correlate across findings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from monitor.collectors import CollectOptions
from monitor.egress import EgressOptions
from monitor.errors import ApiwatchError
from monitor.observation import Observation
from monitor.pipeline import Pipeline, place
from monitor.rows import COL, COLUMNS
from monitor.store import ReevaluationResult

#: (Observation field, position in a stored row) of what the log said
_POSITIONS = [(c.path[4:], COL[c.name]) for c in COLUMNS if c.path and c.path.startswith("obs.")]
_ID, _SCAN = COL["id"], COL["scan_id"]
_KEPT = frozenset((_ID, _SCAN))


class ReevaluateError(ApiwatchError, ValueError):
    """Stored data that cannot be re-evaluated under the current settings."""


@dataclass
class Reevaluation:
    start_day: str  # "" : everything stored
    result: ReevaluationResult
    seconds: float

    @property
    def per_second(self) -> float:
        return self.result.observations / self.seconds if self.seconds else 0.0


def observation_of(row: list[Any]) -> Observation:
    """The record a stored observation row was made from."""
    return Observation(**{name: row[pos] for name, pos in _POSITIONS})


def reevaluate(
    app: Any, since_day: str | None = None, actor: str = "apiwatch reevaluate"
) -> Reevaluation:
    """Re-evaluate what is stored from ``since_day`` (YYYY-MM-DD; None: everything kept)."""
    started = time.perf_counter()
    store = app.store
    start = store.evaluation_start(since_day)
    options = store.scan_options()
    pipelines: dict[EgressOptions, Pipeline] = {}
    by_scan: dict[int | None, Pipeline] = {}
    for sid in store.scans_with_observations(start):
        opts = options.get(sid, {})
        if opts.get("pseudonymize"):
            raise ReevaluateError(
                f"scan {sid} stored pseudonymised clients and users: they cannot be located or "
                "evaluated again (re-scan its logs into a new database instead)"
            )
        egress = EgressOptions(**opts.get("egress", {}))
        if egress not in pipelines:
            try:
                pipelines[egress] = app.pipeline(egress, CollectOptions())
            except ValueError as exc:
                raise ReevaluateError(
                    f"scan {sid} was run with options the config no longer allows: {exc}"
                ) from None
        by_scan[sid] = pipelines[egress]

    def evaluate(old: list[Any]) -> tuple[list[tuple[int, Any]], list[dict[str, Any]]] | None:
        """The record path for one group of stored rows it cannot tell apart (the store
        calls it once per context, client and URL, not per record): the changes to the row
        (position, value) and the incident rows, which hold for every row of the group."""
        pipeline = by_scan[old[_SCAN]]
        obs = observation_of(old)
        match = pipeline.identifier.identify(obs)
        if match is None:
            return None
        place(obs, match)
        row, incidents = pipeline.record(obs, match)
        return [(i, v) for i, v in enumerate(row) if i not in _KEPT and v != old[i]], incidents

    correlated = [r.id for r in app.rules.correlations]  # recomputed by app.correlate below
    result = store.reevaluate(start, evaluate, app.settings_digest(), actor, correlated=correlated)
    app.apply_exceptions()
    found = app.correlate(store.scans_with_observations(start)).new  # egress-hopping and the like
    result.new |= found.new_findings
    result.reopened |= found.reopened_findings
    for hook in app.after_evaluation:
        hook(app, store.scans_with_observations(start))
    return Reevaluation(start, result, time.perf_counter() - started)
