"""The browser facts the shared socket is built on (docs/browser.md, "Tabs"), checked in this Chromium.

Plain JavaScript in three same-origin pages of one profile (a CDP-started Chromium, so a page can be frozen
with `Page.setWebLifecycleState`). If Chromium changes one of these, this file says which.
"""

import pytest
from playwright.sync_api import expect

from .harness import wait_until

PROBE = """
() => {
  window.seen = [];
  const mark = (what) => window.seen.push(what);
  window.mark = mark;
  window.bc = new BroadcastChannel("primitives");
  bc.onmessage = (e) => { mark("bc:" + e.data); if (e.data === "ping") bc.postMessage("pong:" + name + ":" + window.ticks); };
  window.ticks = 0;
  setInterval(() => { window.ticks += 1; }, 50);
  document.addEventListener("resume", () => mark("resume"));
  window.release = {};
  window.take = (id, options) => {
    navigator.locks.request("primitive-lock", Object.assign({mode: "exclusive"}, options || {}), () => {
      mark("granted:" + id);
      return new Promise((resolve) => { window.release[id] = resolve; });
    }).then(() => mark("released:" + id), (err) => mark("rejected:" + id + ":" + err.name));
  };
  window.takeAbortable = (id) => {
    const controller = new AbortController();
    window.release["abort:" + id] = () => controller.abort();
    window.take(id, {signal: controller.signal});
  };
}
"""


def seen(page):
    return page.evaluate("window.seen")


def until_seen(page, entry):
    page.wait_for_function("(e) => window.seen.includes(e)", arg=entry, polling=50)


@pytest.fixture
def pages(cdp_browser, server):
    context = cdp_browser.contexts[0]
    out = []
    for name in ("A", "B", "C"):
        page = context.new_page()
        page.goto(server.url + "/healthz")  # any same-origin page: 127.0.0.1 is a secure context
        page.evaluate(PROBE)
        page.evaluate("(n) => { window.name = n; }", name)
        out.append(page)
    return context, out


def test_broadcast_channel_reaches_every_other_tab_in_order_never_the_sender(pages):
    _, (a, b, c) = pages
    a.evaluate("bc.postMessage('one'); bc.postMessage('two')")
    for page in (b, c):
        until_seen(page, "bc:two")
        assert [e for e in seen(page) if e.startswith("bc:")] == ["bc:one", "bc:two"]
    assert seen(a) == []


def test_a_lock_is_exclusive_queued_in_order_and_released_when_its_page_closes(pages):
    _, (a, b, c) = pages
    a.evaluate("take('a')")
    until_seen(a, "granted:a")
    query = "navigator.locks.query().then(q => [q.held.length, q.pending.length])"
    # the queue's order is the order the browser's lock manager hears the requests in, and two pages' requests
    # travel on two pipes: `c` asks only once `b`'s request is known to wait (else `c` may come first)
    b.evaluate("take('b')")
    wait_until(lambda: a.evaluate(query) == [1, 1], 10, message="one lock held, one request waiting")
    c.evaluate("take('c')")
    wait_until(lambda: a.evaluate(query) == [1, 2], 10, message="one lock held, two requests waiting")
    a.close()  # the lock goes to the first waiter (a message posted on `pagehide` may or may not arrive)
    until_seen(b, "granted:b")
    assert "granted:c" not in seen(c)
    b.evaluate("release.b()")
    until_seen(c, "granted:c")


def test_a_frozen_page_keeps_its_lock_steal_takes_it_and_the_holder_learns_on_resume(pages):
    context, (a, b, c) = pages
    a.evaluate("take('a')")
    until_seen(a, "granted:a")
    b.evaluate("take('b-wait')")
    cdp = context.new_cdp_session(a)
    ticks = a.evaluate("window.ticks")
    cdp.send("Page.setWebLifecycleState", {"state": "frozen"})
    b.wait_for_timeout(1000)  # a window in which a released lock would have been granted
    assert "granted:b-wait" not in seen(b)

    # a frozen page still runs BroadcastChannel handlers (and can post), but not its timers (50 ms interval)
    c.evaluate("bc.postMessage('ping')")
    c.wait_for_function("window.seen.some(e => e.startsWith('bc:pong:A:'))", polling=50)
    pong = [e for e in seen(c) if e.startswith("bc:pong:A:")][0]
    assert int(pong.rsplit(":", 1)[1]) - ticks <= 1

    # `steal` and `signal` cannot be combined
    error = b.evaluate("navigator.locks.request('primitive-lock', {steal: true, signal: new AbortController().signal}, () => 1).then(() => 'ok', (e) => e.name)")
    assert error == "NotSupportedError"
    b.evaluate("take('b-steal', {steal: true})")
    until_seen(b, "granted:b-steal")
    assert "granted:b-wait" not in seen(b)  # the queued request is still queued: the stealer must abort it

    cdp.send("Page.setWebLifecycleState", {"state": "active"})
    until_seen(a, "rejected:a:AbortError")
    events = seen(a)
    assert events.index("resume") < events.index("rejected:a:AbortError")
    assert "bc:ping" in events and events.index("bc:ping") < events.index("resume")  # ran while frozen

    b.evaluate("release['b-steal']()")
    until_seen(b, "granted:b-wait")  # ...or it is granted as soon as the stolen lock is given back


def test_aborting_a_waiting_request_rejects_it_with_abort_error(pages):
    _, (a, b, _) = pages
    a.evaluate("take('a')")
    until_seen(a, "granted:a")
    b.evaluate("takeAbortable('b')")
    b.evaluate("release['abort:b']()")
    until_seen(b, "rejected:b:AbortError")
    expect(b.locator("body")).to_be_visible()
