"""The review gate, attacked a ninth time: c37449b (link_facts, trusted filters,
merge-base --all), 41de0bb (only the work-tree directories tracked paths go
through count; gate.index_paths), bc9a342 (helper scopes) and afb62a8 (the landing
quarantine).

Same cast as test_review_attacks: dave (minipipe-admin) keeps /srv/git/app, with main
checked out, and reviews; alice (group minipipe) submits and may only read it. Each
test asserts the SECURE outcome (or, for a false refusal, the USEFUL one). The ones
marked FOUND fail against c37449b (that is the finding); the ones marked HELD
document an attack that was refused.

All pass since: a submodule (a gitlink in the index or either tree) counts whole,
its `.git` too, at submit and in the vet, and the lander's `status` ignores
submodules (no git of the lander's starts inside one); a split index is read with
its shared index (gate.read_index).
"""

# ruff: noqa: F811  (the gate fixture, imported)
from __future__ import annotations

from .conftest import Box
from .test_review_attacks import (  # noqa: F401  (gate is a fixture)
    DROP,
    gate,
    plan,
    review_then_approve,
    submit_past_the_gate,
)
from .test_review_attacks6 import dave_tracks, ran_as
from .test_review_attacks8 import daves_gitconfig_is_alices
from .test_review_system import REPO

DAVE = "-c user.name=dave -c user.email=dave@example.org"
LIB = "/srv/git/lib"

# alice's clean filter: proves whose it ran as, then passes the content through.
EVIL = f"#!/bin/sh\nid -un >> {DROP}/ran\nexec cat\n"


# ---------------------------------------------------------------- the work tree's gaps


def test_a_team_writable_submodule_checkout_cannot_run_alices_code_as_the_lander(
        gate: Box) -> None:
    """FOUND (medium where it applies: alice's code runs as dave on every landing
    into his checked-out main; needs a populated submodule in dave's work tree whose
    checkout alice's group may write, e.g. a vendored library cloned there with the
    team's umask 002 in a setgid directory, while the superproject is dave's 755).

    Since 41de0bb the gate and the vet look only at the directories tracked paths go
    through (gate.parent_directories of the index / of `ls-files` + `ls-tree`). A
    submodule is ONE tracked path, the gitlink `vendor/lib` itself: neither that
    directory nor anything under it (its files, its in-tree `.git` directory) is
    a parent of a tracked path, so nothing there is looked at (before 41de0bb the
    walk of every directory refused it). tree(common) covers .git/modules, not a
    submodule's own `.git` in the work tree; the vet's config listing is the
    superproject's. Yet the landing's `git status --porcelain --untracked-files=no`
    in dave's work tree (Git.land, before `merge --ff-only`) runs `git status`
    INSIDE every populated submodule, as dave (its -c options ride along in
    GIT_CONFIG_PARAMETERS; ownership holds: the directories are dave's), and that
    git reads the submodule's config and attributes and refreshes its index through
    clean filters. alice appends `filter.x.clean = /srv/drop/evil.sh` to the
    submodule's group-writable .git/config, adds `.gitattributes` (`* filter=x`)
    and touches a file there: evil.sh runs as dave while her reviewed one-line
    change lands (also before any approval would matter: the vet passes).

    Fix: count every directory at and under each gitlink path of the work tree
    (the submodule's work tree and its .git, gitfile targets too) in the gate and
    in the vet (or refuse populated submodules in a checked-out target), and run the
    lander's status with `--ignore-submodules=all` (and `-c diff.ignoreSubmodules=all`)
    so no git ever starts inside a submodule while landing."""
    box = gate
    box.sh("groupadd -f team9 && usermod -aG team9 alice && usermod -aG team9 dave")
    box.sh(f"rm -rf {LIB} && git init -q --initial-branch=main {LIB} && "
           f"cd {LIB} && echo a > a.txt && git add . && git {DAVE} commit -qm lib",
           user="dave")
    box.sh(f"""cd {REPO} && mkdir -p vendor && git clone -q {LIB} vendor/lib &&
git submodule add -q {LIB} vendor/lib && git {DAVE} commit -qm 'vendor lib'""",
           user="dave")
    # The team's vendored checkout: group team9, setgid, group-writable (umask 002).
    box.sh(f"chgrp -R team9 {REPO}/vendor/lib && chmod -R g+w {REPO}/vendor/lib && "
           f"find {REPO}/vendor/lib -type d -exec chmod g+s {{}} +")
    try:
        assert box.sh(f"git -C {REPO} status --porcelain", user="dave").stdout == ""
        result = box.minipipe("submit -", check=False, input=plan(
            "printf 'v2\\n' > VERSION"))
        if result.returncode != 0:  # refused at submit: the submodule is looked at
            assert "vendor/lib" in result.stderr, result.stderr
            return
        run_id = int(result.stdout)
        run = box.wait_state(run_id, "AWAITING_REVIEW", "FAILED")
        assert run["state"] == "AWAITING_REVIEW", run["reason"]
        box.c.write(f"{DROP}/evil.sh", EVIL)
        box.sh(f"chown alice {DROP}/evil.sh && chmod 755 {DROP}/evil.sh")
        box.sh(f"""cd {REPO}/vendor/lib &&
printf '[filter "x"]\\n\\tclean = {DROP}/evil.sh\\n' >> .git/config &&
printf '* filter=x\\n' > .gitattributes && touch a.txt""", user="alice")
        shown, run = review_then_approve(box, run_id)
        assert "+v2" in shown, shown
        assert "dave" not in ran_as(box) and "root" not in ran_as(box), (
            f"alice's clean filter ran as {ran_as(box)} ({run['state']}: "
            f"{run['reason']})")
    finally:
        box.sh(f"gpasswd -d alice team9; gpasswd -d dave team9; rm -rf {LIB}",
               check=False)


# ---------------------------------------------------------------- the landing's vet


def test_a_hard_link_from_daves_private_home_to_alices_config_is_vetted(gate: Box) -> None:
    """HELD. Round 8's fix (gate.link_facts) follows symbolic links as the lander;
    a hard link has no hops to follow: dave's ~/.gitconfig (his home 0700, where
    alice may not look) is the same inode as /srv/team/gitconfig, alice's (made by
    an admin's `ln`, or a dotfiles tool that hard-links). alice's walk of
    /home/dave/.gitconfig stops at EACCES (exposed() answers None), and the
    polyglot's `sh /home/dave/.gitconfig` names only that path. Held: link_facts
    stats the real file as dave and fact_part sees its owner is alice (the
    filter's `sh` is also no trusted_filter_program in a checked-out work tree);
    the landing is refused ("may change /home/dave/.gitconfig", the inode's one
    name dave's git knows) and nothing runs as dave."""
    box = gate
    with daves_gitconfig_is_alices(
            box, "rm -f /home/dave/.gitconfig && ln /srv/team/gitconfig "
            "/home/dave/.gitconfig && chmod 700 /home/dave", as_dave=False):
        result = box.minipipe("submit -", check=False, input=plan("echo two >> data.dat"))
        assert result.returncode == 0, result.stderr
        shown, run = review_then_approve(box, int(result.stdout))
        assert "+two" in shown, shown
        assert "dave" not in ran_as(box) and "root" not in ran_as(box), (
            f"alice's hard-linked config ran as {ran_as(box)} ({run['state']}: "
            f"{run['reason']})")
        assert run["state"] != "SUCCEEDED" and "may change /home/dave/.gitconfig" in (
            run["reason"] or ""), run["reason"]


# ---------------------------------------------------------------- false refusals


def test_a_split_index_does_not_bring_back_the_ignored_build_directory_refusal(
        gate: Box) -> None:
    """FOUND (low: usability; every run of the team refused at submit). 41de0bb
    made the gate count only the work-tree directories tracked paths go through, so
    a team's ignored, group-writable build/ no longer refuses every run (round 6).
    But gate.index_paths answers None for a split index (`core.splitIndex`, or
    `git update-index --split-index`, which big repositories use to make index
    writes cheap: the index then holds a `link` extension and most entries live in
    .git/sharedindex.<id>), and the gate falls back to walking every directory:
    build/ refuses the run again ("may write /srv/git/app/build"), although the
    landing's vet (the lander's `ls-files`) would let it land.

    Fix: read the shared index the `link` extension names (.git/sharedindex.<hex>,
    same format; the split index's entries replace/delete by position: the
    directories of both files' paths are a superset, which is enough for this
    question), instead of falling back to every directory."""
    box = gate
    dave_tracks(box, {".gitignore": "/build/\n", "docs/guide.txt": "read me\n"},
                "ignore build, a guide")
    box.sh("groupadd -f team9b && usermod -aG team9b alice && usermod -aG team9b dave")
    box.sh(f"install -d -o dave -g team9b -m 2775 {REPO}/build")
    try:
        box.sh(f"git -C {REPO} update-index --split-index", user="dave")
        assert box.sh(f"ls {REPO}/.git", user="dave").stdout.count("sharedindex.") == 1
        result = submit_past_the_gate(box)
        assert result.returncode == 0, f"the submit was refused: {result.stderr}"
    finally:
        box.sh(f"rm -rf {REPO}/build; gpasswd -d alice team9b; gpasswd -d dave team9b",
               check=False)
