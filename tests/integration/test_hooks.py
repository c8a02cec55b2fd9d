"""on_finish: the site-wide hook the daemon runs each time a run ends, through a private
daemon (as its own user: only a root daemon switches to on_finish_user)."""

from __future__ import annotations

import http.server
import threading
import time
import urllib.parse
from pathlib import Path

from .conftest import Instance, wait_for

NOTIFY = Path(__file__).parents[2] / "examples" / "on-finish-notify.sh"

RECORD = ["/bin/sh", "-c", 'printf "%s" "$MINIPIPE_RUN_OUTPUT_TAIL" > "$0/tail-$MINIPIPE_RUN_ID"'
           '; env | grep ^MINIPIPE_RUN_ > "$0/hook-$MINIPIPE_RUN_ID"']


def _hook_env(instance: Instance, run_id: int) -> dict[str, str]:
    path = instance.root / f"hook-{run_id}"
    wait_for(path.exists, 30, f"the hook for run {run_id}")
    time.sleep(0.2)  # written by a shell: let it finish the file
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_the_hook_learns_how_each_run_ended(instance: Instance) -> None:
    instance.write_config(on_finish=[*RECORD[:2], RECORD[2], str(instance.root)])
    instance.start_daemon()
    ok = instance.submit('[[steps]]\nid = "say"\nrun = "echo hello from the step"\n',
                         name="ok")
    failed = instance.submit('[[steps]]\nid = "boom"\nrun = "echo oops >&2; exit 4"\n',
                             name="broken")
    env = _hook_env(instance, ok)
    assert env["MINIPIPE_RUN_STATE"] == "SUCCEEDED" and env["MINIPIPE_RUN_NAME"] == "ok"
    assert env["MINIPIPE_RUN_EXIT_CODE"] == "0" and float(env["MINIPIPE_RUN_DURATION"]) >= 0
    assert (instance.root / f"tail-{ok}").read_text() == "say | hello from the step"
    env = _hook_env(instance, failed)
    assert (env["MINIPIPE_RUN_STATE"], env["MINIPIPE_RUN_EXIT_CODE"]) == ("FAILED", "4")
    assert env["MINIPIPE_RUN_REASON"] == "step boom: exited with status 4"
    assert (instance.root / f"tail-{failed}").read_text() == "boom | oops"
    assert env["MINIPIPE_RUN_OWNER"]
    # A restart neither repeats nor skips a hook.
    instance.stop_daemon()
    (instance.root / f"hook-{ok}").unlink()
    instance.start_daemon()
    later = instance.submit('[[steps]]\nid = "a"\nrun = "true"\n', name="later")
    assert _hook_env(instance, later)["MINIPIPE_RUN_STATE"] == "SUCCEEDED"
    assert not (instance.root / f"hook-{ok}").exists()


def test_a_hanging_or_failing_hook_never_blocks_the_scheduler(instance: Instance) -> None:
    instance.write_config(on_finish=["/bin/sh", "-c", instance.sleeper(600)],
                          on_finish_timeout_seconds=600)
    instance.start_daemon()
    first = instance.submit('[[steps]]\nid = "a"\nrun = "true"\n', name="first")
    instance.wait_state(first, "SUCCEEDED")
    hung = wait_for(instance.tagged_pids, 30, "the first hook to hang")
    runs = [instance.submit('[[steps]]\nid = "a"\nrun = "true"\n', name=f"n{n}")
            for n in range(3)]
    for run_id in runs:
        assert instance.wait_state(run_id, "SUCCEEDED")["state"] == "SUCCEEDED"
    # All ended while the first hook still hangs: nothing waited for it.
    assert set(hung) <= set(instance.tagged_pids())
    instance.stop_daemon()
    # The daemon took its hooks with it.
    assert not instance.tagged_pids()
    assert f"on_finish for run {first} stopped with the daemon" in \
        instance.daemon_log.read_text()
    instance.write_config(on_finish=["/bin/sh", "-c", instance.sleeper(600)],
                          on_finish_timeout_seconds=1.0)
    instance.start_daemon()
    timed = instance.submit('[[steps]]\nid = "a"\nrun = "true"\n', name="timed")
    instance.wait_state(timed, "SUCCEEDED")
    wait_for(lambda: f"on_finish for run {timed} did not finish within 1s: killed" in
             instance.daemon_log.read_text(), 30, "the hung hook to be killed")
    instance.stop_daemon()
    instance.write_config(on_finish=["/bin/sh", "-c", "exit 3"])
    instance.start_daemon()
    run_id = instance.submit('[[steps]]\nid = "a"\nrun = "true"\n', name="x")
    instance.wait_state(run_id, "SUCCEEDED")
    wait_for(lambda: f"on_finish for run {run_id} exited with status 3" in
             instance.daemon_log.read_text(), 30, "the failed hook to be logged")


def test_the_example_hook_posts_each_end_to_a_webhook(instance: Instance) -> None:
    """examples/on-finish-notify.sh, configured as the README says, against a real
    HTTP server: a failed run's message carries its reason and last output."""
    posted: list[str] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            posted.append(urllib.parse.parse_qs(body)["text"][0])
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        instance.write_config(on_finish=["/bin/sh", str(NOTIFY),
                                         f"http://127.0.0.1:{server.server_port}/hook"])
        instance.start_daemon()
        run_id = instance.submit('[[steps]]\nid = "boom"\nrun = "echo oops >&2; exit 4"\n',
                                 name="nightly")
        wait_for(lambda: posted, 30, "the webhook's message")
    finally:
        server.shutdown()
    first, *rest = posted[0].splitlines()
    assert first.startswith(f"!! run {run_id} (nightly, by ")
    assert first.endswith(": step boom: exited with status 4") and " FAILED after " in first
    assert rest == ["boom | oops"]


def test_what_a_hook_leaves_running_goes_with_it(instance: Instance) -> None:
    """A hook that exits leaving a background process: its session is killed (under
    systemd its scope too: tests/system/test_waits_system.py)."""
    instance.write_config(on_finish=["/bin/sh", "-c", f"{instance.sleeper(300)} & "
                                     f"touch {instance.root}/hooked"])
    instance.start_daemon()
    run_id = instance.submit('[[steps]]\nid = "a"\nrun = "true"\n')
    instance.wait_state(run_id, "SUCCEEDED")
    wait_for((instance.root / "hooked").exists, 30, "the hook")
    wait_for(lambda: not instance.tagged_pids(), 30, "the hook's leftover to be killed")
