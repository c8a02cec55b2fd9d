"""What the daemon does for each API request: validate, check ownership, write.

The only code that changes state on a client's behalf. Every field of a request
is checked here (types, ranges, sizes) before it is used; the caller is the
`Peer` the kernel reported, never a name in the request. Plans are parsed and
validated here, with the same file:line messages the CLI always printed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from . import protocol
from .config import Config
from .identity import (
    PROBE_TIMEOUT_SECONDS,
    DirectoryProber,
    IdentityError,
    Peer,
    PendingProbe,
    ProbeBusy,
    RunIdentity,
    is_admin,
    may_act_on,
    run_identity,
)
from .model import RunState
from .plan import MAX_DEPENDENCIES, PRIORITY_RANGE, Plan, PlanError, key_line, parse_plan
from .server import Deferred
from .store import ConflictError, NoSuchRun, Store, StoreError
from .workspace import CheckUnavailable, Git, GitError, RefCheck

Reply = dict[str, Any]
# What needs the DB's write lock (everything but ping).
WRITE_OPERATIONS = ("submit", "cancel", "retry", "pause", "resume", "approve", "reject")

MAX_STORED_PLAN_BYTES = 4 * 1024 * 1024
# All the runs of one submit (a [matrix] stores its plan once per combination): one
# small request must not write gigabytes, nor hold the daemon's loop for seconds.
MAX_STORED_SUBMIT_BYTES = 16 * 1024 * 1024
MAX_DELAY_DAYS = 366  # --at and --delay: a year ahead at most
# A plan's repository is asked about as its user; git must answer within this.
GIT_CHECK_SECONDS = 10.0
MAX_REF_CHECKS = 32
# One user's repository may hang git (a FIFO in its config): that user waits, not others.
MAX_REF_CHECKS_PER_USER = 2
# Directories private to the service when it runs under systemd (PrivateTmp=yes).
PRIVATE_DIRS = ("/tmp", "/var/tmp")
PRIVATE_TMP_HINT = ("the service has a private /tmp and /var/tmp and does not see yours: keep "
                    "the plan (or set the step's cwd) elsewhere, e.g. in your home or a "
                    "project directory")


class Refused(Exception):
    """A request the daemon turns down; becomes an error reply with this code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Actions:
    def __init__(self, store: Store, config: Config, *, private_tmp: bool = False,
                 version: str = "", probes: DirectoryProber | None = None,
                 confine: Callable[[str, float], Callable[[], None] | None] = lambda k, s: None,
                 release: Callable[[str, int], None] = lambda kind, pid: None) -> None:
        self.store, self.config = store, config
        # The launcher's: a repository check's git runs as the submitter in a scope of
        # its own, stopped when the check ends (launcher.Launcher.confine).
        self.confine, self.release = confine, release
        self.private_tmp = private_tmp
        self.version = version
        self.probes = probes or DirectoryProber()
        self.ref_checks: dict[RefCheck, int] = {}  # waiting for git -> the run's uid
        # Set by the daemon: a write failed on the lock (it finds out who holds it), and
        # why writes would wait right now (None: they would not).
        self.on_locked: Callable[[], None] = lambda: None
        self.writes_wait: Callable[[], str | None] = lambda: None

    def handle(self, peer: Peer, request: dict[str, Any]) -> Reply | Deferred:
        """One request -> one reply, now or deferred; never raises for anything a
        client can cause."""
        op = request.get("op")
        if request.get("v") != protocol.VERSION:
            return protocol.error("bad_request", f"unsupported protocol version "
                                  f"{request.get('v')!r}; this daemon speaks {protocol.VERSION}")
        if op not in protocol.OPERATIONS:
            return protocol.error("bad_request", f"unknown operation {op!r}; known: "
                                  + ", ".join(protocol.OPERATIONS))
        if op in WRITE_OPERATIONS and (why := self.writes_wait()):
            return protocol.error("unavailable", why)
        return self.answer(lambda: getattr(self, f"op_{op}")(peer, request))

    def answer(self, work: Callable[[], dict[str, Any] | Deferred]) -> Reply | Deferred:
        """The reply for `work`'s fields (or its Deferred), or for the error it raised."""
        try:
            result = work()
        except (Refused, PlanError, StoreError) as exc:
            return self.refusal(exc)
        return result if isinstance(result, Deferred) else {"ok": True, **result}

    def refusal(self, exc: Refused | PlanError | StoreError) -> Reply:
        if isinstance(exc, Refused):
            return protocol.error(exc.code, str(exc))
        if isinstance(exc, PlanError):
            return protocol.error("bad_plan", str(exc))
        if isinstance(exc, NoSuchRun):
            return protocol.error("no_such_run", str(exc))
        if isinstance(exc, ConflictError):
            return protocol.error("conflict", str(exc))
        if "locked" in str(exc):
            self.on_locked()
        return protocol.error("unavailable", str(exc))

    # ------------------------------------------------------------ operations

    def op_ping(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid(), "version": self.version}

    def op_submit(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        text = _field(request, "plan", str)
        source = _field(request, "source", str)
        path = _field(request, "path", str, optional=True)
        cwd = _field(request, "cwd", str)
        fmt = _field(request, "format", str, optional=True)
        priority = _field(request, "priority", int, optional=True)
        umask = _field(request, "umask", int, optional=True)
        for name, value in (("path", path), ("cwd", cwd)):
            if value is not None and (not os.path.isabs(value) or "\0" in value):
                raise Refused("bad_request", f"{name!r} must be an absolute path")
        if fmt not in (None, "toml", "json"):
            raise Refused("bad_request", "'format' must be toml or json")
        if priority is not None and not PRIORITY_RANGE[0] <= priority <= PRIORITY_RANGE[1]:
            raise Refused("bad_request", f"'priority' must be from {PRIORITY_RANGE[0]} to "
                          f"{PRIORITY_RANGE[1]}")
        if umask is not None and not 0 <= umask <= 0o777:
            raise Refused("bad_request", "'umask' must be from 0 to 0o777")
        waits = _waits(request)
        label = "<stdin>" if source == "-" or path is None else source
        plan = parse_plan(
            text.encode("utf-8", "surrogateescape"), source=label,
            fmt=fmt or ("json" if label.lower().endswith(".json") else "toml"),
            base_dir=os.path.dirname(path) if path else cwd,
            default_name=_default_name(path))
        try:
            identity = run_identity(self.config, peer.uid)
            pending = self.check_directories(plan, label, identity, peer.uid)
        except IdentityError as exc:
            raise Refused("unavailable", f"cannot run this plan: {exc}") from None

        pool = _field(request, "pool", str, optional=True)
        if pool is not None:
            plan = plan._replace(pool=pool)
        if plan.pool is not None and plan.pool not in self.config.pools:
            known = ", ".join(sorted(self.config.pools)) or "none"
            raise Refused("bad_request", f"there is no pool {plan.pool!r} in the config "
                          f"(pools: {known}); an admin adds it to config key pools")
        if waits["after"] or waits["after_any"]:
            after = tuple(dict.fromkeys((*plan.after, *waits["after"])))
            after_any = tuple(i for i in dict.fromkeys((*plan.after_any, *waits["after_any"]))
                              if i not in after)
            if len(after) + len(after_any) > MAX_DEPENDENCIES:
                raise Refused("bad_request", f"a run may wait for at most {MAX_DEPENDENCIES} "
                              "runs")
            plan = plan._replace(after=after, after_any=after_any)

        max_parallel = _field(request, "max_parallel", int, optional=True)
        if max_parallel is not None and not 1 <= max_parallel <= 1024:
            raise Refused("bad_request", "'max_parallel' must be from 1 to 1024")

        def record() -> dict[str, Any]:
            return self.record_submit(peer, plan, label, path, priority, umask,
                                      read_back=request.get("read_back") is True,
                                      not_before=waits["not_before"],
                                      max_parallel=max_parallel)

        def then() -> dict[str, Any] | Deferred:
            if plan.workspace is None:
                return record()
            plan_format = fmt or ("json" if label.lower().endswith(".json") else "toml")
            return self.check_workspace(plan, label, text, plan_format, identity, record)

        if pending is None:
            return then()
        return self.after_probe(pending, plan, label, identity, then)

    def check_workspace(self, plan: Plan, label: str, text: str, plan_format: str,
                        identity: RunIdentity | None,
                        then: Callable[[], dict[str, Any]]) -> Deferred:
        """The [workspace]'s repository and ref, as the run's user finds them (git, in
        a child the loop does not wait for); then `then` records the run."""
        assert plan.workspace is not None
        repo = plan.workspace.repo
        if self.private_tmp and _under(repo, PRIVATE_DIRS):
            raise PlanError(label, f"repository {repo} is in /tmp or /var/tmp, which the "
                            "minipipe service keeps private", where="[workspace]",
                            line=key_line(text, plan_format, "workspace", "repo"),
                            hint=PRIVATE_TMP_HINT)
        uid = identity.uid if identity is not None else os.getuid()
        if len(self.ref_checks) >= MAX_REF_CHECKS or sum(
                owner == uid for owner in self.ref_checks.values()) >= MAX_REF_CHECKS_PER_USER:
            raise Refused("busy", "too many repository checks waiting for git at once; try "
                          "again in a few seconds")
        review = self.config.review if plan.review is None else plan.review
        gate = review and self.config.review_gate == "enforced"
        try:
            check = RefCheck(Git(identity), repo, plan.workspace.ref, GIT_CHECK_SECONDS,
                             gate=gate, confine=self.confine("check", GIT_CHECK_SECONDS),
                             release=lambda pid: self.release("check", pid))
        except GitError as exc:
            raise Refused("unavailable", f"cannot check the plan's repository: {exc}") \
                from None
        self.ref_checks[check] = uid

        def bad(message: str) -> Reply:
            key = "ref" if "no branch, tag or commit" in message else "repo"
            line = (key_line(text, plan_format, "workspace", key)
                    or key_line(text, plan_format, "workspace"))
            hint = ("name a branch, tag or commit that exists in the repository"
                    if key == "ref" else
                    "let that user read it (or use review_gate = \"advisory\")"
                    if message.startswith("cannot tell") else
                    "give the path of a git repository that user may read (a clone or a "
                    "bare repository)")
            return self.refusal(PlanError(label, message, line=line, where="[workspace]",
                                          hint=hint))

        def resume() -> Reply | None:
            if not check.read():
                return None
            self.ref_checks.pop(check, None)
            try:
                check.result()
            except CheckUnavailable as exc:
                return protocol.error("unavailable", "cannot check the plan's repository "
                                      f"now ({exc}); try again in a moment")
            except GitError as exc:
                return bad(str(exc))
            except Exception:
                check.abandon()
                raise
            if check.writable is not None:
                return self.refusal(PlanError(
                    label, f"this run needs review, but user {check.user} may write "
                    f"{check.writable}: its steps, which run as {check.user}, could move "
                    f"the branches of {repo} themselves", where="[workspace]",
                    line=key_line(text, plan_format, "workspace", "repo"),
                    hint=f"use a repository {check.user} may only read (a reviewer who may "
                    "write it lands approved changes), or set review_gate = \"advisory\" "
                    "in the config to allow a review the steps could go around"))
            if why := self.writes_wait():
                return protocol.error("unavailable", why)
            try:
                return {"ok": True, **then()}
            except (Refused, PlanError, StoreError) as exc:
                return self.refusal(exc)

        def give_up() -> Reply:
            self.ref_checks.pop(check, None)
            check.abandon()
            return bad(f"git did not answer about {repo} within {GIT_CHECK_SECONDS:g} s (a "
                       "hung network or FUSE filesystem, or a systemd too busy to start "
                       "the check's scope?)")

        def abandon() -> None:
            self.ref_checks.pop(check, None)
            check.abandon()

        return Deferred(check.fd, check.deadline, resume=resume, give_up=give_up,
                        abandon=abandon)

    def record_submit(self, peer: Peer, plan: Plan, label: str, path: str | None,
                      priority: int | None, umask: int | None, *,
                      read_back: bool, not_before: str | None = None,
                      max_parallel: int | None = None) -> dict[str, Any]:
        normalized = plan.to_dict()
        if plan.workspace is not None:
            # The config decides what the plan leaves open; the stored plan says it all.
            review = self.config.review if plan.review is None else plan.review
            normalized["review"] = review
            normalized["workspace"]["land"] = plan.workspace.land or (
                "merge" if review else "branch-only")
        # [defaults] is copied into every step: a 1 MiB plan could become a 1 GB row.
        size = len(json.dumps(normalized))
        if size > MAX_STORED_PLAN_BYTES:
            raise PlanError(label, f"expands to {size / 1e6:.1f} MB once [defaults] are "
                            f"applied to each step; at most {MAX_STORED_PLAN_BYTES // 2**20} "
                            "MiB", hint="keep large values in files the steps read")
        combinations = plan.combinations()
        if size * len(combinations) > MAX_STORED_SUBMIT_BYTES:
            raise PlanError(label, f"{len(combinations)} combinations of a plan that is "
                            f"stored as {size / 1e6:.1f} MB each make "
                            f"{size * len(combinations) / 1e6:.0f} MB; at most "
                            f"{MAX_STORED_SUBMIT_BYTES // 2**20} MiB in all", where="[matrix]",
                            hint="fewer combinations, or a smaller plan (large values "
                            "belong in files the steps read)")
        # A [matrix]: one run per combination, one group, all or none.
        plans = [{**normalized, "name": each.name, "matrix_values": dict(each.matrix_values)}
                 for each in combinations]
        ids = self.store.submit_group(plans, source=path or None, submitted_by=peer.name,
                                      submitted_uid=peer.uid, priority=priority, umask=umask,
                                      not_before=not_before, max_parallel=max_parallel)
        run_id = ids[0]
        reply: dict[str, Any] = {"run": run_id, "runs": ids}
        if len(ids) > 1:
            reply["group"] = run_id
        if read_back:
            from .render import run_json

            # daemon_running: kept from the days a submit could queue without a daemon.
            reply["run_json"] = {**run_json(self.store.get_run(run_id)), "daemon_running": True}
        return reply

    def check_directories(self, plan: Plan, label: str, identity: RunIdentity | None,
                          uid: int | None = None) -> PendingProbe | None:
        """Every step's cwd exists as the service sees it and its user may enter it.

        Raises PlanError for the first step whose cwd is known to be wrong; returns the
        probe still asking about cwds on filesystems that might not answer, or None.
        """
        if self.private_tmp:
            # The service's /tmp is not the submitter's, and it is shared by every run
            # of every user: a directory there may be anyone's. Not a place to run in.
            for step in plan.steps:
                if _under(step.cwd, PRIVATE_DIRS):
                    raise PlanError(label, f"working directory {step.cwd} is in /tmp or "
                                    "/var/tmp, which the minipipe service keeps private",
                                    where=f"step {step.id!r}", hint=PRIVATE_TMP_HINT)
        # In step order; a relative cwd is inside the run's worktree, made at run start.
        cwds = list(dict.fromkeys(step.cwd for step in plan.steps if os.path.isabs(step.cwd)))
        answers = dict(zip(cwds, self.probes.answer_now(identity, cwds), strict=True))
        self.judge_directories(plan, label, identity, answers)
        slow = [cwd for cwd in cwds if answers[cwd] is None]
        if not slow:
            return None
        try:
            return self.probes.start_child(identity, slow, os.getuid() if uid is None else uid)
        except ProbeBusy as exc:
            raise Refused("busy", str(exc)) from None

    @staticmethod
    def judge_directories(plan: Plan, label: str, identity: RunIdentity | None,
                          answers: dict[str, str | None]) -> None:
        """PlanError for the first step whose cwd's answer is not "ok" (None: not known
        yet, passes for now)."""
        for step in plan.steps:
            answer = answers.get(step.cwd)
            if answer in ("ok", None):
                continue
            where = f"step {step.id!r}"
            if answer == "missing":
                raise PlanError(label, f"working directory {step.cwd} does not exist as the "
                                "minipipe service sees it", where=where,
                                hint="create it first or set the step's cwd")
            user = identity.user if identity else "the daemon's user"
            raise PlanError(label, f"user {user} (whom this run executes as) cannot enter "
                            f"{step.cwd}", where=where,
                            hint="set the step's cwd to a directory that user may enter")

    def after_probe(self, pending: PendingProbe, plan: Plan, label: str,
                    identity: RunIdentity | None,
                    then: Callable[[], dict[str, Any] | Deferred]) -> Deferred:
        """The submit's answer once the probe child has answered (then `then` records
        the run), or a bad-plan error naming the cwd that did not answer in time."""

        def finish() -> dict[str, Any] | Deferred:
            self.judge_directories(plan, label, identity,
                                   dict(zip(pending.paths, pending.answers, strict=False)))
            if (silent := pending.unanswered()) is not None:
                raise Refused("unavailable", "cannot run this plan: the check of working "
                              f"directory {silent} ended without an answer")
            if why := self.writes_wait():  # the lock was taken meanwhile
                raise Refused("unavailable", why)
            return then()

        def reply() -> Reply | Deferred:
            try:
                result = finish()
            except (Refused, PlanError, StoreError) as exc:
                return self.refusal(exc)
            return result if isinstance(result, Deferred) else {"ok": True, **result}

        def give_up() -> Reply | Deferred:
            if pending.read():  # it answered just now
                return reply()
            pending.abandon()
            silent = pending.unanswered() or pending.paths[0]
            step = next(s for s in plan.steps if s.cwd == silent)
            return self.refusal(PlanError(
                label, f"working directory {silent} did not answer within "
                f"{PROBE_TIMEOUT_SECONDS:g} s (a hung network or FUSE filesystem?)",
                where=f"step {step.id!r}", hint="set the step's cwd to a directory on a "
                "filesystem that answers, or try again once it does"))

        return Deferred(pending.fd, pending.deadline,
                        resume=lambda: reply() if pending.read() else None,
                        give_up=give_up, abandon=pending.abandon)

    def op_cancel(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("all") is True:
            cancelled = []
            admin = is_admin(peer.uid, self.config.admin_group)
            for run in self.store.list_runs(limit=None,
                                            states=(RunState.PENDING, RunState.RUNNING)):
                if admin or may_act_on(peer.uid, run.submitted_uid, run.submitted_by, None):
                    try:
                        was = self.store.request_cancel(run.id, by=peer.name)
                    except ConflictError:
                        continue  # it ended meanwhile
                    cancelled.append({"run": run.id, "was": was.value})
            return {"results": cancelled}
        run_id = self.owned_run(peer, request)
        was = self.store.request_cancel(run_id, by=peer.name)
        return {"results": [{"run": run_id, "was": was.value}]}

    def op_retry(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        run_id = self.owned_run(peer, request)
        attempt = self.store.retry(run_id, by=peer.name)
        workspace = self.store.workspace(run_id)
        return {"run": run_id, "attempt": attempt,
                "landed": workspace is not None and workspace.landed_at is not None}

    def op_pause(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        self.require_admin(peer, "pause the queue")
        return {"changed": self.store.set_paused(True, by=peer.name)}

    def op_resume(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        self.require_admin(peer, "resume the queue")
        return {"changed": self.store.set_paused(False, by=peer.name)}

    def op_approve(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        run_id = self.reviewed_run(peer, request, "approve")
        message = _message(request, required=False)
        # The commit the reviewer looked at, required: without it, a change swapped in
        # by cancel and retry meanwhile would be approved unseen.
        head = _field(request, "head", str)
        if not (7 <= len(head) <= 64 and head.isascii()
                                     and all(c in "0123456789abcdef" for c in head)):
            raise Refused("bad_request", "'head' must be 7 to 64 lowercase hex digits")
        unread_ok = request.get("unread_ok", False)
        if not isinstance(unread_ok, bool):
            raise Refused("bad_request", "'unread_ok' must be true or false")
        approved = self.store.approve(run_id, by=peer.name, uid=peer.uid, message=message,
                                      head=head, unread_ok=unread_ok)
        return {"run": run_id, "head": approved}

    def op_reject(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        run_id = self.reviewed_run(peer, request, "reject")
        self.store.reject(run_id, by=peer.name, message=_message(request, required=True))
        return {"run": run_id}

    # ------------------------------------------------------------ ownership

    def reviewed_run(self, peer: Peer, request: dict[str, Any], verb: str) -> int:
        """A run the caller may review: root or a member of reviewer_group, and with
        review_by_other (four eyes) not its own submitter, root included."""
        run_id = _field(request, "run", int)
        if run_id < 1:
            raise Refused("bad_request", "'run' must be a positive run id")
        run = self.store.get_run(run_id)
        group = self.config.reviewer_group
        if not is_admin(peer.uid, group) and peer.uid != os.geteuid():
            raise Refused("permission_denied", f"permission denied: only root and members "
                          f"of group {group or '(none configured)'} may {verb} runs")
        if self.config.review_by_other and (
                run.submitted_uid == peer.uid if run.submitted_uid is not None
                else run.submitted_by == peer.name):
            raise Refused("permission_denied", f"permission denied: run {run_id} is yours, "
                          "and review_by_other asks another reviewer to decide")
        if run.state is not RunState.AWAITING_REVIEW:
            raise Refused("conflict", f"run {run_id} is {run.state.value}, not "
                          f"AWAITING_REVIEW: there is nothing to {verb}")
        return run_id

    def owned_run(self, peer: Peer, request: dict[str, Any]) -> int:
        run_id = _field(request, "run", int)
        if run_id < 1:
            raise Refused("bad_request", "'run' must be a positive run id")
        run = self.store.get_run(run_id)
        if not may_act_on(peer.uid, run.submitted_uid, run.submitted_by,
                          self.config.admin_group):
            raise Refused("permission_denied", f"permission denied: run {run_id} belongs to "
                          f"{run.submitted_by or 'another user'}")
        return run_id

    def require_admin(self, peer: Peer, what: str) -> None:
        if not is_admin(peer.uid, self.config.admin_group) and peer.uid != os.geteuid():
            group = self.config.admin_group or "(none configured)"
            raise Refused("permission_denied", f"permission denied: only root and members "
                          f"of group {group} may {what}")


def _waits(request: dict[str, Any]) -> dict[str, Any]:
    """A submit's `after`, `after_any` (run ids) and `not_before` (an ISO 8601 time
    with its offset, stored as UTC), checked."""
    waits: dict[str, Any] = {}
    for name in ("after", "after_any"):
        ids = request.get(name) or []
        if not isinstance(ids, list) or len(ids) > MAX_DEPENDENCIES or not all(
                isinstance(i, int) and not isinstance(i, bool) and 0 < i < 2**63
                for i in ids):
            raise Refused("bad_request", f"{name!r} must be a list of at most "
                          f"{MAX_DEPENDENCIES} run ids")
        waits[name] = ids
    when = request.get("not_before")
    waits["not_before"] = None
    if when is not None:
        from datetime import UTC, datetime, timedelta

        try:
            moment = datetime.fromisoformat(when) if isinstance(when, str) else None
            # (year 1 or 9999 with an offset: out of datetime's range in UTC)
            utc = moment.astimezone(UTC) if moment and moment.tzinfo else None
        except (ValueError, OverflowError):
            utc = None
        if utc is None:
            raise Refused("bad_request", "'not_before' must be an ISO 8601 time with its "
                          "UTC offset, from year 1 to 9999")
        if utc > datetime.now(UTC) + timedelta(days=MAX_DELAY_DAYS):
            raise Refused("bad_request", f"a run may be delayed at most {MAX_DELAY_DAYS} "
                          "days")
        waits["not_before"] = utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return waits


def _field(request: dict[str, Any], name: str, kind: type, *,
           optional: bool = False) -> Any:
    value = request.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        expected = "an integer" if kind is int else "a string"
        raise Refused("bad_request", f"{name!r} must be {expected}"
                      + (" or null" if optional else ""))
    return value


MAX_MESSAGE_CHARS = 2000


def _message(request: dict[str, Any], *, required: bool) -> str | None:
    message = _field(request, "message", str, optional=not required)
    if message is not None:
        message = message.strip()
        if len(message) > MAX_MESSAGE_CHARS:
            raise Refused("bad_request", f"'message' is at most {MAX_MESSAGE_CHARS} "
                          "characters")
    if required and not message:
        raise Refused("bad_request", "a rejection needs a message: say why (-m TEXT)")
    return message or None


def _default_name(path: str | None) -> str:
    if path is None:
        return "stdin"
    from .plan import MAX_NAME_CHARS

    stem = os.path.splitext(os.path.basename(path))[0]
    return stem[:MAX_NAME_CHARS] or "plan"


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == root or path.startswith(root + "/") for root in roots)
