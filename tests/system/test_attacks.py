"""The trust boundary, attacked: each test is one attack, made as the actor who would try it.

DESIGN.md section 6 says who may do what. Here a step (a plan whose step runs
the attack as its submitter), a group member (`alice`, a shell inside the
container) and an outsider (`bob`) each try what they may not, against runs of
`carol` (another operator). Every test asserts a clear denial (the CLI's words,
or EACCES/EPERM from the kernel), that nothing changed (a snapshot of the DB
rows the attack aimed at, taken as root before and after), and ends with an
audit of the whole DB (integrity, events that agree with states, counts).

A step's attacks run from ATTACKER, a small Python program written into the
container, which prints one JSON line per attempt: its name and its outcome
(the errno's name, "ok" if the kernel let it through, or SQLite's message).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.conftest import wait_for

from .conftest import OPERATOR, OUTSIDER, Box

VICTIM = "carol"  # another operator (group minipipe), whose runs alice attacks
ADMIN = "dave"  # groups minipipe and minipipe-admin
ATTACKS_DIR = "/srv/minipipe-attacks"  # outside /tmp: runs have a private /tmp
ATTACKER = f"{ATTACKS_DIR}/attack.py"
GATES = "/srv/minipipe-attack-gates"
DB = "/var/lib/minipipe/state.db"
LOG_DIR = "/var/log/minipipe"
SECRET = "hunter2-carol-only"
FORGED = "step x succeeded"

ATTACKER_SOURCE = r'''
"""Attacks on minipipe, made as whoever runs this (a step, or a user's shell)."""
import ctypes
import errno
import json
import os
import signal
import socket
import sqlite3
import sys

DB = "/var/lib/minipipe/state.db"


def report(name, outcome):
    print(json.dumps({"attack": name, "outcome": outcome}), flush=True)


def attempt(name, action):
    try:
        result = action()
    except OSError as exc:
        report(name, errno.errorcode.get(exc.errno, str(exc)))
    except sqlite3.Error as exc:
        report(name, f"sqlite: {exc}")
    else:
        report(name, "ok" if result is None else result)


def sql(statement):
    def action():
        conn = sqlite3.connect(DB, timeout=2)
        try:
            conn.execute(statement)
            conn.commit()
        finally:
            conn.close()
    return action


def append(path):
    def action():
        with open(path, "ab") as handle:
            handle.write(b"forged\n")
    return action


def read(path):
    def action():
        with open(path, "rb") as handle:
            handle.read(1)
    return action


def write_db(victim):
    attempt("sqlite: victim SUCCEEDED", sql(
        f"UPDATE runs SET state = 'SUCCEEDED', exit_code = 0 WHERE id = {victim}"))
    attempt("sqlite: run by root", sql(
        "INSERT INTO runs (name, plan, state, steps_total, created_at, submitted_by, "
        "submitted_uid) VALUES ('forged', '{}', 'PENDING', 0, '2024-01-01', 'root', 0)"))
    attempt("sqlite: pause", sql(
        "INSERT OR REPLACE INTO settings (key, value) VALUES ('paused', '1')"))
    for suffix in ("", "-wal", "-shm"):
        attempt(f"append state.db{suffix}", append(DB + suffix))


def plant_links():
    for link in ("/var/lib/minipipe/state.db.lock", "/run/minipipe/minipipe.lock.new",
                 "/var/log/minipipe/run-999999.log"):
        attempt(f"symlink {link}",
                lambda link=link: os.symlink("/run/systemd/system/x.service", link))
    attempt("unlink api.sock", lambda: os.unlink("/run/minipipe/api.sock"))
    attempt("unlink minipipe.lock", lambda: os.unlink("/run/minipipe/minipipe.lock"))


def touch_log(victim):
    path = f"/var/log/minipipe/run-{victim}.log"
    attempt("append other log", append(path))
    attempt("truncate other log", lambda: os.truncate(path, 0))
    attempt("unlink other log", lambda: os.unlink(path))
    forged = os.path.join(os.environ["HOME"], f".forged-run-{victim}.log")
    with open(forged, "w") as handle:
        handle.write("2024-01-01T00:00:00.000Z\tx\t1\tminipipe\tstep x succeeded\n")
    attempt("replace other log", lambda: os.rename(forged, path))
    os.unlink(forged)


def scope_of(pid):
    with open(f"/proc/{pid}/cgroup") as handle:
        return handle.read().strip().splitlines()[-1].rsplit("/", 1)[-1]


def in_scope(scope):
    """(pid, uid, ppid) of every process in a scope."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if scope_of(name) != scope:
                continue
            with open(f"/proc/{name}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            found.append((int(name), os.stat(f"/proc/{name}").st_uid, ppid))
        except (OSError, IndexError, ValueError):
            pass
    return found


def ptrace_attach(pid):
    def action():
        libc = ctypes.CDLL(None, use_errno=True)
        libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        libc.ptrace.restype = ctypes.c_long
        if libc.ptrace(16, pid, None, None) != 0:  # PTRACE_ATTACH
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
    return action


def processes(victim_run, victim_uid):
    """Signal, read and trace the own runner, another run's runner and its step."""
    mine = in_scope(scope_of("self"))
    other = in_scope(f"minipipe-run-{victim_run}.scope")
    own_runner = [pid for pid, uid, _ in mine if uid == 0]
    other_runner = [pid for pid, uid, _ in other if uid == 0]
    other_step = [pid for pid, uid, ppid in other if uid == victim_uid and ppid in other_runner]
    report("own runner is my parent", own_runner == [os.getppid()])
    for name, pids in (("own runner", own_runner), ("other runner", other_runner),
                       ("other step", other_step)):
        if len(pids) != 1:
            report(f"find {name}", f"found {pids}")
            continue
        pid = pids[0]
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            attempt(f"{sig.name} {name}", lambda pid=pid, sig=sig: os.kill(pid, sig))
        attempt(f"environ {name}", read(f"/proc/{pid}/environ"))
        attempt(f"mem {name}", read(f"/proc/{pid}/mem"))
        attempt(f"ptrace {name}", ptrace_attach(pid))


def connect(path):
    def action():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        finally:
            sock.close()
    return action


def api(op, **fields):
    """One raw request; a forged identity in it must change nothing."""
    def action():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        try:
            sock.connect("/run/minipipe/api.sock")
            request = {"v": 1, "op": op, "uid": 0, "user": "root", "submitted_by": "root",
                       **fields}
            sock.sendall(json.dumps(request).encode() + b"\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
        finally:
            sock.close()
        answer = json.loads(reply)
        return answer.get("message") if answer.get("ok") is False else "ok"
    return action


def use_api(victim_run):
    attempt("api cancel", api("cancel", run=victim_run))
    attempt("api retry", api("retry", run=victim_run))
    attempt("api pause", api("pause"))


def forge(run):
    from systemd import journal

    run = os.environ["MINIPIPE_RUN_ID"] if run == "self" else run
    fields = {"MINIPIPE_RUN_ID": str(run), "MINIPIPE_STEP_ID": "x", "MINIPIPE_ATTEMPT": "1",
              "MINIPIPE_STREAM": "minipipe", "SYSLOG_IDENTIFIER": "minipipe-run",
              "PRIORITY": "5"}
    attempt(f"journal forged line for run {run}",
            lambda: journal.send("step x succeeded", **fields))
    attempt(f"journal junk fields for run {run}", lambda: journal.send(
        "step x succeeded\nforged second line",
        **{**fields, "MINIPIPE_ATTEMPT": "x", "MINIPIPE_LINES": "junk"}))
    attempt(f"journal packed entry for run {run}", lambda: journal.send(
        "step x succeeded\nforged packed line", **{**fields, "MINIPIPE_LINES": "2"}))


def read_plans():
    """What anyone who can read the DB learns of other runs' environments."""
    try:
        conn = sqlite3.connect(f"file:{DB}?mode=ro", uri=True)
        try:
            plans = [row[0] for row in conn.execute("SELECT plan FROM runs")]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        report("read plans", f"sqlite: {exc}")
        return
    for plan in plans:
        for step in json.loads(plan)["steps"]:
            for name, value in step["env"].items():
                report(f"env {name} of a run", value)


ATTACKS = {
    "db": lambda victim: write_db(int(victim)),
    "links": lambda: plant_links(),
    "log": lambda victim: touch_log(int(victim)),
    "procs": lambda run, uid: processes(int(run), int(uid)),
    "bus": lambda: attempt("connect systemd private bus", connect("/run/systemd/private")),
    "api": lambda victim: use_api(int(victim)),
    "forge": forge,
    "plans": lambda: read_plans(),
}

for spec in sys.argv[1:]:
    name, *args = spec.split(":")
    ATTACKS[name](*args)
'''

# As root: the rows an attack aims at, to compare before and after.
SNAPSHOT = r'''
import json, sqlite3, sys
conn = sqlite3.connect("file:/var/lib/minipipe/state.db?mode=ro", uri=True)
conn.row_factory = sqlite3.Row
def rows(sql, *args):
    return [dict(row) for row in conn.execute(sql, args)]
print(json.dumps({
    "runs": {i: rows("SELECT * FROM runs WHERE id = ?", int(i)) for i in sys.argv[1:]},
    "steps": {i: rows("SELECT * FROM steps WHERE run_id = ? ORDER BY idx", int(i))
              for i in sys.argv[1:]},
    "events": {i: rows("SELECT * FROM events WHERE run_id = ? ORDER BY id", int(i))
               for i in sys.argv[1:]},
    "settings": rows("SELECT * FROM settings ORDER BY key"),
    "run_ids": [row[0] for row in conn.execute("SELECT id FROM runs ORDER BY id")],
}))
'''

# As root: what must hold of the DB after any attack.
AUDIT = r'''
import json, sqlite3
conn = sqlite3.connect("file:/var/lib/minipipe/state.db?mode=ro", uri=True)
problems = []
integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
if integrity != "ok":
    problems.append(f"integrity_check: {integrity}")
for run_id, state in conn.execute("SELECT id, state FROM runs").fetchall():
    kinds = conn.execute("SELECT kind, detail FROM events WHERE run_id = ? AND kind IN "
                         "('run_finished', 'run_retried') ORDER BY id", (run_id,)).fetchall()
    last = kinds[-1] if kinds else None
    if state in ("PENDING", "RUNNING"):
        if last is not None and last[0] == "run_finished":
            problems.append(f"run {run_id} is {state} after a run_finished event")
    elif last is None or last[0] != "run_finished":
        problems.append(f"run {run_id} is {state} without a run_finished event")
    elif json.loads(last[1])["state"] != state:
        problems.append(f"run {run_id} is {state}, its run_finished says {last[1]}")
    elif conn.execute("SELECT count(*) FROM steps WHERE run_id = ? AND state IN "
                      "('PENDING', 'RUNNING')", (run_id,)).fetchone()[0]:
        problems.append(f"run {run_id} is {state} with steps still pending or running")
counted = {state: n for state, n in conn.execute("SELECT state, n FROM run_counts") if n}
actual = dict(conn.execute("SELECT state, count(*) FROM runs GROUP BY state").fetchall())
if counted != actual:
    problems.append(f"run_counts {counted} != GROUP BY {actual}")
print(json.dumps(problems))
'''


# ------------------------------------------------------------------ helpers


def python(box: Box, script: str, *args: object, user: str | None = None) -> str:
    argv = " ".join(str(a) for a in args)
    return box.sh(f"python3 - {argv}", input=script, user=user).stdout


def snapshot(box: Box, *run_ids: int) -> dict[str, Any]:
    return json.loads(python(box, SNAPSHOT, *run_ids))


def audit(box: Box) -> None:
    problems = json.loads(python(box, AUDIT))
    assert problems == [], problems


def unchanged(box: Box, before: dict[str, Any], *run_ids: int, new: tuple[int, ...] = ()) -> None:
    """The attacked rows are as they were, and no run appeared but the test's own."""
    after = snapshot(box, *run_ids)
    assert after["runs"] == before["runs"]
    assert after["steps"] == before["steps"]
    assert after["events"] == before["events"]
    assert after["settings"] == before["settings"]
    assert after["run_ids"] == sorted({*before["run_ids"], *new})


def plan(name: str, *commands: str | list[str], env: dict[str, str] | None = None,
         cwd: str | None = None) -> str:
    text = f"name = {json.dumps(name)}\n"
    for number, command in enumerate(commands, 1):
        text += f"[[steps]]\nid = \"s{number}\"\nrun = {json.dumps(command)}\n"
        if env:
            text += "env = {" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in env.items()) + "}\n"
        if cwd:
            text += f"cwd = {json.dumps(cwd)}\n"
    return text


def finished(box: Box, user: str, exit_code: int, output: str = "real output") -> int:
    """A run of `user` that ended (FAILED if exit_code), with one line of output."""
    run_id = box.submit(plan(f"{user}-finished", f"echo {output}; exit {exit_code}"), user=user)
    box.wait_state(run_id, "FAILED" if exit_code else "SUCCEEDED")
    return run_id


def gated(box: Box, user: str, name: str) -> int:
    """A run of `user` that holds at a gate (with a secret in its step's env) until opened."""
    box.sh(f"mkdir -p {GATES} && chmod 1777 {GATES} && rm -f {GATES}/{name}.*")
    run_id = box.submit(plan(name, f"touch {GATES}/{name}.started; "
                                   f"while [ ! -e {GATES}/{name}.open ]; do sleep 0.1; done",
                             env={"SECRET": SECRET}), user=user)
    wait_for(lambda: box.sh(f"test -e {GATES}/{name}.started", check=False).returncode == 0,
             60, f"run {run_id} to reach its gate")
    return run_id


def open_gate(box: Box, name: str) -> None:
    box.sh(f"touch {GATES}/{name}.open")


def step_attack(box: Box, *attacks: str) -> tuple[int, dict[str, Any]]:
    """Alice submits a run whose step makes `attacks`; its run id and the outcomes."""
    run_id = box.submit(plan("attacker", ["python3", ATTACKER, *attacks]))
    run = box.wait_state(run_id, "SUCCEEDED", "FAILED")
    output = box.minipipe(f"logs --raw {run_id}").stdout
    assert run["state"] == "SUCCEEDED", output
    return run_id, outcomes(output)


def shell_attack(box: Box, user: str, *attacks: str) -> dict[str, Any]:
    """The same attacks from `user`'s own shell, outside any run."""
    return outcomes(box.sh(f"python3 {ATTACKER} {' '.join(attacks)}", user=user).stdout)


def outcomes(output: str) -> dict[str, Any]:
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return {line["attack"]: line["outcome"] for line in lines}


def uid(box: Box, user: str) -> int:
    return int(box.sh(f"id -u {user}").stdout)


def file_digest(box: Box, path: str) -> str:
    return box.sh(f"sha256sum {path}").stdout.split()[0]


@pytest.fixture
def attacks(service: Box) -> Iterator[Box]:
    """The service, the attack program in place, the queue running; audited afterwards."""
    service.c.write(ATTACKER, ATTACKER_SOURCE)
    yield service
    # After a test held the DB's write lock, writes resume within a second or two.
    wait_for(lambda: service.minipipe("resume", user=None, check=False).returncode == 0, 15,
             "writes to resume")
    audit(service)


# ------------------------------------------------------------------ a step's attacks


READONLY = "sqlite: attempt to write a readonly database"


@pytest.mark.parametrize("actor", ["step", "group member"])
def test_the_db_logs_and_state_directories_cannot_be_written(attacks: Box, actor: str) -> None:
    """Attacks 1-3: write the DB (SQL and plain writes), plant symlinks where root
    writes, replace or append another run's log."""
    box = attacks
    victim = finished(box, VICTIM, exit_code=3)
    log = f"{LOG_DIR}/run-{victim}.log"
    digest = file_digest(box, log)
    before = snapshot(box, victim)
    targets = (f"db:{victim}", "links", f"log:{victim}")
    if actor == "step":
        attacker, results = step_attack(box, *targets)
        new: tuple[int, ...] = (attacker,)
    else:
        results, new = shell_attack(box, OPERATOR, *targets), ()
    # alice may read the DB (read-only); her steps, without group minipipe, not at all.
    sql = "sqlite: unable to open database file" if actor == "step" else READONLY
    assert results == {
        "sqlite: victim SUCCEEDED": sql, "sqlite: run by root": sql, "sqlite: pause": sql,
        "append state.db": "EACCES", "append state.db-wal": "EACCES",
        "append state.db-shm": "EACCES",
        "symlink /var/lib/minipipe/state.db.lock": "EACCES",
        "symlink /run/minipipe/minipipe.lock.new": "EACCES",
        "symlink /var/log/minipipe/run-999999.log": "EACCES",
        "unlink api.sock": "EACCES", "unlink minipipe.lock": "EACCES",
        "append other log": "EACCES", "truncate other log": "EACCES",
        "unlink other log": "EACCES",
        "replace other log": "EACCES",
    }
    unchanged(box, before, victim, new=new)
    assert file_digest(box, log) == digest
    planted = box.sh("ls -A /var/lib/minipipe /run/minipipe /var/log/minipipe").stdout
    assert "state.db.lock" not in planted and "lock.new" not in planted
    assert "run-999999" not in planted
    waited = box.minipipe(f"wait {victim}", check=False)
    assert waited.returncode == 1 and f"run {victim} FAILED" in waited.stderr
    assert json.loads(box.minipipe("status --json").stdout)["paused"] is False


def test_a_step_cannot_signal_trace_or_read_runners_and_other_steps(attacks: Box) -> None:
    """Attacks 4 and 5: its own runner, another run's runner and another user's step are
    out of reach (kill, stop, /proc environ and mem, ptrace); so is systemd's bus."""
    box = attacks
    victim = gated(box, VICTIM, "victim-procs")
    before = snapshot(box, victim)
    attacker, results = step_attack(box, f"procs:{victim}:{uid(box, VICTIM)}", "bus")
    expected: dict[str, Any] = {"own runner is my parent": True,
                                "connect systemd private bus": "EACCES"}
    for target in ("own runner", "other runner", "other step"):
        expected |= {f"SIGSTOP {target}": "EPERM", f"SIGKILL {target}": "EPERM",
                     f"environ {target}": "EACCES", f"mem {target}": "EACCES",
                     f"ptrace {target}": "EPERM"}
    assert results == expected
    unchanged(box, before, victim, new=(attacker,))
    assert box.run(victim)["state"] == "RUNNING"
    open_gate(box, "victim-procs")
    assert box.wait_state(victim, "SUCCEEDED")["exit_code"] == 0


def test_a_group_member_cannot_signal_or_trace_another_users_run(attacks: Box) -> None:
    """Attack 4 from alice's shell: carol's runner and step are as far out of reach."""
    box = attacks
    victim = gated(box, VICTIM, "victim-shell")
    before = snapshot(box, victim)
    results = shell_attack(box, OPERATOR, f"procs:{victim}:{uid(box, VICTIM)}")
    for target in ("other runner", "other step"):
        for attack, denied in (("SIGSTOP", "EPERM"), ("SIGKILL", "EPERM"),
                               ("environ", "EACCES"), ("mem", "EACCES"), ("ptrace", "EPERM")):
            assert results[f"{attack} {target}"] == denied, (attack, target, results)
    unchanged(box, before, victim)
    open_gate(box, "victim-shell")
    box.wait_state(victim, "SUCCEEDED")


def test_a_step_cannot_read_another_runs_environment_from_the_db(attacks: Box) -> None:
    """DESIGN 6: a step may not read other runs' environments. Carol's plan env (a
    secret) must not reach alice's step through the state DB it may read."""
    box = attacks
    victim = box.submit(plan("with-secret", "true", env={"SECRET": SECRET}), user=VICTIM)
    box.wait_state(victim, "SUCCEEDED")
    _attacker, results = step_attack(box, "plans")
    assert SECRET not in results.values(), results
    # Steps run without group minipipe: the DB is out of their reach altogether.
    assert results == {"read plans": "sqlite: unable to open database file"}, results


# ------------------------------------------------------------------ forged output


def test_forged_journal_entries_are_nobodys_output(attacks: Box) -> None:
    """Attack 6: a step and a group member send entries claiming to be another run's
    (and the step its own run's) runner notes, some with junk fields; readers show
    none of them and their counts do not move."""
    box = attacks
    victim = finished(box, VICTIM, exit_code=0, output="genuine-victim-line")
    logs_before = box.minipipe(f"logs {victim}").stdout
    root_logs_before = box.minipipe(f"logs {victim}", user=None).stdout
    shown_before = json.loads(box.minipipe(f"show --json {victim}").stdout)
    before = snapshot(box, victim)
    attacker, results = step_attack(box, f"forge:{victim}", "forge:self")
    shell = shell_attack(box, OPERATOR, f"forge:{victim}")
    box.sh(f"echo '{FORGED}' | systemd-cat -t minipipe-run -p notice", user=OPERATOR)
    assert set(results.values()) == {"ok"} and len(results) == 6, results
    assert set(shell.values()) == {"ok"}, shell
    # The forgeries did reach the journal, with the run ids they claim...
    wait_for(lambda: len([line for line in box.journal(f"MINIPIPE_RUN_ID={victim}")
                          if line.startswith(FORGED)]) == 6, 30, "the forged entries")
    wait_for(lambda: any(line.startswith(FORGED)
                         for line in box.journal(f"MINIPIPE_RUN_ID={attacker}")), 30,
             "the step's forgeries of its own run")
    # ...and no reader takes them for output.
    assert box.minipipe(f"logs {victim}").stdout == logs_before
    assert box.minipipe(f"logs {victim}", user=None).stdout == root_logs_before
    assert box.minipipe(f"logs --source journal {victim}").stdout == logs_before
    assert "genuine-victim-line" in logs_before and FORGED not in logs_before
    for run_id in (victim, attacker):
        shown = json.loads(box.minipipe(f"show --json {run_id}").stdout)
        assert shown["journal_lines_missing"] == 0 and shown["log_lines_lost"] == 0
        own = box.minipipe(f"logs {run_id}")
        # The step's own report lines name its attacks; no line is step x's.
        assert not [line for line in own.stdout.splitlines() if line.startswith("x | ")]
        assert "forged second line" not in own.stdout
        assert "forged packed line" not in own.stdout
        assert own.stderr == ""
    shown_after = json.loads(box.minipipe(f"show --json {victim}").stdout)
    assert shown_after == shown_before
    unchanged(box, before, victim, new=(attacker,))


# ------------------------------------------------------------------ other users' runs


def test_a_group_member_acts_only_on_their_own_runs(attacks: Box) -> None:
    """Attack 7: alice cancels and retries carol's runs, pauses and resumes the queue,
    cancels --all; only her own run is touched. An admin and root may."""
    box = attacks
    failed = finished(box, VICTIM, exit_code=4)
    box.minipipe("pause", user=None)
    queued = [box.submit(plan(f"carol-queued-{n}", "true"), user=VICTIM) for n in (1, 2)]
    own = box.submit(plan("alice-queued", "true"))
    before = snapshot(box, failed, *queued)
    for verb, run_id in (("cancel", queued[0]), ("retry", failed), ("cancel", failed),
                         ("retry", queued[1])):
        denied = box.minipipe(f"{verb} {run_id}", check=False)
        assert denied.returncode == 1, (verb, denied)
        assert denied.stderr == f"Error: permission denied: run {run_id} belongs to carol\n"
        assert denied.stdout == ""
    for verb in ("pause", "resume"):
        denied = box.minipipe(verb, check=False)
        assert denied.returncode == 1
        assert denied.stderr == (f"Error: permission denied: only root and members of group "
                                 f"minipipe-admin may {verb} the queue\n")
    everything = box.minipipe("cancel --all")
    assert everything.stdout == f"run {own}: cancelled\n"
    unchanged(box, before, failed, *queued, new=(own,))
    assert box.run(own)["state"] == "CANCELLED"
    # dave (minipipe-admin) and root may act on carol's runs.
    assert box.minipipe(f"cancel {queued[0]}", user=ADMIN).stdout == \
        f"run {queued[0]}: cancelled\n"
    assert box.minipipe(f"cancel {queued[1]}", user=None).stdout == \
        f"run {queued[1]}: cancelled\n"
    for run_id in queued:
        assert box.run(run_id)["state"] == "CANCELLED"


def test_a_step_cannot_use_the_api_against_another_users_run(attacks: Box) -> None:
    """Attack 8: alice's step cancels and retries carol's run, via the CLI and with a raw
    request claiming to be root. Steps run without the group minipipe (they may not
    read other runs' plans), so they cannot even reach the API socket."""
    box = attacks
    victim = gated(box, VICTIM, "victim-api")
    before = snapshot(box, victim)
    denied = ("permission denied: cannot connect to /run/minipipe/api.sock; add yourself "
              "to group minipipe (then log in again)")
    cli = box.submit(plan("cli-attacker", f"minipipe cancel {victim} 2>&1; echo cancel=$?; "
                                          f"minipipe retry {victim} 2>&1; echo retry=$?; "
                                          "minipipe pause 2>&1; echo pause=$?"))
    assert box.wait_state(cli, "SUCCEEDED", "FAILED")["state"] == "SUCCEEDED"
    said = box.minipipe(f"logs --raw {cli}").stdout.splitlines()
    assert said == [f"Error: {denied}", "cancel=1", f"Error: {denied}", "retry=1",
                    f"Error: {denied}", "pause=1"], said
    raw, results = step_attack(box, f"api:{victim}")
    assert results == {"api cancel": "EACCES", "api retry": "EACCES", "api pause": "EACCES"}
    unchanged(box, before, victim, new=(cli, raw))
    open_gate(box, "victim-api")
    box.wait_state(victim, "SUCCEEDED")


# ------------------------------------------------------------------ outsiders


def test_an_outsider_can_neither_reach_the_api_nor_read_state(attacks: Box) -> None:
    """Attack 9: bob (no group) connects to the API, reads the DB and a log file."""
    box = attacks
    victim = finished(box, VICTIM, exit_code=0)
    before = snapshot(box, victim)
    no_api = ("Error: permission denied: cannot connect to /run/minipipe/api.sock; add "
              "yourself to group minipipe (then log in again)\n")
    for args, stdin in (("submit -", plan("bob", "true")), (f"cancel {victim}", None),
                        (f"retry {victim}", None), ("pause", None)):
        refused = box.minipipe(args, user=OUTSIDER, check=False, input=stdin)
        assert (refused.returncode, refused.stdout, refused.stderr) == (1, "", no_api), args
    # The state directory is 0751 (everyone passes through to worktrees/<uid>), the
    # DB 0640 root:minipipe: reachable by name, not readable.
    no_db = (f"Error: permission denied: cannot read {DB}; add yourself to group minipipe "
             "(then log in again)\n")
    for args in ("ls", f"show {victim}", f"logs {victim}", f"wait {victim}"):
        refused = box.minipipe(args, user=OUTSIDER, check=False)
        assert (refused.returncode, refused.stderr) == (1, no_db), args
    opened = box.sh("python3 -c \"import sqlite3; sqlite3.connect('" + DB + "')"
                    ".execute('SELECT count(*) FROM runs')\"", user=OUTSIDER, check=False)
    assert opened.returncode == 1
    assert "sqlite3.OperationalError: unable to open database file" in opened.stderr
    results = shell_attack(box, OUTSIDER, "links")
    assert set(results.values()) == {"EACCES"}, results
    for path in (DB, f"{DB}-wal", f"{LOG_DIR}/run-{victim}.log"):
        read = box.sh(f"cat {path}", user=OUTSIDER, check=False)
        assert read.returncode == 1 and "Permission denied" in read.stderr, path
    sock = box.sh("python3 -c \"import socket; socket.socket(socket.AF_UNIX)"
                  ".connect('/run/minipipe/api.sock')\"", user=OUTSIDER, check=False)
    assert "PermissionError: [Errno 13] Permission denied" in sock.stderr
    unchanged(box, before, victim)


# ------------------------------------------------------------------ operators' screens


HOSTILE_PLAN = """name = "[/x]"
[[steps]]
id = "screen"
run = '''printf '\\033]0;pwned\\007\\033[2J\\n' '''
"""


def test_hostile_output_reaches_a_terminal_escaped_and_a_pipe_intact(attacks: Box) -> None:
    """Attack 10: a run named `[/x]` whose step retitles the window and clears the
    screen. On alice's terminal (a pty from `script`) `logs` and `show` show escapes;
    piped, `logs` keeps the bytes. (The monitor: tests/integration/test_monitor_hostile.py.)"""
    box = attacks
    run_id = box.submit(HOSTILE_PLAN)
    box.wait_state(run_id, "SUCCEEDED")
    on_terminal = box.sh(f"script -qc 'minipipe logs {run_id}' /dev/null",
                         user=OPERATOR).stdout
    assert "screen | \\x1b]0;pwned\\x07\\x1b[2J" in on_terminal, repr(on_terminal)
    assert "\x1b]0;pwned" not in on_terminal and "\x07" not in on_terminal
    assert "\x1b[2J" not in on_terminal
    shown = box.sh(f"script -qc 'minipipe show {run_id}' /dev/null", user=OPERATOR)
    assert "[/x]" in shown.stdout and "Traceback" not in shown.stdout
    piped = box.minipipe(f"logs {run_id}").stdout
    assert "screen | \x1b]0;pwned\x07\x1b[2J\n" in piped


# ------------------------------------------------------------------ plans refused at submit


def test_a_plan_in_the_submitters_own_tmp_is_refused(attacks: Box) -> None:
    """Attack 11: the service has a private /tmp; a plan there (its cwd) cannot run."""
    box = attacks
    box.sh("mkdir -p /tmp/x && cat > /tmp/x/plan.toml", user=OPERATOR,
           input=plan("from-tmp", "true"))
    before = snapshot(box)
    refused = box.minipipe("submit /tmp/x/plan.toml", check=False)
    assert refused.returncode == 2 and refused.stdout == ""
    assert ("working directory /tmp/x is in /tmp or /var/tmp, which the minipipe service "
            "keeps private" in refused.stderr)
    assert "the service has a private /tmp and /var/tmp" in refused.stderr
    unchanged(box, before)


def test_a_working_directory_alice_cannot_enter_is_refused(attacks: Box) -> None:
    """Attack 12: a cwd only root may enter: runs execute as alice, so it is refused."""
    box = attacks
    before = snapshot(box)
    refused = box.minipipe("submit -", check=False, input=plan("into-root", "ls", cwd="/root"))
    assert refused.returncode == 2 and refused.stdout == ""
    assert "user alice (whom this run executes as) cannot enter /root" in refused.stderr
    unchanged(box, before)


# ------------------------------------------------------------------ identities


def test_steps_run_as_their_submitter_and_never_as_root(attacks: Box) -> None:
    """Attack 13: alice's steps are alice; root's are the minipipe user, never root."""
    box = attacks
    who = "id -un; id -u; grep -E '^(Uid|Gid|CapEff)' /proc/self/status | tr -s '\\t' ' '"
    alices = box.submit(plan("who-alice", who))
    roots = box.submit(plan("who-root", who), user=None)
    for run_id in (alices, roots):
        box.wait_state(run_id, "SUCCEEDED")
    alice = box.minipipe(f"logs --raw {alices}").stdout.splitlines()
    root = box.minipipe(f"logs --raw {roots}", user=None).stdout.splitlines()
    alice_uid, minipipe_uid = uid(box, "alice"), uid(box, "minipipe")
    assert alice[:2] == ["alice", str(alice_uid)], alice
    assert root[:2] == ["minipipe", str(minipipe_uid)], root
    for lines, expected in ((alice, alice_uid), (root, minipipe_uid)):
        assert f"Uid: {expected} {expected} {expected} {expected}" in lines, lines
        assert "CapEff: 0000000000000000" in lines, lines
    users = python(box, "import sqlite3; print([r[0] for r in sqlite3.connect("
                        f"'file:{DB}?mode=ro', uri=True).execute("
                        "'SELECT DISTINCT run_user FROM runs WHERE run_user IS NOT NULL')])")
    assert "root" not in users and "'minipipe'" in users and "'alice'" in users


# ------------------------------------------------------------------ a bad row


def test_one_bad_row_fails_only_its_run(attacks: Box) -> None:
    """Attack 14 (DB damage, made as root since nobody else can write): one PENDING
    run's plan becomes '{'. It ends FAILED with a reason; the daemon and the next run
    carry on."""
    box = attacks
    box.minipipe("pause", user=None)
    bad = box.submit(plan("damaged", "true"))
    good = box.submit(plan("intact", "echo intact"))
    python(box, "import sqlite3; c = sqlite3.connect('" + DB + "'); "
                f"c.execute(\"UPDATE runs SET plan = '{{' WHERE id = {bad}\"); c.commit()")
    pid = box.main_pid()
    wait_for(lambda: box.minipipe("resume", user=None, check=False).returncode == 0, 15,
             "the queue to resume")
    damaged = box.wait_state(bad, "FAILED")
    assert damaged["reason"].startswith("could not start: "), damaged["reason"]
    assert box.wait_state(good, "SUCCEEDED")["exit_code"] == 0
    assert box.sh("systemctl is-active minipipe").stdout.strip() == "active"
    assert box.main_pid() == pid


# ------------------------------------------------------------------ denial of service


def background(box: Box, user: str, command: str, out: str) -> int:
    """A process of `user`'s that outlives this call; its pid (for `kill` afterwards)."""
    return int(box.sh(f"nohup {command} > {out} 2>&1 < /dev/null & echo $!", user=user).stdout)


LOCK_SQUATTER = r'''
import fcntl, os, sys, time
try:
    fd = os.open(sys.argv[1], os.O_RDONLY)
except OSError as exc:
    print("cannot open:", exc.strerror, flush=True)
    sys.exit(1)
print("trying", flush=True)
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        print("holding", flush=True)
        break
    except BlockingIOError:
        time.sleep(0.001)
time.sleep(30)
'''

SHM_SQUATTER = r'''
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
# Byte 120 of the -shm is SQLite's WAL write lock: a writer needs it exclusively.
fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, 120)
print("holding", flush=True)
time.sleep(30)
'''


def test_a_group_member_cannot_keep_the_daemon_from_starting(attacks: Box) -> None:
    """Alice tries to flock the daemon's lock file while the service restarts, to keep
    the daemon down: the lock is root's alone (0600), so she cannot even open it."""
    box = attacks
    box.sh(f"mkdir -p {GATES} && chmod 1777 {GATES}")
    box.c.write(f"{ATTACKS_DIR}/squat_lock.py", LOCK_SQUATTER)
    pid = background(box, OPERATOR, f"python3 {ATTACKS_DIR}/squat_lock.py "
                     "/run/minipipe/minipipe.lock", f"{GATES}/squat-lock.out")
    try:
        said = wait_for(lambda: box.sh(f"cat {GATES}/squat-lock.out").stdout, 10,
                        "the squatter to be ready")
        assert said == "cannot open: Permission denied\n", said
        restarted = box.sh("systemctl restart minipipe", check=False)
        why = box.sh("journalctl -u minipipe -o cat | grep 'another minipipe daemon' | "
                     "tail -1", check=False).stdout
        assert restarted.returncode == 0, f"alice's flock kept the daemon down: {why}"
        assert box.sh("systemctl is-active minipipe", check=False).stdout.strip() == "active"
    finally:
        box.sh(f"kill {pid}", check=False)
        box.sh("systemctl reset-failed minipipe; systemctl restart minipipe", check=False)


def test_a_wal_index_lock_holder_is_named_and_a_step_cannot_be_one(attacks: Box) -> None:
    """Any reader of state.db-shm may take a read lock on SQLite's WAL write-lock byte
    and stall every write (a limit of sharing a live SQLite DB with readers). A step
    cannot (it runs without the group minipipe, so it cannot open -shm); a group
    member can, and the daemon names them in its log so an admin can act."""
    box = attacks
    box.sh(f"mkdir -p {GATES} && chmod 1777 {GATES}")
    box.c.write(f"{ATTACKS_DIR}/squat_shm.py", SHM_SQUATTER)
    step = box.submit(plan("shm-squatter", f"python3 {ATTACKS_DIR}/squat_shm.py {DB}-shm; "
                                           "echo status=$?"))
    assert box.wait_state(step, "SUCCEEDED", "FAILED")["state"] in ("SUCCEEDED", "FAILED")
    said = box.minipipe(f"logs --raw {step}").stdout
    assert "holding" not in said and "Permission denied" in said, said
    out = f"{GATES}/squat-shm.out"
    pid = background(box, OPERATOR, f"python3 {ATTACKS_DIR}/squat_shm.py {DB}-shm", out)
    try:
        wait_for(lambda: "holding" in box.sh(f"cat {out}").stdout, 10, "the lock to be held")
        paused = box.sh("timeout 30 minipipe pause", check=False)
        assert paused.returncode == 1 and "locked" in paused.stderr, paused
        named = box.journal("-u minipipe")
        assert any(f"write lock is held by pid {pid} (user {OPERATOR}" in line
                   for line in named), named[-5:]
        assert box.sh("systemctl is-active minipipe", check=False).stdout.strip() == "active"
    finally:
        box.sh(f"kill {pid}", check=False)
