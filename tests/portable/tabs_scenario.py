"""Portable scenario for the tabs protocol: three tabs share one socket through `client.tabs`, then the
leader closes, a leader freezes and wakes up, the server dies and comes back. Prints a deterministic
trace; test_portable.py requires it to be identical on CPython, MicroPython and Pyodide."""

from scenario import canon
from tabs_world import World


def summary(world, emit, label):
    emit("t=" + canon(world.now) + " " + label)
    for tab in world.tabs:
        if tab.gone:
            continue
        st = tab.status()
        applied = [[pid, epoch, seq] for pid, epoch, seq in tab.applied]
        stories = {}
        for pid in sorted(tab.unsubs):
            data = tab.stories(pid)
            stories[pid] = None if data is None else [s["status"] for s in data]
        emit("  " + tab.name + " " + canon([st["role"], st["state"], st["attempt"], st["nextRetryAt"], len(tab.reads), applied, stories]))
        emit("  " + tab.name + " stats " + canon([tab.tabs.stats, tab.rt.stats["recovered"], tab.rt.stats["unrecovered"], tab.rt.stats["duplicates"], tab.rt.stats["gaps"]]))
    emit("  server " + canon([world.server.active(), world.server.accepted, world.server.subscribes]))


def run(emit):
    w = World(trace=emit)
    summary(w, emit, "tabs: three tabs, one socket")
    a = w.open_tab("ta", watch=("apollo",), seed=3)
    b = w.open_tab("tb", watch=("apollo", "zeus"), seed=4)
    c = w.open_tab("tc", watch=("apollo", "hermes"), seed=5)
    w.advance(1000)
    for pid in ("apollo", "zeus", "hermes"):
        w.server.publish(pid, 1, "review")
    w.settle()
    summary(w, emit, "tabs: events reach every tab")
    b.tabs.visibility_changed(False, w.now)
    b.pump()
    w.settle()
    emit("  leader hidden=" + canon(a.rt.status["hidden"]))
    b.tabs.visibility_changed(True, w.now)
    b.pump()
    w.close_tab(a)
    for pid in ("apollo", "zeus", "hermes"):
        w.server.publish(pid, 2, "done")
    w.advance(1500)
    summary(w, emit, "tabs: leader closed, change during the hand-over")
    d = w.open_tab("td", watch=("apollo",), seed=6)
    w.advance(600)
    w.freeze(b)
    w.server.publish("apollo", 1, "blocked")
    w.advance(3500)
    summary(w, emit, "tabs: leader frozen, taken over")
    w.unfreeze(b)
    w.advance(1000)
    summary(w, emit, "tabs: old leader awake, follows")
    w.server.kill()
    w.advance(400)
    w.server.publish("apollo", 2, "todo")
    w.server.restart()
    w.advance(12000)
    summary(w, emit, "tabs: server killed and back")
    c.tabs.retry_now(w.now)
    c.pump()
    w.close_tab(d)
    w.advance(3000)
    summary(w, emit, "tabs: end")


def main():
    lines = []
    run(lines.append)
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
