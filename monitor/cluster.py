"""The scan's producers as tasks on a Dask distributed cluster (``scan --cluster ADDRESS``).

Each part of each input (see :func:`monitor.scanner.plan`) becomes one task that runs the
record path on a worker and returns the part's messages: the same stream a local producer
process sends. The client submits a bounded window of parts ahead, takes the results in
input order and stores them as a local scan does, so the database is the same table by
table, and a part whose worker dies is simply run again by Dask (its result is the same,
and nothing has been stored for it yet).

Workers need apiwatch installed, read access to the inputs under the same paths or URLs
(shared storage, or fsspec URLs such as ``s3://``), and the same apiwatch version,
catalogue and geodata as the client: the task checks the fingerprint the client sends and
fails with both fingerprints rather than compute different answers. Only this module
imports Dask, and only when a scan names a cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from monitor.errors import ApiwatchError
from monitor.pipeline import Part, Pipeline

#: tasks in flight per worker thread: enough to keep every worker busy while the client stores
AHEAD_PER_THREAD = 2
#: a part is tried again on another worker this many times (a worker killed mid-part)
RETRIES = 3

_PIPELINES: dict[str, Pipeline] = {}  # per worker process: one pipeline per recipe


class ClusterError(ApiwatchError):
    """The cluster cannot be reached, or a worker differs from the client."""


def run_part(build: Callable[[], Pipeline], fingerprint: str, part: Part) -> list[tuple[str, Any]]:
    """Task body on a worker: the messages of one part (:func:`monitor.scanner.part_messages`).

    ``build`` makes the pipeline from the client's settings (kept per worker process);
    ``fingerprint`` is the client's catalogue, geodata and rules: a worker that differs says
    so instead of storing other answers."""
    from monitor.scanner import part_messages

    pipeline = _PIPELINES.get(fingerprint)
    if pipeline is None:
        pipeline = build()
        mine = pipeline.fingerprint()
        if mine != fingerprint:
            raise ClusterError(
                f"worker differs from the client: worker {mine}, client {fingerprint}; "
                "install the same apiwatch, catalogue and geodata on both"
            )
        _PIPELINES[fingerprint] = pipeline
    return list(part_messages(pipeline, part))


class ClusterProducers:
    """The scanner's view of a cluster: for a list of parts, each part's messages in order."""

    def __init__(self, address: str, build: Callable[[], Pipeline], fingerprint: str):
        try:
            from distributed import Client
        except ImportError as exc:  # pragma: no cover - distributed is a declared extra
            raise ClusterError(
                "--cluster needs Dask distributed: pip install 'apiwatch[cluster]'"
            ) from exc
        self.address = address
        self._build = build
        self._fingerprint = fingerprint
        try:
            self.client = Client(address, timeout="10s", set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"{address}: cannot reach the Dask scheduler: {exc}") from None
        self.threads = sum(self.client.nthreads().values())
        if not self.threads:
            self.client.close()
            raise ClusterError(f"{address}: the Dask scheduler has no workers")
        self.ahead = max(2, self.threads * AHEAD_PER_THREAD)

    def streams(self, parts: Sequence[Part]) -> Iterator[list[tuple[str, Any]]]:
        """The messages of each part, in order, with at most ``ahead`` parts in flight."""
        futures: list[Any] = []
        submitted = 0

        def submit_more(upto: int) -> None:
            nonlocal submitted
            while submitted < min(upto, len(parts)):
                futures.append(
                    self.client.submit(
                        run_part,
                        self._build,
                        self._fingerprint,
                        parts[submitted],
                        pure=False,
                        retries=RETRIES,
                    )
                )
                submitted += 1

        for i in range(len(parts)):
            submit_more(i + self.ahead)
            future, futures[i] = futures[i], None
            try:
                yield future.result()
            except ClusterError:
                raise
            except Exception as exc:  # a task's own error, raised again on the client
                yield [("crash", f"on the cluster: {type(exc).__name__}: {exc}")]

    def close(self) -> None:
        self.client.close()
