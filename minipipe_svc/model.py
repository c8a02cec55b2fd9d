"""Run and step states, and the one table that says which transitions are legal.

Everything that changes a state goes through `check_run_transition` /
`check_step_transition` (the store calls them inside the write transaction), so
this module is the only place that decides what may happen to a run.
"""

from __future__ import annotations

import enum


class RunState(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"
    INTERRUPTED = "INTERRUPTED"
    # Its steps succeeded and changed its workspace; a reviewer approves or rejects.
    AWAITING_REVIEW = "AWAITING_REVIEW"
    REJECTED = "REJECTED"

    @property
    def is_terminal(self) -> bool:
        return self in RUN_TERMINAL


class StepState(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    CANCELLED = "CANCELLED"
    SKIPPED = "SKIPPED"

    @property
    def is_terminal(self) -> bool:
        return self in STEP_TERMINAL


RUN_TERMINAL = frozenset(
    {RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.TIMED_OUT,
     RunState.INTERRUPTED, RunState.REJECTED}
)
# A run that ended any way but SUCCEEDED may be retried: it goes back to PENDING
# with attempt + 1. A SUCCEEDED run is resubmitted instead, never retried.
RUN_RETRYABLE = RUN_TERMINAL - {RunState.SUCCEEDED}

# RUNNING -> PENDING is a requeue: the runner could not begin the run (the system
# is shutting down, so systemd refuses new scopes) and gives it back untouched.
# The review gate (runs with a workspace and `review = true`):
#   RUNNING -> AWAITING_REVIEW   the steps succeeded with changes (event run_awaiting_review)
#   AWAITING_REVIEW -> PENDING   approved: queued to land the change (event run_approved);
#                                its runner lands it, runs the on_approve steps, and
#                                ends SUCCEEDED, or goes back to AWAITING_REVIEW when the
#                                change conflicts (event land_refused)
#   AWAITING_REVIEW -> REJECTED  rejected (event run_rejected); retry starts it afresh
#   AWAITING_REVIEW -> CANCELLED cancelled while waiting
# A run awaiting review holds no slot: only RUNNING runs count.
RUN_TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    RunState.PENDING: frozenset({RunState.RUNNING, RunState.CANCELLED}),
    RunState.RUNNING: frozenset(
        {RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.TIMED_OUT,
         RunState.INTERRUPTED, RunState.PENDING, RunState.AWAITING_REVIEW}
    ),
    RunState.AWAITING_REVIEW: frozenset(
        {RunState.PENDING, RunState.REJECTED, RunState.CANCELLED}),
    RunState.SUCCEEDED: frozenset(),
    RunState.FAILED: frozenset({RunState.PENDING}),
    RunState.CANCELLED: frozenset({RunState.PENDING}),
    RunState.TIMED_OUT: frozenset({RunState.PENDING}),
    RunState.INTERRUPTED: frozenset({RunState.PENDING}),
    RunState.REJECTED: frozenset({RunState.PENDING}),
}

STEP_TERMINAL = frozenset(
    {StepState.SUCCEEDED, StepState.FAILED, StepState.TIMED_OUT, StepState.CANCELLED,
     StepState.SKIPPED}
)

STEP_TRANSITIONS: dict[StepState, frozenset[StepState]] = {
    StepState.PENDING: frozenset({StepState.RUNNING, StepState.SKIPPED}),
    StepState.RUNNING: frozenset(
        {StepState.SUCCEEDED, StepState.FAILED, StepState.TIMED_OUT, StepState.CANCELLED}
    ),
    # A failed or timed-out attempt with retries left starts again (attempt + 1).
    # Every terminal state may also go back to PENDING, but only when the whole
    # run is retried (the store resets all steps in that one transaction).
    StepState.SUCCEEDED: frozenset({StepState.PENDING}),
    StepState.FAILED: frozenset({StepState.RUNNING, StepState.PENDING}),
    StepState.TIMED_OUT: frozenset({StepState.RUNNING, StepState.PENDING}),
    StepState.CANCELLED: frozenset({StepState.PENDING}),
    StepState.SKIPPED: frozenset({StepState.PENDING}),
}


class IllegalTransition(RuntimeError):
    """A state change the transition table forbids: always a bug, never ignored."""


def check_run_transition(current: RunState, new: RunState) -> None:
    if new not in RUN_TRANSITIONS[current]:
        raise IllegalTransition(f"run cannot go from {current.value} to {new.value}")


def check_step_transition(current: StepState, new: StepState) -> None:
    if new not in STEP_TRANSITIONS[current]:
        raise IllegalTransition(f"step cannot go from {current.value} to {new.value}")


# How a finished step maps onto the run that contains it.
RUN_STATE_FOR_STEP_FAILURE: dict[StepState, RunState] = {
    StepState.FAILED: RunState.FAILED,
    StepState.TIMED_OUT: RunState.TIMED_OUT,
    StepState.CANCELLED: RunState.CANCELLED,
}
