"""Audit log endpoint: a page of entries as JSON, or one session's whole chain as CSV."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request, Response

from api.deps import (
    Ctx,
    CurrentActor,
    PageParams,
    problems,
    refuse_unknown_parameters,
    require,
)
from api.routing import PrecedenceRoute
from api.schemas import AuditEntryOut, Page
from application import audit as uc
from application.authz import Actor
from domain.audit_chain import canonical, hashed_body
from domain.errors import InvalidInput

router = APIRouter(prefix="/api/v1/audit", tags=["Audit"], route_class=PrecedenceRoute)

CSV = "text/csv"
COLUMNS = list(AuditEntryOut.model_fields)


HEX = "[0-9a-fA-F]"
CHAIN = f"^(session|sop|nc):{HEX}{{8}}-{HEX}{{4}}-{HEX}{{4}}-{HEX}{{4}}-{HEX}{{12}}$"


@dataclass(frozen=True)
class AuditFilter:
    session_id: UUID | None
    chain: str | None


async def _audit_filter(request: Request, session_id: UUID | None = Query(None),
                        chain: str | None = Query(
                            None, pattern=CHAIN, description="one chain: session:<id>, "
                            "sop:<family_id> or nc:<id>")) -> AuditFilter:
    refuse_unknown_parameters(request, _audit_filter, "limit", "offset")
    return AuditFilter(session_id, chain.lower() if chain else None)


@router.get("", response_model=Page[AuditEntryOut], responses={**problems(403), 200: {
    "description": "JSON: a page of entries, oldest first. CSV (`Accept: text/csv`, with "
                   "`session_id`): the session's whole chain, unpaged, one entry per row, "
                   "`detail` as the canonical JSON its hash covers. Every cell is quoted, "
                   "and a cell that would begin with `=`, `+`, `-`, `@`, a tab, a carriage "
                   "return or `'` begins with one more `'`, so that a spreadsheet shows it "
                   "as text instead of running it as a formula (OWASP, CSV injection). To "
                   "re-check the hashes from the cells, first drop one leading `'` from "
                   "every cell that has one.",
    "content": {CSV: {"schema": {"type": "string"}}}}})
async def list_audit(request: Request, actor: CurrentActor, ctx: Ctx, paging: PageParams,
                     _: Actor = require("audit.read"),
                     # after `require`: FastAPI runs dependencies in this order, and 403
                     # comes before 422 (CONTRACT.md, "Error precedence")
                     f: AuditFilter = Depends(_audit_filter)) -> Any:
    session_id = f.session_id
    if prefers_csv(request.headers.get("accept", "")):
        if session_id is None:
            raise InvalidInput("the CSV export is one session's chain: add session_id=",
                               errors=[{"field": "query.session_id",
                                        "message": "required with Accept: text/csv"}])
        return Response(as_csv(await uc.of_session(ctx, actor, session_id)),
                        media_type=f"{CSV}; charset=utf-8", headers={
                            "Content-Disposition":
                                f'attachment; filename="audit-session-{session_id}.csv"'})
    items, total = await uc.list_entries(ctx, actor, session_id, paging.limit, paging.offset,
                                         f.chain)
    return paging.page([{**i, "at": hashed_body(i)["at"]} for i in items], total)


def prefers_csv(accept: str) -> bool:
    """CSV when the Accept header asks for it at least as much as for JSON."""
    weights: dict[str, float] = {}
    for part in accept.lower().split(","):
        media, *params = (p.strip() for p in part.split(";"))
        weight = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    weight = float(p[2:])
                except ValueError:
                    weight = 0.0
        weights[media] = max(weight, weights.get(media, 0.0))
    return weights.get(CSV, 0.0) > 0 and weights[CSV] >= weights.get("application/json", 0.0)


# What makes a spreadsheet read a cell as a formula (OWASP, CSV injection), and `'` itself,
# so that a reader can always undo the escape: drop one leading `'` wherever there is one.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def spreadsheet_safe(cell: str) -> str:
    """The cell as a spreadsheet will show it as text: one `'` before a formula start."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def as_csv(entries: list[dict[str, Any]]) -> str:
    """The entries' hashed fields, then `manifest`: a signature as a person reads it (name,
    date and time with zone, meaning, statement; from its `signed` entry's detail, which the
    hash covers), empty on every other row."""
    out = io.StringIO()
    w = csv.writer(out, quoting=csv.QUOTE_ALL)
    w.writerow([*COLUMNS, "manifest"])
    for e in entries:
        w.writerow([spreadsheet_safe(cell) for cell in [
            *("" if e[k] is None else canonical(e[k]) if k == "detail" else str(e[k])
              for k in COLUMNS), _manifest(e)]])
    return out.getvalue()


def _manifest(entry: dict[str, Any]) -> str:
    detail = entry.get("detail") or {}
    if entry["action"] != "signed" or entry["outcome"] != "accepted":
        return ""
    return str(detail.get("manifest") or "")
