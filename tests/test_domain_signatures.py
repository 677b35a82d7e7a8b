"""The signature rules of the WorkSession aggregate (domain/work_session.py), with no
framework: a verify step waits, a second person releases it, the performer may not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest

from domain.errors import (
    Forbidden,
    InvalidInput,
    SessionLocked,
    StepAwaitsVerification,
    StepNotAwaitingVerification,
    WrongState,
)
from domain.signature import Meaning, Signature
from domain.sop import CheckKind, CheckResult, CheckSpec, PlanStep, SessionPlan
from domain.work_session import CheckSubmission, SessionStatus, WorkSession

WORKER, SUPERVISOR = uuid4(), uuid4()
T0 = datetime(2026, 12, 7, 8, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def session(*verify: bool) -> WorkSession:
    task = uuid4()
    steps = [PlanStep(id=uuid4(), title=f"Step {i}", task_id=task, task_title="T",
                      check=CheckSpec(CheckKind.CONFIRM, "done?", verify=v))
             for i, v in enumerate(verify)]
    plan = SessionPlan(sop_id=uuid4(), sop_title="SOP", sop_version=1, steps=steps)
    return WorkSession.start(uuid4(), WORKER, plan, T0)


def passed(s: WorkSession, when: float = 1) -> None:
    assert s.state.current_step_id is not None
    s.add_check(CheckSubmission(step_id=s.state.current_step_id, check_id=uuid4(),
                                result=CheckResult.PASSED), WORKER, at(when))


def sig(s: WorkSession, meaning: Meaning, by: UUID = SUPERVISOR, step: UUID | None = None,
        when: float = 10) -> Signature:
    return Signature(id=uuid4(), session_id=s.state.id, meaning=meaning, step_id=step,
                     signer_id=by, signer_name="Dana", signer_role="supervisor",
                     signed_at=at(when), statement=None)


def test_a_passed_check_on_a_verify_step_waits_and_blocks_further_checks():
    s = session(True, False)
    first = s.state.current_step_id
    passed(s)
    wait = s.state.awaiting_verification
    assert wait is not None and wait.step_id == first and wait.since == at(1)
    assert wait.check_id == s.state.checks[-1].id and s.state.current_step_id == first
    with pytest.raises(StepAwaitsVerification):
        passed(s, 2)


def test_a_verification_advances_as_the_passed_check_would_have():
    s = session(True, False)
    first, second = (p.id for p in s.plan.steps)
    passed(s)
    version = s.state.version
    s.verify(sig(s, Meaning.VERIFIED, step=first))
    assert s.state.awaiting_verification is None and s.state.current_step_id == second
    assert s.state.version > version and [g.meaning for g in s.state.signatures] == [
        Meaning.VERIFIED]


def test_verifying_the_last_step_completes_the_session():
    s = session(True)
    passed(s)
    s.verify(sig(s, Meaning.VERIFIED, step=s.plan.steps[0].id))
    assert s.state.status is SessionStatus.COMPLETED


def test_the_performer_may_not_verify_and_nothing_awaiting_is_a_conflict():
    s = session(True, False)
    first, second = (p.id for p in s.plan.steps)
    with pytest.raises(StepNotAwaitingVerification):
        s.copy().verify(sig(s, Meaning.VERIFIED, step=first))
    passed(s)
    with pytest.raises(Forbidden):
        s.copy().verify(sig(s, Meaning.VERIFIED, by=WORKER, step=first))
    with pytest.raises(StepNotAwaitingVerification):
        s.copy().verify(sig(s, Meaning.VERIFIED, step=second))
    with pytest.raises(InvalidInput):
        s.copy().verify(sig(s, Meaning.VERIFIED, step=uuid4()))
    with pytest.raises(InvalidInput):
        s.copy().verify(sig(s, Meaning.VERIFIED))


def test_a_verification_repeated_by_its_signer_is_taken_once_and_a_new_wait_takes_a_new_one():
    s = session(True, False)
    first = s.plan.steps[0].id
    passed(s)
    s.verify(sig(s, Meaning.VERIFIED, step=first))
    version = s.state.version
    s.verify(sig(s, Meaning.VERIFIED, step=first, when=11))  # a resend: nothing changes
    assert s.state.version == version and len(s.state.signatures) == 1
    with pytest.raises(StepNotAwaitingVerification):  # someone else's: nothing awaits
        s.copy().verify(sig(s, Meaning.VERIFIED, by=uuid4(), step=first))
    # completed early, reopened at the step, checked again: the same person verifies anew
    s.complete(at(20), manual=True)
    s.reopen(at(21), first)
    passed(s, 22)
    s.verify(sig(s, Meaning.VERIFIED, step=first, when=23))
    assert len(s.state.signatures) == 2 and s.state.awaiting_verification is None


def test_ending_early_clears_the_wait():
    s = session(True, False)
    passed(s)
    s.complete(at(5), manual=True)
    assert s.state.awaiting_verification is None
    # its passed check was never verified: the step is listed as not done, with the rest,
    # and a reopening goes back to it
    assert s.state.unchecked_step_ids == [p.id for p in s.plan.steps]
    s.reopen(at(6))
    assert s.state.current_step_id == s.plan.steps[0].id


def test_a_verified_step_counts_as_done_when_the_session_is_completed_early():
    s = session(True, False, False)
    first, second, third = (p.id for p in s.plan.steps)
    passed(s)
    s.verify(sig(s, Meaning.VERIFIED, step=first))
    passed(s, 20)
    s.complete(at(30), manual=True)
    assert s.state.unchecked_step_ids == [third]


def test_performed_is_the_worker_s_once_completed_and_approved_locks():
    s = session(False)
    with pytest.raises(WrongState):
        s.copy().sign_performed(sig(s, Meaning.PERFORMED, by=WORKER))
    with pytest.raises(WrongState):
        s.copy().approve(SUPERVISOR, at(9), sig(s, Meaning.APPROVED))
    passed(s)
    with pytest.raises(Forbidden):
        s.copy().sign_performed(sig(s, Meaning.PERFORMED))
    with pytest.raises(InvalidInput):
        s.copy().approve(SUPERVISOR, at(9), sig(s, Meaning.APPROVED, step=s.plan.steps[0].id))
    s.sign_performed(sig(s, Meaning.PERFORMED, by=WORKER))
    approval = sig(s, Meaning.APPROVED, when=20)
    s.approve(approval.signer_id, approval.signed_at, approval)
    assert s.state.locked and s.state.approved_at == at(20)
    assert [g.meaning for g in s.state.signatures] == [Meaning.PERFORMED, Meaning.APPROVED]
    with pytest.raises(SessionLocked):
        s.copy().sign_performed(sig(s, Meaning.PERFORMED, by=WORKER))


def test_the_manifest_reads_name_time_with_zone_meaning_and_statement():
    s = session(True)
    g = Signature(id=uuid4(), session_id=s.state.id, meaning=Meaning.VERIFIED,
                  step_id=s.plan.steps[0].id, signer_id=SUPERVISOR, signer_name="Dana Reviewer",
                  signer_role="supervisor", signed_at=at(61), statement="Seen")
    assert g.manifest() == (f"Dana Reviewer, 2026-12-07 08:01:01 UTC, verified (step "
                            f"{s.plan.steps[0].id}): \"Seen\"")
