"""`dashboard.v2` on the client core: the subprotocols offered, batches unpacked before anything else sees
them (handlers get plain events, seq checks per event), cache invalidations made once per batch."""

from client import wire
from client.cache import QueryCache
from client_harness import Const, Driver


class CountingCache(QueryCache):
    """The real cache, recording every `invalidate` call."""

    __slots__ = ("marked",)

    def invalidate(self, prefix, now, before=None):
        self.marked.append(tuple(prefix))
        return QueryCache.invalidate(self, prefix, now, before=before)


def ev(pid, seq, event_type="story.status.changed", epoch="e1", data=None):
    return {"type": "event", "eventType": event_type, "projectId": pid, "seq": seq, "epoch": epoch, "timestamp": 1,
            "data": data or {}}


def batch(*events):
    return {"type": "batch", "events": list(events)}


def live(pids=("apollo",)):
    d = Driver({}, rand=Const(0.5))
    events = []
    for pid in pids:
        d.rt.subscribe(pid, events.append)
    d.connect()
    for pid in pids:
        d.server({"type": "subscribed", "projectId": pid, "recovered": False, "replayed": 0, "seq": 10, "epoch": "e1"})
    return d, events


def test_the_client_offers_v2_then_v1_then_its_token():
    d = Driver({}, rand=Const(0.5))
    [dial] = d.opens(d.start())
    assert dial[3] == ["dashboard.v2", "dashboard.v1", "bearer." + d.token]
    assert wire.protocols("t") == ["dashboard.v2", "dashboard.v1", "bearer.t"]


def test_a_batch_reaches_handlers_as_the_plain_events_it_holds_in_order():
    d, events = live(("apollo", "zeus"))
    d.server(batch(ev("apollo", 11), ev("zeus", 11, "project.updated"), ev("apollo", 12, "project.updated")))
    assert [(e["projectId"], e["seq"], e["type"]) for e in events] == [
        ("apollo", 11, "event"), ("zeus", 11, "event"), ("apollo", 12, "event")]
    assert d.rt.stats["messages"] >= 1 and d.rt.stats["badFrames"] == 0


def test_duplicates_and_gaps_inside_a_batch_are_judged_per_event():
    d, events = live()
    d.server(batch(ev("apollo", 11), ev("apollo", 11), ev("apollo", 13, "project.updated")))
    assert [e["seq"] for e in events] == [11, 13]
    assert d.rt.stats["duplicates"] == 1 and d.rt.stats["gaps"] == 1


def test_a_batchs_invalidations_are_made_once_per_key():
    d = Driver({}, rand=Const(0.5))
    cache = d.rt.cache = CountingCache(d.rt._request_query, 250, report=d.rt._report)
    cache.marked = []
    events = []
    d.rt.subscribe("apollo", events.append)
    d.connect()
    d.server({"type": "subscribed", "projectId": "apollo", "recovered": False, "replayed": 0, "seq": 10, "epoch": "e1"})
    del cache.marked[:]
    # 20 events without complete payloads: each one alone would invalidate its keys again
    d.server(batch(*[ev("apollo", 10 + n, "story.created" if n % 2 else "project.updated") for n in range(1, 21)]))
    assert len(events) == 20
    assert sorted(cache.marked) == sorted(set(cache.marked))  # each key once for the whole batch
    assert set(cache.marked) == {("stories", "apollo"), ("project", "apollo"), ("projects",)}
    del cache.marked[:]
    d.server(ev("apollo", 31, "project.updated"))
    d.server(ev("apollo", 32, "project.updated"))
    assert len(cache.marked) == 4  # outside a batch: per event, as before


def test_a_malformed_batch_is_a_bad_frame_and_the_connection_lives_on():
    d, events = live()
    for bad in ({"type": "batch"}, {"type": "batch", "events": []}, {"type": "batch", "events": [1]},
                {"type": "batch", "events": [{"type": "subscribed"}]}):
        d.server(bad)
    assert d.rt.stats["badFrames"] == 4 and d.state == "live" and events == []
    d.server(ev("apollo", 11))
    assert [e["seq"] for e in events] == [11]


def test_a_batch_before_connected_is_ignored():
    d = Driver({}, rand=Const(0.5))
    events = []
    d.rt.subscribe("apollo", events.append)
    d.start()
    d.opened()
    d.server(batch(ev("apollo", 1)))
    assert events == []
