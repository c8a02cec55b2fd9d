"""The review gate, attacked (the design of f9c2f9e: own checkouts, landing as the approver).

Each test is one attack, made as the actor who would try it: a step of alice's (code
her plan runs as her, e.g. an AI agent), alice at her shell, a repository's owner,
a reviewer who is shown something else than what lands. Each asserts the secure
outcome: the attack is refused, or it changes nothing. The ones marked FOUND
succeeded against that design, and are refused since (the lander re-checks history
and diff, the gate looks at owned files, includes, hooks and alternates, landing
runs without hooks in the recorded git directory, readers allow no transport, the
transfer drains stderr and keeps a deadline, --commit is required).

dave (minipipe-admin) keeps /srv/git/app (make_repo); alice (group minipipe) may only
read it; bob is outside group minipipe.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator

import pytest

from tests.integration.conftest import wait_for

from .conftest import Box
from .test_review_system import REPO, main_of, make_repo

DROP = "/srv/drop"  # 1777: where an attack leaves its proof (runs have a private /tmp)
TOOLS = "/srv/redteam"

HEADER = """
name = "attack"
review = true
[workspace]
repo = "{repo}"
ref = "main"
{extra}[defaults.env]
GIT_AUTHOR_NAME = "alice"
GIT_AUTHOR_EMAIL = "alice@example.org"
GIT_COMMITTER_NAME = "alice"
GIT_COMMITTER_EMAIL = "alice@example.org"
"""


def plan(script: str, *, repo: str = REPO, extra: str = "") -> str:
    return (HEADER.format(repo=repo, extra=extra)
            + "[[steps]]\nid = \"attack\"\nrun = '''\nset -e\n" + script + "\n'''\n")


# Rewrites the tree a commit-graph file gives for one commit (and the file's checksum):
# git then reads that tree for the commit in `diff`, `log`, `pack-objects`, while
# `cat-file`/`rev-parse` still read the real commit object.
FORGE_GRAPH = r'''
import hashlib, os, struct, sys
commit, tree = bytes.fromhex(sys.argv[1]), bytes.fromhex(sys.argv[2])
path = ".git/objects/info/commit-graph"
data = bytearray(open(path, "rb").read())
chunks = {}
for k in range(data[6] + 1):
    cid, off = struct.unpack(">4sQ", data[8 + 12 * k:20 + 12 * k])
    chunks[cid] = off
fanout, lookup, cdat = chunks[b"OIDF"], chunks[b"OIDL"], chunks[b"CDAT"]
count = struct.unpack(">I", data[fanout + 255 * 4:fanout + 256 * 4])[0]
oids = [bytes(data[lookup + 20 * i:lookup + 20 * i + 20]) for i in range(count)]
i = oids.index(commit)
data[cdat + 36 * i:cdat + 36 * i + 20] = tree
data[-20:] = hashlib.sha1(bytes(data[:-20])).digest()
os.chmod(path, 0o644)
open(path, "wb").write(bytes(data))
'''

# Overwrites a loose object's file with other content under the same name: git reads it
# without checking the hash (diff, log), index-pack would not accept it.
FORGE_LOOSE = r'''
import os, sys, zlib
oid, content = sys.argv[1], sys.argv[2].encode() + b"\n"
path = f".git/objects/{oid[:2]}/{oid[2:]}"
os.chmod(path, 0o644)
open(path, "wb").write(zlib.compress(b"blob %d\0" % len(content) + content))
'''

# Writes a loose object file of TYPE holding FILE's bytes at PATH (any name).
FORGE_RAW = r'''
import os, sys, zlib
kind, content, path = sys.argv[1].encode(), open(sys.argv[2], "rb").read(), sys.argv[3]
os.chmod(path, 0o644)
open(path, "wb").write(zlib.compress(kind + b" %d\0" % len(content) + content))
'''


@pytest.fixture
def gate(service: Box) -> Iterator[Box]:
    box = service
    make_repo(box)
    box.sh(f"rm -rf {DROP} && mkdir -p {DROP} && chmod 1777 {DROP}")
    box.sh(f"mkdir -p {TOOLS}")
    box.c.write(f"{TOOLS}/forge_graph.py", FORGE_GRAPH)
    box.c.write(f"{TOOLS}/forge_loose.py", FORGE_LOOSE)
    box.c.write(f"{TOOLS}/forge_raw.py", FORGE_RAW)
    yield box
    for run in json.loads(box.minipipe("ls --all --json", user=None).stdout):
        if run["state"] == "AWAITING_REVIEW":
            box.minipipe(f"reject {run['id']} -m cleanup", user=None, check=False)


def attack_ran(run: dict) -> None:
    """The attack's own step did its part (else a test would pass for nothing)."""
    steps = {step["step_id"]: step for step in run["steps"]}
    assert steps["attack"]["state"] == "SUCCEEDED", (run["reason"], steps["attack"])


def review_then_approve(box: Box, run_id: int, approver: str = "dave",
                        extra: str = "") -> tuple[str, dict]:
    """The diff the reviewer is shown, then their approval's outcome (the run)."""
    run = box.wait_state(run_id, "AWAITING_REVIEW", "FAILED", "SUCCEEDED")
    attack_ran(run)
    if run["state"] != "AWAITING_REVIEW":
        return "", run
    shown = box.minipipe(f"diff {run_id}", user=approver).stdout
    box.approve(run_id, user=approver if approver != "root" else None, extra=extra)
    wait_for(lambda: box.run(run_id)["state"] in ("SUCCEEDED", "FAILED")
             or box.run(run_id)["reason"], 90, "the landing")
    return shown, box.run(run_id)


def refused_by_the_gate(result: subprocess.CompletedProcess[str], what: str = "") -> None:
    """alice's submit was refused by the enforced gate: she may write a part of the
    repository, or may not look where git reads for it (the gate fails closed)."""
    assert result.returncode != 0 and ("may write" in result.stderr
                                       or "cannot tell" in result.stderr), (
        f"{what + ': ' if what else ''}the enforced gate took the run "
        f"({result.stdout.strip()})")


def submit_past_the_gate(box: Box, script: str = "printf 'v2\\n' > VERSION", *,
                         repo: str = REPO) -> subprocess.CompletedProcess[str]:
    """alice submits a run that needs review; one the gate took is cancelled at once
    (never left to run): the caller asserts on the refusal."""
    result = box.minipipe("submit -", input=plan(script, repo=repo), check=False)
    if result.returncode == 0:
        box.minipipe(f"cancel {int(result.stdout)}", check=False)
    return result


def landed_version(box: Box, repo: str = REPO) -> str:
    return box.sh(f"git -C {repo} show main:VERSION", user="dave").stdout.strip()


# ---------------------------------------------------------------- what the reviewer sees


def test_a_forged_commit_graph_cannot_make_the_reviewed_diff_lie(gate: Box) -> None:
    """REFUSED since 58dbf60 (the lander re-diffs the hashed objects). A step
    commits `v2 EVIL`, then an empty commit on top, and
    rewrites its checkout's commit-graph so that the top commit's tree reads as one
    with `v2 benign`. The recorded diff, stats and `minipipe diff` show `+v2 benign`;
    pack-objects packs both trees, index-pack accepts the real commit, and `v2 EVIL`
    lands. No action is needed after the steps end."""
    box = gate
    before = main_of(box)
    run_id = box.submit(plan(f"""
base=$(git rev-parse HEAD)
printf 'v2 benign\\n' > VERSION && git add VERSION && benign=$(git write-tree)
git reset -q --hard "$base"
printf 'v2 EVIL\\n' > VERSION && git commit -qam "bump to v2"
git commit -q --allow-empty -m "changelog"
git commit-graph write --reachable
python3 {TOOLS}/forge_graph.py "$(git rev-parse HEAD)" "$benign"
"""))
    shown, _run = review_then_approve(box, run_id)
    if main_of(box) != before:
        landed = landed_version(box)
        assert f"+{landed}" in shown, (
            f"the reviewer was shown\n{shown}\nbut {landed!r} landed")


def test_an_object_swapped_after_review_cannot_land_unseen(gate: Box) -> None:
    """REFUSED since 58dbf60 (the lander re-diffs the hashed objects). A step
    commits `v2 EVIL` and overwrites that blob's loose
    object file with `v2 benign` (same name, other content): the recorded diff shows
    `+v2 benign`. While the run awaits review alice, at her shell, puts the real
    object back in her checkout; dave approves what he saw; pack-objects (as alice,
    in her checkout) carries `v2 EVIL`, which hashes right, and it lands."""
    box = gate
    before = main_of(box)
    run_id = box.submit(plan(f"""
printf 'v2 EVIL\\n' > VERSION && git commit -qam "bump to v2"
python3 {TOOLS}/forge_loose.py "$(git rev-parse HEAD:VERSION)" "v2 benign"
"""))
    run = box.wait_state(run_id, "AWAITING_REVIEW", "FAILED")
    attack_ran(run)
    if run["state"] == "AWAITING_REVIEW":
        path = run["workspace"]["path"]
        box.sh(f"cd {path} && oid=$(git rev-parse {run['workspace']['head_commit']}:VERSION)"
               " && rm -f .git/objects/$(echo $oid | cut -c1-2)/$(echo $oid | cut -c3-) && "
               "printf 'v2 EVIL\\n' | git hash-object -w --stdin", user="alice")
    shown, run = review_then_approve(box, run_id)
    if main_of(box) != before:
        landed = landed_version(box)
        assert f"+{landed}" in shown, (
            f"the reviewer was shown\n{shown}\nbut {landed!r} landed")



def test_a_grafted_merge_base_cannot_hide_a_commit_from_review(gate: Box) -> None:
    """FOUND (high), now refused. A step commits `v2 EVIL` (P), then `add notes` (H), and
    writes its checkout's info/grafts so that the base's parent is P: `merge-base`
    answers P (GIT_NO_REPLACE_OBJECTS does not switch grafts off), and the recorded
    diff and commits are P..H, `+notes` only. alice deletes info/grafts while the run
    awaits review; the landing packs P too, the lander's check diffs the recorded
    merge-base P against H (equal), and main fast-forwards to H, `v2 EVIL` included."""
    box = gate
    before = main_of(box)
    run_id = box.submit(plan("""
base=$(git rev-parse HEAD)
printf 'v2 EVIL\\n' > VERSION && git commit -qam "bump to v2"
printf 'notes\\n' > NOTES && git add NOTES && git commit -qm "add notes"
echo "$base $(git rev-parse HEAD~1)" > .git/info/grafts
"""))
    run = box.wait_state(run_id, "AWAITING_REVIEW", "FAILED")
    attack_ran(run)
    if run["state"] == "AWAITING_REVIEW":
        box.sh(f"rm -f {run['workspace']['path']}/.git/info/grafts", user="alice")
    shown, run = review_then_approve(box, run_id)
    if main_of(box) != before:
        landed = landed_version(box)
        assert landed == "v1" or f"+{landed}" in shown, (
            f"the reviewer was shown\n{shown}\nbut VERSION {landed!r} landed")


def test_a_commit_message_swapped_after_review_cannot_land_unseen(gate: Box) -> None:
    """REFUSED today (summarise fails: parse_object checks a commit object's hash).
    The commit's real message is `[skip ci] ...`; a step
    rewrites its loose object file with the same tree and parent but the subject
    `bump to v2`, which the review lists. alice puts the real object back while the
    run awaits review; the lander's check compares diffs only, and the commit lands
    with a message nobody reviewed."""
    box = gate
    run_id = box.submit(plan(f"""
printf 'v2\\n' > VERSION && git commit -qam "[skip ci] Reviewed-by: security-team"
h=$(git rev-parse HEAD); f=.git/objects/$(echo $h | cut -c1-2)/$(echo $h | cut -c3-)
cp $f .git/orig-commit && chmod u+w $f
git cat-file commit HEAD | sed 's/^\\[skip ci\\].*/bump to v2/' > .git/fake
python3 {TOOLS}/forge_raw.py commit .git/fake "$f"
test "$(git log -1 --format=%s)" = "bump to v2"
"""))
    run = box.wait_state(run_id, "AWAITING_REVIEW", "FAILED")
    attack_ran(run)
    if run["state"] != "AWAITING_REVIEW":
        return  # git's parse_object checks a commit's hash: the summary refused it
    if run["state"] == "AWAITING_REVIEW":
        path, head = run["workspace"]["path"], run["workspace"]["head_commit"]
        box.sh(f"cd {path}/.git/objects && cp ../orig-commit {head[:2]}/{head[2:]}",
               user="alice")
    subjects = [c["subject"] for c in run["workspace"]["changes"]["commits"]]
    _shown, run = review_then_approve(box, run_id)
    if run["state"] == "SUCCEEDED":
        landed = box.sh(f"git -C {REPO} log -1 --format=%s {run['workspace']['head_commit']}",
                        user="dave").stdout.strip()
        assert landed in subjects, f"the review listed {subjects}, {landed!r} landed"

HIDERS = {
    # every file larger than 1 byte is "binary" to diff, numstat and shortstat
    "core.bigFileThreshold": "git config core.bigFileThreshold 1",
    # a .gitattributes the snapshot never commits (ignored), which diff still reads
    "ignored .gitattributes": "echo .gitattributes >> .git/info/exclude && "
                              "echo '* -diff' > .gitattributes",
}


@pytest.mark.parametrize("hider", sorted(HIDERS))
def test_checkout_config_cannot_hide_a_text_change(gate: Box, hider: str) -> None:
    """A step configures its own checkout so that the recorded diff would show a text
    change as `Binary files differ`. Every diff is read as text (--text), so the
    reviewer sees the line, whatever the checkout's attributes or config say."""
    box = gate
    run_id = box.submit(plan(HIDERS[hider] + "\nprintf 'v2 hidden\\n' > VERSION"))
    run = box.wait_state(run_id, "AWAITING_REVIEW", "FAILED")
    attack_ran(run)
    assert run["state"] == "AWAITING_REVIEW", run["reason"]
    shown, run = review_then_approve(box, run_id)
    assert "+v2 hidden" in shown, (hider, shown)


def test_checkout_config_cannot_hide_a_submodule_change(gate: Box) -> None:
    """(Refused since DIFF_OPTIONS pins --ignore-submodules=none.)
    `diff.ignoreSubmodules = all` in the checkout: a gitlink
    the step adds (or re-points) is in no diff, stat or file list; the review shows
    "0 files" and the gitlink lands."""
    box = gate
    run_id = box.submit(plan(
        "git update-index --add --cacheinfo 160000,"
        "1111111111111111111111111111111111111111,vendor/lib\n"
        "git commit -qm 'vendor'\n"
        "mkdir -p vendor/lib  # an uninitialised submodule: the snapshot keeps the gitlink\n"
        "git config diff.ignoreSubmodules all"))
    run = box.wait_state(run_id, "AWAITING_REVIEW", "FAILED")
    attack_ran(run)
    if run["state"] != "AWAITING_REVIEW":
        return
    changes = run["workspace"]["changes"]
    assert [f["path"] for f in changes["files"]] == ["vendor/lib"], changes
    assert "vendor/lib" in box.minipipe(f"diff {run_id}", user="dave").stdout


def test_approve_without_commit_cannot_take_a_change_swapped_by_cancel_and_retry(
        gate: Box) -> None:
    """dave reads run N's diff; alice cancels and retries N, whose new attempt
    records another change. An approval must name the commit reviewed (--commit is
    required), so dave's approval of what he saw is refused, and the new change
    never lands unseen."""
    box = gate
    run_id = box.submit(plan("if [ -e $HOME/second ]; then printf 'v2 EVIL\\n' > VERSION;"
                             " else printf 'v2 benign\\n' > VERSION; fi"))
    assert box.wait_state(run_id, "AWAITING_REVIEW", "FAILED")["state"] == "AWAITING_REVIEW"
    shown = box.minipipe(f"diff {run_id}", user="dave").stdout
    seen = box.run(run_id)["workspace"]["head_commit"]
    assert "+v2 benign" in shown
    box.sh("touch /home/alice/second", user="alice")
    try:
        box.minipipe(f"cancel {run_id}")
        box.minipipe(f"retry {run_id}")
        box.wait_state(run_id, "AWAITING_REVIEW", "FAILED")
        bare = box.minipipe(f"approve {run_id}", user="dave", check=False)
        assert bare.returncode == 2 and "--commit" in bare.stderr
        named = box.minipipe(f"approve {run_id} --commit {seen}", user="dave", check=False)
        assert named.returncode == 2 and "not the" in named.stderr
        assert box.run(run_id)["state"] == "AWAITING_REVIEW"
    finally:
        box.sh("rm -f /home/alice/second")


# ---------------------------------------------------------------- the gate itself


def test_a_read_only_repository_alice_owns_is_not_an_enforced_gate(gate: Box) -> None:
    """FOUND (medium), now refused. alice's own repository, chmod -R a-w: `test -w` and
    `find -writable` find nothing, so the enforced gate takes it; her step (its
    owner) chmods it back and makes a branch there, no review needed."""
    box = gate
    repo = "/home/alice/ro"
    box.sh(f"rm -rf {repo}; git init -q --initial-branch=main {repo} && cd {repo} && "
           "echo v1 > VERSION && git add . && git -c user.name=a -c user.email=a@x "
           f"commit -qm v1 && chmod -R a-w {repo}", user="alice")
    try:
        result = box.minipipe("submit -", input=plan(
            'chmod -R u+w "$MINIPIPE_REPO" && git -C "$MINIPIPE_REPO" branch unreviewed',
            repo=repo), check=False)
        if result.returncode == 0:
            box.wait_state(int(result.stdout), "AWAITING_REVIEW", "FAILED", "SUCCEEDED")
            branches = box.sh(f"git -C {repo} branch --list", user="alice").stdout
            assert "unreviewed" not in branches, "a step went around the enforced gate"
        else:
            assert "may write" in result.stderr, result.stderr
    finally:
        box.sh(f"chmod -R u+w {repo}; rm -rf {repo}", check=False)


def test_a_hooks_directory_alice_may_write_is_not_an_enforced_gate(gate: Box) -> None:
    """FOUND (high where it applies), now refused. dave's repository takes its hooks from a
    team directory (core.hooksPath) alice's group may write; the gate searches only
    the git directory. Her step plants `reference-transaction`; the landing's
    update-ref / merge runs it as dave."""
    box = gate
    box.sh("getent group devs >/dev/null || groupadd devs; usermod -aG devs alice")
    box.sh("rm -rf /srv/hooks && install -d -g devs -m 2775 /srv/hooks")
    box.sh(f"git -C {REPO} config core.hooksPath /srv/hooks", user="dave")
    try:
        result = box.minipipe("submit -", input=plan(
            f"printf '#!/bin/sh\\nid -un >> {DROP}/hook-ran\\n' > "
            "/srv/hooks/reference-transaction\n"
            "chmod 755 /srv/hooks/reference-transaction\nprintf 'v2\\n' > VERSION"),
            check=False)
        if result.returncode != 0:
            assert "may write" in result.stderr, result.stderr
            return
        review_then_approve(box, int(result.stdout))
        ran = box.sh(f"cat {DROP}/hook-ran", check=False).stdout.split()
        assert "dave" not in ran and "root" not in ran, f"alice's hook ran as {ran}"
    finally:
        box.sh("gpasswd -d alice devs >/dev/null; rm -rf /srv/hooks", check=False)


def test_a_symlinked_repository_path_cannot_be_repointed_after_review(gate: Box) -> None:
    """FOUND (medium), now refused. alice names her own symlink to /srv/git/app as the repo;
    after review she re-points it to dave's /srv/git/app-release (same history). The
    landing, as dave, went wherever the path then led. Since gate.py the enforced gate
    refuses the run at submit: its path goes through a directory alice may write."""
    box = gate
    release = "/srv/git/app-release"
    box.sh(f"rm -rf {release} && git clone -q {REPO} {release}", user="dave")
    box.sh("rm -rf /srv/alice-links && install -d -o alice -m 755 /srv/alice-links")
    box.sh(f"ln -s {REPO} /srv/alice-links/app", user="alice")
    before = box.sh(f"git -C {release} rev-parse main", user="dave").stdout
    try:
        submitted = box.minipipe("submit -", input=plan("printf 'v2\\n' > VERSION",
                                                        repo="/srv/alice-links/app"),
                                 check=False)
        assert submitted.returncode == 2, submitted.stdout
        assert "may write /srv/alice-links" in submitted.stderr
        assert box.sh(f"git -C {release} rev-parse main", user="dave").stdout == before
    finally:
        box.sh(f"rm -rf /srv/alice-links {release}")


def test_a_repositorys_owner_cannot_run_code_as_the_submitter(gate: Box) -> None:
    """FOUND (medium), now refused. bob (not even in group minipipe) owns a repository alice
    names in a plan. Its config makes it a partial clone whose promisor remote's
    `uploadpack` is a command, and main names a missing commit: the submit check's
    `git -c safe.directory=* rev-parse` lazily fetches it, running bob's command as
    alice."""
    box = gate
    repo = "/srv/git/bobs"
    box.sh(f"rm -rf {repo} && install -d -o bob -m 755 {repo}")
    box.sh(f"cd {repo} && git init -q --initial-branch=main . && echo a > a && git add a && "
           "git -c user.name=b -c user.email=b@x commit -qm a && "
           "git config core.repositoryformatversion 1 && "
           "git config extensions.partialClone origin && "
           f"git config remote.origin.url file://{repo} && "
           "git config remote.origin.promisor true && "
           "git config remote.origin.partialclonefilter blob:none && "
           f"git config remote.origin.uploadpack 'sh -c \"id -un >> {DROP}/owner-ran; "
           "exit 1\" #' && echo 1111111111111111111111111111111111111111 > "
           ".git/refs/heads/main", user="bob")
    box.minipipe("submit -", input=plan("true", repo=repo), check=False)
    ran = box.sh(f"cat {DROP}/owner-ran", check=False).stdout.split()
    assert ran == [], f"bob's repository ran his command as {ran}"


# ---------------------------------------------------------------- denial of service


def test_a_pack_full_of_fsck_warnings_cannot_hang_the_landing(gate: Box) -> None:
    """FOUND (medium), now refused. No review (it lands at once, as alice, in her own
    repository). Her checkout packs without deltas (pack.window 0) 1500 trees that
    each carry a `.gitignore` symlink (an fsck *info* index-pack --strict reports
    as a warning and accepts) and a 20 MB blob: index-pack's stderr, which the runner
    reads only after the pack, fills its pipe; index-pack stops reading, the runner
    blocks writing, forever. `minipipe cancel` cannot stop it (SIGTERM only sets a
    flag; the write resumes)."""
    box = gate
    repo = "/home/alice/dos"
    box.sh(f"rm -rf {repo}; git init -q --initial-branch=main {repo} && cd {repo} && "
           "echo v1 > VERSION && git add . && git -c user.name=a -c user.email=a@x "
           "commit -qm v1", user="alice")
    run_id = box.submit(plan(
        "git config pack.window 0\n"
        "for i in $(seq 1 1500); do mkdir d$i; ln -s t$i d$i/.gitignore; done\n"
        "git add -A 2>/dev/null && git commit -qm many\n"
        "head -c 20000000 /dev/urandom > big.bin && git add big.bin && git commit -qm big",
        repo=repo, extra='land = "merge"\n').replace("review = true", "review = false"))
    try:
        try:
            run = box.wait_state(run_id, "SUCCEEDED", "FAILED", timeout=180)
            attack_ran(run)
        except AssertionError:
            box.minipipe(f"cancel {run_id}", check=False)
            run = box.wait_state(run_id, "SUCCEEDED", "FAILED", "CANCELLED", timeout=60)
        assert run["state"] in ("SUCCEEDED", "FAILED", "CANCELLED")
    finally:
        if box.run(run_id)["state"] == "RUNNING":
            box.sh(f"systemctl kill -s KILL minipipe-run-{run_id}.scope", check=False)
            with contextlib.suppress(AssertionError):
                box.wait_state(run_id, "INTERRUPTED", "FAILED", "CANCELLED", timeout=60)
        box.sh(f"rm -rf {repo}")


# ---------------------------------------------------------------- attacks that fail


def test_hooks_in_the_checkout_run_only_as_alice(gate: Box) -> None:
    """A step plants hooks and fsmonitor in its own checkout: whatever git minipipe
    runs there (snapshot, update-ref, pack-objects, the landed ref) runs as alice,
    never as the lander or root. dave's landing never enters the checkout."""
    box = gate
    hook = f"#!/bin/sh\\nid -un >> {DROP}/checkout-hook\\n"
    run_id = box.submit(plan(
        f"for h in reference-transaction post-commit post-checkout pre-auto-gc; do "
        f"printf '{hook}' > .git/hooks/$h; chmod 755 .git/hooks/$h; done\n"
        f"git config core.fsmonitor 'id -un >> {DROP}/checkout-hook; true'\n"
        "git config core.pager 'id -un >> /srv/drop/checkout-hook; cat'\n"
        "printf 'v2\\n' > VERSION"))
    shown, run = review_then_approve(box, run_id)
    assert run["state"] == "SUCCEEDED", run["reason"]
    assert "+v2" in shown and landed_version(box) == "v2"
    ran = set(box.sh(f"cat {DROP}/checkout-hook", check=False).stdout.split())
    assert ran <= {"alice"}, ran


def test_a_root_owned_repository_never_lands_as_root(gate: Box) -> None:
    """root approves a run on a repository root owns: it would land as the owner,
    root, which minipipe refuses; nothing changes."""
    box = gate
    repo = "/srv/git/rootrepo"
    box.sh(f"rm -rf {repo} && git init -q --initial-branch=main {repo} && cd {repo} && "
           "echo v1 > VERSION && git add . && git -c user.name=r -c user.email=r@x "
           "commit -qm v1")
    before = box.sh(f"git -C {repo} rev-parse main").stdout
    run_id = box.submit(plan("printf 'v2\\n' > VERSION", repo=repo))
    assert box.wait_state(run_id, "AWAITING_REVIEW", "FAILED")["state"] == "AWAITING_REVIEW"
    box.approve(run_id, user=None)
    wait_for(lambda: box.run(run_id)["reason"], 60, "the refusal")
    run = box.run(run_id)
    assert run["state"] == "AWAITING_REVIEW" and "belongs to root" in run["reason"]
    assert box.sh(f"git -C {repo} rev-parse main").stdout == before
    box.sh(f"rm -rf {repo}")


def test_a_step_cannot_land_other_objects_than_the_reviewed_commit(gate: Box) -> None:
    """After review alice rewrites her checkout's branch and HEAD to another commit
    (and deletes the reviewed one's loose objects where she can): what lands is the
    recorded head commit or nothing."""
    box = gate
    run_id = box.submit(plan("printf 'v2 reviewed\\n' > VERSION"))
    run = box.wait_state(run_id, "AWAITING_REVIEW", "FAILED")
    assert run["state"] == "AWAITING_REVIEW"
    head = run["workspace"]["head_commit"]
    path = run["workspace"]["path"]
    box.sh(f"cd {path} && printf 'v2 swapped\\n' > VERSION && git -c user.name=a "
           "-c user.email=a@x commit -qam swapped", user="alice")
    _shown, run = review_then_approve(box, run_id)
    if run["state"] == "SUCCEEDED":
        assert main_of(box) == head and landed_version(box) == "v2 reviewed"
    else:
        assert main_of(box) != head


def test_the_landing_ignores_a_rigged_pack_objects_config(gate: Box) -> None:
    """A step sets pack.* and core.* in its checkout (a huge window, threads, no
    compression, a pack size limit): the pack index-pack --strict takes still holds
    exactly the reviewed commit, and nothing else runs as dave."""
    box = gate
    run_id = box.submit(plan(
        "git config pack.packSizeLimit 1m && git config pack.threads 1 && "
        "git config core.compression 0 && git config pack.window 250\n"
        "printf 'v2\\n' > VERSION"))
    _shown, run = review_then_approve(box, run_id)
    assert run["state"] == "SUCCEEDED", run["reason"]
    assert main_of(box) == run["workspace"]["head_commit"] and landed_version(box) == "v2"


def test_a_hostile_target_name_is_refused_at_submit(gate: Box) -> None:
    for target in ("--upload-pack=id", "HEAD", "main..x", "a b", "refs/heads/x~1", "x\x1b[2J"):
        text = plan("true").replace('ref = "main"', f'ref = "main"\ntarget = {json.dumps(target)}')
        result = box_submit(gate, text)
        assert result.returncode == 2 and "target" in result.stderr, (target, result.stderr)


def box_submit(box: Box, text: str):
    return box.minipipe("submit -", input=text, check=False)

