"""Optimistic mutations: overlay at once, mutation-id header, rollback on error, no flicker from
the echo event or from a refetch that predates the mutation, counts kept until fresh data lands."""

import json

from client_harness import Const, Driver

STORIES = [{"id": 7, "projectId": "apollo", "title": "t", "status": "todo", "assignee": None, "updatedAt": 100}]
PROJECT = {"id": "apollo", "name": "Apollo", "updatedAt": 1, "counts": {"todo": 1, "in_progress": 0, "review": 0, "done": 0, "blocked": 0, "openEscalations": 0}}


def ready():
    d = Driver({}, rand=Const(0.5))
    d.connect()
    d.server({"type": "subscribed", "projectId": "apollo", "recovered": False, "replayed": 0, "seq": 0, "epoch": "e1"})
    views = {}
    for key, data in ((("stories", "apollo"), STORIES), (("project", "apollo"), PROJECT), (("escalations", "apollo"), [])):
        views[key] = []
        d.rt.watch(key, lambda e, k=key: views[k].append(e.data), d.now)
        (f,) = d.fetches(d.pump())
        d.fetch_result(f[1], 200, data)
    d.advance(300)
    d.pump()
    results = []
    d.rt.on_mutation(results.append)
    return d, views, results


def story_status(d):
    return d.rt.cache.get(("stories", "apollo")).data[0]["status"]


def echo(d, seq, mid, story):
    data = {"storyId": story["id"], "from": "todo", "to": story["status"], "story": story, "clientMutationId": mid}
    return d.server({"type": "event", "eventType": "story.status.changed", "projectId": "apollo", "seq": seq, "epoch": "e1", "data": data})


def test_move_story_is_optimistic_and_sends_the_mutation_id():
    d, views, _ = ready()
    mid = d.rt.move_story("apollo", 7, "done", d.now)
    (f,) = d.fetches(d.pump())
    assert f[2:5] == ("PATCH", "/api/stories/7", json.dumps({"status": "done"}, separators=(",", ":")))
    assert f[5]["X-Client-Mutation-Id"] == mid and f[5]["Content-Type"] == "application/json"
    assert "Authorization" not in f[5]  # the adapter adds it
    assert story_status(d) == "done"
    assert d.rt.cache.get(("project", "apollo")).data["counts"]["done"] == 1


def test_error_rolls_back_then_invalidates():
    d, views, results = ready()
    mid = d.rt.move_story("apollo", 7, "done", d.now)
    (f,) = d.fetches(d.pump())
    d.fetch_result(f[1], 422, {"error": "invalid", "message": "bad status"})
    assert story_status(d) == "todo"
    assert d.rt.cache.get(("project", "apollo")).data["counts"] == PROJECT["counts"]
    assert results == [{"id": mid, "kind": "move_story", "ok": False, "status": 422, "error": "invalid: bad status", "rolledBack": True, "echoed": False}]
    paths = sorted(c[3] for c in d.fetches(d.advance(250)))
    assert paths == ["/api/projects/apollo", "/api/projects/apollo/stories"]


def test_network_error_rolls_back():
    d, _, results = ready()
    d.rt.move_story("apollo", 7, "done", d.now)
    (f,) = d.fetches(d.pump())
    d.fetch_result(f[1], 0, None)
    assert story_status(d) == "todo" and results[0]["error"] == "network error"


def test_own_echo_and_stale_refetch_do_not_flicker():
    d, views, results = ready()
    d.rt.cache.fetch(("stories", "apollo"), d.now)  # a refetch issued before the mutation
    (old_fetch,) = d.fetches(d.pump())
    mid = d.rt.move_story("apollo", 7, "done", d.now)
    (patch,) = d.fetches(d.pump())
    done = dict(STORIES[0], status="done", updatedAt=200)
    echo(d, 1, mid, done)
    assert d.rt.stats["echoes"] == 1
    d.fetch_result(old_fetch[1], 200, STORIES)  # the pre-mutation snapshot lands late
    d.fetch_result(patch[1], 200, done)
    statuses = [v[0]["status"] for v in views[("stories", "apollo")] if v]
    first_done = statuses.index("done")
    assert set(statuses[:first_done]) == {"todo"} and set(statuses[first_done:]) == {"done"}  # never back
    assert results[0]["ok"] is True and results[0]["echoed"] is True and results[0]["rolledBack"] is False


def test_counts_overlay_stays_until_fresh_project_data_lands():
    d, views, _ = ready()
    d.rt.move_story("apollo", 7, "done", d.now)
    (patch,) = d.fetches(d.pump())
    d.fetch_result(patch[1], 200, dict(STORIES[0], status="done", updatedAt=200))
    assert d.rt.cache.get(("project", "apollo")).data["counts"]["done"] == 1  # no flicker back to 0
    refetch = [f for f in d.fetches(d.advance(250)) if f[3] == "/api/projects/apollo"][0]
    fresh = dict(PROJECT, counts=dict(PROJECT["counts"], todo=0, done=1), updatedAt=2)
    d.fetch_result(refetch[1], 200, fresh)
    assert d.rt.cache.get(("project", "apollo")).data["counts"]["done"] == 1  # from the server now
    counts_seen = [v["counts"]["done"] for v in views[("project", "apollo")] if v]
    assert counts_seen[0] == 0 and set(counts_seen[1:]) == {1}


def test_create_escalation_placeholder_is_replaced_by_the_echo_without_duplicates():
    d, views, results = ready()
    mid = d.rt.create_escalation("apollo", "Need help", d.now)
    (post,) = d.fetches(d.pump())
    assert post[2:4] == ("POST", "/api/projects/apollo/escalations")
    esc = d.rt.cache.get(("escalations", "apollo")).data
    assert len(esc) == 1 and esc[0]["pending"] is True and esc[0]["title"] == "Need help"
    real = {"id": 31, "projectId": "apollo", "title": "Need help", "status": "open", "createdBy": "u-alice", "createdAt": 500, "resolvedAt": None}
    d.server({"type": "event", "eventType": "escalation.created", "projectId": "apollo", "seq": 1, "epoch": "e1", "data": {"escalation": real, "clientMutationId": mid}})
    assert d.rt.cache.get(("escalations", "apollo")).data == [real]
    d.fetch_result(post[1], 201, real)
    assert d.rt.cache.get(("escalations", "apollo")).data == [real]
    assert results[0]["ok"] is True and results[0]["status"] == 201


def test_resolve_escalation_and_rollback():
    d, views, results = ready()
    esc = {"id": 3, "projectId": "apollo", "title": "x", "status": "open", "createdBy": "u", "createdAt": 5, "resolvedAt": None}
    d.rt.cache.on_response(("escalations", "apollo"), d.rt.cache.get(("escalations", "apollo")).issued, True, [esc], None, d.now)
    d.rt.cache.fetch(("escalations", "apollo"), d.now)
    (f,) = d.fetches(d.pump())
    d.fetch_result(f[1], 200, [esc])
    d.rt.resolve_escalation("apollo", 3, d.now)
    (post,) = d.fetches(d.pump())
    assert post[2:5] == ("POST", "/api/escalations/3/resolve", None)
    assert d.rt.cache.get(("escalations", "apollo")).data[0]["status"] == "resolved"
    d.fetch_result(post[1], 403, {"error": "forbidden", "message": "not a member"})
    assert d.rt.cache.get(("escalations", "apollo")).data[0]["status"] == "open"
    assert results[0]["rolledBack"] is True


def test_mutation_ids_are_unique_and_prefixed_per_page():
    d, _, _ = ready()
    a = d.rt.move_story("apollo", 7, "done", d.now)
    b = d.rt.move_story("apollo", 7, "todo", d.now)
    assert a != b and a.split("-")[0] == b.split("-")[0] and a.startswith("m")
    other = Driver({}, rand=Const(0.25))
    assert other.rt.move_story("apollo", 7, "done", 0).split("-")[0] != a.split("-")[0]


def test_a_401_on_a_mutation_rolls_back_and_asks_for_sign_in():
    d, _, results = ready()
    d.rt.move_story("apollo", 7, "done", d.now)
    (f,) = d.fetches(d.pump())
    d.fetch_result(f[1], 401, {"error": "unauthorized", "message": "expired"})
    assert story_status(d) == "todo" and d.state == "auth-required"
