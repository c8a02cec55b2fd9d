"""Issue 13's features, attacked under real systemd: run dependencies, delayed starts,
pools, accounting, [[finally]] steps, the on_finish hook and matrix runs.

Each test is one attack made as the actor who would try it: a STEP (a plan whose
step runs the attack as its submitter), a GROUP MEMBER (`alice`, a shell in the
container) or an OUTSIDER (`bob`). Each asserts the secure outcome: a test that
fails names a weakness that is there now.
"""

from __future__ import annotations

import json
import time
from typing import Any

from tests.integration.conftest import wait_for

from .conftest import OPERATOR, Box

VICTIM = "carol"
ADMIN = "dave"
HOOKDROP = "/srv/hookdrop13"
# The hook: every run's environment as JSON; runs named slowhook* keep it alive a while
# (so a step can look for it), the others end at once (a backlog drains fast).
HOOK = ("import json, os, time\n"
        "run = os.environ['MINIPIPE_RUN_ID']\n"
        f"path = '{HOOKDROP}/' + run + '.json'\n"
        "with open(path + '.tmp', 'w') as out:\n"
        "    json.dump(dict(os.environ), out)\n"
        "os.rename(path + '.tmp', path)\n"
        "if os.environ.get('MINIPIPE_RUN_NAME', '').startswith('slowhook'):\n"
        "    time.sleep(8)\n")


# ------------------------------------------------------------------ helpers

def configure(box: Box, **changes: Any) -> None:
    """The stock config with `changes`, in force (reload) before this returns."""
    config = json.loads(box.sh("cat /etc/minipipe/config.json").stdout)
    config.update(changes)
    config = {k: v for k, v in config.items() if v is not None}
    box.c.write("/etc/minipipe/config.json", json.dumps(config))
    box.sh("chown root:root /etc/minipipe/config.json && systemctl reload minipipe")
    time.sleep(1.5)  # SIGHUP: the daemon reads it on its next pass
    assert box.sh("systemctl is-active minipipe", check=False).stdout.strip() == "active"


def with_hook(box: Box, hook: str = HOOK, **changes: Any) -> None:
    box.sh(f"mkdir -p {HOOKDROP} && chmod 1777 {HOOKDROP}")
    box.c.write("/usr/local/lib/hook13.py", hook)
    configure(box, on_finish=["/usr/bin/python3", "/usr/local/lib/hook13.py"], **changes)


def hook_env(box: Box, run_id: int, timeout: float = 40.0) -> dict[str, str]:
    path = f"{HOOKDROP}/{run_id}.json"
    wait_for(lambda: box.sh(f"test -s {path}", check=False).returncode == 0, timeout,
             f"the on_finish hook of run {run_id}", interval=0.3)
    return json.loads(box.sh(f"cat {path}").stdout)


def submit(box: Box, plan: str, args: str = "", *, user: str | None = OPERATOR) -> list[int]:
    out = box.minipipe(f"submit {args} -", user=user, input=plan).stdout
    return [int(line) for line in out.split()]


def cancel(box: Box, run_id: int, user: str = OPERATOR) -> None:
    box.minipipe(f"cancel {run_id}", user=user, check=False)


def daemon_cpu_seconds(box: Box) -> float:
    pid = box.main_pid()
    fields = box.sh(f"cat /proc/{pid}/stat").stdout.rsplit(")", 1)[1].split()
    ticks = int(box.sh("getconf CLK_TCK").stdout)
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def run_json(box: Box, run_id: int) -> dict[str, Any]:
    return box.run(run_id)


def seconds(text: str | None) -> float:
    from datetime import datetime
    assert text
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


SLEEPER = '[[steps]]\nid = "hold"\nrun = "sleep 600"\n'


# ------------------------------------------------------------------ on_finish

def test_step_cannot_read_the_hook_environment_of_another_users_run(service: Box) -> None:
    """A STEP of alice's watches /proc for the hook (nobody) that carries carol's run's
    facts and output tail, and tries to read its environment."""
    box = service
    with_hook(box)
    spy = submit(box, '[[steps]]\nid = "spy"\nrun = ["python3", "-c", """\n'
                 'import os, time\n'
                 'seen, leaked, end = set(), [], time.time() + 25\n'
                 'while time.time() < end:\n'
                 '    for pid in os.listdir("/proc"):\n'
                 '        if not pid.isdigit() or pid in seen: continue\n'
                 '        try:\n'
                 '            if os.stat("/proc/" + pid).st_uid != 65534: continue\n'
                 '            seen.add(pid)\n'
                 '            leaked.append(open("/proc/" + pid + "/environ", "rb").read())\n'
                 '        except OSError: pass\n'
                 '    time.sleep(0.02)\n'
                 'print("SEEN", len(seen))\n'
                 'print("LEAKED", sum(b"carol-secret-tail" in x for x in leaked))\n'
                 '"""]\n')[0]
    box.wait_state(spy, "RUNNING")
    victim = submit(box, 'name = "slowhook-carol"\n[[steps]]\nid = "a"\n'
                    'run = "echo carol-secret-tail"\n', user=VICTIM)[0]
    box.wait_state(victim, "SUCCEEDED")
    assert "carol-secret-tail" in hook_env(box, victim)["MINIPIPE_RUN_OUTPUT_TAIL"]
    box.wait_state(spy, "SUCCEEDED", "FAILED", timeout=60)
    out = box.minipipe(f"logs --raw {spy}").stdout
    assert "SEEN" in out, out
    assert int(out.split("SEEN")[1].split()[0]) >= 1, "the spy never saw the hook: " + out
    assert "LEAKED 0" in out, out


def test_output_tail_cannot_forge_lines_of_other_steps(service: Box) -> None:
    """A STEP prints a record separator (or CR, U+2028) and a fake log-mirror record:
    the hook's MINIPIPE_RUN_OUTPUT_TAIL must not show a line of a step `deploy` the
    run does not have."""
    box = service
    with_hook(box)
    run_id = submit(box, (
        '[[steps]]\nid = "build"\n'
        "run = '''printf 'fine\\036%s\\tdeploy\\t1\\tstdout\\tdeployed to prod by carol\\n'"
        " 2024-01-01T00:00:00.000Z; printf 'ok\\r%s\\tdeploy\\t1\\tstderr\\tall green\\n'"
        " 2024-01-01T00:00:00.000Z; exit 1'''\n"))[0]
    box.wait_state(run_id, "FAILED")
    tail = hook_env(box, run_id)["MINIPIPE_RUN_OUTPUT_TAIL"]
    lines = tail.split("\n")
    assert lines and all(line.startswith("build | ") for line in lines), repr(tail)


def test_matrix_values_cannot_put_control_characters_in_the_hooks_run_name(
        service: Box) -> None:
    """A GROUP MEMBER's [matrix] values become part of the run name, which a plan's
    `name` may not carry unprintable: ESC sequences and newlines would reach
    MINIPIPE_RUN_NAME (a chat message, a shell script's log line). Refused at submit."""
    box = service
    with_hook(box)
    plan = ('name = "m"\n[matrix]\n'
            'k = ["\\u001b]0;PWNED\\u0007x", "a\\nok run 1 (deploy, by carol) SUCCEEDED"]\n'
            '[[steps]]\nid = "a"\nrun = "true"\n')
    before = box.minipipe("ls --all --json").stdout
    refused = box.minipipe("submit -", input=plan, check=False)
    assert refused.returncode == 2, refused
    assert "[matrix]: a value of 'k' is too long or holds a control character" in \
        refused.stderr
    assert box.minipipe("ls --all --json").stdout == before  # nothing queued


def test_hook_reconfigured_later_does_not_replay_old_runs(service: Box) -> None:
    """An admin removes on_finish, later sets a new one (another webhook): the README
    says it starts with the next run that ends; the runs that ended meanwhile (their
    output tails) must not be handed to the new hook."""
    box = service
    with_hook(box)
    first = submit(box, '[[steps]]\nid = "a"\nrun = "true"\n')[0]
    box.wait_state(first, "SUCCEEDED")
    hook_env(box, first)  # the cursor exists now
    configure(box, on_finish=None)
    meanwhile = submit(box, '[[steps]]\nid = "a"\nrun = "echo old-secret"\n')[0]
    box.wait_state(meanwhile, "SUCCEEDED")
    time.sleep(1)
    with_hook(box)
    after = submit(box, '[[steps]]\nid = "a"\nrun = "true"\n')[0]
    box.wait_state(after, "SUCCEEDED")
    hook_env(box, after)
    time.sleep(2)
    replayed = box.sh(f"test -e {HOOKDROP}/{meanwhile}.json", check=False).returncode == 0
    assert not replayed, (f"the new hook got run {meanwhile}, which ended before it was "
                          "configured")


# ------------------------------------------------------------------ [[finally]]

FINALLY_STUBBORN = ('[[steps]]\nid = "main"\nrun = "trap \'\' TERM; sleep 600"\n'
                    '[[finally]]\nid = "cleanup"\nrun = "trap \'\' TERM; sleep 600"\n')


def test_two_quick_cancels_stop_a_stubborn_finally_step(service: Box) -> None:
    """A GROUP MEMBER's run holds its slot (a pool's GPU) in a finally step that ignores
    SIGTERM. An ADMIN cancels twice ("a run always ends when asked twice"), the second
    while the main step is still in its kill grace: the run must end within the kill
    graces, not run its finally step for finally_grace_seconds."""
    box = service
    configure(box, kill_grace_seconds=2, finally_grace_seconds=30)
    run_id = submit(box, FINALLY_STUBBORN)[0]
    box.wait_state(run_id, "RUNNING")
    wait_for(lambda: any(s["state"] == "RUNNING" for s in box.run(run_id)["steps"]), 30,
             "the main step")
    asked = time.time()
    box.minipipe(f"cancel {run_id}", user=ADMIN)
    time.sleep(0.5)
    box.minipipe(f"cancel {run_id}", user=ADMIN)
    deadline = time.monotonic() + 15
    while (run := box.run(run_id))["state"] == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.3)
    steps = {s["step_id"]: s["state"] for s in run["steps"]}
    if run["state"] == "RUNNING":
        cancel(box, run_id, ADMIN)  # the third
        box.wait_state(run_id, "CANCELLED", timeout=30)
    assert run["state"] == "CANCELLED", (
        f"15s after two cancels the run is {run['state']}, its steps {steps}")
    assert seconds(run["finished_at"]) - asked < 12


def test_admin_cancel_stops_a_finally_step_that_ignores_sigterm(service: Box) -> None:
    """A GROUP MEMBER's run sits in a finally step that ignores SIGTERM; one ADMIN
    cancel before it and one during it end the run within the kill grace."""
    box = service
    configure(box, kill_grace_seconds=2, finally_grace_seconds=300)
    run_id = submit(box, FINALLY_STUBBORN)[0]
    wait_for(lambda: any(s["state"] == "RUNNING" for s in box.run(run_id)["steps"]), 30,
             "the main step")
    box.minipipe(f"cancel {run_id}", user=ADMIN)
    wait_for(lambda: box.run(run_id)["steps"][1]["state"] == "RUNNING", 30,
             "the finally step")
    asked = time.time()
    box.minipipe(f"cancel {run_id}", user=ADMIN)
    run = box.wait_state(run_id, "CANCELLED", timeout=20)
    assert seconds(run["finished_at"]) - asked < 8
    assert box.sh("pgrep -u alice -x sleep", check=False).returncode == 1


def test_runtime_max_bounds_finally_steps(service: Box) -> None:
    """A GROUP MEMBER's run with runtime_max and a finally step that ignores SIGTERM and
    never ends: it ends by runtime_max + finally_grace_seconds + kill grace."""
    box = service
    configure(box, kill_grace_seconds=2, finally_grace_seconds=4)
    run_id = submit(box, '[limits]\nruntime_max = "3s"\n' + FINALLY_STUBBORN)[0]
    run = box.wait_state(run_id, "TIMED_OUT", "FAILED", "CANCELLED", timeout=40)
    took = seconds(run["finished_at"]) - seconds(run["started_at"])
    assert run["state"] == "TIMED_OUT" and took < 3 + 2 + 4 + 2 + 3, (run["state"], took)


# ------------------------------------------------------------------ waits

def test_an_overdue_run_that_cannot_start_does_not_spin_the_daemon(service: Box) -> None:
    """A GROUP MEMBER queues a run due in 1 s that waits for another (long) run: once
    due, it still cannot start. The daemon must sleep, not busy-loop on it."""
    box = service
    blocker = submit(box, SLEEPER)[0]
    box.wait_state(blocker, "RUNNING")
    waiting = submit(box, SLEEPER, f"--after {blocker} --delay 1s")[0]
    try:
        time.sleep(3)
        assert box.run(waiting)["state"] == "PENDING"
        before = daemon_cpu_seconds(box)
        time.sleep(5)
        used = daemon_cpu_seconds(box) - before
    finally:
        cancel(box, blocker)
        box.wait_state(waiting, "CANCELLED", timeout=30)
    assert used < 1.0, f"the daemon used {used:.1f}s of CPU in 5s with an overdue run waiting"


def test_at_out_of_range_is_refused_cleanly(service: Box) -> None:
    """A GROUP MEMBER gives --at a moment at the edge of the calendar: a clear refusal,
    not an internal error (a traceback in the daemon's log) nor a queued run."""
    box = service
    for when in ("0001-01-01T00:00+05:00", "9999-12-31T23:59-12:00", "99999-01-01"):
        result = box.minipipe(f"submit --at '{when}' -", input=SLEEPER, check=False)
        assert result.returncode != 0, (when, result.stdout)
        assert "failed on this request" not in result.stderr, (when, result.stderr)
    assert box.sh("systemctl is-active minipipe").stdout.strip() == "active"
    log = "\n".join(box.journal("-u minipipe --since '-2min'"))
    assert "Traceback" not in log, log[-3000:]


def test_a_dependency_on_a_run_that_does_not_exist_is_refused(service: Box) -> None:
    """A GROUP MEMBER names a run id far beyond the last one (a run that will exist
    later, someone else's): refused, never queued to wait for whatever gets that id."""
    box = service
    result = box.minipipe("submit --after 999999 -", input=SLEEPER, check=False)
    assert result.returncode != 0 and "999999" in result.stderr, result.stderr
    result = box.minipipe("submit --after-any 999998 -", input=SLEEPER, check=False)
    assert result.returncode != 0, result.stdout


# ------------------------------------------------------------------ pools

GATED = ('pool = "gpu"\n[[steps]]\nid = "a"\n'
         'run = "while [ ! -e $HOME/gate13-$MINIPIPE_RUN_ID ]; do sleep 0.2; done"\n')


def test_pool_slots_stay_unique_when_a_reload_shrinks_the_pool(service: Box) -> None:
    """Two of a GROUP MEMBER's runs hold gpu slots 0 and 1; an admin shrinks the pool to
    1 (reload), the daemon restarts: a third run must not start (nor share a slot)
    while the pool is full, and takes the slot that is free."""
    box = service
    box.sh("rm -f /home/alice/gate13-*")
    configure(box, pools={"gpu": 2})
    first, second = submit(box, GATED)[0], submit(box, GATED)[0]
    box.wait_state(first, "RUNNING")
    box.wait_state(second, "RUNNING")
    assert {box.run(first)["slot"], box.run(second)["slot"]} == {0, 1}
    configure(box, pools={"gpu": 1})
    third = submit(box, GATED)[0]
    holder_of_0 = first if box.run(first)["slot"] == 0 else second
    other = second if holder_of_0 == first else first
    try:
        box.sh(f"touch /home/alice/gate13-{holder_of_0}", user=OPERATOR)
        box.wait_state(holder_of_0, "SUCCEEDED")
        box.sh("systemctl restart minipipe")
        time.sleep(3)
        assert box.run(third)["state"] == "PENDING"  # slot 1 still taken, size 1
        box.sh(f"touch /home/alice/gate13-{other}", user=OPERATOR)
        box.wait_state(other, "SUCCEEDED")
        run = box.wait_state(third, "RUNNING")
        assert run["slot"] == 0
    finally:
        box.sh(f"touch /home/alice/gate13-{first} /home/alice/gate13-{second} "
               f"/home/alice/gate13-{third}", user=OPERATOR)
        box.wait_state(third, "SUCCEEDED", "FAILED", "CANCELLED")


# ------------------------------------------------------------------ accounting

HIDDEN_BURN = ('[[steps]]\nid = "a"\n'
               'run = "( timeout 3 sh -c \'while :; do :; done\' & ); sleep 4"\n')


def test_a_step_cannot_hide_its_cpu_from_its_own_figures(service: Box) -> None:
    """A STEP burns 3 s of CPU in a double-forked child (reparented to the runner, the
    subreaper, so never waited for by the step): its step figures must still show it."""
    box = service
    run_id = submit(box, HIDDEN_BURN)[0]
    run = box.wait_state(run_id, "SUCCEEDED", "FAILED", timeout=60)
    step = run["steps"][0]["usage"]
    assert step["cpu_seconds"] >= 2.0, step


def test_a_steps_hidden_cpu_still_counts_for_its_run(service: Box) -> None:
    """The same STEP: the run's figures come from its scope's cgroup, which the
    double-forked child cannot leave."""
    box = service
    run_id = submit(box, HIDDEN_BURN)[0]
    run = box.wait_state(run_id, "SUCCEEDED", "FAILED", timeout=60)
    assert run["usage"]["cpu_seconds"] >= 2.0, run["usage"]
    assert "cgroup" in run["usage"]["source"], run["usage"]


def test_a_step_cannot_leave_its_scope(service: Box) -> None:
    """A STEP tries to move itself into another cgroup (its user's, the service's, the
    slice's) to escape its run's accounting and limits: EACCES/EPERM."""
    box = service
    run_id = submit(box, '[[steps]]\nid = "a"\nrun = ["python3", "-c", """\n'
                    'import os\n'
                    'for target in ["/sys/fs/cgroup/cgroup.procs",\n'
                    '               "/sys/fs/cgroup/minipipe.slice/cgroup.procs",\n'
                    '               "/sys/fs/cgroup/system.slice/minipipe.service/cgroup.procs",\n'
                    '               "/sys/fs/cgroup/user.slice/cgroup.procs"]:\n'
                    '    try:\n'
                    '        open(target, "w").write(str(os.getpid()))\n'
                    '        print("MOVED", target)\n'
                    '    except OSError as exc:\n'
                    '        print("DENIED", target, exc.errno)\n'
                    'try:\n'
                    '    os.mkdir("/sys/fs/cgroup/minipipe.slice/minipipe-run-%s.scope/x"\n'
                    '             % os.environ["MINIPIPE_RUN_ID"])\n'
                    '    print("MOVED mkdir")\n'
                    'except OSError as exc:\n'
                    '    print("DENIED mkdir", exc.errno)\n'
                    'print(open("/proc/self/cgroup").read())\n'
                    '"""]\n')[0]
    box.wait_state(run_id, "SUCCEEDED", "FAILED")
    out = box.minipipe(f"logs --raw {run_id}").stdout
    assert "MOVED" not in out, out
    assert f"minipipe-run-{run_id}.scope" in out, out


# ------------------------------------------------------------------ minipipe-submit@

def test_submit_template_instance_names_stay_in_the_plans_directory(service: Box) -> None:
    """An instance name shaped like a path (as a careless admin might start it from
    user input): minipipe-submit@ must not submit a GROUP MEMBER's plan elsewhere as
    root (it would run as run_user)."""
    box = service
    box.c.write("/home/alice/evil.toml", 'name = "evil13"\n[[steps]]\nid = "a"\n'
                'run = "id"\n')
    box.sh("chown alice /home/alice/evil.toml")
    for instance in ("..-..-..-home-alice-evil",
                     "..\\x2f..\\x2f..\\x2fhome\\x2falice\\x2fevil"):
        box.sh(f"systemctl start 'minipipe-submit@{instance}.service'", check=False)
    runs = json.loads(box.minipipe("ls --all --json").stdout)
    assert not [r for r in runs if r["name"] == "evil13"]


# ------------------------------------------------------------------ matrix

def test_matrix_keys_cannot_override_the_steps_environment(service: Box) -> None:
    """A GROUP MEMBER names matrix keys after PATH / LD_PRELOAD / MINIPIPE_RUN_ID: they
    stay MINIPIPE_MATRIX_<KEY> and override nothing."""
    box = service
    ids = submit(box, '[matrix]\npath = ["/evil"]\nld_preload = ["/evil.so"]\n'
                 'RUN_ID = ["7"]\n[[steps]]\nid = "a"\nrun = ["/usr/bin/env"]\n')
    run = box.wait_state(ids[0], "SUCCEEDED", "FAILED")
    assert run["state"] == "SUCCEEDED"
    env = dict(line.split("=", 1) for line in
               box.minipipe(f"logs --raw {ids[0]}").stdout.splitlines() if "=" in line)
    assert env["PATH"] != "/evil" and "LD_PRELOAD" not in env
    assert env["MINIPIPE_RUN_ID"] == str(ids[0])
    assert env["MINIPIPE_MATRIX_PATH"] == "/evil"


def test_hostile_matrix_names_are_escaped_on_a_terminal(service: Box) -> None:
    """A GROUP MEMBER's matrix values carry ESC and bidi overrides, meant for carol's
    terminal through the run names: refused at submit, and the refusal on alice's own
    terminal carries none of them raw."""
    box = service
    plan = ('name = "esc"\n[matrix]\nk = ["\\u001b]0;PWNED\\u0007", '
            '"\\u202eevil", "\\u001b[2J"]\n[[steps]]\nid = "a"\nrun = "true"\n')
    # Refused at submit (they would be part of each run's name); on a terminal the
    # refusal itself shows them escaped.
    box.c.write("/home/alice/esc.toml", plan)
    box.sh("chown alice /home/alice/esc.toml")
    out = box.sh("script -qec 'minipipe submit /home/alice/esc.toml' /dev/null",
                 user=OPERATOR, check=False).stdout
    assert "holds a control character" in out, out
    assert "\x1b]0;PWNED" not in out and "\u202e" not in out and "\x1b[2J" not in out, out


def test_one_matrix_submit_cannot_write_a_gigabyte(service: Box) -> None:
    """A GROUP MEMBER sends a 42 KB plan: 1000 steps, a 3.9 KB [defaults] env (each
    stored run's plan just under the 4 MiB limit) and 256 combinations. The limit is
    per stored plan, so one request would write ~1 GiB in one transaction, in the
    daemon's loop. The whole submit must stay within a bound (refused, or small)."""
    box = service
    blocker = submit(box, SLEEPER)[0]
    box.wait_state(blocker, "RUNNING")
    lines = ['name = "amp"', '[matrix]', 'k = [' + ",".join(map(str, range(256))) + ']',
             '[defaults]', f'env = {{ PAD = "{"x" * 3900}" }}']
    for i in range(1000):
        lines += ['[[steps]]', f'id = "s{i}"', 'run = ["true"]']
    box.c.write("/home/alice/amp.toml", "\n".join(lines) + "\n")
    box.sh("chown alice /home/alice/amp.toml")
    db_before = int(box.sh("du -sb --total /var/lib/minipipe/state.db*").stdout.split()[-2])
    pid = box.main_pid()
    started = time.monotonic()
    result = box.sh(f"cd /home/alice && minipipe submit --after {blocker} amp.toml",
                    user=OPERATOR, check=False, timeout=600)
    took = time.monotonic() - started
    db_after = int(box.sh("du -sb --total /var/lib/minipipe/state.db*").stdout.split()[-2])
    cancel(box, blocker)  # the queued ones end CANCELLED with it
    grew = db_after - db_before
    assert box.main_pid() == pid, f"the daemon was restarted (watchdog?) after {took:.1f}s"
    refused = result.returncode == 2 and "at most" in result.stderr
    assert refused or grew < 64 * 2**20, (
        f"one submit of a 42 KB plan took {took:.1f}s in the daemon's loop and grew the "
        f"DB by {grew / 2**20:.0f} MiB ({len(result.stdout.split())} runs)")
