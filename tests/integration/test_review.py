"""Runs on their own git worktree and the review gate, through a private daemon and the CLI.

Real git, a real repository of the test user's, the real daemon and runner (isolation
none: a private instance runs steps as its own user). The same flows under systemd,
with runs as their submitter, are in tests/system/test_review_system.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import AUTHOR_ENV, Instance, as_user, wait_for

# Who commits in the plans' steps (the test user's git config may name nobody).
STEP_AUTHOR = """[defaults.env]
GIT_AUTHOR_NAME = "Step"
GIT_AUTHOR_EMAIL = "step@example.org"
GIT_COMMITTER_NAME = "Step"
GIT_COMMITTER_EMAIL = "step@example.org"
"""

EDIT = """
name = "edit"
review = true
[workspace]
repo = "{repo}"
ref = "main"
setup = "printf 'set up\\n' > .setup-ran"
""" + STEP_AUTHOR + """[[steps]]
id = "edit"
run = '''
set -e
printf 'one\\nTWO\\nthree\\n' > a.txt
git rm -q c.txt
git add -A && git commit -qm "step commit"
printf 'new\\n' > added.txt
rm .setup-ran
'''
[[on_approve]]
id = "after"
run = "test -f added.txt && echo approved-step-ran"
"""


def sh(instance: Instance, script: str, cwd: Path | None = None) -> str:
    options = as_user(instance.user, instance.root)
    options["env"].update(AUTHOR_ENV)
    result = subprocess.run(["sh", "-ec", script], cwd=cwd or instance.root, text=True,
                            capture_output=True, timeout=60, **options)
    assert result.returncode == 0, result.stderr
    return result.stdout


def make_repo(instance: Instance, name: str = "app") -> Path:
    sh(instance, f"""
        git init -q --initial-branch=main {name} && cd {name}
        printf 'one\\ntwo\\nthree\\n' > a.txt && printf 'keep\\n' > b.txt
        printf 'gone\\n' > c.txt && git add . && git commit -qm base
    """)
    return instance.root / name


@pytest.fixture
def reviewing(instance: Instance) -> Instance:
    instance.write_config(review_by_other=False, review_gate="advisory")
    instance.start_daemon()
    return instance


def _awaiting(instance: Instance, repo: Path, name: str = "edit") -> int:
    run_id = instance.submit(EDIT.format(repo=repo), name=name)
    return instance.wait_state(run_id, "AWAITING_REVIEW", "FAILED")["id"]


def test_a_reviewed_change_lands_exactly_as_shown(reviewing: Instance) -> None:
    instance = reviewing
    repo = make_repo(instance)
    run_id = _awaiting(instance, repo)
    shown = instance.run(run_id)
    assert shown["state"] == "AWAITING_REVIEW", shown["reason"]
    workspace = shown["workspace"]
    base = sh(instance, "git rev-parse main", cwd=repo).strip()
    assert workspace["base_commit"] == base and workspace["branch"] == f"minipipe/run-{run_id}"
    changes = workspace["changes"]
    # Exactly what git counts from the merge-base, untracked file included.
    checkout = Path(workspace["path"])
    shortstat = sh(instance, f"git diff --shortstat {base} {workspace['head_commit']}",
                   cwd=checkout).strip()
    assert shortstat == (f"{changes['files_changed']} files changed, {changes['insertions']} "
                         f"insertions(+), {changes['deletions']} deletions(-)")
    assert {f["path"]: f["status"] for f in changes["files"]} == {
        "a.txt": "modified", "c.txt": "deleted", "added.txt": "added"}
    assert changes["commit_count"] == 2  # the step's and the one for what it left
    # The steps' own repository borrowed the objects: nothing was added to the repo's.
    assert not (repo / ".git" / "worktrees").exists()
    assert sh(instance, "git branch --list", cwd=repo).split() == ["*", "main"]
    # A private daemon's runs are its own user's, who may write the repository.
    assert changes["gate"] == "advisory" and changes["writable"] == str(repo)
    shown_run = instance.cli("show", str(run_id)).stdout
    assert "required (advisory: the run's user may write the repository)" in shown_run
    assert f"its steps could write {repo}" in shown_run
    # The setup ran in the fresh worktree before the steps (they removed its file).
    assert [s["step_id"] for s in shown["steps"]] == ["workspace-setup", "edit", "after"]
    assert shown["steps"][2]["state"] == "PENDING"  # on_approve: not yet
    # What a reviewer sees: the list, the stat, the diff.
    review = json.loads(instance.cli("review", "--json").stdout)
    assert [r["id"] for r in review] == [run_id]
    assert "a.txt" in instance.cli("diff", str(run_id), "--stat").stdout
    assert instance.cli("diff", str(run_id), "--name-only").stdout.split() == [
        "a.txt", "added.txt", "c.txt"]
    assert "+TWO" in instance.cli("diff", str(run_id)).stdout
    assert f"+{changes['insertions']} −{changes['deletions']}" in instance.cli("review").stdout
    status = json.loads(instance.cli("status", "--json").stdout)
    assert status["awaiting_review"] == 1 and status["worktrees"]["count"] == 1
    assert status["counts"]["RUNNING"] == 0  # a run awaiting review holds no slot
    instance.approve(run_id, "-m", "looks right")
    run = instance.wait_state(run_id, "SUCCEEDED", "FAILED", "AWAITING_REVIEW")
    assert run["state"] == "SUCCEEDED", run["reason"]
    landed = run["workspace"]["landed_commit"]
    assert sh(instance, "git rev-parse main", cwd=repo).strip() == landed
    assert (repo / "added.txt").exists() and not (repo / "c.txt").exists()  # checked out
    assert sh(instance, "git status --porcelain", cwd=repo) == ""
    assert run["steps"][2]["state"] == "SUCCEEDED"
    kinds = [e["kind"] for e in json.loads(instance.cli("show", str(run_id), "--json",
                                                        "--events", "50").stdout)["events"]]
    assert "run_approved" in kinds and "run_landed" in kinds
    # Landed with keep 0 days: the worktree and the branch go.
    wait_for(lambda: instance.run(run_id)["workspace"]["removed_at"], 30,
             "the worktree's removal")
    assert "minipipe/run-" not in sh(instance, "git branch --list", cwd=repo)
    assert sh(instance, "git worktree list --porcelain", cwd=repo).count("worktree ") == 1
    assert not Path(run["workspace"]["path"]).exists()


def test_reject_then_retry_and_a_conflicting_approve(reviewing: Instance) -> None:
    instance = reviewing
    repo = make_repo(instance)
    run_id = _awaiting(instance, repo)
    result = instance.cli("reject", str(run_id), check=False)
    assert result.returncode == 2 and "-m" in result.stderr  # a reason is required
    instance.cli("reject", str(run_id), "-m", "not like this")
    run = instance.run(run_id)
    assert run["state"] == "REJECTED" and run["reason"].startswith("rejected by ")
    assert run["reason"].endswith(": not like this")
    assert run["steps"][2]["state"] == "SKIPPED"
    instance.cli("retry", str(run_id))
    assert instance.wait_state(run_id, "AWAITING_REVIEW", "FAILED")["state"] == \
        "AWAITING_REVIEW"
    # Meanwhile main changes the same line: approving conflicts, nothing changes.
    sh(instance, "printf 'one\\nzwei\\nthree\\n' > a.txt && git commit -qam zwei", cwd=repo)
    before = sh(instance, "git rev-parse main", cwd=repo)
    instance.approve(run_id)
    run = instance.wait_state(run_id, "AWAITING_REVIEW", "SUCCEEDED", "FAILED", timeout=60)
    wait_for(lambda: instance.run(run_id)["reason"], 30, "the refusal")
    run = instance.run(run_id)
    assert run["state"] == "AWAITING_REVIEW" and "a.txt" in run["reason"]
    assert "conflicts" in run["reason"]
    assert sh(instance, "git rev-parse main", cwd=repo) == before
    assert sh(instance, "git status --porcelain", cwd=repo) == ""


def test_two_runs_on_one_repository_and_a_restart_while_awaiting(reviewing: Instance) -> None:
    instance = reviewing
    repo = make_repo(instance)
    first = instance.submit(EDIT.format(repo=repo), name="one")
    # (its own commit: two identical commits, made in the same second, would be one
    # commit both runs share, and a change that shares commits with the target is
    # refused, see test_a_change_that_took_in_newer_commits_of_the_target_is_refused)
    second = instance.submit(EDIT.format(repo=repo).replace('"step commit"',
                                                            '"step commit 2"'), name="two")
    for run_id in (first, second):
        assert instance.wait_state(run_id, "AWAITING_REVIEW", "FAILED")["state"] == \
            "AWAITING_REVIEW"
    paths = {instance.run(r)["workspace"]["path"] for r in (first, second)}
    assert len(paths) == 2
    instance.stop_daemon()
    instance.start_daemon()
    assert instance.run(first)["state"] == "AWAITING_REVIEW"
    instance.approve(first)
    assert instance.wait_state(first, "SUCCEEDED", "FAILED")["state"] == "SUCCEEDED"
    # The second made the same change from the same base: main has moved on, so it
    # lands as a merge commit of the two (the same edit on both sides merges cleanly).
    instance.approve(second)
    run = instance.wait_state(second, "SUCCEEDED", "FAILED")
    assert run["state"] == "SUCCEEDED", run["reason"]
    parents = sh(instance, "git rev-list --parents -n1 main", cwd=repo).split()[1:]
    assert parents == [instance.run(first)["workspace"]["landed_commit"],
                       run["workspace"]["head_commit"]]


def test_bad_workspaces_are_refused_at_submit(reviewing: Instance, tmp_path: Path) -> None:
    instance = reviewing
    repo = make_repo(instance)
    missing = instance.plan("missing", EDIT.format(repo=instance.root / "nope"))
    result = instance.cli("submit", missing, check=False)
    assert result.returncode == 2
    assert f"{missing}:5: [workspace]:" in result.stderr
    assert "is not a git repository" in result.stderr
    unknown = instance.plan("unknown", EDIT.format(repo=repo).replace('ref = "main"',
                                                                       'ref = "nope"'))
    result = instance.cli("submit", unknown, check=False)
    assert result.returncode == 2 and f"{unknown}:6: [workspace]:" in result.stderr
    assert "has no branch, tag or commit 'nope'" in result.stderr
    relative = instance.plan("relative", EDIT.format(repo="app"))
    result = instance.cli("submit", relative, check=False)
    assert result.returncode == 2 and f"{relative}:5:" in result.stderr
    assert instance.cli("ls", "--json").stdout.strip() == "[]"


def test_an_enforced_gate_refuses_a_repository_the_steps_could_write(
        instance: Instance) -> None:
    """By default (review_gate "enforced") a run that needs review may not work on a
    repository its user can write: its steps could move the branch themselves."""
    instance.write_config()
    instance.start_daemon()
    repo = make_repo(instance)
    plan = instance.plan("gated", EDIT.format(repo=repo))
    result = instance.cli("submit", plan, check=False)
    assert result.returncode == 2
    assert f"{plan}:5: [workspace]: this run needs review, but user " in result.stderr
    assert f"may write {repo}" in result.stderr and 'review_gate = "advisory"' in \
        result.stderr
    # Without review there is no gate to go around.
    unreviewed = EDIT.format(repo=repo).replace("review = true", "review = false")
    run_id = instance.submit(unreviewed, name="unreviewed")
    run = instance.wait_state(run_id, "SUCCEEDED", "FAILED")
    assert run["state"] == "SUCCEEDED", run["reason"]
    assert "gate" not in run["workspace"]["changes"]


def test_four_eyes_and_the_review_limit(instance: Instance) -> None:
    instance.write_config(review_by_other=True, max_awaiting_review=1, review_gate="advisory")
    instance.start_daemon()
    repo = make_repo(instance)
    first = _awaiting(instance, repo)
    result = instance.approve(first, check=False)
    assert result.returncode == 1
    assert f"permission denied: run {first} is yours" in result.stderr
    # One awaits review, the limit: the next run that needs review is not started.
    second = instance.submit(EDIT.format(repo=repo), name="second")
    plain = instance.submit('[[steps]]\nid = "a"\nrun = "true"\n', name="plain")
    assert instance.wait_state(plain, "SUCCEEDED")["state"] == "SUCCEEDED"
    assert instance.run(second)["state"] == "PENDING"
    status = json.loads(instance.cli("status", "--json").stdout)
    assert status["review_gate_full"] is True
    assert "runs that need review wait" in instance.cli("status").stdout
    instance.cli("cancel", str(first))
    assert instance.run(first)["state"] == "CANCELLED"
    assert instance.wait_state(second, "AWAITING_REVIEW", "FAILED")["state"] == \
        "AWAITING_REVIEW"


def test_a_carriage_return_cannot_pass_an_added_line_off_as_context(
        reviewing: Instance) -> None:
    """git's lines end at LF only; a line split at CR (or VT, FF, U+2028) would show
    its second half without the "+" that marks it added."""
    instance = reviewing
    repo = make_repo(instance)
    plan = EDIT.format(repo=repo).replace(
        "printf 'new\\n' > added.txt", r"printf 'x\r    return True\n' > added.txt")
    assert "return True" in plan
    run_id = instance.submit(plan, name="cr")
    assert instance.wait_state(run_id, "AWAITING_REVIEW", "FAILED")["state"] == \
        "AWAITING_REVIEW"
    result = subprocess.run(  # bytes: text mode would turn the CR into a newline itself
        [sys.executable, "-m", "minipipe_svc", "--config", str(instance.config_path), "diff",
         str(run_id)], capture_output=True, timeout=60, **as_user(instance.user, instance.root))
    lines = result.stdout.split(b"\n")
    assert [line for line in lines if b"return True" in line] == [b"+x\r    return True"]


def test_an_approval_names_the_change_it_approves(reviewing: Instance) -> None:
    """Cancel and retry swap a run's change under a reviewer's eyes: an approval that
    names the commit it reviewed (--commit) is refused for any other."""
    instance = reviewing
    repo = make_repo(instance)
    run_id = _awaiting(instance, repo)
    seen = instance.run(run_id)["workspace"]["head_commit"]
    instance.cli("cancel", str(run_id))
    sh(instance, "printf 'moved\\n' > b.txt && git commit -qam moved", cwd=repo)
    instance.cli("retry", str(run_id))
    assert instance.wait_state(run_id, "AWAITING_REVIEW", "FAILED")["state"] == \
        "AWAITING_REVIEW"
    now = instance.run(run_id)["workspace"]["head_commit"]
    assert now != seen
    refused = instance.cli("approve", str(run_id), "--commit", seen, check=False)
    assert refused.returncode == 2 and f"is now {now}, not the {seen}" in refused.stderr
    assert instance.run(run_id)["state"] == "AWAITING_REVIEW"
    assert now in instance.cli("review").stdout
    assert f"at {now}" in instance.cli("show", str(run_id)).stdout
    # A prefix could be matched by a commit ground for it: only the whole id approves.
    prefix = instance.cli("approve", str(run_id), "--commit", now[:12], check=False)
    assert prefix.returncode == 2 and "whole commit id" in prefix.stderr
    assert instance.run(run_id)["state"] == "AWAITING_REVIEW"
    approved = instance.cli("approve", str(run_id), "--commit", now.upper())
    assert f"approved its change {now}" in approved.stdout
    assert instance.wait_state(run_id, "SUCCEEDED", "FAILED")["state"] == "SUCCEEDED"


def test_a_damaged_plan_row_does_not_break_show_or_review(reviewing: Instance) -> None:
    """A plan row that is not JSON (rows from before 0.2.0 were writable by every group
    member): `show`, `show --json` and `review` still answer (no traceback)."""
    import sqlite3

    instance = reviewing
    instance.cli("pause")
    run_id = instance.submit('[[steps]]\nid = "a"\nrun = "true"\n', name="damaged")
    conn = sqlite3.connect(instance.db_path)
    conn.execute("UPDATE runs SET plan = '{' WHERE id = ?", (run_id,))
    conn.commit()
    conn.close()
    assert json.loads(instance.cli("show", "--json", str(run_id)).stdout)["workspace"] is None
    assert "damaged" in instance.cli("show", str(run_id)).stdout
    instance.cli("review")


def test_branch_only_keeps_the_branch_and_lands_nothing(reviewing: Instance) -> None:
    instance = reviewing
    repo = make_repo(instance)
    plan = EDIT.format(repo=repo).replace('ref = "main"', 'ref = "main"\nland = "branch-only"')
    run_id = instance.submit(plan, name="keep")
    assert instance.wait_state(run_id, "AWAITING_REVIEW", "FAILED")["state"] == \
        "AWAITING_REVIEW"
    main = sh(instance, "git rev-parse main", cwd=repo)
    instance.approve(run_id)
    run = instance.wait_state(run_id, "SUCCEEDED", "FAILED")
    assert run["state"] == "SUCCEEDED", run["reason"]
    assert run["workspace"]["landed_commit"] is None
    assert sh(instance, "git rev-parse main", cwd=repo) == main
    wait_for(lambda: instance.run(run_id)["workspace"]["removed_at"], 30,
             "the worktree's removal")
    # The worktree went; the branch is the deliverable and stays, at the reviewed commit.
    assert sh(instance, f"git rev-parse minipipe/run-{run_id}", cwd=repo).strip() == \
        run["workspace"]["head_commit"]
    assert not Path(run["workspace"]["path"]).exists()


def test_a_landed_run_whose_on_approve_failed_retries_only_that(
        reviewing: Instance) -> None:
    """Without review the change lands at once; its on_approve step fails (a push that
    did not get through). `retry` runs that step again, in the same checkout, and
    lands nothing twice."""
    instance = reviewing
    repo = make_repo(instance)
    marker = instance.root / "pushed-once"
    plan = EDIT.format(repo=repo).replace("review = true", "review = false").replace(
        'ref = "main"', 'ref = "main"\nland = "merge"').replace(
        'run = "test -f added.txt && echo approved-step-ran"',
        f'run = "echo try >> {marker}; test $(wc -l < {marker}) -ge 2"')
    run_id = instance.submit(plan, name="push")
    run = instance.wait_state(run_id, "SUCCEEDED", "FAILED")
    assert run["state"] == "FAILED" and "the change is landed on main" in run["reason"]
    landed = run["workspace"]["landed_commit"]
    assert sh(instance, "git rev-parse main", cwd=repo).strip() == landed
    retried = instance.cli("retry", str(run_id)).stdout
    assert "only its on_approve steps run again" in retried
    run = instance.wait_state(run_id, "SUCCEEDED", "FAILED")
    assert run["state"] == "SUCCEEDED", run["reason"]
    assert [s["state"] for s in run["steps"]] == ["SUCCEEDED", "SUCCEEDED", "SUCCEEDED"]
    assert marker.read_text().split() == ["try", "try"]
    assert sh(instance, "git rev-parse main", cwd=repo).strip() == landed
    assert run["workspace"]["landed_commit"] == landed
    events = instance.cli("show", str(run_id), "--json", "--events", "100").stdout
    assert events.count('"run_landed"') == 1


def test_a_base_off_the_target_does_not_bring_unreviewed_commits(
        reviewing: Instance) -> None:
    """The plan's ref is a branch main does not have (here: work in progress) and its
    target is main: the review shows the run's own change only, so landing it, which
    would bring the branch's other commits along, is refused."""
    instance = reviewing
    repo = make_repo(instance)
    sh(instance, "git checkout -qb wip && printf 'unreviewed\\n' > wip.txt && "
       "git add wip.txt && git commit -qm wip && git checkout -q main", cwd=repo)
    main = sh(instance, "git rev-parse main", cwd=repo)
    plan = EDIT.format(repo=repo).replace('ref = "main"', 'ref = "wip"\ntarget = "main"')
    run_id = instance.submit(plan, name="off-target")
    assert instance.wait_state(run_id, "AWAITING_REVIEW", "FAILED")["state"] == \
        "AWAITING_REVIEW"
    assert "wip.txt" not in instance.cli("diff", "--name-only", str(run_id)).stdout
    instance.approve(run_id)
    wait_for(lambda: instance.run(run_id)["reason"], 60, "the landing's refusal")
    run = instance.run(run_id)
    assert run["state"] == "AWAITING_REVIEW"
    assert "is not on main (landing would bring in commits nobody reviewed)" in \
        run["reason"]
    assert sh(instance, "git rev-parse main", cwd=repo) == main


def test_a_change_that_took_in_newer_commits_of_the_target_is_refused(
        reviewing: Instance) -> None:
    """The steps merge main as it is now (it moved on since the run's base), then undo
    one of its newer commits: the diff from the run's base shows nothing of that
    (both sides have the old line), yet a fast-forward would revert main. Landing
    checks that the change meets main where its reviewed diff starts."""
    instance = reviewing
    repo = make_repo(instance)
    base = sh(instance, "git rev-parse main", cwd=repo).strip()
    sh(instance, "printf 'newer\\n' > b.txt && git commit -qam newer", cwd=repo)
    newer = sh(instance, "git rev-parse main", cwd=repo).strip()
    plan = EDIT.format(repo=repo).replace('ref = "main"', f'ref = "{base}"\ntarget = "main"'
                                          ).replace("git rm -q c.txt", f"""
git merge -q --ff-only {newer}
printf 'keep\\n' > b.txt && git rm -q c.txt""")
    run_id = instance.submit(plan, name="undo")
    run = instance.wait_state(run_id, "AWAITING_REVIEW", "FAILED")
    assert run["state"] == "AWAITING_REVIEW", run["reason"]
    assert "b.txt" not in instance.cli("diff", "--name-only", str(run_id)).stdout
    main = sh(instance, "git rev-parse main", cwd=repo)
    instance.approve(run_id)
    wait_for(lambda: instance.run(run_id)["reason"], 60, "the landing's refusal")
    assert "the run took in newer commits of main" in instance.run(run_id)["reason"]
    assert sh(instance, "git rev-parse main", cwd=repo) == main
    assert sh(instance, "git show main:b.txt", cwd=repo) == "newer\n"


SWAP = """
name = "swap"
review = true
[workspace]
repo = "{repo}"
ref = "main"
""" + STEP_AUTHOR + """[[steps]]
id = "swap"
run = '''
set -e
printf 'evil\\n' > payload.txt
git add payload.txt && git commit -qm payload
evil=$(git rev-parse HEAD:payload.txt)
harmless=$(printf 'harmless\\n' | git hash-object -w --stdin)
path() {{ echo .git/objects/$(echo $1 | cut -c1-2)/$(echo $1 | cut -c3-); }}
cp "$(path $evil)" .git/evil.keep
chmod u+w "$(path $evil)" && cp "$(path $harmless)" "$(path $evil)"
'''
"""


def test_a_checkout_changed_after_review_does_not_land(reviewing: Instance) -> None:
    """git reads a loose object without checking that its content hashes to its name:
    the run's user may show the reviewer one content under a blob's id, then put the
    real one back before landing. The lander's diff, of objects hashed on the way into
    the repository, must match the reviewed one, or nothing lands."""
    instance = reviewing
    repo = make_repo(instance)
    run_id = instance.submit(SWAP.format(repo=repo), name="swap")
    run = instance.wait_state(run_id, "AWAITING_REVIEW", "FAILED")
    assert run["state"] == "AWAITING_REVIEW", run["reason"]
    shown = instance.cli("diff", str(run_id)).stdout
    assert "+harmless" in shown and "evil" not in shown  # what the reviewer saw
    checkout = Path(run["workspace"]["path"])
    sh(instance, """
        evil=$(git rev-parse HEAD:payload.txt)
        obj=.git/objects/$(echo $evil | cut -c1-2)/$(echo $evil | cut -c3-)
        cp .git/evil.keep "$obj"
    """, cwd=checkout)
    before = sh(instance, "git rev-parse main", cwd=repo)
    instance.approve(run_id)
    wait_for(lambda: instance.run(run_id)["reason"], 60, "the landing to be refused")
    run = instance.run(run_id)
    assert run["state"] == "AWAITING_REVIEW"
    assert "not what was reviewed" in run["reason"]
    assert sh(instance, "git rev-parse main", cwd=repo) == before
    assert not (repo / "payload.txt").exists()


TRAILERS = """
name = "trailers"
review = true
[workspace]
repo = "{repo}"
ref = "main"
[[steps]]
id = "commit"
run = '''
set -e
printf 'v2\\n' > VERSION && git add VERSION
GIT_AUTHOR_NAME=dave GIT_AUTHOR_EMAIL=dave@example.org \\
GIT_COMMITTER_NAME=dave GIT_COMMITTER_EMAIL=dave@example.org \\
  git commit -q -m 'bump VERSION' -m 'Release-As: 9.0.0' -m "{more}"
'''
"""


def test_the_reviewer_reads_each_commit_whole(reviewing: Instance) -> None:
    """Identities and messages land with the code: `diff` shows every commit as `git
    log --format=fuller` would, before the diff (which `git apply` still takes),
    `show` lists them; a message longer than what is recorded needs --unread-ok."""
    instance = reviewing
    repo = make_repo(instance)
    run_id = instance.submit(TRAILERS.format(repo=repo, more="diff --git a/x b/x"),
                             name="trailers")
    run = instance.wait_state(run_id, "AWAITING_REVIEW", "FAILED")
    assert run["state"] == "AWAITING_REVIEW", run["reason"]
    head = run["workspace"]["head_commit"]
    shown = instance.cli("diff", str(run_id)).stdout
    header, _, _patch = shown.partition("\ndiff --git ")
    assert header.splitlines()[:6] == [
        f"commit {head}", f"Author:     dave <dave@example.org>   "
        f"{run['workspace']['changes']['commits'][0]['author_date']}",
        header.splitlines()[2], "", "    | bump VERSION", "    | "]
    assert header.splitlines()[2].startswith("Commit:     dave <dave@example.org>   ")
    assert "    | Release-As: 9.0.0" in header and "    | diff --git a/x b/x" in header
    assert shown.count(f"commit {head}") == 1
    # Piped, it is still a patch, of the change alone: the message's lines follow a
    # gutter, so neither git apply nor GNU patch reads its `diff --git` as one.
    base = run["workspace"]["base_commit"]
    sh(instance, f"git worktree add -q --detach ../check {base}", cwd=repo)
    sh(instance, f"cat > ../patch <<'END'\n{shown}END\ngit apply --check ../patch\n"
       "patch -p1 --dry-run < ../patch | grep -vx 'checking file VERSION' && exit 1 || true",
       cwd=repo.parent / "check")
    assert f"{head[:12]} bump VERSION (dave <dave@example.org>)" in instance.cli(
        "show", str(run_id)).stdout
    instance.cli("reject", str(run_id), "-m", "next")

    long_id = instance.submit(TRAILERS.format(repo=repo, more="x" * 10_050), name="long")
    run = instance.wait_state(long_id, "AWAITING_REVIEW", "FAILED")
    assert run["workspace"]["changes"]["commits_truncated"]
    assert "(more of this commit's message lands than minipipe recorded" in instance.cli(
        "diff", str(long_id)).stdout
    refused = instance.approve(long_id, check=False)
    assert refused.returncode != 0 and "its commits" in refused.stderr
    instance.approve(long_id, "--unread-ok")
    assert instance.wait_state(long_id, "SUCCEEDED", "AWAITING_REVIEW")["state"] == "SUCCEEDED"


ODD_NAMES = """
name = "odd"
review = true
[workspace]
repo = "{repo}"
ref = "main"
[[steps]]
id = "names"
run = "printf x > \\"$(printf 'two\\\\nlines')\\" && printf y > 'say \\"hi\\"' && printf z > plain"
"""


def test_name_only_gives_one_line_per_name_and_z_gives_them_as_they_are(
        reviewing: Instance) -> None:
    """A name with a newline is one name to a script: quoted as git quotes it, or
    with -z, as it is, ended by NUL."""
    instance = reviewing
    repo = make_repo(instance)
    run_id = instance.submit(ODD_NAMES.format(repo=repo), name="odd")
    run = instance.wait_state(run_id, "AWAITING_REVIEW", "FAILED")
    assert run["state"] == "AWAITING_REVIEW", (run["reason"], run["steps"])
    assert instance.cli("diff", str(run_id), "--name-only").stdout.splitlines() == [
        "plain", '"say \\"hi\\""', '"two\\nlines"']
    assert instance.cli("diff", str(run_id), "--name-only", "-z").stdout.split("\0") == [
        "plain", 'say "hi"', "two\nlines", ""]
    refused = instance.cli("diff", str(run_id), "-z", check=False)
    assert refused.returncode == 2 and "-z goes with --name-only" in refused.stderr
