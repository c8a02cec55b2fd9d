"""The review gate, attacked a fourth time: gate.py as 8e9c1a1 left it (config files
read by the gate itself, paths walked hop by hop, fail closed where it cannot look),
the lander's pins (OWN_REPOSITORIES_ONLY) and the submit check (RefCheck).

Same cast as test_review_attacks: dave (minipipe-admin) keeps /srv/git/app, with main
checked out, and reviews; alice (group minipipe) submits and may only read it. Every
test asserts the SECURE outcome: the ones marked FOUND failed against 8e9c1a1 (that
was the finding) and pass since the gate runs in a child forked as alice that
executes nothing (no git of hers to tamper with, lstat-based "cannot tell", `~/` as
the repository owner's home, paths after `=` and short options).
"""

# ruff: noqa: F811  (the gate fixture, imported)
from __future__ import annotations

from subprocess import CompletedProcess

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
from .test_review_system import REPO

TEAM = "/srv/team"        # alice's directory (a team's shared config, her own)
PRIVATE = "/srv/private"  # dave's, 0700: alice may not even search it

# ---------------------------------------------------------------- gate.py's blind spots

# name: (as root, as dave in his repository, clean-up as root). Each leaves dave's
# repository reading config or hooks from a place alice may change, and gate.py says
# nothing: no "writable:", no "unreadable:".
GAPS = {
    # config_parts: `os.path.exists(path)` is False for a file in a directory alice
    # may not search (EACCES, not ENOENT), so the file is taken as "not created yet"
    # and what it includes is never read. alice's own git never opens it (the
    # condition is false where she reads the repository: HEAD is main), so nothing
    # else fails either. dave's git, landing on `release` in a linked worktree,
    # follows it into alice's file.
    "an includeIf in a directory alice may not search": (
        f"install -d -o alice -m 755 {TEAM} && install -d -o dave -m 700 {PRIVATE} && "
        f"printf '[include]\\n\\tpath = {TEAM}/release.gitconfig\\n' "
        f"> {PRIVATE}/release.gitconfig && chown dave {PRIVATE}/release.gitconfig",
        f"git -C {REPO} config includeIf.onbranch:release.path {PRIVATE}/release.gitconfig",
        f"rm -rf {TEAM} {PRIVATE}"),
    # expand() skips `~/` ("the lander's own"), so nothing the lander's file includes
    # is read either: here a team file alice writes. (alice's own git expands `~/` to
    # her home, where there is no such file: nothing fails for her.)
    "an include chain through the lander's ~/": (
        f"install -d -o alice -m 755 {TEAM} && "
        f"printf '[include]\\n\\tpath = {TEAM}/app.gitconfig\\n' > /home/dave/.gitconfig-app"
        " && chown dave /home/dave/.gitconfig-app",
        f"git -C {REPO} config include.path '~/.gitconfig-app'",
        f"rm -rf {TEAM} /home/dave/.gitconfig-app"),
    # tree(): exposed() is None for a path under a directory alice may not search,
    # and os.path.isdir() False, so the hooks directory is never walked (3rd round:
    # "a hook alice may not list" is refused; one she may not search is not). The
    # hook links into alice's directory: dave's next commit runs her code.
    "a hooks directory alice may not search, linking into her directory": (
        f"install -d -o alice -m 755 {TEAM} && install -d -o dave -m 700 {PRIVATE} "
        f"{PRIVATE}/hooks && ln -s {TEAM}/pre-commit {PRIVATE}/hooks/pre-commit",
        f"git -C {REPO} config core.hooksPath {PRIVATE}/hooks",
        f"rm -rf {TEAM} {PRIVATE}"),
    # named_paths() takes only words that start with / or ~: a path given as
    # `--option=/path` (or `-F/path`) is never looked at (low: what that file may
    # do depends on the program).
    "a program's option naming a file in alice's directory": (
        f"install -d -o alice -m 755 {TEAM}",
        f"git -C {REPO} config filter.fmt.clean 'sh --rcfile={TEAM}/fmt.rc -c cat'",
        f"rm -rf {TEAM}"),
}


@pytest.mark.parametrize("gap", sorted(GAPS))
def test_the_enforced_gate_sees_what_dave_reads_where_alice_may_not_look(
        gate: Box, gap: str) -> None:
    """FOUND (medium each; high where it applies: see the landing test below). The
    enforced gate takes a run on a repository whose config or hooks reach a file
    alice may write, through a place she may not search or a `~/` it skips."""
    box = gate
    as_root, as_dave, teardown = GAPS[gap]
    box.sh(as_root)
    box.sh(as_dave, user="dave")
    try:
        result = submit_past_the_gate(box)
        refused_by_the_gate(result, gap)
    finally:
        box.sh(teardown, check=False)


# What alice's file says: a smudge filter for the `lfs` driver dave's repository names
# in its (tracked, reviewed long ago) .gitattributes. OWN_REPOSITORIES_ONLY pins hooks,
# fsmonitor, attributesFile, signatures, gc, submodules: not filters.
SMUDGE = f'[filter "lfs"]\n\tsmudge = "id -un >> {DROP}/smudge-ran; cat"\n'

LANDINGS = {
    # the includeIf gap: landing on release, checked out in a linked worktree
    "through a directory alice may not search": (
        "an includeIf in a directory alice may not search", "release.gitconfig",
        'target = "release"\n'),
    # the ~/ gap: landing on main, checked out in /srv/git/app
    "through the lander's ~/": ("an include chain through the lander's ~/",
                                "app.gitconfig", ""),
}


def refused_or_smudged_as_alice_only(box: Box, result: CompletedProcess[str]) -> None:
    """alice's run (its step appends `two` to data.dat) was refused by the gate, or
    landed with her smudge filter run as nobody but her."""
    if result.returncode != 0:
        assert "may write" in result.stderr or "cannot tell" in result.stderr, \
            result.stderr
        return
    shown, run = review_then_approve(box, int(result.stdout))
    assert "+two" in shown
    ran = box.sh(f"cat {DROP}/smudge-ran", check=False).stdout.split()
    assert "dave" not in ran and "root" not in ran, (
        f"alice's smudge filter ran as {ran} ({run['state']}: {run['reason']})")


@pytest.mark.parametrize("landing", sorted(LANDINGS))
def test_a_config_alice_writes_beyond_the_gate_runs_her_code_as_the_lander(
        gate: Box, landing: str) -> None:
    """FOUND (high where it applies). dave's repository tracks the usual LFS line
    (`*.dat filter=lfs`, no lfs configured: git ignores the filter), and its config
    reaches a team file alice writes, through one of the gaps above; the enforced
    gate takes her run. Her file defines `filter.lfs.smudge`; her change (reviewed:
    `data.dat` gets a line) lands with `git merge --ff-only` in dave's checked-out
    work tree, which smudges data.dat through her command, as dave."""
    box = gate
    gap, name, extra = LANDINGS[landing]
    as_root, as_dave, teardown = GAPS[gap]
    box.sh(f"cd {REPO} && printf '*.dat filter=lfs diff=lfs merge=lfs -text\\n' > "
           ".gitattributes && echo one > data.dat && git add . && "
           "git -c user.name=d -c user.email=d@x commit -qm 'data, lfs attributes' && "
           "git worktree add -q /srv/git/app-release -b release", user="dave")
    box.sh(as_root)
    box.sh(as_dave, user="dave")
    box.c.write(f"{TEAM}/{name}", SMUDGE)
    box.sh(f"chown alice {TEAM}/{name}")
    try:
        result = box.minipipe("submit -", input=plan("echo two >> data.dat", extra=extra),
                              check=False)
        refused_or_smudged_as_alice_only(box, result)
    finally:
        box.sh(teardown, check=False)
        box.sh("rm -rf /srv/git/app-release", check=False)


# ---------------------------------------------------------------- RefCheck's answer

# alice, at her shell: the file dave's repository includes from her home is a FIFO.
# Each git that reads the repository's config blocks opening it until she opens it
# for writing; then, if that git is the gate's own (`config --file F --no-includes`,
# whose parent is the gate), she writes 70 000 bytes into the gate's standard output
# (pidfd_getfd: the gate runs as her; /proc/PID/fd/1 is refused, the pipe is root's),
# and lets git go on (an empty include).
PAD_GATE = r"""
fifo=$1
PAD='
import ctypes, os, sys
fd = ctypes.CDLL(None, use_errno=True).syscall(438, os.pidfd_open(int(sys.argv[1])), 1, 0)
assert fd >= 0, os.strerror(ctypes.get_errno())
with open(fd, "wb") as pipe:
    pipe.write((b"#" * 99 + b"\n") * 700)
'
while true; do
  exec 3>"$fifo"
  for g in $(pgrep -u alice -f -- '--no-includes -z --list'); do
    p=$(awk '/^PPid/ {print $2}' /proc/$g/status 2>/dev/null)
    [ -n "$p" ] && python3 -c "$PAD" "$p" && echo "$g $p" >> /srv/drop/padded
  done
  exec 3>&-
done
"""


def test_a_gate_answer_past_64_kib_still_refuses(gate: Box) -> None:
    """FOUND (low: later asks mark the run advisory and land it as alice). RefCheck
    keeps the first 64 KiB of what the submit check prints (git's stderr merged in)
    and gate_answer reads only that: a `writable:` line further on is "nothing
    writable". dave's repository includes a file in alice's home (which the gate
    rightly names); alice's FIFO there holds the gate's git while she writes 70 000
    bytes into the gate's stdout. The enforced gate took the run."""
    box = gate
    fifo = "/home/alice/app.gitconfig"
    box.c.write("/srv/pad-gate.sh", PAD_GATE, "0755")
    box.sh(f"rm -f {fifo} && mkfifo -m 644 {fifo}", user="alice")
    box.sh("setsid sh /srv/pad-gate.sh /home/alice/app.gitconfig >/dev/null 2>&1 "
           "< /dev/null &", user="alice")
    box.sh(f"git -C {REPO} config include.path {fifo}", user="dave")
    run_id = None
    try:
        result = box.minipipe("submit -", input=plan("printf 'v2\\n' > VERSION"),
                              check=False)
        if result.returncode == 0:
            run_id = int(result.stdout)
            box.minipipe(f"cancel {run_id}", check=False)
            box.wait_state(run_id, "CANCELLED", "FAILED", "AWAITING_REVIEW",
                           "SUCCEEDED")
        # Since the gate runs in a child that executes nothing (identity.fork_as),
        # there is no git of alice's to hold and no pipe of hers to pad: the attack
        # finds nothing to take (DROP/padded stays empty), and the gate names the file.
        assert result.returncode != 0 and "may write /home/alice" in result.stderr, (
            f"the enforced gate took run {run_id}")
    finally:
        box.sh("pkill -f /srv/pad-gate.sh; rm -f /srv/pad-gate.sh", check=False)
        box.sh(f"rm -f {fifo}", check=False)
