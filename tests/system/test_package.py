"""The Debian package's whole life in a clean container: install, use, upgrade, remove, purge."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from tests.integration.conftest import wait_for

from .conftest import OPERATOR, OUTSIDER, Box, add_users, install_deb
from .container import Container

GATE = "/srv/upgrade-gate"
SQL = "python3 -c \"import sqlite3, sys; c = sqlite3.connect('/var/lib/minipipe/state.db'); " \
      "print(c.execute(sys.argv[1]).fetchall()); c.commit()\""


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


def test_install_use_upgrade_remove_purge(fresh_box: Container, deb: Path,
                                          tmp_path: Path) -> None:
    c = fresh_box
    install_deb(c, deb)

    # installed: a running, enabled service, its user, group, dirs and files
    assert c.sh("systemctl is-active minipipe").stdout.strip() == "active"
    assert c.sh("systemctl is-enabled minipipe").stdout.strip() == "enabled"
    user = c.sh("getent passwd minipipe").stdout.strip().split(":")
    assert user[5] == "/var/lib/minipipe"
    assert user[6] in ("/usr/sbin/nologin", "/bin/false")
    assert c.sh("getent group minipipe", check=False).returncode == 0
    assert stat(c, "/var/lib/minipipe") == ["2770", "root", "minipipe"]
    assert stat(c, "/var/log/minipipe") == ["2770", "root", "minipipe"]
    assert stat(c, "/var/lib/minipipe/state.db") == ["660", "root", "minipipe"]
    assert "/etc/minipipe/config.json" in c.sh(
        "dpkg-query -W -f='${Conffiles}' minipipe").stdout
    assert c.sh("/usr/bin/minipipe --version").stdout.strip() == "minipipe, version 0.1.0"
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

    # an operator in group minipipe runs a plan; it runs in its scope as minipipe
    add_users(c)
    box = Box(c)
    run_id = box.submit('[[steps]]\nid = "who"\nrun = ["id", "-un"]\n')
    box.wait_state(run_id, "SUCCEEDED")
    assert box.minipipe(f"logs --raw {run_id}").stdout.split() == ["minipipe"]
    assert box.minipipe(f"logs -f --raw {run_id}").stdout.split() == ["minipipe"]

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
    # as an older minipipe would have left it: schema version 1
    for undo in ("DROP INDEX runs_by_finished", "DROP TRIGGER run_counts_insert",
                 "DROP TRIGGER run_counts_update", "DROP TRIGGER run_counts_delete",
                 "DROP TABLE run_counts", "PRAGMA user_version = 1"):
        c.sh(f"{SQL} '{undo}'")
    before = box.main_pid()
    newer = bumped(deb, tmp_path, "0.1.0+upgrade1")
    install_deb(c, newer)
    assert c.sh("dpkg-query -W -f='${Version}' minipipe").stdout == "0.1.0+upgrade1"
    assert c.sh("systemctl is-active minipipe").stdout.strip() == "active"
    assert box.main_pid() != before, "the upgrade restarts the scheduler"
    assert box.run(flight)["state"] == "RUNNING"
    assert c.sh(f"{SQL} 'PRAGMA user_version'").stdout.strip() == "[(3,)]"
    assert json.loads(box.minipipe("status --json").stdout)["counts"]["RUNNING"] == 1
    c.sh(f"touch {GATE}/open")
    run = box.wait_state(flight, "SUCCEEDED")
    assert run["exit_code"] == 0
    assert "after the upgrade" in box.minipipe(f"logs {flight}").stdout

    # an upgrade while the operator has stopped the service leaves it stopped (try-restart)
    c.sh("systemctl stop minipipe")
    install_deb(c, bumped(deb, tmp_path / "second", "0.1.0+upgrade2"))
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
