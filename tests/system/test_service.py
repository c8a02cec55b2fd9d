"""minipipe.service under real systemd: notify, status, reload, stop, watchdog."""

from __future__ import annotations

import re

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
