"""Issue 13, red team round 2, under real systemd: bounded [[finally]] steps and
counted cancels, on_finish hooks in scopes of their own, and the lazy scheduler.

Each test is one attack made as the actor who would try it: a STEP (a plan whose
step runs the attack as its submitter), a GROUP MEMBER (`alice`) or an ADMIN
(`dave`). Each asserts the secure/correct outcome: a test that fails names a
weakness that is there now.
"""

from __future__ import annotations

import json
import time

from tests.integration.conftest import wait_for

from .conftest import Box
from .test_issue13_attacks import (
    ADMIN,
    HOOK,
    HOOKDROP,
    SLEEPER,
    cancel,
    configure,
    daemon_cpu_seconds,
    hook_env,
    seconds,
    submit,
    with_hook,
)

# ------------------------------------------------------------------ helpers

def step_states(box: Box, run_id: int) -> dict[str, str]:
    return {s["step_id"]: s["state"] for s in box.run(run_id)["steps"]}


def wait_step(box: Box, run_id: int, step: str, state: str = "RUNNING",
              timeout: float = 30.0) -> None:
    wait_for(lambda: step_states(box, run_id).get(step) == state, timeout,
             f"step {step} of run {run_id} to be {state}", interval=0.2)


def cancel_into_finally(box: Box, run_id: int) -> None:
    """The first cancel, once step `main` runs; back when finally step `cleanup` runs."""
    wait_step(box, run_id, "main")
    cancel(box, run_id)
    wait_step(box, run_id, "cleanup")


# ------------------------------------------------------------------ [[finally]]

def test_a_daemon_restart_does_not_stop_finally_steps_but_a_new_cancel_does(
        service: Box) -> None:
    """A GROUP MEMBER cancels her run once; its finally step (a clean-up that takes
    a while) runs. The ADMIN restarts the service meanwhile: the new daemon sends the
    old request's SIGTERM again, which must not count as a second cancel (the
    clean-up goes on). A new cancel afterwards must stop it."""
    box = service
    configure(box, kill_grace_seconds=2, finally_grace_seconds=120)
    run_id = submit(box, '[[steps]]\nid = "main"\nrun = "sleep 600"\n'
                    '[[finally]]\nid = "cleanup"\n'
                    'run = "trap \'\' TERM; echo cleaning; sleep 600"\n')[0]
    cancel_into_finally(box, run_id)
    box.sh("systemctl restart minipipe")
    time.sleep(4)
    run = box.run(run_id)
    assert run["state"] == "RUNNING" and step_states(box, run_id)["cleanup"] == "RUNNING", (
        "the re-sent SIGTERM of the old cancel stopped the finally step: "
        f"{run['state']} {step_states(box, run_id)}")
    asked = time.time()
    box.minipipe(f"cancel {run_id}", user=ADMIN)
    run = box.wait_state(run_id, "CANCELLED", timeout=30)
    assert seconds(run["finished_at"]) - asked < 2 + 5, run
    assert box.sh("pgrep -u alice -x sleep", check=False).returncode == 1


def test_cancel_spam_during_a_restart_still_ends_the_run(service: Box) -> None:
    """A GROUP MEMBER asks twice (the README's promise: a run always ends when asked
    twice) while the daemon restarts between her two requests: the run must end
    within the kill graces, not finally_grace_seconds."""
    box = service
    configure(box, kill_grace_seconds=2, finally_grace_seconds=300)
    run_id = submit(box, '[[steps]]\nid = "main"\nrun = "trap \'\' TERM; sleep 600"\n'
                    '[[finally]]\nid = "cleanup"\nrun = "trap \'\' TERM; sleep 600"\n')[0]
    wait_step(box, run_id, "main")
    cancel(box, run_id)
    box.sh("systemctl restart minipipe")
    asked = time.time()
    cancel(box, run_id)
    deadline = time.monotonic() + 20
    while (run := box.run(run_id))["state"] == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.3)
    if run["state"] == "RUNNING":
        cancel(box, run_id, ADMIN)
        box.wait_state(run_id, "CANCELLED", timeout=30)
    assert run["state"] == "CANCELLED", (run["state"], step_states(box, run_id))
    assert seconds(run["finished_at"]) - asked < 2 + 2 + 6


def test_runtime_max_reached_in_finally_steps_after_success_is_bounded(service: Box) -> None:
    """A GROUP MEMBER's main step succeeds at once; its finally step ignores SIGTERM and
    never ends. runtime_max passes while it runs: it gets finally_grace_seconds from
    then, then the kill grace: the run ends TIMED_OUT, not never."""
    box = service
    configure(box, kill_grace_seconds=2, finally_grace_seconds=3)
    run_id = submit(box, '[limits]\nruntime_max = "3s"\n[[steps]]\nid = "main"\n'
                    'run = "true"\n[[finally]]\nid = "report"\n'
                    'run = "trap \'\' TERM; sleep 600"\n')[0]
    run = box.wait_state(run_id, "TIMED_OUT", "FAILED", "CANCELLED", "SUCCEEDED",
                         timeout=40)
    took = seconds(run["finished_at"]) - seconds(run["started_at"])
    assert run["state"] == "TIMED_OUT", run
    assert took < 3 + 3 + 2 + 4, took
    assert box.sh("pgrep -u alice -x sleep", check=False).returncode == 1


def test_a_finally_step_that_forks_away_leaves_nothing_running(service: Box) -> None:
    """A STEP: the finally step double-forks a TERM-ignoring process into a session
    of its own, detached from every pipe, and goes on. Cancelled twice, the run ends
    and nothing of it is left (it must not keep running as alice after the slot went
    to someone else)."""
    box = service
    configure(box, kill_grace_seconds=2, finally_grace_seconds=60)
    run_id = submit(box, (
        '[[steps]]\nid = "main"\nrun = "sleep 600"\n'
        '[[finally]]\nid = "cleanup"\n'
        "run = '''(setsid sh -c 'trap \"\" TERM HUP; exec sleep 6543' "
        "</dev/null >/dev/null 2>&1 &); trap '' TERM; sleep 600'''\n"))[0]
    cancel_into_finally(box, run_id)
    wait_for(lambda: box.sh("pgrep -u alice -f 'sleep 6543'", check=False).returncode == 0,
             15, "the escaped process")
    cancel(box, run_id)
    box.wait_state(run_id, "CANCELLED", timeout=30)
    time.sleep(1)
    left = box.sh("pgrep -u alice -a -f 'sleep'", check=False).stdout
    assert not left.strip(), f"left running after the run ended: {left}"


def test_retry_after_a_cancel_in_finally_runs_them_again_unhindered(service: Box) -> None:
    """An ADMIN retries a GROUP MEMBER's run that was cancelled twice (its finally steps
    stopped): the new attempt must not inherit the old cancel requests (its finally
    step runs whole, the run SUCCEEDED), nor get a SIGTERM from the daemon."""
    box = service
    configure(box, kill_grace_seconds=2, finally_grace_seconds=60)
    box.sh("rm -f /home/alice/retry13b-*")
    run_id = submit(box, (
        '[[steps]]\nid = "main"\n'
        'run = "test -e $HOME/retry13b-$MINIPIPE_RUN_ID || { touch '
        '$HOME/retry13b-$MINIPIPE_RUN_ID; sleep 600; }"\n'
        '[[finally]]\nid = "cleanup"\nrun = "sleep 3; echo finally-done-$MINIPIPE_RUN_STATE"\n'))[0]
    cancel_into_finally(box, run_id)
    cancel(box, run_id)
    box.wait_state(run_id, "CANCELLED", timeout=30)
    box.minipipe(f"retry {run_id}", user=ADMIN)
    run = box.wait_state(run_id, "SUCCEEDED", "FAILED", "CANCELLED", "INTERRUPTED",
                         timeout=60)
    assert run["state"] == "SUCCEEDED", (run["state"], run["reason"], step_states(box, run_id))
    assert "finally-done-SUCCEEDED" in box.minipipe(f"logs --raw {run_id}").stdout


# ------------------------------------------------------------------ on_finish

def test_a_hook_running_across_a_daemon_restart_leaves_nothing(service: Box) -> None:
    """An ADMIN restarts the service while a hook (nobody) runs and has left a
    process in a session of its own: after the restart nothing of the hook runs
    (in a scope of its own it would outlive the service, untimed), its scope is
    gone, and the new daemon hands that run to no second hook."""
    box = service
    hook = HOOK.replace("    time.sleep(8)\n",
                        "    import subprocess\n"
                        "    subprocess.Popen(['setsid', 'sleep', '4321'])\n"
                        "    time.sleep(60)\n")
    with_hook(box, hook)
    run_id = submit(box, 'name = "slowhook-restart"\n[[steps]]\nid = "a"\nrun = "true"\n')[0]
    box.wait_state(run_id, "SUCCEEDED")
    hook_env(box, run_id)
    wait_for(lambda: box.sh("pgrep -u nobody -f 'sleep 4321'", check=False).returncode == 0,
             15, "the hook's leftover")
    scopes = box.sh("systemctl list-units --all --plain --no-legend 'minipipe-hook-*'",
                    check=False).stdout
    box.sh(f"rm -f {HOOKDROP}/{run_id}.json")
    box.sh("systemctl restart minipipe")
    wait_for(lambda: box.sh("pgrep -u nobody", check=False).returncode == 1, 15,
             "every process of the hook to be gone after the restart")
    for line in scopes.splitlines():
        unit = line.split()[0]
        assert box.sh(f"systemctl is-active {unit}", check=False).stdout.strip() != "active"
    time.sleep(3)
    assert box.sh(f"test -e {HOOKDROP}/{run_id}.json", check=False).returncode != 0, \
        "the new daemon ran the hook of that run again"


def test_a_root_run_as_run_user_nobody_cannot_read_other_users_hook_environment(
        service: Box) -> None:
    """An ADMIN sets run_user to nobody (root's runs, e.g. a nightly timer's plan, run
    as nobody), the same user as on_finish_user's default. A STEP of such a run then
    shares the hook's uid and reads carol's run's output tail from the hook's
    /proc/PID/environ. Secure: the config is refused (a hook's user must be no run's
    user), or the step cannot read it."""
    box = service
    with_hook(box)  # a hook, as nobody (the default)
    pid = box.main_pid()
    config = json.loads(box.sh("cat /etc/minipipe/config.json").stdout)
    box.c.write("/etc/minipipe/config.json", json.dumps({**config, "run_user": "nobody"}))
    box.sh("systemctl reload minipipe")
    refused = "'on_finish_user' 'nobody' is a user runs execute as"
    wait_for(lambda: any(refused in line for line in box.journal("-u minipipe -n 20")), 30,
             "the reload to be refused")
    # The daemon keeps the config it had (root's runs as minipipe); a CLI reading the
    # file says what is wrong with it.
    assert box.main_pid() == pid
    assert box.sh("systemctl is-active minipipe", check=False).stdout.strip() == "active"
    result = box.minipipe("ls", check=False)
    assert result.returncode == 2 and refused in result.stderr, result
    box.c.write("/etc/minipipe/config.json", json.dumps(config))
    spy = submit(box, '[[steps]]\nid = "who"\nrun = "id -un"\n', user=None)[0]
    box.wait_state(spy, "SUCCEEDED")
    assert box.minipipe(f"logs --raw {spy}").stdout.split()[-1] == "minipipe"


# ------------------------------------------------------------------ the scheduler

def test_overdue_runs_that_cannot_start_do_not_spin_the_daemon(service: Box) -> None:
    """A GROUP MEMBER queues overdue runs that cannot start through the new paths:
    one in a full pool, matrix runs behind a full --max-parallel group, and (with
    the queue paused by an admin) a plain due run. The daemon must sleep."""
    box = service
    configure(box, pools={"gpu": 1})
    blocker = submit(box, 'pool = "gpu"\n' + SLEEPER)[0]
    box.wait_state(blocker, "RUNNING")
    in_pool = submit(box, 'pool = "gpu"\n' + SLEEPER, "--delay 1s")[0]
    group = submit(box, '[matrix]\nk = [1, 2, 3]\n' + SLEEPER, "--max-parallel 1 --delay 1s")
    plain: list[int] = []
    try:
        wait_for(lambda: box.run(group[0])["state"] == "RUNNING", 20, "the group's first")
        time.sleep(2)
        assert box.run(in_pool)["state"] == "PENDING"
        before = daemon_cpu_seconds(box)
        time.sleep(5)
        used_full = daemon_cpu_seconds(box) - before
        box.minipipe("pause", user=ADMIN)
        plain = submit(box, SLEEPER, "--delay 1s")
        time.sleep(2)
        before = daemon_cpu_seconds(box)
        time.sleep(5)
        used_paused = daemon_cpu_seconds(box) - before
        assert box.run(plain[0])["state"] == "PENDING"
    finally:
        for run_id in [blocker, in_pool, *group, *plain]:
            cancel(box, run_id)
        box.minipipe("resume", user=ADMIN, check=False)
    assert used_full < 1.0, f"{used_full:.1f}s of daemon CPU in 5s (full pool and group)"
    assert used_paused < 1.0, f"{used_paused:.1f}s of daemon CPU in 5s (paused queue)"
