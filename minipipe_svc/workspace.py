"""A run's own git checkout: created, summarised, landed and removed.

The run's steps never touch the repository a plan names. They work in a checkout of
their own (`create`: a new repository at `<worktree_dir>/<uid>/run-<id>` whose object
store borrows the repository's through `objects/info/alternates`, on a branch
`minipipe/run-<id>` at the base), so where the repository is one the run's user may
only read, no step can move its branches, plant hooks or rewrite its config: the
review gate holds (`writable_part` tells whether it does). The run's user only ever
*reads* the repository, with `rev-parse` (which runs nothing its config names, so it
is told to trust the repository whoever owns it).

Every git command runs as one user, never as root (a repository's config and hooks
are code its owner chose, e.g. `core.fsmonitor`), through `git -C`, never a shell,
with a timeout: the run's user in the checkout; whoever lands (`land`) in the
repository, with git's own ownership check left on. Root's part is the directory
that holds each user's checkouts, `<worktree_dir>/<uid>`, which it creates in a
directory only root may write and hands to the user (`user_directory`), and carrying
the approved commit's objects from the checkout to the repository (`transfer`): a
pack, read from one user's git and fed to the other's `index-pack --strict`.

What a reviewer sees is what lands: when the steps end, everything they left in the
checkout (untracked files too, not ignored ones) is committed onto the run's branch
(`snapshot`), the diff from the merge-base to that commit is recorded with its stats,
and approving lands exactly that commit, however the checkout changes later. Diffs
are taken with `--no-ext-diff --no-textconv --no-color`: a step may set the
checkout's config, and must not be able to make the recorded diff lie.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import NamedTuple

from .gate import answer as gate_says
from .gate import tracked_set

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .identity import RunIdentity

GIT = "git"
CHECK_TIMEOUT_SECONDS = 30.0    # rev-parse and friends
WORK_TIMEOUT_SECONDS = 900.0    # checkout, add -A, diff of a big tree
MAX_DIFF_BYTES = 8 * 1024 * 1024
MAX_LISTING_BYTES = 16 * 1024 * 1024  # numstat, name-status, log: a step makes them any size
MAX_PACK_BYTES = 4 * 1024 * 1024 * 1024  # what one landing may add to the repository
MAX_FILES_LISTED = 2000
MAX_COMMITS_LISTED = 200
MAX_TEXT_CHARS = 500  # of a commit's author or subject, in the DB
MAX_PATH_CHARS = 4096  # of a file's path (PATH_MAX): a longer one is marked cut
MAX_MESSAGE_CHARS = 10_000  # of a commit's message, and of its other headers, in the DB
LAND_MODES = ("merge", "ff-only", "branch-only")
BRANCH_PREFIX = "minipipe/run-"
STREAMS = ("diff", "name_status", "commits")  # what landing compares, in full
# What config (the checkout's is the steps', the lander's is theirs) must not change in
# a diff: the recorded one, and the one the lander makes to check it before landing.
DIFF_CONFIG = ("-c", "core.attributesFile=/dev/null", "-c", "diff.noprefix=false",
               "-c", "diff.mnemonicPrefix=false", "-c", "diff.relative=false",
               "-c", "core.quotePath=true", "-c", "diff.orderFile=/dev/null",
               "-c", "diff.suppressBlankEmpty=false", "-c", "core.bigFileThreshold=512m",
               "-c", "diff.context=3", "-c", "diff.interHunkContext=0")
# (No -U: it would print the patch with --shortstat and --numstat too.)
# --text: every file's change as text, whatever attributes say (the checkout's and the
# repository's differ, and `-diff` would hide content); --full-index: whole blob ids
# (core.abbrev is each side's own).
DIFF_OPTIONS = ("--no-ext-diff", "--no-textconv", "--no-color", "--text", "--full-index",
                "-M", "-l1000",
                "--diff-algorithm=myers", "--indent-heuristic", "--src-prefix=a/",
                "--dst-prefix=b/", "--submodule=short", "--ignore-submodules=none")

# The commits, whole: every header line of each commit as its object holds it (no
# re-encoding: `--encoding=` empty; an `encoding` header must not make the identity
# shown differ from the bytes that land), and its message. Commits end in NUL, which
# none can hold (git cuts a message at one, and index-pack --strict refuses a commit
# that has one); a message's lines are indented, so none passes for a header.
LOG_CONFIG = ("-c", "log.showSignature=false")
LOG_OPTIONS = ("--no-decorate", "--no-color", "--no-mailmap", "--no-notes", "-z",
               "--pretty=raw", "--encoding=")

class GitError(Exception):
    """A git step failed; the message says which and what git said."""


OBJECT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def object_id(said: str) -> str:
    """What the run user's git printed for an object id, if it is one (SHA-1 or
    SHA-256 hex); GitError otherwise. That git is theirs to tamper with (ptrace):
    anything else (a revision expression, escape sequences) must never be recorded
    as a commit, shown to a reviewer or handed to the lander's git."""
    if not OBJECT_ID.fullmatch(said):
        raise GitError("git gave something other than an object id where one was "
                       f"expected ({len(said)} characters)")
    return said


class CheckUnavailable(Exception):
    """A check could not even start (no scope for it): nothing is known about the
    repository; try again."""


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


# For the run's user reading the repository (rev-parse, config, nothing else): git
# refuses a repository another user owns unless told to trust it. Those commands run
# no command its config names once no transport may start (a "promisor" remote would
# fetch a missing object by running the repository's upload-pack command).
TRUST_FOR_READING = ("-c", "safe.directory=*", "-c", "protocol.allow=never")
# For whoever lands: only repositories they own, their own safe.directory exceptions
# switched off (between the checks and the landing, a submitter who may rename a
# parent of the repository's path could put a repository of theirs in its place; git's
# ownership check then refuses it), and no hooks or fsmonitor (a hooks directory the
# repository's config names may be one the submitter can write).
# And nothing that would run a program a config file names, should one the gate
# cannot see name one: no signature checks or signing (gpg.program), no automatic
# gc or maintenance, no submodule updates.
OWN_REPOSITORIES_ONLY = ("-c", "safe.directory=", "-c", "core.hooksPath=/dev/null",
                         "-c", "core.fsmonitor=false", "-c", "protocol.allow=never",
                         "-c", "core.attributesFile=/dev/null",
                         "-c", "merge.verifySignatures=false", "-c", "commit.gpgSign=false",
                         "-c", "gc.auto=0", "-c", "maintenance.auto=false",
                         "-c", "submodule.recurse=false")
# For git in the checkout (the steps' repository): no commit-graph, whose recorded
# parents a step may forge (and GIT_GRAFT_FILE=/dev/null: no grafts, see environment).
CHECKOUT_OPTIONS = ("-c", "core.commitGraph=false")

def gate_answer(line: str, user: str, repo: str) -> str | None:
    """What gate.answer said: the part `user` may change, or None; GitError where it
    cannot tell (the user may not look somewhere git reads, or it gave no answer), so
    the gate does not hold."""
    line = line.strip()
    if line == "none":
        return None
    if line.startswith("writable: "):
        return line.removeprefix("writable: ")
    why = (f"they may not read {line.removeprefix('unreadable: ')}, which git reads for it"
           if line.startswith("unreadable: ") else line.removeprefix("error: ")
           if line.startswith("error: ") else "the check gave no answer")
    raise GitError(f"cannot tell whether user {user} may change {repo}: {why}")


def ask_gate(identity: RunIdentity | None, repo: str,
             timeout: float = WORK_TIMEOUT_SECONDS,
             question: Callable[[], str] | None = None) -> str | None:
    """gate.py's answer for `repo` (or to `question`), asked in a child that became
    the user with all their groups (identity.fork_as), waited for: see gate_answer."""
    from .identity import all_groups, answer_as

    user = identity.user if identity is not None else "(this user)"
    asked = question or (lambda: gate_says(repo))
    said = answer_as(identity, all_groups(identity) if identity else None,
                     lambda: asked().encode("utf-8", "surrogateescape"), timeout, 65536)
    return gate_answer((said or b"").decode("utf-8", "replace"), user, repo)


class Git:
    """git as one user: `identity` when this process is root, else as itself.

    `umask`: for the files git creates (the lander's new objects must stay as
    readable as the repository's others; the service's own umask is 0077).
    `lander`: git for landing, in repositories this user owns only.
    """

    def __init__(self, identity: RunIdentity | None, *, hostname: str | None = None,
                 umask: int | None = None, lander: bool = False) -> None:
        self.identity = identity
        self.hostname = hostname or socket.gethostname()
        self.umask = umask
        self.options: tuple[str, ...] = OWN_REPOSITORIES_ONLY if lander else CHECKOUT_OPTIONS
        # Asked while git works (a transfer, a capped read): True stops it (a cancel).
        self.stop: Callable[[], bool] = lambda: False
        # GIT_OBJECT_DIRECTORY and alternates while a landing's objects wait in
        # quarantine (quarantine.py); empty otherwise.
        self.object_store: dict[str, str] = {}
        # GIT_CONFIG_GLOBAL/SYSTEM once `pin_config_files` ran: the config files read
        # then, and no other.
        self.config_files: dict[str, str] | None = None

    def user_options(self) -> dict[str, Any]:
        """Popen options that make a child the user (nothing unless this is root)."""
        options: dict[str, Any] = {} if self.umask is None else {"umask": self.umask}
        if self.identity is None or os.geteuid() != 0:
            return options
        return {**options, "user": self.identity.uid, "group": self.identity.gid,
                "extra_groups": list(self.identity.groups)}

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        # GIT_NO_REPLACE_OBJECTS: a step may plant `git replace` refs, which would make
        # diffs, stats and merges see other objects than the commits that land.
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C",
               "GIT_TERMINAL_PROMPT": "0", "GIT_PAGER": "cat", "GIT_EDITOR": "true",
               "GIT_NO_REPLACE_OBJECTS": "1", "GIT_GRAFT_FILE": "/dev/null",
               "GIT_NO_LAZY_FETCH": "1",
               # ... and no deprecation hint about that graft file in every error.
               "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "advice.graftFileDeprecated",
               "GIT_CONFIG_VALUE_0": "false"}
        if self.identity is not None:
            env.update(self.identity.login_environment())
        else:
            env["HOME"] = os.environ.get("HOME", "/")
        env.update(self.object_store)
        env.update(self.config_files or {})
        env.update(extra or {})
        return env

    def pin_config_files(self, origins: set[str]) -> None:
        """From now on, git reads the global and system config files it read when
        `origins` were listed (and vetted), and no other. git reads each of its
        default files only if it exists: one that did not when the landing was
        vetted may appear later, where a link on its way leads somewhere the
        submitter writes (the lander's ~/.config, a dangling ~/.gitconfig)."""
        if self.config_files is not None:
            return
        home = (self.identity.home if self.identity is not None
                else os.environ.get("HOME", "/"))
        read = [path for path in (f"{home}/.config/git/config", f"{home}/.gitconfig")
                if f"file:{path}" in origins]
        self.config_files = {}
        if len(read) < 2:  # (both read: neither can appear any more)
            self.config_files["GIT_CONFIG_GLOBAL"] = read[0] if read else os.devnull
        if "file:/etc/gitconfig" not in origins:
            self.config_files["GIT_CONFIG_SYSTEM"] = os.devnull

    def run(self, *args: str, timeout: float = CHECK_TIMEOUT_SECONDS, check: bool = True,
            env: dict[str, str] | None = None,
            what: str = "") -> subprocess.CompletedProcess[bytes]:
        """`git ARGS` as the user; GitError (with git's own words) when it fails."""
        options = self.user_options()
        try:
            result = subprocess.run([GIT, *self.options, *args], capture_output=True,
                                    timeout=timeout,
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
        self.common_dir(repo)
        commit = self.run(*TRUST_FOR_READING, "-C", repo, "rev-parse", "--verify", "--quiet",
                          "--end-of-options", f"{ref}^{{commit}}", check=False)
        if commit.returncode != 0:
            raise GitError(f"{repo} has no branch, tag or commit {ref!r}")
        return object_id(commit.stdout.decode("utf-8", "replace").strip())

    def common_dir(self, repo: str) -> str:
        """The repository's own git directory (its objects, refs, config and hooks)."""
        found = self.run(*TRUST_FOR_READING, "-C", repo, "rev-parse", "--path-format=absolute",
                         "--git-common-dir", check=False)
        path = found.stdout.decode("utf-8", "replace").strip()
        if found.returncode != 0 or not path.startswith("/") or "\n" in path:
            raise GitError(f"{repo} is not a git repository user {self.user} may read "
                           f"({_said(found)})")
        return path

    def writable_part(self, repo: str) -> str | None:
        """A part of the repository this user may change (or owns), or None: then no
        step of theirs can move its branches, add objects, or set its config and
        hooks (see gate.py); GitError where the gate cannot tell."""
        return ask_gate(self.identity, repo)

    @property
    def user(self) -> str:
        if self.identity is not None:
            return self.identity.user
        from .procs import user_name

        return user_name()

    # ------------------------------------------------------------ a run's life

    def create(self, repo: str, path: str, branch: str, base: str) -> None:
        """A fresh checkout at `path` on a new `branch` at `base`, borrowing the
        repository's objects (any earlier attempt's checkout is replaced: each
        attempt starts from the base). Nothing is written into the repository."""
        objects = os.path.join(self.common_dir(repo), "objects")
        self.remove(repo, path, branch)
        self.run("init", "--quiet", f"--initial-branch={branch}", "--", path, what="init")
        alternates = os.path.join(path, ".git", "objects", "info", "alternates")
        written = self._as_user(["sh", "-c", 'printf "%s\\n" "$1" > "$2"', "sh", objects,
                                 alternates])
        if written is None or written.returncode != 0:
            raise GitError(f"cannot borrow the objects of {repo} in {path}")
        self.run("-C", path, "config", "remote.origin.url", repo)
        self.run("-C", path, "checkout", "--quiet", "-B", branch, base,
                 timeout=WORK_TIMEOUT_SECONDS, what="checkout")

    def snapshot(self, path: str, run_id: int) -> str:
        """Commit what the steps left uncommitted (untracked files too) onto the
        worktree's HEAD; returns the commit that now holds the run's change."""
        head = object_id(self.out("-C", path, "rev-parse", "--verify", "HEAD^{commit}"))
        self.run("-C", path, "add", "--all", timeout=WORK_TIMEOUT_SECONDS, what="add --all")
        tree = object_id(self.out("-C", path, "write-tree", timeout=WORK_TIMEOUT_SECONDS))
        if tree == self.out("-C", path, "rev-parse", f"{head}^{{tree}}"):
            return head
        commit = object_id(self.out("-C", path, "commit-tree", tree, "-p", head, "-m",
                                    f"minipipe: changes run {run_id} left uncommitted",
                                    env=self.signature(run_id)))
        self.run("-C", path, "update-ref", "-m", "minipipe snapshot", "HEAD", commit, head)
        return commit

    def signature(self, run_id: int) -> dict[str, str]:
        """Who commits what minipipe commits for a run: its user, naming the run (the
        user's own git config may set no identity at all)."""
        name = f"{self.user} (minipipe run {run_id})"
        email = f"{self.identity.user if self.identity else 'minipipe'}@{self.hostname}"
        return {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email,
                "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email}

    def point_branch(self, path: str, branch: str, commit: str) -> None:
        """The run's branch names the reviewed commit (a step may have switched HEAD)."""
        self.run("-C", path, "update-ref", "-m", "minipipe", f"refs/heads/{branch}", commit)

    def config_listing(self, path: str) -> list[tuple[str, str, str]]:
        """(origin, key, value) of every config entry this user's git reads in `path`,
        includes followed as they apply there: what a landing's git will use."""
        result = self.run("-C", path, "config", "--list", "--show-origin", "--includes",
                          "-z", check=False)
        if result.returncode != 0:
            raise _refusal(path, self.user, _said(result))
        fields = result.stdout.split(b"\0")
        # Paths as the filesystem has them (not UTF-8 -> surrogates, not \xNN): gate.py
        # looks them up.
        return [(os.fsdecode(origin), *os.fsdecode(entry).partition("\n")[::2])
                for origin, entry in zip(fields[0::2], fields[1::2], strict=False)]

    def top_level_names(self, repo: str, merge_base: str, head: str) -> frozenset[str]:
        """The names at the top of the tree that `head` adds or changes since
        `merge_base` (as this user's git reads them in `repo`; none until the
        objects are there): where a landing writes files a program may be given."""
        if not merge_base:
            return frozenset()
        listed = self.run("-C", repo, "diff", "--no-renames", "--name-only", "-z",
                          "--no-ext-diff", merge_base, head, check=False,
                          timeout=WORK_TIMEOUT_SECONDS).stdout
        return frozenset(os.fsdecode(name).split("/", 1)[0]
                         for name in listed.split(b"\0") if name)

    def tracked_directories(self, work_tree: str, head: str) -> frozenset[str] | None:
        """gate.tracked_set of `work_tree`'s tracked paths, now (its index) and once
        `head` is checked out there, as this user's git lists them; None if it
        cannot list them (then every directory counts)."""
        listed = [self.run("-C", work_tree, "ls-files", "--stage", "-z", check=False,
                           timeout=WORK_TIMEOUT_SECONDS),
                  self.run("-C", work_tree, "ls-tree", "-r", "-z", "--full-tree", head,
                           check=False, timeout=WORK_TIMEOUT_SECONDS)]
        if any(result.returncode != 0 for result in listed):
            return None
        entries = []
        for result in listed:  # "MODE <more fields>\tPATH", NUL-terminated
            for record in result.stdout.split(b"\0"):
                fields, tab, path = record.partition(b"\t")
                if tab and fields[:6].isdigit():
                    entries.append((os.fsdecode(path), int(fields[:6], 8)))
        return frozenset(tracked_set(entries))

    def own_common_dir(self, repo: str) -> str:
        """`repo`'s git directory as this user's git takes it, to work in (for a
        lander: only a repository they own); LandRefused otherwise."""
        result = self.run("-C", repo, "rev-parse", "--path-format=absolute",
                          "--git-common-dir", check=False)
        path = result.stdout.decode("utf-8", "replace").strip()
        if result.returncode != 0 or not path.startswith("/"):
            raise _refusal(repo, self.user, _said(result))
        return path

    def transfer(self, path: str, head: str, base: str, lander: Git, repo: str) -> None:
        """Carry the objects of `head` (those `base` lacks) from this user's checkout
        at `path` into `repo`, as `lander`: a pack from one git, through this
        (root's) process, into the other's `index-pack --strict`, at most
        MAX_PACK_BYTES, within WORK_TIMEOUT_SECONDS, until `stop()`. Neither user
        reads the other's files."""
        source = [GIT, *self.options, "-C", path, "pack-objects", "--revs", "--stdout",
                  "--quiet"]
        sink = [GIT, *lander.options, "-C", repo, "index-pack", "--stdin", "--strict"]
        try:
            packer = subprocess.Popen(source, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, env=self.environment(),
                                      cwd="/", **self.user_options())
        except OSError as exc:
            raise GitError(f"cannot run git: {exc.strerror}; install git") from None
        try:
            indexer = subprocess.Popen(sink, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, env=lander.environment(),
                                       cwd="/", **lander.user_options())
        except OSError as exc:
            packer.kill()
            packer.wait()
            raise GitError(f"cannot run git: {exc.strerror}; install git") from None
        assert packer.stdin and packer.stdout and indexer.stdin and indexer.stderr
        said = _Tail(indexer.stderr)  # read meanwhile: a full stderr pipe would stall it
        problem: GitError | None = None
        try:
            packer.stdin.write(f"{head}\n^{base}\n".encode())
            packer.stdin.close()
            moved = 0
            for chunk in _chunks(packer.stdout, time.monotonic() + WORK_TIMEOUT_SECONDS,
                                 self.stop, "carrying the change's objects"):
                moved += len(chunk)
                if moved > MAX_PACK_BYTES:
                    raise LandRefused(f"the change is over {MAX_PACK_BYTES >> 30} GiB of "
                                      "objects; nothing was landed")
                indexer.stdin.write(chunk)
        except BrokenPipeError:
            pass  # index-pack gave up: its status and words say why
        except GitError as exc:
            problem = exc
        finally:
            if problem is not None:
                packer.kill()
                indexer.kill()
            packer.stdout.close()
            with contextlib.suppress(BrokenPipeError):
                indexer.stdin.close()
            packed = _wait(packer)
            indexed = _wait(indexer)
            said.join()
        if problem is not None:
            raise problem
        if packed != 0:
            raise GitError(f"git pack-objects in the run's checkout failed (status {packed})")
        if indexed != 0:
            lines = [line.removeprefix("fatal: ") for line in said.text().splitlines()
                     if line and not line.startswith(("warning:", "hint:"))]
            raise _refusal(repo, lander.user, "; ".join(lines[:3]) or
                           f"index-pack exit status {indexed}")

    def changes(self, path: str, base: str, head: str) -> tuple[dict[str, Any], bytes]:
        """What `head` changes against its merge-base with `base`: totals, per file,
        the commits, and the digests landing compares (`read_change`); and the
        diff's first MAX_DIFF_BYTES.

        Files and their kinds come from name-status, their line counts from the diff
        itself (read whole, as text), so every figure a reviewer is shown is one
        landing checks; git's own numstat only says which files it would call binary
        (a hint: it follows the checkout's attributes). The file list keeps up to
        MAX_LISTING_BYTES of name-status, and says when it was cut.
        """
        merge_base = object_id(self.out("-C", path, "merge-base", base, head))
        read = self.read_change(path, merge_base, head)
        counts = read["diff"].counts or []
        files = _files(read["name_status"].text, counts)
        plain = [arg for arg in self._stream_args(path, merge_base, head, "name_status")
                 if arg != "--text"]
        plain[plain.index("--name-status")] = "--numstat"
        binary = _binary_paths(self.read_all(plain, MAX_LISTING_BYTES).text)
        for entry in files:
            entry["binary"] = entry["path"] in binary
        commits = _commits(read["commits"].text, read["commits"].cut)
        count = int(self.out("-C", path, "rev-list", "--count", f"{merge_base}..{head}"))
        commits_cut = (read["commits"].cut or len(commits) != count
                       or count > MAX_COMMITS_LISTED
                       or any(commit["cut"] for commit in commits))
        return {
            "merge_base": merge_base, "head": head, "files_changed": len(counts),
            "insertions": sum(added for added, _ in counts),
            "deletions": sum(deleted for _, deleted in counts),
            "files": files[:MAX_FILES_LISTED],
            "files_truncated": read["name_status"].cut or len(files) != len(counts)
                               or len(files) > MAX_FILES_LISTED
                               or any(entry.get("cut") for entry in files),
            "commits": commits[:MAX_COMMITS_LISTED], "commit_count": count,
            "commits_truncated": commits_cut,
            "binary_files": sum(f["binary"] for f in files),
            "diff_truncated": read["diff"].cut,
            "digests": {name: reading.digest for name, reading in read.items()},
        }, read["diff"].text

    def read_change(self, path: str, merge_base: str, head: str,
                    keep: bool = True) -> dict[str, _Reading]:
        """The change's diff, name-status and commits (whole), each read to its end and hashed
        (the first MAX_DIFF_BYTES or MAX_LISTING_BYTES kept, unless not `keep`):
        landing compares the digests with those recorded at review."""
        return {name: self.read_all(self._stream_args(path, merge_base, head, name),
                                    (MAX_DIFF_BYTES if name == "diff" else MAX_LISTING_BYTES)
                                    if keep else 0, diff=name == "diff")
                for name in STREAMS}

    @staticmethod
    def _stream_args(path: str, merge_base: str, head: str, name: str) -> list[str]:
        if name == "commits":
            return ["-C", path, *LOG_CONFIG, "log", *LOG_OPTIONS, f"{merge_base}..{head}"]
        extra = ["--name-status", "-z"] if name == "name_status" else []
        return ["-C", path, *DIFF_CONFIG, "diff", *DIFF_OPTIONS, *extra, merge_base, head]

    def check_reviewed(self, repo: str, base: str, head: str,
                       changes: dict[str, Any]) -> None:
        """LandRefused unless the change, as this user's git sees it in `repo` (where
        every object was hashed on the way in), is the one that was reviewed: the
        same merge-base and commit count, and the whole diff, name-status and commits,
        byte for byte (their digests; the line counts come from that diff).

        What was recorded came from the run user's checkout, whose files that user
        may rewrite at any time: a blob's or a tree's file can hold other content
        than its name says, a commit-graph or a shallow file other parents, until
        landing packs the real objects.
        """
        recorded = changes.get("digests")
        if not recorded or any(name not in recorded for name in STREAMS):
            raise LandRefused("the change was recorded by an older minipipe, without the "
                              "digests landing checks; nothing was landed: retry the run")
        merge_base = self.run("-C", repo, "merge-base", base, head, check=False
                              ).stdout.decode().strip()
        count = self.run("-C", repo, "rev-list", "--count", f"{merge_base}..{head}",
                         check=False).stdout.decode().strip() if merge_base else ""
        if (merge_base != changes.get("merge_base")
                or count != str(changes.get("commit_count"))):
            raise LandRefused("the commit is not what was reviewed: its history differs "
                              "from the recorded one (the run's checkout was changed after "
                              "its steps ended?); nothing was landed: retry the run")
        seen = self.read_change(repo, merge_base, head, keep=False)
        differs = [name.replace("_", "-") for name in STREAMS
                   if seen[name].digest != recorded.get(name)]
        if differs:
            raise LandRefused(f"the commit is not what was reviewed: its "
                              f"{', '.join(differs)} differ from the recorded ones (the "
                              "run's checkout was changed after its steps ended?); nothing "
                              "was landed: retry the run")

    def read_all(self, args: list[str], keep: int, *, diff: bool = False) -> _Reading:
        """`git ARGS`' output read to its end: its first `keep` bytes, whether there
        was more, and its SHA-256 (`diff`: of a diff, with its line counts: see
        _Digest). As it comes,
        within WORK_TIMEOUT_SECONDS, until `stop()`: a step may make a diff or a log of
        any size, and its user may stop git."""
        try:
            proc = subprocess.Popen([GIT, *self.options, *args], stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                    env=self.environment(), cwd="/", **self.user_options())
        except OSError as exc:
            raise GitError(f"cannot run git: {exc.strerror}; install git") from None
        assert proc.stdout is not None
        what = f"git {args[args.index('-C') + 2] if '-C' in args else args[0]}"
        text, total, digest = bytearray(), 0, _Digest(diff)
        try:
            for chunk in _chunks(proc.stdout, time.monotonic() + WORK_TIMEOUT_SECONDS,
                                 self.stop, what):
                digest.update(chunk)
                total += len(chunk)
                if len(text) < keep:
                    text += chunk[:keep - len(text)]
        finally:
            if sys.exc_info()[0] is not None:
                proc.kill()
            proc.stdout.close()
            status = _wait(proc)
        if status != 0:
            raise GitError(f"{what}: exit status {status}")
        if diff:  # what a reviewer reads is what was hashed: no function names
            text = bytearray(_Digest.HUNK.sub(rb"\1", bytes(text)))
        return _Reading(bytes(text), total > keep, digest.hexdigest(),
                        digest.counts if diff else None)

    def disk_usage(self, path: str) -> int | None:
        """Bytes under `path`, as the user may see them (None if unknown)."""
        result = self._as_user(["du", "-s", "-B1", "--", path])
        try:
            return int(result.stdout.split()[0]) if result else None
        except (IndexError, ValueError):
            return None

    def land(self, repo: str, head: str, target: str, mode: str, message: str,
             run_id: int, reviewed_from: str | None = None,
             vet: Callable[[str, str | None], None] = lambda place, work_tree: None,
             ) -> str | None:
        """Bring `head` into branch `target` (`merge`: fast-forward when possible, else
        a merge commit; `ff-only`; `branch-only`: nothing). Returns the target's new
        commit (None for branch-only). All or nothing: the branch moves by one
        compare-and-swap, or, where it is checked out, by `merge --ff-only` in that
        worktree (which refuses rather than overwrite local changes).

        `reviewed_from`, the merge-base the reviewed diff starts from, must be where
        `head` meets the target now: then what lands is the reviewed diff and nothing
        else (a base off the target would bring its own commits along; a change that
        merged in newer commits of the target could undo them, unseen in its diff). `vet(place,
        work_tree)` is asked before git works in a place (LandRefused to stop).
        """
        if mode == "branch-only":
            return None
        ref = f"refs/heads/{target}"
        old = self.run("-C", repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}",
                       check=False)
        if old.returncode != 0:
            if "dubious ownership" in _said(old) or "not a git repository" in _said(old):
                raise _refusal(repo, self.user, _said(old))
            raise LandRefused(f"{repo} has no branch {target!r} to land on")
        current = old.stdout.decode().strip()
        vet(repo, None)
        if self._is_ancestor(repo, head, current):
            return current  # already there
        fast_forward = self._is_ancestor(repo, current, head)
        if not fast_forward and mode == "ff-only":
            raise LandRefused(f"{target} has moved on since the run's base, so a "
                              "fast-forward is impossible; retry the run on the new "
                              "base, or land with land = \"merge\"")
        # --all: in a criss-cross history `merge-base` names one of several best
        # bases, while a merge merges against all of them (their virtual base).
        bases = self.run("-C", repo, "merge-base", "--all", current, head, check=False
                         ).stdout.decode().split()
        meets = " and ".join(base[:12] for base in bases)
        if reviewed_from is not None and bases != [reviewed_from]:
            raise LandRefused(
                f"the change meets {target} at {meets or 'no commit'}, not at "
                f"{reviewed_from[:12]}, where its reviewed diff starts: either that base is "
                f"not on {target} (landing would bring in commits nobody reviewed) or the "
                f"run took in newer commits of {target} (its diff would hide what it "
                "undoes of them); nothing was landed: retry the run")
        if fast_forward:
            new = head
        else:
            new = self._merge_commit(repo, current, head, target, message, run_id)
        checked_out = self._checked_out(repo, ref)
        if checked_out is None:
            update = self.run("-C", repo, "update-ref", "-m", message, ref, new, current,
                              check=False)
            if update.returncode != 0:
                said = _said(update)
                if "ermission denied" in said or "nable to create" in said:
                    raise _refusal(repo, self.user, said)
                raise LandRefused(f"{target} moved while landing; approve again ({said})")
            return new
        vet(checked_out, checked_out)
        # (--ignore-submodules: no git of the lander's starts inside a submodule,
        # whose config and attributes are not the repository's and nothing vets)
        dirty = self.out("-C", checked_out, "status", "--porcelain", "--untracked-files=no",
                         "--ignore-submodules=all")
        if dirty:
            raise LandRefused(f"{target} is checked out in {checked_out} with uncommitted "
                              "changes; commit or stash them there, then approve again")
        # --no-overwrite-ignore: an untracked file of the checkout's owner is never
        # replaced, whatever ignore rules (their own global ones too) say of it.
        merge = self.run("-C", checked_out, "merge", "--ff-only", "--no-overwrite-ignore",
                         "--quiet", new, check=False, timeout=WORK_TIMEOUT_SECONDS)
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
        """Remove the run's checkout at `path` (missing is fine), as the user, never
        as root. A linked worktree of minipipe 0.2 is also unregistered from `repo`,
        and its `branch` there deleted unless None."""
        legacy = self._as_user(["test", "-f", os.path.join(path, ".git")])
        if legacy is not None and legacy.returncode == 0:
            self.run("-C", repo, "worktree", "remove", "--force", "--force", path,
                     check=False, timeout=WORK_TIMEOUT_SECONDS)
            self.run("-C", repo, "worktree", "prune", check=False)
            if branch:
                self.run("-C", repo, "branch", "-D", "--quiet", branch, check=False)
        self._as_user(["rm", "-rf", "--one-file-system", "--", path])

    def _as_user(self, argv: list[str]) -> subprocess.CompletedProcess[bytes] | None:
        options = self.user_options()
        try:
            return subprocess.run(argv, capture_output=True, timeout=WORK_TIMEOUT_SECONDS,
                                  cwd="/", check=False, stdin=subprocess.DEVNULL,
                                  env=self.environment(), **options)
        except (OSError, subprocess.TimeoutExpired):
            return None


class RefCheck:
    """A plan's repo and ref checked as the run's user, started without waiting: the
    daemon's loop waits on `fd` (a repository on a hung filesystem must not stall
    it) and asks `result()` once `read()` says the check is done. With `gate`, also
    whether the user may change any part of the repository (`writable`).

    One child forked as the user (identity.fork_as) runs `git rev-parse` and then
    asks the gate itself: the user could tamper with git (theirs), not with the
    child's answer. With `confine` (under systemd) the child first moves into a
    scope of its own, which `release` stops when the check ends: whatever the user
    makes their git leave behind (they may ptrace it) never stays in the service.
    The commit is only where the run starts; landing checks what it lands against
    the target, whatever the user's git said here.
    """

    def __init__(self, git: Git, repo: str, ref: str, timeout: float, *,
                 gate: bool = False, confine: Callable[[], None] | None = None,
                 release: Callable[[int], None] = lambda pid: None) -> None:
        from .identity import all_groups, die_with_parent, fork_as

        self.repo, self.ref = repo, ref
        self.deadline = time.monotonic() + timeout
        self.writable: str | None = None
        self.user = git.user
        env, asked = git.environment(), gate
        command = [GIT, *TRUST_FOR_READING, "-C", repo, "rev-parse", "--verify",
                   "--end-of-options", f"{ref}^{{commit}}"]

        def check() -> bytes:
            try:
                # (killed with this child: a check the daemon abandons leaves no git
                # of the user's behind in the service's cgroup)
                found = subprocess.run(command, capture_output=True, env=env, cwd="/",
                                       stdin=subprocess.DEVNULL, timeout=timeout, check=False,
                                       preexec_fn=die_with_parent)
                status, out, err = found.returncode, found.stdout, found.stderr
            except (OSError, subprocess.TimeoutExpired) as exc:
                status, out, err = 127, b"", str(exc).encode()
            return json.dumps({
                "status": status, "out": out[:4096].decode("utf-8", "replace"),
                "err": err[-4096:].decode("utf-8", "replace"),
                "gate": gate_says(repo) if asked and status == 0 else None,
            }).encode()

        identity = git.identity if os.geteuid() == 0 else None
        groups = all_groups(identity) if gate and identity is not None else None
        self.pid: int | None
        self.pid, self.fd = fork_as(identity, groups, check, before=confine)
        self.release, self.scoped = release, self.pid if confine is not None else None
        self.output = b""

    def read(self) -> bool:
        """Take what the child wrote; True once it is done (its output closed)."""
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                return False
            if not chunk:
                return True
            self.output += chunk[: 1 << 20]

    def result(self) -> str:
        """The commit; GitError naming the repository or the ref otherwise."""
        self.finish()
        from .identity import SETUP_FAILED

        if self.output.startswith(SETUP_FAILED):
            raise CheckUnavailable(self.output.removeprefix(SETUP_FAILED).decode(
                "utf-8", "replace"))
        try:
            said = json.loads(self.output)
            status, out, err = int(said["status"]), str(said["out"]), str(said["err"])
        except (ValueError, KeyError, TypeError):
            raise GitError(f"cannot tell whether {self.repo} has {self.ref!r}: the check "
                           "gave no answer") from None
        if status == 0:
            if said.get("gate") is not None:
                self.writable = gate_answer(str(said["gate"]), self.user, self.repo)
            commits = [line for line in out.split() if OBJECT_ID.fullmatch(line)]
            if commits:
                return commits[-1]
            raise GitError(f"git said nothing about {self.ref!r} in {self.repo}")
        if "dubious ownership" in err:
            raise GitError(f"git refuses {self.repo} for user {self.user}: it belongs to "
                           "another user (add it to that user's git safe.directory)")
        if "not a git repository" in err or "cannot change to" in err:
            raise GitError(f"{self.repo} is not a git repository user {self.user} may read")
        raise GitError(f"{self.repo} has no branch, tag or commit {self.ref!r}")

    def abandon(self) -> None:
        """Stop waiting: kill the child (reaped later, it may be stuck in the kernel)."""
        if self.pid is not None:
            with contextlib.suppress(OSError):
                os.kill(self.pid, 9)
        self.finish(wait=False)

    def finish(self, wait: bool = True) -> None:
        """Close the pipe; reap the child (one that ended, or later: see abandon)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.scoped is not None:  # what the user's git left behind goes too
            self.release(self.scoped)
            self.scoped = None
        if self.pid is not None:
            if wait:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(self.pid, 0)  # it closed its pipe: it is exiting
            else:
                _UNREAPED.append(self.pid)
            self.pid = None
        for pid in list(_UNREAPED):
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == 0:
                    continue
            _UNREAPED.remove(pid)


_UNREAPED: list[int] = []  # children of RefChecks, not reaped yet


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


def _files(status: bytes, counts: list[list[int]]) -> list[dict[str, Any]]:
    """Per file: path, old_path (renames, copies), status, insertions, deletions, from
    name-status (`-z`) and the diff's counts, file by file in the same order. The
    listing may have been cut anywhere: a record it does not hold whole is left out."""
    kinds = {"A": "added", "M": "modified", "D": "deleted", "R": "renamed", "C": "copied",
             "T": "type-changed"}
    files: list[dict[str, Any]] = []
    raw = status.split(b"\0")[:-1]  # the last: "" or a cut field
    fields = [_text(f) for f in raw]
    i = 0
    while i < len(fields) and fields[i]:
        code = fields[i][:1]
        width = 3 if code in ("R", "C") else 2
        if i + width > len(fields):
            break
        added, deleted = counts[len(files)] if len(files) < len(counts) else (0, 0)
        paths = fields[i + 1:i + width]
        files.append({"path": paths[-1][:MAX_PATH_CHARS],
                      "old_path": paths[0][:MAX_PATH_CHARS] if width == 3 else None,
                      "status": kinds.get(code, "modified"), "insertions": added,
                      "deletions": deleted, "binary": False})
        # A name too long to keep, or not UTF-8 (its bytes shown as the text "\xNN",
        # which another file may have for its name): never a name to act on.
        # `diff --name-only` skips it; the diff names it exactly (core.quotePath).
        if any(len(path) > MAX_PATH_CHARS for path in paths) or any(
                not _is_utf8(name) for name in raw[i + 1:i + width]):
            files[-1]["cut"] = True
        i += width
    return files


def _commits(log: bytes, cut: bool) -> list[dict[str, Any]]:
    """The commits, whole, from the log stream (LOG_OPTIONS: NUL between commits); the
    last one is left out if the stream was `cut`. Per commit: its id, parents, author and
    committer (`name <email>` as the object holds them, the date in ISO 8601), every
    other header (`encoding`, `gpgsig`, anything else) and the message; `cut` names
    what was longer than minipipe records. Ids that are not ids, or a record that is
    not a commit, mean the run user's git lied: GitError."""
    commits = []
    records = log.split(b"\0") if log else []
    for record in records[:-1] if cut else records:
        head, _, body = _text(record).partition("\n\n")
        lines = head.rstrip("\n").split("\n")
        if not lines[0].startswith("commit "):
            raise GitError("git's list of commits was not one (a record starts "
                           f"{lines[0][:20]!r})")
        fields: list[str] = []
        for line in lines[1:]:  # a header goes on in lines that start with a blank
            if line.startswith(" ") and fields:
                fields[-1] += "\n" + line
            else:
                fields.append(line)
        commit: dict[str, Any] = {"sha": object_id(lines[0].removeprefix("commit ")),
                                  "parents": [], "author": "", "committer": "",
                                  "headers": [], "cut": []}
        # Where git's own fields are (fsck's order: tree, parents, author, committer);
        # anything else, a second `tree` or a late `parent` too, is a header shown.
        at = 1 if fields and fields[0].startswith("tree ") else 0
        while at < len(fields) and fields[at].startswith("parent "):
            commit["parents"].append(object_id(fields[at].removeprefix("parent ")))
            at += 1
        for name in ("author", "committer"):
            if at < len(fields) and fields[at].startswith(f"{name} "):
                who, commit[f"{name}_date"] = _identity(fields[at].removeprefix(f"{name} "))
                commit[name] = _kept(commit, name, who, MAX_TEXT_CHARS)
                at += 1
        commit["headers"] = fields[at:]
        headers = "\n".join(commit["headers"])
        if len(headers) > MAX_MESSAGE_CHARS:
            commit["headers"] = _kept(commit, "headers", headers,
                                      MAX_MESSAGE_CHARS).split("\n")
        message = "\n".join(line.removeprefix("    ") for line in body.split("\n"))
        message = message.rstrip("\n")
        commit["subject"] = message.split("\n", 1)[0][:MAX_TEXT_CHARS]
        commit["message"] = _kept(commit, "message", message, MAX_MESSAGE_CHARS)
        commits.append(commit)
    return commits


_IDENTITY = re.compile(r"(.*) (\d+) ([+-])(\d\d)(\d\d)", re.DOTALL)


def _identity(value: str) -> tuple[str, str]:
    """An author or committer header's `name <email>` and its date (ISO 8601; as
    the header has it when that is no date)."""
    match = _IDENTITY.fullmatch(value)
    if match is None:
        return value, ""
    who, seconds, sign, hours, minutes = match.groups()
    try:
        offset = timedelta(hours=int(hours), minutes=int(minutes))
        zone = timezone(-offset if sign == "-" else offset)
        return who, datetime.fromtimestamp(int(seconds), zone).isoformat()
    except (ValueError, OverflowError, OSError):
        return who, f"{seconds} {sign}{hours}{minutes}"


def _kept(commit: dict[str, Any], name: str, text: str, most: int) -> str:
    """`text`'s first `most` characters; a cut is named in the commit's `cut`."""
    if len(text) > most:
        commit["cut"].append(name)
    return text[:most]


def _binary_paths(numstat: bytes) -> set[str]:
    """The files git's `--numstat -z` calls binary (`-` for their counts)."""
    paths, fields, i = set(), numstat.split(b"\0")[:-1], 0
    while i < len(fields) and fields[i]:
        added, _, path = [*fields[i].split(b"\t", 2), b"", b""][:3]
        if not path:  # a rename: the old and new paths follow
            if i + 3 > len(fields):
                break
            path, i = fields[i + 2], i + 3
        else:
            i += 1
        if added == b"-":
            paths.add(_text(path)[:MAX_PATH_CHARS])
    return paths


def _refusal(repo: str, user: str, said: str) -> LandRefused:
    """Why `user` could not land in `repo`, and what would let them."""
    if "dubious ownership" in said:
        return LandRefused(f"{repo} is not {user}'s, and a change lands as its approver, "
                           "in a repository they own: its owner approves, or root (then "
                           "it lands as the owner)")
    if "ermission denied" in said or "not a git repository" in said or "nable to" in said:
        return LandRefused(f"{user} may not write {repo} ({said}); a reviewer who may "
                           "write it must approve")
    return LandRefused(f"landing in {repo} as {user} failed: {said}")


def _chunks(stream: Any, deadline: float, stop: Callable[[], bool], what: str) -> Any:
    """What a child writes, as it comes; GitError past `deadline` or once `stop()`."""
    fd = stream.fileno()
    while True:
        if stop():
            raise GitError(f"{what}: stopped (the run was told to stop)")
        left = deadline - time.monotonic()
        if left <= 0:
            raise GitError(f"{what}: did not finish in time")
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if ready:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return
            yield chunk


def _wait(proc: subprocess.Popen[bytes]) -> int:
    """A child's status; one that does not end within seconds of its pipe closing is
    killed (its user may have stopped it)."""
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


class _Tail:
    """A child's stderr read on a thread to its end, keeping the last 8 KiB."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.data = stream, b""
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            while chunk := self.stream.read(65536):
                self.data = (self.data + chunk)[-8192:]

    def join(self) -> None:
        self.thread.join(timeout=10)
        with contextlib.suppress(OSError):
            self.stream.close()

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _text(data: bytes) -> str:
    """Paths and subjects as text; bytes that are not UTF-8 show as \\xNN."""
    return data.decode("utf-8", "backslashreplace")


def _said(result: subprocess.CompletedProcess[bytes]) -> str:
    said = (result.stderr or result.stdout).decode("utf-8", "replace").strip()
    lines = [line.removeprefix("fatal: ").removeprefix("error: ") for line in said.splitlines()
             if line.strip()]
    return "; ".join(lines[:3]) or f"exit status {result.returncode}"


class _Reading(NamedTuple):
    text: bytes    # the first bytes kept
    cut: bool      # there was more
    digest: str    # SHA-256 of all of it
    counts: list[list[int]] | None  # of a diff: [insertions, deletions] per file


class _Digest:
    """SHA-256 of a stream, and of a diff (`diff`), its lines counted per file as
    they go by: the "+" and "-" lines of each file's hunks. A diff's hunk headers are
    hashed up to their second "@@" only: the function name git adds there comes
    from each side's attributes and config, not from the change."""

    HUNK = re.compile(rb"^(@@ [^\n]*? @@)[^\n]*", re.MULTILINE)
    LONGEST_HEADER = 4096  # git shortens a header's function name to 80 bytes

    def __init__(self, diff: bool) -> None:
        self.hash = hashlib.sha256()
        self.diff = diff
        self.counts: list[list[int]] = []
        self.header = b""       # the last `diff --git` line
        self.in_deletion = False  # that patch deletes its file
        self.deleted = False    # the patch before deleted a file under this same header
        self.in_hunk = False
        self.pending = b""      # the start of a line not ended yet
        self.inside = False     # in a long line already hashed and counted

    def update(self, chunk: bytes) -> None:
        if not self.diff:
            self.hash.update(chunk)
            return
        if self.inside:
            end = chunk.find(b"\n") + 1
            self.hash.update(chunk[:end] if end else chunk)
            if not end:
                return
            chunk, self.inside = chunk[end:], False
        data = self.pending + chunk
        end = data.rfind(b"\n") + 1
        for line in data[:end].split(b"\n")[:-1]:
            self._count(line)
        self.hash.update(self.HUNK.sub(rb"\1", data[:end]))
        self.pending = data[end:]
        if len(self.pending) > self.LONGEST_HEADER:  # content, never a header
            self._count(self.pending)
            self.hash.update(self.pending)
            self.pending, self.inside = b"", True

    def _count(self, line: bytes) -> None:
        if line.startswith(b"diff --git "):
            self.counts.append([0, 0])
            self.deleted = self.header == line and self.in_deletion  # (see below)
            self.header, self.in_deletion = line, False
            self.in_hunk = False
        elif not self.in_hunk and line.startswith((b"deleted file mode ",
                                                   b"new file mode ")):
            # A type change (file to link) is one file to name-status, and two patches
            # to the diff: a deletion, then a creation under the same header line (the
            # same path: "a/P b/P" names one P). Counted as one file, so the files
            # after it keep their own counts. (Only that pair: two files' patches can
            # share a header line, "a/x b/y b/x b/y" being two ways to read one.)
            if line.startswith(b"deleted"):
                self.in_deletion = True
            elif self.deleted and len(self.counts) > 1:
                self.counts.pop()  # its lines go to the deletion's count
                self.deleted = False
        elif line.startswith(b"@@ "):
            self.in_hunk = True
        elif self.in_hunk and self.counts and line[:1] in (b"+", b"-"):
            self.counts[-1][line[:1] == b"-"] += 1

    def hexdigest(self) -> str:
        if self.pending:
            self._count(self.pending)
        self.hash.update(self.HUNK.sub(rb"\1", self.pending))
        self.pending = b""
        return self.hash.hexdigest()
