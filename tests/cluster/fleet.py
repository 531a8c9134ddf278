"""A worker process of headless dashboards for the cluster proofs: `python -m tests.cluster.fleet`, driven over
stdin/stdout JSON lines like `bench.headless` (whose adapter it extends).

Each `FleetClient` runs the real client core (`client.runtime.Runtime`), watches the story board of every project it
is given (so a `recovered:false` or a new epoch makes it refetch, as the page does) and records, per project, the
order in which it applied events and `subscribed` answers, the boards it fetched, its states and its dials.
`report` checks all of it against what the driver knows was committed.

Commands: `start` (as bench.headless, plus `projects` and `tokens`), `status`, `mark` (a monotonic timestamp),
`progress` (how many clients hold every committed change), `report`, `stop`.
"""

from __future__ import annotations

import time
from typing import Any

from bench.env import run_worker
from client.cache import SUCCESS
from bench.headless import HeadlessClient, Worker


class FleetClient(HeadlessClient):
    def __init__(self, idx: int, cfg: dict[str, Any], rec: Any, http: Any) -> None:
        tokens = cfg["tokens"]
        super().__init__(idx, {**cfg, "token": tokens[idx % len(tokens)]}, rec, http)
        self.projects: list[str] = list(cfg["projects"])
        # per project: ("s", t, recovered, epoch, seq) for each `subscribed`, ("e", t, epoch, seq, mid) per event
        self.timeline: dict[str, list[tuple[Any, ...]]] = {p: [] for p in self.projects}
        self.mids: dict[str, set[str]] = {p: set() for p in self.projects}
        self.fetched: dict[str, list[float]] = {p: [] for p in self.projects}  # successful board fetches
        self.dial_times: list[float] = []
        self.rt.subscribe("*", self.on_any_event)
        for project in self.projects:
            self.rt.watch(("stories", project), lambda entry, p=project: self.on_board(p, entry))

    def on_any_event(self, event: dict[str, Any]) -> None:
        project = event.get("projectId")
        if project not in self.timeline:
            return
        data = event.get("data")
        mid = data.get("clientMutationId") if isinstance(data, dict) else None
        self.timeline[project].append(("e", time.monotonic(), event.get("epoch"), event.get("seq"), mid))
        if isinstance(mid, str):
            self.mids[project].add(mid)

    def on_board(self, project: str, entry: Any) -> None:
        """Note each board fetched from the server: `as_of` is when its request was issued (monotonic ms)."""
        as_of = getattr(entry, "as_of", None)
        if entry is not None and entry.state == SUCCESS and as_of is not None:
            if not self.fetched[project] or self.fetched[project][-1] != as_of:
                self.fetched[project].append(as_of)

    def run(self, command: tuple[Any, ...]) -> None:
        if command[0] == "log" and isinstance(command[1], dict) and command[1].get("event") == "subscribed":
            record = command[1]
            project = record.get("projectId")
            if project in self.timeline:
                self.timeline[project].append(("s", time.monotonic(), record.get("recovered"), None, record.get("seq")))
        if command[0] == "open":
            self.dial_times.append(time.monotonic())
        super().run(command)

    def ready(self) -> bool:
        """Live, subscribed to every project (a change made before that is not owed to this client) and every board
        loaded."""
        return self.state == "live" and all(
            any(item[0] == "s" for item in self.timeline[p]) and self.board(p) is not None for p in self.projects)

    def board(self, project: str) -> dict[str, str] | None:
        entry = self.rt.cache.get(("stories", project))
        data = getattr(entry, "data", None)
        if not isinstance(data, list):
            return None
        return {str(s.get("id")): str(s.get("status")) for s in data if isinstance(s, dict)}

    # -- checks ----------------------------------------------------------------------------------

    def complete(self, expected: dict[str, list[str]]) -> bool:
        return all(set(mids) <= self.mids[p] for p, mids in expected.items())

    def check(self, expected: dict[str, list[str]], truth: dict[str, dict[str, str]], since: float) -> dict[str, Any]:
        """Per project: seqs applied in a row within an epoch (a jump is a gap, i.e. a loss), resyncs (a
        `recovered:false` answer or a new epoch, each followed by a board refetch), committed changes missing."""
        out: dict[str, Any] = {"idx": self.idx, "state": self.state, "gaps": 0, "resyncs": 0, "resyncs_since": 0,
                               "resync_without_refetch": 0, "missing": 0, "missing_uncovered": 0, "boards_wrong": 0,
                               "gap_examples": []}
        for project in self.projects:
            current: tuple[str, int] | None = None
            last_resync: float | None = None  # since `since`
            for item in self.timeline[project]:  # all of it (the position before `since` matters), counted since
                if item[0] == "s":
                    _, t, recovered, _, seq = item
                    if recovered is False:  # `None`: a first subscribe, nothing to recover
                        out["resyncs"] += 1
                        if t >= since:
                            out["resyncs_since"] += 1
                            last_resync = t
                        current = None  # the next event starts after the position just reported
                    continue
                _, t, epoch, seq, _mid = item
                if current is not None and epoch == current[0] and seq != current[1] + 1:
                    out["gaps"] += t >= since
                    if t >= since and len(out["gap_examples"]) < 3:
                        out["gap_examples"].append([project, current[1], seq])
                elif current is not None and epoch != current[0]:
                    out["resyncs"] += 1
                    if t >= since:
                        out["resyncs_since"] += 1
                        last_resync = t
                current = (epoch, seq)
            if last_resync is not None and not any(f >= last_resync * 1000 for f in self.fetched[project]):
                out["resync_without_refetch"] += 1
            missing = set(expected.get(project, ())) - self.mids[project]
            out["missing"] += len(missing)
            out.setdefault("missing_examples", []).extend(sorted(missing)[:3])
            if missing and last_resync is None:
                out["missing_uncovered"] += len(missing)
            if project in truth and self.board(project) != truth[project]:
                out["boards_wrong"] += 1
        states = [s for t, s in self.states if t >= since]
        out["states_since"] = sorted(set(states))
        out["live_at"] = next((t for t, s in self.states if t >= since and s == "live"), None)
        out["left_live_at"] = next((t for t, s in self.states if t >= since and s != "live"), None)
        out["drops"] = [t for (t, s), (_, before) in zip(self.states[1:], self.states) if t >= since and before == "live"]
        out["dials_since"] = [t for t in self.dial_times if t >= since]
        out["stats"] = self.rt.stats
        return out


class FleetWorker(Worker):
    client_class = FleetClient

    def fleet(self) -> list[FleetClient]:
        return [c for c in self.clients if isinstance(c, FleetClient)]

    async def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        cmd = msg.get("cmd")
        if cmd == "status":
            states: dict[str, int] = {}
            for c in self.clients:
                states[c.state] = states.get(c.state, 0) + 1
            ready = sum(1 for c in self.fleet() if c.ready())
            return {"states": states, "ready": ready, "clients": len(self.clients)}
        if cmd == "mark":
            return {"now": time.monotonic()}
        if cmd == "progress":
            return {"complete": sum(c.complete(msg["expected"]) for c in self.fleet()), "clients": len(self.clients)}
        if cmd == "report":
            return {"clients": [c.check(msg["expected"], msg.get("truth", {}), float(msg["since"]))
                                for c in self.fleet()]}
        return await super().handle(msg)


def main() -> None:
    run_worker(lambda: FleetWorker().serve())


if __name__ == "__main__":
    main()
