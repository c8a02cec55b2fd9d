"""The review gate, attacked an eighth time: afb62a8 (landing's quarantine,
quarantine.py; the vet's top_level_names; Git.land's "meets" check) and
gate.listing_part as the landing vet uses it.

Same cast as test_review_attacks: dave (minipipe-admin) keeps /srv/git/app, with main
checked out, and reviews; alice (group minipipe) submits and may only read it. Each
test asserts the SECURE outcome. The ones marked FOUND failed against afb62a8 (that
is the finding); the ones marked HELD document an attack that was refused.

All pass since: landing requires `merge-base --all` to be the reviewed merge-base
alone; the vet resolves, as the lander, the links (and the real files' owners and
modes) on the way to every path the listing names (gate.link_facts); a quoted word
with blanks is vetted as a command line, and script/sg/newgrp are interpreters; in
a checked-out work tree only trusted_filter_programs may filter; the quarantine
refuses a pack that takes far more room than its objects (quarantine.allowed_room).
"""

# ruff: noqa: F811  (the gate fixture, imported)
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from tests.integration.conftest import wait_for

from .conftest import Box
from .test_review_attacks import (  # noqa: F401  (gate is a fixture)
    DROP,
    TOOLS,
    gate,
    landed_version,
    plan,
    review_then_approve,
)
from .test_review_attacks6 import dave_filters, dave_tracks, ran_as
from .test_review_attacks7 import objects_size
from .test_review_system import REPO, main_of

DAVE = "-c user.name=dave -c user.email=dave@example.org"

# ---------------------------------------------------------------- what lands


def test_two_merge_bases_cannot_hide_a_revert_of_main(gate: Box) -> None:
    """FOUND (high: a fix on main is silently undone; the reviewed diff shows
    none of it). Round 7's fix compares ONE merge-base: `git merge-base current
    head` == the recorded merge-base. With a criss-cross history there are two
    best merge-bases and `git merge-base` prints only the newest; merge-tree
    merges against their virtual merge (all of them).

    dave's main is M = merge(X, Y): X is his older `fix: security` commit
    (VERSION v1 -> v1-fixed), Y a newer docs commit on a branch he merged. alice's
    run (ref main) resets to Y, merges X with `-s ours` (her merge M' keeps Y's
    tree: the fix dropped), then adds NOTES. merge-base(M, head) = {X, Y}; git
    names Y, so the recorded diff is Y..head = `+notes` only (the fix's absence is
    no difference from Y). check_reviewed agrees, `meets` (Y) equals the recorded
    merge-base, head is no fast-forward of M, so land merges: merge-ort's virtual
    base is X+Y (fixed), ours M (fixed), theirs head (unfixed): the fix goes.
    (The commit list names dave's `fix: security` among alice's commits.)

    Fix: require that `git merge-base --all current head` is exactly the recorded
    merge-base (one commit), or equivalently that no commit of merge_base..head
    is reachable from the target (`rev-list merge_base..head --not` ... / `git
    rev-list --count current..head` == recorded commit_count): else refuse."""
    box = gate
    now = int(time.time())
    fix, docs = (f"GIT_COMMITTER_DATE='{t} +0000' GIT_AUTHOR_DATE='{t} +0000'"
                 for t in (now + 60, now + 120))
    box.sh(f"""cd {REPO} && printf 'v1-fixed\\n' > VERSION &&
{fix} git {DAVE} commit -qam 'fix: security' &&
git checkout -q -b docs main~1 && printf 'docs\\n' > DOCS && git add DOCS &&
{docs} git {DAVE} commit -qm docs &&
git checkout -q main && git {DAVE} merge -q --no-ff --no-edit docs""", user="dave")
    assert landed_version(box) == "v1-fixed"
    shown, run = review_then_approve(box, box.submit(plan("""
x=$(git rev-parse HEAD^1) && y=$(git rev-parse HEAD^2)
git reset -q --hard "$y"
git merge -q -s ours --no-edit "$x"
printf 'notes\\n' > NOTES && git add NOTES && git commit -qm 'add notes'
""")))
    landed = landed_version(box)
    assert landed == "v1-fixed", (
        f"main's VERSION went from v1-fixed to {landed!r} ({run['state']}: "
        f"{run['reason']}); the reviewer was shown\n{shown}")


# ---------------------------------------------------------------- the landing's vet

# alice's team config, which dave's ~/.gitconfig is a link to: valid git config and
# a valid shell script at once. As config: `filter.lfs.smudge = sh /home/dave/.gitconfig`
# (an interpreter given the absolute path of its script, as program_part asks) and
# `filter.lfs.x = ""` (the rest of the line a comment). As a script (sh runs it):
# `[` and `smudge` fail, then `id -un >> ...`, then `exec cat` (the filter's output).
POLYGLOT = f"""[filter "lfs"]
\tsmudge = sh /home/dave/.gitconfig
\tx = "";id -un >>{DROP}/ran;exec cat;"#"
"""


@contextlib.contextmanager
def daves_gitconfig_is_alices(box: Box, link: str, *, as_dave: bool) -> Iterator[None]:
    """dave tracks `*.dat filter=lfs` and data.dat; his ~/.gitconfig becomes alice's
    POLYGLOT file (/srv/team/gitconfig, hers) through `link` (run as dave or as
    root), his home 0700; his git then smudges with `sh /home/dave/.gitconfig`."""
    dave_tracks(box, {".gitattributes": "*.dat filter=lfs -text\n", "data.dat": "one\n"},
                "data")
    box.sh("install -d -o alice -m 755 /srv/team")
    box.c.write("/srv/team/gitconfig", POLYGLOT)
    box.sh("chown alice /srv/team/gitconfig")
    box.sh(link, user="dave" if as_dave else None)
    try:
        said = box.sh(f"cd {REPO} && git config --get filter.lfs.smudge", user="dave")
        assert said.stdout.strip() == "sh /home/dave/.gitconfig", said
        yield
    finally:
        box.sh("rm -f /home/dave/.gitconfig && chmod 755 /home/dave", check=False)
        box.sh("rm -rf /srv/team", check=False)


def test_a_config_linked_from_daves_private_home_is_vetted(gate: Box) -> None:
    """FOUND (high where it applies: alice's code runs as dave; needs dave's
    ~/.gitconfig, or a file it includes, to be a link into a place alice may
    write: a team's shared dotfiles, /srv/team/gitconfig here, hers). dave's home
    is 0700, as bookworm makes it. listing_part checks each config file the
    lander's git lists with exposed(), as alice: walking /home/dave/.gitconfig,
    lstat() of `.gitconfig` fails with EACCES (she may not search /home/dave), so
    os.path.islink() and os.path.lexists() are False and exposed() answers None:
    "nothing there she could change". The link is never followed to her file. The
    same blind spot passes the smudge command `sh /home/dave/.gitconfig` (an
    absolute script path, "not hers"). Her file is a polyglot (POLYGLOT); dave's
    tracked `*.dat filter=lfs` makes landing's `merge --ff-only` run it as dave.
    (The submit gate reads only the repository's config, so only the vet looks.)

    Fix: in the vet, resolve every path the listing names (config files, include
    targets, program paths) as the lander, hop by hop (readlink of each link on the
    way, as the lander or root with O_NOFOLLOW walks), and ask alice's child about
    each hop's target and the final real path; and where alice cannot look, do not
    answer "none" unless the lander's walk found no link there."""
    box = gate
    with daves_gitconfig_is_alices(
            box, "ln -sfn /srv/team/gitconfig /home/dave/.gitconfig && chmod 700 /home/dave",
            as_dave=True):
        result = box.minipipe("submit -", check=False, input=plan("echo two >> data.dat"))
        assert result.returncode == 0, result.stderr
        shown, run = review_then_approve(box, int(result.stdout))
        assert "+two" in shown, shown
        assert "dave" not in ran_as(box) and "root" not in ran_as(box), (
            f"alice's polyglot config ran as {ran_as(box)} ({run['state']}: "
            f"{run['reason']})")


def test_an_interpreter_inside_a_quoted_command_string_is_vetted(gate: Box) -> None:
    """FOUND (low-medium where it applies: the reviewed strip.sh runs as dave while
    it lands). program_part's rule "an interpreter anywhere in the command line is
    given only absolute paths" looks at whole words: `script -qec "sh strip.sh"`
    (util-linux, in every Debian) splits, as a shell reads it, into `script`,
    `-qec` and the one word `sh strip.sh`, whose basename is no interpreter and
    which names no file (the work tree has strip.sh, not `sh strip.sh`). script
    then runs that string with $SHELL -c. The same goes for `sg GROUP "..."`
    (login), and any program that takes a command as one argument. dave tracks
    strip.sh (`cat`) and smudges *.dat with it; alice's change edits strip.sh and
    x.dat.

    Fix: vet a word holding blanks as a command line of its own (program_part on
    its words, recursively), or refuse words with blanks in filter and merge-driver
    values; and add script, sg, newgrp to INTERPRETERS."""
    box = gate
    with dave_filters(box, "strip", 'script -qec "sh strip.sh"', files={"strip.sh": "cat\n"}):
        result = box.minipipe("submit -", check=False, input=plan(
            f"printf 'id -un >> {DROP}/ran\\ncat\\n' > strip.sh && echo two >> x.dat"))
        if result.returncode != 0:  # refused at submit: the quoted word is vetted
            assert "runs an interpreter ('sh')" in result.stderr, result.stderr
            return
        shown, run = review_then_approve(box, int(result.stdout))
        assert "+two" in shown, shown
        assert "dave" not in ran_as(box) and "root" not in ran_as(box), (
            f"alice's strip.sh ran as {ran_as(box)} ({run['state']}: {run['reason']})")


# A team tool as many are: it takes its settings from a file where it runs (as
# prettier reads .prettierrc.js or prettier.config.js, rubocop .rubocop.yml with
# `require:`, composer composer.json's scripts, gradle build.gradle, task Taskfile.yml),
# and those settings may be code. Here a shell file, sourced.
TIDY = """#!/bin/sh
# tidy-data: normalises data files; settings in ./.tidy.conf (a shell fragment)
[ -f .tidy.conf ] && . ./.tidy.conf
exec cat
"""


def test_a_filter_that_reads_its_settings_where_it_runs_is_vetted(gate: Box) -> None:
    """FOUND (medium where it applies: alice's file runs as dave while the change
    lands). program_part vets the words of a filter's command line: a program in
    PATH (not a known interpreter), arguments that are absolute paths or name no
    file the work tree has or the change adds. It cannot see the files a program
    reads on its own from where git runs it: formatters and task runners load
    settings, often code, from the current directory (prettier.config.js,
    .rubocop.yml `require:`, composer.json scripts, build.gradle, Taskfile.yml).
    dave smudges and cleans *.dat with `tidy-data` (no arguments: nothing to vet),
    which reads ./.tidy.conf if there is one; there is none. alice's change adds
    .tidy.conf (`id -un >> ran`) and edits x.dat; landing's `merge --ff-only`
    writes .tidy.conf (path order), then smudges x.dat through tidy-data, in dave's
    work tree, as dave.

    Fix: the vet cannot know each program's inputs; landing must not run the
    lander's filters over a tree the change just wrote: where the target is
    checked out, refuse (or land the ref only and tell the owner to check out)
    when the change adds or modifies any path and any filter or merge driver is
    configured, unless the owner lists the program as trusted (a config key of
    minipipe's); or check out with each configured filter's commands pinned off."""
    box = gate
    with dave_filters(box, "tidy", "tidy-data", "tidy-data",
                      tool=("/usr/local/bin/tidy-data", TIDY)):
        result = box.minipipe("submit -", check=False, input=plan(
            f"printf 'id -un >> {DROP}/ran\\n' > .tidy.conf && echo two >> x.dat"))
        assert result.returncode == 0, result.stderr
        shown, run = review_then_approve(box, int(result.stdout))
        assert "+two" in shown and ".tidy.conf" in shown, shown
        assert "dave" not in ran_as(box) and "root" not in ran_as(box), (
            f"alice's .tidy.conf ran as {ran_as(box)} ({run['state']}: {run['reason']})")


# ---------------------------------------------------------------- the quarantine

# Writes a pack holding one blob (OID, read with `git cat-file blob` where it runs)
# whose zlib stream starts with PAD bytes of empty stored deflate blocks: valid zlib,
# inflating to the same bytes, so the same object; pack-objects copies packed data
# as it is (object reuse) and index-pack keeps the bytes it read.
PAD_PACK = r'''
import hashlib, struct, subprocess, sys, zlib
oid, pad, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
data = subprocess.run(["git", "cat-file", "blob", oid], check=True,
                      capture_output=True).stdout
raw = zlib.compressobj(9, zlib.DEFLATED, -15)
body = raw.compress(data) + raw.flush()
stream = (b"\x78\x01" + b"\x00\x00\x00\xff\xff" * (pad // 5) + body
          + struct.pack(">I", zlib.adler32(data)))
size, head = len(data), []
byte = (3 << 4) | (size & 15)  # OBJ_BLOB
size >>= 4
while size:
    head.append(byte | 0x80)
    byte, size = size & 0x7F, size >> 7
head.append(byte)
pack = b"PACK" + struct.pack(">II", 2, 1) + bytes(head) + stream
with open(out, "wb") as handle:
    handle.write(pack + hashlib.sha1(pack).digest())
'''


def padded_run(box: Box) -> tuple[int, str, str]:
    """alice's run awaiting review (`+v2`), whose checkout now keeps the VERSION blob
    only in a pack that pads it with 60 MB of empty deflate blocks: (run id, checkout,
    head commit)."""
    box.c.write(f"{TOOLS}/pad_pack.py", PAD_PACK)
    run_id = box.submit(plan("printf 'v2\\n' > VERSION"))
    run = box.wait_state(run_id, "AWAITING_REVIEW", "FAILED")
    assert run["state"] == "AWAITING_REVIEW", run["reason"]
    path, head = run["workspace"]["path"], run["workspace"]["head_commit"]
    box.sh(f"""cd {path} && blob=$(git rev-parse {head}:VERSION) &&
python3 {TOOLS}/pad_pack.py "$blob" 60000000 .git/padded.pack &&
git index-pack --stdin < .git/padded.pack > /dev/null && rm .git/padded.pack &&
rm -f .git/objects/$(echo $blob | cut -c1-2)/$(echo $blob | cut -c3-)""", user="alice")
    return run_id, path, head


def test_a_padded_pack_of_the_reviewed_objects_does_not_bloat_the_repository(
        gate: Box) -> None:
    """FOUND (low-medium: disk of the repository's filesystem, up to 4 GiB of
    dave's per approval of a one-line diff, persistent until his next repack: the
    seventh round's finding, through the quarantine). check_holds_only compares
    object NAMES only: the pack may hold nothing but the change's objects and still
    be any size. Reviewed: `+v2`. While the run awaits review alice rewrites her
    checkout's copy of the VERSION blob as a pack of her own whose zlib stream is
    60 MB of empty stored deflate blocks before the real data (still valid zlib for
    the same 3 bytes), and deletes the loose copy. Landing's pack-objects (as her)
    reuses packed data verbatim; dave's index-pack --strict inflates it right and
    writes the bytes it read; the names check out, the pack moves into
    objects/pack with the landing.

    Fix: do not move the received pack in: once checked, have the lander's git
    write the change's objects afresh (`git pack-objects --no-reuse-object` of
    `head --not base` with the quarantine as its object directory, into the store,
    or `unpack-objects` of small packs), then drop the quarantine; or refuse a
    pack larger than the objects' inflated sizes plus a margin
    (`cat-file --batch-check='%(objectsize) %(objectsize:disk)'`)."""
    box = gate
    run_id, path, head = padded_run(box)
    box.sh(f"""cd {path} && git config pack.window 0 &&
test "$(git cat-file blob {head}:VERSION)" = v2""", user="alice")
    before, main_before = objects_size(box), main_of(box)
    box.approve(run_id)
    wait_for(lambda: box.run(run_id)["state"] in ("SUCCEEDED", "FAILED")
             or box.run(run_id)["reason"], 120, "the landing")
    run = box.run(run_id)
    grew = objects_size(box) - before
    assert main_of(box) == main_before or landed_version(box) == "v2", run["reason"]
    packs = box.sh(f"ls -l {REPO}/.git/objects/pack", user="dave").stdout
    assert grew < 5_000_000, (
        f"dave's object store grew by {grew} bytes for a reviewed `+v2` "
        f"({run['state']}: {run['reason']}):\n{packs}")


def test_a_landing_cancelled_mid_transfer_leaves_no_quarantine(gate: Box) -> None:
    """HELD. The quarantine's one window alice controls: her pack-objects. She
    prepares a 60 MB padded pack (as above), stops her pack-objects the moment the
    landing starts it (SIGSTOP: it runs as her), so dave's index-pack holds a
    half-written pack in objects/tmp_minipipe-incoming-*, then cancels the run.
    The runner's cancel flag ends the transfer (GitError "stopped"), the packer
    and indexer are killed and the directory goes, as dave; the run returns to
    review and nothing of the pack stays in dave's store."""
    box = gate
    run_id, _path, _head = padded_run(box)
    box.sh(f"""setsid timeout 120 sh -c 'while :; do p=$(pgrep -u alice -f "pack-objects -[-]revs");
[ -n "$p" ] && kill -STOP $p && echo $p > {DROP}/stopped && exit; done' \
>/dev/null 2>&1 < /dev/null &""", user="alice")
    before, main_before = objects_size(box), main_of(box)
    box.approve(run_id)
    wait_for(lambda: box.sh(f"cat {DROP}/stopped", check=False).stdout.strip(), 60,
             "alice's pack-objects to be stopped")
    incoming = box.sh(f"ls -d {REPO}/.git/objects/tmp_minipipe-incoming-*",
                      check=False).stdout.split()
    assert incoming, "no quarantine while the transfer waits"
    box.minipipe(f"cancel {run_id}")
    run = box.wait_state(run_id, "AWAITING_REVIEW", "CANCELLED", "FAILED", "SUCCEEDED",
                         timeout=120)
    left = box.sh(f"ls -a {REPO}/.git/objects", user="dave").stdout
    assert "tmp_minipipe-incoming" not in left, left
    assert main_of(box) == main_before, run["reason"]
    assert objects_size(box) - before < 1_000_000, run["reason"]
