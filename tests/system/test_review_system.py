"""The review gate under real systemd: checkouts of the submitter's, reviewers, landing.

dave (minipipe-admin, the default reviewer group) keeps the team's repository,
/srv/git/app, which everyone may read and only he may write. alice (group minipipe)
submits runs on it; her steps run as her, in a checkout under
/var/lib/minipipe/worktrees/<her uid> that only she may enter, and cannot touch the
repository: the gate holds. dave approves, and the change lands as him; carol
(another operator) may read the recorded diff but neither review nor enter alice's
checkout.
"""

from __future__ import annotations

import json

from tests.integration.conftest import wait_for

from .conftest import Box

REPO = "/srv/git/app"
PLAN = """
name = "bump"
review = true
[workspace]
repo = "/srv/git/app"
ref = "main"
setup = "id -un > .setup-user"
[defaults.env]
GIT_AUTHOR_NAME = "alice"
GIT_AUTHOR_EMAIL = "alice@example.org"
GIT_COMMITTER_NAME = "alice"
GIT_COMMITTER_EMAIL = "alice@example.org"
[[steps]]
id = "edit"
run = '''
set -e
test "$(cat .setup-user)" = alice && rm .setup-user
id -un > whoami.txt
printf 'v2\\n' > VERSION
git add -A && git commit -qm "bump to v2"
printf 'untracked\\n' > notes.txt
'''
[[on_approve]]
id = "announce"
run = "git log -1 --format=%s main"
"""

# What a step might try, to land without review: rewind the repository's main, write
# its ref file, plant a hook or config that would run as whoever lands next.
ATTACK = """
[[steps]]
id = "around-the-gate"
run = '''
git -c safe.directory='*' -C /srv/git/app update-ref refs/heads/main main~1 2>/dev/null \\
    && echo moved-main >> /tmp/attack
echo evil 2>/dev/null > /srv/git/app/.git/refs/heads/main && echo wrote-ref >> /tmp/attack
echo 'id > /srv/git/pwned' 2>/dev/null > /srv/git/app/.git/hooks/reference-transaction \\
    && echo planted-hook >> /tmp/attack
git -c safe.directory='*' -C /srv/git/app config core.fsmonitor 'id > /srv/git/pwned' \\
    2>/dev/null && echo set-config >> /tmp/attack
test ! -e /tmp/attack
'''
"""


def make_repo(box: Box) -> None:
    """dave's repository, readable by everyone, with main checked out (v0, v1)."""
    box.sh(f"rm -rf {REPO} && mkdir -p /srv/git && chown dave: /srv/git && chmod 755 /srv/git")
    box.sh(f"git init -q --initial-branch=main {REPO} && cd {REPO} && "
           "echo v0 > VERSION && git add . && git -c user.name=d -c user.email=d@x commit "
           "-qm v0 && printf 'v1\\n' > VERSION && git -c user.name=d -c user.email=d@x "
           "commit -qam v1", user="dave")


def main_of(box: Box) -> str:
    return box.sh(f"git -C {REPO} rev-parse main", user="dave").stdout.strip()


def test_a_run_of_alices_is_reviewed_by_an_admin_and_lands(service: Box) -> None:
    box = service
    make_repo(box)
    run_id = box.submit(PLAN)
    run = box.wait_state(run_id, "AWAITING_REVIEW", "FAILED")
    assert run["state"] == "AWAITING_REVIEW", run["reason"]
    assert run["run_user"] == "alice"
    workspace = run["workspace"]
    uid = box.sh("id -u alice").stdout.strip()
    assert workspace["path"] == f"/var/lib/minipipe/worktrees/{uid}/run-{run_id}"
    # alice's own directory, closed to everyone else; the steps ran as her.
    assert box.sh(f"stat -c '%a %U' /var/lib/minipipe/worktrees/{uid}").stdout.split() == [
        "700", "alice"]
    assert box.sh(f"cat {workspace['path']}/whoami.txt").stdout.strip() == "alice"
    assert workspace["changes"]["gate"] == "enforced"
    assert box.sh(f"ls {workspace['path']}", user="carol", check=False).returncode != 0
    assert box.sh("ls /var/lib/minipipe/worktrees", user="carol", check=False).returncode != 0
    changes = workspace["changes"]
    assert sorted(f["path"] for f in changes["files"]) == ["VERSION", "notes.txt",
                                                           "whoami.txt"]
    # Any operator reads the recorded diff (no git runs as the reader).
    assert "+v2" in box.minipipe(f"diff {run_id}", user="carol").stdout
    # Not a reviewer: carol; nor alice (not in minipipe-admin).
    for user in ("carol", "alice"):
        denied = box.approve(run_id, user=user, check=False)
        assert denied.returncode == 1
        assert "permission denied: only root and members of group minipipe-admin may " \
            "approve runs" in denied.stderr
    status = json.loads(box.minipipe("status --json").stdout)
    assert status["awaiting_review"] == 1 and status["worktrees"]["bytes"] > 0
    wait_for(lambda: "1 awaiting review" in box.property("minipipe", "StatusText"), 15,
             "the STATUS= line to count the run awaiting review")
    box.approve(run_id, extra="-m ok")
    run = box.wait_state(run_id, "SUCCEEDED", "FAILED", "AWAITING_REVIEW")
    assert run["state"] == "SUCCEEDED", run["reason"]
    assert main_of(box) == run["workspace"]["landed_commit"]
    assert box.sh(f"cat {REPO}/VERSION").stdout == "v2\n"  # the checked-out main too
    approved = [e for e in run["events"] if e["kind"] == "run_approved"]
    assert approved[0]["detail"]["by"] == "dave"
    # It landed as dave, who approved it: his repository's files stay his, and
    # readable by the team (the service's own umask is 0077).
    landed = [e for e in run["events"] if e["kind"] == "run_landed"]
    assert landed[0]["detail"]["as_user"] == "dave"
    assert box.sh(f"find {REPO}/.git -not -user dave | head -1").stdout == ""
    assert "v2" in box.sh(f"git -c safe.directory='*' -C {REPO} show main:VERSION",
                          user="carol").stdout
    # The on_approve step ran in the run's journal like any step.
    assert any("bump to v2" in line for line in box.journal(
        f"MINIPIPE_RUN_ID={run_id} _SYSTEMD_UNIT=minipipe-run-{run_id}.scope"))
    wait_for(lambda: box.run(run_id)["workspace"]["removed_at"], 30, "the worktree's removal")
    assert box.sh(f"test -e {workspace['path']}", check=False).returncode != 0
    assert "minipipe/" not in box.sh(f"git -C {REPO} branch --list", user="dave").stdout


def test_a_step_cannot_go_around_the_gate(service: Box) -> None:
    """A step of alice's tries to land without review: rewind main, write the ref
    file, plant a hook or config that would run as whoever lands. Each is refused;
    main moves only when dave approves, to exactly the reviewed commit."""
    box = service
    make_repo(box)
    box.sh("rm -f /tmp/attack /srv/git/pwned")
    before = main_of(box)
    run_id = box.submit(PLAN + ATTACK)
    run = box.wait_state(run_id, "AWAITING_REVIEW", "FAILED")
    assert run["state"] == "AWAITING_REVIEW", (run["reason"], box.sh(
        "cat /tmp/attack", check=False).stdout)
    assert main_of(box) == before
    # A reviewer lands only in a repository of their own, whatever their git trusts
    # (here: everything): erin's approval comes back, nothing changed.
    box.sh("id erin >/dev/null 2>&1 || useradd --create-home --groups "
           "minipipe,minipipe-admin erin")
    box.sh("git config --global --add safe.directory '*'", user="erin")
    box.approve(run_id, user="erin")
    wait_for(lambda: box.run(run_id)["reason"], 60, "erin's landing to be refused")
    run = box.run(run_id)
    assert run["state"] == "AWAITING_REVIEW" and "is not erin's" in run["reason"]
    assert main_of(box) == before
    box.approve(run_id, user="dave")
    run = box.wait_state(run_id, "SUCCEEDED", "FAILED")
    assert run["state"] == "SUCCEEDED", run["reason"]
    assert main_of(box) == run["workspace"]["head_commit"]  # a fast-forward
    assert box.sh("test -e /srv/git/pwned", check=False).returncode != 0


def test_alices_own_repository_is_refused_under_an_enforced_gate(service: Box) -> None:
    """On a repository alice may write, her steps could move the branch themselves:
    with the default review_gate ("enforced") such a run is refused at submit."""
    box = service
    box.sh("rm -rf /home/alice/app && cd /home/alice && git init -q --initial-branch=main "
           "app && cd app && echo v1 > VERSION && git add . && "
           "git -c user.name=a -c user.email=a@x commit -qm v1", user="alice")
    result = box.minipipe("submit -", input=PLAN.replace(REPO, "/home/alice/app"),
                          check=False)
    assert result.returncode == 2
    assert "<stdin>:5: [workspace]: this run needs review, but user alice may write " \
        "/home/alice/app" in result.stderr
    assert 'review_gate = "advisory"' in result.stderr


def test_four_eyes_and_reject(service: Box) -> None:
    box = service
    config = json.loads(box.sh("cat /etc/minipipe/config.json").stdout)
    box.c.write("/etc/minipipe/config.json", json.dumps(
        {**config, "review_by_other": True, "review_gate": "advisory"}))
    box.sh("systemctl reload minipipe")
    box.sh("mkdir -p /home/dave && chown dave: /home/dave")
    box.sh("rm -rf /home/dave/app && cd /home/dave && git init -q --initial-branch=main app "
           "&& cd app && echo v1 > VERSION && git add . && "
           "git -c user.name=d -c user.email=d@x commit -qm v1", user="dave")
    run_id = box.submit(PLAN.replace(REPO, "/home/dave/app")
                        .replace('test "$(cat .setup-user)" = alice', 'true'), user="dave")
    run = box.wait_state(run_id, "AWAITING_REVIEW", "FAILED")
    assert run["state"] == "AWAITING_REVIEW", run["reason"]
    assert run["workspace"]["changes"]["gate"] == "advisory"  # dave may write his own
    denied = box.approve(run_id, check=False)
    assert denied.returncode == 1 and f"run {run_id} is yours" in denied.stderr
    box.minipipe(f'reject {run_id} -m "not now"', user=None)  # root reviews
    run = box.run(run_id)
    assert (run["state"], run["reason"]) == ("REJECTED", "rejected by root: not now")
    wait_for(lambda: box.run(run_id)["workspace"]["removed_at"], 30, "the worktree's removal")
    assert "minipipe/" not in box.sh("git -C /home/dave/app branch --list",
                                      user="dave").stdout
    # The removal ran as dave in a scope of its own, not in the service's cgroup.
    assert "minipipe cleanup (pid" in box.sh(
        "journalctl -q -o cat _PID=1 | grep 'minipipe cleanup'", check=False).stdout


def test_ff_only_a_conflict_a_restart_retry_and_bad_input(service: Box) -> None:
    box = service
    make_repo(box)
    ff_only = PLAN.replace('ref = "main"', 'ref = "main"\nland = "ff-only"')
    first, second = box.submit(ff_only), box.submit(ff_only)  # two runs, one repository
    for run_id in (first, second):
        assert box.wait_state(run_id, "AWAITING_REVIEW", "FAILED")["state"] == \
            "AWAITING_REVIEW"
    # A restart while they wait: they still wait.
    box.sh("systemctl restart minipipe")
    assert {box.run(r)["state"] for r in (first, second)} == {"AWAITING_REVIEW"}
    box.approve(first, user=None)  # root approves: it lands as the owner
    run = box.wait_state(first, "SUCCEEDED", "FAILED")
    assert run["state"] == "SUCCEEDED", run["reason"]
    landed = [e for e in run["events"] if e["kind"] == "run_landed"]
    assert landed[0]["detail"]["as_user"] == "dave"
    # main moved on: ff-only refuses the second, which awaits review again, main untouched.
    main = main_of(box)
    box.approve(second, user="dave")
    wait_for(lambda: box.run(second)["reason"], 60, "the refusal")
    run = box.run(second)
    assert run["state"] == "AWAITING_REVIEW" and "fast-forward is impossible" in run["reason"]
    assert main_of(box) == main
    # Reject, then retry: a fresh attempt from today's main.
    box.minipipe(f"reject {second} -m stale", user="dave")
    box.sh(f"cd {REPO} && printf 'v1.5\\n' > VERSION && "
           "git -c user.name=d -c user.email=d@x commit -qam v1.5", user="dave")
    main = main_of(box)
    box.minipipe(f"retry {second}")
    run = box.wait_state(second, "AWAITING_REVIEW", "FAILED")
    assert run["state"] == "AWAITING_REVIEW", (run["reason"], run["steps"])
    assert run["workspace"]["base_commit"] == main
    box.minipipe(f"reject {second} -m again", user="dave")
    # A merge that conflicts (VERSION changed on both sides) is named; nothing changes.
    third = box.submit(PLAN)
    assert box.wait_state(third, "AWAITING_REVIEW", "FAILED")["state"] == "AWAITING_REVIEW"
    box.sh(f"cd {REPO} && printf 'v3\\n' > VERSION && "
           "git -c user.name=d -c user.email=d@x commit -qam v3", user="dave")
    main = main_of(box)
    box.approve(third, user="dave")
    wait_for(lambda: "conflict" in (box.run(third)["reason"] or ""), 60, "the conflict")
    assert box.run(third)["state"] == "AWAITING_REVIEW"
    assert "VERSION" in box.run(third)["reason"]
    assert main_of(box) == main
    box.minipipe(f"reject {third} -m conflicts", user="dave")
    # Bad [workspace] input: refused at submit with the plan's line, nothing queued.
    before = len(json.loads(box.minipipe("ls --all --json").stdout))
    for bad, line, words in (
            (PLAN.replace(REPO, "/srv/git/nope"), 5, "not a git repository"),
            (PLAN.replace('ref = "main"', 'ref = "nope"'), 6, "no branch, tag or commit"),
            (PLAN.replace(REPO, "srv/git/app"), 5, "absolute path")):
        result = box.minipipe("submit -", input=bad, check=False)
        assert result.returncode == 2 and f"<stdin>:{line}:" in result.stderr, result.stderr
        assert words in result.stderr
    assert len(json.loads(box.minipipe("ls --all --json").stdout)) == before
    # Nothing left behind once the runs landed or were rejected: no worktree, no branch.
    wait_for(lambda: all(box.run(r)["workspace"]["removed_at"]
                         for r in (first, second, third)),
             60, "the worktrees' removal")
    assert "minipipe/" not in box.sh(f"git -C {REPO} branch --list", user="dave").stdout
    assert box.sh(f"git -C {REPO} worktree list", user="dave").stdout.count(
        "\n") == 1
