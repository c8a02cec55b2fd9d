"""A reviewed run's life after the approval, through a private daemon and the CLI.

Two promises tests/integration/test_review.py does not cover:

- A daemon restart while an approved run's runner is landing (here: in its
  `on_approve` step) changes nothing about the landing: the runner owns the run, a
  restarted daemon adopts it (README: "Daemon stop never stops runs"; daemon.py
  `reconcile`), the change lands exactly once and the run ends SUCCEEDED. A runner
  that died with the daemon ends INTERRUPTED at the next start, the change it already
  landed stays landed once, and a retry runs only the on_approve steps again.
- `worktree_keep_days`: a landed or rejected run's checkout stays that long after the
  run ended, then the daemon removes it (and `minipipe status` stops counting it).

Real git, a repository of the test user's, the real daemon and runner. A private
daemon runs steps as the repository's own user, so the gate is advisory.
"""

from __future__ import annotations

import json
import os
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from minipipe_svc.store import parse_time

from .conftest import Instance, pid_alive, wait_for
from .test_review import STEP_AUTHOR, make_repo, sh

# The step changes a.txt; the on_approve step logs that it started, waits for the
# gate, then logs the target branch as its checkout sees it (the landed commit).
LANDING = """
name = "landing"
review = true
[workspace]
repo = "{repo}"
ref = "main"
land = "merge"
""" + STEP_AUTHOR + """[[steps]]
id = "edit"
run = '''
set -e
printf 'one\\nTWO\\nthree\\n' > a.txt
git commit -qam "step commit"
'''
[[on_approve]]
id = "after"
run = "{after}"
"""

KEEP_DAYS = 0.00015  # 12.96 s: long enough to look, short enough to wait for
KEEP = timedelta(days=KEEP_DAYS)


@pytest.fixture
def reviewing(instance: Instance) -> Instance:
    instance.write_config(review_by_other=False, review_gate="advisory")
    instance.start_daemon()
    return instance


def _plan(instance: Instance, repo: Path, *, gated: bool = True) -> str:
    log = instance.root / "after.log"
    if not gated:
        return LANDING.format(repo=repo, after=f"git rev-parse main >> {log}")
    # `: <tag>` puts the tag on the step's command line: a leftover is found by it.
    after = (f": {instance.tag}; echo started >> {log}; "
             f"{instance.gated(f'git rev-parse main >> {log}')}")
    return LANDING.format(repo=repo, after=after)


def _awaiting(instance: Instance, plan: str) -> int:
    run_id = instance.submit(plan, name="landing")
    run = instance.wait_state(run_id, "AWAITING_REVIEW", "FAILED")
    assert run["state"] == "AWAITING_REVIEW", run["reason"]
    return run_id


def _events(instance: Instance, run_id: int) -> list[dict[str, Any]]:
    shown = instance.cli("show", str(run_id), "--json", "--events", "500").stdout
    return json.loads(shown)["events"]


def _kinds(instance: Instance, run_id: int) -> list[str]:
    return [event["kind"] for event in _events(instance, run_id)]


def _runner_pid(instance: Instance, run_id: int) -> int:
    with instance.store() as store:
        return wait_for(lambda: store.get_run(run_id).runner_pid, 20, "the runner's pid")


def _status(instance: Instance) -> dict[str, Any]:
    return json.loads(instance.cli("status", "--json").stdout)


def _landed_once(instance: Instance, repo: Path, run_id: int, moved: str) -> str:
    """main is exactly `moved` plus the run's change, merged in one merge commit;
    returns that commit."""
    workspace = instance.run(run_id)["workspace"]
    landed, head = workspace["landed_commit"], workspace["head_commit"]
    assert landed, "the run records no landed commit"
    assert sh(instance, "git rev-parse main", cwd=repo).strip() == landed
    # One merge commit, of main as it was and the reviewed commit, nothing else.
    assert sh(instance, "git rev-list --merges main", cwd=repo).split() == [landed]
    assert sh(instance, "git rev-list --parents -n1 main", cwd=repo).split() == [
        landed, moved, head]
    subjects = sh(instance, "git log --format=%s main", cwd=repo).splitlines()
    assert sorted(subjects) == sorted([f"Merge minipipe run {run_id} (landing) into main",
                                       "moved", "step commit", "base"]), subjects
    assert sh(instance, "git show main:a.txt", cwd=repo) == "one\nTWO\nthree\n"
    assert sh(instance, "git show main:b.txt", cwd=repo) == "moved\n"
    assert sh(instance, "git status --porcelain", cwd=repo) == ""
    assert _kinds(instance, run_id).count("run_landed") == 1
    return landed


def _approve_and_wait_for_the_step(instance: Instance, repo: Path) -> tuple[int, str]:
    """A run awaiting review, main moved on meanwhile (so the landing is a merge
    commit), approved; returns once its runner landed and is in the on_approve step."""
    run_id = _awaiting(instance, _plan(instance, repo))
    sh(instance, "printf 'moved\\n' > b.txt && git commit -qam moved", cwd=repo)
    moved = sh(instance, "git rev-parse main", cwd=repo).strip()
    instance.approve(run_id, "-m", "ship it")
    instance.wait_started()
    run = instance.run(run_id)
    assert run["state"] == "RUNNING" and run["phase"] == "on_approve", run
    assert [s["state"] for s in run["steps"]] == ["SUCCEEDED", "RUNNING"]
    _landed_once(instance, repo, run_id, moved)  # landed before the step began
    return run_id, moved


@pytest.mark.parametrize("gate", ["after_restart", "while_down"])
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_daemon_restart_during_on_approve_lands_once_and_the_run_succeeds(
        reviewing: Instance, stop: signal.Signals, gate: str) -> None:
    """The daemon stops (cleanly or killed) while an approved run's runner is in its
    on_approve step; the runner lives on and the step finishes, after the restarted
    daemon adopted it or while no daemon runs at all: the run ends SUCCEEDED and main
    holds the change once."""
    instance = reviewing
    repo = make_repo(instance)
    run_id, moved = _approve_and_wait_for_the_step(instance, repo)
    runner = _runner_pid(instance, run_id)
    code = instance.stop_daemon(stop)
    assert code == (0 if stop == signal.SIGTERM else -signal.SIGKILL)
    if stop == signal.SIGTERM:
        assert "1 run(s) keep running" in instance.daemon_log.read_text()
    assert pid_alive(runner)
    if gate == "while_down":  # the runner records its end itself
        instance.open_gate()
        with instance.store() as store:
            wait_for(lambda: store.get_run(run_id).state.value != "RUNNING", 60,
                     "the runner to end the run with no daemon running")
        wait_for(lambda: not pid_alive(runner), 10, "the runner to exit")
    instance.start_daemon()
    if gate == "after_restart":
        wait_for(lambda: f"run {run_id}: adopted its live runner (pid {runner})"
                 in instance.daemon_log.read_text(), 10, "the adoption to be logged")
        run = instance.run(run_id)
        assert run["state"] == "RUNNING" and run["steps"][1]["state"] == "RUNNING"
        _landed_once(instance, repo, run_id, moved)  # the restart changed nothing
        instance.open_gate()
    run = instance.wait_state(run_id, "SUCCEEDED", "FAILED", "INTERRUPTED",
                              "AWAITING_REVIEW", timeout=60)
    assert run["state"] == "SUCCEEDED", run["reason"]
    assert run["exit_code"] == 0 and run["reason"] is None
    assert [s["state"] for s in run["steps"]] == ["SUCCEEDED", "SUCCEEDED"]
    landed = _landed_once(instance, repo, run_id, moved)
    # The on_approve step ran once, after the landing, and saw main as landed.
    assert (instance.root / "after.log").read_text().split() == ["started", landed]
    kinds = _kinds(instance, run_id)
    assert kinds.count("run_approved") == 1
    assert kinds.count("run_adopted") == (1 if gate == "after_restart" else 0)
    assert kinds.count("step_started") == 2  # edit, then after: nothing ran again
    if gate == "after_restart":
        wait_for(lambda: f"run {run_id} ended SUCCEEDED" in instance.daemon_log.read_text(),
                 10, "the adopted runner's end to be noticed")
        wait_for(lambda: not pid_alive(runner), 10, "the runner to exit")
    # The new daemon cleans up after a landing its predecessor started (keep: 0 days).
    wait_for(lambda: instance.run(run_id)["workspace"]["removed_at"], 30,
             "the checkout's removal")
    assert not Path(run["workspace"]["path"]).exists()
    counts = _status(instance)["counts"]
    assert counts["RUNNING"] == 0 and counts["PENDING"] == 0


def test_a_runner_killed_with_the_daemon_during_on_approve_ends_interrupted(
        reviewing: Instance) -> None:
    """A crash takes the daemon and the landing runner (in its on_approve step): the
    next daemon finds the runner gone and ends the run INTERRUPTED, stops the step it
    left, and lands nothing again: the change that landed is on main once."""
    instance = reviewing
    repo = make_repo(instance)
    run_id, moved = _approve_and_wait_for_the_step(instance, repo)
    runner = _runner_pid(instance, run_id)
    wait_for(instance.tagged_pids, 10, "the on_approve step's process")
    instance.stop_daemon(signal.SIGKILL)
    os.kill(runner, signal.SIGKILL)
    wait_for(lambda: not pid_alive(runner), 10, "the runner to die")
    instance.start_daemon()
    run = instance.run(run_id)  # reconciled before the daemon answers
    assert run["state"] == "INTERRUPTED", run
    assert run["reason"].startswith(f"runner (pid {runner}) was gone when the daemon started")
    assert "leftover step process" in run["reason"]
    assert [s["state"] for s in run["steps"]] == ["SUCCEEDED", "FAILED"]
    wait_for(lambda: instance.tagged_pids() == [], 10, "the orphaned step to be killed")
    landed = _landed_once(instance, repo, run_id, moved)
    assert run["workspace"]["landed_commit"] == landed
    # The step never got past its gate; opening it now runs nothing.
    instance.open_gate()
    assert (instance.root / "after.log").read_text().split() == ["started"]
    # Nothing is left to run: the queue is idle, main stays as landed.
    status = _status(instance)
    assert status["counts"]["RUNNING"] == 0 and status["counts"]["PENDING"] == 0
    assert instance.run(run_id)["state"] == "INTERRUPTED"
    assert _landed_once(instance, repo, run_id, moved) == landed
    assert "run_adopted" not in _kinds(instance, run_id)
    # Retried, it runs its on_approve step again, where main is the landed commit,
    # and lands nothing again (the approval was used).
    retried = instance.cli("retry", str(run_id)).stdout
    assert "only its on_approve steps run again" in retried
    run = instance.wait_state(run_id, "SUCCEEDED", "FAILED", "INTERRUPTED")
    assert run["state"] == "SUCCEEDED", run["reason"]
    assert run["attempt"] == 2
    assert [s["state"] for s in run["steps"]] == ["SUCCEEDED", "SUCCEEDED"]
    assert (instance.root / "after.log").read_text().split() == ["started", "started",
                                                                 landed]
    assert _landed_once(instance, repo, run_id, moved) == landed


def _watch_until_gone(path: Path, timeout: float) -> datetime:
    """Watch `path` until it is gone; returns the last moment it was seen there."""
    seen = [datetime.now(UTC)]

    def gone() -> bool:
        now = datetime.now(UTC)
        if path.exists():
            seen[0] = now
            return False
        return True

    wait_for(gone, timeout, f"{path} to be removed", interval=0.05)
    return seen[0]


@pytest.mark.parametrize("ending", ["rejected", "landed"])
def test_worktree_keep_days_keeps_the_checkout_then_removes_it(
        instance: Instance, ending: str) -> None:
    instance.write_config(review_by_other=False, review_gate="advisory",
                          worktree_keep_days=KEEP_DAYS)
    instance.start_daemon()
    repo = make_repo(instance)
    run_id = _awaiting(instance, _plan(instance, repo, gated=False))
    if ending == "rejected":
        instance.cli("reject", str(run_id), "-m", "not like this")
        run = instance.run(run_id)
        assert run["state"] == "REJECTED"
    else:
        instance.approve(run_id)
        run = instance.wait_state(run_id, "SUCCEEDED", "FAILED", "AWAITING_REVIEW")
        assert run["state"] == "SUCCEEDED", run["reason"]
        assert run["workspace"]["landed_commit"] == sh(
            instance, "git rev-parse main", cwd=repo).strip()
    finished = parse_time(run["finished_at"])
    assert finished is not None
    workspace = run["workspace"]
    checkout = Path(workspace["path"])
    # Ended, and kept: the checkout is there, still counted, with its measured size.
    assert checkout.is_dir() and (checkout / "a.txt").read_text() == "one\nTWO\nthree\n"
    assert workspace["removed_at"] is None
    assert workspace["disk_bytes"] and workspace["disk_bytes"] > 0
    assert _status(instance)["worktrees"] == {"count": 1, "bytes": workspace["disk_bytes"]}
    # Then removed by the daemon's sweep (every 5 s), not before the keep time ran out.
    last_seen = _watch_until_gone(checkout, KEEP.total_seconds() + 60)
    assert last_seen >= finished + KEEP - timedelta(seconds=0.5), (last_seen, finished)
    run = wait_for(lambda: (r := instance.run(run_id))["workspace"]["removed_at"] and r, 30,
                   "the removal to be recorded")
    removed = parse_time(run["workspace"]["removed_at"])
    assert removed is not None and removed - finished >= KEEP
    assert run["state"] == ("REJECTED" if ending == "rejected" else "SUCCEEDED")
    assert _status(instance)["worktrees"] == {"count": 0, "bytes": 0}
    assert _kinds(instance, run_id).count("workspace_removed") == 1
    if ending == "landed":  # the landing stays; only the checkout went
        assert sh(instance, "git rev-parse main", cwd=repo).strip() == \
            run["workspace"]["landed_commit"]
        after = (instance.root / "after.log").read_text().split()
        assert after == [run["workspace"]["landed_commit"]]
