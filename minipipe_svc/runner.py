"""The runner: owns one run from its first step to its recorded end.

Forked by the daemon once per run (or started as a command when the config sets
`minipipe_command`). It records every step and run transition itself, so a run
finishes correctly even while the daemon is restarted or dead. Each step is its
own process group: a timeout or a cancel stops the whole group (SIGTERM, then
SIGKILL after the grace period), and nothing a step left in its group outlives
the step.

SIGTERM, SIGINT and SIGHUP to the runner mean "cancel this run". The daemon sends
SIGTERM when an operator asks for a cancel.

The runner is trusted (under systemd it is root in the run's scope: it records
state and sends the journal lines); the steps are not. Each step drops to the
run's user in its own child just before exec (`RunIdentity`), and enters its
working directory only as that user. The runner is handed its log sinks.

Kept free of click and other heavy imports: forked, it costs no imports at all;
started as a command, it pays for each one once per run.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import selectors
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

from . import procs
from .accounting import run_usage, step_usage
from .identity import RunIdentity, identity_of, probe_directories, state_group
from .logs import LogSink, TeeSink
from .model import RUN_STATE_FOR_STEP_FAILURE, RunState, StepState
from .plan import Plan, Step
from .quantities import format_duration
from .review import RunWorkspace
from .store import Store, StoreError
from .workspace import GitError

MAX_LINE_BYTES = 64 * 1024
RUNNER_BUSY_TIMEOUT_MS = 120_000
# After a step's main process exits and its group is killed, how long to keep
# reading output still held open by a process that escaped the group (setsid).
ESCAPED_OUTPUT_GRACE = 2.0
# Variables a step must never inherit: they belong to the service manager's
# conversation with the daemon, and a step using them would impersonate it.
STRIPPED_ENV = ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "LISTEN_FDS", "LISTEN_PID",
                "LISTEN_FDNAMES", "MINIPIPE_CONFIG",
                # The service's own facts, which a step would misread as its own: its
                # stdout is a pipe, not the service's journal stream, and these
                # directories are root's.
                "JOURNAL_STREAM", "INVOCATION_ID", "SYSTEMD_EXEC_PID", "MAINPID",
                "MANAGERPID", "RUNTIME_DIRECTORY", "STATE_DIRECTORY", "LOGS_DIRECTORY",
                "CONFIGURATION_DIRECTORY", "CACHE_DIRECTORY", "CREDENTIALS_DIRECTORY",
                "MEMORY_PRESSURE_WATCH", "MEMORY_PRESSURE_WRITE")


def clean_environment(environ: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k not in STRIPPED_ENV}


@dataclass(frozen=True)
class StepResult:
    state: StepState
    exit_code: int | None
    reason: str | None


def step_outcome(returncode: int, stopped_for: str | None, why: str | None) -> StepResult:
    """How a finished step process becomes a step state (pure; see tests)."""
    exit_code, signal_name = procs.describe_exit(returncode)
    if stopped_for == "timeout":
        return StepResult(StepState.TIMED_OUT, exit_code, why)
    if stopped_for == "cancel":
        return StepResult(StepState.CANCELLED, exit_code, why)
    if returncode == 0:
        return StepResult(StepState.SUCCEEDED, 0, None)
    if signal_name:
        return StepResult(StepState.FAILED, exit_code, f"killed by {signal_name}")
    return StepResult(StepState.FAILED, exit_code, f"exited with status {exit_code}")


class Runner:
    def __init__(self, store: Store, run_id: int, sinks: list[LogSink],
                 kill_grace: float, runtime_max: float | None = None,
                 identity: RunIdentity | None = None, umask: int | None = None, *,
                 worktree_dir: str = "", log_dir: str = "",
                 trusted_filters: tuple[str, ...] = (), finally_grace: float = 300.0) -> None:
        self.store, self.run_id, self.kill_grace = store, run_id, kill_grace
        self.finally_grace = finally_grace
        self.worktree_dir, self.log_dir = worktree_dir, log_dir
        self.trusted_filters = trusted_filters
        self.workspace: RunWorkspace | None = None
        self.deadline: float | None = None
        self.deadline_why = ""  # the reason a step stopped at `deadline` gets
        self.runtime_max = runtime_max  # the daemon's merge of plan and config limits
        self.identity = identity  # None: steps run as the runner's own user
        self.umask = umask  # the submitter's, as Slurm does
        self.sink = TeeSink(*sinks)
        self.stop_signal: int | None = None
        self.signals = 0  # stop signals received
        self.pool: tuple[str, int] | None = None  # (pool, slot) of a run in a pool
        # While [[finally]] steps run: how the run would end without them. The cancel
        # or deadline that stopped the other steps does not stop them; a further
        # cancel request does, and so does finally_deadline (finally_grace after that
        # stop), besides their own timeouts.
        self.finally_for: RunState | None = None
        self.finally_deadline: float | None = None
        self.finally_cancels = 0  # cancel requests recorded as the finally steps began
        self.finally_signals = 0  # signals looked into since
        self.finally_stopped = False  # by a cancel requested while they ran
        self.matrix_values: tuple[tuple[str, str], ...] = ()  # a matrix run's combination
        self.step_rusage: resource.struct_rusage | None = None  # the last step's wait4
        self.orphan_rusage: list[resource.struct_rusage] = []  # and its reaped orphans'
        self.step_usages: list[dict[str, Any]] = []  # this attempt's steps, for the run
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # ------------------------------------------------------------ signals

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stop_signal = signum
        self.signals += 1

    def install_signal_handlers(self) -> None:
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    def stop_cause(self) -> tuple[RunState, str]:
        """Why the runner was told to stop: an operator's cancel, or something else.

        A cancel recorded in the DB ends the run CANCELLED. A signal nobody asked
        for through minipipe (`systemctl stop` of the scope, a shutdown, `kill`)
        ends it INTERRUPTED, with the signal in the reason.
        """
        try:
            requested = self.store.get_run(self.run_id).cancel_requested
        except StoreError:
            requested = False
        if requested:
            return RunState.CANCELLED, "cancelled by request"
        name = signal.Signals(self.stop_signal).name if self.stop_signal else "a signal"
        return RunState.INTERRUPTED, f"stopped from outside (runner got {name})"

    # ------------------------------------------------------------ the run

    def run(self) -> int:
        run = self.store.get_run(self.run_id)
        if run.state is not RunState.RUNNING:
            print(f"minipipe-runner: run {self.run_id} is {run.state.value}, not RUNNING; "
                  "nothing to do", file=sys.stderr)
            return 0
        self.store.set_runner(self.run_id, os.getpid(), procs.start_time(os.getpid()))
        self.pool = (run.pool, run.slot) if run.pool and run.slot is not None else None
        self.install_signal_handlers()
        procs.become_subreaper()
        plan = Plan.from_dict(self.store.run_plan(self.run_id))
        self.matrix_values = plan.matrix_values
        runtime_max = self.runtime_max or plan.limits.runtime_max
        self.deadline = time.monotonic() + runtime_max if runtime_max else None
        self.deadline_why = f"run exceeded runtime_max ({format_duration(runtime_max or 0)})"
        try:
            if plan.workspace is None:
                self.finish(*self.run_finally(plan, self.run_stage(plan, ("setup", "main"))))
                return 0
            return self.run_in_workspace(plan)
        finally:
            self.sink.close()

    def run_in_workspace(self, plan: Plan) -> int:
        """The review gate around the steps (review.py): a fresh worktree, the steps in
        it, their change recorded; then await review, or land at once, or just end."""
        self.workspace = RunWorkspace(self.store, self.run_id, plan, self.identity,
                                      self.worktree_dir, self.log_dir,
                                      trusted_filters=frozenset(self.trusted_filters))
        self.workspace.git.stop = lambda: self.stop_signal is not None  # a cancel stops git
        row = self.store.workspace(self.run_id)
        if row is not None and (row.approved_by or row.landed_at):
            return self.land_and_finish(plan, row.approved_by, row.approved_uid)
        try:
            self.workspace.prepare()
        except GitError as exc:
            self.finish(RunState.FAILED, None, f"workspace: {exc}")
            return 0
        state, exit_code, reason = self.run_finally(plan, self.run_stage(plan,
                                                                          ("setup", "main")))
        try:
            changes = self.workspace.summarise()
        except GitError as exc:
            self.store.note(self.run_id, "workspace_error", error=str(exc))
            if state is RunState.SUCCEEDED:
                state, exit_code, reason = (RunState.FAILED, None,
                                            f"recording the run's change failed: {exc}")
            changes = None
        changed = changes is not None and (changes["files_changed"] or changes["commit_count"])
        if state is not RunState.SUCCEEDED or not changed:
            self.finish(state, exit_code, reason)
        elif row is not None and row.review:
            self.record_pass_end()
            self.store.await_review(self.run_id)
        else:
            return self.land_and_finish(plan, None)
        return 0

    def land_and_finish(self, plan: Plan, approved_by: str | None,
                        approved_uid: int | None = None) -> int:
        """Land the recorded change, then the on_approve steps. A refused landing after a
        review goes back to review (nothing changed); without review the run fails."""
        assert self.workspace is not None and plan.workspace is not None
        row = self.workspace.resume()
        if row is not None and row.landed_at:  # a retry: landed in an earlier attempt
            if row.removed_at:
                self.finish(RunState.FAILED, None, "the change landed in an earlier attempt "
                            "and its checkout has been removed since: nothing to run "
                            "on_approve in; submit the plan again")
                return 0
            return self.after_landing(plan, row.landed_commit, again=True)
        try:
            commit = self.workspace.land(approved_by, approved_uid)
        except GitError as exc:
            if approved_by is None:
                self.finish(RunState.FAILED, None, f"landing the change failed: {exc}")
            else:
                self.record_pass_end()
                self.store.land_refused(self.run_id, f"approved by {approved_by}, but {exc}",
                                        files=getattr(exc, "files", None))
            return 0
        return self.after_landing(plan, commit)

    def after_landing(self, plan: Plan, commit: str | None, again: bool = False) -> int:
        """The on_approve steps, once the change is where it lands; the run ends."""
        assert self.workspace is not None
        landed = (f"landed on {self.workspace.target()} at {commit[:12]}" if commit
                  else f"kept on branch {self.workspace.branch}")
        self.sink.write("workspace", 0, "minipipe",
                        f"the change is {landed}" + (" (in an earlier attempt: its "
                                                     "on_approve steps run again)"
                                                     if again else ""))
        state, exit_code, reason = self.run_stage(plan, ("on_approve",))
        if state is not RunState.SUCCEEDED:
            reason = f"{reason} (the change is {landed})"
        self.finish(state, exit_code, reason)
        return 0

    def run_stage(self, plan: Plan, stages: tuple[str, ...]
                  ) -> tuple[RunState, int | None, str | None]:
        """Run the steps of `stages` in order; how the run would end (not recorded).
        In the finally stage every step runs, and the first failure is the outcome."""
        outcome: tuple[RunState, int | None, str | None] = (RunState.SUCCEEDED, 0, None)
        for idx, step in enumerate(plan.steps):
            if step.stage not in stages:
                continue
            if self.stop_signal is not None and (self.finally_for is None
                                                 or self.cancelled_again()):
                state, reason = self.stop_cause()
                if self.finally_for is None:
                    return state, None, reason
                if outcome[0] is RunState.SUCCEEDED:
                    outcome = (state, None, f"{reason}, while its finally steps ran")
                return outcome
            if (self.finally_for is not None and self.finally_deadline is not None
                    and time.monotonic() >= self.finally_deadline):
                return outcome  # out of grace: the rest are SKIPPED
            if self.workspace is not None:
                step = step._replace(cwd=self.workspace.step_cwd(step))
            if self.finally_for is None:
                result = self.run_step(idx, step, self.deadline, self.deadline_why)
            else:
                result = self.run_step(idx, step, self.finally_deadline, (
                    f"finally steps ran over finally_grace_seconds "
                    f"({format_duration(self.finally_grace)}) after the run was stopped"))
            if result.state is not StepState.SUCCEEDED:
                state = RUN_STATE_FOR_STEP_FAILURE[result.state]
                if result.state is StepState.CANCELLED:
                    state = self.stop_cause()[0]
                failed = (state, result.exit_code, f"step {step.id}: {result.reason}")
                if self.finally_for is None:
                    return failed
                if outcome[0] is RunState.SUCCEEDED:
                    outcome = failed
        return outcome

    def run_finally(self, plan: Plan, outcome: tuple[RunState, int | None, str | None]
                    ) -> tuple[RunState, int | None, str | None]:
        """The plan's [[finally]] steps, whatever `outcome` (the other steps'), with
        MINIPIPE_RUN_STATE; a failing one fails a run that had succeeded."""
        if not any(step.stage == "finally" for step in plan.steps):
            return outcome
        self.finally_for = outcome[0]
        self.finally_signals = self.signals
        self.finally_cancels = self.cancel_count()
        # One cancel stopped the other steps; a second one, already there, stops these.
        self.finally_stopped = self.finally_cancels > 1
        now = time.monotonic()
        if self.stop_signal is not None or self.finally_cancels:
            self.finally_deadline = now + self.finally_grace
        elif self.deadline is not None:  # runtime_max, should it pass meanwhile
            self.finally_deadline = max(self.deadline, now) + self.finally_grace
        try:
            result = self.run_stage(plan, ("finally",))
        finally:
            self.finally_for = None
        if outcome[0] is RunState.SUCCEEDED and result[0] is not RunState.SUCCEEDED:
            return result
        return outcome

    def record_pass_end(self) -> None:
        """As a pass of the runner ends: output lines lost, and what the run consumed."""
        self.store.record_usage(self.run_id, run_usage(self.run_id, self.step_usages))
        self.sink.flush()
        if self.sink.lines_lost or self.sink.error:
            self.store.note(self.run_id, "log_lines_lost", lines=self.sink.lines_lost,
                            error=self.sink.error)

    def finish(self, state: RunState, exit_code: int | None, reason: str | None) -> None:
        self.record_pass_end()
        self.store.finish_run(self.run_id, state, exit_code=exit_code, reason=reason,
                              output_lines=self.sink.lines_written)

    def cancel_count(self) -> int:
        try:
            return self.store.cancel_count(self.run_id)
        except StoreError:
            return 0

    def cancelled_again(self) -> bool:
        """While finally steps run: was a cancel requested since they began? Asked
        when a signal came: a daemon that restarted sends the old request again."""
        if self.signals != self.finally_signals:
            self.finally_signals = self.signals
            if self.cancel_count() > self.finally_cancels:
                self.finally_stopped = True  # and the rest with it
        return self.finally_stopped

    def run_step(self, idx: int, step: Step, run_deadline: float | None,
                 deadline_why: str) -> StepResult:
        while True:
            attempt = self.store.start_step(self.run_id, idx, step.phase)
            self.sink.write(step.id, attempt, "minipipe", f"step {step.id} started (attempt "
                            f"{attempt}): {step.command}")
            self.step_rusage, self.orphan_rusage = None, []
            result = self.execute(idx, step, attempt, run_deadline, deadline_why)
            usage = (step_usage(self.step_rusage, self.orphan_rusage)
                     if self.step_rusage is not None else None)
            self.step_usages.append(usage or {})
            self.store.finish_step(self.run_id, idx, result.state, exit_code=result.exit_code,
                                   reason=result.reason, usage=usage)
            self.sink.write(step.id, attempt, "minipipe", f"step {step.id} "
                            f"{result.state.value.lower()}" + (f": {result.reason}"
                                                               if result.reason else ""))
            self.sink.flush()
            out_of_time = run_deadline is not None and time.monotonic() >= run_deadline
            if (result.state in (StepState.FAILED, StepState.TIMED_OUT)
                    and attempt <= step.retries and self.stop_signal is None
                    and not out_of_time):
                continue
            return result

    def step_environment(self, step: Step, attempt: int) -> dict[str, str]:
        env = clean_environment(dict(os.environ))
        if self.identity is not None:
            env.update(self.identity.login_environment())
        env.update(step.env)
        if self.workspace is not None:
            env.update(self.workspace.environment())
        env.update(MINIPIPE_RUN_ID=str(self.run_id), MINIPIPE_STEP_ID=step.id,
                   MINIPIPE_ATTEMPT=str(attempt))
        if self.finally_for is not None:
            env["MINIPIPE_RUN_STATE"] = self.finally_for.value
        for key, value in self.matrix_values:
            env[f"MINIPIPE_MATRIX_{key.upper()}"] = value
        if self.pool is not None:  # e.g. which GPU: unique among the pool's running runs
            env.update(MINIPIPE_POOL=self.pool[0], MINIPIPE_SLOT=str(self.pool[1]))
        return env

    def identity_options(self, step: Step) -> dict[str, object]:
        """Popen options that make the step's child its run's user before exec.

        Popen changes directory before it changes user; the step must enter its cwd
        as its own user (a directory only root may enter stays closed), so the
        chdir happens in preexec_fn, after setgroups/setgid/setuid. The runner has
        no threads, which is what makes preexec_fn safe here.
        """
        options: dict[str, object] = {}
        if self.umask is not None:
            options["umask"] = self.umask
        if self.identity is None:
            options["cwd"] = step.cwd
            return options
        identity = self.identity
        if identity.uid == 0:
            raise PermissionError("steps never execute as root")
        options.update(user=identity.uid, group=identity.gid,
                       extra_groups=list(identity.groups),
                       preexec_fn=functools.partial(os.chdir, step.cwd))
        return options

    def execute(self, idx: int, step: Step, attempt: int, run_deadline: float | None,
                deadline_why: str) -> StepResult:
        user = self.identity.user if self.identity else procs.user_name()
        # Asked as the step's user: root here cannot look inside a 0700 home.
        answer = probe_directories(self.identity, [step.cwd])[0]
        if answer == "missing":
            return StepResult(StepState.FAILED, 127, f"working directory not found: {step.cwd}")
        if answer == "denied":
            return StepResult(StepState.FAILED, 126, (
                f"permission denied: user {user} cannot enter the working directory "
                f"{step.cwd}; set the step's cwd to a directory it may use"))
        try:
            proc = subprocess.Popen(
                step.argv, env=self.step_environment(step, attempt),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True, close_fds=True,
                **self.identity_options(step))  # type: ignore[call-overload]
        except subprocess.SubprocessError:  # preexec_fn: the chdir as the run's user
            return StepResult(StepState.FAILED, 126, (
                f"permission denied: user {user} cannot enter the working directory "
                f"{step.cwd}; set the step's cwd to a directory it may use"))
        except FileNotFoundError as exc:
            missing = step.cwd if exc.filename == step.cwd else step.argv[0]
            what = "working directory" if missing == step.cwd else "command"
            return StepResult(StepState.FAILED, 127, f"{what} not found: {missing}")
        except PermissionError as exc:
            if exc.filename == step.cwd:
                return StepResult(StepState.FAILED, 126, (
                    f"permission denied: user {user} cannot enter the working "
                    f"directory {step.cwd}; set the step's cwd to a directory it may use"))
            return StepResult(StepState.FAILED, 126, f"permission denied: {exc.filename}")
        except OSError as exc:
            return StepResult(StepState.FAILED, 126, f"cannot start: {exc.strerror or exc}")
        leader_start = procs.start_time(proc.pid)
        self.store.set_step_process(self.run_id, idx, proc.pid, leader_start)
        deadline, why = None, None
        if step.timeout:
            deadline, why = time.monotonic() + step.timeout, (
                f"timed out after {format_duration(step.timeout)}")
        if run_deadline is not None and (deadline is None or run_deadline < deadline):
            deadline = run_deadline
            why = deadline_why
        stopped_for = self.supervise(proc, step, attempt, deadline)
        if stopped_for == "cancel":
            why = self.stop_cause()[1]
        return step_outcome(proc.returncode, stopped_for, why)

    def supervise(self, proc: subprocess.Popen[bytes], step: Step, attempt: int,
                  deadline: float | None) -> str | None:
        """Pump output until the step's group is gone; stop it on timeout or cancel.

        Returns "timeout", "cancel" or None (ended by itself).
        """
        assert proc.stdout is not None and proc.stderr is not None
        selector = selectors.DefaultSelector()
        streams = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr"}
        partial = {fd: b"" for fd in streams}
        for fd in streams:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        pidfd = os.pidfd_open(proc.pid)
        selector.register(pidfd, selectors.EVENT_READ)
        selector.register(self._wake_r, selectors.EVENT_READ)
        stopped_for: str | None = None
        kill_at: float | None = None
        leader_gone_at: float | None = None
        try:
            while True:
                now = time.monotonic()
                if (stopped_for is None and self.stop_signal is not None
                        and (self.finally_for is None or self.cancelled_again())):
                    stopped_for = "cancel"
                elif stopped_for is None and deadline is not None and now >= deadline:
                    stopped_for = "timeout"
                if stopped_for and kill_at is None and leader_gone_at is None:
                    procs.kill_group(proc.pid, signal.SIGTERM)
                    kill_at = now + self.kill_grace
                if kill_at is not None and now >= kill_at and leader_gone_at is None:
                    procs.kill_group(proc.pid, signal.SIGKILL)
                    kill_at = float("inf")
                if leader_gone_at is not None and (
                        not partial or now - leader_gone_at > ESCAPED_OUTPUT_GRACE):
                    break
                wait = [1.0]
                for moment in (deadline if stopped_for is None else None, kill_at,
                               leader_gone_at + ESCAPED_OUTPUT_GRACE if leader_gone_at else None):
                    if moment is not None and moment != float("inf"):
                        wait.append(max(0.0, moment - now))
                for key, _mask in selector.select(min(wait)):
                    fd = key.fd
                    if fd == self._wake_r:
                        _drain(fd)
                    elif fd == pidfd:
                        selector.unregister(pidfd)
                        # Whatever the step left running in its group goes with it;
                        # killed before the leader is reaped, so its pid (= the pgid)
                        # cannot have been reused by anyone else yet.
                        procs.kill_group(proc.pid, signal.SIGKILL)
                        # wait4: the exit status and what the step's tree consumed.
                        _, status, rusage = os.wait4(proc.pid, 0)
                        proc.returncode = os.waitstatus_to_exitcode(status)
                        self.step_rusage = rusage
                        leader_gone_at = time.monotonic()
                    elif not self.pump(fd, streams[fd], partial, step.id, attempt):
                        selector.unregister(fd)
                        del partial[fd]
                self.sink.flush()
        finally:
            for fd, rest in partial.items():
                if rest:
                    self.sink.write(step.id, attempt, streams[fd], _text(rest))
            if partial:
                self.sink.write(step.id, attempt, "minipipe", "output still held open by a "
                                "process that left the step's process group; stopped reading")
            selector.close()
            os.close(pidfd)
            proc.stdout.close()
            proc.stderr.close()
            if proc.returncode is None:
                proc.kill()
                proc.wait()
            # Daemons the step started outside its process group end with it too.
            escaped = procs.kill_descendants(self.orphan_rusage)
            if escaped:
                self.sink.write(step.id, attempt, "minipipe", f"killed {escaped} process(es) "
                                "the step left running outside its process group")
        return stopped_for

    def pump(self, fd: int, stream: str, partial: dict[int, bytes], step_id: str,
             attempt: int) -> bool:
        """Read what is available on one pipe and emit complete lines; False at EOF."""
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return True
        if not data:
            if partial[fd]:
                self.sink.write(step_id, attempt, stream, _text(partial[fd]))
                partial[fd] = b""
            return False
        buffer = partial[fd] + data
        *lines, rest = buffer.split(b"\n")
        for line in lines:
            self.sink.write(step_id, attempt, stream, _text(line))
        while len(rest) > MAX_LINE_BYTES:
            self.sink.write(step_id, attempt, stream, _text(rest[:MAX_LINE_BYTES]))
            rest = rest[MAX_LINE_BYTES:]
        partial[fd] = rest
        return True


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace").rstrip("\r")


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


@dataclass(frozen=True)
class RunnerArgs:
    """Everything a runner needs besides the DB: the daemon fills it in per run."""

    db_path: str
    log_dir: str
    run_id: int
    kill_grace: float = 10.0
    finally_grace: float = 300.0  # config finally_grace_seconds
    runtime_max: float | None = None  # seconds the whole run may take (plan or config)
    journal: bool = False  # also send every output line to journald
    identity: RunIdentity | None = None  # whom the steps execute as (None: as the runner)
    umask: int | None = None
    worktree_dir: str = ""  # where runs with a [workspace] get their worktrees
    trusted_filters: tuple[str, ...] = ()  # config trusted_filter_programs

    def argv(self) -> list[str]:
        """The same, as the command line of `python3 -m minipipe_svc.runner`."""
        extra = ["--journal"] if self.journal else []
        if self.runtime_max is not None:
            extra += ["--runtime-max", f"{self.runtime_max:g}"]
        if self.identity is not None:
            extra += ["--run-as", self.identity.user]
        if self.umask is not None:
            extra += ["--umask", f"{self.umask:o}"]
        if self.worktree_dir:
            extra += ["--worktree-dir", self.worktree_dir]
        for name in self.trusted_filters:
            extra += ["--trusted-filter", name]
        return ["--db-path", self.db_path, "--log-dir", self.log_dir,
                "--kill-grace", f"{self.kill_grace:g}",
                "--finally-grace", f"{self.finally_grace:g}", *extra, str(self.run_id)]


def parse_args(argv: list[str] | None = None) -> RunnerArgs:
    parser = argparse.ArgumentParser(
        prog="minipipe-runner",
        description="Execute one minipipe run (started by the daemon; not for direct use).")
    parser.add_argument("--db-path", required=True)
    parser.add_argument("--log-dir", required=True)
    parser.add_argument("--kill-grace", type=float, default=10.0)
    parser.add_argument("--finally-grace", type=float, default=300.0,
                        help="seconds the finally steps may take once the run was stopped")
    parser.add_argument("--runtime-max", type=float, default=None,
                        help="seconds the whole run may take (plan or config default)")
    parser.add_argument("--journal", action="store_true",
                        help="also send every output line to journald")
    parser.add_argument("--run-as", metavar="USER", help="the user the steps execute as")
    parser.add_argument("--umask", type=lambda text: int(text, 8), default=None,
                        help="the steps' umask (octal)")
    parser.add_argument("--worktree-dir", default="",
                        help="where runs with a [workspace] get their worktrees")
    parser.add_argument("--trusted-filter", action="append", default=[], metavar="NAME",
                        help="a filter program a landing may run in a checked-out work tree")
    parser.add_argument("run_id", type=int)
    args = parser.parse_args(argv)
    identity = None
    if args.run_as:
        import pwd

        try:
            identity = identity_of(pwd.getpwnam(args.run_as), state_group(args.db_path))
        except KeyError:
            parser.error(f"there is no user {args.run_as!r}")
    return RunnerArgs(args.db_path, args.log_dir, args.run_id, args.kill_grace,
                      args.finally_grace, args.runtime_max, args.journal, identity, args.umask,
                      args.worktree_dir, tuple(args.trusted_filter))


def execute(args: RunnerArgs, sinks: list[LogSink]) -> int:
    """Run one run to its recorded end; the exit status of the runner process."""
    for name in STRIPPED_ENV:
        os.environ.pop(name, None)
    try:
        store = _open_store(args)
    except StoreError as exc:
        print(f"minipipe-runner: {exc}", file=sys.stderr)
        return 1
    runner = Runner(store, args.run_id, sinks, args.kill_grace, args.runtime_max,
                    args.identity, args.umask, worktree_dir=args.worktree_dir,
                    log_dir=args.log_dir, trusted_filters=args.trusted_filters,
                    finally_grace=args.finally_grace)
    try:
        return runner.run()
    except Exception as exc:  # the run must still end in the DB, with the reason
        traceback.print_exc()
        try:
            store.finish_run(args.run_id, RunState.FAILED,
                             reason=f"internal error in the runner: {exc!r}")
        except Exception:
            traceback.print_exc()
        return 70


def _open_store(args: RunnerArgs) -> Store:
    """The runner alone knows how its run ends: it waits far longer for a DB lock
    than the daemon or the CLI before giving up on recording a result."""
    return Store.open(args.db_path, create=False, busy_timeout_ms=RUNNER_BUSY_TIMEOUT_MS)


def record_launch_failure(args: RunnerArgs, reason: str) -> int:
    """The run could not even be set up (no scope, no user): end it FAILED, say why."""
    print(f"minipipe-runner: run {args.run_id}: {reason}", file=sys.stderr)
    try:
        _open_store(args).finish_run(args.run_id, RunState.FAILED, reason=reason)
    except Exception:
        traceback.print_exc()
        return 70
    return 1


def requeue(args: RunnerArgs, reason: str) -> int:
    """The run cannot begin now but may later (the system is shutting down): give it
    back to the queue, untouched, for the next boot or daemon start."""
    print(f"minipipe-runner: run {args.run_id}: {reason}; back to the queue", file=sys.stderr)
    try:
        _open_store(args).requeue_run(args.run_id, reason)
    except Exception:
        traceback.print_exc()
        return 70
    return 75  # EX_TEMPFAIL


def main(argv: list[str] | None = None) -> int:
    from .sinks import open_sinks

    args = parse_args(argv)
    return execute(args, open_sinks(args.log_dir, args.run_id, journal=args.journal))


if __name__ == "__main__":
    sys.exit(main())
