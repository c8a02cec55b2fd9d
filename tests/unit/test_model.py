"""The transition table, checked for every pair of states against a literal copy."""

import itertools

import pytest

from minipipe_svc.model import (
    IllegalTransition,
    RunState,
    StepState,
    check_run_transition,
    check_step_transition,
)

R = RunState
S = StepState

LEGAL_RUN = {
    (R.PENDING, R.RUNNING), (R.PENDING, R.CANCELLED),
    (R.RUNNING, R.SUCCEEDED), (R.RUNNING, R.FAILED), (R.RUNNING, R.CANCELLED),
    (R.RUNNING, R.TIMED_OUT), (R.RUNNING, R.INTERRUPTED),
    # requeue: a runner that could not begin the run (system shutting down)
    (R.RUNNING, R.PENDING),
    # retry: every unsuccessful end may become a new attempt
    (R.FAILED, R.PENDING), (R.CANCELLED, R.PENDING), (R.TIMED_OUT, R.PENDING),
    (R.INTERRUPTED, R.PENDING), (R.REJECTED, R.PENDING),
    # the review gate: steps succeeded with changes; approved (queued to land),
    # rejected, or cancelled while waiting; a refused landing waits again
    (R.RUNNING, R.AWAITING_REVIEW), (R.AWAITING_REVIEW, R.PENDING),
    (R.AWAITING_REVIEW, R.REJECTED), (R.AWAITING_REVIEW, R.CANCELLED),
}

LEGAL_STEP = {
    (S.PENDING, S.RUNNING), (S.PENDING, S.SKIPPED),
    (S.RUNNING, S.SUCCEEDED), (S.RUNNING, S.FAILED), (S.RUNNING, S.TIMED_OUT),
    (S.RUNNING, S.CANCELLED),
    # a step's own retry
    (S.FAILED, S.RUNNING), (S.TIMED_OUT, S.RUNNING),
    # reset when the whole run is retried
    (S.SUCCEEDED, S.PENDING), (S.FAILED, S.PENDING), (S.TIMED_OUT, S.PENDING),
    (S.CANCELLED, S.PENDING), (S.SKIPPED, S.PENDING),
}


@pytest.mark.parametrize(("current", "new"), list(itertools.product(RunState, RunState)))
def test_every_run_state_pair(current: RunState, new: RunState) -> None:
    if (current, new) in LEGAL_RUN:
        check_run_transition(current, new)
    else:
        with pytest.raises(IllegalTransition, match=f"{current.value} to {new.value}"):
            check_run_transition(current, new)


@pytest.mark.parametrize(("current", "new"), list(itertools.product(StepState, StepState)))
def test_every_step_state_pair(current: StepState, new: StepState) -> None:
    if (current, new) in LEGAL_STEP:
        check_step_transition(current, new)
    else:
        with pytest.raises(IllegalTransition):
            check_step_transition(current, new)


def test_terminal_states() -> None:
    assert {s for s in RunState if s.is_terminal} == {
        R.SUCCEEDED, R.FAILED, R.CANCELLED, R.TIMED_OUT, R.INTERRUPTED, R.REJECTED}
    # Awaiting review is not an end: a reviewer still decides.
    assert not R.AWAITING_REVIEW.is_terminal
    assert {s for s in StepState if s.is_terminal} == {
        S.SUCCEEDED, S.FAILED, S.TIMED_OUT, S.CANCELLED, S.SKIPPED}


def test_succeeded_run_is_final() -> None:
    for new in RunState:
        with pytest.raises(IllegalTransition):
            check_run_transition(R.SUCCEEDED, new)
