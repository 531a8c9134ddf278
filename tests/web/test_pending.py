"""Pending changes (issue 14): queued while not live or without an answer, shown at once, kept across a reload
(the stored text), sent in order with their original ids when live, retried with backoff, conflicts and refusals
dropped with a record, one sender among tabs, merges between tabs never bring a settled change back."""

import json

from client import pending as pendingmod
from client_harness import Const, Driver

STORIES = [
    {"id": 7, "projectId": "apollo", "title": "Seven", "status": "todo", "assignee": None, "updatedAt": 100},
    {"id": 8, "projectId": "apollo", "title": "Eight", "status": "todo", "assignee": None, "updatedAt": 100},
]
ESCALATIONS = [{"id": 3, "projectId": "apollo", "title": "x", "status": "open", "createdBy": "u", "createdAt": 5, "resolvedAt": None}]
PROJECT = {"id": "apollo", "name": "Apollo", "updatedAt": 1,
           "counts": {"todo": 2, "in_progress": 0, "review": 0, "done": 0, "blocked": 0, "openEscalations": 1}}
CONFIG = {"reconnectBaseMs": 100, "reconnectMaxMs": 800}


def ready(stored=None, live=True, rand=0.5):
    """A runtime with a queue, the apollo views loaded while live, then (unless `live`) the network gone."""
    d = Driver(CONFIG, rand=Const(rand))
    d.rt.enable_pending(stored, d.now)
    writes = []
    d.rt.pending.on_change(lambda text, count: writes.append((text, count)))
    d.connect()
    d.server({"type": "subscribed", "projectId": "apollo", "recovered": False, "replayed": 0, "seq": 0, "epoch": "e1"})
    for key, data in ((("stories", "apollo"), STORIES), (("project", "apollo"), PROJECT), (("escalations", "apollo"), ESCALATIONS)):
        d.rt.watch(key, lambda e: None, d.now)
        for f in d.fetches(d.pump()):
            if f[2] == "GET":
                d.fetch_result(f[1], 200, data)
    d.advance(300)
    d.pump()
    results = []
    d.rt.on_mutation(results.append)
    if not live:
        d.rt.network_changed(False, d.now)
        d.pump()
    return d, writes, results


def status_of(d, sid):
    for story in d.rt.cache.get(("stories", "apollo")).data:
        if story["id"] == sid:
            return story["status"]
    return None


def mutations(cmds):
    return [c for c in cmds if c[0] == "fetch" and c[2] != "GET"]


def go_live(d):
    d.rt.network_changed(True, d.now)
    cmds = d.pump()
    d.opened()
    return cmds + d.connected()


def echo(d, seq, mid, story):
    data = {"storyId": story["id"], "from": "todo", "to": story["status"], "story": story, "clientMutationId": mid}
    return d.server({"type": "event", "eventType": "story.status.changed", "projectId": "apollo", "seq": seq, "epoch": "e1", "data": data})


def test_storage_key_and_verdicts():
    assert pendingmod.storage_key("u-alice") == "dashboard.pending.u-alice"
    assert [pendingmod.verdict(s) for s in (200, 201, 0, 503, 429, 401, 409, 403, 404, 422)] == [
        "ok", "ok", "retry", "retry", "retry", "wait", "conflict", "drop", "drop", "drop"]
    assert [pendingmod.retry_delay(n, 100, 800) for n in (1, 2, 3, 4, 5, 9)] == [100, 200, 400, 800, 800, 800]


def test_offline_changes_are_queued_shown_at_once_and_stored_in_order():
    d, writes, _ = ready(live=False)
    m1 = d.rt.move_story("apollo", 7, "review", d.now)
    m2 = d.rt.move_story("apollo", 8, "done", d.now)
    m3 = d.rt.create_escalation("apollo", "Need a human", d.now)
    assert mutations(d.pump()) == []  # nothing sent while offline
    assert status_of(d, 7) == "review" and status_of(d, 8) == "done"
    escalations = d.rt.cache.get(("escalations", "apollo")).data
    assert escalations[-1]["id"] == m3 and escalations[-1]["pending"] is True
    counts = d.rt.cache.get(("project", "apollo")).data["counts"]
    assert (counts["todo"], counts["review"], counts["done"], counts["openEscalations"]) == (0, 1, 1, 2)
    text, count = writes[-1]
    assert count == 3
    stored = json.loads(text)
    assert [e["id"] for e in stored["entries"]] == [m1, m2, m3]
    assert stored["entries"][0]["body"] == {"status": "review", "expect": {"status": "todo"}}
    assert stored["entries"][2]["body"] == {"title": "Need a human"} and stored["entries"][2]["path"] == "/api/projects/apollo/escalations"


def test_a_reload_rebuilds_the_overlays_from_the_stored_queue():
    d, writes, _ = ready(live=False)
    d.rt.move_story("apollo", 7, "review", d.now)
    d.rt.create_escalation("apollo", "Raised offline", d.now)
    stored = writes[-1][0]
    e, _, _ = ready(stored=stored, live=False)  # a new page with the same localStorage
    assert status_of(e, 7) == "review"
    assert e.rt.pending.queue.count == 2
    assert [x["title"] for x in e.rt.cache.get(("escalations", "apollo")).data] == ["x", "Raised offline"]
    counts = e.rt.cache.get(("project", "apollo")).data["counts"]
    assert (counts["todo"], counts["review"], counts["openEscalations"]) == (1, 1, 2)


def test_back_live_the_queue_is_sent_in_order_with_the_original_ids_one_at_a_time():
    d, writes, results = ready(live=False)
    m1 = d.rt.move_story("apollo", 7, "review", d.now)
    m2 = d.rt.move_story("apollo", 8, "done", d.now)
    cmds = go_live(d)
    (f1,) = mutations(cmds)
    assert f1[2:4] == ("PATCH", "/api/stories/7") and f1[5]["X-Client-Mutation-Id"] == m1
    assert json.loads(f1[4]) == {"status": "review", "expect": {"status": "todo"}}
    story7 = dict(STORIES[0], status="review", updatedAt=200)
    (f2,) = mutations(d.fetch_result(f1[1], 200, story7))
    assert f2[5]["X-Client-Mutation-Id"] == m2
    assert d.rt.pending.queue.ids() == [m2]
    echo(d, 1, m2, dict(STORIES[1], status="done", updatedAt=201))  # the echo before the answer clears the mark
    assert d.rt.pending.queue.count == 0 and writes[-1][1] == 0
    d.fetch_result(f2[1], 200, dict(STORIES[1], status="done", updatedAt=201))
    assert status_of(d, 7) == "review" and status_of(d, 8) == "done"
    assert [(r["id"], r["ok"]) for r in results] == [(m1, True), (m2, True)]
    assert mutations(d.advance(5000)) == []  # each sent once


def test_network_errors_retry_with_backoff_and_the_same_id():
    d, _, results = ready(live=False)
    m1 = d.rt.move_story("apollo", 7, "review", d.now)
    (f,) = mutations(go_live(d))
    sends = [f]
    assert mutations(d.fetch_result(f[1], 0, None)) == []
    for wait in (100, 200, 400, 800, 800):
        assert mutations(d.advance(wait - 1)) == []
        (f,) = mutations(d.advance(1))
        sends.append(f)
        d.fetch_result(f[1], 503 if wait == 400 else 0, None if wait != 400 else {"error": "unavailable"})
    assert {s[5]["X-Client-Mutation-Id"] for s in sends} == {m1}
    assert status_of(d, 7) == "review" and results == []  # still pending, nothing rolled back
    (f,) = mutations(d.advance(800))
    d.fetch_result(f[1], 200, dict(STORIES[0], status="review", updatedAt=300))
    assert d.rt.pending.queue.count == 0 and results[-1]["ok"] is True


def test_a_request_without_an_answer_is_queued_and_sent_again_with_the_same_id():
    d, writes, results = ready(live=True)
    mid = d.rt.move_story("apollo", 7, "review", d.now)
    (f,) = mutations(d.pump())
    d.fetch_result(f[1], 0, None)  # the response was lost (the server may have applied it)
    assert status_of(d, 7) == "review" and results == [] and d.rt.pending.queue.ids() == [mid]
    (again,) = mutations(d.advance(100))
    assert again[5]["X-Client-Mutation-Id"] == mid and again[4] == f[4]
    d.fetch_result(again[1], 200, dict(STORIES[0], status="review", updatedAt=300))  # Idempotent-Replayed
    assert results == [{"id": mid, "kind": "move_story", "ok": True, "status": 200, "error": None, "rolledBack": False,
                        "echoed": False, "queued": True, "current": None,
                        "target": 7, "value": "review"}]
    assert d.rt.pending.queue.count == 0 and writes[-1][1] == 0


def test_a_lost_answer_after_the_echo_is_asked_again_with_the_same_id():
    d, _, results = ready(live=True)
    mid = d.rt.move_story("apollo", 7, "review", d.now)
    (f,) = mutations(d.pump())
    echo(d, 1, mid, dict(STORIES[0], status="review", updatedAt=300))
    d.fetch_result(f[1], 0, None)
    assert results == [] and status_of(d, 7) == "review"
    (again,) = mutations(d.advance(100))  # the server answers it from its record (Idempotent-Replayed)
    assert again[5]["X-Client-Mutation-Id"] == mid
    d.fetch_result(again[1], 200, dict(STORIES[0], status="review", updatedAt=300))
    assert results[-1]["ok"] is True and d.rt.pending.queue.count == 0 and mutations(d.advance(5000)) == []


def test_a_conflict_drops_the_change_and_the_server_story_wins():
    d, _, results = ready(live=False)
    m1 = d.rt.move_story("apollo", 7, "review", d.now)
    m2 = d.rt.move_story("apollo", 8, "done", d.now)
    (f1,) = mutations(go_live(d))
    current = dict(STORIES[0], status="blocked", updatedAt=250)
    (f2,) = mutations(d.fetch_result(f1[1], 409, {"error": "conflict", "message": "moved", "current": current}))
    assert status_of(d, 7) == "blocked"
    assert results[-1]["id"] == m1 and results[-1]["status"] == 409 and results[-1]["current"] == current
    assert results[-1]["rolledBack"] is True
    assert f2[5]["X-Client-Mutation-Id"] == m2  # the next one still goes
    d.fetch_result(f2[1], 404, {"error": "not_found", "message": "no story 8"})
    assert results[-1]["ok"] is False and results[-1]["error"] == "not_found: no story 8"
    assert status_of(d, 8) == "todo" and d.rt.pending.queue.count == 0


def test_a_full_queue_refuses_the_change_and_says_so():
    d, writes, results = ready(live=False)
    d.rt.pending.queue.limit = 2
    d.rt.move_story("apollo", 7, "review", d.now)
    d.rt.move_story("apollo", 8, "review", d.now)
    assert d.rt.move_story("apollo", 8, "done", d.now) is None
    assert results[-1]["refused"] is True and "2 changes" in results[-1]["error"]
    assert status_of(d, 8) == "review" and d.rt.pending.queue.count == 2


def test_live_with_changes_still_waiting_a_new_change_queues_behind_them():
    d, _, _ = ready(live=False)
    m1 = d.rt.move_story("apollo", 7, "review", d.now)
    (f1,) = mutations(go_live(d))
    m2 = d.rt.move_story("apollo", 8, "done", d.now)
    assert mutations(d.pump()) == [] and d.rt.pending.queue.ids() == [m1, m2]
    (f2,) = mutations(d.fetch_result(f1[1], 200, dict(STORIES[0], status="review", updatedAt=300)))
    assert f2[5]["X-Client-Mutation-Id"] == m2


def test_live_a_change_made_before_the_last_one_was_answered_waits_and_a_lost_answer_keeps_it_first():
    d, writes, results = ready(live=True, rand=0.0)
    m1 = d.rt.move_story("apollo", 7, "review", d.now)
    (f1,) = mutations(d.pump())  # live, nothing waiting: sent straight away
    m2 = d.rt.move_story("apollo", 7, "done", d.now)  # the user moves it on before the answer
    assert mutations(d.pump()) == [] and d.rt.pending.queue.ids() == [m2]
    assert mutations(d.fetch_result(f1[1], 0, None)) == []  # the answer to the first is lost
    assert d.rt.pending.queue.ids() == [m1, m2]  # so it goes again, and first: the server sees them as made
    (again,) = mutations(d.advance(100))
    assert again[5]["X-Client-Mutation-Id"] == m1
    (f2,) = mutations(d.fetch_result(again[1], 200, dict(STORIES[0], status="review", updatedAt=300)))
    assert f2[5]["X-Client-Mutation-Id"] == m2 and json.loads(f2[4])["expect"] == {"status": "review"}
    d.fetch_result(f2[1], 200, dict(STORIES[0], status="done", updatedAt=301))
    assert [(r["id"], r["ok"]) for r in results] == [(m1, True), (m2, True)]
    assert status_of(d, 7) == "done" and d.rt.pending.queue.count == 0 and writes[-1][1] == 0


def test_live_a_change_waits_only_for_the_answer_to_the_one_before():
    d, _, results = ready(live=True)
    m1 = d.rt.move_story("apollo", 7, "review", d.now)
    (f1,) = mutations(d.pump())
    m2 = d.rt.move_story("apollo", 8, "done", d.now)
    assert mutations(d.pump()) == []
    (f2,) = mutations(d.fetch_result(f1[1], 200, dict(STORIES[0], status="review", updatedAt=300)))  # at once
    assert f2[5]["X-Client-Mutation-Id"] == m2
    d.fetch_result(f2[1], 200, dict(STORIES[1], status="done", updatedAt=301))
    m3 = d.rt.move_story("apollo", 8, "blocked", d.now)
    (f3,) = mutations(d.pump())  # nothing in flight: straight away again
    assert f3[5]["X-Client-Mutation-Id"] == m3 and d.rt.pending.queue.count == 0
    assert [r["id"] for r in results] == [m1, m2]


def test_only_the_sending_tab_sends_and_a_follower_learns_the_outcome_from_storage():
    leader, lwrites, _ = ready(live=False)
    follower, fwrites, fresults = ready(live=False, rand=0.25)
    follower.rt.pending_sender(False, follower.now)
    mid = follower.rt.move_story("apollo", 7, "review", follower.now)
    leader.rt.pending_stored(fwrites[-1][0], leader.now)  # the storage event in the leader's tab
    assert status_of(leader, 7) == "review" and leader.rt.pending.queue.ids() == [mid]
    assert mutations(go_live(follower)) == []  # live, but not its turn
    (f,) = mutations(go_live(leader))
    assert f[5]["X-Client-Mutation-Id"] == mid
    current = dict(STORIES[0], status="done", updatedAt=400)
    leader.fetch_result(f[1], 409, {"error": "conflict", "current": current})
    follower.rt.pending_stored(lwrites[-1][0], follower.now)
    assert follower.rt.pending.queue.count == 0 and status_of(follower, 7) == "done"
    assert fresults[-1]["status"] == 409 and fresults[-1]["current"] == current


def test_merging_two_tabs_keeps_both_queues_and_never_revives_a_settled_change():
    a = pendingmod.PendingQueue()
    b = pendingmod.PendingQueue()
    e1 = {"id": "a-1", "kind": "move_story", "projectId": "p", "method": "PATCH", "path": "/api/stories/1", "body": {"status": "done"}, "at": 10}
    e2 = {"id": "b-1", "kind": "resolve_escalation", "projectId": "p", "method": "POST", "path": "/api/escalations/2/resolve", "body": None, "at": 20}
    e3 = {"id": "a-2", "kind": "move_story", "projectId": "p", "method": "PATCH", "path": "/api/stories/3", "body": {"status": "todo"}, "at": 30}
    a.add(e1)
    b.add(e2)
    a.add(e3)
    added, removed, differs = a.merge(b.dumps())
    assert [e["id"] for e in added] == ["b-1"] and removed == [] and differs
    assert a.ids() == ["a-1", "b-1", "a-2"]
    b.merge(a.dumps())
    b.remove("a-1", 200)  # b sends the head
    a.add(dict(e1, id="a-3", at=40))  # meanwhile a adds one: both wrote at once
    _, removed, differs = a.merge(b.dumps())
    assert [r[0]["id"] for r in removed] == ["a-1"] and a.ids() == ["b-1", "a-2", "a-3"] and differs
    b.merge(a.dumps())
    assert b.ids() == a.ids()
    assert a.merge(b.dumps())[2] is False  # converged: nothing to write back
    assert pendingmod.parse("not json") == ([], []) and pendingmod.parse(None) == (None, None)
    assert pendingmod.parse('{"v":1,"entries":[{"id":1},"x"],"done":[[1]]}') == ([], [])


def test_sign_out_discards_the_queue_and_a_removed_key_discards_it_in_other_tabs():
    d, writes, results = ready(live=False)
    d.rt.move_story("apollo", 7, "review", d.now)
    other, _, _ = ready(stored=writes[-1][0], live=False)
    d.rt.discard_pending(d.now)
    assert status_of(d, 7) == "todo" and writes[-1][1] == 0 and results == []
    other.rt.pending_stored(None, other.now)  # the key was removed
    assert status_of(other, 7) == "todo" and other.rt.pending.queue.count == 0


def test_without_a_queue_nothing_changes():
    d = Driver({}, rand=Const(0.5))
    d.connect()
    d.rt.move_story("apollo", 7, "done", d.now)
    (f,) = mutations(d.pump())
    assert json.loads(f[4]) == {"status": "done"}


def test_tabs_with_long_histories_do_not_write_back_and_forth():
    a = pendingmod.PendingQueue()
    b = pendingmod.PendingQueue()
    for i in range(250):
        a.remove("a-%d" % i, 200)
        b.remove("b-%d" % i, 200)
    assert len(a.done) == pendingmod.DONE_KEPT
    for _ in range(3):
        assert a.merge(b.dumps())[2] is False and b.merge(a.dumps())[2] is False
