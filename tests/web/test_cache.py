"""`client.cache.QueryCache`: reducer states, coalesced invalidation, active-only refetch,
stale-response ordering, event patches during a fetch, and the Runtime's event -> keys map."""

from client import patches
from client.cache import ERROR, IDLE, LOADING, SUCCESS, QueryCache, key_path, quote
from client_harness import Driver


class Rig:
    def __init__(self, coalesce_ms=250):
        self.requests = []
        self.cache = QueryCache(lambda key, path, seq, now: self.requests.append((key, path, seq)), coalesce_ms)
        self.seen = []

    def watch(self, key, now=0):
        return self.cache.watch(key, lambda e: self.seen.append((e.key, e.state, e.stale, e.fetching, e.data)), now)

    def respond(self, index, data, ok=True, now=0):
        key, _, seq = self.requests[index]
        return self.cache.on_response(key, seq, ok, data if ok else None, None if ok else data, now)

    def run(self, until):
        while self.cache.get_timer() is not None and self.cache.get_timer() <= until:
            self.cache.handle_timer(self.cache.get_timer())


def test_paths_for_keys():
    assert key_path(("projects",)) == "/api/projects"
    assert key_path(("project", "apollo")) == "/api/projects/apollo"
    assert key_path(("stories", "apollo")) == "/api/projects/apollo/stories"
    assert key_path(("escalations", "a b/c")) == "/api/projects/a%20b%2Fc/escalations"
    assert key_path(("other",)) is None
    assert quote("é") == "%C3%A9"


def test_watch_fetches_and_reports_each_state_once():
    rig = Rig()
    rig.watch(("stories", "apollo"))
    assert rig.requests == [(("stories", "apollo"), "/api/projects/apollo/stories", 1)]
    rig.respond(0, [{"id": 1}])
    assert rig.seen == [
        (("stories", "apollo"), IDLE, False, False, None),
        (("stories", "apollo"), LOADING, False, True, None),
        (("stories", "apollo"), SUCCESS, False, False, [{"id": 1}]),
    ]


def test_a_second_watcher_reuses_fresh_data():
    rig = Rig()
    rig.watch(("projects",))
    rig.respond(0, [])
    rig.watch(("projects",))
    assert len(rig.requests) == 1


def test_error_keeps_the_previous_data():
    rig = Rig()
    rig.watch(("projects",))
    rig.respond(0, [{"id": "a"}])
    rig.cache.invalidate(("projects",), 0)
    rig.run(250)
    rig.respond(1, "HTTP 500", ok=False)
    entry = rig.cache.get(("projects",))
    assert entry.state == ERROR and entry.data == [{"id": "a"}] and entry.error == "HTTP 500"


def test_a_burst_of_invalidations_is_one_refetch_per_key():
    rig = Rig()
    rig.watch(("stories", "apollo"))
    rig.watch(("project", "apollo"))
    rig.respond(0, [])
    rig.respond(1, {})
    for i in range(100):
        rig.cache.invalidate(("stories", "apollo"), i)
        rig.cache.invalidate(("project", "apollo"), i)
    assert len(rig.requests) == 2
    assert rig.cache.get_timer() == 250  # trailing flush 250 ms after the first invalidation
    rig.run(249)
    assert len(rig.requests) == 2
    rig.run(250)
    assert sorted(r[0] for r in rig.requests[2:]) == [("project", "apollo"), ("stories", "apollo")]
    assert rig.cache.get_timer() is None and rig.cache.refetches == 2


def test_only_watched_keys_are_refetched_unwatched_ones_turn_stale():
    rig = Rig()
    stop = rig.watch(("stories", "apollo"))
    rig.watch(("stories", "zeus"))
    rig.respond(0, [])
    rig.respond(1, [])
    stop()
    rig.cache.invalidate(("stories",), 0)  # prefix: both
    rig.run(250)
    assert [r[0] for r in rig.requests[2:]] == [("stories", "zeus")]
    assert rig.cache.get(("stories", "apollo")).stale is True
    rig.watch(("stories", "apollo"), now=1000)  # watching again fetches the stale key
    assert rig.requests[-1][0] == ("stories", "apollo")


def test_an_older_response_never_overwrites_newer_data():
    rig = Rig()
    rig.watch(("stories", "apollo"))
    rig.cache.fetch(("stories", "apollo"), 10)  # a second fetch while the first is in flight
    assert rig.respond(1, [{"id": 1, "status": "done"}]) is True
    assert rig.respond(0, [{"id": 1, "status": "todo"}]) is False
    entry = rig.cache.get(("stories", "apollo"))
    assert entry.data == [{"id": 1, "status": "done"}] and entry.fetching is False


def test_an_invalidation_during_a_fetch_keeps_the_entry_stale_and_refetches():
    rig = Rig()
    rig.watch(("projects",))
    rig.cache.invalidate(("projects",), 5)  # the fetch in flight predates the change
    rig.respond(0, [{"id": "a", "v": 1}])
    assert rig.cache.get(("projects",)).stale is True
    rig.run(255)
    assert len(rig.requests) == 2
    rig.respond(1, [{"id": "a", "v": 2}])
    assert rig.cache.get(("projects",)).stale is False


def test_events_during_a_fetch_are_replayed_onto_its_response():
    rig = Rig()
    rig.watch(("stories", "p"))
    rig.respond(0, [{"id": 1, "status": "todo", "updatedAt": 1}])
    rig.cache.fetch(("stories", "p"), 0)
    # the event arrives while the refetch is in flight; the response predates it
    rig.cache.apply(("stories", "p"), patches.upsert({"id": 1, "status": "done", "updatedAt": 5}), 0)
    rig.respond(1, [{"id": 1, "status": "todo", "updatedAt": 1}, {"id": 2, "status": "todo", "updatedAt": 2}])
    data = rig.cache.get(("stories", "p")).data
    assert data == [{"id": 1, "status": "done", "updatedAt": 5}, {"id": 2, "status": "todo", "updatedAt": 2}]


def test_patch_versions_never_go_backwards():
    old = [{"id": 1, "status": "done", "updatedAt": 9}]
    assert patches.upsert({"id": 1, "status": "todo", "updatedAt": 3})(old) == old
    assert patches.upsert({"id": 2, "updatedAt": 3})(old)[-1] == {"id": 2, "updatedAt": 3}
    assert patches.replace({"id": "p", "updatedAt": 1})({"id": "p", "updatedAt": 2}) == {"id": "p", "updatedAt": 2}
    open_esc = {"id": 5, "status": "open", "createdAt": 10}
    resolved = {"id": 5, "status": "resolved", "createdAt": 10, "resolvedAt": 20}
    assert patches.upsert(open_esc)([resolved]) == [resolved]


def test_listener_only_hears_real_changes():
    rig = Rig()
    rig.watch(("stories", "p"))
    rig.respond(0, [{"id": 1, "status": "todo"}])
    before = len(rig.seen)
    rig.cache.apply(("stories", "p"), patches.upsert({"id": 1, "status": "todo"}), 0)  # same data
    assert len(rig.seen) == before


# ---------------------------------------------------------------- through the Runtime
def live(d):
    d.rt.subscribe("apollo", lambda e: None)
    d.connect()
    d.server({"type": "subscribed", "projectId": "apollo", "recovered": False, "replayed": 0, "seq": 0, "epoch": "e1"})
    d.advance(10)


def load(d, key, data):
    d.rt.watch(key, lambda e: None, d.now)
    (f,) = d.fetches(d.pump())
    d.fetch_result(f[1], 200, data)


def loaded_driver():
    d = Driver({})
    live(d)
    load(d, ("projects",), [{"id": "apollo"}])
    load(d, ("project", "apollo"), {"id": "apollo"})
    load(d, ("stories", "apollo"), [])
    load(d, ("escalations", "apollo"), [])
    return d


def event(seq, event_type="story.status.changed", data=None):
    return {"type": "event", "eventType": event_type, "projectId": "apollo", "seq": seq, "epoch": "e1", "data": data or {}}


def test_event_map_and_hundred_events_one_refetch_per_key():
    d = loaded_driver()
    for seq in range(1, 101):  # payloads without the whole object: the seed's event → keys map
        d.server(event(seq))
    cmds = d.advance(250)
    assert sorted(f[3] for f in d.fetches(cmds)) == ["/api/projects/apollo", "/api/projects/apollo/stories"]
    d.server(event(101, "project.updated"))
    assert sorted(f[3] for f in d.fetches(d.advance(250))) == ["/api/projects", "/api/projects/apollo"]
    d.server(event(102, "escalation.created"))
    assert [f[3] for f in d.fetches(d.advance(250))] == ["/api/projects/apollo/escalations"]


def test_complete_payloads_in_sequence_are_applied_without_refetching_their_keys():
    d = loaded_driver()
    for seq in range(1, 101):
        story = {"id": seq, "projectId": "apollo", "status": "todo", "updatedAt": seq}
        d.server(event(seq, data={"story": story}))
    cmds = d.advance(250)
    assert [f[3] for f in d.fetches(cmds)] == ["/api/projects/apollo"]  # counts are not in a story payload
    assert len(d.rt.cache.get(("stories", "apollo")).data) == 100
    d.server(event(101, "project.updated", {"project": {"id": "apollo", "name": "A2"}}))
    assert d.fetches(d.advance(250)) == []
    assert d.rt.cache.get(("projects",)).data == [{"id": "apollo", "name": "A2"}]
    d.server(event(102, "escalation.created", {"escalation": {"id": 9, "status": "open", "createdAt": 1}}))
    assert d.fetches(d.advance(250)) == []
    assert d.rt.cache.get(("escalations", "apollo")).data == [{"id": 9, "status": "open", "createdAt": 1}]


def test_a_gap_refetches_even_when_the_payload_is_complete():
    d = loaded_driver()
    d.server(event(1, data={"story": {"id": 1, "status": "todo", "updatedAt": 1}}))
    d.advance(250)
    d.server(event(5, data={"story": {"id": 2, "status": "done", "updatedAt": 5}}))  # 2..4 were missed
    paths = [f[3] for f in d.fetches(d.advance(250))]
    assert "/api/projects/apollo/stories" in paths


def test_fetch_errors_become_error_state_and_are_retried_when_the_link_returns():
    d = Driver({})
    d.rt.watch(("projects",), lambda e: None, 0)
    (f,) = d.fetches(d.pump())
    d.fetch_result(f[1], 0, None)
    entry = d.rt.cache.get(("projects",))
    assert entry.state == ERROR and entry.error == "network error"
    cmds = d.connect()
    (f2,) = d.fetches(cmds)
    d.fetch_result(f2[1], 200, "not json")
    assert d.rt.cache.get(("projects",)).error == "invalid JSON"
    d.fetch_result(f2[1], 200, [])  # the same rid twice: ignored
    assert d.rt.cache.get(("projects",)).state == ERROR


def test_a_revoked_project_refetches_the_project_list_and_its_own_keys():
    d = loaded_driver()
    d.server({"type": "error", "error": "forbidden", "projectId": "apollo", "message": "no longer a member of this project"})
    paths = sorted(f[3] for f in d.fetches(d.advance(250)))
    assert paths == ["/api/projects", "/api/projects/apollo", "/api/projects/apollo/escalations", "/api/projects/apollo/stories"]
    d.server({"type": "error", "error": "forbidden", "projectId": "hermes", "message": "not a member"})  # never subscribed
    assert d.fetches(d.advance(250)) == []
