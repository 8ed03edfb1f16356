"""Delivering the outbox: every configured sink gets every event it wants, once, in order.

The store writes events to its outbox in the transaction of the change (:mod:`monitor.events`);
:class:`Dispatcher` delivers them after the commit. Each sink has a cursor in the store: an
event counts as delivered when the receiver accepted it and the cursor moved past it, in one
small transaction per event, so a crash or ``kill -9`` can send one event twice at most (the
one in flight, with the same ``idempotency_key``) and never skips one. A sink that fails is
retried with exponential backoff (``watch``) or on the next run (``scan``, ``daily``,
``alerts deliver``); the events wait in the outbox meanwhile, in order.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from monitor.events import FindingEvent
from monitor.sinks import AlertSpec, Sink, SinkError, open_sink
from monitor.store import Store

BATCH = 200  # events read from the outbox per query
LEASE = 60.0  # seconds a dispatcher holds a sink while it delivers (renewed per batch)
BACKOFF_FIRST = 1.0  # seconds before the first retry; doubles per failure
BACKOFF_MAX = 300.0


def _owner_gone(owner: str) -> bool:
    """A lease holder on this host whose process no longer exists (killed, crashed)."""
    host, _, rest = owner.partition(":")
    if host != socket.gethostname():
        return False
    try:
        os.kill(int(rest.partition(":")[0]), 0)
    except ProcessLookupError:
        return True
    except (ValueError, PermissionError):
        return False
    return False


def backoff(attempts: int) -> float:
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, attempts - 1))


@dataclass
class Delivery:
    """What one pass did, per sink name."""

    sent: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # sink → error (secrets never in it)

    def merge(self, other: Delivery) -> None:
        for name, n in other.sent.items():
            self.sent[name] = self.sent.get(name, 0) + n
        self.failed.update(other.failed)


class Dispatcher:
    """The configured sinks, opened on first use, fed from the store's outbox."""

    def __init__(
        self,
        store: Store,
        specs: Sequence[AlertSpec],
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.specs = list(specs)
        self.clock = clock
        self._sinks: dict[str, Sink] = {}
        self._last_look = 0.0
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        for spec in self.specs:  # a no-op for sinks App.store registered
            store.register_sink(spec.name, spec.kind)
        self.woken = True  # events may be waiting from before this process started
        store.listeners.append(self._wake)

    def _wake(self) -> None:
        """The store committed events (its hook): the next :meth:`due` pass delivers them."""
        self.woken = True

    def deliver_due(self, every: float) -> Delivery:
        """For a loop (``watch``): deliver when this process committed events, or at most
        every ``every`` seconds otherwise (events other processes committed, retries)."""
        now = self.clock()
        if not self.woken and now - self._last_look < every:
            return Delivery()
        self.woken, self._last_look = False, now
        return self.deliver(respect_backoff=True)

    def deliver(self, respect_backoff: bool = False) -> Delivery:
        """One pass over every sink: send what is pending, stop a sink at its first failure.
        ``respect_backoff`` skips sinks whose retry time has not come (the follow loop)."""
        result = Delivery()
        for spec in self.specs:
            if respect_backoff:
                state = self.store.sink_state(spec.name)
                if state and state["next_at"] and state["next_at"] > self.clock():
                    continue
            self._deliver_one(spec, result)
        return result

    def _deliver_one(self, spec: AlertSpec, result: Delivery) -> None:
        """Deliver to one sink, holding its lease (another process delivering to it now
        means this one leaves it alone)."""
        if not self.store.pending_events(spec.name, 1):  # a read: no write lock when idle
            return
        try:
            while True:
                if not self.store.lease_sink(spec.name, self.owner, LEASE, _owner_gone):
                    return
                pending = self.store.pending_events(spec.name, BATCH)
                if not pending or not self._send_batch(spec, pending, result):
                    return
        finally:
            self.store.release_sink(spec.name, self.owner)

    def _send_batch(self, spec: AlertSpec, pending, result: Delivery) -> bool:
        """Send one batch in order; False when the sink failed (the rest waits)."""
        skipped_to = None
        for seq, event in pending:
            if not spec.wants(event):
                skipped_to = seq
                continue
            if skipped_to is not None:
                self.store.advance_sink(spec.name, skipped_to, 0)
                skipped_to = None
            try:
                self._sink(spec).send(event)
            except SinkError as exc:
                self._failed(spec, str(exc), result)
                return False
            self.store.advance_sink(spec.name, seq, 1)
            result.sent[spec.name] = result.sent.get(spec.name, 0) + 1
        if skipped_to is not None:
            self.store.advance_sink(spec.name, skipped_to, 0)
        return True

    def _failed(self, spec: AlertSpec, error: str, result: Delivery) -> None:
        self._close(spec.name)  # reconnect next time
        state = self.store.sink_state(spec.name) or {"attempts": 0}
        self.store.sink_failed(spec.name, error, self.clock() + backoff(state["attempts"] + 1))
        result.failed[spec.name] = error

    def send_test(self, spec: AlertSpec, event: FindingEvent) -> None:
        """Send ``event`` to one sink now, outside the outbox (``apiwatch alerts test``)."""
        try:
            self._sink(spec).send(event)
        finally:
            self._close(spec.name)

    def _sink(self, spec: AlertSpec) -> Sink:
        sink = self._sinks.get(spec.name)
        if sink is None:
            sink = self._sinks[spec.name] = open_sink(spec)
        return sink

    def _close(self, name: str) -> None:
        sink = self._sinks.pop(name, None)
        if sink is not None:
            with contextlib.suppress(OSError):
                sink.close()

    def close(self) -> None:
        for name in list(self._sinks):
            self._close(name)
