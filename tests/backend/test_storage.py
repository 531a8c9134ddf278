"""`Store`: schema, constraints, shapes, counts and the read/write methods."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from backend.storage import STORY_STATUSES, NotFound, Store


class Clock:
    def __init__(self, start: int = 1_000) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def st(clock: Clock) -> Store:
    s = Store(":memory:", clock=clock)
    s.open()
    s.add_project("apollo", "Apollo", "moon")
    s.add_project("borealis", "Borealis")
    s.add_user("alice", "Alice", "pw-alice")
    s.add_member("alice", "apollo")
    return s


def test_open_creates_parent_directory_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "db.sqlite"
    s = Store(str(path))
    s.open()
    s.open()  # idempotent
    assert path.exists()
    assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    s.add_project("apollo", "Apollo")
    s.close()
    s.close()
    again = Store(str(path))
    again.open()  # schema exists: opening again keeps the data
    assert again.get_project("apollo") is not None
    again.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(RuntimeError, match="schema 99"):
        Store(str(path)).open()


def test_use_before_open_fails() -> None:
    with pytest.raises(RuntimeError, match="open"):
        Store(":memory:").get_project("x")


def test_is_empty(store: Store) -> None:
    assert store.is_empty()
    store.add_project("apollo", "Apollo")
    assert not store.is_empty()


def test_authenticate(st: Store) -> None:
    assert st.authenticate("alice", "pw-alice") == {"id": "alice", "name": "Alice", "projects": ["apollo"]}
    assert st.authenticate("alice", "wrong") is None
    assert st.authenticate("nobody", "pw-alice") is None
    assert st.authenticate("alice", "") is None
    stored = st.conn.execute("SELECT password_hash FROM users WHERE id='alice'").fetchone()[0]
    assert stored.startswith("scrypt$") and "pw-alice" not in stored


def test_add_user_validation(st: Store) -> None:
    with pytest.raises(ValueError, match="already exists"):
        st.add_user("alice", "Again", "x")
    with pytest.raises(ValueError, match="invalid user id"):
        st.add_user("bad id", "X", "x")
    with pytest.raises(ValueError, match="exactly one"):
        st.add_user("carol", "Carol")


def test_add_project_validation(st: Store) -> None:
    with pytest.raises(ValueError, match="already exists"):
        st.add_project("apollo", "Again")
    for bad in ("Apollo", "", "-x", "a b", "x" * 64):
        with pytest.raises(ValueError, match="slug"):
            st.add_project(bad, "X")


def test_membership(st: Store) -> None:
    assert st.is_member("alice", "apollo")
    assert not st.is_member("alice", "borealis")
    assert not st.is_member("alice", "unknown")
    assert not st.is_member("nobody", "apollo")
    assert not st.is_member(None, "apollo")  # type: ignore[arg-type]
    st.add_member("alice", "borealis")
    st.add_member("alice", "borealis")  # idempotent
    assert st.project_ids_for("alice") == ["apollo", "borealis"]
    assert st.user("alice")["projects"] == ["apollo", "borealis"]  # type: ignore[index]
    assert st.remove_member("alice", "borealis")
    assert not st.remove_member("alice", "borealis")
    assert not st.is_member("alice", "borealis")
    with pytest.raises(NotFound):
        st.add_member("alice", "unknown")
    with pytest.raises(NotFound):
        st.add_member("nobody", "apollo")
    assert st.user("nobody") is None
    assert st.has_user("alice") and not st.has_user("nobody")


def test_project_shape_and_counts(st: Store, clock: Clock) -> None:
    project = st.get_project("apollo")
    assert project == {
        "id": "apollo",
        "name": "Apollo",
        "description": "moon",
        "updatedAt": 1_000,
        "counts": {"todo": 0, "in_progress": 0, "review": 0, "done": 0, "blocked": 0, "openEscalations": 0},
    }
    for status in ("todo", "todo", "review", "blocked"):
        st.create_story("apollo", f"s-{status}", status=status)
    e1 = st.create_escalation("apollo", "e1", "agent")
    st.create_escalation("apollo", "e2", "agent")
    st.resolve_escalation(e1["id"])
    st.create_story("borealis", "elsewhere", status="done")
    counts = st.get_project("apollo")["counts"]  # type: ignore[index]
    assert counts == {"todo": 2, "in_progress": 0, "review": 1, "done": 0, "blocked": 1, "openEscalations": 1}
    assert st.get_project("borealis")["counts"]["done"] == 1  # type: ignore[index]
    assert st.get_project("unknown") is None
    assert [p["id"] for p in st.list_projects("alice")] == ["apollo"]
    assert st.list_projects("alice")[0]["counts"] == counts
    assert st.list_projects("nobody") == []
    assert st.all_project_ids() == ["apollo", "borealis"]


def test_story_lifecycle(st: Store, clock: Clock) -> None:
    clock.now = 2_000
    story = st.create_story("apollo", "Port billing", assignee="coder-agent")
    assert story == {
        "id": story["id"], "projectId": "apollo", "title": "Port billing", "status": "todo",
        "assignee": "coder-agent", "updatedAt": 2_000,
    }
    assert isinstance(story["id"], int)
    assert st.get_project("apollo")["updatedAt"] == 2_000  # type: ignore[index]
    clock.now = 3_000
    old, moved = st.update_story_status(story["id"], "review")
    assert old == "todo" and moved["status"] == "review" and moved["updatedAt"] == 3_000
    assert st.get_story(story["id"]) == moved
    assert st.get_project("apollo")["updatedAt"] == 3_000  # type: ignore[index]
    clock.now = 4_000
    old, same = st.update_story_status(story["id"], "review")  # no-op
    assert old == "review" and same["updatedAt"] == 3_000
    assert st.get_project("apollo")["updatedAt"] == 3_000  # type: ignore[index]
    assert st.list_stories("apollo") == [moved]
    assert st.list_stories("borealis") == []
    assert st.get_story(999) is None


def test_story_errors(st: Store) -> None:
    with pytest.raises(NotFound):
        st.create_story("unknown", "x")
    with pytest.raises(ValueError, match="status"):
        st.create_story("apollo", "x", status="doing")
    story = st.create_story("apollo", "x")
    with pytest.raises(ValueError, match="status"):
        st.update_story_status(story["id"], "finished")
    with pytest.raises(NotFound):
        st.update_story_status(999, "done")


def test_check_constraints_hold_in_the_database(st: Store) -> None:
    story = st.create_story("apollo", "x")
    with pytest.raises(sqlite3.IntegrityError):
        st.conn.execute("UPDATE stories SET status = 'bogus' WHERE id = ?", (story["id"],))
    esc = st.create_escalation("apollo", "e", "agent")
    with pytest.raises(sqlite3.IntegrityError):
        st.conn.execute("UPDATE escalations SET status = 'resolved' WHERE id = ?", (esc["id"],))  # no resolved_at
    with pytest.raises(sqlite3.IntegrityError):
        st.conn.execute("UPDATE escalations SET status = 'pending' WHERE id = ?", (esc["id"],))
    assert set(STORY_STATUSES) == {"todo", "in_progress", "review", "done", "blocked"}


def test_escalation_lifecycle(st: Store, clock: Clock) -> None:
    clock.now = 5_000
    esc = st.create_escalation("apollo", "Need a human", "alice")
    assert esc == {
        "id": esc["id"], "projectId": "apollo", "title": "Need a human", "status": "open",
        "createdBy": "alice", "createdAt": 5_000, "resolvedAt": None,
    }
    clock.now = 6_000
    old, resolved = st.resolve_escalation(esc["id"])
    assert old == "open" and resolved["status"] == "resolved" and resolved["resolvedAt"] == 6_000
    clock.now = 7_000
    old, again = st.resolve_escalation(esc["id"])
    assert old == "resolved" and again["resolvedAt"] == 6_000
    assert st.list_escalations("apollo") == [again]
    assert st.get_escalation(esc["id"]) == again
    assert st.get_escalation(12345) is None
    with pytest.raises(NotFound):
        st.resolve_escalation(12345)
    with pytest.raises(NotFound):
        st.create_escalation("unknown", "x", "alice")


def test_update_project(st: Store, clock: Clock) -> None:
    clock.now = 9_000
    project = st.update_project("apollo", description="to the moon")
    assert project["name"] == "Apollo" and project["description"] == "to the moon" and project["updatedAt"] == 9_000
    assert st.update_project("apollo", name="Apollo 11")["name"] == "Apollo 11"
    with pytest.raises(NotFound):
        st.update_project("unknown", name="x")


def test_ids_are_not_reused(st: Store) -> None:
    first = st.create_story("apollo", "a")
    st.conn.execute("DELETE FROM stories WHERE id = ?", (first["id"],))
    assert st.create_story("apollo", "b")["id"] > first["id"]


def test_concurrent_writes_from_threads(tmp_path: Path) -> None:
    s = Store(str(tmp_path / "db.sqlite"))
    s.open()
    s.add_project("apollo", "Apollo")
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for i in range(25):
                story = s.create_story("apollo", f"s{i}")
                s.update_story_status(story["id"], "done")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert s.get_project("apollo")["counts"]["done"] == 100  # type: ignore[index]
    s.close()
