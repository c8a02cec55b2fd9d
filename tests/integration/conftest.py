"""A private minipipe instance in a temp dir: real SQLite, a real daemon process, the real CLI.

A private instance is what an ordinary user runs without systemd, and a root
daemon refuses isolation "none" (its steps would run as root). So when the tests
run as root (CI does), the daemon, the CLI and therefore the steps run as an
unprivileged test user, `minipipe-it`, created here; the test itself stays root
to inspect and to attack.

Tests wait for conditions with a timeout (`wait_for`), never sleep and hope.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from minipipe_svc.server import someone_listens as is_listening
from minipipe_svc.store import Store

ROOT = Path(__file__).resolve().parent.parent.parent
TEST_USER = "minipipe-it"
# For git commits made by tests and test steps (the test user has no git config).
AUTHOR_ENV = {"GIT_AUTHOR_NAME": "Tester", "GIT_AUTHOR_EMAIL": "t@example.org",
              "GIT_COMMITTER_NAME": "Tester", "GIT_COMMITTER_EMAIL": "t@example.org"}


def unprivileged_user() -> pwd.struct_passwd | None:
    """The unprivileged user private instances run as when the tests run as root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", TEST_USER], check=True)
        return pwd.getpwnam(TEST_USER)


def hand_to(user: pwd.struct_passwd | None, root: Path) -> None:
    """Give `root` to the test user (nothing when not root). pytest's temp dirs are
    root's alone (0700): the user may pass through them (search only, no listing)."""
    if user is None:
        return
    os.chown(root, user.pw_uid, user.pw_gid)
    for parent in root.parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            os.chmod(parent, (mode & 0o7777) | 0o001)


def as_user(user: pwd.struct_passwd | None, home: Path) -> dict[str, Any]:
    """subprocess options that run a command as `user` (nothing when not root)."""
    env = {k: v for k, v in os.environ.items() if k != "MINIPIPE_CONFIG"}
    if user is None:
        return {"env": env}
    env.update(HOME=str(home), USER=user.pw_name, LOGNAME=user.pw_name)
    return {"env": env, "user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition",
             interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


class Instance:
    def __init__(self, root: Path, **config: Any) -> None:
        self.root = root
        self.user = unprivileged_user()
        self.config_path = root / "config.json"
        hand_to(self.user, root)
        self.write_config(**config)
        self.daemon: subprocess.Popen[str] | None = None
        self.daemon_log = root / "daemon.log"

    def write_config(self, **overrides: Any) -> None:
        document = {"db_path": "state.db", "isolation": "none", "poll_interval_seconds": 1.0,
                    "kill_grace_seconds": 1.0, **overrides}
        self.config_path.write_text(json.dumps(document))
        self.config_path.chmod(0o644)

    def give(self, path: Path) -> Path:
        """Hand a file or directory the test made to the user the steps run as."""
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)
        return path

    @property
    def db_path(self) -> Path:
        return self.root / "state.db"

    def store(self) -> Store:
        return Store.open(str(self.db_path), readonly=True)

    # ---------------------------------------------------------------- processes

    def start_daemon(self) -> subprocess.Popen[str]:
        log = open(self.daemon_log, "a")  # noqa: SIM115 - lives as long as the daemon
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "minipipe_svc", "--config", str(self.config_path), "daemon"],
            stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            **as_user(self.user, self.root))
        socket_path = str(self.root / "minipipe.sock")
        # A killed daemon leaves its socket file behind: wait for a listener.
        wait_for(lambda: is_listening(socket_path) or self.daemon.poll() is not None,
                 what="the daemon to listen")
        assert self.daemon.poll() is None, self.daemon_log.read_text()
        return self.daemon

    def stop_daemon(self, sig: int = signal.SIGTERM) -> int:
        assert self.daemon is not None
        self.daemon.send_signal(sig)
        code = self.daemon.wait(timeout=30)
        self.daemon = None
        return code

    def cli(self, *args: str, input: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "minipipe_svc", "--config", str(self.config_path), *args],
            capture_output=True, text=True, input=input, timeout=120,
            **as_user(self.user, self.root))
        assert "Traceback" not in result.stderr, result.stderr
        if check:
            assert result.returncode == 0, (result.stdout, result.stderr)
        return result

    def plan(self, name: str, text: str) -> str:
        path = self.root / f"{name}.toml"
        path.write_text(text)
        path.chmod(0o644)
        return str(path)

    @property
    def tag(self) -> str:
        """A marker on step processes' command lines, to find orphans by."""
        return f"minipipe-test-{self.root.name}"

    def sleeper(self, seconds: float) -> str:
        """A shell command that sleeps and is findable by `tag` (for orphan checks)."""
        return (f"{sys.executable} -c 'import sys, time; time.sleep(float(sys.argv[1]))' "
                f"{seconds} {self.tag}")

    def gated(self, then: str = "") -> str:
        """A shell step body that says it started, waits for `open_gate()`, then runs `then`."""
        body = (f"touch {self.root}/started; "
                f"while [ ! -e {self.root}/gate ]; do sleep 0.05; done")
        return f"{body}; {then}" if then else body

    def wait_started(self) -> None:
        wait_for((self.root / "started").exists, 30, "the gated step to start")

    def open_gate(self) -> None:
        (self.root / "gate").touch()

    def tagged_pids(self) -> list[int]:
        found = subprocess.run(["pgrep", "-f", self.tag], capture_output=True, text=True)
        return [int(p) for p in found.stdout.split()]

    def submit(self, text: str, *extra: str, name: str = "plan") -> int:
        return int(self.cli("submit", self.plan(name, text), *extra).stdout.strip())

    def run(self, run_id: int) -> dict[str, Any]:
        return json.loads(self.cli("show", str(run_id), "--json").stdout)

    def approve(self, run_id: int, *args: str,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        """`minipipe approve RUN --commit HEAD`, naming the change the run holds now."""
        head = self.run(run_id)["workspace"]["head_commit"]
        return self.cli("approve", str(run_id), "--commit", head, *args, check=check)

    def wait_state(self, run_id: int, *states: str, timeout: float = 60.0) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            run = self.run(run_id)
            return run if run["state"] in states else None

        return wait_for(reached, timeout, what=f"run {run_id} to reach {states}", interval=0.1)

    def close(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.stop_daemon()


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[Instance]:
    inst = Instance(tmp_path)
    yield inst
    inst.close()
    # Any step process still alive now would be an orphan the test did not catch.
    leftovers = inst.tagged_pids()
    for pid in leftovers:
        os.kill(pid, signal.SIGKILL)
    assert not leftovers, f"orphaned step processes: {leftovers}"


@pytest.fixture
def running(instance: Instance) -> Instance:
    instance.start_daemon()
    return instance
