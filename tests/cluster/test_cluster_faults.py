"""The proof of issue 11: 300 headless dashboards (the real client core, `tests/cluster/fleet.py`) connected through
HAProxy to two nodes on PostgreSQL and Redis, while changes flow through REST at 20/s; then, one after the other:
a rolling restart of both nodes (SIGTERM), a node SIGKILLed, Redis restarted (append-only), PostgreSQL restarted.

After each: every client is live, and for every client and project the seqs it applied follow each other within an
epoch (no gap: nothing lost; the core drops repeats, and the server sent none); every committed change reached every
client, or that client was told `recovered:false` (or saw a new epoch) and refetched its board; every board equals
the database. A resync is not a loss, it is counted apart: with Redis keeping its data it should not happen at all.

Every change is a `PATCH` with `expect` and an `X-Client-Mutation-Id`; a failed attempt (5xx, connection error) is
retried with the same id until it is answered, so each change is committed once and known to the driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import secrets
import select
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from cluster_helpers import NODE_ENV, PROXY_ENV, require_cluster_binaries

from backend.auth import hash_password
from backend.store import Store, engine_for
from bench.cluster import ROOT, Cluster, wait_for

pytestmark = pytest.mark.timeout(600)  # each proof takes 30-60 s alone, more on a busy machine
CLIENTS = 300
WORKERS = 2
STORIES = 20  # more stories per project, so that 20 changes/s never wait for a story with a change in flight
USERS = 30  # ten sockets per user, under the default per-user cap of 20 even with a dead node's leases still counted
PROJECTS = ["apollo", "borealis"]
RATE = 20.0  # changes per second
STATUSES = ("todo", "in_progress", "review", "done", "blocked")
PASSWORD = "fleet-password"
# Heartbeats about as often per client as in a real deployment (each ping re-checks memberships in the database: 300
# clients pinged every 2 s would ask PostgreSQL more than 5000 clients on the default 30 s), and a restart window of
# 3 s for the 150-300 sockets a node hands over.
# The connect timeout keeps its production value (10 s): a node greeting 300 sockets at once on a busy 2-core machine
# can take more than 5 s, and a client that gives up redials into the same queue.
FAULTS_NODE_ENV = dict(NODE_ENV, DASHBOARD_HEARTBEAT_INTERVAL_MS="10000", DASHBOARD_RESTART_WINDOW_MS="3000",
                       DASHBOARD_CONNECT_TIMEOUT_MS="10000")
RESTART_WINDOW_S = int(FAULTS_NODE_ENV["DASHBOARD_RESTART_WINDOW_MS"]) / 1000
DRAIN_DELAY_S = int(FAULTS_NODE_ENV["DASHBOARD_DRAIN_DELAY_MS"]) / 1000
RECONNECT_BASE_S = int(FAULTS_NODE_ENV["DASHBOARD_RECONNECT_BASE_MS"]) / 1000
RECONNECT_MAX_S = int(FAULTS_NODE_ENV["DASHBOARD_RECONNECT_MAX_MS"]) / 1000
CONNECT_TIMEOUT_S = int(FAULTS_NODE_ENV["DASHBOARD_CONNECT_TIMEOUT_MS"]) / 1000
BACKOFF_FLOOR_S = 0.25  # web/client/backoff.py DEFAULT_FLOOR_MS


def backoff_bound_s(dials: int) -> float:
    """The longest a client may take to be live again after `dials` dials: each retry waits at most
    min(cap, floor + base x 2^i), and each dial may use its whole connect timeout."""
    waits = sum(min(RECONNECT_MAX_S, BACKOFF_FLOOR_S + RECONNECT_BASE_S * 2**i) for i in range(dials))
    return waits + dials * CONNECT_TIMEOUT_S


# -- the fleet: worker processes of headless clients, driven synchronously over JSON lines ------------------------------


class FleetProcess:
    def __init__(self) -> None:
        env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'web'}")
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.cluster.fleet"], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)

    def call(self, timeout: float = 60, **msg: Any) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"fleet worker: no answer to {msg.get('cmd')} within {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fleet worker exited with {self.proc.poll()}")
        return dict(json.loads(line))

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.call(timeout=20, cmd="stop")
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


class Fleet:
    def __init__(self, workers: list[FleetProcess]) -> None:
        self.workers = workers

    def all(self, timeout: float = 60, **msg: Any) -> list[dict[str, Any]]:
        return [w.call(timeout=timeout, **msg) for w in self.workers]

    def states(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for reply in self.all(cmd="status"):
            total.update(reply["states"])
        return total

    def ready(self) -> int:
        return sum(r["ready"] for r in self.all(cmd="status"))

    def wait_all_live(self, timeout: float, what: str) -> float:
        started = time.monotonic()
        wait_for(lambda: self.states().get("live", 0) == CLIENTS, timeout, f"{what}: all clients live "
                 f"({dict(self.states())})", interval_s=0.1)
        return time.monotonic() - started

    def mark(self) -> float:
        return float(self.workers[0].call(cmd="mark")["now"])

    def wait_complete(self, expected: dict[str, list[str]], timeout: float) -> int:
        complete = 0

        def done() -> bool:
            nonlocal complete
            complete = sum(r["complete"] for r in self.all(cmd="progress", expected=expected))
            return complete == CLIENTS

        with contextlib.suppress(TimeoutError):
            wait_for(done, timeout, "every client holds every committed change", interval_s=0.25)
        return complete

    def report(self, expected: dict[str, list[str]], truth: dict[str, dict[str, str]], since: float) -> list[dict]:
        return [c for r in self.all(timeout=120, cmd="report", expected=expected, truth=truth, since=since)
                for c in r["clients"]]


# -- the change driver: 20 PATCHes per second through the proxy, in a thread with its own loop ------------------------


class ChangeDriver:
    """Moves stories of both projects at `rate` per second; `stop()` waits until every change is answered."""

    def __init__(self, base: str, token: str, stories: dict[int, list[str]], rate: float = RATE) -> None:
        self.base = base
        self.token = token
        self.stories = stories  # id → [project, status]
        self.rate = rate
        self.committed: dict[str, list[str]] = {p: [] for p in PROJECTS}
        self.answers: Counter[str] = Counter()  # "200", "409", "503 json", "503 other", "error ConnectError", ...
        self.unsettled: list[str] = []
        self.ticks_skipped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="change-driver", daemon=True)
        self._busy: set[int] = set()
        self._n = 0
        self._prefix = f"fleet-{secrets.token_hex(3)}"

    def start(self) -> ChangeDriver:
        self._thread.start()
        return self

    def stop(self, settle_s: float = 60.0) -> dict[str, list[str]]:
        self._settle_s = settle_s
        self._stop.set()
        self._thread.join(settle_s + 30)
        assert not self._thread.is_alive(), "the change driver did not finish"
        return self.committed

    async def _main(self) -> None:
        self._settle_s = 60.0
        async with httpx.AsyncClient(base_url=self.base, timeout=30, trust_env=False,
                                     headers={"Authorization": "Bearer " + self.token}) as http:
            tasks: set[asyncio.Task[None]] = set()
            ids = sorted(self.stories)
            turn = 0
            next_at = time.monotonic()
            while not self._stop.is_set():
                idle = [s for s in ids[turn:] + ids[:turn] if s not in self._busy]
                if idle:
                    story = idle[0]
                    turn = (ids.index(story) + 1) % len(ids)
                    self._busy.add(story)
                    task = asyncio.create_task(self._change(http, story))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                else:
                    self.ticks_skipped += 1
                next_at += 1 / self.rate
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            if tasks:
                await asyncio.wait(tasks, timeout=self._settle_s)

    async def _change(self, http: httpx.AsyncClient, story: int) -> None:
        project, current = self.stories[story]
        target = STATUSES[(STATUSES.index(current) + 1) % len(STATUSES)]
        self._n += 1
        mid = f"{self._prefix}-{self._n}"
        deadline = time.monotonic() + 90
        try:
            while time.monotonic() < deadline:
                try:
                    response = await http.patch(f"/api/stories/{story}", headers={"X-Client-Mutation-Id": mid},
                                                json={"status": target, "expect": {"status": current}})
                except httpx.HTTPError as exc:
                    self.answers[f"error {type(exc).__name__}"] += 1
                    await asyncio.sleep(0.2)
                    continue
                code = response.status_code
                if code >= 500:
                    self.answers[f"{code} {'json' if _json_error(response) else 'other'}"] += 1
                    await asyncio.sleep(0.2)
                    continue
                self.answers[str(code)] += 1
                if code == 200:
                    self.committed[project].append(mid)
                    self.stories[story][1] = target
                elif code == 409:
                    self.stories[story][1] = response.json()["current"]["status"]
                return
            self.unsettled.append(mid)
        finally:
            self._busy.discard(story)


def _json_error(response: httpx.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return response.headers.get("content-type", "").startswith("application/json") and isinstance(body, dict) \
        and isinstance(body.get("error"), str)


# -- fixtures -----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_cluster_binaries()
    logs = tmp_path_factory.mktemp("cluster-faults")  # node and HAProxy logs, kept by pytest for a look afterwards
    with Cluster(node_env=FAULTS_NODE_ENV, proxy_env=PROXY_ENV, workdir=logs) as running:
        yield running


async def _add_users(database_url: str) -> None:
    store = Store(engine_for(database_url, max_size=2))
    await store.open()
    try:
        hashed = hash_password(PASSWORD)
        for i in range(USERS):
            user = f"fleet{i:02d}"
            if not await store.has_user(user):
                await store.add_user(user, f"Fleet {i}", password_hash=hashed)
            for project in PROJECTS:
                await store.add_member(user, project)
        for project in PROJECTS:
            for i in range(STORIES):
                await store.seed_story(project, f"Fleet story {i}", status=STATUSES[i % len(STATUSES)])
    finally:
        await store.close()


def _login(base: str, user: str, password: str) -> str:
    response = httpx.post(base + "/api/auth/login", json={"username": user, "password": password}, timeout=30,
                          trust_env=False)
    response.raise_for_status()
    return str(response.json()["token"])


@pytest.fixture(scope="module")
def fleet(cluster: Cluster) -> Iterator[Fleet]:
    asyncio.run(_add_users(cluster.database_url))
    tokens = [_login(cluster.url, f"fleet{i:02d}", PASSWORD) for i in range(USERS)]
    config = httpx.get(cluster.url + "/api/config", timeout=10, trust_env=False).json()
    workers = [FleetProcess() for _ in range(WORKERS)]
    running = Fleet(workers)
    try:
        share = CLIENTS // WORKERS
        for i, worker in enumerate(workers):
            worker.call(cmd="start", count=share, first_index=i * share, url=cluster.ws_url, origin=cluster.url,
                        http_base=cluster.url, tokens=tokens, projects=PROJECTS, project=PROJECTS[0],
                        config=config, seed=1100 + i, start_spread_s=3.0)
        wait_for(lambda: running.ready() == CLIENTS, 90, "300 clients live, subscribed, both boards loaded",
                 interval_s=0.25)
        yield running
    finally:
        for worker in workers:
            worker.stop()


def _stories(base: str, token: str) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for project in PROJECTS:
        listed = httpx.get(f"{base}/api/projects/{project}/stories", headers={"Authorization": "Bearer " + token},
                           timeout=10, trust_env=False).json()
        for story in listed:
            out[int(story["id"])] = [project, story["status"]]
    return out


def _truth(base: str, token: str) -> dict[str, dict[str, str]]:
    boards: dict[str, dict[str, str]] = {p: {} for p in PROJECTS}
    for story_id, (project, status) in _stories(base, token).items():
        boards[project][str(story_id)] = status
    return boards


class Outcome:
    def __init__(self, clients: list[dict[str, Any]], driver: ChangeDriver, since: float, info: dict[str, Any]) -> None:
        self.clients = clients
        self.driver = driver
        self.since = since
        self.info = info

    def total(self, key: str) -> int:
        return sum(int(c[key]) for c in self.clients)

    def summary(self) -> str:
        return (f"committed {sum(map(len, self.driver.committed.values()))} answers {dict(self.driver.answers)} "
                f"skipped ticks {self.driver.ticks_skipped}; gaps {self.total('gaps')} resyncs since "
                f"{self.total('resyncs_since')} missing {self.total('missing')} (uncovered "
                f"{self.total('missing_uncovered')}) boards wrong {self.total('boards_wrong')}; "
                f"states {Counter(c['state'] for c in self.clients)}; {self.info}")

    def assert_no_loss(self) -> None:
        """Zero loss and zero repeats; a resync must come with a refetch, and every board is right."""
        assert self.driver.unsettled == [], f"changes never answered: {self.driver.unsettled[:5]}"
        errors = {k: v for k, v in self.driver.answers.items() if k.startswith(("500", "501")) or "other" in k}
        assert errors == {}, f"server errors or non-JSON errors: {errors}"
        assert len(self.clients) == CLIENTS
        bad = [c for c in self.clients if c["gaps"] or c["missing_uncovered"] or c["boards_wrong"]
               or c["resync_without_refetch"] or c["stats"].get("duplicates", 0) or c["stats"].get("gaps", 0)]
        assert not bad, f"{len(bad)} clients lost or repeated events, e.g. {bad[:2]}; {self.summary()}"
        assert all(c["state"] == "live" for c in self.clients), self.summary()


def run_scenario(cluster: Cluster, fleet: Fleet, fault: Callable[[dict[str, Any]], None], *, warm_s: float = 2.0,
                 after_s: float = 3.0) -> Outcome:
    """Changes at 20/s; `fault(info)` (blocking, returns once the cluster is whole again); more changes; then every
    change settled, every client checked."""
    token = _login(cluster.url, "alice", "alice-demo")
    fleet.wait_all_live(30, "before the fault")
    since = fleet.mark()
    driver = ChangeDriver(cluster.url, token, _stories(cluster.url, token)).start()
    info: dict[str, Any] = {}
    try:
        time.sleep(warm_s)
        fault(info)
        time.sleep(after_s)
    finally:
        committed = driver.stop()
    info["all_live_after_s"] = round(fleet.wait_all_live(60, "after the fault"), 2)
    expected = {p: list(mids) for p, mids in committed.items()}
    info["complete"] = fleet.wait_complete(expected, 30)
    outcome = Outcome(fleet.report(expected, _truth(cluster.url, token), since), driver, since, info)
    missing = sorted({m for c in outcome.clients for m in c.get("missing_examples", [])})
    if missing:  # what the database says about them (the test fails below; this says why)
        info["missing_in_outbox"] = _outbox_rows(cluster, missing[:5])
    print(outcome.summary())
    return outcome


def _outbox_rows(cluster: Cluster, mids: list[str]) -> list[str]:
    from tests.postgres_server import _binary

    where = " OR ".join(f"data LIKE '%\"{m}\"%'" for m in mids)
    done = subprocess.run([_binary("psql") or "psql", cluster.database_url, "-tAc",
                           f"SELECT project_id, pseq, event_type, created_at, sent_at FROM outbox WHERE {where}"],
                          capture_output=True, text=True, timeout=30)
    unsent = subprocess.run([_binary("psql") or "psql", cluster.database_url, "-tAc",
                             "SELECT project_id, pseq, created_at FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT 5"],
                            capture_output=True, text=True, timeout=30)
    return [mids, done.stdout.strip() or done.stderr.strip(), "unsent: " + unsent.stdout.strip()]


def _bins(times: list[float], start: float, end: float, width: float = 0.1) -> list[int]:
    bins = [0] * max(1, math.ceil((end - start) / width))
    for t in times:
        if start <= t < end:
            bins[int((t - start) / width)] += 1
    return bins


# -- the proofs ------------------------------------------------------------------------------------------------------


def test_rolling_restart_of_both_nodes_loses_nothing_and_spreads_the_reconnects(cluster: Cluster, fleet: Fleet) -> None:
    proxy = cluster.proxy
    assert proxy is not None
    restarts: list[tuple[str, float, int]] = []

    def roll(info: dict[str, Any]) -> None:
        for node in cluster.nodes:
            signalled = time.monotonic()
            assert node.term(timeout_s=30) is not None
            restarts.append((node.name, signalled))
            node.start()
            proxy.wait_status(node.name, "UP", 30)
            fleet.wait_all_live(90, f"after {node.name} restarted")

    outcome = run_scenario(cluster, fleet, roll)
    outcome.assert_no_loss()
    assert outcome.total("resyncs_since") == 0, f"a resume across a graceful restart must be exact; {outcome.summary()}"
    suspended = [c["idx"] for c in outcome.clients if "suspended" in c["states_since"]]
    assert suspended == [], f"clients went suspended: {suspended[:10]}"
    dials = sorted(t for c in outcome.clients for t in c["dials_since"])
    for name, signalled in restarts:
        # The restart hint goes out after the drain delay; clients drop then and redial within the window.
        start, end = signalled, signalled + DRAIN_DELAY_S + RESTART_WINDOW_S + 4
        moved = sum(1 for c in outcome.clients if any(start <= t < signalled + DRAIN_DELAY_S + 4 for t in c["drops"]))
        window = [t for t in dials if start <= t < end]
        bins = _bins(window, start, end)
        uniform = moved * 0.1 / RESTART_WINDOW_S  # dials per 100 ms if spread evenly over the window
        print(f"{name}: {moved} clients moved, {len(window)} dials, peak {max(bins)} per 100 ms (even spread "
              f"{uniform:.1f}); bins {bins}")
        assert moved > 0 and len(window) >= moved, f"{name}: the moved clients did not redial in the window"
        assert max(bins) <= 3 * uniform + 4, f"{name}: reconnects not spread over the restart window: {bins}"


def test_a_node_killed_every_client_is_live_on_the_other_within_its_backoff(cluster: Cluster, fleet: Fleet) -> None:
    proxy = cluster.proxy
    assert proxy is not None

    def kill(info: dict[str, Any]) -> None:
        held = {r["svname"]: int(r["scur"]) for r in proxy.stats() if r["pxname"] == "nodes"
                and r["svname"].startswith("node")}
        victim = max(cluster.nodes, key=lambda n: held.get(n.name, 0))
        info["killed"], info["sockets"] = victim.name, held.get(victim.name, 0)
        info["t_kill"] = time.monotonic()
        victim.kill()
        with contextlib.suppress(TimeoutError):  # the drops are seen at once (the kernel resets the sockets)
            wait_for(lambda: fleet.states().get("live", 0) < CLIENTS, 5, "clients notice the kill", interval_s=0.02)
        info["back_s"] = round(fleet.wait_all_live(RECONNECT_MAX_S * 4 + 10, "after the kill"), 2)
        victim.start()
        proxy.wait_status(victim.name, "UP", 30)

    outcome = run_scenario(cluster, fleet, kill)
    outcome.assert_no_loss()
    assert outcome.total("resyncs_since") == 0, f"with Redis, a resume on the other node is exact; {outcome.summary()}"
    moved = [c for c in outcome.clients if c["left_live_at"] is not None]
    assert len(moved) >= outcome.info["sockets"] * 0.9, outcome.summary()
    downtimes = sorted(c["live_at"] - c["left_live_at"] for c in moved if c["live_at"] is not None)
    assert len(downtimes) == len(moved), "a client that dropped never came back"
    redials = Counter(len(c["dials_since"]) for c in moved)
    print(f"killed {outcome.info['killed']} with {outcome.info['sockets']} sockets: {len(moved)} clients back after "
          f"p50 {downtimes[len(downtimes) // 2]:.2f}s max {downtimes[-1]:.2f}s; dials per client {dict(redials)}")
    # Each client is back within what its own backoff allows for the dials it made (the proxy redispatches a dial
    # that reaches the dead node, so on a quiet machine that is one dial), and none gave up.
    late = [(len(c["dials_since"]), round(c["live_at"] - c["left_live_at"], 2)) for c in moved
            if c["live_at"] - c["left_live_at"] > backoff_bound_s(len(c["dials_since"]))]
    assert late == [], f"clients back later than their backoff allows (dials, seconds): {late[:10]}"
    assert all("suspended" not in c["states_since"] for c in outcome.clients)


def test_redis_restarted_no_silent_loss(cluster: Cluster, fleet: Fleet) -> None:
    proxy = cluster.proxy
    assert proxy is not None

    starts = [n.starts for n in cluster.nodes]

    def restart_redis(info: dict[str, Any]) -> None:
        cluster.restart_redis(down_s=2.0)
        for node in cluster.nodes:
            proxy.wait_status(node.name, "UP", 30)

    outcome = run_scenario(cluster, fleet, restart_redis, after_s=4.0)
    outcome.assert_no_loss()
    # Append-only Redis keeps the streams: clients should get the missed events rather than resync. Reported, and a
    # resync would be acceptable (no silent loss) but is not expected.
    print(f"resyncs after the Redis restart: {outcome.total('resyncs_since')}")
    assert all(n.alive() for n in cluster.nodes) and [n.starts for n in cluster.nodes] == starts, "a node crashed"


def test_postgres_restarted_rest_answers_json_503_then_recovers_and_no_node_crashes(cluster: Cluster,
                                                                                      fleet: Fleet) -> None:
    proxy = cluster.proxy
    assert proxy is not None
    token = _login(cluster.url, "alice", "alice-demo")
    starts = [n.starts for n in cluster.nodes]
    bases = [cluster.url] + [n.url for n in cluster.nodes]

    def restart_postgres(info: dict[str, Any]) -> None:
        cluster.postgres.stop()
        answers: Counter[str] = Counter()
        until = time.monotonic() + 3.0
        while time.monotonic() < until:  # through the proxy and straight to each node
            for base in bases:
                try:
                    response = httpx.get(f"{base}/api/projects/apollo/stories", timeout=10, trust_env=False,
                                         headers={"Authorization": "Bearer " + token})
                    kind = f"{response.status_code} {'json' if _json_error(response) else 'other'}"
                except httpx.HTTPError as exc:
                    kind = f"error {type(exc).__name__}"
                answers[("proxy " if base == cluster.url else "node ") + kind] += 1
            time.sleep(0.1)
        info["during_outage"] = dict(answers)
        cluster.postgres.start()
        started = time.monotonic()
        wait_for(lambda: httpx.get(f"{cluster.url}/api/projects/apollo/stories", timeout=10, trust_env=False,
                                   headers={"Authorization": "Bearer " + token}).status_code == 200,
                 30, "REST through the proxy after PostgreSQL came back", interval_s=0.1)
        info["rest_back_after_s"] = round(time.monotonic() - started, 2)
        for node in cluster.nodes:
            proxy.wait_status(node.name, "UP", 30)

    outcome = run_scenario(cluster, fleet, restart_postgres)
    during = outcome.info["during_outage"]
    assert during and set(during) <= {"proxy 503 json", "node 503 json"}, during
    assert "node 503 json" in during, "the nodes themselves answer 503 with a JSON error"
    assert all(n.alive() for n in cluster.nodes) and [n.starts for n in cluster.nodes] == starts, "a node crashed"
    assert outcome.driver.answers.get("503 json", 0) > 0, "the change driver never met the outage"
    outcome.assert_no_loss()
