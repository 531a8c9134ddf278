"""Demo data and demo activity.

`seed_if_empty(store)` fills an empty database with two users, three projects, their stories and
escalations (`create_app` calls it when `DASHBOARD_DEMO` is on). The demo passwords are public:
alice / alice-demo (member of apollo and borealis) and bob / bob-demo (member of cassini).

`DemoActivity(settings, store, relay, metrics)` makes one plausible change every
`settings.demo_activity_interval_ms` (±25 % jitter) through `backend.changes`, so the changes publish
real events: mostly a story moving forward, sometimes a new story, a raised or a resolved escalation.
`await start()` launches it, `await stop()` cancels it; `step()` makes one change (tests call it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from typing import Any

from . import changes
from .auth import hash_password
from .logs import log_event
from .settings import Settings
from .store import Store

USERS = (
    ("alice", "Alice Adams", "alice-demo", ("apollo", "borealis")),
    ("bob", "Bob Brown", "bob-demo", ("cassini",)),
)

PROJECTS: tuple[dict[str, Any], ...] = (
    {
        "id": "apollo",
        "name": "Apollo",
        "description": "Planner, coder and reviewer agents port the billing service to the new payments API.",
        "stories": (
            ("Map legacy billing endpoints to the new payments API", "done", "planner-agent"),
            ("Generate typed client for the payments API", "done", "coder-agent-1"),
            ("Port invoice rendering to the new client", "review", "coder-agent-2"),
            ("Migrate refund flow and its retries", "in_progress", "coder-agent-1"),
            ("Write contract tests for webhook signatures", "in_progress", "tester-agent"),
            ("Backfill currency codes on historic invoices", "blocked", "data-agent"),
            ("Remove the legacy billing adapter", "todo", None),
        ),
        "escalations": (
            ("Refund retries exceed the agent's 3-attempt budget", "open", "coder-agent-1"),
            ("Which currency applies to pre-2019 invoices?", "resolved", "data-agent"),
        ),
    },
    {
        "id": "borealis",
        "name": "Borealis",
        "description": "Triage agents read alerts, correlate logs and draft runbook fixes for on-call.",
        "stories": (
            ("Ingest Alertmanager webhooks into the triage queue", "done", "ingest-agent"),
            ("Correlate alerts with deploy events", "review", "correlator-agent"),
            ("Draft runbook fix for disk-pressure alerts", "in_progress", "runbook-agent"),
            ("Summarise incident timeline for the on-call handover", "todo", "summary-agent"),
            ("Page a human when confidence drops below 0.6", "todo", None),
            ("Deduplicate flapping alerts", "blocked", "correlator-agent"),
        ),
        "escalations": (
            ("Runbook agent wants shell access to the prod bastion", "open", "runbook-agent"),
        ),
    },
    {
        "id": "cassini",
        "name": "Cassini",
        "description": "Crawler, summariser and fact-checker agents assemble the weekly market brief.",
        "stories": (
            ("Crawl this week's earnings call transcripts", "done", "crawler-agent"),
            ("Summarise the semiconductor sector", "in_progress", "summary-agent"),
            ("Fact-check quoted revenue figures", "review", "factcheck-agent"),
            ("Chart the price moves of the top ten movers", "todo", "chart-agent"),
            ("Translate the brief for the Tokyo desk", "todo", None),
        ),
        "escalations": (
            ("Two sources disagree on a revenue figure", "open", "factcheck-agent"),
            ("Paywalled transcript: skip it or buy access?", "open", "crawler-agent"),
            ("Crawler hit a robots.txt disallow", "resolved", "crawler-agent"),
        ),
    },
)

AGENTS = (
    "planner-agent", "coder-agent-1", "coder-agent-2", "reviewer-agent", "tester-agent",
    "data-agent", "summary-agent", "factcheck-agent",
)
NEW_STORY_TITLES = (
    "Add retries with backoff to the {area} client",
    "Write an integration test for {area}",
    "Refactor {area} into smaller agent tools",
    "Document the {area} hand-off between agents",
    "Cut token usage of the {area} prompt",
    "Add tracing spans around {area}",
)
AREAS = ("billing", "alert ingestion", "summaries", "webhooks", "the planner", "report export", "the crawler")
ESCALATION_TITLES = (
    "{agent} is unsure which of two specs is current",
    "{agent} exceeded its tool-call budget",
    "{agent} needs approval for a schema change",
    "{agent} found conflicting test results",
    "{agent} wants credentials it does not have",
)
MAX_STORIES = 12  # past this, the demo reopens a done story instead of adding one
MAX_OPEN_ESCALATIONS = 3
JITTER = 0.25


@functools.cache
def _demo_hash(password: str) -> str:
    """The demo passwords are public, so one hash per process is enough (seeding stays fast in tests)."""
    return hash_password(password)


async def seed_if_empty(store: Store) -> bool:
    """Create the demo users, projects, stories and escalations if the store has neither users nor
    projects. Returns True when it seeded. Several nodes starting at once on one database seed it once."""
    if not await store.is_empty():
        return False
    try:
        await store.add_project(PROJECTS[0]["id"], PROJECTS[0]["name"], PROJECTS[0]["description"])
    except ValueError:  # another node is seeding
        return False
    for index, project in enumerate(PROJECTS):
        if index:
            await store.add_project(project["id"], project["name"], project["description"])
        for title, status, assignee in project["stories"]:
            await store.seed_story(project["id"], title, status=status, assignee=assignee)
        for title, status, created_by in project["escalations"]:
            await store.seed_escalation(project["id"], title, created_by, resolved=status == "resolved")
    for user_id, name, password, project_ids in USERS:
        await store.add_user(user_id, name, password_hash=_demo_hash(password))
        for project_id in project_ids:
            await store.add_member(user_id, project_id)
    log_event("demo.seeded", projects=len(PROJECTS), users=len(USERS))
    return True


_FORWARD = {"todo": "in_progress", "in_progress": "review", "review": "done", "blocked": "in_progress"}


class DemoActivity:
    """Background changes for the demo. `rng` makes runs reproducible in tests."""

    def __init__(
        self, settings: Settings, store: Store, relay: Any, metrics: Any, *, rng: random.Random | None = None
    ) -> None:
        self.settings = settings
        self.store = store
        self.relay = relay
        self.metrics = metrics
        self.rng = rng or random.Random()
        self.steps = 0
        self.errors = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the background task (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="demo-activity")

    async def stop(self) -> None:
        """Cancel the background task and wait for it to end."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def next_delay_s(self) -> float:
        base = max(self.settings.demo_activity_interval_ms, 1) / 1000
        return base * self.rng.uniform(1 - JITTER, 1 + JITTER)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.next_delay_s())
            try:
                await self.step()
            except Exception as exc:  # a failed step is logged; the demo keeps going
                self.errors += 1
                log_event("demo.step_failed", logging.WARNING, error=type(exc).__name__, detail=str(exc)[:200])

    async def step(self) -> str:
        """Make one change in a random project; returns what it did (`"move"`, `"create_story"`,
        `"reopen"`, `"raise"`, `"resolve"` or `"idle"` when there is no project)."""
        project_ids = await self.store.all_project_ids()
        if not project_ids:
            return "idle"
        project_id = self.rng.choice(project_ids)
        roll = self.rng.random()
        if roll < 0.08:
            action = await self._raise(project_id) or await self._resolve(project_id)
        elif roll < 0.16:
            action = await self._resolve(project_id) or await self._move(project_id)
        elif roll < 0.24:
            action = await self._add_story(project_id)
        else:
            action = await self._move(project_id) or await self._add_story(project_id)
        self.steps += 1
        return action or "idle"

    async def _move(self, project_id: str) -> str | None:
        stories = [s for s in await self.store.list_stories(project_id) if s["status"] != "done"]
        if not stories:
            return None
        story = self.rng.choice(stories)
        status = _FORWARD[story["status"]]
        if story["status"] == "in_progress" and self.rng.random() < 0.1:
            status = "blocked"
        elif story["status"] == "review" and self.rng.random() < 0.15:
            status = "in_progress"  # changes requested
        await changes.move_story(self.store, self.relay, story_id=story["id"], status=status, actor="demo")
        return "move"

    async def _add_story(self, project_id: str) -> str:
        stories = await self.store.list_stories(project_id)
        done = [s for s in stories if s["status"] == "done"]
        if len(stories) >= MAX_STORIES and done:
            story = self.rng.choice(done)  # a regression: back to the queue
            await changes.move_story(self.store, self.relay, story_id=story["id"], status="todo", actor="demo")
            return "reopen"
        title = self.rng.choice(NEW_STORY_TITLES).format(area=self.rng.choice(AREAS))
        await changes.create_story(
            self.store, self.relay, project_id=project_id, title=title, actor="demo",
            assignee=self.rng.choice((*AGENTS, None)),
        )
        return "create_story"

    async def _raise(self, project_id: str) -> str | None:
        open_ = [e for e in await self.store.list_escalations(project_id) if e["status"] == "open"]
        if len(open_) >= MAX_OPEN_ESCALATIONS:
            return None
        agent = self.rng.choice(AGENTS)
        title = self.rng.choice(ESCALATION_TITLES).format(agent=agent)
        await changes.create_escalation(self.store, self.relay, project_id=project_id, title=title, actor=agent)
        return "raise"

    async def _resolve(self, project_id: str) -> str | None:
        open_ = [e for e in await self.store.list_escalations(project_id) if e["status"] == "open"]
        if not open_:
            return None
        escalation = self.rng.choice(open_)
        await changes.resolve_escalation(
            self.store, self.relay, escalation_id=escalation["id"], actor="demo"
        )
        return "resolve"
