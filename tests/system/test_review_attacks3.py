"""The review gate, attacked a third time: gate.py and the whole-stream digests of
72739ba, and the whole commit ids of 1f38421.

Same cast as test_review_attacks: dave (minipipe-admin) keeps /srv/git/app, with main
checked out, and reviews; alice (group minipipe) submits and may only read it. Every
test asserts the SECURE outcome: the ones marked FOUND failed against 72739ba (that
was the finding) and pass since gate.py reads config files itself (every includeIf,
config.worktree, ~user), walks links hop by hop, fails closed where alice may not
look, asks with all her groups and checks work trees, and the lander pins signature
checks off.
"""

# ruff: noqa: F811  (the gate fixture, imported)
from __future__ import annotations

import pytest

from .conftest import Box
from .test_review_attacks import (  # noqa: F401  (gate is a fixture)
    DROP,
    attack_ran,
    gate,
    plan,
    refused_by_the_gate,
    review_then_approve,
    submit_past_the_gate,
)
from .test_review_system import REPO, main_of

# ---------------------------------------------------------------- gate.py's blind spots

# name: (as root, as dave in his repository, clean-up as root). Each leaves dave's
# repository reading config, objects or hooks from a place alice may change.
GAPS = {
    # gate.py skips every value that starts with "~" ("the home of whoever runs
    # git"), but git expands `~user/` to THAT user's home: here alice's file, which
    # she creates after the gate's last look (an existing one is caught as an origin)
    "an include from ~alice": (
        "chmod 755 /home/alice",
        f"git -C {REPO} config include.path '~alice/app.gitconfig'",
        "rm -f /home/alice/app.gitconfig"),
    # extensions.worktreeConfig: git reads .git/config.worktree (and what it
    # includes); `git config --local --list` never lists it
    "an include in config.worktree": (
        "install -d -o alice -m 755 /srv/team",
        f"git -C {REPO} config extensions.worktreeConfig true && "
        f"git -C {REPO} config --worktree include.path /srv/team/app.gitconfig",
        "rm -rf /srv/team"),
    # /etc/gitinc/app.gitconfig -> /srv/links/team.gitconfig -> /etc/gitinc/team.gitconfig:
    # `exposed` walks the path as written and os.path.realpath's, never the directory
    # of a link in between (alice's), so she may point that link at her own file
    "an include through a link in alice's directory": (
        "install -d -o alice -m 755 /srv/links && install -d /etc/gitinc && "
        "printf '[user]\\n\\tuseConfigOnly = false\\n' > /etc/gitinc/team.gitconfig && "
        "ln -s /etc/gitinc/team.gitconfig /srv/links/team.gitconfig && "
        "ln -s /srv/links/team.gitconfig /etc/gitinc/app.gitconfig",
        f"git -C {REPO} config include.path /etc/gitinc/app.gitconfig",
        "rm -rf /srv/links /etc/gitinc"),
    # an includeIf whose condition is false where the gate asks (HEAD is main) is
    # listed, its file checked, but not read: what THAT file includes is never
    # looked at. A landing on `release` checked out in a linked worktree (merge
    # --ff-only runs there) reads it.
    "an include inside an includeIf that is false now": (
        "install -d -o alice -m 755 /srv/team && "
        "printf '[include]\\n\\tpath = /srv/team/release.gitconfig\\n' "
        "> /etc/app-release.gitconfig",
        f"git -C {REPO} config includeIf.onbranch:release.path /etc/app-release.gitconfig",
        "rm -rf /srv/team /etc/app-release.gitconfig"),
    # git unquotes a C-quoted alternates line; gate.py takes it literally (a path
    # under objects/ that does not exist) and finds nothing
    "a quoted alternate": (
        "install -d -m 1777 /srv/cache/objects",
        f"printf '\"/srv/cache/objects\"\\n' > {REPO}/.git/objects/info/alternates",
        "rm -rf /srv/cache"),
    # os.walk skips a directory it may not list: a hook there linking into alice's
    # directory runs as dave at his next commit (hooks are off only for landing)
    "a hook alice may not list, linking into her directory": (
        "install -d -o alice -m 755 /srv/team",
        f"ln -s /srv/team/pre-commit {REPO}/.git/hooks/pre-commit && "
        f"chmod 700 {REPO}/.git/hooks",
        "rm -rf /srv/team"),
    # the gate asks with the steps' groups (minipipe dropped); alice at her shell has
    # minipipe and may move main herself, yet the gate says "enforced"
    "refs group minipipe may write": (
        f"chgrp -R minipipe {REPO}/.git/refs && chmod -R g+w {REPO}/.git/refs", "", ""),
}


@pytest.mark.parametrize("gap", sorted(GAPS))
def test_the_enforced_gate_sees_every_part_alice_may_change(gate: Box, gap: str) -> None:
    """FOUND (medium each; high where it applies: see the config.worktree test below
    for what a config alice writes does at landing). The enforced gate takes a run
    on a repository that reads config, objects or hooks alice may change."""
    box = gate
    as_root, as_dave, teardown = GAPS[gap]
    box.sh(as_root)
    if as_dave:
        box.sh(as_dave, user="dave")
    try:
        result = submit_past_the_gate(box)
        # Refused: alice may write a part, or may not look where git reads (fail closed)
        refused_by_the_gate(result, gap)
    finally:
        if teardown:
            box.sh(teardown, check=False)


# A commit with a (made-up) signature: `merge --ff-only` with merge.verifySignatures
# hands it to gpg.program, whatever the signature says.
SIGNED_COMMIT = r"""
printf 'v2\n' > VERSION && git add -A
{ printf 'tree %s\nparent %s\n' "$(git write-tree)" "$(git rev-parse HEAD)"
  printf 'author alice <alice@example.org> 1700000000 +0000\n'
  printf 'committer alice <alice@example.org> 1700000000 +0000\n'
  printf 'gpgsig -----BEGIN PGP SIGNATURE-----\n \n iQEzBAABCAAdFiEE\n'
  printf ' -----END PGP SIGNATURE-----\n\nbump to v2\n'; } > ../commit.txt
git reset -q --hard "$(git hash-object -t commit -w ../commit.txt)"
"""


def test_config_alice_writes_through_config_worktree_runs_her_code_as_the_lander(
        gate: Box) -> None:
    """FOUND (high where it applies). dave's repository uses per-worktree config
    (extensions.worktreeConfig) and includes a team file from .git/config.worktree;
    alice may write that file. gate.py reads `git config --local`, which skips
    config.worktree, so the enforced gate takes her run. Her file sets
    merge.verifySignatures and gpg.program; her step's commit carries a `gpgsig`
    header (the diff dave reviews: `-v1 +v2`). The landing fast-forwards main, which
    is checked out, with `git merge --ff-only` in dave's work tree: git verifies the
    commit's signature first, running alice's program as dave.
    (OWN_REPOSITORIES_ONLY pins hooks, fsmonitor and attributesFile; gpg.program,
    merge.verifySignatures, core.sharedRepository (0666: the landing leaves
    refs/heads/main world-writable) and the rest are whatever the config says.)"""
    box = gate
    box.sh("install -d -o alice -m 755 /srv/team")
    box.sh(f"git -C {REPO} config extensions.worktreeConfig true && "
           f"git -C {REPO} config --worktree include.path /srv/team/app.gitconfig",
           user="dave")
    box.c.write("/srv/team/gpg", f"#!/bin/sh\nid -un >> {DROP}/gpg-ran\nexit 1\n", "0755")
    box.c.write("/srv/team/app.gitconfig",
                "[merge]\n\tverifySignatures = true\n[gpg]\n\tprogram = /srv/team/gpg\n")
    box.sh("chown alice /srv/team/gpg /srv/team/app.gitconfig")
    try:
        result = box.minipipe("submit -", input=plan(SIGNED_COMMIT), check=False)
        if result.returncode != 0:
            assert "may write" in result.stderr, result.stderr
            return
        shown, _run = review_then_approve(box, int(result.stdout))
        assert "+v2" in shown
        ran = box.sh(f"cat {DROP}/gpg-ran", check=False).stdout.split()
        assert "dave" not in ran and "root" not in ran, f"alice's gpg.program ran as {ran}"
    finally:
        box.sh("rm -rf /srv/team", check=False)


# ---------------------------------------------------------------- the gate's robustness


def test_an_include_from_the_landers_home_does_not_fail_every_run(gate: Box) -> None:
    """FOUND (robustness, medium). `include.path = ~/.gitconfig-app` in dave's
    repository config names the lander's own file, which gate.py rightly skips. But
    `Git.writable_part` runs the gate through `_as_user`, whose environment has no
    HOME: git cannot expand `~/` and dies ("bad config line"), so the gate's second
    and third asks (when the steps end, before landing) fail, and every run that
    needs review on such a repository fails after its steps, though the submit
    check (with HOME) took it."""
    box = gate
    box.sh(f"git -C {REPO} config include.path '~/.gitconfig-app'", user="dave")
    run_id = box.submit(plan("printf 'v2\\n' > VERSION"))
    run = box.wait_state(run_id, "AWAITING_REVIEW", "FAILED")
    assert run["state"] == "AWAITING_REVIEW", run["reason"]
    _shown, run = review_then_approve(box, run_id)
    assert run["state"] == "SUCCEEDED", run["reason"]
    assert main_of(box) == run["workspace"]["head_commit"]


# ---------------------------------------------------------------- what the reviewer reads


def test_the_diff_a_reviewer_reads_names_the_commit_to_approve(gate: Box) -> None:
    """FOUND (low). `approve --commit` binds the approval to the commit id, but
    `minipipe diff RUN`, where the reviewer reads the change, never prints it: the
    id comes from `review` or `show`, read at another moment. dave reads the diff,
    alice cancels and retries (her step now writes something else), dave copies the
    id from `show` and approves a change he never read. The diff should carry the
    commit it is of (and --stat / --name-only too)."""
    box = gate
    run_id = box.submit(plan("printf 'v2\\n' > VERSION"))
    run = box.wait_state(run_id, "AWAITING_REVIEW", "FAILED")
    attack_ran(run)
    head = run["workspace"]["head_commit"]
    for option in ("", "--stat "):
        shown = box.minipipe(f"diff {option}{run_id}", user="dave").stdout
        assert head in shown, f"`minipipe diff {option}{run_id}` does not name {head}"
    # --name-only piped is for scripts: the names alone (on a terminal it names the
    # commit first)
    names = box.minipipe(f"diff --name-only {run_id}", user="dave").stdout
    assert names.split() == ["VERSION"]
