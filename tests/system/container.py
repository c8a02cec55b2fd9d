"""A clean Debian bookworm with systemd as PID 1, booted with systemd-nspawn on this machine.

The root filesystem is made once with debootstrap and cached outside the clone
(`MINIPIPE_TEST_CACHE`, default /var/cache/minipipe-test), keyed by its package
list. Each boot uses `--volatile=overlay`, so every session starts from the same
clean image and leaves it untouched. Commands run inside with `nsenter` into all
of the container init's namespaces. Works on a host without systemd (CI).
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

# minipipe's dependencies are in the image (apt inside has no package lists), plus
# what the monitor's over-SSH test needs, and the benchmarks' baseline (task-spooler).
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-systemd", "python3-click",
            "python3-sdnotify", "adduser", "procps", "openssh-server", "tmux", "task-spooler",
            "git")
ROOT = Path(__file__).resolve().parent.parent.parent
CACHE = Path(os.environ.get("MINIPIPE_TEST_CACHE", "/var/cache/minipipe-test"))


def host_mirror() -> str:
    """The Debian mirror the host's apt uses (never hard-coded)."""
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        text = Path(path).read_text()
        for stanza in text.split("\n\n"):
            if re.search(r"^Suites:.*\bbookworm\b", stanza, re.M) and "security" not in stanza:
                match = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
                if match and not re.search(r"^Enabled:\s*no", stanza, re.M | re.I):
                    return match.group(1)
    for path in ["/etc/apt/sources.list", *glob.glob("/etc/apt/sources.list.d/*.list")]:
        if os.path.exists(path):
            for line in Path(path).read_text().splitlines():
                match = re.match(r"deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+bookworm\s", line)
                if match:
                    return match.group(1)
    raise RuntimeError("no bookworm mirror found in the host's apt sources")


def rootfs() -> Path:
    """The cached bookworm image, made with debootstrap on first use."""
    key = hashlib.sha256(",".join(PACKAGES).encode()).hexdigest()[:12]
    path = CACHE / f"bookworm-{key}"
    if (path / ".minipipe-complete").exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (path / ".minipipe-complete").exists():
            return path
        building = CACHE / f"bookworm-{key}.building"
        shutil.rmtree(building, ignore_errors=True)
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                        "bookworm", str(building), host_mirror()],
                       check=True, stdout=subprocess.DEVNULL)
        # systemd makes a fresh machine-id on each (volatile) boot when this is empty.
        (building / "etc/machine-id").write_text("")
        # No login prompt on the console: nothing reads it.
        subprocess.run(["systemctl", f"--root={building}", "mask", "console-getty.service"],
                       check=True, capture_output=True)
        (building / ".minipipe-complete").touch()
        building.rename(path)
    return path


def build_deb() -> Path:
    """The package from this checkout, built with packaging/build-deb."""
    result = subprocess.run(["bash", str(ROOT / "packaging" / "build-deb")], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return ROOT / result.stdout.strip().splitlines()[-1]


def install_deb(box: Container, deb: Path) -> None:
    """`apt install ./minipipe_*.deb`, exactly as a user would."""
    box.put(deb, f"/root/{deb.name}")
    box.sh(f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q /root/{deb.name}")


class Container:
    """One booted container. With `disk`, its changes survive shutdown and reboot: the
    root is an overlay of the image with `disk` as the upper layer (instead of tmpfs)."""

    def __init__(self, image: Path, name: str, log_path: Path, disk: Path | None = None) -> None:
        self.image, self.name, self.log_path, self.disk = image, name, log_path, disk
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.pid = 0

    def _root(self) -> tuple[str, list[str]]:
        """The directory to boot and how (--volatile, or a persistent overlay)."""
        if self.disk is None:
            return str(self.image), ["--volatile=overlay"]
        merged = self.disk / "merged"
        if not os.path.ismount(merged):
            for part in ("upper", "work", "merged"):
                (self.disk / part).mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                            f"lowerdir={self.image},upperdir={self.disk / 'upper'},"
                            f"workdir={self.disk / 'work'}", str(merged)], check=True)
        return str(merged), []

    def release_disk(self) -> None:
        if self.disk is not None and os.path.ismount(self.disk / "merged"):
            subprocess.run(["umount", str(self.disk / "merged")], check=False)

    def boot(self, timeout: float = 120.0) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - open as long as the container
        root, volatile = self._root()
        self.nspawn = subprocess.Popen(
            ["systemd-nspawn", "-D", root, "--register=no", "--keep-unit", "--boot",
             *volatile, f"--machine={self.name}", "--console=read-only", "-q",
             # its own network namespace: the SSH test's sshd listens on the
             # container's loopback only, never on this machine's.
             "--private-network"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited: see {self.log_path}")
            children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children")
            pids = children.read_text().split() if children.exists() else []
            if pids:
                self.pid = int(pids[0])
                state = self.sh("systemctl is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the container did not finish booting in {timeout}s")

    def argv(self, command: str, user: str | None = None) -> list[str]:
        inner = ["/bin/sh", "-c", command]
        if user:
            inner = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups",
                     "--reset-env", *inner]
        return ["nsenter", "-t", str(self.pid), "-a", "--", *inner]

    def sh(self, command: str, *, check: bool = True, user: str | None = None,
           input: str | None = None, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        """Run a shell command inside (as root, or as `user` with that user's groups)."""
        result = subprocess.run(self.argv(command, user), capture_output=True, text=True,
                                input=input, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"`{command}` failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def copy_in(self, source: Path, destination: str, exclude: tuple[str, ...] = ()) -> None:
        """Copy a host directory into the container's `destination` directory.

        Packs the directory by name (not "."), so the destination keeps its own mode.
        """
        packer = subprocess.Popen(
            ["tar", "-C", str(source.parent), "--exclude=__pycache__",
             *(f"--exclude={pattern}" for pattern in exclude), "-c", source.name],
            stdout=subprocess.PIPE)
        subprocess.run(["nsenter", "-t", str(self.pid), "-a", "--", "sh", "-c",
                        f"mkdir -p {destination} && tar -C {destination} -x"],
                       stdin=packer.stdout, check=True, capture_output=True)
        assert packer.wait() == 0

    def put(self, source: Path, destination: str) -> None:
        """Copy one host file into the container."""
        with open(source, "rb") as handle:
            subprocess.run(["nsenter", "-t", str(self.pid), "-a", "--", "sh", "-c",
                            f"cat > {destination}"], stdin=handle, check=True,
                           capture_output=True)

    def write(self, path: str, content: str, mode: str = "0644") -> None:
        self.sh(f"mkdir -p \"$(dirname {path})\" && cat > {path} && chmod {mode} {path}",
                input=content)

    def wait_down(self, timeout: float = 60.0) -> int:
        """Wait for the container to end (after a poweroff, reboot or power cut)."""
        assert self.nspawn is not None
        return self.nspawn.wait(timeout=timeout)

    def power_cut(self) -> None:
        """SIGKILL the container's init: every process in it dies at once, nothing
        is flushed or stopped, as when the power goes."""
        os.kill(self.pid, signal.SIGKILL)
        self.wait_down()

    def shutdown(self) -> None:
        if self.nspawn is None or self.nspawn.poll() is not None:
            return
        self.nspawn.send_signal(signal.SIGTERM)  # nspawn turns it into a clean poweroff
        try:
            self.nspawn.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.nspawn.kill()
            self.nspawn.wait()
