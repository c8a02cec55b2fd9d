"""minipipe.service under real systemd: notify, status, reload, stop, watchdog."""

from __future__ import annotations

import re
import time

from tests.integration.conftest import wait_for

from .conftest import ROOT, Box

HELLO = (ROOT / "examples" / "hello.toml").read_text()


def test_units_pass_systemd_analyze_verify(box: Box) -> None:
    result = box.sh("systemd-analyze verify /usr/lib/systemd/system/minipipe.service "
                    "/usr/lib/systemd/system/minipipe.slice", check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_start_is_active_with_a_live_status_line(service: Box) -> None:
    assert service.property("minipipe", "Type") == "notify"
    assert service.property("minipipe", "ActiveState") == "active"
    status = service.property("minipipe", "StatusText")
    assert re.fullmatch(r"\d+/4 running · \d+ pending · \d+ done( · paused)?", status), status
    shown = service.sh("systemctl status --no-pager minipipe", check=False).stdout
    assert f'Status: "{status}"' in shown
    run_id = service.submit(HELLO)
    service.wait_state(run_id, "SUCCEEDED")
    wait_for(lambda: re.search(r" \d+ done", service.property("minipipe", "StatusText"))
             and service.property("minipipe", "StatusText") != status, 15,
             "the status line to count the finished run")


def test_reload_with_a_bad_config_keeps_the_old_one(service: Box) -> None:
    pid = service.main_pid()
    service.c.write("/etc/minipipe/config.json", '{"max_concurrent_runs": "lots"}')
    service.sh("systemctl reload minipipe")
    assert service.property("minipipe", "ActiveState") == "active"
    assert service.main_pid() == pid
    wait_for(lambda: any("reload failed, keeping the running config" in line
                         for line in service.journal("-u minipipe")), 15, "the logged refusal")
    assert re.match(r"\d+/4 running", service.property("minipipe", "StatusText"))
    service.c.write("/etc/minipipe/config.json",
                    (ROOT / "packaging" / "config.json").read_text())
    run_id = service.submit(HELLO)
    service.wait_state(run_id, "SUCCEEDED")


def test_reload_with_a_good_config_applies_it(service: Box) -> None:
    config = (ROOT / "packaging" / "config.json").read_text().replace(
        '"max_concurrent_runs": 4', '"max_concurrent_runs": 6')
    service.c.write("/etc/minipipe/config.json", config)
    service.sh("systemctl reload minipipe")
    assert service.property("minipipe", "ActiveState") == "active"
    wait_for(lambda: re.match(r"\d+/6 running", service.property("minipipe", "StatusText")),
             15, "the status line to show the new cap")


def test_stop_is_clean_and_start_again(service: Box) -> None:
    service.sh("systemctl stop minipipe")
    assert service.property("minipipe", "ActiveState") == "inactive"
    assert service.property("minipipe", "Result") == "success"
    assert any("daemon stopped" in line for line in service.journal("-u minipipe"))
    service.sh("systemctl start minipipe")
    assert service.property("minipipe", "ActiveState") == "active"


def test_watchdog_restarts_a_hung_daemon(service: Box) -> None:
    service.c.write("/etc/systemd/system/minipipe.service.d/watchdog.conf",
                    "[Service]\nWatchdogSec=3s\n")
    service.sh("systemctl daemon-reload && systemctl restart minipipe")
    hung = service.main_pid()
    time.sleep(7)  # two watchdog intervals: a healthy loop keeps pinging
    assert service.main_pid() == hung, "a healthy daemon must not be restarted"
    service.sh(f"kill -STOP {hung}")
    wait_for(lambda: service.main_pid() not in (hung, 0)
             and service.property("minipipe", "ActiveState") == "active", 30,
             "the watchdog to restart the daemon")
    assert any("Watchdog timeout" in line for line in service.journal("-u minipipe"))
    run_id = service.submit(HELLO)
    service.wait_state(run_id, "SUCCEEDED")
