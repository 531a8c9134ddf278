"""Contract tests: our client core (`client.runtime.Runtime`) against the real server over real sockets.

Each test starts uvicorn in-process (`ContractServer`: the same uvicorn options as `dashboard serve`,
the real SQLite store with the demo data, the in-process event bus, scaled-down timings from
`Settings`) and drives the unmodified client core through the headless asyncio adapter of the
benchmarks (`websockets` client, httpx for REST with `Authorization: Bearer`, one timer re-armed at
`rt.get_timer()`). Nothing on either side is stubbed; only the network is manipulated (a dial gate,
an aborted TCP connection, a stopped and restarted server, a frozen server loop). What this proves, end to end:

1. A real login token gets the client live; `watch` loads the stories over REST; a REST change by
   another user arrives as an event (not the client's own) and the cached data equals the server's;
   the client's own optimistic mutation round-trips and its echo is recognised (`own: true`).
2. Zero-loss resume: after an abrupt drop, 50 events published while the client is away are replayed
   when it resubscribes with `since` (`recovered: true`, `replayed: 50`); the handler gets exactly
   those 50, in seq order, once each, and the resume triggers no REST refetch (the 50 events touch
   an unwatched key, so any fetch would come from the resume itself).
3. Restart with the in-process bus: `since` names a lost epoch, the server answers `recovered: false`,
   and the client refetches exactly the watched queries of that project and ends with the server's data.
4. 4401: an expired token and a token that expires while connected both end in `auth-required`
   with no further dials over several backoff periods; a fresh token resumes with `since`.
5. SIGTERM drain: `restart` (`reconnectWithinMs`) + 1012; the client schedules its redial inside the
   hinted window, dials once, and is live on the restarted server.
6. Heartbeat: the client answers every server `ping`, so a connection with no other traffic survives
   many heartbeat intervals; withholding the `pong`s (the control) gets it closed 4000, after which
   the client backs off and resumes without loss.

Also: a resume while the publisher keeps publishing crosses the replay/live boundary without loss or
repeat; a project the user is not a member of is refused (REST 403, `forbidden`) without harming the
connection; a stalled server (silent socket) is found by the client's watchdog, no earlier than
heartbeat x misses + grace, closed 4101, redialled and resumed. A user holding the maximum number of
subscriptions is never rate-limited by its own re-subscribe burst, and a subscribe answered `unavailable`
(bus down) is retried at the next heartbeat while the socket stays up. Every
client must also end without a rejected frame, an unparsable frame, a failing handler or a token in
its telemetry.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from contract_driver import WAIT_S, ContractClient, ContractServer, FlakyBus, quiet_for, wait_until
from realtime_harness import make_settings, set_members, token_for

from backend.auth import issue_token
from backend.settings import Settings

pytestmark = pytest.mark.anyio

STORIES = ("stories", "apollo")
PROJECT = ("project", "apollo")
ESCALATIONS = ("escalations", "apollo")
PROJECTS = ("projects",)


def settings_for_tests(**overrides: Any) -> Settings:
    """Scaled-down timings; heartbeat misses 3 leaves room for a busy machine."""
    base = {
        "heartbeat_interval_ms": 300,
        "heartbeat_misses": 3,
        "reconnect_base_ms": 100,
        "reconnect_max_ms": 400,
        "connect_timeout_ms": 5000,
        "restart_window_ms": 600,
    }
    base.update(overrides)
    return make_settings(**base)


PROTOCOLS = pytest.mark.parametrize("protocol", ["dashboard.v2", "dashboard.v1"])


@asynccontextmanager
async def running(server: ContractServer, token: str, project: str = "apollo", *,
                  server_errors: bool = False, protocol: str = "dashboard.v2") -> AsyncIterator[ContractClient]:
    """A started client (handler on `project`), stopped and drained on exit. `protocol="dashboard.v1"` plays a
    client that offers only v1 (the server must send it exactly the v1 frames). On a clean exit it also checks
    that the server never rejected a client frame (`server-error`, unless allowed), sent nothing the client
    could not parse, that no handler or listener raised, that no telemetry record holds the token and that
    every socket spoke `protocol`."""
    offer = None if protocol == "dashboard.v2" else (protocol,)
    client = await ContractClient.create(server, token, project, offer=offer)
    try:
        client.start()
        yield client
    finally:
        await client.aclose()
    assert client.logged("bad-frame") == [] and client.logged("listener-error") == []
    assert token not in json.dumps(client.records)  # telemetry never carries the token
    assert server_errors or client.logged("server-error") == [], client.logged("server-error")
    assert set(client.selected) <= {protocol}, client.selected


async def rest(server: ContractServer, token: str, method: str, path: str, **kwargs: Any) -> Any:
    """One REST call as another client would make it; fails the test on a non-2xx answer."""
    headers = {"Authorization": "Bearer " + token, **kwargs.pop("headers", {})}
    async with httpx.AsyncClient(base_url=server.http, timeout=WAIT_S, trust_env=False) as http:
        response = await http.request(method, path, headers=headers, **kwargs)
    assert response.is_success, (response.status_code, response.text)
    return response.json()


def status_of(stories: list[dict[str, Any]] | None, story_id: int) -> str | None:
    for story in stories or ():
        if story["id"] == story_id:
            return str(story["status"])
    return None


def other_status(status: str) -> str:
    return "blocked" if status != "blocked" else "todo"


async def until_live(client: ContractClient) -> None:
    await client.until(lambda: client.state == "live", "the client to be live")


async def until_subscribed(client: ContractClient, since_record: int, project: str = "apollo") -> dict[str, Any]:
    """The first `subscribed` telemetry record for `project` after record index `since_record`."""
    records = await client.until(
        lambda: [r for r in client.logged("subscribed", since_record) if r.get("projectId") == project],
        f"a subscribed reply for {project}")
    return records[0]


def subscribes_sent(client: ContractClient, since_command: int) -> list[dict[str, Any]]:
    return [json_of(c) for _, c in client.commands[since_command:] if c[0] == "send" and '"subscribe"' in c[2]]


def json_of(command: tuple[Any, ...]) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(command[2])
    return value


# -- 1 ------------------------------------------------------------------------------------------------


@PROTOCOLS
async def test_live_rest_load_then_a_change_by_another_client_arrives_and_updates_the_cache(
    tmp_path: Path, protocol: str
) -> None:
    settings = settings_for_tests()
    with ContractServer(settings, tmp_path / "db.sqlite") as server:
        set_members(server.store, "carol", {"apollo"})
        alice, carol = token_for(settings, "alice"), token_for(settings, "carol")
        async with running(server, alice, protocol=protocol) as client:
            await until_live(client)
            [(_, dial)] = client.opens()
            assert dial[2] == server.url and alice not in dial[2]  # the token never goes into the URL
            assert dial[3] == ["dashboard.v2", "dashboard.v1", "bearer." + alice]
            assert client.selected == [protocol]
            first = await until_subscribed(client, 0)
            assert first["recovered"] is None  # first subscribe: no `since` yet

            client.watch(STORIES)
            await client.until(lambda: client.settled(STORIES), "the stories query to load")
            assert client.fetches() == ["/api/projects/apollo/stories"]
            truth = await rest(server, alice, "GET", "/api/projects/apollo/stories")
            assert client.entry(STORIES).data == truth

            # another user changes a story over REST: an event, not our echo, and the cache follows
            story = truth[0]
            target = other_status(story["status"])
            await rest(server, carol, "PATCH", f"/api/stories/{story['id']}", json={"status": target},
                       headers={"X-Client-Mutation-Id": "carol-1"})
            changed = await wait_until(
                lambda: [e for e in client.events if e["eventType"] == "story.status.changed"], "the change event")
            assert changed[0]["own"] is False
            assert changed[0]["data"]["storyId"] == story["id"] and changed[0]["data"]["to"] == target
            assert changed[0]["data"]["clientMutationId"] == "carol-1"
            await client.until(lambda: client.settled(STORIES) and status_of(client.entry(STORIES).data, story["id"])
                               == target, "the cached story to show the change")
            assert client.entry(STORIES).data == await rest(server, alice, "GET", "/api/projects/apollo/stories")

            # our own mutation: optimistic at once, then the server's echo is recognised as ours
            mine = truth[1]
            mine_target = other_status(mine["status"])
            settled: list[dict[str, Any]] = []
            client.rt.on_mutation(settled.append)
            echoes = len([e for e in client.events if e.get("own")])
            client.input(client.rt.move_story, "apollo", mine["id"], mine_target)
            assert status_of(client.entry(STORIES).data, mine["id"]) == mine_target  # overlay, before any answer
            await wait_until(lambda: settled and [e for e in client.events if e.get("own")][echoes:], "answer and echo")
            assert settled[0]["ok"] is True and settled[0]["status"] == 200
            assert client.rt.stats["echoes"] == 1
            await client.until(lambda: client.settled(STORIES), "the stories to settle")
            assert client.entry(STORIES).data == await rest(server, alice, "GET", "/api/projects/apollo/stories")
            assert client.rt.stats["drops"] == 0 and client.rt.stats["duplicates"] == 0


# -- 2 ------------------------------------------------------------------------------------------------


@PROTOCOLS
async def test_abrupt_drop_then_resume_replays_exactly_the_missed_events_without_refetch(
    tmp_path: Path, protocol: str
) -> None:
    settings = settings_for_tests()
    with ContractServer(settings, tmp_path / "db.sqlite") as server:
        async with running(server, token_for(settings, "alice"), protocol=protocol) as client:
            await until_live(client)
            for key in (STORIES, PROJECT, PROJECTS):
                client.watch(key)
            await until_subscribed(client, 0)
            await server.publish_many("apollo", 2, "escalation.created")
            await wait_until(lambda: len(client.events) == 2, "two live events")
            await client.until(lambda: client.settled(STORIES, PROJECT, PROJECTS), "the watched queries")
            epoch, seq = client.events[-1]["epoch"], client.events[-1]["seq"]
            fetches_before = len(client.fetches())

            client.hold_dials()
            mark_cmd, mark_rec, seen = len(client.commands), len(client.records), len(client.events)
            client.drop()
            await client.until(lambda: client.state == "reconnecting", "the client to notice the drop")
            await wait_until(lambda: server.app.state.hub.connection_count == 0, "the server to notice the drop")
            published = await server.publish_many("apollo", 50, "escalation.created")
            assert [e.seq for e in published] == list(range(seq + 1, seq + 51))
            await client.until(lambda: client.opens()[1:], "the client to redial by itself")
            client.release_dials()

            reply = await until_subscribed(client, mark_rec)
            assert (reply["recovered"], reply["replayed"], reply["seq"]) == (True, 50, seq + 50)
            assert subscribes_sent(client, mark_cmd) == [
                {"action": "subscribe", "projectId": "apollo", "since": {"epoch": epoch, "seq": seq}}]
            replayed = client.events[seen:]
            assert [e["seq"] for e in replayed] == list(range(seq + 1, seq + 51))
            assert [e["data"]["n"] for e in replayed] == list(range(50))
            assert {e["epoch"] for e in replayed} == {epoch}
            stats = client.rt.stats
            assert (stats["reconnects"], stats["recovered"], stats["unrecovered"]) == (1, 1, 0)
            assert (stats["duplicates"], stats["gaps"], stats["epochChanges"]) == (0, 0, 0)
            # nothing was invalidated by the resume: no stale entry, no refetch scheduled, no fetch sent
            assert client.settled(STORIES, PROJECT, PROJECTS)
            assert client.fetches(mark_cmd) == [] and len(client.fetches()) == fetches_before

            await server.publish("apollo", "escalation.created", {"n": 50})
            await wait_until(lambda: len(client.events) == seen + 51, "the next live event")
            assert client.events[-1]["seq"] == seq + 51 and client.rt.stats["duplicates"] == 0


@PROTOCOLS
async def test_resume_while_the_publisher_keeps_publishing_loses_and_repeats_nothing(tmp_path: Path, protocol: str) -> None:
    settings = settings_for_tests()
    with ContractServer(settings, tmp_path / "db.sqlite") as server:
        async with running(server, token_for(settings, "alice"), protocol=protocol) as client:
            await until_live(client)
            client.watch(STORIES)
            start = (await until_subscribed(client, 0))["seq"]
            await client.until(lambda: client.settled(STORIES), "the stories")
            client.hold_dials()
            mark_cmd, mark_rec = len(client.commands), len(client.records)
            client.drop()
            await client.until(lambda: client.state == "reconnecting", "the client to notice the drop")
            await server.publish_many("apollo", 50, "escalation.created")
            await client.until(lambda: client.opens()[1:], "the client to redial")
            client.release_dials()
            # publish one event at a time while the client dials, resubscribes and replays; stop 10 events after
            # its `subscribed` arrived, so the replay/live boundary is crossed with events in flight
            after_reply, published = 0, 50
            while after_reply < 10:
                assert published < 900, client.summary()  # the history holds 1000
                await server.publish("apollo", "escalation.created", {"n": published})
                published += 1
                if client.logged("subscribed", mark_rec):
                    after_reply += 1
            await client.until(lambda: len(client.events) == published, "every event")
            assert [e["seq"] for e in client.events] == list(range(start + 1, start + 1 + published))
            assert [e["data"]["n"] for e in client.events[50:]] == list(range(50, published))
            reply = client.logged("subscribed", mark_rec)[0]
            assert reply["recovered"] is True and reply["replayed"] >= 50
            stats = client.rt.stats
            assert (stats["duplicates"], stats["gaps"], stats["unrecovered"]) == (0, 0, 0)
            assert client.fetches(mark_cmd) == [] and client.settled(STORIES)


# -- 3 ------------------------------------------------------------------------------------------------


async def test_restart_with_in_process_bus_is_unrecovered_and_refetches_that_projects_watched_queries(
        tmp_path: Path) -> None:
    settings = settings_for_tests()
    db = tmp_path / "db.sqlite"
    first = ContractServer(settings, db).start()
    second: ContractServer | None = None
    try:
        set_members(first.store, "carol", {"apollo"})
        alice, carol = token_for(settings, "alice"), token_for(settings, "carol")
        async with running(first, alice) as client:
            await until_live(client)
            client.watch(STORIES)
            client.watch(PROJECT)
            unwatch = client.watch(ESCALATIONS)
            await client.until(lambda: client.settled(STORIES, PROJECT, ESCALATIONS), "the queries")
            unwatch()  # stays cached, no longer watched: must not be refetched
            stories = client.entry(STORIES).data
            first_move = {"status": other_status(stories[0]["status"])}
            await rest(first, carol, "PATCH", f"/api/stories/{stories[0]['id']}", json=first_move)
            await wait_until(lambda: len(client.events) == 2, "story.status.changed + project.updated")
            await client.until(lambda: client.settled(STORIES, PROJECT), "the refetch after the events")
            epoch, seq = client.events[-1]["epoch"], client.events[-1]["seq"]

            client.hold_dials()
            mark_cmd, mark_rec = len(client.commands), len(client.records)
            port = first.port
            first.stop()
            await client.until(lambda: client.state == "reconnecting", "the client to notice the restart")
            second = ContractServer(settings, db, port=port).start()
            moved = stories[1]
            target = other_status(moved["status"])
            # a change while the client is away: only a refetch can bring it
            await rest(second, carol, "PATCH", f"/api/stories/{moved['id']}", json={"status": target})
            client.release_dials()

            reply = await until_subscribed(client, mark_rec)
            assert reply["recovered"] is False
            assert subscribes_sent(client, mark_cmd)[0]["since"] == {"epoch": epoch, "seq": seq}
            assert client.rt.subscriptions.get("apollo").epoch != epoch  # the new server's epoch
            await client.until(lambda: client.settled(STORIES, PROJECT), "the refetch")
            assert sorted(client.fetches(mark_cmd)) == ["/api/projects/apollo", "/api/projects/apollo/stories"]
            assert client.entry(ESCALATIONS).stale  # invalidated, but unwatched: left for the next watch
            assert client.rt.stats["unrecovered"] == 1
            assert status_of(client.entry(STORIES).data, moved["id"]) == target
            assert client.entry(STORIES).data == await rest(second, alice, "GET", "/api/projects/apollo/stories")
            assert client.entry(PROJECT).data == await rest(second, alice, "GET", "/api/projects/apollo")
    finally:
        if first._thread.is_alive():
            first.stop()
        if second is not None:
            second.stop()


# -- 4 ------------------------------------------------------------------------------------------------


async def test_expired_token_means_auth_required_and_no_more_dials(tmp_path: Path) -> None:
    settings = settings_for_tests()
    expired = issue_token(settings, "alice", ttl_s=-30)[0]
    with ContractServer(settings, tmp_path / "db.sqlite") as server:
        short = issue_token(settings, "alice", ttl_s=2)[0]  # valid for 1-2 s from now (issued once the server is up)
        async with (running(server, expired, server_errors=True) as refused,
                    running(server, short, server_errors=True) as expiring):
            await until_live(expiring)
            await until_subscribed(expiring, 0)
            for client in (refused, expiring):
                await client.until(lambda c=client: c.state == "auth-required", "auth-required")
                assert client.rt.status["closeCode"] == 4401
                assert len(client.opens()) == 1
            assert [r["reason"] for r in refused.logged("server-error")] == ["Authentication failed: token expired"]
            assert refused.rt.stats["connects"] == 0 and expiring.rt.stats["connects"] == 1
            await quiet_for(lambda: len(refused.opens()) > 1 or len(expiring.opens()) > 1,
                            3 * settings.reconnect_max_ms / 1000, "a dial while auth-required")
            assert refused.rt.get_timer() is None and expiring.rt.get_timer() is None

            # a fresh token (what a new login gives) and a retry: live again, resuming with `since`
            mark_rec = len(expiring.records)
            expiring.token = token_for(settings, "alice")
            expiring.input(expiring.rt.retry_now)
            await until_live(expiring)
            reply = await until_subscribed(expiring, mark_rec)
            assert reply["recovered"] is True and reply["replayed"] == 0


# -- 5 ------------------------------------------------------------------------------------------------


async def test_sigterm_drain_sends_restart_and_1012_and_the_client_redials_inside_the_window(tmp_path: Path) -> None:
    # a window below the backoff floor (250 ms): a delay inside it can only come from the restart policy
    settings = settings_for_tests(restart_window_ms=200)
    db = tmp_path / "db.sqlite"
    first = ContractServer(settings, db).start()
    second: ContractServer | None = None
    try:
        async with running(first, token_for(settings, "alice")) as client:
            await until_live(client)
            await until_subscribed(client, 0)
            client.hold_dials()
            mark_rec, dials = len(client.records), len(client.opens())
            first.sigterm()  # what uvicorn does on SIGTERM: DashboardServer drains the hub first
            await client.until(lambda: client.logged("fail", mark_rec), "the drain to close the socket")
            [hint] = client.logged("restart-hint", mark_rec)
            assert hint["delayMs"] == settings.restart_window_ms
            [fail] = client.logged("fail", mark_rec)
            assert fail["closeCode"] == 1012 and fail["from"] == "live"
            assert 0 <= fail["delayMs"] <= settings.restart_window_ms

            port = first.port
            first.stop()
            second = ContractServer(settings, db, port=port).start()
            client.release_dials()
            await until_live(client)
            [dial] = client.logged("dial", mark_rec)
            assert dial["at"] >= fail["at"] + fail["delayMs"]  # not before the scheduled moment
            assert len(client.opens()) == dials + 1  # one dial, no failures in between
            assert client.rt.stats["reconnects"] == 1 and client.rt.stats["failedAttempts"] == 0
            await until_subscribed(client, mark_rec)
            hellos = [m for m in client.sent() if m.get("action") == "hello"]
            assert len(hellos) == 1 and hellos[0]["reconnectAttempts"] == 1
    finally:
        if first._thread.is_alive():
            first.stop()
        if second is not None:
            second.stop()


# -- 6 ------------------------------------------------------------------------------------------------


async def test_heartbeat_pings_are_answered_so_an_idle_connection_survives(tmp_path: Path) -> None:
    settings = settings_for_tests(heartbeat_interval_ms=200, heartbeat_misses=3)
    with ContractServer(settings, tmp_path / "db.sqlite") as server:
        async with running(server, token_for(settings, "alice")) as client:
            await until_live(client)
            await until_subscribed(client, 0)
            mark_cmd = len(client.commands)

            def sent_since_mark() -> list[dict[str, Any]]:
                return [json_of(c) for _, c in client.commands[mark_cmd:] if c[0] == "send"]

            # 8 answered pings span 8 intervals: well past the server's 3-interval and the client's own deadline
            await client.until(lambda: len(sent_since_mark()) >= 16 or client.rt.stats["drops"], "eight pings answered")
            assert client.state == "live" and client.rt.stats["drops"] == 0 and client.rt.stats["connects"] == 1
            # no other client traffic than the pong and our own round-trip ping, which the server answers
            assert all(m in ({"action": "pong"}, {"action": "ping"}) for m in sent_since_mark())
            assert sent_since_mark().count({"action": "pong"}) >= 8
            assert client.rt.connection.rtt_ms is not None
            assert server.metric("websocket_heartbeat_failures_total") == 0
            assert server.app.state.hub.connection_count == 1

            # control: the same client with its pongs withheld is closed 4000 and then resumes with `since`
            mark_rec = len(client.records)
            client.muted.update(("pong", "ping"))  # a silent client (its own pings would count as alive)
            fail = await client.until(lambda: client.logged("fail", mark_rec), "the server's heartbeat timeout")
            assert fail[0]["closeCode"] == 4000
            client.muted.clear()
            await until_live(client)
            reply = await until_subscribed(client, mark_rec)
            assert reply["recovered"] is True
            assert server.metric("websocket_heartbeat_failures_total") == 1


# -- 7 ------------------------------------------------------------------------------------------------


async def test_a_project_the_user_is_not_a_member_of_is_refused_without_harming_the_connection(tmp_path: Path) -> None:
    settings = settings_for_tests()
    with ContractServer(settings, tmp_path / "db.sqlite") as server:
        async with running(server, token_for(settings, "alice"), server_errors=True) as client:
            await until_live(client)
            await until_subscribed(client, 0)
            foreign = ("stories", "cassini")  # bob's project
            received: list[dict[str, Any]] = []
            client.rt.subscribe("cassini", received.append)
            client.watch(foreign)
            await client.until(lambda: client.entry(foreign).state == "error", "the REST 403")
            assert client.entry(foreign).error.startswith("forbidden")
            [refusal] = await client.until(lambda: client.logged("server-error"), "the forbidden reply")
            assert refusal["projectId"] == "cassini" and refusal["reason"].startswith("forbidden")
            await server.publish("cassini", "story.created", {})
            await server.publish("apollo", "story.created", {})
            await wait_until(lambda: client.events, "the apollo event")
            assert received == []
            # a 403 is not a 401: the connection stays live, nothing is redialled
            assert client.state == "live" and len(client.opens()) == 1 and client.rt.stats["drops"] == 0


# -- 8 ------------------------------------------------------------------------------------------------


async def test_a_user_with_the_maximum_number_of_subscriptions_can_subscribe_and_resume(tmp_path: Path) -> None:
    settings = settings_for_tests(rate_limit_per_s=20.0, rate_limit_burst=60)  # the production defaults
    with ContractServer(settings, tmp_path / "db.sqlite") as server:
        projects = [f"p{i:02d}" for i in range(settings.max_subscriptions)]
        set_members(server.store, "dana", set(projects))
        async with running(server, token_for(settings, "dana"), projects[0]) as client:
            await until_live(client)
            for project in projects[1:]:  # what the page does: one subscription per project of the user
                client.rt.subscribe(project, lambda event: None)
            client.pump()

            def answered(since: int) -> bool:
                return len(client.logged("subscribed", since)) == len(projects) or bool(client.logged("fail", since))

            await client.until(lambda: answered(0), "every subscription answered")
            assert client.logged("fail") == [], client.summary()
            mark_rec = len(client.records)
            client.drop()
            await client.until(lambda: answered(mark_rec), "every subscription resumed")
            assert [r["closeCode"] for r in client.logged("fail", mark_rec)] == [1006], client.summary()
            assert all(r["recovered"] for r in client.logged("subscribed", mark_rec))


# -- 9 ------------------------------------------------------------------------------------------------


async def test_a_stalled_server_is_detected_by_the_client_watchdog_which_redials_and_resumes(tmp_path: Path) -> None:
    settings = settings_for_tests()
    with ContractServer(settings, tmp_path / "db.sqlite") as server:
        async with running(server, token_for(settings, "alice")) as client:
            await until_live(client)
            await until_subscribed(client, 0)
            mark_rec = len(client.records)
            # the server's event loop stops (a stalled process; to the client, a silent half-open socket)
            # until the test has seen the client give up on it
            unfreeze = threading.Event()
            assert server.loop is not None
            server.loop.call_soon_threadsafe(unfreeze.wait, WAIT_S)
            try:
                [fail] = await client.until(lambda: client.logged("fail", mark_rec), "the client's watchdog")
            finally:
                unfreeze.set()
            assert fail["reason"] == "heartbeat timeout" and fail["from"] == "live"
            deadline = settings.heartbeat_interval_ms * settings.heartbeat_misses + settings.heartbeat_interval_ms
            assert fail["sinceLastMessageMs"] >= deadline  # heartbeat x misses + grace, never earlier
            assert [c[2] for _, c in client.commands if c[0] == "close"] == [4101]
            await until_live(client)
            reply = await until_subscribed(client, mark_rec)
            assert reply["recovered"] is True
            await server.publish("apollo", "story.created", {})
            await wait_until(lambda: client.events, "a live event after the resume")
            assert client.rt.stats["duplicates"] == 0 and client.rt.stats["reconnects"] == 1


# -- 10 -----------------------------------------------------------------------------------------------


async def test_a_subscribe_refused_while_the_bus_is_down_is_retried_once_it_is_back(tmp_path: Path) -> None:
    settings = settings_for_tests()
    bus = FlakyBus(settings)
    with ContractServer(settings, tmp_path / "db.sqlite", bus=bus) as server:
        async with running(server, token_for(settings, "alice"), server_errors=True) as client:
            await until_live(client)
            await until_subscribed(client, 0)
            received: list[dict[str, Any]] = []
            bus.down = True  # e.g. Redis unreachable while the user opens another project
            client.input(lambda now: client.rt.subscribe("borealis", received.append, now))
            [refusal] = await client.until(lambda: client.logged("server-error"), "the unavailable reply")
            assert refusal["reason"].startswith("unavailable")
            bus.down = False  # the bus is back; the protocol says "retry later"
            mark_rec = len(client.records)
            # a few reconnect periods: time enough for any reasonable retry schedule of this client
            await wait_until(lambda: client.logged("subscribed", mark_rec), "a retried subscribe",
                             timeout=5 * settings.reconnect_max_ms / 1000, detail=client.summary)
            await server.publish("borealis", "story.created", {})
            await client.until(lambda: received, "the borealis event")
            assert client.state == "live" and client.rt.stats["drops"] == 0


# -- 11 -----------------------------------------------------------------------------------------------


async def test_a_lost_answer_and_a_restart_still_apply_a_queued_change_exactly_once(tmp_path: Path) -> None:
    """The client core's pending queue against the real server (issue 14): the PATCH reaches the server, its answer
    is lost, the server restarts, and the change is sent again with the same id; the server answers it from its
    idempotency record, so the story moved once and one event was published."""
    settings = settings_for_tests()
    db = tmp_path / "db.sqlite"
    first = ContractServer(settings, db).start()
    second: ContractServer | None = None
    try:
        alice = token_for(settings, "alice")
        async with running(first, alice) as client:
            client.input(lambda now: client.rt.enable_pending(None, now))
            records: list[dict[str, Any]] = []
            client.rt.on_mutation(records.append)
            await until_live(client)
            client.watch(STORIES)
            await client.until(lambda: client.settled(STORIES), "the stories")
            story = client.entry(STORIES).data[0]
            target = other_status(story["status"])
            sent: list[tuple[str, int]] = []
            real_fetch = client.fetch

            async def answer_lost(rid: str, method: str, path: str, body: Any = None, headers: Any = None) -> None:
                if method != "PATCH":
                    return await real_fetch(rid, method, path, body, headers)
                hdrs = {**(headers or {}), "Authorization": "Bearer " + alice}
                response = await client.http.request(method, path, headers=hdrs, content=body)
                if not sent:
                    client.input(lambda now: client.rt.fetch_result(rid, 0, "", now))  # applied, answer lost
                else:
                    client.input(lambda now: client.rt.fetch_result(rid, response.status_code, response.text, now))
                sent.append((hdrs["X-Client-Mutation-Id"], response.status_code))

            client.fetch = answer_lost  # type: ignore[method-assign]
            client.hold_dials()
            client.input(lambda now: client.rt.move_story("apollo", story["id"], target, now))
            # the network goes before the answer (and the echo) can come back: only a resend can settle it
            client.input(lambda now: client.rt.network_changed(False, now))
            await wait_until(lambda: sent, "the first PATCH")
            assert sent[0][1] == 200 and client.rt.pending.queue.count == 1  # applied, but kept: no answer
            port = first.port
            first.stop()
            second = ContractServer(settings, db, port=port).start()
            client.release_dials()
            client.input(lambda now: client.rt.network_changed(True, now))
            await wait_until(lambda: len(sent) == 2 and records, "the PATCH sent again and settled", detail=client.summary)
            assert sent[0][0] == sent[1][0] and sent[1][1] == 200
            assert records[-1]["ok"] is True and records[-1]["queued"] is True
            assert client.rt.pending.queue.count == 0
            assert status_of(await rest(second, alice, "GET", "/api/projects/apollo/stories"), story["id"]) == target
            assert status_of(client.entry(STORIES).data, story["id"]) == target
            # the client heard no echo at all (offline, then a new server): it settled on the replayed answer
            assert [e for e in client.events if e.get("eventType") == "story.status.changed"] == []
    finally:
        if first._thread.is_alive():
            first.stop()
        if second is not None:
            second.stop()
