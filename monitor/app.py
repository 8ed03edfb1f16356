"""Wiring: builds the catalogue, geodata, rules, store and pipeline from settings.

The CLI is a thin layer over this module, and so can any other program be.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING

from monitor.resources import geodata_dir, rules_dir

if TYPE_CHECKING:  # the parts load when first used: `parse` never imports the store
    from monitor.alerts import Delivery, Dispatcher
    from monitor.catalog import Catalog
    from monitor.collectors import CollectOptions
    from monitor.config import Config
    from monitor.correlate import CorrelationResult
    from monitor.egress import EgressOptions
    from monitor.geo import GeoResolver, GeoSource
    from monitor.pipeline import Pipeline, ScanSummary
    from monitor.policy import Pack, RuleSet
    from monitor.privacy import Pseudonymizer
    from monitor.store import Store

STALE_GEODATA_DAYS = 183


def _file_digest(path: str) -> str | None:
    """Content digest of an overrides file (None: not readable)."""
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()[:16]
    except OSError:
        return None


def check_residency_config(config: Config, catalog: Catalog) -> None:
    """Residency settings name zones and Azure regions that ``rules/residency.yaml`` knows."""
    from monitor.config import ConfigError

    where = str(config.path) if config.path else "config"
    tables = catalog.residency
    requirements = [("organisation.data_residency", config.data_residency)]
    requirements += [
        (f"sites.{name}.data_residency", site.data_residency or ())
        for name, site in config.sites.items()
    ]
    for key, values in requirements:
        for value in values:
            if len(value) > 2 and value not in tables.zones:
                known = ", ".join(sorted(tables.zones)) or "none"
                raise ConfigError(f"{where}: {key}: unknown zone {value!r} (zones: {known})")
    for name, region in config.azure_resources.items():
        if f"azure:{region}" not in tables.region_geo:
            raise ConfigError(
                f"{where}: residency.azure_resources.{name}: unknown Azure region {region!r} "
                "(see rules/residency.yaml regions.azure)"
            )


def default_db_path() -> Path:
    """``$XDG_DATA_HOME/apiwatch/apiwatch.db`` (``~/.local/share/apiwatch/apiwatch.db``)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "apiwatch" / "apiwatch.db"


@dataclass(frozen=True)
class Settings:
    db: Path | None = None  # None: config, then default_db_path()
    config: Path | None = None  # None: $APIWATCH_CONFIG or ~/.config/apiwatch/config.toml
    geoip: tuple[Path, ...] = ()
    geo_overrides: tuple[Path, ...] = ()
    rules: tuple[Path, ...] = ()  # empty: the bundled rules/policies
    #: a command's own process: SQLite's memory statistics off before its first database
    #: is opened, where safe (see :func:`monitor.sqlbind.quiet_memory`); a library's caller
    #: keeps SQLite as it set it
    quiet_sqlite: bool = False


@dataclass(frozen=True)
class Recipe:
    """What a Dask worker needs to build the client's pipeline: the loaded config and
    catalogue themselves, and the geodata and rule files (absolute paths) the client uses."""

    config: Config
    catalog: Catalog
    geo_databases: tuple[str, ...]
    geo_overrides: tuple[str, ...]
    rules: tuple[Path, ...]
    packs_on: tuple[str, ...]  # the bundled packs in force, by name
    egress: EgressOptions
    collect: CollectOptions
    pseudonymize_key: str | None = field(default=None, repr=False)


def build_pipeline(recipe: Recipe) -> Pipeline:
    """The pipeline a :class:`Recipe` describes, on whatever machine runs this."""
    from monitor.geo import GeoResolver
    from monitor.pipeline import Pipeline
    from monitor.policy import RuleSet, load_packs, with_packs
    from monitor.privacy import Pseudonymizer

    geo = GeoResolver(
        [Path(p) for p in recipe.geo_databases],
        [Path(p) for p in recipe.geo_overrides],
        search_dirs=(),
    )
    return Pipeline(
        recipe.catalog,
        geo,
        with_packs(RuleSet.load(recipe.rules), load_packs(rules_dir() / "packs"), recipe.packs_on),
        recipe.config,
        recipe.egress,
        recipe.collect,
        Pseudonymizer(recipe.pseudonymize_key) if recipe.pseudonymize_key else None,
    )


class App:
    """Lazily opens each part, so `apiwatch providers` never touches the database."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.read_only = False  # queries and reports: open the database read-only
        self._checked = False  # the database passed SQLite's quick check in this process
        #: called with (app, scan ids) after each scan and re-evaluation (correlation steps)
        self.after_evaluation: list[Callable[[App, list[int]], None]] = []

    def for_reading(self) -> App:
        """Open the database read-only when first used (an auditor's copy, a read-only
        mount, a directory the user cannot write): for commands that only query it."""
        self.read_only = True
        return self

    @cached_property
    def config(self) -> Config:
        from monitor.config import default_config_path, load_config

        return load_config(self.settings.config or default_config_path())

    @cached_property
    def catalog(self) -> Catalog:
        """The bundled catalogue, plus the organisation's overlays (``[catalog] extra``);
        checked against the configuration's residency and entity settings."""
        from monitor.catalog import Catalog, bundled_catalog

        extra = self.config.catalog_extra
        catalog = Catalog.load(extra=extra) if extra else bundled_catalog()
        check_residency_config(self.config, catalog)
        return catalog

    @cached_property
    def packs(self) -> dict[str, Pack]:
        from monitor.policy import load_packs

        return load_packs(rules_dir() / "packs")

    @property
    def packs_on(self) -> tuple[str, ...]:
        """``[organisation] packs``, else the packs that are on by default."""
        from monitor.policy import default_packs

        return self.config.packs if self.config.packs is not None else default_packs(self.packs)

    @cached_property
    def geo(self) -> GeoResolver:
        from monitor.geo import GeoResolver

        cfg = self.config
        return GeoResolver.from_env(
            databases=self.settings.geoip,
            overrides=self.settings.geo_overrides,
            config={
                "databases": [str(p) for p in cfg.geo_databases],
                "overrides": [str(p) for p in cfg.geo_overrides],
                "search_system": cfg.geo_search_system,
            },
        )

    @property
    def rule_paths(self) -> tuple[Path, ...]:
        return self.settings.rules or (rules_dir() / "policies",)

    @cached_property
    def rules(self) -> RuleSet:
        from monitor.policy import RuleSet, with_packs

        return with_packs(RuleSet.load(self.rule_paths), self.packs, self.packs_on)

    @property
    def db_path(self) -> Path:
        return self.settings.db or (Path(self.config.db) if self.config.db else default_db_path())

    @cached_property
    def store(self) -> Store:
        from monitor.store import Store

        if self.settings.quiet_sqlite:
            from monitor.sqlbind import quiet_memory

            quiet_memory()
        readonly = self.read_only and self.db_path.exists()  # none yet: an empty one
        store = Store(self.db_path, readonly=readonly)
        if readonly:  # queries: nothing is stored, no outbox to fill
            return store
        store.emit_events = bool(self.config.alerts)  # the outbox fills only when someone reads it
        for spec in self.config.alerts:  # before anything is stored: its events are theirs
            store.register_sink(spec.name, spec.kind)
        return store

    @cached_property
    def dispatcher(self) -> Dispatcher:
        from monitor.alerts import Dispatcher

        return Dispatcher(self.store, self.config.alerts)

    def deliver_alerts(self) -> Delivery:
        """Send what the outbox holds to the configured sinks (one attempt each)."""
        from monitor.alerts import Delivery

        if not self.config.alerts:
            return Delivery()
        return self.dispatcher.deliver()

    def pipeline(
        self, egress: EgressOptions, collect: CollectOptions, pseudonymize: bool = False
    ) -> Pipeline:
        from monitor.pipeline import Pipeline

        return Pipeline(
            self.catalog,
            self.geo,
            self.rules,
            self.config,
            egress,
            collect,
            self.pseudonymizer(pseudonymize),
        )

    def pseudonymizer(self, wanted: bool = False) -> Pseudonymizer | None:
        """On with ``--pseudonymize`` or config ``[privacy] pseudonymize``; the key comes from
        the config, else ``$APIWATCH_PSEUDONYMIZE_KEY``."""
        from monitor.privacy import Pseudonymizer

        key = self._pseudonymize_key(wanted)
        return None if key is None else Pseudonymizer(key)

    def _pseudonymize_key(self, wanted: bool) -> str | None:
        if not (wanted or self.config.pseudonymize):
            return None
        key = self.config.privacy_key or os.environ.get("APIWATCH_PSEUDONYMIZE_KEY")
        if not key:
            from monitor.privacy import PrivacyError

            raise PrivacyError(
                "pseudonymisation needs a key: [privacy] key or key_file in the config, "
                "or APIWATCH_PSEUDONYMIZE_KEY"
            )
        return key

    def recipe(self, egress: EgressOptions, collect: CollectOptions, pseudonymize: bool) -> Recipe:
        """This app's pipeline, described for another machine (``scan --cluster``)."""
        sources = self.geo.sources()
        bundled = geodata_dir() / "overrides.csv"
        return Recipe(
            config=self.config,
            catalog=self.catalog,
            geo_databases=tuple(s.path for s in sources if s.origin in ("user", "system")),
            geo_overrides=tuple(  # the bundled file is the worker's own
                s.path for s in sources if s.origin == "override" and Path(s.path) != bundled
            ),
            rules=tuple(Path(p).resolve() for p in self.rule_paths),
            packs_on=tuple(self.packs_on),
            egress=egress,
            collect=collect,
            pseudonymize_key=self._pseudonymize_key(pseudonymize),
        )

    def scan(
        self,
        paths: list[str],
        egress: EgressOptions,
        collect: CollectOptions,
        on_read=None,
        jobs: int | None = None,
        full: bool = False,
        pseudonymize: bool = False,
        fail_on: str | None = None,
        cluster: str | None = None,
    ) -> tuple[int, ScanSummary]:
        """Run and record one scan (with the exit code ``fail_on`` gives it, see
        :meth:`ScanSummary.exit_code`); returns its id and summary. With ``cluster`` (a Dask
        scheduler address) the inputs are parsed by the cluster's workers
        (:mod:`monitor.cluster`) and stored here."""
        with uncollected():  # until the producers start
            from monitor.egress import contradictions
            from monitor.privacy import privacy_mode
            from monitor.scanner import Scanner

            pipeline = self.pipeline(egress, collect, pseudonymize)  # validates before writing
            options = {
                "egress": asdict(egress),
                "collect": asdict(collect),
                "full": full,
                "pseudonymize": pipeline.pseudonymizer is not None,
                "rules": [r.id for r in self.rules.rules],
            }
            producers = None
            scanner = Scanner(pipeline, None, jobs, full)
            if not cluster and paths:  # its producers read while the database is opened and checked
                scanner.start(paths[0])
        import sqlite3  # the store's part loads only now: producers do not need it

        from monitor.store import StoreError, database_problem

        try:
            if not self._checked:  # never add to a database SQLite finds damaged
                if damage := self.store.damage():
                    raise StoreError(
                        f"{self.db_path}: the database is damaged ({damage}); nothing was "
                        f"scanned; run `apiwatch --db {self.db_path} db check`"
                    )
                self._checked = True
            mode = privacy_mode(pipeline.pseudonymizer)
            if (recorded := self.store.claim_privacy_mode(mode)) != mode:
                raise StoreError(f"{self.db_path}: {_privacy_mismatch(recorded, mode)}")
            if cluster:
                from monitor.cluster import ClusterProducers  # Dask loads only for a cluster scan

                recipe = self.recipe(egress, collect, pseudonymize)
                producers = ClusterProducers(
                    cluster, partial(build_pipeline, recipe), pipeline.fingerprint()
                )
                options["cluster"] = cluster
                jobs = jobs or producers.threads  # split big inputs into that many parts at least
                paths = [p if p == "-" or "://" in p else os.path.abspath(p) for p in paths]
                scanner = Scanner(pipeline, None, jobs, full, producers)
            scan_id = self.store.start_scan(paths, options)
            scanner.store = self.store
            try:
                summary = scanner.run(paths, scan_id, on_read)
            except sqlite3.DatabaseError as exc:  # a full disk, a damaged file: say what is kept
                done = scanner.summary
                raise StoreError(
                    f"{database_problem(self.db_path, exc)} (scan {scan_id} committed "
                    f"{done.stored} new observations, {len(done.incidents_new)} new and "
                    f"{len(done.incidents_updated)} updated incidents before it stopped)"
                ) from exc
        finally:
            scanner.close()
            if producers is not None:
                producers.close()
        self.store.checkpoint_aside()  # what the scan stored goes to the file meanwhile
        summary.account(self.correlate([scan_id]).new)
        summary.warnings = contradictions(self.config.sites, self.geo, egress)
        ran_out = [e["finding_id"] for e in self.apply_exceptions()
                   if e["action"] == "exception-expired"]  # fmt: skip
        if fail_on:  # an exception that ran out: open again, counted like a new finding
            matched = self.store.raised_findings([scan_id], fail_on, today_utc(), also=ran_out)
            summary.fail_on_matched = [f["id"] for f in matched]
        record, problems = summary.scan_record(fail_on)
        record["settings_digest"] = self.settings_digest()
        record["catalog_version"] = self.catalog.version
        record["geodata"] = [asdict(s) for s in self.geo.sources()]
        self.store.finish_scan(scan_id, record, problems)
        for hook in self.after_evaluation:
            hook(self, [scan_id])
        return scan_id, summary

    def correlate(self, scan_ids: list[int], days: list[str] | None = None) -> CorrelationResult:
        """The correlation rules (egress-hopping) over the days these scans stored (or
        ``days``): run after each scan and after re-evaluation, and by ``watch``."""
        from monitor.correlate import correlate

        return correlate(self.store, self.catalog, self.rules, scan_ids, days)

    def settings_digest(self) -> str:
        """What evaluation depends on besides the logs: catalogue, geodata, rules, sites and
        the organisation's allow-list. ``config check`` compares it with each scan's."""
        cfg = self.config
        state = {
            "catalog": self.catalog.version,
            "geo": [
                (
                    s.name,
                    s.database_type,
                    _file_digest(s.path) if s.origin == "override" else s.build_date,
                )
                for s in self.geo.sources()
            ],
            "rules": [(r.id, r.severity, r.title, repr(r.when)) for r in self.rules.rules],
            "sites": [
                (s.name, [str(n) for n in s.client_cidrs], s.egress_ips, s.country)
                for s in cfg.sites.values()
            ],
            "allowed_providers": sorted(cfg.allowed_providers),
        }
        blob = json.dumps(state, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def apply_exceptions(self, today: str | None = None) -> list[dict]:
        """Bring the exception register up to date (expiries, config entries)."""
        return self.store.apply_exceptions(self.config.exceptions, today or today_utc())

    def raised_findings(
        self, scan_ids: list[int], fail_on: str, today: str | None = None, since: str | None = None
    ) -> list[dict]:
        """What ``--fail-on``/``fail_on`` counts: findings these scans raised or reopened (or
        added detail to), or whose exception ran out since ``since`` (ISO 8601 UTC), still
        open, at or above ``fail_on``, not under an exception."""
        return self.store.raised_findings(scan_ids, fail_on, today or today_utc(), since)

    def stale_geodata(self, max_age_days: int = STALE_GEODATA_DAYS) -> list[GeoSource]:
        """Databases older than ``max_age_days``: addresses move, so say so, but keep going."""
        cutoff = (datetime.now(UTC) - timedelta(days=max_age_days)).strftime("%Y-%m-%d")
        return [
            s
            for s in self.geo.sources()
            if s.origin != "override" and s.build_date and s.build_date < cutoff
        ]

    def close(self) -> None:
        if "dispatcher" in self.__dict__:
            self.dispatcher.close()
        if "store" in self.__dict__:
            self.store.close()
        if "geo" in self.__dict__:
            self.geo.close()


@contextmanager
def uncollected() -> Iterator[None]:
    """Without the cycle collector: a command's start-up (imports, catalogue, rules,
    geodata) makes hundreds of thousands of long-lived objects and no garbage cycles, yet
    set off 40 collections before a scan's producers start, walking them again and again:
    a tenth of the CPU before the producers, which is the whole scan's wall time. What was
    made is then frozen out of the collector's view (as :mod:`monitor.scanner` does), so
    that the first collection after does not walk it all at once."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        gc.freeze()  # (not after a failure: what it left may be cycles to collect)
    finally:
        if enabled:
            gc.enable()


def today_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def _privacy_mismatch(recorded: str, mode: str) -> str:
    def said(m: str) -> str:
        fingerprint = m.partition(":")[2]
        return f"pseudonymised with key {fingerprint}" if fingerprint else "real addresses"

    fix = (
        "scan with --pseudonymize and the same key"
        if recorded != "plain"
        else "scan without --pseudonymize"
    )
    return (
        f"this database holds {said(recorded)} and this scan would store {said(mode)}: "
        f"refused, nothing was scanned ({fix}, or use another database)"
    )
