"""Reading and checking the audit log. Entries are written with what they record, by the use
case that records it (persistence.sessions.write_change, the SOP catalog)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from application.authz import Actor, authorize
from application.context import Context
from application.ports import Store, StoredSession
from domain.audit_chain import (
    anchor_digest,
    nc_chain,
    session_chain,
    signature_problems,
    verify_chain,
)
from domain.errors import NotFound
from domain.evidence import Evidence
from domain.nonconformance import Nonconformance
from domain.signature import Signature

EXPORT_FORMAT = "worksession-audit-export/1"


async def list_entries(ctx: Context, actor: Actor, session_id: UUID | None, limit: int,
                       offset: int, chain: str | None = None) -> tuple[list[dict], int]:
    authorize(actor, "audit.read")
    async with ctx.uow(read_only=True) as uow:
        return await uow.audit.list_page(session_id, limit, offset, chain)


async def of_session(ctx: Context, actor: Actor, session_id: UUID) -> list[dict[str, Any]]:
    """Every entry of one session, oldest first (the CSV export: a whole chain, unpaged)."""
    authorize(actor, "audit.read")
    async with ctx.uow(read_only=True) as uow:
        return await uow.audit.of_session(session_id)


async def export_session(store: Store, session_id: UUID,
                         render: Callable[[StoredSession, datetime], dict[str, Any]],
                         render_upload: Callable[[Evidence], dict[str, Any]],
                         render_nc: Callable[[Nonconformance], dict[str, Any]]
                         ) -> dict[str, Any]:
    """One session as one document: the session (as `render` shows it: the API's shape, its
    checks with their files and its step times included), every upload of evidence files to
    it (as `render_upload` shows one: attached to a check or not), its audit chain as the API
    shows it, and the chain's head as the session's row records it; and each nonconformance
    opened on it (as `render_nc` shows one), with its own chain and head. `verify_export`
    checks it with no database (and the files' bytes, given a directory of them)."""
    now = datetime.now(UTC)
    async with store(read_only=True, snapshot=True) as uow:
        stored = await uow.sessions.load(session_id)
        if stored is None:
            raise NotFound(f"session {session_id} is not recorded")
        view = render(stored, now)
        uploads = [render_upload(e) for e in await uow.evidence.of_session(session_id)]
        entries = await uow.audit.of_session(session_id)
        head = await uow.sessions.chain_head(session_id)
        ncs = []
        for nc in await uow.nonconformances.of_session(session_id):
            nc_head = await uow.nonconformances.chain_head(nc.id)
            ncs.append({"nonconformance": render_nc(nc),
                        "signatures": _manifests([nc.signature] if nc.signature else []),
                        "audit": await uow.audit.of_chain(nc_chain(nc.id)),
                        "head": {"seq": nc_head[0], "hash": nc_head[1]}})
    return {"format": EXPORT_FORMAT, "exported_at": now.isoformat(), "session": view,
            "signatures": _manifests(stored.state.signatures), "evidence": uploads,
            "audit": entries, "head": {"seq": head[0], "hash": head[1]},
            "nonconformances": ncs}


def _manifests(signatures: list[Signature]) -> list[dict[str, str]]:
    """Each signature as a person reads it: name, date and time with zone, meaning,
    statement."""
    return [{"signature_id": str(g.id), "manifest": g.manifest()} for g in signatures]


def verify_export(doc: dict[str, Any], file_hash: Callable[[str], str | None] | None = None
                  ) -> tuple[int, list[str]]:
    """(entries checked, problems) of an exported session: its chain links from the first
    entry and matches every hash, ends at the head the session recorded, records every
    signature as the session holds it, and records every check of the session once, with
    the hashes of its files; every upload is in the chain with its hash, and every upload
    the chain records is in the export. With `file_hash` (the sha256 of the bytes kept
    under a name, None when there are none), every file the record names is also checked:
    missing or altered. A document that is not in the export's shape anywhere is a
    problem, not a crash."""
    try:
        return _verify_export(doc, file_hash)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        return 0, [f"the export is not in the export's shape ({type(e).__name__}: {e})"]


def _verify_export(doc: dict[str, Any], file_hash: Callable[[str], str | None] | None
                   ) -> tuple[int, list[str]]:
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
        return 0, [f"not a session export ({EXPORT_FORMAT})"]
    session, entries = doc.get("session"), doc.get("audit")
    if not (isinstance(session, dict) and isinstance(entries, list)
            and all(isinstance(e, dict) and isinstance(e.get("hash"), str)
                    and isinstance(e.get("detail"), dict | None) for e in entries)):
        return 0, ["the export's session or audit entries are not in the export's shape"]
    chain = session_chain(session.get("id"))  # type: ignore[arg-type]
    checked, problems = _chain_problems(chain, "session", entries, doc.get("head"))
    problems += signature_problems(chain, session.get("signatures") or [], entries)
    n, found = _nc_problems(session.get("id"), doc.get("nonconformances") or [])
    checked, problems = checked + n, problems + found
    accepted = [e for e in entries if e.get("outcome") == "accepted" and e.get("detail")]
    submitted = [e["detail"] for e in accepted if e.get("action") == "check_submitted"]
    recorded = {str(d.get("check_id")): d for d in submitted}
    checks = session.get("checks") or []
    kept = Counter(str(c.get("id")) for c in checks)
    chained = Counter(str(d.get("check_id")) for d in submitted)
    for check_id in sorted((kept - chained) | (chained - kept)):
        problems.append(f"check {check_id}: the session holds it {kept[check_id]} time(s), "
                        f"its chain records it {chained[check_id]} time(s)")
    # the files: named by the chain (which covers their hashes), described by the export
    named: dict[str, str] = {}  # sha256 -> what names it
    for c in checks:
        files = [f.get("sha256") for f in c.get("evidence") or []]
        in_chain = (recorded.get(str(c.get("id"))) or {}).get("evidence") or []
        if files != in_chain:
            problems.append(f"check {c.get('id')}: its files {_short(files)} are not the "
                            f"ones its chain entry records {_short(in_chain)}")
        named.update({h: f"check {c.get('id')}" for h in in_chain})
    uploads = {e["detail"].get("evidence_id"): e["detail"].get("sha256") for e in accepted
               if e.get("action") == "evidence_upload"}
    exported = doc.get("evidence") or []
    for u in exported:
        if uploads.get(u.get("id")) != u.get("sha256"):
            problems.append(f"upload {u.get('id')}: its hash {_short([u.get('sha256')])} is "
                            "not the one its chain entry records")
        elif u.get("sha256"):
            named.setdefault(u["sha256"], f"upload {u.get('id')}")
    for upload_id in sorted(set(uploads) - {u.get("id") for u in exported}, key=str):
        problems.append(f"upload {upload_id}: its chain entry records it, the export leaves "
                        "it out")
    if file_hash is not None:
        for sha256, what in sorted(named.items(), key=lambda kv: kv[1]):
            found = file_hash(sha256)
            if found is None:
                problems.append(f"evidence file {sha256} ({what}): missing")
            elif found != sha256:
                problems.append(f"evidence file {sha256} ({what}): altered (its bytes now "
                                f"hash to {found})")
    return checked, problems


def _chain_problems(chain: str, holder: str, entries: list[dict[str, Any]], head: Any
                    ) -> tuple[int, list[str]]:
    """The chain's entries link and match their hashes, and end at the head its holder (the
    session's or NC's row) records."""
    checked, problems = verify_chain(chain, entries)
    head = head if isinstance(head, dict) else {}
    last = (entries[-1]["seq"], entries[-1]["hash"]) if entries else (0, None)
    if not problems and (head.get("seq"), head.get("hash")) != last:
        problems.append(f"{chain}: the {holder} records {head.get('seq')} entries ending in "
                        f"{str(head.get('hash'))[:12]}…, the export has {last[0]} "
                        f"(entries removed or added at the end)")
    return checked, problems


def _nc_problems(session_id: Any, items: list[Any]) -> tuple[int, list[str]]:
    """Each exported NC: of this session, its chain whole up to the head its row records,
    and its closing signature the one its chain's `signed` entry records."""
    checked, problems = 0, []
    for item in items:
        nc = item.get("nonconformance") if isinstance(item, dict) else None
        entries = item.get("audit") if isinstance(item, dict) else None
        if not (isinstance(nc, dict) and isinstance(entries, list) and all(
                isinstance(e, dict) and isinstance(e.get("hash"), str)
                and isinstance(e.get("detail"), dict | None) for e in entries)):
            problems.append("a nonconformance of the export is not in the export's shape")
            continue
        chain = nc_chain(nc.get("id"))  # type: ignore[arg-type]
        if nc.get("session_id") != session_id:
            problems.append(f"{chain}: opened on session {nc.get('session_id')}, not this one")
        n, found = _chain_problems(chain, "nonconformance", entries, item.get("head"))
        signatures = [nc["signature"]] if isinstance(nc.get("signature"), dict) else []
        checked += n
        problems += found + signature_problems(chain, signatures, entries)
    return checked, problems


def files_named(doc: dict[str, Any]) -> int:
    """How many distinct files an export names (for the verdict's line)."""
    shas = {f.get("sha256") for c in (doc.get("session") or {}).get("checks") or []
            for f in c.get("evidence") or []}
    return len(shas | {u.get("sha256") for u in doc.get("evidence") or []})


def _short(hashes: list[Any]) -> str:
    return "[" + ", ".join(f"{str(h)[:12]}…" for h in hashes) + "]"


async def verify(store: Store, anchor: dict[str, Any] | None = None
                 ) -> tuple[int, list[str]]:
    """(entries checked, problems): every chain, every session's record of its chain, and
    with an anchor, that no anchored entry was lost or rewritten."""
    problems = []
    if anchor is not None and anchor_digest(anchor.get("chains", [])) != anchor.get("digest"):
        problems.append("the anchor's digest does not match its chains: the anchor file was "
                        "altered")
    async with store(read_only=True, snapshot=True) as uow:  # a live log
        n, found = await uow.audit.verify(anchor)
    return n, problems + found


async def anchor(store: Store) -> dict[str, Any]:
    async with store(read_only=True, snapshot=True) as uow:
        return await uow.audit.anchor(datetime.now(UTC))
