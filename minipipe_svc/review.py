"""A run's workspace over its life, as its runner drives it: the review gate.

    prepare()    at the start of each attempt: the user's worktree directory, a fresh
                 worktree on `minipipe/run-<id>` from the ref resolved now (recorded)
    summarise()  when the steps end, whatever the result: their change committed,
                 its stats recorded in the DB and its diff in `<log_dir>/run-<id>.diff`
    land()       after an approval (or at once, without review): the reviewed commit
                 onto the target branch, as workspace.Git.land does it

The git work happens as the run's user (workspace.py); what this module writes as
root is the DB (through the store) and the diff file, in the log directory only
root may write, never through a link.
"""

from __future__ import annotations

import os

from .files import replace_file
from .plan import Plan, Step
from .store import Store
from .workspace import (
    Git,
    GitError,
    branch_name,
    user_directory,
    worktree_path,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .identity import RunIdentity


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


def remove_worktree(db_path: str, run_id: int, repo: str, path: str, branch: str | None,
                    identity: RunIdentity | None) -> int:
    """The daemon's housekeeping task (forked): a run's worktree (and branch, unless
    None) removed as the run's user, then recorded. Returns an exit status."""
    Git(identity).remove(repo, path, branch)
    with Store.open(db_path, create=False) as store:
        store.workspace_removed(run_id)
    return 0


class RunWorkspace:
    def __init__(self, store: Store, run_id: int, plan: Plan, identity: RunIdentity | None,
                 worktree_dir: str, log_dir: str) -> None:
        assert plan.workspace is not None
        self.store, self.run_id, self.plan = store, run_id, plan
        self.spec = plan.workspace
        self.worktree_dir, self.log_dir = worktree_dir, log_dir
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
                "MINIPIPE_BASE_COMMIT": self.base or ""}

    def summarise(self) -> dict[str, Any]:
        """Commit what the steps left, record the change; returns the changes."""
        assert self.base is not None
        head = self.git.snapshot(self.path, self.run_id)
        self.git.point_branch(self.spec.repo, self.branch, head)
        changes = self.git.changes(self.spec.repo, self.base, head)
        text, cut = self.git.diff_text(self.spec.repo, changes["merge_base"], head)
        changes["diff_truncated"] = cut
        write_diff(self.log_dir, self.run_id, text)
        self.store.workspace_changed(self.run_id, head_commit=head, changes=changes,
                                     disk_bytes=self.git.disk_usage(self.path))
        return changes

    def land(self, approved_by: str | None) -> str | None:
        """The reviewed commit onto the target; LandConflict/LandRefused change nothing."""
        row = self.store.workspace(self.run_id)
        if row is None or not row.head_commit:
            raise GitError("the run has no recorded change to land")
        target = self.target()
        by = f"\n\nApproved-by: {approved_by}" if approved_by else ""
        message = f"Merge minipipe run {self.run_id} ({self.plan.name}) into {target}{by}"
        commit = self.git.land(self.spec.repo, row.head_commit, target, self.spec.land,
                               message, self.run_id)
        self.store.landed(self.run_id, commit=commit, target=target, mode=self.spec.land)
        return commit

    def target(self) -> str:
        """The branch a landing updates: the plan's `target`, else the branch `ref`
        names (for HEAD: the branch the repository has checked out)."""
        if self.spec.target:
            return self.spec.target
        if self.spec.ref != "HEAD":
            return self.spec.ref
        branch = self.git.run("-C", self.spec.repo, "symbolic-ref", "--quiet", "--short",
                              "HEAD", check=False).stdout.decode().strip()
        if not branch:
            raise GitError(f"{self.spec.repo} has no branch checked out to land on; set "
                           "target in the plan's [workspace]")
        return branch

    def resume(self) -> None:
        """For a landing pass: the worktree and base recorded by the run's attempt."""
        row = self.store.workspace(self.run_id)
        if row is not None and row.path:
            self.path, self.base = row.path, row.base_commit
