"""minipipe-monitor for real: over SSH as an operator, inside tmux, in the container."""

from __future__ import annotations

import json
import re

from tests.integration.conftest import wait_for

from .conftest import OPERATOR, Box

SSH = ("ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
       f"-o LogLevel=ERROR {OPERATOR}@127.0.0.1")
GATE = "/srv/monitor-gate"


def enable_ssh(box: Box) -> None:
    box.sh("mkdir -p /root/.ssh && test -e /root/.ssh/id_ed25519 || "
           "ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/id_ed25519")
    box.sh(f"install -d -m 700 -o {OPERATOR} -g {OPERATOR} /home/{OPERATOR}/.ssh && "
           f"install -m 600 -o {OPERATOR} -g {OPERATOR} /root/.ssh/id_ed25519.pub "
           f"/home/{OPERATOR}/.ssh/authorized_keys")
    box.c.write("/etc/ssh/sshd_config.d/minipipe-test.conf",
                "ListenAddress 127.0.0.1\nPasswordAuthentication no\n")
    box.sh("systemctl restart ssh")
    wait_for(lambda: box.sh(f"{SSH} true", check=False).returncode == 0, 30, "sshd")


def test_operator_watches_a_run_over_ssh_in_tmux(service: Box) -> None:
    enable_ssh(service)
    service.sh(f"mkdir -p {GATE} && chmod 1777 {GATE} && rm -f {GATE}/*")
    run_id = service.submit(f'name = "watched"\n[[steps]]\nid = "talk"\n'
                            f'run = "echo hello-over-ssh; echo warn-line >&2; '
                            f'while [ ! -e {GATE}/open ]; do sleep 0.1; done"\n')
    service.wait_state(run_id, "RUNNING")
    service.sh(f"{SSH} tmux new-session -d -s mon -x 100 -y 30 minipipe-monitor")
    try:
        def screen() -> str:
            return service.sh(f"{SSH} tmux capture-pane -p -t mon", check=False).stdout

        wait_for(lambda: "watched" in screen() and "RUNNING" in screen(), 30,
                 "the running run on the monitor")
        wait_for(lambda: "talk │ hello-over-ssh" in screen(), 30, "its output on the monitor")
        assert "talk │ warn-line" in screen()
        # 16 colours and NO_COLOR, in two more sessions over the same SSH
        service.sh(f"{SSH} tmux new-session -d -s mon16 -x 80 -y 24 "
                   "env TEXTUAL_COLOR_SYSTEM=standard minipipe-monitor")
        service.sh(f"{SSH} tmux new-session -d -s mono -x 80 -y 24 "
                   "env NO_COLOR=1 minipipe-monitor")

        def styled(session: str) -> str:
            return service.sh(f"{SSH} tmux capture-pane -e -p -t {session}",
                              check=False).stdout

        wait_for(lambda: "watched" in styled("mon16") and "watched" in styled("mono"), 30,
                 "the 16-colour and no-colour monitors")
        sixteen = styled("mon16")
        assert "\x1b[" in sixteen, "16 colours still has colour"
        assert "38;5;" not in sixteen and "38;2;" not in sixteen, "only the 16 base colours"
        # NO_COLOR: Textual draws in shades of grey only (no hue anywhere)
        mono = styled("mono")
        indexed = [int(n) for n in re.findall(r"[34]8;5;(\d+)", mono)]
        assert indexed, "the screen was captured with its attributes"
        assert all(n in (0, 7, 8, 15, 16, 231) or n >= 232 for n in indexed), sorted(set(indexed))
        assert not re.search(r"\x1b\[(?:[0-9;]*;)?(?:3[1-6]|4[1-6]|9[1-6])m", mono)
        service.sh(f"touch {GATE}/open")
        wait_for(lambda: "SUCCEEDED" in screen(), 30, "the monitor to show the end")
        service.sh(f"{SSH} tmux send-keys -t mon q")
        wait_for(lambda: service.sh(f"{SSH} tmux has-session -t mon",
                                    check=False).returncode != 0, 15, "q to quit the monitor")
    finally:
        service.sh(f"{SSH} tmux kill-server", check=False)


def test_the_monitor_shows_a_running_runs_live_usage_from_its_scope(service: Box) -> None:
    """As the operator over SSH: the selected running run's CPU so far, read from its
    scope's cgroup at each tick (marked live), growing while a step burns CPU; after
    the run, what its runner recorded."""
    enable_ssh(service)
    service.sh(f"mkdir -p {GATE} && chmod 1777 {GATE} && rm -f {GATE}/*")
    burn = f"import os\nwhile not os.path.exists('{GATE}/stop'): pass"
    run_id = service.submit(f'name = "burner"\n[[steps]]\nid = "burn"\n'
                            f'run = {json.dumps(["python3", "-c", burn])}\n')
    service.wait_state(run_id, "RUNNING")
    service.sh(f"{SSH} tmux new-session -d -s live -x 160 -y 40 "
               "minipipe-monitor --poll-interval 0.5")
    try:
        def screen() -> str:
            return service.sh(f"{SSH} tmux capture-pane -p -t live", check=False).stdout

        def live_cpu() -> float | None:
            found = re.search(r"live cpu (\d+\.\d\d)s", screen())
            return float(found.group(1)) if found else None

        # CPU of a step still running: only its scope's cgroup knows it (a step's
        # rusage comes with its end), so a figure here was read from the scope.
        first = wait_for(live_cpu, 30, "the live figures of the running run")
        wait_for(lambda: (live_cpu() or 0) >= first + 1.0, 30, "the live CPU to grow")
        service.sh(f"touch {GATE}/stop")
        wait_for(lambda: "used cpu " in screen(), 30, "the recorded figures after the run")
        recorded = service.run(run_id)["usage"]
        assert f"used cpu {recorded['cpu_seconds']:.2f}s" in screen()
        assert recorded["cpu_seconds"] >= first + 1.0
    finally:
        service.sh(f"{SSH} tmux kill-server", check=False)
