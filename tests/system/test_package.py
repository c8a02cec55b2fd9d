"""The Debian package's whole life in a clean container: install, use, upgrade, remove, purge."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from minipipe_svc import __version__
from minipipe_svc.store import SCHEMA_VERSION
from tests.integration.conftest import wait_for

from .conftest import OPERATOR, OUTSIDER, Box, add_users, install_deb
from .container import Container

GATE = "/srv/upgrade-gate"
SQL = "python3 -c \"import sqlite3, sys; c = sqlite3.connect('/var/lib/minipipe/state.db'); " \
      "print(c.execute(sys.argv[1]).fetchall()); c.commit()\""
STATE, LOGS, RUN = "/var/lib/minipipe", "/var/log/minipipe", "/run/minipipe"
SOCKET = f"{RUN}/api.sock"
CONNECT = f"python3 -c \"import socket; socket.socket(socket.AF_UNIX).connect('{SOCKET}')\""
UNITS = " ".join(f"/usr/lib/systemd/system/minipipe.{kind}"
                 for kind in ("service", "socket", "slice"))
# What `systemd-analyze security minipipe.service` may say at most: 2.6 in 0.1.0, and
# still (ProtectHome=no, for steps that build in their home, is paid for by UMask=0077).
SECURITY_EXPOSURE = 2.6


def test_lintian_reports_no_errors_or_warnings(deb: Path) -> None:
    if shutil.which("lintian") is None:
        raise AssertionError("lintian is not installed; `bash scripts/test` installs it")
    result = subprocess.run(["lintian", "--fail-on", "error,warning", str(deb)],
                            capture_output=True, text=True)
    tags = [line for line in result.stdout.splitlines() if line[:2] in ("E:", "W:")]
    assert result.returncode == 0 and not tags, result.stdout + result.stderr


def bumped(deb: Path, tmp_path: Path, version: str) -> Path:
    """The same package with a newer version: what an upgrade looks like to dpkg."""
    tree = tmp_path / "tree"
    tmp_path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    control.write_text("".join(
        f"Version: {version}\n" if line.startswith("Version:") else line
        for line in control.read_text().splitlines(keepends=True)))
    out = tmp_path / f"minipipe_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(out)], check=True,
                   capture_output=True)
    return out


def stat(box: Container, path: str) -> list[str]:
    return box.sh(f"stat -c '%a %U %G' {path}").stdout.split()


def state(box: Container, unit: str) -> str:
    return box.sh(f"systemctl is-active {unit}", check=False).stdout.strip()


def without_procps(box: Container, command: str) -> str:
    """`command`'s output with /bin/kill (procps, which minipipe does not depend on)
    out of the way, as on a minimal bookworm; the image has procps for openssh-server."""
    return box.sh(f"kill=$(readlink -f /bin/kill); mv $kill /root/kill.aside; "
                  f"{{ {command}; }} 2>&1; status=$?; mv /root/kill.aside $kill; exit $status"
                  ).stdout


def apt_install(box: Container, deb: Path, *options: str) -> str:
    """`apt-get install` of a .deb; its output (with the maintainer scripts' stderr)."""
    box.put(deb, f"/root/{deb.name}")
    return box.sh(f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q {' '.join(options)} "
                  f"/root/{deb.name} 2>&1").stdout


def plant(box: Container, links: dict[str, str]) -> None:
    """What a step could leave in 0.1.0's group-writable directories: symlinks to files
    root's postinst must never chmod, a FIFO and a hard link where run logs belong."""
    for target in ("/etc/victim", "/etc/victim2", "/etc/victim3"):
        box.sh(f"echo secret > {target} && chmod 0600 {target}")
    for name, target in links.items():
        box.sh(f"ln -sfn {target} {name}")
    box.sh(f"rm -f {LOGS}/run-90.log && mkfifo {LOGS}/run-90.log")
    box.sh(f"ln -f /etc/victim3 {LOGS}/run-91.log")


def assert_not_followed(box: Container, output: str, links: dict[str, str]) -> None:
    for target in ("/etc/victim", "/etc/victim2", "/etc/victim3"):
        assert stat(box, target) == ["600", "root", "root"], target
        assert box.sh(f"cat {target}").stdout == "secret\n", target
    for name, target in links.items():
        assert box.sh(f"test -L {name}", check=False).returncode != 0, name
        assert f"{name} is a symlink (to {target}): removing the link, not its target" in output
    assert box.sh(f"test -e {LOGS}/run-90.log", check=False).returncode != 0
    assert f"{LOGS}/run-90.log is not a regular file: removing it" in output
    # a hard link is left alone (and its other name with it), loudly
    assert f"{LOGS}/run-91.log has other hard links" in output
    box.sh(f"rm {LOGS}/run-91.log")


def test_packaging_socket_modes_groups_and_postinst(fresh_box: Container, deb: Path,
                                                     tmp_path: Path) -> None:
    """What the package itself owns, whatever the daemon does with it: units, socket,
    users and groups, modes, and a postinst that never follows a symlink."""
    c = fresh_box
    install_deb(c, deb)
    c.sh("useradd --create-home --groups minipipe alice && useradd --create-home bob")

    # units: both enabled and started on first install; verify is clean without procps
    for unit in ("minipipe.socket", "minipipe.service"):
        assert c.sh(f"systemctl is-enabled {unit}").stdout.strip() == "enabled", unit
        assert state(c, unit) == "active", unit
    assert without_procps(c, f"systemd-analyze verify {UNITS}") == ""
    security = c.sh("systemd-analyze security --no-pager minipipe.service").stdout
    exposure = re.search(r"Overall exposure level for minipipe.service: ([\d.]+)", security)
    assert exposure and float(exposure.group(1)) <= SECURITY_EXPOSURE, security[-2000:]

    # the socket: systemd's, 0660 root:minipipe in a root-only 0755 directory
    assert c.sh("systemctl show -p Listen --value minipipe.socket").stdout.strip() == \
        f"{SOCKET} (Stream)"
    assert c.sh(f"stat -c '%a %U %G %F' {SOCKET}").stdout.split() == \
        ["660", "root", "minipipe", "socket"]
    assert stat(c, RUN) == ["755", "root", "minipipe"]
    assert stat(c, f"{RUN}/minipipe.lock")[1:] == ["root", "minipipe"]
    assert c.sh(CONNECT, user="alice", check=False).returncode == 0
    denied = c.sh(CONNECT, user="bob", check=False)
    assert denied.returncode != 0 and "PermissionError" in denied.stderr

    # users and groups; state and logs only root writes
    assert c.sh("getent passwd minipipe").stdout.split(":")[5] == "/var/lib/minipipe"
    admin = c.sh("getent group minipipe-admin").stdout.strip().split(":")
    assert admin[0] == "minipipe-admin" and int(admin[2]) < 1000, admin
    assert "g minipipe-admin -" in c.sh("cat /usr/lib/sysusers.d/minipipe.conf").stdout
    config = json.loads(c.sh("cat /etc/minipipe/config.json").stdout)
    assert {key: config.get(key) for key in ("socket_path", "run_as", "admin_group")} == {
        "socket_path": SOCKET, "run_as": "submitter", "admin_group": "minipipe-admin"}
    # Anyone passes through the state directory (never lists it) to their worktrees.
    assert stat(c, STATE) == ["751", "root", "minipipe"]
    assert stat(c, LOGS) == ["750", "root", "minipipe"]
    assert stat(c, f"{STATE}/worktrees") == ["711", "root", "root"]
    assert stat(c, f"{STATE}/state.db") == ["640", "root", "minipipe"]

    # ExecReload works without procps; the daemon keeps its pid
    pid = c.sh("systemctl show -p MainPID --value minipipe").stdout.strip()
    without_procps(c, "systemctl reload minipipe")
    assert c.sh("systemctl show -p MainPID --value minipipe").stdout.strip() == pid

    # stopping the service keeps the socket (RuntimeDirectoryPreserve); a client
    # connecting starts the service again
    c.sh("systemctl stop minipipe.service")
    assert state(c, "minipipe.socket") == "active"
    c.sh(f"test -S {SOCKET}")
    c.sh(CONNECT, user="alice")
    wait_for(lambda: state(c, "minipipe.service") == "active", 30, "socket activation")

    # reinstall over what a 0.1.0 step could have planted: nothing is followed
    links = {f"{STATE}/state.db-journal": "/etc/victim", f"{LOGS}/run-89.log": "/etc/victim2"}
    plant(c, links)
    output = apt_install(c, deb, "--reinstall")
    assert_not_followed(c, output, links)

    # an upgrade from 0.1.0's layout (service stopped, as an operator may leave it):
    # setgid group-writable directories, 0660 files owned by anyone, old lock and
    # wake socket, a symlinked DB file
    c.sh("systemctl stop minipipe.service")
    c.sh(f"chmod 2770 {STATE} {LOGS} && chmod 0750 {RUN}")
    c.sh(f"chmod 0660 {STATE}/state.db && touch {STATE}/state.db-wal {STATE}/state.db.lock "
         f"{STATE}/minipipe.sock {RUN}/wake.sock {LOGS}/run-1.log")
    c.sh(f"chown alice:minipipe {STATE}/state.db-wal && chmod 0660 {STATE}/state.db-wal")
    c.sh(f"chown minipipe:minipipe {LOGS}/run-1.log && chmod 0664 {LOGS}/run-1.log")
    links = {f"{STATE}/state.db-shm": "/etc/victim", f"{LOGS}/run-2.log": "/etc/victim2",
             f"{STATE}/state.db.lock": "/etc/victim3"}
    plant(c, links)
    output = apt_install(c, bumped(deb, tmp_path, f"{__version__}+upgrade1"))
    assert c.sh("dpkg-query -W -f='${Version}' minipipe").stdout == f"{__version__}+upgrade1"
    assert_not_followed(c, output, links)
    # Anyone passes through the state directory (never lists it) to their worktrees.
    assert stat(c, STATE) == ["751", "root", "minipipe"]
    assert stat(c, LOGS) == ["750", "root", "minipipe"]
    assert stat(c, f"{STATE}/worktrees") == ["711", "root", "root"]
    for path in ("state.db", "state.db-wal"):
        assert stat(c, f"{STATE}/{path}") == ["640", "root", "minipipe"], path
    assert stat(c, f"{LOGS}/run-1.log") == ["640", "root", "minipipe"]
    for stale in (f"{STATE}/minipipe.sock", f"{RUN}/wake.sock"):
        assert c.sh(f"test -e {stale}", check=False).returncode != 0, stale
    # try-restart: a stopped scheduler stays stopped, its socket keeps listening
    assert state(c, "minipipe.service") == "inactive"
    assert state(c, "minipipe.socket") == "active"
    c.sh("systemctl start minipipe.service")
    assert stat(c, RUN) == ["755", "root", "minipipe"]

    # an upgrade restarts a running scheduler
    pid = c.sh("systemctl show -p MainPID --value minipipe").stdout.strip()
    install_deb(c, bumped(deb, tmp_path / "second", f"{__version__}+upgrade2"))
    wait_for(lambda: state(c, "minipipe.service") == "active", 30, "the restarted service")
    assert c.sh("systemctl show -p MainPID --value minipipe").stdout.strip() != pid

    # remove stops both and removes the socket file; purge removes state and /run/minipipe
    c.sh("DEBIAN_FRONTEND=noninteractive apt-get remove -y -q minipipe")
    for unit in ("minipipe.socket", "minipipe.service"):
        assert state(c, unit) in ("inactive", "unknown"), unit
    assert c.sh(f"test -e {SOCKET}", check=False).returncode != 0
    c.sh(f"test -s {STATE}/state.db")
    c.sh("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q minipipe")
    for path in (STATE, LOGS, RUN):
        assert c.sh(f"test -e {path}", check=False).returncode != 0, path
    c.sh("getent group minipipe-admin && getent group minipipe")


def test_install_use_upgrade_remove_purge(fresh_box: Container, deb: Path,
                                          tmp_path: Path) -> None:
    c = fresh_box
    install_deb(c, deb)

    # installed: a running, enabled service, its user and group (modes, socket and
    # groups: test_packaging_socket_modes_groups_and_postinst)
    assert c.sh("systemctl is-active minipipe").stdout.strip() == "active"
    assert c.sh("systemctl is-enabled minipipe").stdout.strip() == "enabled"
    user = c.sh("getent passwd minipipe").stdout.strip().split(":")
    assert user[5] == "/var/lib/minipipe"
    assert user[6] in ("/usr/sbin/nologin", "/bin/false")
    assert c.sh("getent group minipipe", check=False).returncode == 0
    assert "/etc/minipipe/config.json" in c.sh(
        "dpkg-query -W -f='${Conffiles}' minipipe").stdout
    assert c.sh("/usr/bin/minipipe --version").stdout.strip() == f"minipipe, version {__version__}"
    monitor_help = c.sh("/usr/bin/minipipe-monitor --help").stdout
    assert "read-only" in monitor_help and "--poll-interval" in monitor_help
    # Textual comes from the package's private directory, not from anywhere else
    where = c.sh("python3 -c 'import sys; sys.path.insert(0, \"/usr/lib/minipipe/vendor\"); "
                 "import textual; print(textual.__file__)'").stdout.strip()
    assert where.startswith("/usr/lib/minipipe/vendor/textual/")
    assert c.sh("python3 -c 'import textual'", check=False).returncode != 0, \
        "Textual must stay private to minipipe-monitor"
    for page in ("man1/minipipe.1.gz", "man1/minipipe-monitor.1.gz", "man5/minipipe.conf.5.gz"):
        c.sh(f"test -s /usr/share/man/{page}")
    assert "complete" in c.sh("cat /usr/share/bash-completion/completions/minipipe").stdout
    c.sh("test -s /usr/share/doc/minipipe/README.md")

    # an operator in group minipipe runs a plan; its steps run in its scope as them
    add_users(c)
    box = Box(c)
    run_id = box.submit('[[steps]]\nid = "who"\nrun = ["id", "-un"]\n')
    box.wait_state(run_id, "SUCCEEDED")
    assert box.minipipe(f"logs --raw {run_id}").stdout.split() == [OPERATOR]
    assert box.minipipe(f"logs -f --raw {run_id}").stdout.split() == [OPERATOR]

    # a user outside the group is turned away cleanly
    for args in ("ls", f"show {run_id}", "status"):
        denied = box.minipipe(args, user=OUTSIDER, check=False)
        assert denied.returncode == 1, denied
        assert "permission denied" in denied.stderr
        assert "add yourself to group minipipe" in denied.stderr
    denied = c.sh("minipipe submit -", user=OUTSIDER, check=False,
                  input='[[steps]]\nid = "a"\nrun = ["true"]\n')
    assert denied.returncode == 1 and "add yourself to group minipipe" in denied.stderr
    assert "Traceback" not in denied.stderr

    # upgrade with a run in flight: the service restarts, the run finishes, the DB migrates
    c.sh(f"mkdir -p {GATE} && chmod 1777 {GATE}")
    flight = box.submit(f'[[steps]]\nid = "wait"\nrun = "touch {GATE}/started; '
                        f'while [ ! -e {GATE}/open ]; do sleep 0.1; done; echo done"\n'
                        f'[[steps]]\nid = "after"\nrun = ["echo", "after the upgrade"]\n')
    wait_for(lambda: c.sh(f"test -e {GATE}/started", check=False).returncode == 0, 60,
             "the run to start")
    # as an older minipipe would have left it: schema version 1 (0.1.0 had 3), so the
    # run in flight has no recorded identity and the new daemon must still finish it
    for undo in ("DROP TABLE run_dependencies", "ALTER TABLE runs DROP COLUMN not_before",
                 "ALTER TABLE runs DROP COLUMN pool", "ALTER TABLE runs DROP COLUMN slot",
                 "ALTER TABLE runs DROP COLUMN group_id", "ALTER TABLE runs DROP COLUMN group_max",
                 "ALTER TABLE runs DROP COLUMN usage", "ALTER TABLE steps DROP COLUMN usage",
                 "DROP TABLE workspaces",
                 "DROP INDEX runs_by_submitter", "ALTER TABLE runs DROP COLUMN submitted_uid",
                 "ALTER TABLE runs DROP COLUMN umask", "ALTER TABLE runs DROP COLUMN run_user",
                 "DROP INDEX runs_by_finished", "DROP TRIGGER run_counts_insert",
                 "DROP TRIGGER run_counts_update", "DROP TRIGGER run_counts_delete",
                 "DROP TABLE run_counts", "PRAGMA user_version = 1"):
        c.sh(f"{SQL} '{undo}'")
    before = box.main_pid()
    newer = bumped(deb, tmp_path, f"{__version__}+upgrade1")
    install_deb(c, newer)
    assert c.sh("dpkg-query -W -f='${Version}' minipipe").stdout == f"{__version__}+upgrade1"
    active = c.sh("systemctl is-active minipipe", check=False).stdout.strip()
    assert active == "active", c.sh("journalctl -u minipipe --no-pager -n 60").stdout
    assert box.main_pid() != before, "the upgrade restarts the scheduler"
    assert box.run(flight)["state"] == "RUNNING"
    assert c.sh(f"{SQL} 'PRAGMA user_version'").stdout.strip() == f"[({SCHEMA_VERSION},)]"
    assert json.loads(box.minipipe("status --json").stdout)["counts"]["RUNNING"] == 1
    c.sh(f"touch {GATE}/open")
    run = box.wait_state(flight, "SUCCEEDED")
    assert run["exit_code"] == 0
    assert "after the upgrade" in box.minipipe(f"logs {flight}").stdout

    # an upgrade while the operator has stopped the service leaves it stopped (try-restart)
    c.sh("systemctl stop minipipe")
    install_deb(c, bumped(deb, tmp_path / "second", f"{__version__}+upgrade2"))
    assert c.sh("systemctl is-active minipipe", check=False).stdout.strip() == "inactive"
    c.sh("systemctl start minipipe")

    # remove: the service goes, the state stays
    c.sh("DEBIAN_FRONTEND=noninteractive apt-get remove -y -q minipipe")
    assert c.sh("systemctl is-active minipipe", check=False).stdout.strip() in (
        "inactive", "unknown")
    c.sh("test -s /var/lib/minipipe/state.db && test -e /etc/minipipe/config.json")

    # purge: state, logs and config are gone (the user may stay)
    c.sh("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q minipipe")
    for path in ("/var/lib/minipipe", "/var/log/minipipe", "/etc/minipipe"):
        assert c.sh(f"test -e {path}", check=False).returncode != 0, path
    assert c.sh("dpkg-query -W -f='${Status}' minipipe", check=False).stdout.strip() in (
        "", "unknown ok not-installed")
    assert OPERATOR  # the operator's account is untouched by the purge
    c.sh(f"id {OPERATOR}")
