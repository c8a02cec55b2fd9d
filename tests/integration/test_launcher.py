"""Forked runners with a real DB: what happens when their setup fails before the run."""

from __future__ import annotations

import os
from pathlib import Path

from minipipe_svc.launcher import TryLater, fork_runner
from minipipe_svc.model import RunState
from minipipe_svc.plan import parse_plan
from minipipe_svc.runner import RunnerArgs
from minipipe_svc.store import Store

PLAN = parse_plan(b'[[steps]]\nid = "a"\nrun = ["true"]\n', source="t.toml", fmt="toml",
                  base_dir="/").to_dict()


def started_run(db: Path) -> int:
    with Store.open(str(db)) as store:
        run_id = store.submit(PLAN, source=None, submitted_by="t")
        assert store.start_run(run_id)
    return run_id  # no connection stays open across the fork


def fork_and_wait(args: RunnerArgs, setup) -> int:
    child = fork_runner(args, setup)
    _pid, status = os.waitpid(child.pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_setup_that_may_work_later_puts_the_run_back_in_the_queue(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    run_id = started_run(db)

    def shutting_down() -> None:
        raise TryLater("systemd refused minipipe-run-1.scope: the system is shutting down")

    assert fork_and_wait(RunnerArgs(str(db), str(tmp_path / "logs"), run_id),
                         shutting_down) == 75
    with Store.open(str(db), readonly=True) as store:
        assert store.get_run(run_id).state is RunState.PENDING
        requeued = store.events(run_id=run_id)[-1]
        assert requeued.kind == "run_requeued"
        assert "shutting down" in requeued.detail["reason"]


def test_setup_that_fails_ends_the_run_failed_with_the_reason(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    run_id = started_run(db)

    def no_such_user() -> None:
        raise LookupError("there is no user 'nobody-here' (config key run_user)")

    assert fork_and_wait(RunnerArgs(str(db), str(tmp_path / "logs"), run_id),
                         no_such_user) == 1
    with Store.open(str(db), readonly=True) as store:
        run = store.get_run(run_id)
        assert run.state is RunState.FAILED
        assert run.reason == ("could not set up the run: there is no user 'nobody-here' "
                              "(config key run_user)")


def test_a_forked_runner_runs_the_run(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    run_id = started_run(db)
    assert fork_and_wait(RunnerArgs(str(db), str(tmp_path / "logs"), run_id), None) == 0
    with Store.open(str(db), readonly=True) as store:
        assert store.get_run(run_id).state is RunState.SUCCEEDED
