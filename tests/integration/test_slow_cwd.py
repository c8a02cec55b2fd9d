"""A cwd on a filesystem that never answers: the daemon keeps serving, the submit fails.

The filesystem is real: a FUSE mount whose server never reads its /dev/fuse, so
every lookup inside it waits forever (until the connection is aborted), as on a
FUSE mount a group member made or a hung NFS server. Mounting needs root and
/dev/fuse; without them these tests are skipped.
"""

from __future__ import annotations

import ctypes
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from minipipe_svc.identity import (
    MAX_PROBE_CHILDREN_PER_USER,
    DirectoryProber,
    identity_of,
)
from minipipe_svc.procs import MountTable, children_of

from .conftest import Instance, unprivileged_user, wait_for

MNT_DETACH = 2


def _mount(source: str, target: Path, fstype: str, options: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(source.encode(), bytes(target), fstype.encode(), 0, options.encode()):
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error), str(target))


def _unmount(target: Path) -> None:
    ctypes.CDLL(None, use_errno=True).umount2(bytes(target), MNT_DETACH)


@pytest.fixture
def hung(tmp_path: Path) -> Iterator[Path]:
    """A directory on which every lookup waits forever (a FUSE mount nobody serves)."""
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.skip("needs root and /dev/fuse to mount a FUSE filesystem")
    point = tmp_path / "hung"
    point.mkdir()
    fuse = os.open("/dev/fuse", os.O_RDWR)
    try:
        # allow_other: the daemon's user may look (and wait) too.
        _mount("minipipe-test", point, "fuse.hang",
               f"fd={fuse},rootmode=40000,user_id=0,group_id=0,allow_other")
    except OSError as exc:
        os.close(fuse)
        pytest.skip(f"cannot mount FUSE here: {exc.strerror}")
    try:
        yield point
    finally:
        os.close(fuse)  # aborts the connection: every waiting lookup fails at once
        _unmount(point)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount")
    point = tmp_path / "tmpfs"
    point.mkdir()
    _mount("minipipe-test", point, "tmpfs", "mode=0755")
    try:
        yield point
    finally:
        _unmount(point)


def _ping(instance: Instance) -> float:
    """Seconds a ping takes (as root, who may connect to the instance's 0600 socket)."""
    started = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(instance.root / "minipipe.sock"))
        sock.sendall(b'{"v": 1, "op": "ping"}\n')
        assert json.loads(sock.makefile().readline())["ok"]
    return time.monotonic() - started


def _probe_children(instance: Instance) -> list[int]:
    assert instance.daemon is not None
    return children_of(instance.daemon.pid)


def _answers_in_a_child(paths: list[str], user: str | None = None,
                        openat2: bool = True) -> list[str | None]:
    """DirectoryProber.answer_now in its own process: if it ever waited on the hung
    filesystem, this test would fail at the timeout instead of hanging. Without
    `openat2`, the prober walks as it does where a seccomp filter refuses that call."""
    code = ("import json, pwd, sys\n"
            "from minipipe_svc.identity import DirectoryProber, identity_of\n"
            "user, paths, openat2 = json.loads(sys.argv[1])\n"
            "who = identity_of(pwd.getpwnam(user)) if user else None\n"
            "prober = DirectoryProber()\n"
            "prober.has_openat2 = None if openat2 else False\n"
            "print(json.dumps(prober.answer_now(who, paths)))\n")
    result = subprocess.run([sys.executable, "-c", code, json.dumps([user, paths, openat2])],
                            capture_output=True, text=True, timeout=20, check=True)
    return json.loads(result.stdout)


def test_a_cwd_that_never_answers_times_out_while_the_daemon_keeps_serving(
        instance: Instance, hung: Path) -> None:
    instance.start_daemon()
    plan = instance.plan("hung", f'[[steps]]\nid = "build"\nrun = ["true"]\n'
                                 f'cwd = "{hung}/src"\n')
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        submit = pool.submit(instance.cli, "submit", plan, check=False)
        wait_for(lambda: _probe_children(instance), 10, "the probe child", interval=0.01)
        # Another client, meanwhile: answered at once.
        assert _ping(instance) < 0.5
        assert _probe_children(instance), "the ping must come while the probe waits"
        result = submit.result(timeout=30)
    took = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert (f"{plan}: step 'build': working directory {hung}/src did not answer within 3 s "
            "(a hung network or FUSE filesystem?)") in result.stderr
    assert 3.0 <= took < 6.0, took
    with instance.store() as store:
        assert store.list_runs(limit=None) == []
    # The child was killed and reaped; the daemon is as healthy as before.
    wait_for(lambda: not _probe_children(instance), 10, "the probe child to be reaped")
    assert instance.daemon is not None and instance.daemon.poll() is None
    run_id = instance.submit('[[steps]]\nid = "a"\nrun = ["true"]\n')
    instance.wait_state(run_id, "SUCCEEDED")


def test_a_symlink_onto_a_filesystem_that_never_answers_is_not_trusted(
        instance: Instance, hung: Path) -> None:
    """The path's text is on the local disk; the kernel's lookup would not be."""
    instance.start_daemon()
    link = instance.root / "link"
    link.symlink_to(hung / "src")
    result = instance.cli("submit", instance.plan(
        "link", f'[[steps]]\nid = "a"\nrun = ["true"]\ncwd = "{link}"\n'), check=False)
    assert result.returncode == 2, result.stderr
    assert f"working directory {link} did not answer within 3 s" in result.stderr
    assert _ping(instance) < 0.5


def test_probes_waiting_at_once_are_capped_per_user(instance: Instance, hung: Path) -> None:
    instance.start_daemon()
    plan = instance.plan("hung", f'[[steps]]\nid = "a"\nrun = ["true"]\ncwd = "{hung}"\n')
    count = MAX_PROBE_CHILDREN_PER_USER + 1
    with ThreadPoolExecutor(count) as pool:
        results = list(pool.map(lambda _: instance.cli("submit", plan, check=False),
                                range(count)))
    timed_out = [r for r in results if "did not answer within 3 s" in r.stderr]
    busy = [r for r in results if "try again in a few seconds" in r.stderr]
    assert (len(timed_out), len(busy)) == (MAX_PROBE_CHILDREN_PER_USER, 1), results
    assert busy[0].returncode == 1 and "waiting for 4 of your working directories" \
        in busy[0].stderr
    # Once they are reaped the places are free again.
    wait_for(lambda: not _probe_children(instance), 10, "the probe children to be reaped")
    again = instance.cli("submit", plan, check=False)
    assert "did not answer within 3 s" in again.stderr


@pytest.mark.parametrize("openat2", [True, False], ids=["openat2", "name-by-name"])
def test_local_paths_are_answered_in_process_and_others_left_to_a_child(
        tmp_path: Path, hung: Path, tmpfs: Path, openat2: bool) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("")
    (tmp_path / "inside").symlink_to("dir")  # stays on its filesystem
    (tmpfs / "sub").mkdir()
    (tmpfs / "out").symlink_to(tmp_path / "dir")  # leaves the tmpfs mount
    paths = [tmp_path / "dir", tmp_path / "missing", tmp_path / "file", tmp_path / "inside",
             tmpfs / "sub", tmpfs / "out", hung, hung / "deeper", Path("/")]
    # Name by name no link is followed: one on the way is a child's to follow.
    assert _answers_in_a_child([str(p) for p in paths], openat2=openat2) == [
        "ok", "missing", "missing", "ok" if openat2 else None, "ok", None, None, None, "ok"]


@pytest.mark.parametrize("openat2", [True, False], ids=["openat2", "name-by-name"])
def test_the_in_process_answer_is_the_users(tmp_path: Path, tmpfs: Path,
                                            openat2: bool) -> None:
    """Asked as the user, through a mount point: root's own access does not count."""
    user = unprivileged_user()
    assert user is not None
    private = tmpfs / "private"
    (private / "x").mkdir(parents=True)
    private.chmod(0o700)
    own = tmpfs / "own"
    own.mkdir(mode=0o700)
    os.chown(own, user.pw_uid, user.pw_gid)
    for parent in tmp_path.parents:
        parent.chmod(parent.stat().st_mode | 0o001)
    tmp_path.chmod(0o755)
    assert _answers_in_a_child([str(private / "x"), str(own), str(own / "nope")],
                               user.pw_name, openat2) == ["denied", "ok", "missing"]


def test_a_probe_child_asks_as_the_user_and_answers_each_path(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to become another user")
    user = unprivileged_user()
    assert user is not None
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    for parent in tmp_path.parents:
        parent.chmod(parent.stat().st_mode | 0o001)
    tmp_path.chmod(0o755)
    prober = DirectoryProber()
    try:
        pending = prober.start_child(identity_of(pwd.getpwnam(user.pw_name)),
                                     [str(tmp_path), str(private), str(tmp_path / "no")],
                                     user.pw_uid)
        assert wait_for(pending.read, 10, "the child's answers", interval=0.01)
        assert pending.answers == ["ok", "denied", "missing"]
        wait_for(lambda: not prober.reap() and not prober.children, 10, "the child reaped")
    finally:
        prober.close()


def test_mount_changes_are_noticed_without_reading_the_table_again(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount")
    table = MountTable()
    try:
        assert table.tree() is not None and not table.changed()
        point = tmp_path / "m"
        point.mkdir()
        _mount("minipipe-test", point, "tmpfs", "mode=0755")
        try:
            assert table.changed()
            tree = table.tree()
            assert tree is not None and not table.changed()
            assert [m.fstype for m in tree.chain(str(point / "x")) or []][-1] == "tmpfs"
        finally:
            _unmount(point)
        assert table.changed()
    finally:
        table.close()


def test_a_killed_daemon_takes_its_waiting_probe_children_with_it(
        instance: Instance, hung: Path) -> None:
    instance.start_daemon()
    plan = instance.plan("hung", f'[[steps]]\nid = "a"\nrun = ["true"]\ncwd = "{hung}"\n')
    with ThreadPoolExecutor(1) as pool:
        submit = pool.submit(instance.cli, "submit", plan, check=False)
        children = wait_for(lambda: _probe_children(instance), 10, "the probe child",
                            interval=0.01)
        instance.stop_daemon(signal.SIGKILL)
        assert submit.result(timeout=30).returncode != 0
    for pid in children:
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists()
                 or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3],
                 10, "the probe child to die with the daemon")
