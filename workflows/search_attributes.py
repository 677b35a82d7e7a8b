"""Custom search attributes supervisors filter on in the Temporal UI. They change only when
the status or needs-attention do (contract v1.1): the current step is in the details."""

from __future__ import annotations

from typing import Any

from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    SearchAttributeUpdate,
    TypedSearchAttributes,
)

from domain.work_session import SessionState

SESSION_ID = SearchAttributeKey.for_keyword("SessionId")
WORKER_ID = SearchAttributeKey.for_keyword("WorkerId")
SOP_ID = SearchAttributeKey.for_keyword("SopId")
SESSION_STATUS = SearchAttributeKey.for_keyword("SessionStatus")
NEEDS_ATTENTION = SearchAttributeKey.for_bool("NeedsAttention")

ALL = [SESSION_ID, WORKER_ID, SOP_ID, SESSION_STATUS, NEEDS_ATTENTION]


def initial(state: SessionState) -> TypedSearchAttributes:
    return TypedSearchAttributes([
        SearchAttributePair(SESSION_ID, str(state.id)),
        SearchAttributePair(WORKER_ID, str(state.worker_id)),
        SearchAttributePair(SOP_ID, str(state.sop_id)),
        SearchAttributePair(SESSION_STATUS, state.status.value),
        SearchAttributePair(NEEDS_ATTENTION, state.flagged),
    ])


def changes(state: SessionState, current: TypedSearchAttributes) -> list[SearchAttributeUpdate]:
    """The session's changing attributes that differ from `current`."""
    wanted: list[tuple[SearchAttributeKey[Any], Any]] = [
        (SESSION_STATUS, state.status.value),
        (NEEDS_ATTENTION, state.flagged),
    ]
    return [key.value_set(value) for key, value in wanted if current.get(key) != value]
