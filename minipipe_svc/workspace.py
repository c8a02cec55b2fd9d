"""A run's own git worktree: created, summarised, landed and removed, as the run's user.

Every git command runs as the run's user (never as root: a repository's config and
hooks are code its owner chose, e.g. `core.fsmonitor`), through `git -C`, never a
shell, with a timeout. Root's only part is the directory that holds the user's
worktrees, `<worktree_dir>/<uid>`, which it creates in a directory only root may
write and hands to the user (`user_directory`); it never looks inside.

What a reviewer sees is what lands: when the steps end, everything they left in the
worktree (untracked files too, not ignored ones) is committed onto the run's branch
(`snapshot`), the diff from the merge-base to that commit is recorded with its stats,
and approving lands exactly that commit (`land`), however the branch moves later.
Diffs are taken with `--no-ext-diff --no-textconv --no-color`: a step may set the
repository's config, and must not be able to make the recorded diff lie.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .identity import RunIdentity

GIT = "git"
CHECK_TIMEOUT_SECONDS = 30.0    # rev-parse and friends
WORK_TIMEOUT_SECONDS = 900.0    # checkout, add -A, diff of a big tree
MAX_DIFF_BYTES = 8 * 1024 * 1024
MAX_FILES_LISTED = 2000
MAX_COMMITS_LISTED = 200
MAX_TEXT_CHARS = 500  # of a commit's author or subject, a file's path, in the DB
LAND_MODES = ("merge", "ff-only", "branch-only")
BRANCH_PREFIX = "minipipe/run-"
# What the repository's config (a step may write it) must not change in a recorded diff.
DIFF_CONFIG = ("-c", "core.attributesFile=/dev/null", "-c", "diff.noprefix=false",
               "-c", "diff.mnemonicPrefix=false", "-c", "diff.relative=false",
               "-c", "core.quotePath=true", "-c", "diff.orderFile=/dev/null")


class GitError(Exception):
    """A git step failed; the message says which and what git said."""


class LandConflict(GitError):
    """Approving would conflict: the files are named, nothing was changed."""

    def __init__(self, files: list[str], target: str) -> None:
        self.files = files
        shown = ", ".join(files[:20]) + (f" and {len(files) - 20} more" if len(files) > 20
                                          else "")
        super().__init__(f"the change conflicts with {target}: {shown}")


class LandRefused(GitError):
    """Approving cannot land the change safely now; nothing was changed."""


def branch_name(run_id: int) -> str:
    return f"{BRANCH_PREFIX}{int(run_id)}"


def worktree_path(worktree_dir: str, uid: int, run_id: int) -> str:
    return os.path.join(worktree_dir, str(int(uid)), f"run-{int(run_id)}")


def valid_ref(ref: str) -> str | None:
    """Why `ref` cannot name a branch, tag or commit here, or None if it may.

    Stricter than git (no leading "-", no spaces, nothing git would read as a
    range, a revision expression or an option); git itself has the last word.
    """
    if not ref or len(ref) > 200:
        return "it must be 1 to 200 characters"
    if ref.startswith(("-", "/")) or ref.endswith(("/", ".", ".lock")):
        return "it may not start with - or /, nor end with /, . or .lock"
    bad = set(" ~^:?*[\\\x7f") | {chr(c) for c in range(32)}
    if bad.intersection(ref) or ".." in ref or "@{" in ref or "//" in ref:
        return "it may not contain spaces, control characters, ~ ^ : ? * [ \\, .. or @{"
    return None


class Git:
    """git as one user: `identity` when this process is root, else as itself."""

    def __init__(self, identity: RunIdentity | None, *, hostname: str | None = None) -> None:
        self.identity = identity
        self.hostname = hostname or socket.gethostname()

    def user_options(self) -> dict[str, Any]:
        """Popen options that make a child the user (nothing unless this is root)."""
        if self.identity is None or os.geteuid() != 0:
            return {}
        return {"user": self.identity.uid, "group": self.identity.gid,
                "extra_groups": list(self.identity.groups)}

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        # GIT_NO_REPLACE_OBJECTS: a step may plant `git replace` refs, which would make
        # diffs, stats and merges see other objects than the commits that land.
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C",
               "GIT_TERMINAL_PROMPT": "0", "GIT_PAGER": "cat", "GIT_EDITOR": "true",
               "GIT_NO_REPLACE_OBJECTS": "1"}
        if self.identity is not None:
            env.update(self.identity.login_environment())
        else:
            env["HOME"] = os.environ.get("HOME", "/")
        env.update(extra or {})
        return env

    def run(self, *args: str, timeout: float = CHECK_TIMEOUT_SECONDS, check: bool = True,
            env: dict[str, str] | None = None,
            what: str = "") -> subprocess.CompletedProcess[bytes]:
        """`git ARGS` as the user; GitError (with git's own words) when it fails."""
        options = self.user_options()
        try:
            result = subprocess.run([GIT, *args], capture_output=True, timeout=timeout,
                                    env=self.environment(env), cwd="/", stdin=subprocess.DEVNULL,
                                    check=False, **options)
        except subprocess.TimeoutExpired:
            raise GitError(f"git {what or args[0]} did not finish within {timeout:g}s") from None
        except OSError as exc:
            raise GitError(f"cannot run git: {exc.strerror}; install git") from None
        if check and result.returncode != 0:
            raise GitError(f"git {what or args[-1]}: {_said(result)}")
        return result

    def out(self, *args: str, **options: Any) -> str:
        return self.run(*args, **options).stdout.decode("utf-8", "replace").strip()

    # ------------------------------------------------------------ checks

    def resolve(self, repo: str, ref: str) -> str:
        """The commit `ref` names in `repo`, as the user sees it (readable, known ref)."""
        git_dir = self.run("-C", repo, "rev-parse", "--git-dir", check=False)
        if git_dir.returncode != 0:
            said = _said(git_dir)
            if "dubious ownership" in said:
                raise GitError(f"git refuses {repo} for user {self.user}: it belongs to "
                               "another user (add it to that user's git safe.directory)")
            raise GitError(f"{repo} is not a git repository user {self.user} may read "
                           f"({said})")
        commit = self.run("-C", repo, "rev-parse", "--verify", "--quiet", "--end-of-options",
                          f"{ref}^{{commit}}", check=False)
        if commit.returncode != 0:
            raise GitError(f"{repo} has no branch, tag or commit {ref!r}")
        return commit.stdout.decode().strip()

    @property
    def user(self) -> str:
        if self.identity is not None:
            return self.identity.user
        from .procs import user_name

        return user_name()

    # ------------------------------------------------------------ a run's life

    def create(self, repo: str, path: str, branch: str, base: str) -> None:
        """A fresh worktree at `path` on a new `branch` at `base` (any earlier attempt's
        worktree and branch are replaced: each attempt starts from the base)."""
        self.remove(repo, path, branch)
        self.run("-C", repo, "worktree", "add", "--quiet", "-B", branch, "--", path, base,
                 timeout=WORK_TIMEOUT_SECONDS, what="worktree add")

    def snapshot(self, path: str, run_id: int) -> str:
        """Commit what the steps left uncommitted (untracked files too) onto the
        worktree's HEAD; returns the commit that now holds the run's change."""
        head = self.out("-C", path, "rev-parse", "--verify", "HEAD^{commit}")
        self.run("-C", path, "add", "--all", timeout=WORK_TIMEOUT_SECONDS, what="add --all")
        tree = self.out("-C", path, "write-tree", timeout=WORK_TIMEOUT_SECONDS)
        if tree == self.out("-C", path, "rev-parse", f"{head}^{{tree}}"):
            return head
        commit = self.out("-C", path, "commit-tree", tree, "-p", head, "-m",
                          f"minipipe: changes run {run_id} left uncommitted",
                          env=self.signature(run_id))
        self.run("-C", path, "update-ref", "-m", "minipipe snapshot", "HEAD", commit, head)
        return commit

    def signature(self, run_id: int) -> dict[str, str]:
        """Who commits what minipipe commits for a run: its user, naming the run (the
        user's own git config may set no identity at all)."""
        name = f"{self.user} (minipipe run {run_id})"
        email = f"{self.identity.user if self.identity else 'minipipe'}@{self.hostname}"
        return {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email,
                "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email}

    def point_branch(self, repo: str, branch: str, commit: str) -> None:
        """The run's branch names the reviewed commit (a step may have switched HEAD)."""
        self.run("-C", repo, "update-ref", "-m", "minipipe", f"refs/heads/{branch}", commit)

    def changes(self, repo: str, base: str, head: str) -> dict[str, Any]:
        """What `head` changes against its merge-base with `base`: totals, per file,
        and the commits, as `git diff --stat` from the merge-base counts them."""
        merge_base = self.out("-C", repo, "merge-base", base, head)
        diff = ("-C", repo, *DIFF_CONFIG, "diff", "--no-ext-diff", "--no-textconv",
                "--no-color", "-M", "-z", merge_base, head)
        numstat = self.run(*diff[:-2], "--numstat", *diff[-2:],
                           timeout=WORK_TIMEOUT_SECONDS, what="diff --numstat").stdout
        status = self.run(*diff[:-2], "--name-status", *diff[-2:],
                          timeout=WORK_TIMEOUT_SECONDS, what="diff --name-status").stdout
        files = _files(numstat, status)
        log = self.run("-C", repo, "log", "--no-decorate", "--no-color", "-z",
                       f"--max-count={MAX_COMMITS_LISTED}", "--format=%H%x1f%an%x1f%s",
                       f"{merge_base}..{head}", what="log").stdout
        commits = [dict(zip(("sha", "author", "subject"),
                            (field[:MAX_TEXT_CHARS] for field in
                             _text(entry).split("\x1f", 2)), strict=False))
                   for entry in log.split(b"\0") if entry.strip()]
        count = int(self.out("-C", repo, "rev-list", "--count", f"{merge_base}..{head}"))
        return {
            "merge_base": merge_base, "head": head,
            "files_changed": len(files),
            "insertions": sum(f["insertions"] or 0 for f in files),
            "deletions": sum(f["deletions"] or 0 for f in files),
            "files": files[:MAX_FILES_LISTED], "files_truncated": len(files) > MAX_FILES_LISTED,
            "commits": commits, "commit_count": count,
            # In-tree attributes decide what git calls binary (`-diff`) even with
            # --no-textconv: a run that changes them gets a warning next to its diff.
            "attributes_changed": any(os.path.basename(f["path"]) == ".gitattributes"
                                      for f in files) or self._has_info_attributes(repo),
            "binary_files": sum(f["binary"] for f in files),
        }

    def _has_info_attributes(self, repo: str) -> bool:
        """Whether the repository has `info/attributes`: a step may write one (it is in
        the shared git directory) to call text files binary in every diff."""
        path = self.out("-C", repo, "rev-parse", "--git-path", "info/attributes")
        result = self._as_user(["test", "-s", os.path.join(repo, path)])
        return result is not None and result.returncode == 0

    def diff_text(self, repo: str, merge_base: str, head: str) -> tuple[bytes, bool]:
        """The unified diff (at most MAX_DIFF_BYTES) and whether it was cut. Read as it
        comes, never more than the cap: a step may make a diff of any size."""
        options = self.user_options()
        argv = [GIT, "-C", repo, *DIFF_CONFIG, "diff", "--no-ext-diff", "--no-textconv",
                "--no-color", "-M", merge_base, head]
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    stdin=subprocess.DEVNULL, env=self.environment(), cwd="/",
                                    **options)
        except OSError as exc:
            raise GitError(f"cannot run git: {exc.strerror}; install git") from None
        assert proc.stdout is not None
        with proc:
            text = proc.stdout.read(MAX_DIFF_BYTES + 1)
            cut = len(text) > MAX_DIFF_BYTES
            if cut:
                proc.kill()
            try:
                status = proc.wait(timeout=WORK_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise GitError("git diff did not finish") from None
        if status != 0 and not cut:
            raise GitError(f"git diff: exit status {status}")
        return text[:MAX_DIFF_BYTES], cut

    def disk_usage(self, path: str) -> int | None:
        """Bytes under `path`, as the user may see them (None if unknown)."""
        result = self._as_user(["du", "-s", "-B1", "--", path])
        try:
            return int(result.stdout.split()[0]) if result else None
        except (IndexError, ValueError):
            return None

    def land(self, repo: str, head: str, target: str, mode: str, message: str,
             run_id: int) -> str | None:
        """Bring `head` into branch `target` (`merge`: fast-forward when possible, else
        a merge commit; `ff-only`; `branch-only`: nothing). Returns the target's new
        commit (None for branch-only). All or nothing: the branch moves by one
        compare-and-swap, or, where it is checked out, by `merge --ff-only` in that
        worktree (which refuses rather than overwrite local changes).
        """
        if mode == "branch-only":
            return None
        ref = f"refs/heads/{target}"
        old = self.run("-C", repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}",
                       check=False)
        if old.returncode != 0:
            raise LandRefused(f"{repo} has no branch {target!r} to land on")
        current = old.stdout.decode().strip()
        if self._is_ancestor(repo, head, current):
            return current  # already there
        if self._is_ancestor(repo, current, head):
            new = head
        elif mode == "ff-only":
            raise LandRefused(f"{target} has moved on since the run's base, so a "
                              "fast-forward is impossible; retry the run on the new "
                              "base, or land with land = \"merge\"")
        else:
            new = self._merge_commit(repo, current, head, target, message, run_id)
        checked_out = self._checked_out(repo, ref)
        if checked_out is None:
            update = self.run("-C", repo, "update-ref", "-m", message, ref, new, current,
                              check=False)
            if update.returncode != 0:
                raise LandRefused(f"{target} moved while landing; approve again "
                                  f"({_said(update)})")
            return new
        dirty = self.out("-C", checked_out, "status", "--porcelain", "--untracked-files=no")
        if dirty:
            raise LandRefused(f"{target} is checked out in {checked_out} with uncommitted "
                              "changes; commit or stash them there, then approve again")
        merge = self.run("-C", checked_out, "merge", "--ff-only", "--quiet", new, check=False,
                         timeout=WORK_TIMEOUT_SECONDS)
        if merge.returncode != 0:
            raise LandRefused(f"{target} is checked out in {checked_out} and could not be "
                              f"updated there ({_said(merge)}); nothing was changed")
        return new

    def _is_ancestor(self, repo: str, older: str, newer: str) -> bool:
        return self.run("-C", repo, "merge-base", "--is-ancestor", older, newer,
                        check=False).returncode == 0

    def _merge_commit(self, repo: str, current: str, head: str, target: str,
                      message: str, run_id: int) -> str:
        result = self.run("-C", repo, "merge-tree", "--write-tree", "--name-only",
                          "--no-messages", "-z", current, head, check=False,
                          timeout=WORK_TIMEOUT_SECONDS, what="merge-tree")
        parts = [_text(p) for p in result.stdout.split(b"\0") if p]
        if result.returncode == 1:
            raise LandConflict(sorted(set(parts[1:])), target)
        if result.returncode != 0 or not parts:
            raise GitError(f"git merge-tree: {_said(result)}")
        return self.out("-C", repo, "commit-tree", parts[0], "-p", current, "-p", head,
                        "-m", message, env=self.signature(run_id))

    def _checked_out(self, repo: str, ref: str) -> str | None:
        """The worktree (not bare) that has `ref` checked out, if any."""
        listing = self.run("-C", repo, "worktree", "list", "--porcelain", "-z").stdout
        path, bare = None, False
        for field in [*listing.split(b"\0"), b""]:
            text = _text(field)
            if not text:  # an empty field ends one worktree's record
                path, bare = None, False
                continue
            key, _, value = text.partition(" ")
            if key == "worktree":
                path = value
            elif key == "bare":
                bare = True
            elif key == "branch" and value == ref and path and not bare:
                return path
        return None

    def remove(self, repo: str, path: str, branch: str | None) -> None:
        """Remove the worktree at `path` and, unless None, `branch`; missing is fine."""
        self.run("-C", repo, "worktree", "remove", "--force", "--force", path, check=False,
                 timeout=WORK_TIMEOUT_SECONDS)
        self.run("-C", repo, "worktree", "prune", check=False)
        if branch:
            self.run("-C", repo, "branch", "-D", "--quiet", branch, check=False)
        # Whatever git could not remove (the repository is gone, a step made files
        # git does not track undeletable by git): as the user, never as root.
        self._as_user(["rm", "-rf", "--one-file-system", "--", path])

    def _as_user(self, argv: list[str]) -> subprocess.CompletedProcess[bytes] | None:
        options = self.user_options()
        try:
            return subprocess.run(argv, capture_output=True, timeout=WORK_TIMEOUT_SECONDS,
                                  cwd="/", check=False, stdin=subprocess.DEVNULL,
                                  env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"}, **options)
        except (OSError, subprocess.TimeoutExpired):
            return None


class RefCheck:
    """`git rev-parse` of a plan's repo and ref as the run's user, started without
    waiting: the daemon's loop waits on `fd` (a repository on a hung filesystem must
    not stall it) and asks `result()` once `read()` says git is done."""

    def __init__(self, git: Git, repo: str, ref: str, timeout: float) -> None:
        import time

        self.repo, self.ref = repo, ref
        self.deadline = time.monotonic() + timeout
        options = git.user_options()
        self.user = git.user
        try:
            self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                [GIT, "-C", repo, "rev-parse", "--verify", "--end-of-options",
                 f"{ref}^{{commit}}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=git.environment(), cwd="/", **options)
        except OSError as exc:
            raise GitError(f"cannot run git: {exc.strerror}; install git") from None
        assert self.proc.stdout is not None
        self.fd = self.proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.output = b""

    def read(self) -> bool:
        """Take what git wrote; True once it is done (its output closed)."""
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                return False
            if not chunk:
                return True
            self.output += chunk[: 65536 - len(self.output)]

    def result(self) -> str:
        """The commit; GitError naming the repository or the ref otherwise."""
        assert self.proc is not None
        status = self.proc.wait(timeout=5)
        self.finish()
        said = self.output.decode("utf-8", "replace")
        if status == 0:
            return said.strip().splitlines()[-1]
        if "dubious ownership" in said:
            raise GitError(f"git refuses {self.repo} for user {self.user}: it belongs to "
                           "another user (add it to that user's git safe.directory)")
        if "not a git repository" in said or "cannot change to" in said:
            raise GitError(f"{self.repo} is not a git repository user {self.user} may read")
        raise GitError(f"{self.repo} has no branch, tag or commit {self.ref!r}")

    def abandon(self) -> None:
        """Stop waiting: kill git (reaped later, it may be stuck in the kernel)."""
        if self.proc is not None:
            with contextlib.suppress(OSError):
                self.proc.kill()
            _UNREAPED.append(self.proc)
        self.finish()

    def finish(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None
        for proc in list(_UNREAPED):
            if proc.poll() is not None:
                _UNREAPED.remove(proc)


_UNREAPED: list[subprocess.Popen[bytes]] = []


def user_directory(worktree_dir: str, identity: RunIdentity | None) -> str:
    """`<worktree_dir>/<uid>`: the user's own directory for their runs' worktrees.

    As root, `worktree_dir` must be root's alone (then nobody can swap what is
    created in it); the per-user directory is created 0700 and given to the user,
    or, if it exists, must be a real directory the user owns. Root never goes inside.
    """
    uid = identity.uid if identity is not None else os.getuid()
    gid = identity.gid if identity is not None else os.getgid()
    os.makedirs(worktree_dir, mode=0o711, exist_ok=True)
    if os.geteuid() == 0:
        info = os.lstat(worktree_dir)
        if info.st_uid != 0 or info.st_mode & 0o022 or os.path.islink(worktree_dir):
            raise GitError(f"{worktree_dir} must be a directory only root may write")
        # Users pass through to their own directory; nobody lists the others'. (The
        # service's umask would have left it 0700.)
        os.chmod(worktree_dir, 0o711)
    path = os.path.join(worktree_dir, str(uid))
    try:
        os.mkdir(path, 0o700)
        if os.geteuid() == 0:
            os.chown(path, uid, gid, follow_symlinks=False)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not os.path.isdir(path) or os.path.islink(path) or info.st_uid != uid:
        raise GitError(f"{path} is not a directory of uid {uid}; remove it (an admin) and "
                       "retry the run")
    return path


def _files(numstat: bytes, status: bytes) -> list[dict[str, Any]]:
    """Per file: path, old_path (renames), status, insertions, deletions, binary."""
    kinds = {"A": "added", "M": "modified", "D": "deleted", "R": "renamed", "C": "copied",
             "T": "type-changed"}
    states: list[tuple[str, str | None]] = []
    fields = [_text(f) for f in status.split(b"\0")]
    i = 0
    while i < len(fields) and fields[i]:
        code = fields[i][:1]
        if code in ("R", "C"):
            states.append((kinds[code], fields[i + 1]))
            i += 3
        else:
            states.append((kinds.get(code, "modified"), None))
            i += 2
    files = []
    fields = [_text(f) for f in numstat.split(b"\0")]
    i, n = 0, 0
    while i < len(fields) and fields[i]:
        added, deleted, path = fields[i].split("\t", 2)
        old = None
        if not path:  # a rename: the old and new paths follow
            old, path = fields[i + 1], fields[i + 2]
            i += 3
        else:
            i += 1
        binary = added == "-"
        kind, status_old = states[n] if n < len(states) else ("modified", None)
        old = old or status_old
        files.append({"path": path[:MAX_TEXT_CHARS],
                      "old_path": old[:MAX_TEXT_CHARS] if old else None, "status": kind,
                      "insertions": None if binary else int(added),
                      "deletions": None if binary else int(deleted), "binary": binary})
        n += 1
    return files


def _text(data: bytes) -> str:
    """Paths and subjects as text; bytes that are not UTF-8 show as \\xNN."""
    return data.decode("utf-8", "backslashreplace")


def _said(result: subprocess.CompletedProcess[bytes]) -> str:
    said = (result.stderr or result.stdout).decode("utf-8", "replace").strip()
    lines = [line.removeprefix("fatal: ").removeprefix("error: ") for line in said.splitlines()
             if line.strip()]
    return "; ".join(lines[:3]) or f"exit status {result.returncode}"
