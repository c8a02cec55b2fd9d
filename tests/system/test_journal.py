"""journald under load: what it drops on its own, and that minipipe loses nothing silently."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime

import pytest

from .conftest import Box


def journal_count(box: Box, match: str) -> int:
    return int(box.sh(f"journalctl -q -o cat {match} | wc -l").stdout)


def settled_count(box: Box, match: str, quiet: float = 2.0, timeout: float = 60.0) -> int:
    """The line count once journald has stopped adding lines for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = journal_count(box, match)
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return count
        time.sleep(0.3)
    return last


def test_journald_drops_a_raw_burst_from_one_scope(box: Box) -> None:
    """The problem minipipe works around: journald's per-unit rate limit, silently."""
    box.sh("systemd-run --scope --quiet --unit=raw-flood.scope "
           "sh -c 'seq 1 100000 | systemd-cat -t raw-flood'")
    kept = settled_count(box, "SYSLOG_IDENTIFIER=raw-flood")
    print(f"\njournald kept {kept} of 100000 lines sent as one burst from one scope")
    assert kept < 100_000
    suppressed = box.sh("journalctl -q -o cat -u systemd-journald | grep -c Suppressed",
                        check=False).stdout.strip()
    print(f"journald 'Suppressed' messages: {suppressed}")


def test_a_100k_line_step_keeps_every_line_in_the_journal(service: Box) -> None:
    run_id = service.submit('[[steps]]\nid = "flood"\nrun = "seq 1 100000"\n')
    run = service.wait_state(run_id, "SUCCEEDED", timeout=180)
    step = run["steps"][0]
    seconds = (datetime.fromisoformat(step["finished_at"])
               - datetime.fromisoformat(step["started_at"])).total_seconds()
    kept = settled_count(service, f"MINIPIPE_RUN_ID={run_id} MINIPIPE_STREAM=stdout")
    print(f"\n100000 lines through the runner into journald in {seconds:.2f} s "
          f"({100000 / max(seconds, 1e-3):,.0f} lines/s); journal holds {kept}")
    assert kept == 100_000
    logs = service.minipipe(f"logs --source journal --raw {run_id}")
    assert logs.stdout.split() == [str(i) for i in range(1, 100_001)]
    assert logs.stderr == ""
    assert service.run(run_id)["journal_lines_missing"] == 0


@pytest.fixture
def low_journald_burst(service: Box) -> Iterator[Box]:
    """journald with a burst of 1000 per 30 s, and minipipe restarted to read it.

    journald scales the configured burst with the free space of its storage:
    (log2(bytes free) - 16) / 4 times: 6.25 with 2 TiB free, enough to let all
    62000 lines below through the stock 10000 (CI failed that way once). Even
    at the largest factor (11.75), 1000 cannot cover 60000 lines of noise.
    """
    service.sh("mkdir -p /etc/systemd/journald.conf.d && printf '[Journal]\\n"
               "RateLimitIntervalSec=30s\\nRateLimitBurst=1000\\n' "
               "> /etc/systemd/journald.conf.d/zz-test-low-burst.conf")
    service.sh("systemctl restart systemd-journald && systemctl restart minipipe")
    try:
        yield service
    finally:
        service.sh("rm -f /etc/systemd/journald.conf.d/zz-test-low-burst.conf "
                   "&& systemctl restart systemd-journald && systemctl restart minipipe")


def test_lines_the_journal_lost_are_reported_and_served_from_the_file(
        low_journald_burst: Box) -> None:
    # Another sender in the same scope (the step itself, through systemd-cat) uses
    # up the unit's rate-limit budget, so journald drops minipipe's own lines too.
    service = low_journald_burst
    run_id = service.submit('[[steps]]\nid = "noisy"\n'
                            'run = "seq 1 60000 | systemd-cat -t noise; seq 1 2000"\n')
    service.wait_state(run_id, "SUCCEEDED", timeout=180)
    logs = service.minipipe(f"logs --raw {run_id}")
    assert "the journal kept" in logs.stderr and "journald dropped" in logs.stderr
    assert "complete file mirror" in logs.stderr
    assert logs.stdout.split() == [str(i) for i in range(1, 2001)]
    shown = service.minipipe(f"show {run_id}").stdout
    assert "journal:" in shown and "journald dropped" in shown
    missing = service.run(run_id)["journal_lines_missing"]
    assert missing > 0


def test_journal_lines_of_an_earlier_db_with_the_same_run_id_are_not_shown(
        service: Box) -> None:
    """Run ids start again at 1 after a purge; the journal keeps the old runs' lines."""
    import json

    listed = json.loads(service.minipipe("ls --all --json").stdout)
    next_id = max([run["id"] for run in listed], default=0) + 1
    service.sh("python3 -c \"from systemd import journal; journal.send('ghost of an old run', "
               f"MINIPIPE_RUN_ID='{next_id}', MINIPIPE_STEP_ID='old', MINIPIPE_ATTEMPT='1', "
               "MINIPIPE_STREAM='stdout', SYSLOG_IDENTIFIER='minipipe-run')\"")
    time.sleep(1.5)  # the reader looks from one second before the run's creation
    run_id = service.submit('[[steps]]\nid = "new"\nrun = ["echo", "the new run"]\n')
    assert run_id == next_id
    service.wait_state(run_id, "SUCCEEDED")
    logs = service.minipipe(f"logs {run_id}")
    assert "the new run" in logs.stdout
    assert "ghost of an old run" not in logs.stdout
    assert "journal kept" not in logs.stderr  # and no false shortfall either
    assert "ghost of an old run" in service.sh(
        f"journalctl -q -o cat MINIPIPE_RUN_ID={run_id}").stdout, "the entry is there"
