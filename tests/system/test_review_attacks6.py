"""The review gate, attacked a sixth time: the landing's vetting as 3e70421 left it
(review.RunWorkspace.vetting: the lander's own `git config --list --show-origin
--includes -z` where it lands, checked as the submitter by gate.listing_part).

Same cast as test_review_attacks: dave (minipipe-admin) keeps /srv/git/app, with main
checked out, and reviews; alice (group minipipe) submits and may only read it. Each
test asserts the SECURE outcome (or, for a false refusal, the USEFUL one: a normal
setup lands). The ones marked FOUND failed against 3e70421 and pass since
config_listing keeps paths as bytes (surrogates), program_part reads double quotes
as a shell does, refuses bare arguments naming a file where git runs the program,
and interpreters without the absolute path of their script; the ones marked HELD
passed then.
"""

# ruff: noqa: F811  (the gate fixture, imported)
from __future__ import annotations

import contextlib
import shlex
from collections.abc import Iterator

import pytest

from .conftest import Box
from .test_review_attacks import (  # noqa: F401  (gate is a fixture)
    DROP,
    gate,
    plan,
    review_then_approve,
)
from .test_review_system import REPO

COMMIT = "git -c user.name=d -c user.email=d@x commit -qm"


def dave_tracks(box: Box, files: dict[str, str], message: str) -> None:
    """dave commits `files` (path: content) to main in his checkout."""
    for path, text in files.items():
        box.c.write(f"{REPO}/{path}", text)
        box.sh(f"chown dave: {REPO}/{path}")
    box.sh(f"cd {REPO} && git add . && {COMMIT} '{message}'", user="dave")


@contextlib.contextmanager
def dave_filters(box: Box, name: str, smudge: str, clean: str = "cat", *,
                 files: dict[str, str] | None = None,
                 tool: tuple[str, str] | None = None) -> Iterator[None]:
    """dave's repository filters *.dat through filter `name` (its smudge and clean
    commands): he tracks the .gitattributes line, x.dat (`one`) and `files`; `tool`
    (path, text), a program of his, is installed first. All undone after."""
    if tool:
        box.c.write(tool[0], tool[1])
        box.sh(f"chmod 755 {tool[0]}")
    dave_tracks(box, {".gitattributes": f"*.dat filter={name}\n", "x.dat": "one\n",
                      **(files or {})}, f"{name} filter")
    box.sh(f"git -C {REPO} config filter.{name}.smudge {shlex.quote(smudge)} && "
           f"git -C {REPO} config filter.{name}.clean {shlex.quote(clean)}", user="dave")
    try:
        yield
    finally:
        box.sh(f"git -C {REPO} config --remove-section filter.{name}", user="dave",
               check=False)
        if tool:
            box.sh(f"rm -f {tool[0]}")


def landed(box: Box, run_id: int) -> dict:
    """The run after its review and approval (asserting it got there)."""
    _shown, run = review_then_approve(box, run_id)
    return run


def ran_as(box: Box) -> list[str]:
    return box.sh(f"cat {DROP}/ran", check=False).stdout.split()


# ---------------------------------------------------------------- what listing_part reads

def test_a_non_utf8_include_in_daves_global_config_is_vetted(gate: Box) -> None:
    """FOUND (medium: code execution as the reviewer; needs a non-UTF-8 file name
    in dave's ~/.gitconfig, a legacy Latin-1 one). The submit gate reads only the
    repository's config; dave's global config is checked at landing only, by the
    listing. Workspace.config_listing decodes git's -z output with
    `backslashreplace`, so the origin `/srv/team/\\xe9quipe.gitconfig` (and the
    include's value) become a path that does not exist: exposed() walks to
    /srv/team (root's, 755), finds no such entry, answers "none". The real file is
    alice's (the team's shared config, hers): it sets `filter.lfs.smudge = sh` (a
    plain program, so program_part takes it), and dave's tracked `*.dat filter=lfs`
    makes his `merge --ff-only` pipe her reviewed data.dat (a shell script that
    prints the data) into sh, as dave."""
    box = gate
    team = "/srv/team"
    box.sh(f"install -d -m 755 {team} && printf '[filter \"lfs\"]\\n\\tsmudge = sh\\n' > "
           f"{team}/$(printf '\\351')quipe.gitconfig && "
           f"chown alice {team}/$(printf '\\351')quipe.gitconfig")
    box.sh(f"printf '[include]\\n\\tpath = {team}/\\351quipe.gitconfig\\n' > /home/dave/.gitconfig",
           user="dave")
    dave_tracks(box, {".gitattributes": "*.dat filter=lfs -text\n", "data.dat": "one\n"},
                "data")
    # dave's git reads alice's file (as it will when it lands)
    said = box.sh(f"cd {REPO} && git config --get filter.lfs.smudge", user="dave").stdout
    assert said.strip() == "sh", said
    try:
        script = f"id -un >> {DROP}/ran; printf 'one\\\\ntwo\\\\n'"
        run = landed(box, box.submit(plan(f"printf '%s\\n' \"{script}\" > data.dat")))
        assert "dave" not in ran_as(box) and "root" not in ran_as(box), (
            f"alice's filter ran as {ran_as(box)} ({run['state']}: {run['reason']})")
    finally:
        box.sh(f"rm -rf {team} /home/dave/.gitconfig", check=False)


def test_a_filter_argument_without_a_slash_is_vetted(gate: Box) -> None:
    """FOUND (medium: the reviewed change runs as the reviewer while it lands, before
    anything else; program_part refuses `tools/strip.sh` as "a relative path it cannot
    vet", but takes `sh strip.sh`: a word without a slash is taken for a program in
    PATH, though here it is an argument, a file of the work tree). dave's repository
    smudges *.dat with `sh strip.sh` (strip.sh tracked, `cat`). alice's change edits
    strip.sh and x.dat; landing's `merge --ff-only` writes the new strip.sh, then
    smudges x.dat through it, as dave, in his work tree. The reviewer approved a
    change to land, not to run as himself."""
    box = gate
    # (x.dat after strip.sh: git checks out in path order)
    with dave_filters(box, "strip", "sh strip.sh", files={"strip.sh": "cat\n"}):
        result = box.minipipe("submit -", check=False, input=plan(
            f"printf 'id -un >> {DROP}/ran\\ncat\\n' > strip.sh && echo two >> x.dat"))
        if result.returncode != 0:
            assert "cannot vet" in result.stderr or "cannot tell" in result.stderr, \
                result.stderr
            return
        run = landed(box, int(result.stdout))
        assert "dave" not in ran_as(box) and "root" not in ran_as(box), (
            f"alice's strip.sh ran as {ran_as(box)} ({run['state']}: {run['reason']})")


# ---------------------------------------------------------------- false refusals

def submit_and_land(box: Box, script: str = "printf 'v2\\n' > VERSION") -> dict:
    result = box.minipipe("submit -", input=plan(script), check=False)
    assert result.returncode == 0, f"the submit was refused: {result.stderr}"
    run = landed(box, int(result.stdout))
    assert run["state"] == "SUCCEEDED", run["reason"]
    version = box.sh(f"cat {REPO}/VERSION", user="dave").stdout.strip()
    assert version == "v2", version
    return run


# dave's ~/.gitconfig as a developer keeps it (and his home private, as bookworm's
# adduser makes it: 0700).
DAVE_GITCONFIG = """\
[user]
\tname = Dave
\temail = dave@example.org
[core]
\teditor = vim
\tpager = less -FRX
\texcludesFile = ~/.gitignore_global
[alias]
\tlg = !git log --oneline --graph | head -20
\tst = status -sb
[credential]
\thelper = store
[pull]
\trebase = true
[include]
\tpath = ~/.gitconfig.local
[includeIf "gitdir:~/work/"]
\tpath = ~/work/.gitconfig
[filter "lfs"]
\tclean = git-lfs clean -- %f
\tsmudge = git-lfs smudge -- %f
\tprocess = git-lfs filter-process
\trequired = true
[merge "npm-merge-driver"]
\tname = automatically merge npm lockfiles
\tdriver = npx npm-merge-driver merge %A %O %B %P
"""


def test_a_normal_lander_setup_lands(gate: Box) -> None:
    """HELD (a false refusal would stop every landing). dave's ~/.gitconfig as
    `git lfs install`, a credential helper, aliases, a private include that does not
    exist yet and a conditional one; his home 0700."""
    box = gate
    box.c.write("/home/dave/.gitconfig", DAVE_GITCONFIG)
    box.sh("chown dave: /home/dave/.gitconfig && chmod 700 /home/dave")
    try:
        submit_and_land(box)
    finally:
        box.sh("rm -f /home/dave/.gitconfig && chmod 755 /home/dave", check=False)


# What tools write into a repository's config when a developer installs them:
QUOTED_PROGRAMS = {
    # `nbstripout --install`: '"{sys.executable}" -m nbstripout'
    "nbstripout": ("filter.nbstripout.clean", '"/usr/bin/python3" -m nbstripout'),
    # `git-crypt init`/`unlock`: '"<path of git-crypt>" smudge'
    "git-crypt": ("filter.git-crypt.smudge", '"/usr/bin/git-crypt" smudge'),
}


@pytest.mark.parametrize("tool", sorted(QUOTED_PROGRAMS))
def test_a_quoted_program_path_does_not_refuse_every_run(gate: Box, tool: str) -> None:
    """FOUND (low-medium: usability; a repository that uses nbstripout or git-crypt
    cannot have a reviewed run at all). program_part refuses any value with a quote
    in it ("a command line it cannot vet"), at submit and at landing, though a
    double-quoted absolute path without $, ` or \\ in it is as plain as an unquoted
    one: split it as sh would (shlex, posix) when the value holds only quotes of
    that kind, and vet the words."""
    box = gate
    key, value = QUOTED_PROGRAMS[tool]
    box.sh(f"git -C {REPO} config {key} '{value}'", user="dave")
    try:
        if tool == "nbstripout":
            # Fixed for quotes, and refused by decision: `python3 -m nbstripout`
            # imports nbstripout from where git runs it first, so a change adding
            # nbstripout.py would run as the lander. Only an interpreter given the
            # absolute path of its script can be vetted.
            result = box.minipipe("submit -", input=plan("printf 'v2\\n' > VERSION"),
                                  check=False)
            assert result.returncode != 0 and "runs an interpreter" in result.stderr, (
                result.stdout, result.stderr)
            return
        submit_and_land(box)
    finally:
        box.sh(f"git -C {REPO} config --remove-section {key.rsplit('.', 1)[0]}",
               user="dave", check=False)


def test_an_ignored_team_build_directory_does_not_refuse_every_run(gate: Box) -> None:
    """FOUND (low: usability), FIXED. dave's checkout has an ignored build/ the
    team shares (group team6: dave and alice, 2775). No tracked path goes through
    it and the change adds none, so git neither reads a .gitattributes there nor
    writes there while landing; yet the gate (every directory of the work tree)
    refused the run at submit, and the vet would have refused its landing. Now
    only the directories tracked paths go through count: at submit those of the
    work tree's index (gate.index_paths reads it), at landing those of the index
    and of the landed tree, as the lander's git lists them. A tracked directory
    alice may write (docs/, made 2775 team6 too) still refuses, at submit."""
    box = gate
    dave_tracks(box, {".gitignore": "/build/\n", "docs/guide.txt": "read me\n"},
                "ignore build, a guide")
    box.sh("groupadd -f team6 && usermod -aG team6 alice && usermod -aG team6 dave")
    box.sh(f"install -d -o dave -g team6 -m 2775 {REPO}/build")
    try:
        run = submit_and_land(box)
        assert run["workspace"]["changes"]["gate"] == "enforced", run["workspace"]
        box.sh(f"chgrp team6 {REPO}/docs && chmod 2775 {REPO}/docs")
        result = box.minipipe("submit -", input=plan("printf 'v3\\n' > VERSION"),
                              check=False)
        assert result.returncode != 0 and f"may write {REPO}/docs" in result.stderr, (
            result.stdout, result.stderr)
    finally:
        box.sh(f"rm -rf {REPO}/build && chmod 755 {REPO}/docs && chgrp dave {REPO}/docs",
               check=False)
