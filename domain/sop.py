"""Standard operating procedures: a catalog of versioned, confirmable checklists."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from uuid import UUID

from domain.errors import InvalidInput, SopNotEditable, SopNotStartable


class SopStatus(StrEnum):
    DRAFT = "draft"
    CONFIRMED = "confirmed"
    ARCHIVED = "archived"


class CheckKind(StrEnum):
    CONFIRM = "confirm"
    MEASUREMENT = "measurement"


class CheckResult(StrEnum):
    PASSED = "passed"
    FAILED = "failed"


class EvidenceRule(StrEnum):
    """Which checks on a step need a file (photo, document) as evidence. SOPs from before
    the rule existed read as `optional`."""

    NONE = "none"  # no file may be attached
    OPTIONAL = "optional"
    REQUIRED = "required"  # every check needs at least one
    REQUIRED_ON_FAIL = "required_on_fail"  # a failed check needs at least one


class OnFail(StrEnum):
    """What a failed check on a step leads to (CONTRACT.md, "Nonconformances"). SOPs from
    before the rule existed read as `retry`."""

    RETRY = "retry"  # recorded; the worker tries again (escalation after repeated failures)
    NONCONFORMANCE = "nonconformance"  # opens a nonconformance; the worker may retry
    HOLD = "hold"  # opens one and holds the session on the step until it is contained


class Severity(StrEnum):
    MINOR = "minor"
    MAJOR = "major"
    CRITICAL = "critical"


@dataclass(frozen=True)
class CheckSpec:
    kind: CheckKind
    prompt: str
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    evidence: EvidenceRule = EvidenceRule.OPTIONAL
    # A passed check on the step waits for a second person's `verified` signature before
    # the session moves on (CONTRACT.md, "Second-person verification").
    verify: bool = False
    on_fail: OnFail = OnFail.RETRY
    severity: Severity = Severity.MAJOR  # of the nonconformance a failed check opens

    def validate(self) -> None:
        if self.kind is CheckKind.MEASUREMENT:
            if self.min is None and self.max is None:
                raise InvalidInput("a measurement check needs a min, a max or both")
            if self.min is not None and self.max is not None and self.min > self.max:
                raise InvalidInput("a measurement check's min must not exceed its max")
        elif self.min is not None or self.max is not None or self.unit is not None:
            raise InvalidInput("a confirm check takes no unit, min or max")

    def decide(self, result: CheckResult | None, value: float | None) -> CheckResult:
        """The result of a check: stated by the worker for `confirm`, measured for `measurement`."""
        if self.kind is CheckKind.CONFIRM:
            if result is None:
                raise InvalidInput("a confirm check needs a result: passed or failed",
                                   errors=[{"field": "result", "message": "required"}])
            if value is not None:
                raise InvalidInput("a confirm check takes no value",
                                   errors=[{"field": "value", "message": "not allowed"}])
            return result
        if value is None or not math.isfinite(value):
            raise InvalidInput("a measurement check needs a finite numeric value",
                               errors=[{"field": "value", "message": "required"}])
        within = (self.min is None or value >= self.min) and (self.max is None or value <= self.max)
        measured = CheckResult.PASSED if within else CheckResult.FAILED
        if result is not None and result is not measured:
            raise InvalidInput(
                f"value {value:g} means the check {measured.value}, but the request says "
                f"{result.value}",
                errors=[{"field": "result", "message": "contradicts value"}],
            )
        return measured

    def ensure_evidence(self, result: CheckResult, files: int) -> None:
        """The step's evidence rule, for a check with that result and that many files."""
        if self.evidence is EvidenceRule.NONE and files:
            raise InvalidInput("this step takes no evidence files", errors=[
                {"field": "evidence_ids", "message": "not allowed on this step"}])
        needed = self.evidence is EvidenceRule.REQUIRED or (
            self.evidence is EvidenceRule.REQUIRED_ON_FAIL and result is CheckResult.FAILED)
        if needed and not files:
            which = "a" if self.evidence is EvidenceRule.REQUIRED else "a failed"
            raise InvalidInput(f"{which} check on this step needs at least one evidence "
                               "file: upload it to the session and name it in evidence_ids",
                               errors=[{"field": "evidence_ids", "message": "required"}])


@dataclass
class SopStep:
    id: UUID
    title: str
    check: CheckSpec
    position: int
    instructions: str | None = None


@dataclass
class SopTask:
    id: UUID
    title: str
    position: int
    steps: list[SopStep] = field(default_factory=list)


@dataclass
class Sop:
    id: UUID
    family_id: UUID
    version: int
    status: SopStatus
    title: str
    description: str | None
    tasks: list[SopTask]
    created_at: datetime
    updated_at: datetime
    confirmed_at: datetime | None = None

    def validate(self) -> None:
        if not self.tasks:
            raise InvalidInput("an SOP needs at least one task",
                               errors=[{"field": "tasks", "message": "at least one task"}])
        for t_index, task in enumerate(self.tasks):
            if not task.steps:
                raise InvalidInput(
                    f"task {t_index + 1} ({task.title!r}) needs at least one step",
                    errors=[{"field": f"tasks.{t_index}.steps", "message": "at least one step"}],
                )
            for s_index, step in enumerate(task.steps):
                try:
                    step.check.validate()
                except InvalidInput as exc:
                    field_name = f"tasks.{t_index}.steps.{s_index}.check"
                    raise InvalidInput(exc.detail, errors=[{"field": field_name,
                                                            "message": exc.detail}]) from None

    def ensure_editable(self) -> None:
        if self.status is not SopStatus.DRAFT:
            raise SopNotEditable(f"SOP is {self.status.value}: only drafts can be changed",
                                 sop_status=self.status.value)

    def confirm(self, now: datetime) -> None:
        self.ensure_editable()
        self.validate()
        self.status = SopStatus.CONFIRMED
        self.confirmed_at = now
        self.updated_at = now

    def ensure_startable(self) -> None:
        if self.status is not SopStatus.CONFIRMED:
            raise SopNotStartable(
                f"SOP is {self.status.value}: sessions start only from confirmed SOPs",
                sop_status=self.status.value)

    def ensure_revisable(self) -> None:
        if self.status is not SopStatus.CONFIRMED:
            raise SopNotEditable(
                f"SOP is {self.status.value}: revisions are made from confirmed SOPs",
                sop_status=self.status.value)

    def plan(self) -> SessionPlan:
        """The ordered steps a session walks through: tasks in order, steps in order within."""
        steps = [
            PlanStep(id=step.id, title=step.title, instructions=step.instructions,
                     check=step.check, task_id=task.id, task_title=task.title)
            for task in sorted(self.tasks, key=lambda t: t.position)
            for step in sorted(task.steps, key=lambda s: s.position)
        ]
        return SessionPlan(sop_id=self.id, sop_title=self.title, sop_version=self.version,
                           steps=steps)


@dataclass(frozen=True)
class PlanStep:
    id: UUID
    title: str
    check: CheckSpec
    task_id: UUID
    task_title: str
    instructions: str | None = None


@dataclass(frozen=True)
class SessionPlan:
    """A snapshot of a confirmed SOP's steps, in order. A running session only ever sees this."""

    sop_id: UUID
    sop_title: str
    sop_version: int
    steps: list[PlanStep]

    def index_of(self, step_id: UUID) -> int | None:
        for i, step in enumerate(self.steps):
            if step.id == step_id:
                return i
        return None

    def step(self, step_id: UUID) -> PlanStep | None:
        i = self.index_of(step_id)
        return None if i is None else self.steps[i]

    def step_after(self, step_id: UUID) -> PlanStep | None:
        """Next step of the same task, else the first step of the next task."""
        i = self.index_of(step_id)
        if i is None or i + 1 >= len(self.steps):
            return None
        return self.steps[i + 1]
