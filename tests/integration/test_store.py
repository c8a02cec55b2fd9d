"""The store on a real SQLite file: transactions, events, migrations, read-only access."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from minipipe_svc.model import IllegalTransition, RunState, StepState
from minipipe_svc.plan import parse_plan
from minipipe_svc.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    ConflictError,
    NoSuchRun,
    SchemaTooNew,
    Store,
    StoreError,
    StoreMissing,
)

PLAN = parse_plan(b'name = "t"\n[[steps]]\nid = "a"\nrun = ["true"]\n[[steps]]\nid = "b"\n'
                  b'run = ["true"]\n', source="t.toml", fmt="toml", base_dir="/").to_dict()


@pytest.fixture
def store(tmp_path: Path):
    with Store.open(str(tmp_path / "state.db")) as opened:
        yield opened


def test_pragmas(store: Store) -> None:
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    assert store.schema_version() == SCHEMA_VERSION


def test_every_transition_writes_its_event(store: Store) -> None:
    run_id = store.submit(PLAN, source="t.toml", submitted_by="me")
    assert store.start_run(run_id)
    store.set_runner(run_id, 123, 456)
    store.start_step(run_id, 0, "main")
    store.finish_step(run_id, 0, StepState.SUCCEEDED, exit_code=0)
    store.start_step(run_id, 1, "main")
    store.finish_step(run_id, 1, StepState.FAILED, exit_code=2, reason="exited with status 2")
    store.finish_run(run_id, RunState.FAILED, exit_code=2, reason="step b failed")
    kinds = [(e.kind, e.step_id) for e in store.events(run_id=run_id)]
    assert kinds == [("run_submitted", None), ("run_started", None), ("step_started", "a"),
                     ("step_completed", "a"), ("step_started", "b"), ("step_completed", "b"),
                     ("run_finished", None)]
    run = store.get_run(run_id)
    assert (run.state, run.exit_code, run.steps_done, run.steps_total) == (
        RunState.FAILED, 2, 1, 2)


def test_illegal_transition_raises_and_writes_nothing(store: Store) -> None:
    run_id = store.submit(PLAN, source=None, submitted_by=None)
    before = store.count_events()
    with pytest.raises(IllegalTransition):
        store.finish_run(run_id, RunState.SUCCEEDED)
    with pytest.raises(IllegalTransition):
        store.finish_step(run_id, 0, StepState.SUCCEEDED, exit_code=0)
    assert store.get_run(run_id).state is RunState.PENDING
    assert store.count_events() == before


def test_run_cannot_succeed_with_a_step_still_running(store: Store) -> None:
    run_id = store.submit(PLAN, source=None, submitted_by=None)
    store.start_run(run_id)
    store.start_step(run_id, 0, "main")
    with pytest.raises(IllegalTransition):
        store.finish_run(run_id, RunState.SUCCEEDED, exit_code=0)
    store.finish_run(run_id, RunState.INTERRUPTED, reason="runner gone")
    assert [s.state for s in store.get_steps(run_id)] == [StepState.FAILED, StepState.SKIPPED]


def test_cancel_and_retry_rules(store: Store) -> None:
    run_id = store.submit(PLAN, source=None, submitted_by=None)
    with pytest.raises(ConflictError, match="has not ended yet"):
        store.retry(run_id)
    assert store.request_cancel(run_id) is RunState.PENDING
    assert store.get_run(run_id).state is RunState.CANCELLED
    with pytest.raises(ConflictError, match="already ended"):
        store.request_cancel(run_id)
    assert store.retry(run_id) == 2
    assert store.get_run(run_id).state is RunState.PENDING
    assert store.start_run(run_id)
    assert store.request_cancel(run_id) is RunState.RUNNING
    assert store.get_run(run_id).cancel_requested
    assert store.cancel_requests() == {run_id: 1}
    store.request_cancel(run_id)  # again: counted (a second one stops finally steps)
    assert store.cancel_requests() == {run_id: 2} and store.cancel_count(run_id) == 2
    with pytest.raises(NoSuchRun):
        store.request_cancel(999)


def test_pending_order_is_priority_then_age(store: Store) -> None:
    low = store.submit(PLAN, source=None, submitted_by=None, priority=-1)
    first = store.submit(PLAN, source=None, submitted_by=None)
    high = store.submit(PLAN, source=None, submitted_by=None, priority=5)
    second = store.submit(PLAN, source=None, submitted_by=None)
    assert [r.id for r in store.pending_runs(10)] == [high, first, second, low]
    assert [r.id for r in store.pending_runs(2)] == [high, first]


def test_readonly_store_cannot_write(tmp_path: Path, store: Store) -> None:
    store.submit(PLAN, source=None, submitted_by=None)
    with Store.open(str(tmp_path / "state.db"), readonly=True) as reader:
        assert len(reader.list_runs()) == 1
        with pytest.raises(StoreError):
            reader.submit(PLAN, source=None, submitted_by=None)
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.conn.execute("DELETE FROM runs")


def test_missing_db_is_not_created_by_readers(tmp_path: Path) -> None:
    with pytest.raises(StoreMissing):
        Store.open(str(tmp_path / "absent.db"), readonly=True)
    with pytest.raises(StoreMissing):
        Store.open(str(tmp_path / "absent.db"), create=False)
    assert not (tmp_path / "absent.db").exists()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    for readonly in (False, True):
        with pytest.raises(SchemaTooNew, match="upgrade minipipe"):
            Store.open(str(path), readonly=readonly)


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=r"not a minipipe database|damaged"):
        Store.open(str(path))


def test_paused_flag_and_events(store: Store) -> None:
    assert not store.is_paused()
    assert store.set_paused(True, by="op")
    assert not store.set_paused(True)
    assert store.is_paused()
    assert store.set_paused(False)
    assert [e.kind for e in store.events()] == ["queue_paused", "queue_resumed"]


def test_delete_finished_before_cascades(store: Store) -> None:
    run_id = store.submit(PLAN, source=None, submitted_by=None)
    keep = store.submit(PLAN, source=None, submitted_by=None)
    store.request_cancel(run_id)
    assert store.delete_finished_before("9999-01-01T00:00:00.000Z") == [run_id]
    assert store.get_steps(run_id) == [] and store.events(run_id=run_id) == []
    assert store.get_run(keep).state is RunState.PENDING
    assert store.integrity_check() == "ok"
    notice = store.events()[-1]
    assert (notice.kind, notice.run_id, notice.detail["ids"]) == ("runs_deleted", None,
                                                                  [run_id])


def test_a_version_1_database_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0] + "\nPRAGMA user_version = 1;")
    conn.execute("INSERT INTO runs (name, plan, state, steps_total, created_at) "
                 "VALUES ('old', '{}', 'SUCCEEDED', 0, '2026-01-01T00:00:00.000Z')")
    conn.commit()
    conn.close()
    with Store.open(str(path)) as store:
        assert store.schema_version() == SCHEMA_VERSION == 11
        indexes = {row[0] for row in store.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"runs_by_finished", "workspaces_to_remove"} <= indexes
        # v6: who approved a change, by uid (it lands as them).
        columns = {row[1] for row in store.conn.execute("PRAGMA table_info(workspaces)")}
        assert {"approved_uid", "landed_at"} <= columns  # v6, v11
        # v7: runs that wait for runs, or for a time.
        assert {"run_dependencies_by_after"} <= {row[0] for row in store.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert store.get_run(1).not_before is None
        # v8: pools.
        assert (store.get_run(1).pool, store.get_run(1).slot) == (None, None)
        # v9: matrix groups.
        assert (store.get_run(1).group_id, store.get_run(1).group_max) == (None, None)
        # v10: usage.
        assert store.get_run(1).usage is None
        assert store.get_run(1).name == "old"
        assert store.integrity_check() == "ok"
        # v3 counted the runs already there, and its triggers count from then on.
        assert store.counts()["SUCCEEDED"] == 1
        store.submit(PLAN, source=None, submitted_by="t")
        assert (store.counts()["SUCCEEDED"], store.counts()["PENDING"]) == (1, 1)
        # v4: runs from before identities were recorded have no submitter uid.
        old = store.get_run(1)
        assert (old.submitted_uid, old.umask, old.run_user) == (None, None, None)


def _counted_by_hand(store: Store) -> dict[str, int]:
    counts = {state.value: 0 for state in RunState}
    counts.update(store.conn.execute("SELECT state, count(*) FROM runs GROUP BY state"))
    return counts


def test_state_counts_follow_every_transition(store: Store) -> None:
    ids = [store.submit(PLAN, source=None, submitted_by="t") for _ in range(6)]
    assert store.counts() == _counted_by_hand(store) and store.counts()["PENDING"] == 6
    for run_id in ids[:5]:
        store.start_run(run_id)
    assert store.counts() == _counted_by_hand(store)
    store.finish_run(ids[0], RunState.SUCCEEDED, exit_code=0)
    store.finish_run(ids[1], RunState.FAILED, exit_code=1)
    store.finish_run(ids[2], RunState.INTERRUPTED, reason="gone")
    store.requeue_run(ids[3], "shutting down")
    store.request_cancel(ids[5])
    assert store.counts() == _counted_by_hand(store)
    store.retry(ids[1])
    store.retry(ids[2])
    assert store.counts() == _counted_by_hand(store)
    store.delete_finished_before("9999-01-01T00:00:00.000Z")
    assert store.counts() == _counted_by_hand(store)
    assert sum(store.counts().values()) == len(store.list_runs(limit=None))


def test_a_run_no_step_of_which_began_can_go_back_to_the_queue(store: Store) -> None:
    run_id = store.submit(PLAN, source=None, submitted_by="t")
    assert store.start_run(run_id, unit="minipipe-run-1.scope")
    store.set_runner(run_id, 4242, 99)
    store.requeue_run(run_id, "systemd refused the scope: the system is shutting down")
    run = store.get_run(run_id)
    assert (run.state, run.started_at, run.unit, run.runner_pid) == (
        RunState.PENDING, None, None, None)
    assert run.attempt == 1  # not a new attempt: this one never began
    kinds = [e.kind for e in store.events(run_id=run_id)]
    assert kinds == ["run_submitted", "run_started", "run_requeued"]
    assert [r.id for r in store.pending_runs(5)] == [run_id]
    # Once a step has begun, the run has really started: no requeue.
    assert store.start_run(run_id)
    store.start_step(run_id, 0, "main")
    with pytest.raises(ConflictError, match="cannot go back to the queue"):
        store.requeue_run(run_id, "too late")
    assert store.get_run(run_id).state is RunState.RUNNING


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to read as another user")
def test_readers_who_may_not_write_read_with_and_without_a_writer(tmp_path: Path) -> None:
    """Group members read a DB they may not write, whose directory they may not write:
    through the writer's -wal/-shm while it has the DB open, and as an immutable file
    (`immutable=1`) once the last writer closed and SQLite removed them."""
    tmp_path.chmod(0o755)
    for parent in tmp_path.parents:
        if not parent.stat().st_mode & 0o001:
            parent.chmod((parent.stat().st_mode & 0o7777) | 0o001)
    db = tmp_path / "state.db"
    writer = Store.open(str(db))
    writer.submit(PLAN, source=None, submitted_by="t")
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        # Others may read (the package gives this to group minipipe: 0640 root:minipipe).
        os.chmod(tmp_path / name, 0o644)
    reader = ("import sys; from minipipe_svc.store import Store; "
              "s = Store.open(sys.argv[1], readonly=True); print(len(s.list_runs(limit=None)))")

    def count_as_nobody() -> str:
        result = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
             "-c", reader, str(db)], capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    assert (tmp_path / "state.db-wal").exists()
    assert count_as_nobody() == "1"  # with the writer's -wal/-shm
    writer.submit(PLAN, source=None, submitted_by="t")
    assert count_as_nobody() == "2"  # sees the latest commit, still in the WAL
    writer.close()
    assert not (tmp_path / "state.db-wal").exists()
    assert count_as_nobody() == "2"  # no writer: the immutable view
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.db"], "a reader made files"


def test_processes_that_keep_writers_out_are_named(tmp_path: Path) -> None:
    """Anyone who may open -shm may hold SQLite's WAL write lock; the kernel says who."""
    store = Store.open(str(tmp_path / "state.db"))
    store.submit(PLAN, source=None, submitted_by="t")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, struct, sys, time\n"
         "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
         "fcntl.fcntl(fd, fcntl.F_SETLK, struct.pack('hhqqi', fcntl.F_RDLCK, 0, 120, 1, 0))\n"
         "print('held', flush=True); time.sleep(60)\n", str(tmp_path / "state.db-shm")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        def own_locks() -> int:
            with open("/proc/locks") as handle:
                return sum(f" {os.getpid()} " in line for line in handle)

        before = own_locks()
        assert store.write_lock_holders() == [holder.pid]
        assert own_locks() == before > 0, "asking must not drop this process's own locks"
        assert store.integrity_check() == "ok"
    finally:
        holder.kill()
        holder.wait()
    assert store.write_lock_holders() == []
    store.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to read as another user")
def test_a_polling_reader_leaves_the_immutable_view_when_a_writer_returns(
        tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    for parent in tmp_path.parents:
        if not parent.stat().st_mode & 0o001:
            parent.chmod((parent.stat().st_mode & 0o7777) | 0o001)
    db = tmp_path / "state.db"
    with Store.open(str(db)) as writer:
        writer.submit(PLAN, source=None, submitted_by="t")
    os.chmod(db, 0o644)
    reader = ("import sys; from minipipe_svc.store import Store\n"
              "s = Store.open(sys.argv[1], readonly=True)\n"
              "print(s.immutable, len(s.list_runs(limit=None)), flush=True)\n"
              "sys.stdin.readline()\n"
              "s.reopen_if_stale()\n"
              "print(s.immutable, len(s.list_runs(limit=None)), flush=True)\n")
    child = subprocess.Popen(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
         reader, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert child.stdin is not None and child.stdout is not None
    assert child.stdout.readline() == "True 1\n"  # nobody writes: the immutable view
    writer = Store.open(str(db))
    writer.submit(PLAN, source=None, submitted_by="t")
    for name in ("state.db-wal", "state.db-shm"):
        os.chmod(tmp_path / name, 0o644)
    child.stdin.write("go\n")
    child.stdin.flush()
    assert child.stdout.readline() == "False 2\n"  # live again, through the writer's WAL
    assert child.wait(30) == 0
    writer.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="the checks are root's")
def test_root_refuses_a_db_file_others_may_write_or_keep_a_link_to(tmp_path: Path) -> None:
    """What an older install may have left: a group-writable DB, or a hard link to it
    kept elsewhere by someone who could once write the directory."""
    db = tmp_path / "state.db"
    Store.open(str(db)).close()
    db.chmod(0o660)
    with pytest.raises(StoreError, match="not a file only root may write"):
        Store.open(str(db))
    db.chmod(0o640)
    os.link(db, tmp_path / "kept")
    with pytest.raises(StoreError, match="2 link"):
        Store.open(str(db))
    (tmp_path / "kept").unlink()
    Store.open(str(db)).close()


def test_a_trigger_planted_in_an_older_db_is_dropped_before_it_can_run(tmp_path: Path) -> None:
    """0.1.0's DB was writable by every group member: a trigger planted then would fire
    inside the root daemon's writes. The daemon's repair leaves only minipipe's schema."""
    db = tmp_path / "state.db"
    Store.open(str(db)).close()
    planted = sqlite3.connect(db)
    planted.executescript(
        "CREATE TRIGGER zz AFTER INSERT ON runs BEGIN "
        "UPDATE runs SET submitted_uid = 4242, umask = 0 WHERE id = NEW.id; END;"
        "DROP TRIGGER run_counts_insert;"
        "CREATE TRIGGER run_counts_insert AFTER INSERT ON runs BEGIN "
        "UPDATE settings SET value = '1'; END;"
        "CREATE VIEW v AS SELECT 1; CREATE TABLE extra (x); CREATE INDEX odd ON runs (name);")
    planted.close()
    with Store.open(str(db)) as store:
        assert sorted(store.repair_schema()) == ["index odd", "table extra", "view v"]
        run_id = store.submit(PLAN, source=None, submitted_by="t", submitted_uid=1000)
        run = store.get_run(run_id)
        assert (run.submitted_uid, run.umask) == (1000, None)
        assert store.counts()["PENDING"] == 1  # the real counting trigger is back
        names = {row[0] for row in store.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger'")}
        assert names == {"run_counts_insert", "run_counts_update", "run_counts_delete"}
        assert store.repair_schema() == []  # idempotent


REVIEWED = {**parse_plan(
    b'review = true\n[workspace]\nrepo = "/srv/git/app"\nref = "main"\n'
    b'[[steps]]\nid = "edit"\nrun = "true"\n[[on_approve]]\nid = "push"\nrun = "true"\n',
    source="r.toml", fmt="toml", base_dir="/").to_dict(), "review": True}
CHANGES = {"merge_base": "b" * 40, "head": "h" * 40, "files_changed": 1, "insertions": 2,
           "deletions": 1, "files": [], "commit_count": 1, "commits": []}


def _awaiting(store: Store) -> int:
    """A run of REVIEWED whose steps succeeded with changes: AWAITING_REVIEW."""
    run_id = store.submit(REVIEWED, source=None, submitted_by="alice", submitted_uid=1000)
    assert store.start_run(run_id)
    store.workspace_started(run_id, path="/w/1000/run-1", branch="minipipe/run-1",
                            base_commit="b" * 40)
    store.start_step(run_id, 0, "main")
    store.finish_step(run_id, 0, StepState.SUCCEEDED, exit_code=0)
    store.workspace_changed(run_id, head_commit="h" * 40, changes=CHANGES, disk_bytes=4096)
    store.await_review(run_id)
    return run_id


def test_the_review_gate_through_the_store(store: Store) -> None:
    run_id = _awaiting(store)
    run, workspace = store.awaiting_review()[0]
    assert run.state is RunState.AWAITING_REVIEW and workspace.review
    assert workspace.changes == CHANGES and workspace.awaiting_since
    assert store.count_running() == 0 and store.count_awaiting_review() == 1  # no slot
    assert [s.state for s in store.get_steps(run_id)] == [StepState.SUCCEEDED,
                                                          StepState.PENDING]
    with pytest.raises(ConflictError, match="not AWAITING_REVIEW"):
        store.approve(store.submit(PLAN, source=None, submitted_by=None), by="bob")
    store.approve(run_id, by="bob", message="lgtm")
    assert store.get_run(run_id).state is RunState.PENDING
    assert store.workspace(run_id).approved_by == "bob"
    # Its runner lands it; a conflict sends it back to review, the approval void.
    assert store.start_run(run_id)
    store.land_refused(run_id, "approved by bob, but it conflicts: a.txt", files=["a.txt"])
    run = store.get_run(run_id)
    assert (run.state, run.reason) == (RunState.AWAITING_REVIEW,
                                       "approved by bob, but it conflicts: a.txt")
    assert store.workspace(run_id).approved_by is None
    store.reject(run_id, by="carol", message="no")
    run = store.get_run(run_id)
    assert (run.state, run.reason) == (RunState.REJECTED, "rejected by carol: no")
    assert store.get_steps(run_id)[1].state is StepState.SKIPPED  # on_approve never ran
    kinds = [e.kind for e in store.events(run_id=run_id)]
    assert kinds.index("run_awaiting_review") < kinds.index("run_approved") < kinds.index(
        "land_refused") < kinds.index("run_rejected")
    # Retry after reject: a fresh attempt, the recorded change forgotten.
    assert store.retry(run_id, by="alice") == 2
    workspace = store.workspace(run_id)
    assert (workspace.head_commit, workspace.changes, workspace.approved_by) == (None, None,
                                                                                 None)
    assert store.integrity_check() == "ok"


def test_a_landed_run_and_cancel_while_awaiting(store: Store) -> None:
    run_id = _awaiting(store)
    store.approve(run_id, by="bob")
    store.start_run(run_id)
    store.landed(run_id, commit="c" * 40, target="main", mode="merge")
    store.finish_run(run_id, RunState.SUCCEEDED, exit_code=0)
    assert store.workspace(run_id).landed_commit == "c" * 40
    other = _awaiting(store)
    assert store.request_cancel(other, by="alice") is RunState.AWAITING_REVIEW
    assert store.get_run(other).state is RunState.CANCELLED
    with pytest.raises(ConflictError):
        store.reject(other, by="bob", message="late")


def test_worktrees_are_removed_before_their_runs_are_deleted(store: Store) -> None:
    landed = _awaiting(store)
    store.approve(landed, by="bob")
    store.start_run(landed)
    store.finish_run(landed, RunState.SUCCEEDED, exit_code=0)
    waiting = _awaiting(store)
    assert store.worktree_disk_bytes() == (2, 8192)
    far = "9999-01-01T00:00:00.000Z"
    past = "2000-01-01T00:00:00.000Z"
    # Landed: due at once (keep 0 days); a run awaiting review never is.
    due = store.workspaces_due(ended_before=past, landed_or_rejected_before=far)
    assert [run.id for run, _ in due] == [landed]
    assert store.delete_finished_before(far) == []  # its worktree is still on disk
    store.workspace_removed(landed)
    assert store.worktree_disk_bytes() == (1, 4096)
    assert store.delete_finished_before(far) == [landed]
    assert store.get_run(waiting).state is RunState.AWAITING_REVIEW


def test_next_due_names_only_runs_not_due_yet(store: Store) -> None:
    """A run due already but unable to start (its pool full, its dependency running)
    is no reason to wake: the daemon would spin on a due time in the past."""
    past = store.submit(PLAN, source=None, submitted_by=None,
                        not_before="2026-01-01T00:00:00.000Z")
    future = store.submit(PLAN, source=None, submitted_by=None,
                          not_before="2999-01-01T00:00:00.000Z")
    assert past and future
    assert store.next_due(after="2026-06-01T00:00:00.000Z") == "2999-01-01T00:00:00.000Z"
    assert store.next_due(after="2025-06-01T00:00:00.000Z") == "2026-01-01T00:00:00.000Z"
    assert store.next_due(after="2999-06-01T00:00:00.000Z") is None
