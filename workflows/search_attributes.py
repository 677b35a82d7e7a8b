"""Custom search attributes supervisors filter on in the Temporal UI."""

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
CURRENT_STEP_ID = SearchAttributeKey.for_keyword("CurrentStepId")
NEEDS_ATTENTION = SearchAttributeKey.for_bool("NeedsAttention")

ALL = [SESSION_ID, WORKER_ID, SOP_ID, SESSION_STATUS, CURRENT_STEP_ID, NEEDS_ATTENTION]


def initial(state: SessionState) -> TypedSearchAttributes:
    pairs = [
        SearchAttributePair(SESSION_ID, str(state.id)),
        SearchAttributePair(WORKER_ID, str(state.worker_id)),
        SearchAttributePair(SOP_ID, str(state.sop_id)),
        SearchAttributePair(SESSION_STATUS, state.status.value),
        SearchAttributePair(NEEDS_ATTENTION, state.needs_attention),
    ]
    if state.current_step_id is not None:
        pairs.append(SearchAttributePair(CURRENT_STEP_ID, str(state.current_step_id)))
    return TypedSearchAttributes(pairs)


def changes(state: SessionState, current: TypedSearchAttributes | None = None
            ) -> list[SearchAttributeUpdate]:
    """The session's changing attributes; with `current`, only those that differ from it
    (each upsert is an event in the history and a write to the server's visibility store)."""
    wanted: list[tuple[SearchAttributeKey[Any], Any]] = [
        (SESSION_STATUS, state.status.value),
        (CURRENT_STEP_ID, None if state.current_step_id is None else str(state.current_step_id)),
        (NEEDS_ATTENTION, state.needs_attention),
    ]
    return [key.value_unset() if value is None else key.value_set(value)
            for key, value in wanted if current is None or current.get(key) != value]
