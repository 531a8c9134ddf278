"""`Relay`: publishes the outbox to the bus, in order, once, retrying until the bus takes it. The only bus writer.

A change commits its rows and its events (outbox rows with a per-project number `pseq`) in one transaction
(`backend.changes`), then hands the rows to `relay.committed(rows)` and answers. The relay task publishes each
project's rows in `pseq` order with `bus.publish(..., pseq=n)`, which takes every number once: a row published
before a crash, but not yet marked sent, is not delivered twice (`None` comes back), and a row that would skip a
number (`OutboxGap`) makes the relay publish the missing rows first, from the database. Rows are then marked sent.

While the bus is down nothing is lost: rows stay unsent and the relay retries with backoff. If a project's oldest
waiting row is older than `DASHBOARD_BUS_OUTAGE_S` when the bus is back, its first publish starts a new epoch, so
every client resuming across the outage gets `recovered:false` and refetches (slow, never wrong). Rows committed by
another node (or before a crash of this one) are found by a sweep of the table every `SWEEP_S`. When the bus has lost
events it had taken (Redis restarted without them), the project gets a new epoch too (`reconcile`).

Build it with `Relay(settings, store, bus, metrics)`, `await start()`, `committed(rows)` after each change, and
`await stop()` at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterable
from typing import Any

from .bus import OutboxGap
from .logs import log_event
from .store import OutboxRow, Store, Unavailable

SWEEP_S = 1.0  # how often the table is searched for rows nobody is publishing
SWEEP_GRACE_MS = 1000  # rows younger than this are left to the node that committed them
RECONCILE_S = 5.0  # how often the bus is asked whether it restarted
RETRY_MIN_S = 0.05
RETRY_MAX_S = 2.0
BATCH = 500
PRUNE_S = 60.0
CRASH_HOOK = "DASHBOARD_FAULT_CRASH_AFTER_COMMIT"  # tests only: exit between commit and publish

_log = logging.getLogger("dashboard")


class Relay:
    def __init__(self, settings: Any, store: Store, bus: Any, metrics: Any) -> None:
        self.settings = settings
        self.store = store
        self.bus = bus
        self.metrics = metrics
        self._waiting: dict[str, dict[int, OutboxRow]] = {}  # project → pseq → row handed over by this node
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set while nothing handed over is waiting (see `flushed`)
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._bus_id: str | None = None
        self._renewed: set[str] = set()  # projects whose current backlog already started a new epoch
        self._crash = os.environ.get(CRASH_HOOK) == "1"
        self.sweep_s = SWEEP_S
        self.healthy = True  # False while the bus refuses publishes (for /readyz)
        self.published = 0

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        """Publish what can be published within a moment, then stop (what is left stays in the table)."""
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=2.0)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # -- input ----------------------------------------------------------------------------------

    def committed(self, rows: Iterable[OutboxRow]) -> None:
        """A change committed these outbox rows: publish them soon (never awaits)."""
        if self._crash:  # the fault the outbox exists for: the change is committed, its events not yet published
            os._exit(70)
        for row in rows:
            self._waiting.setdefault(row.project_id, {})[row.pseq] = row
        self._idle.clear()
        self._wake.set()

    async def flushed(self, timeout_s: float = 5.0) -> None:
        """Wait until every row handed over so far is published (tests, and a graceful stop)."""
        await asyncio.wait_for(self._idle.wait(), timeout_s)

    # -- loop -----------------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = RETRY_MIN_S
        next_sweep = 0.0  # sweep at once: rows left by a crash or by the previous run
        next_reconcile = 0.0  # at once: did the bus lose what it had taken while this node was away?
        next_prune = time.monotonic() + PRUNE_S
        sweep_grace = 0  # the first sweep takes every row
        while True:
            try:
                now = time.monotonic()
                if now >= next_reconcile:
                    next_reconcile = now + RECONCILE_S
                    await self.reconcile()
                if now >= next_sweep:
                    next_sweep = now + self.sweep_s
                    await self._sweep(sweep_grace)
                    sweep_grace = SWEEP_GRACE_MS
                await self._publish_waiting()
                if now >= next_prune:
                    next_prune = now + PRUNE_S
                    await self._prune()
                delay = RETRY_MIN_S
                if not self.healthy:
                    self.healthy = True
                    log_event("relay.recovered")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # bus or database unreachable: keep everything, retry with backoff
                if self.healthy:
                    self.healthy = False
                    log_event("relay.publish_failed", logging.WARNING, error=type(exc).__name__, detail=str(exc)[:200])
                self.metrics.relay_errors.inc()
                next_reconcile = 0.0  # when it is back, check it kept what it had taken
                next_sweep = 0.0
                if self._stopping:
                    return
                await self._sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            if self._stopping:
                return
            await self._sleep(max(0.0, min(next_sweep, next_reconcile) - time.monotonic()))

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        if self._waiting or self._stopping:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):  # no helper task, unlike wait_for
                await self._wake.wait()

    async def _sweep(self, grace_ms: int) -> None:
        cutoff = self.store.clock() - grace_ms
        rows = await self.store.unsent(limit=BATCH)
        backlog, oldest = len(rows), None
        for row in rows:
            oldest = row.created_at if oldest is None else min(oldest, row.created_at)
            if row.created_at <= cutoff:
                self._waiting.setdefault(row.project_id, {}).setdefault(row.pseq, row)
        self.metrics.outbox_backlog.set(backlog)

    async def _publish_waiting(self) -> None:
        for project_id in list(self._waiting):
            rows = self._waiting.get(project_id)
            while rows:
                pseq = min(rows)
                await self._publish(rows.pop(pseq))
            self._waiting.pop(project_id, None)
        if not self._waiting:
            self._idle.set()

    async def _publish(self, row: OutboxRow) -> None:
        late = self.store.clock() - row.created_at > self.settings.bus_outage_s * 1000
        if not late:
            self._renewed.discard(row.project_id)
        fresh = late and row.project_id not in self._renewed  # one new epoch per backlog, at its first event
        if fresh:  # a new epoch accepts a gap: make sure no older unsent row of the project is left behind
            earlier = [r for r in await self.store.unsent(project_id=row.project_id, limit=BATCH) if r.pseq < row.pseq]
            if earlier:
                waiting = self._waiting.setdefault(row.project_id, {})
                waiting[row.pseq] = row
                for r in earlier:
                    waiting.setdefault(r.pseq, r)
                return
        try:
            event = await self.bus.publish(row.project_id, row.event_type, row.data, pseq=row.pseq, fresh_epoch=fresh)
        except OutboxGap as gap:
            self._waiting.setdefault(row.project_id, {})[row.pseq] = row  # keep it for after the missing ones
            await self._fill_gap(row, gap.last)
            return
        except BaseException:
            self._waiting.setdefault(row.project_id, {})[row.pseq] = row
            raise
        if event is not None:
            self.published += 1
            self.metrics.events_published.labels(row.event_type).inc()
            self.metrics.outbox_lag.observe(max(0, self.store.clock() - row.created_at) / 1000)
            if fresh:
                self._renewed.add(row.project_id)
                self.metrics.epoch_resets.labels(reason="outage").inc()
                log_event("relay.new_epoch", logging.WARNING, project_id=row.project_id, reason="outage",
                          epoch=event.epoch, waited_ms=self.store.clock() - row.created_at)
        await self.store.mark_sent(row.project_id, row.pseq)

    async def _fill_gap(self, row: OutboxRow, last: int) -> None:
        """The bus took numbers up to `last` only: queue the unsent rows in between from the database, or, when
        they were marked sent (the bus lost them), start a new epoch with this row."""
        missing = [r for r in await self.store.unsent(project_id=row.project_id, limit=BATCH) if last < r.pseq < row.pseq]
        waiting = self._waiting.setdefault(row.project_id, {})
        if missing and missing[0].pseq == last + 1:
            for earlier in missing:
                waiting.setdefault(earlier.pseq, earlier)
            return
        taken = await self.bus.last_pseq(row.project_id)
        if taken is not None and taken > last:  # another node published (and marked) them meanwhile: not lost
            for earlier in missing:
                waiting.setdefault(earlier.pseq, earlier)
            return
        # Numbers between were published once and are gone from the bus: clients cannot be told exactly what
        # they missed, so this project starts a new epoch (they refetch).
        for earlier in missing:
            waiting.setdefault(earlier.pseq, earlier)
        first = min(waiting)
        head = waiting.pop(first)
        event = await self.bus.publish(head.project_id, head.event_type, head.data, pseq=head.pseq, fresh_epoch=True)
        self.metrics.epoch_resets.labels(reason="gap").inc()
        log_event("relay.new_epoch", logging.WARNING, project_id=head.project_id, reason="gap", after=last, pseq=head.pseq)
        if event is not None:
            self.published += 1
            self.metrics.events_published.labels(head.event_type).inc()
        await self.store.mark_sent(head.project_id, head.pseq)

    async def reconcile(self) -> None:
        """At start and whenever the bus restarted (Redis `run_id` changed): give a new epoch to every project whose
        published events the bus no longer holds (clients refetch instead of keeping a board that silently misses
        them), and to every project whose outbox numbers the bus took beyond what the database has (a database
        restored from a backup: new events would otherwise be taken for repeats)."""
        server_id = getattr(self.bus, "server_id", None)
        if server_id is None:
            return
        current = await server_id()
        if current == self._bus_id:
            return
        first_check = self._bus_id is None
        for project_id in await self.store.all_project_ids():
            # Read in this order, so that another node publishing meanwhile can only make `taken` look newer than
            # `sent` and `allocated` newer than `taken`, never the reverse: sent ≤ taken ≤ allocated when all is well.
            sent = await self.store.last_sent_pseq(project_id)
            taken = await self.bus.last_pseq(project_id)
            allocated = await self.store.allocated_pseq(project_id)
            if sent > 0 and (taken is None or taken < sent):
                reason = "bus_lost"  # Redis restarted without events it had taken
            elif taken is not None and taken > allocated:
                # The database is behind what the bus took (restored from a backup): new changes would reuse numbers
                # the bus already took and be dropped as repeats.
                reason = "store_restored"
            else:
                continue
            epoch = await self.bus.restart_epoch(project_id, sent)
            self.metrics.epoch_resets.labels(reason=reason).inc()
            log_event("relay.new_epoch", logging.WARNING, project_id=project_id, reason=reason,
                      taken=taken, sent=sent, allocated=allocated, epoch=epoch, first_check=first_check)
        self._bus_id = current

    async def _prune(self) -> None:
        now = self.store.clock()
        try:
            removed = await self.store.prune(
                sent_before=now - self.settings.outbox_retention_s * 1000,
                idempotency_before=now - self.settings.idempotency_ttl_s * 1000,
                sessions_before=now,
            )
        except Unavailable:
            return
        if any(removed.values()):
            log_event("store.pruned", **removed)
