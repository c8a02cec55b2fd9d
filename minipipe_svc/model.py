"""Run and step states, and the one table that says which transitions are legal.

Everything that changes a state goes through `check_run_transition` /
`check_step_transition` (the store calls them inside the write transaction), so
this module is the only place that decides what may happen to a run.
"""

from __future__ import annotations


class _StateKind(type):
    """What the states need of `enum.StrEnum`, without importing `enum`: with what it
    pulls in, a sixth of a bare Python start, paid by every `minipipe ls` (bench/
    figure 7). A state class's UPPERCASE string attributes become its members: str
    instances of the class, one object per value (compare with `is`), iterable in
    definition order, looked up by value with `RunState("FAILED")` (ValueError if
    unknown)."""

    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, object]
                ) -> _StateKind:
        cls = super().__new__(mcs, name, bases, namespace)
        members = [str.__new__(cls, value) for key, value in namespace.items()
                   if key.isupper() and isinstance(value, str)]
        for member in members:
            type.__setattr__(cls, str(member), member)
        type.__setattr__(cls, "_members", tuple(members))
        type.__setattr__(cls, "_by_value", {str(m): m for m in members})
        return cls

    def __call__(cls, value: object) -> _State:  # type: ignore[override]
        try:
            return cls._by_value[value]  # type: ignore[attr-defined,no-any-return]
        except (KeyError, TypeError):
            raise ValueError(f"{value!r} is not a valid {cls.__name__}") from None

    def __iter__(cls):  # type: ignore[no-untyped-def]
        return iter(cls._members)  # type: ignore[attr-defined]

    def __len__(cls) -> int:
        return len(cls._members)  # type: ignore[attr-defined]

    def __setattr__(cls, name: str, value: object) -> None:
        raise AttributeError(f"{cls.__name__} cannot be changed")


class _State(str, metaclass=_StateKind):
    __slots__ = ()

    @property
    def value(self) -> str:
        return str.__str__(self)

    @property
    def name(self) -> str:
        return str.__str__(self)

    def __str__(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{str.__str__(self)}>"

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return type(self), (str.__str__(self),)


class RunState(_State):
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


# Where a step stands in its plan: a [workspace]'s setup command, the steps, the
# on_approve steps (after an approval, or at once without review), and the
# [[finally]] steps, after the others whatever their result.
STAGES = ("setup", "main", "on_approve", "finally")


class StepState(_State):
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
# Runs that wait (`after`): PENDING -> CANCELLED when a run it needs to have SUCCEEDED
# ended any other way (event dependency_failed, reason "dependency 12 ended FAILED"):
# no new state, since a cancelled run may be retried once the dependency succeeds.
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
