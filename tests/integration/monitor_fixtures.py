"""A state DB with known runs at fixed times, for monitor tests and snapshots."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from minipipe_svc.logs import FileLogSink, log_path
from minipipe_svc.model import RunState, StepState
from minipipe_svc.plan import parse_plan
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
