"""The review gate, attacked a seventh time: 0b29914 (gate.py's program_part and
listing_part, review.RunWorkspace.vetting, workspace.Git.land / check_reviewed).

Same cast as test_review_attacks: dave (minipipe-admin) keeps /srv/git/app, with main
checked out, and reviews; alice (group minipipe) submits and may only read it; carol
is a second operator. Each test asserts the SECURE outcome (or, for a refusal anyone
can cause, the USEFUL one). The ones marked FOUND failed against 0b29914; they pass
since landing requires the change to meet the target where its reviewed diff starts,
the gate skips links in work trees, and landing keeps the objects it receives in a
quarantine until they are known to be the reviewed change's (quarantine.py).
"""

# ruff: noqa: F811  (the gate fixture, imported)
from __future__ import annotations

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
from .test_review_attacks6 import dave_filters, landed, ran_as
from .test_review_system import REPO, main_of

# ---------------------------------------------------------------- what lands


def test_a_commit_of_main_merged_into_the_run_cannot_revert_it_unseen(gate: Box) -> None:
    """FOUND (high: content lands that no diff showed; a later fix on main is
    silently undone). The reviewed diff is merge-base(base, head)..head, but what
    lands is current-target..new. alice's run starts from an older commit of main
    (`ref` = v0's id, `target = "main"`: on the target, so allowed; the same happens
    with `ref = "main"` whenever main moves while a run works, e.g. another run
    landed). Her step fast-forwards its branch to today's main (v1, readable through
    the alternates), then puts VERSION back to v0 and adds NOTES in one commit. The
    diff from the recorded merge-base (v0) shows only `+notes`: VERSION is v0 on both
    sides. check_reviewed agrees (same merge-base, count, digests), the reviewed
    base is on main, main is an ancestor of the head: main fast-forwards, and dave's
    v1 is reverted. (The commit list does name dave's own `v1`, among alice's.)

    Fix: at landing, require merge-base(current target, head) == the recorded
    merge-base (or, equivalently, that no commit of merge_base..head is reachable
    from the target): else the change that lands is not the diff that was read."""
    box = gate
    v0 = box.sh(f"git -C {REPO} rev-parse main~1", user="dave").stdout.strip()
    text = plan("""
main=$(git -c safe.directory='*' -C /srv/git/app rev-parse main)
git merge -q --ff-only "$main"
printf 'v0\\n' > VERSION
printf 'notes\\n' > NOTES
git add -A && git commit -qm 'add notes'
""").replace('ref = "main"', f'ref = "{v0}"\ntarget = "main"')
    shown, run = review_then_approve(box, box.submit(text))
    assert "+notes" in shown and "VERSION" not in shown, shown
    landed = landed_version(box)
    assert landed == "v1", (
        f"main's VERSION went from v1 to {landed!r} ({run['state']}: {run['reason']}); "
        f"the reviewer was shown\n{shown}")


# ---------------------------------------------------------------- refusals anyone causes

def test_a_landed_link_to_tmp_does_not_refuse_everyone_s_runs(gate: Box) -> None:
    """FOUND (low-medium: every reviewed run on the repository, anyone's, is refused
    after one approved, harmless-looking change). alice's change adds a symlink
    `scratch -> /tmp` (a common convenience link; the diff shows `new file mode
    120000`, `+/tmp`). dave approves; it lands. From then on gate.directories()
    (every directory of the checked-out work tree) follows it: os.walk lists a link
    to a directory among the directories, and mine() stat()s through it to /tmp,
    which every user may write: "may write /srv/git/app/scratch". carol's submit is
    refused, and so is the vet before any pending landing. git never writes or reads
    attributes through a link in a work tree (it replaces the link), so nothing
    behind it is part of the repository.

    Fix: in directories(), lstat each entry and skip links (the work tree's own
    directories are what git writes into); keep exposed() for the work tree's root."""
    box = gate
    _shown, run = review_then_approve(box, box.submit(plan("ln -s /tmp scratch")))
    assert run["state"] == "SUCCEEDED", run["reason"]
    assert box.sh(f"readlink {REPO}/scratch", user="dave").stdout.strip() == "/tmp"
    result = box.minipipe("submit -", user="carol", check=False,
                          input=plan("printf 'v2\\n' > VERSION"))
    assert result.returncode == 0, f"carol's run was refused: {result.stderr}"


def objects_size(box: Box) -> int:
    return int(box.sh(f"du -sb {REPO}/.git/objects", user="dave").stdout.split()[0])


def test_a_refused_landing_leaves_no_unreviewed_bulk_in_the_repository(gate: Box) -> None:
    """FOUND (low-medium: disk of the repository's filesystem, up to 4 GiB per
    approval of a one-line diff, again at each re-approval; landings and dave's own
    work then fail). Reviewed: `+v2`. While the run awaits review, alice rewrites
    the loose file of the head's tree (her checkout, hers) as another tree that also
    names 30 MB of random bytes. pack-objects reads it unchecked and packs that tree
    and the blob; dave's `index-pack --strict` writes the pack, then dies (the real
    tree is missing) and leaves it as objects/pack/tmp_pack_* (30 MB, dave's, until
    a gc long after). The run awaits review again, and its reason is git's grafts
    deprecation hints ("hint: Support for <GIT_DIR>/info/grafts is deprecated"), not
    the cause: transfer() keeps the first three lines not starting with "warning:".

    Fixed: index-pack writes into a quarantine (quarantine.py: a temporary objects
    directory in the repository, removed on any failure, as receive-pack does),
    moved in only once check_reviewed passed and the pack holds nothing else;
    git's advice.graftFileDeprecated is off, and `hint:` lines never make a
    reason."""
    box = gate
    run_id = box.submit(plan("printf 'v2\\n' > VERSION"))
    run = box.wait_state(run_id, "AWAITING_REVIEW", "FAILED")
    assert run["state"] == "AWAITING_REVIEW", run["reason"]
    path, head = run["workspace"]["path"], run["workspace"]["head_commit"]
    box.sh(f"""cd {path} && tree=$(git rev-parse {head}^{{tree}}) &&
head -c 30000000 /dev/urandom > junk.bin && blob=$(git hash-object -w junk.bin) &&
rm junk.bin && forged=$( (git ls-tree {head}; printf '100644 blob %s\\tjunk.bin\\n' \\
"$blob") | git mktree) && git cat-file tree "$forged" > .git/forged &&
python3 {TOOLS}/forge_raw.py tree .git/forged \\
  .git/objects/$(echo $tree | cut -c1-2)/$(echo $tree | cut -c3-)""", user="alice")
    before, main_before = objects_size(box), main_of(box)
    box.approve(run_id)
    wait_for(lambda: box.run(run_id)["state"] in ("SUCCEEDED", "FAILED", "AWAITING_REVIEW")
             and box.run(run_id)["reason"], 120, "the landing")
    run = box.run(run_id)
    grew = objects_size(box) - before
    assert main_of(box) == main_before or landed_version(box) == "v2", run["reason"]
    left = box.sh(f"ls -l {REPO}/.git/objects/pack", user="dave").stdout
    assert grew < 5_000_000, (
        f"dave's object store grew by {grew} bytes for a reviewed `+v2` "
        f"({run['state']}: {run['reason']}):\n{left}")
    assert "hint:" not in run["reason"] and "grafts" not in run["reason"], run["reason"]
    assert "tmp_minipipe-incoming" not in box.sh(f"ls -a {REPO}/.git/objects",
                                                 user="dave").stdout


def test_a_landing_whose_pack_carries_more_than_the_change_is_refused(gate: Box) -> None:
    """A pack that passes every check but also carries junk: dave's branch `side`
    holds docs/a.txt (its tree T, loose in his store); alice's run adds the same
    file, so its head's tree names T, which her checkout reads through the
    alternates. She then writes a loose object of her own under T's name (looked up
    before the alternates) holding another tree: T's entries plus 30 MB of random
    bytes. pack-objects packs that tree and the blob; index-pack finds everything
    the change needs (the real T is dave's already) and check_reviewed's digests
    match, read from the real objects. Without a check of the pack's contents, the
    30 MB would move into dave's store with the landing."""
    box = gate
    box.sh(f"""cd {REPO} && git checkout -q -b side && mkdir -p docs &&
printf 'same\\n' > docs/a.txt && git add docs &&
git -c user.name=dave -c user.email=dave@example.org commit -qm side &&
git checkout -q main""", user="dave")
    run_id = box.submit(plan("mkdir -p docs && printf 'same\n' > docs/a.txt"))
    run = box.wait_state(run_id, "AWAITING_REVIEW", "FAILED")
    assert run["state"] == "AWAITING_REVIEW", run["reason"]
    path, head = run["workspace"]["path"], run["workspace"]["head_commit"]
    loose = box.sh(f"cd {REPO} && t=$(git rev-parse side:docs) && "
                   "echo $t && ls .git/objects/$(echo $t | cut -c1-2)/$(echo $t | cut -c3-)",
                   user="dave").stdout.split()
    assert len(loose) == 2, f"T is not loose in dave's store: {loose}"
    tree = loose[0]
    assert box.sh(f"git -C {path} rev-parse {head}:docs", user="alice").stdout.strip() == tree
    box.sh(f"""cd {path} && head -c 30000000 /dev/urandom > junk.bin &&
blob=$(git hash-object -w junk.bin) && rm junk.bin &&
forged=$( (git ls-tree {tree}; printf '100644 blob %s\\tjunk.bin\\n' "$blob") |
  git mktree) &&
git cat-file tree "$forged" > .git/forged &&
mkdir -p .git/objects/{tree[:2]} && touch .git/objects/{tree[:2]}/{tree[2:]} &&
python3 {TOOLS}/forge_raw.py tree .git/forged .git/objects/{tree[:2]}/{tree[2:]} &&
git cat-file -p {tree} 2>&1 | grep -q 'hash mismatch'""", user="alice")  # hers, read first
    before, main_before = objects_size(box), main_of(box)
    box.approve(run_id)
    wait_for(lambda: box.run(run_id)["state"] in ("SUCCEEDED", "FAILED")
             or box.run(run_id)["reason"], 120, "the landing")
    run = box.run(run_id)
    grew = objects_size(box) - before
    assert run["state"] == "AWAITING_REVIEW", (run["state"], run["reason"])
    assert "not only the reviewed change's" in run["reason"], run["reason"]
    assert main_of(box) == main_before
    assert grew < 5_000_000, f"dave's object store grew by {grew} bytes: {run['reason']}"


def test_a_filter_argument_the_landing_itself_adds_is_vetted(gate: Box) -> None:
    """Round 7's lead, tried: dave's team tool `run-it FILE` runs FILE (a program
    of his, not one the gate knows for an interpreter), and his repository smudges
    *.dat with `run-it strip.sh`, a script nobody has committed yet. When the gate
    and the vet before landing look, there is no strip.sh in the work tree; alice's
    change adds it (`id -un >> ran`) with x.dat after it. Landing's `merge
    --ff-only` writes strip.sh, then smudges x.dat through it, as dave. The vet
    now also refuses a bare argument naming what the change adds at the top."""
    box = gate
    with dave_filters(box, "strip", "run-it strip.sh",
                      tool=("/usr/local/bin/run-it", '#!/bin/sh\nexec sh "$1"\n')):
        result = box.minipipe("submit -", check=False, input=plan(
            f"printf 'id -un >> {DROP}/ran\\ncat\\n' > strip.sh && echo two >> x.dat"))
        assert result.returncode == 0, result.stderr
        run = landed(box, int(result.stdout))
        assert "dave" not in ran_as(box) and "root" not in ran_as(box), (
            f"alice's strip.sh ran as {ran_as(box)} ({run['state']}: {run['reason']})")
        assert run["state"] == "AWAITING_REVIEW", (run["state"], run["reason"])
        assert "'strip.sh'" in run["reason"] and "cannot" in run["reason"], run["reason"]
