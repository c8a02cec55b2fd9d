"""The review gate, attacked a seventh time: 0b29914 (gate.py's program_part and
listing_part, review.RunWorkspace.vetting, workspace.Git.land / check_reviewed).

Same cast as test_review_attacks: dave (minipipe-admin) keeps /srv/git/app, with main
checked out, and reviews; alice (group minipipe) submits and may only read it; carol
is a second operator. Each test asserts the SECURE outcome (or, for a refusal anyone
can cause, the USEFUL one). The ones marked FOUND failed against 0b29914; two pass
since landing requires the change to meet the target where its reviewed diff starts
and the gate skips links in work trees; the third is a strict xfail until landing
quarantines the objects it receives.
"""

# ruff: noqa: F811  (the gate fixture, imported)
from __future__ import annotations

import pytest

from tests.integration.conftest import wait_for

from .conftest import Box
from .test_review_attacks import (  # noqa: F401  (gate is a fixture)
    TOOLS,
    gate,
    landed_version,
    plan,
    review_then_approve,
)
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


@pytest.mark.xfail(strict=True, reason="KNOWN, open (issue 12): index-pack writes into the "
                   "repository before check_reviewed refuses; needs a quarantine object "
                   "directory moved in only after the checks (as receive-pack does)")
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

    Fix: index-pack into a quarantine (a temporary objects directory in the
    repository, removed on any failure, as receive-pack does) and move it in only
    once check_reviewed passed; cap the pack near the size the reviewed change
    packed to when the steps ended; drop `hint:` lines from reasons (or set
    advice.graftFileDeprecated=false)."""
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
