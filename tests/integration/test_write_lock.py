"""A group member holding the DB's write lock: the daemon stays healthy, then resumes.

Anyone who may open state.db-shm may take a read lock on byte 120, SQLite's WAL
write lock, and keep every writer waiting. The daemon cannot stop that (it does
not kill), but it must not let it cost its watchdog: it keeps looping and pinging,
says who holds the lock, refuses writes at once, and writes again when it is free.
The watchdog is observed as systemd would see it: the daemon is given a
NOTIFY_SOCKET and WATCHDOG_USEC, and this test is the service manager.
"""

from __future__ import annotations

import itertools
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from minipipe_svc.daemon import DAEMON_BUSY_TIMEOUT_MS

from .conftest import Instance, wait_for

WATCHDOG_SECONDS = 6.0  # the daemon then wakes every 2 s (a third of it)

HOLD_THE_WRITE_LOCK = """
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDONLY)  # what a group member may do
fcntl.fcntl(fd, fcntl.F_SETLK, struct.pack("hhqqi", fcntl.F_RDLCK, 0, 120, 1, 0))
print("held", flush=True)
sys.stdin.read()  # until the test lets go
"""


class ServiceManager:
    """The notify socket's end: every datagram the daemon sends, with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        path.chmod(0o777)  # the daemon runs as the test user
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self.open = True
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.thread.start()

    def _listen(self) -> None:
        while self.open:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode("utf-8", "replace")))

    def pings(self, since: float) -> list[float]:
        return [at for at, text in self.messages if at >= since and "WATCHDOG=1" in text]

    def statuses(self) -> list[str]:
        return [line[7:] for _at, text in self.messages for line in text.splitlines()
                if line.startswith("STATUS=")]

    def close(self) -> None:
        self.open = False
        self.thread.join()
        self.sock.close()


@pytest.fixture
def manager(instance: Instance, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServiceManager]:
    manager = ServiceManager(instance.root / "notify")
    # Inherited by the daemon that start_daemon() starts (and ignored by the CLI).
    monkeypatch.setenv("NOTIFY_SOCKET", str(instance.root / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", str(int(WATCHDOG_SECONDS * 1e6)))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield manager
    manager.close()


def _holder(instance: Instance) -> tuple[subprocess.Popen[str], str]:
    """A process of a group member (not the daemon's user) holding the write lock."""
    options: dict[str, object] = {}
    name = pwd.getpwuid(os.getuid()).pw_name
    if os.geteuid() == 0:
        # nobody, with the DB's group as a supplementary one: a group member.
        group = instance.db_path.stat().st_gid
        instance.root.chmod(0o750)
        options = {"user": "nobody", "group": "nogroup", "extra_groups": [group]}
        name = "nobody"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_WRITE_LOCK, f"{instance.db_path}-shm"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **options)  # type: ignore[call-overload]
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder, name


def _request(instance: Instance, request: dict[str, object]) -> tuple[float, dict]:
    """One request as root (who may connect to the instance's 0600 socket): how many
    seconds its answer took, and the answer."""
    started = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(instance.root / "minipipe.sock"))
        sock.sendall(json.dumps(request).encode() + b"\n")
        reply = json.loads(sock.makefile().readline())
    return time.monotonic() - started, reply


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_foreign_write_lock_leaves_the_daemon_healthy_and_writes_resume(
        instance: Instance, manager: ServiceManager) -> None:
    daemon = instance.start_daemon()
    gated = instance.submit(f'[[steps]]\nid = "a"\nrun = "{instance.gated()}"\n')
    instance.wait_started()
    with instance.store() as store:
        runner_pid = store.get_run(gated).runner_pid
    holder, holder_user = _holder(instance)
    held = time.monotonic()
    plan = instance.plan("p", '[[steps]]\nid = "a"\nrun = ["true"]\n')
    try:
        # The first write waits the daemon's (short) busy timeout, then gives up.
        first = instance.cli("submit", plan, check=False)
        assert first.returncode == 1 and "locked" in first.stderr, first.stderr
        assert time.monotonic() - held < DAEMON_BUSY_TIMEOUT_MS / 1000 + 2.0
        who = f"pid {holder.pid} (user {holder_user})"
        # From now on: refused at once, with who holds it.
        refused = instance.cli("submit", plan, check=False)
        assert refused.returncode == 1
        assert f"the state DB is write-locked by {who}; writes wait" in refused.stderr
        seconds, reply = _request(instance, {"v": 1, "op": "cancel", "run": gated})
        assert reply["error"] == "unavailable" and "write-locked" in reply["message"]
        assert seconds < 0.5
        # A runner that dies meanwhile is judged later; the loop does not spin on it.
        os.kill(runner_pid, signal.SIGKILL)
        cpu = _cpu_seconds(daemon.pid)
        wait_for(lambda: f"state DB write-locked by {who}; writes wait" in
                 " ".join(manager.statuses()), 10, "the lock in the status line")
        time.sleep(WATCHDOG_SECONDS * 2 / 3)  # two of the daemon's wake-ups
        assert _cpu_seconds(daemon.pid) - cpu < 1.0, "the daemon spins"
        seconds, reply = _request(instance, {"v": 1, "op": "ping"})
        assert reply["ok"] and seconds < 0.5
        assert f"the state DB's write lock is held by {who.replace(')', ':')}" in \
            instance.daemon_log.read_text()
        with instance.store() as store:
            assert store.get_run(gated).state.value == "RUNNING"  # nothing written
    finally:
        holder.kill()
        holder.wait()
    released = time.monotonic()
    # Never a gap the watchdog would have fired on, from the lock's start to its end.
    pings = [held, *manager.pings(held), released]
    assert max(b - a for a, b in itertools.pairwise(pings)) < WATCHDOG_SECONDS
    assert daemon.poll() is None
    # Free again: the dead runner's run is judged, writes go through.
    assert instance.wait_state(gated, "INTERRUPTED", timeout=20)["reason"].startswith(
        f"runner (pid {runner_pid})")
    run_id = instance.submit('[[steps]]\nid = "a"\nrun = ["true"]\n')
    instance.wait_state(run_id, "SUCCEEDED")
    assert "write lock is free again" in instance.daemon_log.read_text()
    wait_for(lambda: "write-locked" not in manager.statuses()[-1], 10, "a clean status")
    instance.open_gate()
