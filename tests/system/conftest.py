"""System tests: the real thing, in a booted Debian bookworm with systemd as PID 1.

One container per test session (booting takes seconds); minipipe is installed in
it the way the Debian package will lay it out. Tests leave the service running
with the stock config; a test that changes either restores it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import wait_for

from .container import Container, build_deb, install_deb, rootfs

ROOT = Path(__file__).resolve().parent.parent.parent
OPERATOR = "alice"  # an unprivileged user in group minipipe
OUTSIDER = "bob"  # an unprivileged user outside it


def _missing_tools() -> list[str]:
    return [tool for tool in ("systemd-nspawn", "debootstrap", "nsenter")
            if shutil.which(tool) is None]


def add_users(box: Container) -> None:
    box.sh(f"useradd --create-home --groups minipipe,systemd-journal {OPERATOR}")
    box.sh(f"useradd --create-home {OUTSIDER}")
    box.sh("useradd --create-home --groups minipipe carol")  # a second operator
    box.sh("useradd --create-home --groups minipipe,minipipe-admin dave")  # an admin


class Box:
    """The container plus minipipe-specific helpers."""

    def __init__(self, container: Container) -> None:
        self.c = container

    def sh(self, command: str, **kwargs: Any):
        return self.c.sh(command, **kwargs)

    def minipipe(self, args: str, *, user: str | None = OPERATOR, check: bool = True,
                 input: str | None = None):
        result = self.c.sh(f"minipipe {args}", user=user, check=False, input=input)
        assert "Traceback" not in result.stderr, result.stderr
        if check:
            assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result

    def submit(self, plan: str, *, user: str | None = OPERATOR) -> int:
        return int(self.minipipe("submit -", user=user, input=plan).stdout)

    def run(self, run_id: int) -> dict[str, Any]:
        return json.loads(self.minipipe(f"show --json --events 50 {run_id}").stdout)

    def approve(self, run_id: int, *, user: str | None = "dave", extra: str = "",
                check: bool = True):
        """`minipipe approve RUN --commit HEAD`, naming the change the run holds now."""
        head = self.run(run_id)["workspace"]["head_commit"]
        return self.minipipe(f"approve {run_id} --commit {head} {extra}", user=user,
                             check=check)

    def wait_state(self, run_id: int, *states: str, timeout: float = 60.0) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            run = self.run(run_id)
            return run if run["state"] in states else None

        return wait_for(reached, timeout, f"run {run_id} to reach {states}", interval=0.2)

    def main_pid(self) -> int:
        return int(self.sh("systemctl show -p MainPID --value minipipe").stdout)

    def property(self, unit: str, name: str) -> str:
        return self.sh(f"systemctl show -p {name} --value {unit}").stdout.strip()

    def journal(self, args: str) -> list[str]:
        return self.sh(f"journalctl --no-pager -q -o cat {args}").stdout.splitlines()

    def restore_service(self) -> None:
        """Back to the stock config and no drop-ins, service active."""
        self.c.write("/etc/minipipe/config.json",
                     (ROOT / "packaging" / "config.json").read_text())
        self.sh("chown root:root /etc/minipipe/config.json")
        self.sh("rm -rf /etc/systemd/system/minipipe.service.d && systemctl daemon-reload")
        self.sh("systemctl reset-failed minipipe; systemctl restart minipipe")
        self.sh("minipipe resume")


@contextlib.contextmanager
def minipipe_box(prefix: str, log: Path, deb: Path, disk: Path | None = None) -> Iterator[Box]:
    """A booted container with the package installed and the test users added."""
    container = Container(rootfs(), f"{prefix}-{uuid.uuid4().hex[:8]}", log, disk=disk)
    container.boot()
    try:
        install_deb(container, deb)
        add_users(container)
        yield Box(container)
    finally:
        container.shutdown()
        container.release_disk()


@pytest.fixture(scope="session")
def box(tmp_path_factory: pytest.TempPathFactory, deb: Path) -> Iterator[Box]:
    log = tmp_path_factory.mktemp("container") / "console.log"
    with minipipe_box("minipipe-test", log, deb) as booted:
        yield booted


@pytest.fixture(scope="session")
def deb() -> Path:
    missing = _missing_tools()
    if os.geteuid() != 0 or missing:
        pytest.fail("the system tests need root and systemd-nspawn, debootstrap, nsenter "
                    f"(missing: {missing}); `bash scripts/test` installs them", pytrace=False)
    return build_deb()


@pytest.fixture
def fresh_box(tmp_path: Path, deb: Path) -> Iterator[Container]:
    """A container of its own, without minipipe, for install/upgrade/purge stories."""
    container = Container(rootfs(), f"minipipe-pkg-{uuid.uuid4().hex[:8]}",
                          tmp_path / "console.log")
    container.boot()
    try:
        yield container
    finally:
        container.shutdown()


@pytest.fixture
def service(box: Box) -> Iterator[Box]:
    """The installed service, active, with the stock config; restored after the test."""
    assert box.sh("systemctl is-active minipipe", check=False).stdout.strip() == "active"
    yield box
    box.restore_service()
