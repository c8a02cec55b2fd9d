"""Where a landing's objects wait until they are known to be the reviewed change.

Landing carries the run's objects into the repository (workspace.Git.transfer): a
pack the run user's git builds from files that user may rewrite, up to
MAX_PACK_BYTES of anything. As receive-pack does for a push, the lander's
`index-pack` writes it into a directory of its own in the repository's object store
(`objects/tmp_minipipe-incoming-XXXXXXXX`, a name `git prune` removes once stale,
should the daemon die meanwhile); the lander's git reads it there (through
GIT_OBJECT_DIRECTORY, the store as its alternate) while landing checks the change;
and its pack files move into the store only once those checks passed and the pack
holds no object but those the reviewed commit adds. Otherwise, and on any failure,
the directory goes, with whatever the pack held.

Every file operation here runs as the lander, in a child that became them
(identity.answer_as): root creates, moves and deletes nothing in a repository.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator

from .identity import answer_as
from .workspace import WORK_TIMEOUT_SECONDS, Git, GitError, LandRefused

PREFIX = "tmp_minipipe-incoming-"  # git prune's stale "tmp_" entries of objects/
FAILED = b"!"


class Incoming:
    """The quarantine of one landing: its directory, as the lander made it."""

    def __init__(self, lander: Git, repo: str, path: str) -> None:
        self.lander, self.repo, self.path = lander, repo, path

    def check_holds_only(self, head: str, base: str) -> None:
        """LandRefused if the pack holds objects `head` does not add to `base`, or
        takes far more room than they are (the run user's git packed what the files
        they rewrote said: extra history, junk blobs, a padded zlib stream)."""
        added = set(self.lander.run("-C", self.repo, "rev-list", "--objects",
                                    "--no-object-names", head, "--not", base,
                                    timeout=WORK_TIMEOUT_SECONDS, what="rev-list").stdout.split())
        saved, self.lander.object_store = self.lander.object_store, {
            "GIT_OBJECT_DIRECTORY": self.path}  # this directory alone: no alternates
        try:
            held = self.lander.run(
                "-C", self.repo, "cat-file", "--batch-all-objects",
                "--batch-check=%(objectname) %(objectsize) %(objectsize:disk)",
                timeout=WORK_TIMEOUT_SECONDS, what="cat-file").stdout.splitlines()
        finally:
            self.lander.object_store = saved
        size = disk = 0
        for line in held:
            name, logical, stored = line.split()
            if name not in added:
                raise LandRefused(
                    f"the objects the run's checkout packed are not only the reviewed "
                    f"change's (e.g. {name.decode()[:12]}): its checkout was changed after "
                    "its steps ended?; nothing was landed: retry the run")
            size, disk = size + int(logical), disk + int(stored)
        if disk > allowed_room(size, len(held)):
            raise LandRefused(
                f"the objects the run's checkout packed take {disk} bytes for {size} bytes "
                "of content (padded): its checkout was changed after its steps ended?; "
                "nothing was landed: retry the run")


def allowed_room(size: int, count: int) -> int:
    """The most room `count` objects of `size` bytes in all may take in a pack: zlib
    adds a few bytes per 16 KiB at worst, a pack entry's header a few more (pure)."""
    return size + size // 100 + 64 * count + (1 << 20)


@contextlib.contextmanager
def quarantine(lander: Git, repo: str) -> Iterator[Incoming]:
    """A quarantine in `repo` (its git directory) for the `with` block: the lander's
    git reads and writes objects there meanwhile; its packs move into the store when
    the block ends normally, and the directory goes whatever happens."""
    objects = os.path.join(repo, "objects")
    made = _as_lander(lander, lambda: _make(objects), f"cannot write to {objects}")
    incoming = Incoming(lander, repo, os.fsdecode(made))
    lander.object_store = {"GIT_OBJECT_DIRECTORY": incoming.path,
                           "GIT_ALTERNATE_OBJECT_DIRECTORIES": objects}
    try:
        yield incoming
        lander.object_store = {}
        _as_lander(lander, lambda: _move_in(incoming.path, objects),
                   f"cannot move the change's objects into {objects}")
    finally:
        lander.object_store = {}
        with contextlib.suppress(GitError):
            _as_lander(lander, lambda: _remove(incoming.path), "")


def _as_lander(lander: Git, work: Callable[[], bytes], failing: str) -> bytes:
    """`work()` done as the lander; GitError(`failing`: why) if it did not succeed."""
    identity = lander.identity
    groups = list(identity.groups) if identity is not None else None

    def guarded() -> bytes:
        try:
            return work()
        except OSError as exc:
            return FAILED + (exc.strerror or str(exc)).encode()

    said = answer_as(identity, groups, guarded, WORK_TIMEOUT_SECONDS)
    if said is None or said.startswith(FAILED):
        why = said[1:].decode("utf-8", "replace") if said else "no answer"
        raise GitError(f"{failing}: {why} (as {lander.user})")
    return said


def _make(objects: str) -> bytes:
    path = tempfile.mkdtemp(prefix=PREFIX, dir=objects)
    os.mkdir(os.path.join(path, "pack"))
    return os.fsencode(path)


def _move_in(incoming: str, objects: str) -> bytes:
    """The pack files into objects/pack: each pack before its index (git reads a pack
    only through its index), none replacing one there (the same name is the same pack)."""
    source, target = os.path.join(incoming, "pack"), os.path.join(objects, "pack")
    names = [name for name in os.listdir(source) if name.startswith("pack-")]
    os.makedirs(target, exist_ok=True)
    for name in sorted(names, key=lambda n: (n.endswith(".idx"), n)):
        here, there = os.path.join(source, name), os.path.join(target, name)
        try:
            os.link(here, there)
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links: as git does, rename
            if not os.path.lexists(there):
                os.rename(here, there)
    return b"moved"


def _remove(incoming: str) -> bytes:
    shutil.rmtree(incoming)
    return b"removed"
