"""[[finally]] steps: after the others whatever their result (a failure, a cancel),
with MINIPIPE_RUN_STATE, in their own phase, through a private daemon."""

from __future__ import annotations

from .conftest import Instance

PLAN = """
[[steps]]
id = "main"
run = "{main}"
[[steps]]
id = "never"
run = "true"
[[finally]]
id = "clean"
run = "echo $MINIPIPE_RUN_STATE > {root}/state-$MINIPIPE_RUN_ID; {clean}"
[[finally]]
id = "notify"
run = "touch {root}/notified-$MINIPIPE_RUN_ID"
"""


def _plan(instance: Instance, main: str, clean: str = "true") -> str:
    return PLAN.format(main=main, clean=clean, root=instance.root)


def test_finally_steps_run_after_a_failure_and_keep_its_reason(running: Instance) -> None:
    instance = running
    run_id = instance.submit(_plan(instance, "exit 2"), name="fails")
    run = instance.wait_state(run_id, "FAILED", "SUCCEEDED")
    assert (run["state"], run["reason"]) == ("FAILED", "step main: exited with status 2")
    steps = {s["step_id"]: s for s in run["steps"]}
    assert steps["never"]["state"] == "SKIPPED"
    assert (steps["clean"]["state"], steps["clean"]["phase"]) == ("SUCCEEDED", "finally")
    assert steps["notify"]["state"] == "SUCCEEDED"
    assert (instance.root / f"state-{run_id}").read_text() == "FAILED\n"


def test_finally_steps_run_after_a_cancel(running: Instance) -> None:
    instance = running
    run_id = instance.submit(_plan(instance, instance.gated()), name="cancelled")
    instance.wait_started()
    instance.cli("cancel", str(run_id))
    run = instance.wait_state(run_id, "CANCELLED", "FAILED", "SUCCEEDED")
    assert run["state"] == "CANCELLED"
    assert (instance.root / f"state-{run_id}").read_text() == "CANCELLED\n"
    assert (instance.root / f"notified-{run_id}").exists()


def test_a_failing_finally_step_fails_a_run_that_succeeded(running: Instance) -> None:
    instance = running
    run_id = instance.submit(_plan(instance, "true", clean="exit 5"), name="teardown")
    run = instance.wait_state(run_id, "FAILED", "SUCCEEDED")
    assert (run["state"], run["reason"]) == ("FAILED", "step clean: exited with status 5")
    assert (instance.root / f"state-{run_id}").read_text() == "SUCCEEDED\n"
    # The next finally step still ran.
    assert (instance.root / f"notified-{run_id}").exists()
