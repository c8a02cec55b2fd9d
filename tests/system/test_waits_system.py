"""Runs on a calendar, under real systemd: the shipped minipipe-submit@.service and the
documented timer example, installed as the README says; and runs that wait, with
the daemon restarted under systemd meanwhile."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from tests.integration.conftest import wait_for

from .conftest import Box

NIGHTLY = 'name = "nightly"\n[[steps]]\nid = "a"\nrun = "echo nightly as $(id -un)"\n'


def _runs_named(box: Box, name: str) -> list[dict]:
    return [r for r in json.loads(box.minipipe("ls --all --json").stdout) if r["name"] == name]


def test_a_timer_submits_a_plan_on_a_calendar(service: Box) -> None:
    box = service
    box.c.write("/etc/minipipe/plans/nightly.toml", NIGHTLY)
    box.sh("cp /usr/share/doc/minipipe/examples/nightly.timer /etc/systemd/system/ && "
           "systemctl daemon-reload && systemctl enable --now nightly.timer")
    try:
        timers = box.sh("systemctl list-timers --all nightly.timer").stdout
        assert "nightly.timer" in timers and "minipipe-submit@nightly.service" in timers
        # The template itself, as the timer starts it.
        before = len(_runs_named(box, "nightly"))
        box.sh("systemctl start minipipe-submit@nightly.service")
        runs = _runs_named(box, "nightly")
        assert len(runs) == before + 1
        run = box.wait_state(runs[0]["id"], "SUCCEEDED", "FAILED")
        assert run["state"] == "SUCCEEDED" and run["submitted_by"] == "root"
        assert run["run_user"] == "minipipe"  # root's runs: run_user
        # A timer due in a few seconds fires it, by the calendar.
        due = (datetime.now() + timedelta(seconds=4)).strftime("%Y-%m-%d %H:%M:%S")
        box.c.write("/etc/systemd/system/soon.timer",
                    f"[Timer]\nOnCalendar={due}\nAccuracySec=1s\n"
                    "Unit=minipipe-submit@nightly.service\n")
        box.sh("systemctl daemon-reload && systemctl start soon.timer")
        wait_for(lambda: len(_runs_named(box, "nightly")) == before + 2, 30,
                 "the timer to submit the plan")
    finally:
        box.sh("systemctl disable --now nightly.timer; systemctl stop soon.timer; "
               "rm -f /etc/systemd/system/nightly.timer /etc/systemd/system/soon.timer "
               "/etc/minipipe/plans/nightly.toml; systemctl daemon-reload", check=False)


def test_waits_hold_across_a_service_restart(service: Box) -> None:
    box = service
    box.sh("rm -f /home/alice/gate", user="alice")
    first = box.submit('[[steps]]\nid = "a"\nrun = "while [ ! -e $HOME/gate ]; do '
                       'sleep 0.1; done; exit 1"\n')
    box.wait_state(first, "RUNNING")
    second = box.submit(NIGHTLY.replace("nightly", "second"))
    dependent = int(box.minipipe(f"submit --after {first} -", input=NIGHTLY).stdout)
    later = int(box.minipipe("submit --delay 6s -", input=NIGHTLY).stdout)
    box.sh("systemctl restart minipipe")
    assert box.run(dependent)["state"] == "PENDING"
    assert box.run(later)["state"] == "PENDING"
    box.sh("touch /home/alice/gate", user="alice")
    run = box.wait_state(dependent, "CANCELLED", "SUCCEEDED", timeout=60)
    assert run["reason"] == f"dependency {first} ended FAILED"
    run = box.wait_state(later, "SUCCEEDED", timeout=60)
    assert run["started_at"] >= run["not_before"]
    assert box.wait_state(second, "SUCCEEDED")["state"] == "SUCCEEDED"


def test_an_on_finish_hook_runs_unprivileged_and_knows_the_run(service: Box) -> None:
    box = service
    box.sh("rm -rf /srv/hookdrop && mkdir -p /srv/hookdrop && chmod 1777 /srv/hookdrop")
    config = json.loads(box.sh("cat /etc/minipipe/config.json").stdout)
    box.c.write("/etc/minipipe/config.json", json.dumps({
        **config, "on_finish": [
            "/bin/sh", "-c", 'grep -o "minipipe-[a-z]*-[0-9]*.scope" /proc/self/cgroup | '
            'head -1 > /srv/hookdrop/$MINIPIPE_RUN_ID.cg; '
            # What a careless hook leaves running, out of its session too:
            'setsid sleep 600 > /dev/null 2>&1 & '
            'echo "$(id -un) $MINIPIPE_RUN_STATE $MINIPIPE_RUN_OWNER" > '
            '/srv/hookdrop/$MINIPIPE_RUN_ID']}))
    box.sh("systemctl reload minipipe")
    run_id = box.submit('[[steps]]\nid = "a"\nrun = "exit 1"\n')
    box.wait_state(run_id, "FAILED")
    wait_for(lambda: box.sh(f"test -s /srv/hookdrop/{run_id}", check=False).returncode == 0,
             30, "the hook")
    assert box.sh(f"cat /srv/hookdrop/{run_id}").stdout.split() == ["nobody", "FAILED",
                                                                   "alice"]
    # It ran in a scope of its own, and nothing it started outlives it.
    scope = box.sh(f"cat /srv/hookdrop/{run_id}.cg").stdout.strip()
    assert scope.startswith("minipipe-hook-"), scope
    wait_for(lambda: box.sh("pgrep -u nobody -x sleep", check=False).returncode == 1, 30,
             "the hook's leftover sleep to be stopped with its scope")
    assert box.sh(f"systemctl is-active {scope}", check=False).stdout.strip() != "active"
