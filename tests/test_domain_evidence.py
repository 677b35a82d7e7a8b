"""Evidence files in the domain: what a file is (from its first bytes), how large it may be,
each step's evidence rule, and a file being evidence of one check only."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest

from domain.errors import InvalidInput
from domain.evidence import SNIFF_BYTES, EvidenceFile, Inspection, TooLarge, UnsupportedType
from domain.sop import CheckKind, CheckResult, CheckSpec, EvidenceRule, SessionPlan
from domain.work_session import CheckSubmission, WorkSession
from tests.evidence_files import REFUSED, TAKEN, heif_compatible_heic

T0 = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)


def inspect(data: bytes, limit: int = 10_000, chunk: int = 7) -> str:
    i = Inspection(limit)
    for n in range(0, len(data), chunk):
        i.feed(data[n:n + chunk])
    return i.finish()


@pytest.mark.parametrize("content_type", list(TAKEN))
def test_a_file_is_typed_by_its_first_bytes(content_type):
    assert inspect(TAKEN[content_type]()) == content_type


def test_a_heif_file_that_names_heic_among_its_brands_is_heic():
    assert inspect(heif_compatible_heic()) == "image/heic"


@pytest.mark.parametrize("name", list(REFUSED))
def test_anything_else_is_refused_whatever_it_is_called(name):
    with pytest.raises(UnsupportedType):
        inspect(REFUSED[name][0])


def test_the_type_is_refused_as_soon_as_the_first_bytes_are_in():
    i = Inspection(10_000_000)
    i.feed(b"<html>" + b" " * (SNIFF_BYTES - 7))  # one byte short: undecided
    with pytest.raises(UnsupportedType):
        i.feed(b" ")


def test_a_file_over_the_limit_is_refused_as_it_passes_it():
    i = Inspection(100)
    i.feed(TAKEN["image/png"]()[:100])
    with pytest.raises(TooLarge):
        i.feed(b"x")


def test_a_file_at_the_limit_is_taken():
    data = TAKEN["application/pdf"](500)
    assert inspect(data, limit=len(data)) == "application/pdf"


def plan(rule: EvidenceRule, kind: CheckKind = CheckKind.CONFIRM) -> SessionPlan:
    from domain.sop import PlanStep
    spec = CheckSpec(kind=kind, prompt="ok?", evidence=rule,
                     **({"min": 0, "max": 1} if kind is CheckKind.MEASUREMENT else {}))
    steps = [PlanStep(id=uuid4(), title=f"S{i}", check=spec, task_id=uuid4(), task_title="T")
             for i in range(3)]
    return SessionPlan(sop_id=uuid4(), sop_title="SOP", sop_version=1, steps=steps)


def file() -> EvidenceFile:
    return EvidenceFile(id=uuid4(), sha256="a" * 64, content_type="image/jpeg", bytes=10)


def submission(session: WorkSession, *files: EvidenceFile, result=CheckResult.PASSED,
               check_id=None) -> CheckSubmission:
    return CheckSubmission(step_id=session.state.current_step_id, check_id=check_id or uuid4(),
                           result=result, evidence_ids=tuple(f.id for f in files)
                           ).with_files(files)


@pytest.mark.parametrize("rule,result,files,ok", [
    (EvidenceRule.OPTIONAL, CheckResult.PASSED, 0, True),
    (EvidenceRule.OPTIONAL, CheckResult.FAILED, 2, True),
    (EvidenceRule.REQUIRED, CheckResult.PASSED, 0, False),
    (EvidenceRule.REQUIRED, CheckResult.FAILED, 0, False),
    (EvidenceRule.REQUIRED, CheckResult.PASSED, 1, True),
    (EvidenceRule.REQUIRED_ON_FAIL, CheckResult.PASSED, 0, True),
    (EvidenceRule.REQUIRED_ON_FAIL, CheckResult.FAILED, 0, False),
    (EvidenceRule.REQUIRED_ON_FAIL, CheckResult.FAILED, 1, True),
    (EvidenceRule.NONE, CheckResult.PASSED, 0, True),
    (EvidenceRule.NONE, CheckResult.PASSED, 1, False),
])
def test_each_step_s_evidence_rule(rule, result, files, ok):
    session = WorkSession.start(uuid4(), uuid4(), plan(rule), T0)
    sub = submission(session, *[file() for _ in range(files)], result=result)
    if ok:
        assert session.add_check(sub, uuid4(), T0) is not None
        assert len(session.state.checks[-1].evidence) == files
    else:
        with pytest.raises(InvalidInput) as e:
            session.add_check(sub, uuid4(), T0)
        assert e.value.extra["errors"][0]["field"] == "evidence_ids"
        assert session.state.checks == [] and session.state.version == 0


def test_a_measurement_s_result_decides_whether_a_failed_check_needs_a_file():
    session = WorkSession.start(uuid4(), uuid4(),
                                plan(EvidenceRule.REQUIRED_ON_FAIL, CheckKind.MEASUREMENT), T0)
    sub = CheckSubmission(step_id=session.state.current_step_id, check_id=uuid4(), value=5.0)
    with pytest.raises(InvalidInput, match="failed check on this step needs"):
        session.add_check(sub, uuid4(), T0)


def test_a_file_is_evidence_of_one_check_only():
    session = WorkSession.start(uuid4(), uuid4(), plan(EvidenceRule.OPTIONAL), T0)
    photo = file()
    session.add_check(submission(session, photo, result=CheckResult.FAILED), uuid4(), T0)
    with pytest.raises(InvalidInput, match="already attached to another check"):
        session.add_check(submission(session, photo), uuid4(), T0)
    assert len(session.state.checks) == 1


def test_a_repeated_check_id_is_the_same_check_only_with_the_same_files():
    session = WorkSession.start(uuid4(), uuid4(), plan(EvidenceRule.OPTIONAL), T0)
    a, b = file(), file()
    cid = uuid4()
    first = submission(session, a, b, result=CheckResult.FAILED, check_id=cid)
    session.add_check(first, uuid4(), T0)
    again = CheckSubmission(step_id=first.step_id, check_id=cid, result=CheckResult.FAILED,
                            evidence_ids=(b.id, a.id)).with_files([a, b])
    assert session.add_check(again, uuid4(), T0) is None  # recorded once
    other = CheckSubmission(step_id=first.step_id, check_id=cid, result=CheckResult.FAILED,
                            evidence_ids=(a.id,)).with_files([a])
    with pytest.raises(InvalidInput, match="already used for a different check"):
        session.add_check(other, uuid4(), T0)


def test_a_file_named_must_be_one_of_the_session_s_uploads_and_named_once():
    a = file()
    sub = CheckSubmission(step_id=uuid4(), check_id=uuid4(), evidence_ids=(a.id, uuid4()))
    with pytest.raises(InvalidInput, match="not uploaded to this session"):
        sub.with_files([a])
    twice = CheckSubmission(step_id=uuid4(), check_id=uuid4(), evidence_ids=(a.id, a.id))
    with pytest.raises(InvalidInput, match="names a file twice"):
        twice.with_files([a])
