"""Issue 13 red team (integration): run waits, pools, [[finally]], on_finish, [matrix]
and accounting attacked as a hostile submitter and used as a demanding user, through a
private daemon, real SQLite and real processes.

Each test is one attack or one expectation and asserts the correct outcome: a failing
test names a weakness that is there now.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from minipipe_svc.store import parse_time

from .conftest import Instance, wait_for

TRUE = '[[steps]]\nid = "a"\nrun = "true"\n'
FAIL = '[[steps]]\nid = "a"\nrun = "exit 1"\n'


def _gated(instance: Instance, name: str, then: str = "") -> str:
    """A step that notes its slot, says it started and waits for its own gate."""
    root = instance.root
    body = (f"echo $MINIPIPE_SLOT > {root}/slot-{name}; touch {root}/started-{name}; "
            f"while [ ! -e {root}/gate-{name} ]; do sleep 0.05; done; : {instance.tag}")
    return f"{body}; {then}" if then else body


def _step(run: str, extra: str = "") -> str:
    return f"{extra}[[steps]]\nid = \"a\"\nrun = {json.dumps(run, ensure_ascii=False)}\n"


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _gone(instance: Instance, run_id: int) -> bool:
    return instance.cli("show", str(run_id), "--json", check=False).returncode != 0


# ------------------------------------------------------------------ runs that wait


def test_cleanup_of_a_finished_dependency_does_not_cancel_runs_waiting_on_it(
        instance: Instance) -> None:
    """A USER queues `--after A` and `--after-any A` behind a run A that already
    SUCCEEDED (the waits are met; they wait only for the paused queue, or an --at).
    Auto-cleanup comes due for A. The runs must still run, not end CANCELLED
    "dependency A no longer exists": cleanup keeps a run that a pending run waits
    for (and a gone --after-any dependency had ended: met)."""
    instance.write_config(auto_cleanup_completed_runs=True,
                          completed_run_retention_days=2 / 86400)  # 2 s
    daemon = instance.start_daemon()
    first = instance.submit(TRUE, name="first")
    instance.wait_state(first, "SUCCEEDED")
    instance.cli("pause")
    after = instance.submit(TRUE, "--after", str(first), name="after")
    after_any = instance.submit(TRUE, "--after-any", str(first), name="anyway")
    time.sleep(2.5)
    daemon.send_signal(signal.SIGHUP)  # a reload cleans up at once
    time.sleep(2.0)  # passes of the loop (poll every 1 s)
    assert not _gone(instance, first)  # kept: runs wait for it
    instance.cli("resume")
    ended = {r: instance.wait_state(r, "SUCCEEDED", "FAILED", "CANCELLED")
             for r in (after, after_any)}
    assert {r: (run["state"], run["reason"]) for r, run in ended.items()} == {
        after: ("SUCCEEDED", None), after_any: ("SUCCEEDED", None)}


def test_a_run_id_option_with_a_unicode_digit_is_refused_not_a_traceback(
        running: Instance) -> None:
    """`--after ²`: str.isdigit() says yes, int() says no."""
    plan = running.plan("p", TRUE)
    for option in ("--after", "--after-any"):
        result = running.cli("submit", plan, option, "\u00b2", check=False)
        assert result.returncode == 2 and "is not a run id" in result.stderr, result.stderr


def test_a_huge_run_id_to_wait_for_is_refused_cleanly(running: Instance) -> None:
    """A JSON plan (or --after) naming a run id past SQLite's 64-bit integers: a bad
    request (exit 2, "no run N"), not an internal error of the daemon."""
    instance = running
    huge = str(10**30)
    path = instance.root / "big.json"
    path.write_text(json.dumps({"after": [10**30], "steps": [{"id": "a", "run": "true"}]}))
    path.chmod(0o644)
    results = [instance.cli("submit", instance.plan("p", TRUE), "--after", huge,
                            check=False),
               instance.cli("submit", str(path), check=False)]
    # The daemon is still there.
    assert instance.wait_state(instance.submit(TRUE), "SUCCEEDED")["state"] == "SUCCEEDED"
    for result in results:
        assert result.returncode == 2, result.stderr
        assert "failed on this request" not in result.stderr, result.stderr


def test_delay_takes_a_plain_number_of_seconds_as_its_help_says(running: Instance) -> None:
    """The error for a bad --delay says 'or a number of seconds'; `--delay 90` is one."""
    result = running.cli("submit", running.plan("p", TRUE), "--delay", "90", check=False)
    assert result.returncode == 0, result.stderr
    run = running.run(int(result.stdout))
    waited = parse_time(run["not_before"]) - parse_time(run["created_at"])
    assert 85 <= waited.total_seconds() <= 95
    running.cli("cancel", str(run["id"]))


def test_odd_at_moments_are_taken_or_refused_clearly(running: Instance,
                                                      monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    """DST gap and fold (Europe/Berlin 2027), 24:00, unicode digits, year 9999, year 1,
    the past: exit 0 or 2 with a message, never a traceback, and the daemon lives."""
    instance = running
    monkeypatch.setenv("TZ", "Europe/Berlin")
    plan = instance.plan("p", TRUE)
    outcomes = {}
    for when in ("2027-03-28 02:30", "2027-10-31 02:30", "24:00", "tomorrow 25:00",
                 "\u0660\u0663:\u0660\u0660", "9999-06-01 00:00", "0001-01-01 00:00",
                 "0001-01-01T00:00+01:00", "2020-01-01 00:00", "", " ", "03:00:00"):
        result = instance.cli("submit", plan, "--at", when, check=False)
        assert result.returncode in (0, 2), (when, result.stderr)
        assert result.returncode == 0 or "Error" in result.stderr, (when, result.stderr)
        outcomes[when] = result
    gap = instance.run(int(outcomes["2027-03-28 02:30"].stdout))["not_before"]
    assert gap.startswith(("2027-03-28T00:30", "2027-03-28T01:30")), gap
    assert outcomes["9999-06-01 00:00"].returncode == 2
    assert "366 days" in outcomes["9999-06-01 00:00"].stderr
    past = int(outcomes["2020-01-01 00:00"].stdout)
    assert instance.wait_state(past, "SUCCEEDED")["state"] == "SUCCEEDED"
    instance.cli("cancel", "--all")
    assert instance.daemon is not None and instance.daemon.poll() is None


def test_the_daemon_sleeps_while_runs_wait_for_time_pools_and_runs(instance: Instance
                                                                    ) -> None:
    """A run due in an hour, a due run its full pool holds back, a run waiting for a
    running run: the daemon must not spin (under 5 % of a CPU over 4 s)."""
    instance.write_config(poll_interval_seconds=30.0, pools={"gpu": 1})
    daemon = instance.start_daemon()
    holder = instance.submit(_step(_gated(instance, "hold"), 'pool = "gpu"\n'), name="hold")
    wait_for((instance.root / "started-hold").exists, 30, "the pool's holder to start")
    later = instance.submit(TRUE, "--delay", "1h", name="later")
    held = instance.submit(TRUE, "--pool", "gpu", "--delay", "1s", name="held")
    behind = instance.submit(TRUE, "--after", str(holder), name="behind")
    time.sleep(2.0)  # `held` is due now, and its pool is full
    before = _cpu_seconds(daemon.pid)
    time.sleep(4.0)
    used = _cpu_seconds(daemon.pid) - before
    assert instance.run(held)["state"] == "PENDING"
    (instance.root / "gate-hold").touch()
    for run_id in (holder, held, behind):
        assert instance.wait_state(run_id, "SUCCEEDED", "FAILED")["state"] == "SUCCEEDED"
    instance.cli("cancel", str(later))
    assert used < 0.2, f"the daemon used {used:.2f}s of CPU in 4s while runs waited"


# ------------------------------------------------------------------ pools


def test_a_pool_shrunk_by_a_reload_never_gives_one_slot_twice(instance: Instance) -> None:
    """gpu: 2 slots, both held; the admin reloads with gpu: 1. A third run must wait
    until fewer than one run holds a slot, then take one no running run holds."""
    instance.write_config(pools={"gpu": 2}, max_concurrent_runs=4)
    daemon = instance.start_daemon()
    one = instance.submit(_step(_gated(instance, "one"), 'pool = "gpu"\n'), name="one")
    two = instance.submit(_step(_gated(instance, "two"), 'pool = "gpu"\n'), name="two")
    for name in ("one", "two"):
        wait_for((instance.root / f"started-{name}").exists, 30, f"run {name}")
    slots = {name: (instance.root / f"slot-{name}").read_text().strip()
             for name in ("one", "two")}
    assert sorted(slots.values()) == ["0", "1"]
    instance.write_config(pools={"gpu": 1}, max_concurrent_runs=4)
    daemon.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    third = instance.submit(_step(_gated(instance, "three"), 'pool = "gpu"\n'),
                            name="three")
    low = "one" if slots["one"] == "0" else "two"
    high = "two" if low == "one" else "one"
    (instance.root / f"gate-{low}").touch()
    instance.wait_state(one if low == "one" else two, "SUCCEEDED")
    time.sleep(2.0)
    assert instance.run(third)["state"] == "PENDING", "started over the shrunk pool's size"
    (instance.root / f"gate-{high}").touch()
    wait_for((instance.root / "started-three").exists, 30, "the third run")
    assert (instance.root / "slot-three").read_text().strip() == "0"
    (instance.root / "gate-three").touch()
    assert instance.wait_state(third, "SUCCEEDED")["state"] == "SUCCEEDED"


def test_pool_slots_stay_unique_after_the_daemon_is_killed(instance: Instance) -> None:
    """kill -9 of the daemon with the pool full; the next daemon adopts the runners and
    must neither start a third pool run nor hand out a slot a running run holds."""
    instance.write_config(pools={"gpu": 2}, max_concurrent_runs=4)
    instance.start_daemon()
    one = instance.submit(_step(_gated(instance, "one"), 'pool = "gpu"\n'), name="one")
    two = instance.submit(_step(_gated(instance, "two"), 'pool = "gpu"\n'), name="two")
    for name in ("one", "two"):
        wait_for((instance.root / f"started-{name}").exists, 30, f"run {name}")
    instance.stop_daemon(signal.SIGKILL)
    instance.start_daemon()
    third = instance.submit(_step(_gated(instance, "three"), 'pool = "gpu"\n'),
                            name="three")
    time.sleep(2.0)
    assert instance.run(third)["state"] == "PENDING"
    (instance.root / "gate-one").touch()
    instance.wait_state(one, "SUCCEEDED")
    wait_for((instance.root / "started-three").exists, 30, "the third run")
    assert (instance.root / "slot-three").read_text() == \
        (instance.root / "slot-one").read_text()
    assert (instance.root / "slot-three").read_text() != \
        (instance.root / "slot-two").read_text()
    for name in ("two", "three"):
        (instance.root / f"gate-{name}").touch()
    for run_id in (two, third):
        assert instance.wait_state(run_id, "SUCCEEDED")["state"] == "SUCCEEDED"


# ------------------------------------------------------------------ [[finally]]


def test_runtime_max_bounds_a_finally_step_that_never_ends(instance: Instance) -> None:
    """runtime_max stops the steps; a finally step that ignores SIGTERM and never ends
    gets finally_grace_seconds, then goes: the run ends, nothing is left behind."""
    instance.write_config(kill_grace_seconds=0.5, finally_grace_seconds=1)
    instance.start_daemon()
    plan = (f'[limits]\nruntime_max = "1s"\n[[steps]]\nid = "main"\n'
            f'run = "{instance.sleeper(600)}"\n[[finally]]\nid = "stuck"\n'
            f"run = \"trap '' TERM; while :; do sleep 0.1; done; : {instance.tag}\"\n")
    started = time.monotonic()
    run_id = instance.submit(plan)
    run = instance.wait_state(run_id, "TIMED_OUT", "FAILED", "CANCELLED", "SUCCEEDED",
                              timeout=30)
    assert time.monotonic() - started < 15
    assert run["state"] == "TIMED_OUT", run
    wait_for(lambda: not instance.tagged_pids(), 10, "the steps' processes to go")


# ------------------------------------------------------------------ [matrix]


def test_matrix_keys_that_differ_only_in_case_are_refused(running: Instance) -> None:
    """`db` and `DB` both become MINIPIPE_MATRIX_DB: one value would silently hide the
    other from the steps. Refused at submit, naming the file and the line."""
    instance = running
    plan = instance.plan("m", '[matrix]\ndb = ["pg"]\nDB = ["sqlite"]\n'
                              '[[steps]]\nid = "a"\nrun = "echo $MINIPIPE_MATRIX_DB"\n')
    result = instance.cli("submit", plan, check=False)
    if result.returncode == 0:
        run_id = int(result.stdout.split()[0])
        instance.wait_state(run_id, "SUCCEEDED", "FAILED")
        shown = instance.cli("logs", str(run_id), "--raw").stdout
        raise AssertionError(f"accepted: run {instance.run(run_id)['name']!r} saw "
                             f"MINIPIPE_MATRIX_DB={shown.strip()!r}")
    assert result.returncode == 2 and f"{plan}:" in result.stderr, result.stderr


def test_matrix_runs_keep_distinct_names(running: Instance) -> None:
    """Two combinations whose values differ only at the end: `ls` must tell them
    apart (the name is cut at 200 characters)."""
    instance = running
    values = ", ".join(f'"{"v" * 199}{n}"' for n in (1, 2))
    plan = instance.plan("m", f'name = "t"\n[matrix]\nk = [{values}]\n{TRUE}')
    ids = [int(i) for i in instance.cli("submit", plan).stdout.split()]
    names = [instance.run(i)["name"] for i in ids]
    for run_id in ids:
        instance.wait_state(run_id, "SUCCEEDED")
    assert len(set(names)) == 2, names


def test_a_combination_explosion_is_refused_with_file_and_line(running: Instance) -> None:
    """5 keys of 50 values: 312,500,000 combinations. Refused at once (no run, no
    memory blow-up), naming the file and the [matrix] line."""
    instance = running
    keys = "\n".join(f"k{n} = [{', '.join(str(v) for v in range(50))}]" for n in range(5))
    plan = instance.plan("boom", f'name = "boom"\n\n[matrix]\n{keys}\n{TRUE}')
    started = time.monotonic()
    result = instance.cli("submit", plan, check=False)
    assert time.monotonic() - started < 10
    assert result.returncode == 2, result.stderr
    assert f"{plan}:3:" in result.stderr and "256" in result.stderr, result.stderr
    assert json.loads(instance.cli("ls", "--json").stdout) == []


def test_wait_group_with_a_plain_run_waits_for_that_run_too(running: Instance) -> None:
    """`minipipe wait --group G P`: P is a plain run that FAILED. It was named on the
    command line: it must count (exit 1), not be dropped because G is a group."""
    instance = running
    plan = instance.plan("m", f'[matrix]\nx = ["a", "b"]\n{TRUE}')
    group = int(instance.cli("submit", plan).stdout.split()[0])
    failed = instance.submit(FAIL, name="plain")
    instance.wait_state(failed, "FAILED")
    result = instance.cli("wait", "--group", str(group), str(failed), check=False)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert f"run {failed} FAILED" in result.stderr


def test_wait_group_on_a_member_does_not_report_the_group_succeeded(running: Instance
                                                                     ) -> None:
    """`wait --group N` where N is the second run of a group whose first FAILED:
    exit 0 would tell a script the matrix passed. Wait for N's group, or refuse."""
    instance = running
    plan = instance.plan("m", '[matrix]\nx = ["bad", "ok"]\n[[steps]]\nid = "a"\n'
                              'run = "test $MINIPIPE_MATRIX_X = ok"\n')
    first, second = (int(i) for i in instance.cli("submit", plan).stdout.split())
    instance.wait_state(first, "FAILED")
    instance.wait_state(second, "SUCCEEDED")
    result = instance.cli("wait", "--group", str(second), check=False)
    assert result.returncode != 0, result.stderr


# ------------------------------------------------------------------ on_finish


def test_every_run_ending_at_once_gets_its_hook_across_a_restart(instance: Instance
                                                                  ) -> None:
    """12 runs end together, hooks take 1 s each (4 at a time). The daemon stops
    midway and starts again. Each run's end is handed to the hook, or logged as
    stopped with the daemon: none silently dropped."""
    root = instance.root
    instance.write_config(on_finish=["/bin/sh", "-c",
                                     f'sleep 1; touch {root}/hook-$MINIPIPE_RUN_ID'])
    instance.start_daemon()
    instance.cli("pause")
    ids = [instance.submit(TRUE, name=f"r{n}") for n in range(12)]
    instance.cli("resume")
    for run_id in ids:
        instance.wait_state(run_id, "SUCCEEDED")
    instance.stop_daemon()
    instance.start_daemon()

    def accounted() -> bool:
        log = instance.daemon_log.read_text()
        return all((root / f"hook-{r}").exists()
                   or f"on_finish for run {r} stopped with the daemon" in log for r in ids)

    wait_for(accounted, 30, "every run's hook")


def test_the_hook_output_tail_is_at_most_4_kib(running: Instance) -> None:
    """MINIPIPE_RUN_OUTPUT_TAIL is 'at most 4 KiB': in bytes, whatever the text."""
    instance = running
    instance.stop_daemon()
    instance.write_config(on_finish=["/bin/sh", "-c", 'printf %s "$MINIPIPE_RUN_OUTPUT_TAIL"'
                                     f' > {instance.root}/tail-$MINIPIPE_RUN_ID'])
    instance.start_daemon()
    script = "for i in $(seq 30); do printf '%0.s\U0001f600' $(seq 200); echo; done"
    run_id = instance.submit(_step(script), name="emoji")
    instance.wait_state(run_id, "SUCCEEDED")
    tail = instance.root / f"tail-{run_id}"
    wait_for(lambda: tail.exists() and tail.stat().st_size > 0, 30, "the hook")
    time.sleep(0.3)
    assert tail.stat().st_size <= 4096, tail.stat().st_size


def test_show_and_ls_describe_every_kind_of_wait(instance: Instance) -> None:
    """A run that waits for a run, a time, a full pool and a full group: `ls`,
    `show` and `--json` work and say what each waits for (no traceback)."""
    instance.write_config(pools={"gpu": 1})
    instance.start_daemon()
    holder = instance.submit(_step(_gated(instance, "hold"), 'pool = "gpu"\n'), name="hold")
    wait_for((instance.root / "started-hold").exists, 30, "the holder")
    waits = instance.submit(TRUE, "--after", str(holder), "--after-any", str(holder),
                            "--delay", "1h", "--pool", "gpu", name="waits")
    shown = instance.run(waits)
    assert shown["after"] == [{"run": holder, "any_result": False, "state": "RUNNING"}]
    assert shown["pool"] == "gpu" and shown["slot"] is None and shown["not_before"]
    listing = instance.cli("ls").stdout
    assert f"after {holder}" in listing
    assert "not before:" in instance.cli("show", str(waits)).stdout
    listed = {r["id"]: r for r in json.loads(instance.cli("ls", "--json").stdout)}
    assert listed[waits]["usage"] is None or isinstance(listed[waits]["usage"], dict)
    instance.cli("cancel", str(waits))
    cancelled = instance.run(waits)
    assert cancelled["state"] == "CANCELLED"
    text = instance.cli("show", str(waits)).stdout
    assert "usage: cpu 0" not in text  # a run that never ran consumed n/a, not 0
    (instance.root / "gate-hold").touch()
    instance.wait_state(holder, "SUCCEEDED")

