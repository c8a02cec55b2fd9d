"""A run's workspace over its life, as its runner drives it: the review gate.

    prepare()    at the start of each attempt: the user's worktree directory, a fresh
                 checkout on `minipipe/run-<id>` from the ref resolved now (recorded)
    summarise()  when the steps end, whatever the result: their change committed,
                 its stats recorded in the DB and its diff in `<log_dir>/run-<id>.diff`,
                 and whether the gate held (could the run's user write the repository?)
    land()       after an approval (or at once, without review): the reviewed commit's
                 objects carried into a quarantine in the repository (quarantine.py),
                 checked, moved in, then onto the target branch, as workspace.Git.land
                 does it, by the lander

Who lands (`lander`): the run's user when there was no review, or when they may write
the repository anyway (an advisory gate: landing as anyone else would run git, as
them, in a repository the steps could have rigged); otherwise the reviewer who
approved, as themselves, or, when root approved, the repository's owner. Never root.

The git work happens as those users (workspace.py); what this module writes as
root is the DB (through the store) and the diff file, in the log directory only
root may write, never through a link.
"""

from __future__ import annotations

import copy
import os

from .files import replace_file
from .gate import link_facts, listing_answer, listing_paths
from .plan import Plan, Step
from .quarantine import quarantine
from .store import Store, WorkspaceRow
from .workspace import (
    TRUST_FOR_READING,
    WORK_TIMEOUT_SECONDS,
    Git,
    GitError,
    LandRefused,
    ask_gate,
    branch_name,
    user_directory,
    worktree_path,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .identity import RunIdentity

LANDING_UMASK = 0o022  # new objects as readable as the repository's others


def diff_path(log_dir: str, run_id: int) -> str:
    return os.path.join(log_dir, f"run-{int(run_id)}.diff")


def write_diff(log_dir: str, run_id: int, data: bytes) -> None:
    """The recorded diff, replaced whole: readable by the group that reads state."""
    replace_file(diff_path(log_dir, run_id), data, 0o640)


def read_diff(log_dir: str, run_id: int) -> bytes | None:
    try:
        with open(diff_path(log_dir, run_id), "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _identity(path: str) -> str:
    """A directory's device and inode ("" if it cannot be looked at)."""
    try:
        info = os.stat(path)
    except OSError:
        return ""
    return f"{info.st_dev}:{info.st_ino}"


def remove_worktree(db_path: str, run_id: int, repo: str, path: str, branch: str | None,
                    identity: RunIdentity | None) -> int:
    """The daemon's housekeeping task (forked): a run's worktree (and branch, unless
    None) removed as the run's user, then recorded. Returns an exit status."""
    Git(identity).remove(repo, path, branch)
    with Store.open(db_path, create=False) as store:
        store.workspace_removed(run_id)
    return 0


def resolved_as(lander: Git, paths: list[str]) -> dict[str, dict[str, Any]]:
    """gate.link_facts for `paths`, asked as the lander (in a child that became
    them: they may look in their own 0700 home, where the submitter may not);
    LandRefused without an answer."""
    import json

    from .identity import answer_as

    identity = lander.identity
    said = answer_as(identity, list(identity.groups) if identity is not None else None,
                     lambda: json.dumps(link_facts(paths)).encode(), WORK_TIMEOUT_SECONDS,
                     64 << 20)
    try:
        return dict(json.loads(said or b""))
    except ValueError:
        raise LandRefused(f"{lander.user} could not look at the files their git reads "
                          "to land; nothing was landed") from None


class RunWorkspace:
    def __init__(self, store: Store, run_id: int, plan: Plan, identity: RunIdentity | None,
                 worktree_dir: str, log_dir: str, *,
                 trusted_filters: frozenset[str] = frozenset()) -> None:
        assert plan.workspace is not None
        self.store, self.run_id, self.plan = store, run_id, plan
        self.spec = plan.workspace
        self.worktree_dir, self.log_dir = worktree_dir, log_dir
        self.trusted_filters = trusted_filters  # config trusted_filter_programs
        self.git = Git(identity)
        self.identity = identity
        uid = identity.uid if identity is not None else os.getuid()
        self.path = worktree_path(worktree_dir, uid, run_id)
        self.branch = branch_name(run_id)
        self.base: str | None = None

    def prepare(self) -> str:
        """A fresh worktree for this attempt; returns its path. GitError says why not."""
        try:
            user_directory(self.worktree_dir, self.identity)
        except OSError as exc:
            raise GitError(f"cannot prepare {self.worktree_dir}: {exc.strerror or exc}") \
                from None
        self.base = self.git.resolve(self.spec.repo, self.spec.ref)
        self.git.create(self.spec.repo, self.path, self.branch, self.base)
        self.store.workspace_started(self.run_id, path=self.path, branch=self.branch,
                                     base_commit=self.base)
        return self.path

    def step_cwd(self, step: Step) -> str:
        """A step's cwd: "" is the worktree, a relative path is inside it."""
        if os.path.isabs(step.cwd):
            return step.cwd
        return os.path.join(self.path, step.cwd) if step.cwd else self.path

    def environment(self) -> dict[str, str]:
        return {"MINIPIPE_WORKTREE": self.path, "MINIPIPE_BRANCH": self.branch,
                "MINIPIPE_BASE_COMMIT": self.base or "", "MINIPIPE_REPO": self.spec.repo}

    def summarise(self) -> dict[str, Any]:
        """Commit what the steps left, record the change; returns the changes."""
        assert self.base is not None
        head = self.git.snapshot(self.path, self.run_id)
        self.git.point_branch(self.path, self.branch, head)
        changes, text = self.git.changes(self.path, self.base, head)
        row = self.store.workspace(self.run_id)
        if row is not None and row.review:
            # Whether the steps could have gone around the review: shown with the run.
            writable = self.git.writable_part(self.spec.repo)
            changes["gate"] = "advisory" if writable else "enforced"
            changes["writable"] = writable
        # Which repository this is, whatever its path names later: landing goes there.
        common = self.git.common_dir(self.spec.repo)
        changes["repository"] = common
        changes["repository_id"] = _identity(common)
        # The commit first, as `git show` does: the id to approve is the one of the
        # diff the reviewer read (`show` may already name a retried attempt's).
        write_diff(self.log_dir, self.run_id, f"commit {head}\n".encode() + text)
        self.store.workspace_changed(self.run_id, head_commit=head, changes=changes,
                                     disk_bytes=self.git.disk_usage(self.path))
        return changes

    def land(self, approved_by: str | None, approved_uid: int | None = None) -> str | None:
        """The reviewed commit onto the target; LandConflict/LandRefused change nothing
        (the reviewed commit's objects, once checked and moved in from their
        quarantine, stay, unreferenced, for git gc)."""
        row = self.store.workspace(self.run_id)
        if row is None or not row.head_commit or not row.base_commit:
            raise GitError("the run has no recorded change to land")
        changes = row.changes or {}
        lander = self.lander(approved_uid)
        vet = self.vetting(lander, changes.get("merge_base") or "", row.head_commit)
        if lander is self.git:  # a Git of its own: the quarantine is the lander's only
            lander = copy.copy(self.git)
        lander.stop = self.git.stop
        target = self.target(lander)
        by = f"\n\nApproved-by: {approved_by}" if approved_by else ""
        message = f"Merge minipipe run {self.run_id} ({self.plan.name}) into {target}{by}"
        # Which repository the plan's path is, the lander's own git says (what the run
        # user's git reported is theirs to tamper with: they may ptrace their own
        # processes), and only if it is the one recorded when the steps ended (a link
        # or a parent the path goes through may have been pointed elsewhere since).
        repo = lander.own_common_dir(self.spec.repo)
        if repo != changes.get("repository") or (
                changes.get("repository_id") and _identity(repo) != changes["repository_id"]):
            raise LandRefused(f"{self.spec.repo} is not the repository the run worked on "
                              "any more (it was moved or replaced); nothing was landed")
        vet(repo, None)  # before the lander's git reads anything there
        with quarantine(lander, repo) as incoming:
            self.git.transfer(self.path, row.head_commit, row.base_commit, lander, repo)
            lander.check_reviewed(repo, row.base_commit, row.head_commit, changes)
            incoming.check_holds_only(row.head_commit, row.base_commit)
        if self.spec.land == "branch-only":
            lander.point_branch(repo, self.branch, row.head_commit)
        commit = lander.land(repo, row.head_commit, target, self.spec.land, message,
                             self.run_id, reviewed_from=changes["merge_base"],
                             vet=vet)
        self.store.landed(self.run_id, commit=commit, target=target, mode=self.spec.land,
                          as_user=lander.user)
        if commit:  # steps after approval see the target as it landed
            self.git.run("-C", self.path, "update-ref", "-m", "minipipe: landed",
                         f"refs/heads/{target}", commit, check=False)
        return commit

    def vetting(self, lander: Git, merge_base: str, head: str
                ) -> Callable[[str, str | None], None]:
        """Before the lander's git works in a place: nothing it reads there (as its
        own `git config --list --show-origin` says, exactly) nor the work tree it
        would update may be the run user's to change, and no program it may run
        there may be given a file the change adds (gate.listing_part, asked as
        them). The gate asked earlier reads config with a parser of its own; this
        asks git itself, where and as whom it will land."""
        if lander is self.git:
            return lambda place, work_tree: None
        home = lander.identity.home if lander.identity is not None else None

        def vet(place: str, work_tree: str | None) -> None:
            entries = lander.config_listing(place)
            lander.pin_config_files({origin for origin, _, _ in entries})
            adds = lander.top_level_names(place, merge_base, head)
            tracked = lander.tracked_directories(work_tree, head) if work_tree else None
            facts = resolved_as(lander, listing_paths(entries, place, home))
            found = ask_gate(self.identity, place, question=lambda: listing_answer(
                entries, place, home, work_tree, adds, tracked, facts,
                self.trusted_filters))
            if found:
                raise LandRefused(f"user {self.git.user} may change {found}, which "
                                  f"{lander.user}'s git reads landing in {place}: the "
                                  "review gate does not hold there; nothing was landed")
        return vet

    def lander(self, approved_uid: int | None) -> Git:
        """Whose git lands the change (see the module's docstring)."""
        if approved_uid is None or os.geteuid() != 0:
            return self.git
        if self.git.writable_part(self.spec.repo) is not None:
            return self.git  # the gate was advisory: the run's user could land it anyway
        import pwd

        from .identity import identity_of, state_group

        uid = approved_uid
        if uid == 0:
            try:
                uid = os.stat(self.git.common_dir(self.spec.repo)).st_uid
            except OSError as exc:
                raise LandRefused(f"cannot tell who owns {self.spec.repo}: "
                                  f"{exc.strerror}") from None
            if uid == 0:
                raise LandRefused(f"{self.spec.repo} belongs to root, and minipipe never "
                                  "runs git as root: a reviewer who may write it approves, "
                                  "or give it to a user")
        try:
            identity = identity_of(pwd.getpwuid(uid), state_group(self.store.path))
        except KeyError:
            raise LandRefused(f"the approver (uid {uid}) no longer exists") from None
        return Git(identity, umask=LANDING_UMASK, lander=True)

    def target(self, lander: Git | None = None) -> str:
        """The branch a landing updates: the plan's `target`, else the branch `ref`
        names (for HEAD: the branch the repository has checked out, as the lander's
        git says when landing)."""
        if self.spec.target:
            return self.spec.target
        if self.spec.ref != "HEAD":
            return self.spec.ref
        reading = () if lander is not None else TRUST_FOR_READING
        branch = (lander or self.git).run(*reading, "-C", self.spec.repo, "symbolic-ref",
                                          "--quiet", "--short", "HEAD", check=False
                                          ).stdout.decode().strip()
        if not branch:
            raise GitError(f"{self.spec.repo} has no branch checked out to land on; set "
                           "target in the plan's [workspace]")
        return branch

    def resume(self) -> WorkspaceRow | None:
        """For a landing pass: the worktree and base recorded by the run's attempt;
        returns the workspace's row."""
        row = self.store.workspace(self.run_id)
        if row is not None and row.path:
            self.path, self.base = row.path, row.base_commit
        return row
