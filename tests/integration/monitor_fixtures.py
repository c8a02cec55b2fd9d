"""A state DB with known runs at fixed times, for monitor tests and snapshots."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from minipipe_svc.logs import FileLogSink, log_path
from minipipe_svc.model import RunState, StepState
from minipipe_svc.plan import parse_plan
from minipipe_svc.review import write_diff
from minipipe_svc.store import Store

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)

THREE_STEPS = b"""
[[steps]]
id = "fetch"
phase = "build"
run = ["git", "fetch"]
[[steps]]
id = "compile"
phase = "build"
run = "make -j2"
[[steps]]
id = "test"
phase = "verify"
run = "pytest -q"
"""


def plan(name: str) -> dict:
    return parse_plan(b'name = "' + name.encode() + b'"\n' + THREE_STEPS, source="t.toml",
                      fmt="toml", base_dir="/").to_dict()


def build_db(root: Path) -> Path:
    """Runs 1-5: SUCCEEDED, FAILED, RUNNING (in 'compile'), PENDING, PENDING (priority 5)."""
    db = root / "state.db"
    logs = root / "logs"
    with Store.open(str(db)) as store:
        ok = store.submit(plan("nightly"), source=None, submitted_by="alice")
        store.start_run(ok)
        for idx, phase in enumerate(("build", "build", "verify")):
            store.start_step(ok, idx, phase)
            store.finish_step(ok, idx, StepState.SUCCEEDED, exit_code=0)
        store.finish_run(ok, RunState.SUCCEEDED, exit_code=0, output_lines=3)
        bad = store.submit(plan("release-build"), source=None, submitted_by="alice")
        store.start_run(bad)
        store.start_step(bad, 0, "build")
        store.finish_step(bad, 0, StepState.SUCCEEDED, exit_code=0)
        store.start_step(bad, 1, "build")
        store.finish_step(bad, 1, StepState.FAILED, exit_code=2, reason="exited with status 2")
        store.finish_run(bad, RunState.FAILED, exit_code=2,
                         reason="step compile: exited with status 2")
        live = store.submit(plan("docs"), source=None, submitted_by="bob")
        store.start_run(live)
        store.start_step(live, 0, "build")
        store.finish_step(live, 0, StepState.SUCCEEDED, exit_code=0)
        store.start_step(live, 1, "build")
        store.submit(plan("lint"), source=None, submitted_by="bob")
        store.submit(plan("hotfix"), source=None, submitted_by="carol", priority=5)
    sink = FileLogSink(log_path(str(logs), live))
    for text in ("Cloning into 'docs'...", "done."):
        sink.write("fetch", 1, "stdout", text)
    sink.write("compile", 1, "stdout", "cc -c main.c")
    sink.write("compile", 1, "stderr", "main.c:3: warning: unused variable 'x'")
    sink.close()
    freeze_times(db)
    return db


def freeze_times(db: Path) -> None:
    """Put every timestamp at a fixed moment before NOW, so screens are reproducible."""
    conn = sqlite3.connect(db)
    base = "2026-11-26T11:5"
    conn.execute(f"UPDATE runs SET created_at = '{base}' || id || ':00.000Z'")
    conn.execute(f"UPDATE runs SET started_at = '{base}' || id || ':05.000Z' "
                 "WHERE started_at IS NOT NULL")
    conn.execute(f"UPDATE runs SET finished_at = '{base}' || id || ':47.000Z' "
                 "WHERE finished_at IS NOT NULL")
    conn.execute(f"UPDATE steps SET started_at = '{base}' || run_id || ':1' || idx || '.000Z' "
                 "WHERE started_at IS NOT NULL")
    conn.execute(f"UPDATE steps SET finished_at = '{base}' || run_id || ':1' || idx || '.900Z' "
                 "WHERE finished_at IS NOT NULL")
    conn.execute(f"UPDATE events SET ts = '{base}' || coalesce(run_id, 0) || ':' || "
                 "printf('%02d', id) || '.000Z'")
    conn.execute(f"UPDATE workspaces SET awaiting_since = '{base}' || run_id || ':50.000Z' "
                 "WHERE awaiting_since IS NOT NULL")
    conn.commit()
    conn.close()


# What an attacker puts wherever a run carries text: markup that would crash Rich or
# forge a link, and escape sequences that would retitle or clear the terminal.
HOSTILE = ["[/x]", "[bold red]pwned[/]", "[link=file:///etc/passwd]x[/link]",
           "\x1b]0;title\x07", "\x1b[2J", "a\u202eb\x9b2J\nc\rd"]


def in_file(text: str) -> str:
    """`text` as an output line or a step id in the file mirror: one record has no
    newline (the runner splits output at newlines; step ids are validated)."""
    return text.replace("\n", "")


def hostile_plan(text: str) -> dict:
    """A plan whose every text field is `text` (built directly: the DB is the boundary)."""
    base = parse_plan(b'[[steps]]\nid = "s"\nrun = "true"\n', source="t.toml", fmt="toml",
                      base_dir="/").to_dict()
    base["name"] = text
    base["steps"][0].update(id=text, phase=text, command=f"echo {text}")
    return base


def build_hostile_db(root: Path) -> Path:
    """One run per HOSTILE string, named so, with that text in its step, reason,
    events and output; the last run is still running (its cells are updated live)."""
    db = root / "state.db"
    logs = root / "logs"
    with Store.open(str(db)) as store:
        for number, text in enumerate(HOSTILE, 1):
            run_id = store.submit(hostile_plan(text), source=text, submitted_by=text)
            store.start_run(run_id)
            store.start_step(run_id, 0, text)
            store.note(run_id, text, detail=text)
            sink = FileLogSink(log_path(str(logs), run_id))
            for stream in ("stdout", "stderr", "minipipe"):
                sink.write(in_file(text), 1, stream, f"{stream}:{in_file(text)}")
            sink.close()
            if number < len(HOSTILE):
                store.finish_step(run_id, 0, StepState.FAILED, exit_code=1, reason=text)
                store.finish_run(run_id, RunState.FAILED, exit_code=1, reason=text)
    return db


# ---------------------------------------------------------------- workspaces and review

DIFF = b"""\
diff --git a/app/main.py b/app/main.py
index 1111111..2222222 100644
--- a/app/main.py
+++ b/app/main.py
@@ -1,3 +1,4 @@ def main():
 import sys
-print("hello")
+print("hello, world")
+++ not a file header: an added line
 sys.exit(0)
diff --git a/README b/README
new file mode 100644
index 0000000..3333333
--- /dev/null
+++ b/README
@@ -0,0 +1 @@
+needle in the readme
"""

CHANGES = {
    "merge_base": "a" * 40, "head": "c" * 40, "files_changed": 2, "insertions": 4,
    "deletions": 1,
    "files": [{"path": "app/main.py", "old_path": None, "status": "M", "insertions": 3,
               "deletions": 1, "binary": False},
              {"path": "README", "old_path": None, "status": "A", "insertions": 1,
               "deletions": 0, "binary": False}],
    "files_truncated": False,
    "commit_count": 1,
    "commits": [{"sha": "c" * 40, "parents": ["a" * 40], "author": "bob <bob@example.org>",
                 "author_date": "2026-11-02T10:00:00+01:00",
                 "committer": "carol <carol@example.org>",
                 "committer_date": "2026-11-02T11:00:00+01:00", "subject": "greet the world",
                 "message": "greet the world\n\nRelease-As: 2.0.0", "headers": [], "cut": []}],
    "commits_truncated": False,
    "diff_truncated": False,
}


def workspace_plan(name: str, *, review: bool = True, text: str = THREE_STEPS.decode()) -> dict:
    """A plan with a [workspace] (as `submit` stores it: the DB is the boundary)."""
    base = parse_plan(f'name = "{name}"\n{text}'.encode(), source="t.toml", fmt="toml",
                      base_dir="/").to_dict()
    base.update(workspace={"repo": "/srv/git/app", "ref": "main", "land": "merge",
                           "target": None}, review=review)
    return base


def add_change(store: Store, logs: Path, run_id: int, changes: dict, diff: bytes | None,
               *, await_review: bool = True) -> None:
    """What a runner records for a run whose steps changed its workspace."""
    store.start_run(run_id)
    store.workspace_started(run_id, path=f"/var/lib/minipipe/worktrees/1000/run-{run_id}",
                            branch=f"minipipe/run-{run_id}", base_commit="b" * 40)
    store.workspace_changed(run_id, head_commit=changes["head"], changes=changes,
                            disk_bytes=4096)
    if diff is not None:
        logs.mkdir(exist_ok=True)
        write_diff(str(logs), run_id, diff)
    if await_review:
        store.await_review(run_id)


def build_review_db(root: Path) -> Path:
    """Runs 1-4: 1 AWAITING_REVIEW (a 2-file change, its diff recorded), 2 SUCCEEDED
    without a workspace, 3 RUNNING in a fresh worktree (no change yet), 4 landed after
    alice approved it."""
    db = root / "state.db"
    logs = root / "logs"
    with Store.open(str(db)) as store:
        waiting = store.submit(workspace_plan("feature"), source=None, submitted_by="bob")
        add_change(store, logs, waiting, CHANGES, DIFF)
        plain = store.submit(plan("nightly"), source=None, submitted_by="alice")
        store.start_run(plain)
        store.finish_run(plain, RunState.SUCCEEDED, exit_code=0, output_lines=0)
        live = store.submit(workspace_plan("refactor"), source=None, submitted_by="bob")
        store.start_run(live)
        store.workspace_started(live, path=f"/var/lib/minipipe/worktrees/1000/run-{live}",
                                branch=f"minipipe/run-{live}", base_commit="d" * 40)
        landed = store.submit(workspace_plan("docs-fix"), source=None, submitted_by="carol")
        add_change(store, logs, landed, {**CHANGES, "head": "e" * 40}, DIFF)
        store.approve(landed, by="alice")
        store.start_run(landed)
        store.landed(landed, commit="f" * 40, target="main", mode="merge")
        store.finish_run(landed, RunState.SUCCEEDED, exit_code=0, output_lines=0)
    freeze_times(db)
    return db
