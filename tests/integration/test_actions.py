"""The daemon's request handling (actions.py) with a real store: every rule of the
trust model that depends on who asks, tried as each kind of caller.

Callers are `Peer`s as SO_PEERCRED reports them; the users are real entries of
this machine's user database (root, nobody, and the integration tests' user).
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from minipipe_svc import protocol
from minipipe_svc.actions import Actions
from minipipe_svc.config import build_config
from minipipe_svc.identity import Peer
from minipipe_svc.store import Store

from .conftest import unprivileged_user

PLAN = '[[steps]]\nid = "a"\nrun = ["true"]\n'


@pytest.fixture
def setup(tmp_path: Path):
    owner = unprivileged_user() or pwd.getpwuid(os.getuid())
    nobody = pwd.getpwnam("nobody")
    store = Store.open(str(tmp_path / "state.db"))
    config = build_config({"db_path": str(tmp_path / "state.db"), "admin_group": None},
                          source=None)
    actions = Actions(store, config, version="test")
    yield actions, Peer(1, owner.pw_uid, owner.pw_gid), Peer(2, nobody.pw_uid, nobody.pw_gid)
    store.close()


def submit(actions: Actions, peer: Peer, text: str = PLAN, cwd: str = "/") -> dict:
    return actions.handle(peer, {"v": 1, "op": "submit", "plan": text, "source": "-",
                                 "path": None, "cwd": cwd})


def test_a_run_belongs_to_the_uid_that_submitted_it(setup) -> None:
    actions, owner, _other = setup
    reply = submit(actions, owner)
    assert reply["ok"], reply
    run = actions.store.get_run(reply["run"])
    assert (run.submitted_uid, run.submitted_by) == (owner.uid, pwd.getpwuid(owner.uid).pw_name)


def test_others_may_not_cancel_or_retry_and_nothing_changes(setup) -> None:
    actions, owner, other = setup
    run_id = submit(actions, owner)["run"]
    events = actions.store.count_events()
    name = pwd.getpwuid(owner.uid).pw_name
    for op in ("cancel", "retry"):
        reply = actions.handle(other, {"v": 1, "op": op, "run": run_id})
        assert reply == protocol.error(
            "permission_denied", f"permission denied: run {run_id} belongs to {name}")
    assert actions.handle(other, {"v": 1, "op": "cancel", "all": True})["results"] == []
    assert actions.store.get_run(run_id).state.value == "PENDING"
    assert actions.store.count_events() == events


def test_the_owner_and_root_may_cancel(setup) -> None:
    actions, owner, _other = setup
    first, second = submit(actions, owner)["run"], submit(actions, owner)["run"]
    mine = actions.handle(owner, {"v": 1, "op": "cancel", "run": first})
    assert mine["ok"] and mine["results"] == [{"run": first, "was": "PENDING"}]
    root = actions.handle(Peer(3, 0, 0), {"v": 1, "op": "cancel", "run": second})
    assert root["ok"]
    assert actions.store.get_run(second).state.value == "CANCELLED"


def test_pause_and_resume_are_for_admins(setup) -> None:
    actions, _owner, other = setup
    denied = actions.handle(other, {"v": 1, "op": "pause"})
    assert denied["error"] == "permission_denied" and "may pause the queue" in denied["message"]
    assert not actions.store.is_paused()
    assert actions.handle(Peer(3, 0, 0), {"v": 1, "op": "pause"}) == {"ok": True,
                                                                       "changed": True}


def test_requests_are_checked_field_by_field(setup) -> None:
    actions, owner, _other = setup
    for bad in ({"v": 1, "op": "retry", "run": True}, {"v": 1, "op": "retry", "run": "1"},
                {"v": 1, "op": "retry", "run": 0}, {"v": 2, "op": "ping"},
                {"v": 1, "op": "submit", "plan": PLAN, "source": "-", "cwd": "rel"},
                {"v": 1, "op": "submit", "plan": PLAN, "source": "-", "cwd": "/",
                 "priority": 10**9},
                {"v": 1, "op": "submit", "plan": PLAN, "source": "-", "cwd": "/", "umask": -1},
                {"v": 1, "op": "__init__"}, {"v": 1}):
        assert actions.handle(owner, bad)["error"] == "bad_request", bad
    assert actions.store.list_runs(limit=None) == []


def test_a_bad_plan_comes_back_with_its_line(setup) -> None:
    actions, owner, _other = setup
    reply = actions.handle(owner, {"v": 1, "op": "submit", "plan": '[[steps]]\nid = "a"\nrun = 5\n',
                                   "source": "ci.toml", "path": "/x/ci.toml", "cwd": "/"})
    assert reply["error"] == "bad_plan" and reply["message"].startswith("ci.toml:3:")


def test_a_cwd_that_does_not_exist_is_refused_at_submit(setup) -> None:
    actions, owner, _other = setup
    reply = submit(actions, owner, '[[steps]]\nid = "a"\nrun = ["true"]\ncwd = "/no/such"\n')
    assert reply["error"] == "bad_plan"
    assert "working directory /no/such does not exist as the minipipe service sees it" in (
        reply["message"])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to submit as another user")
def test_a_cwd_the_runs_user_cannot_enter_is_refused_at_submit(setup, tmp_path: Path) -> None:
    actions, owner, _other = setup
    private = tmp_path / "private"
    private.mkdir(mode=0o700)  # root's: the test user may not enter it
    reply = submit(actions, owner, f'[[steps]]\nid = "a"\nrun = ["true"]\ncwd = "{private}"\n')
    assert reply["error"] == "bad_plan"
    assert f"(whom this run executes as) cannot enter {private}" in reply["message"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to ask as other users")
def test_directories_are_probed_as_the_runs_user(tmp_path: Path) -> None:
    """Root without CAP_DAC_* cannot look inside a 0700 home; the user can. The probe
    asks as the user (a forked child that drops to it), as the kernel would answer."""
    from minipipe_svc.identity import identity_of, probe_directories

    owner = pwd.getpwuid(unprivileged_user().pw_uid)
    home = tmp_path / "home"
    (home / "project").mkdir(parents=True)
    for path in (home, home / "project"):
        os.chown(path, owner.pw_uid, owner.pw_gid)
    home.chmod(0o700)
    tmp_path.chmod(0o755)
    for parent in tmp_path.parents:
        if not parent.stat().st_mode & 0o001:
            parent.chmod((parent.stat().st_mode & 0o7777) | 0o001)
    paths = [str(home / "project"), str(home / "missing"), "/root"]
    assert probe_directories(identity_of(owner), paths) == ["ok", "missing", "denied"]
    nobody = identity_of(pwd.getpwnam("nobody"))
    assert probe_directories(nobody, paths) == ["denied", "denied", "denied"]


def test_with_a_private_tmp_no_step_may_run_under_tmp(tmp_path: Path) -> None:
    """The service's /tmp is shared by every run of every user and is not the
    submitter's: a cwd there is refused, existing or not (/tmp itself exists)."""
    store = Store.open(str(tmp_path / "state.db"))
    config = build_config({"db_path": str(tmp_path / "state.db")}, source=None)
    actions = Actions(store, config, private_tmp=True)
    user = unprivileged_user() or pwd.getpwuid(os.getuid())
    me = Peer(1, user.pw_uid, user.pw_gid)
    try:
        for cwd in ("/tmp", "/tmp/x/y", "/var/tmp"):
            reply = submit(actions, me, f'[[steps]]\nid = "a"\nrun = ["true"]\ncwd = "{cwd}"\n')
            assert reply["error"] == "bad_plan", reply
            assert "which the minipipe service keeps private" in reply["message"]
            assert "e.g. in your home" in reply["message"]
        assert store.list_runs(limit=None) == []
    finally:
        store.close()


def test_a_plan_that_expands_past_the_stored_limit_is_refused(setup) -> None:
    """[defaults] is copied into every step: 5 KB of env times 1000 steps is 5 MB."""
    actions, owner, _other = setup
    env = "".join(f'V{i} = "{"x" * 1000}"\n' for i in range(5))
    steps = "".join(f'[[steps]]\nid = "s{i}"\nrun = ["true"]\n' for i in range(1000))
    reply = submit(actions, owner, "[defaults.env]\n" + env + steps)
    assert reply["error"] == "bad_plan" and "once [defaults] are applied" in reply["message"]
    assert actions.store.list_runs(limit=None) == []


def test_a_line_that_would_make_a_regex_backtrack_is_parsed(setup) -> None:
    """The TOML line index runs in the root daemon's loop: no pattern may backtrack.
    (The patterns this replaced took ~5 s on this input and minutes on a longer one;
    a regression shows up in this test's duration, no clock is asserted.)"""
    actions, owner, _other = setup
    text = ('description = """\n[[' + " " * 3_000 + "x\n[" + " " * 3_000 + 'y\n"""\n'
            + PLAN)
    reply = submit(actions, owner, text)
    assert reply["ok"], reply
