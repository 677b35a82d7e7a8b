"""per-session audit chains; one ordering rule for session writes

The single audit chain becomes one chain per session (`session:<id>`) and one per SOP family
(`sop:<family_id>`); every existing entry is carried over, re-chained in its old order, with
its old seq and hashes kept in `legacy` so that nothing recorded is lost. A session's chain
head lives on its row (audit_seq, audit_hash); an SOP family's in `audit_chains`. The global
head `audit_chain` and `work_sessions.run_position` (the second ordering rule) go.

An SOP's family is found through its row; an SOP deleted outright before this migration has
none left, so its `sop_delete` entries go to the chain `sop:<its own id>`.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""
import hashlib
import json
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

GENESIS = "0" * 64


def _at(value):  # SQLite keeps no zone: its datetimes are UTC
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _hash(prev_hash, body):
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)
    return hashlib.sha256((prev_hash + text).encode()).hexdigest()


def _uid(v):
    return None if v is None else str(v)


def upgrade() -> None:
    bind = op.get_bind()
    old = sa.table('audit_log', *[sa.column(c) for c in (
        'seq', 'actor_role', 'action', 'outcome', 'request_id', 'dedup_key', 'prev_hash',
        'hash')], *[sa.column(c, sa.Uuid()) for c in ('id', 'actor_id', 'session_id')],
        sa.column('at', sa.DateTime(timezone=True)), sa.column('detail', sa.JSON()))
    rows = [dict(r) for r in bind.execute(sa.select(old).order_by(old.c.seq)).mappings()]
    sops = sa.table('sops', sa.column('id', sa.Uuid()), sa.column('family_id', sa.Uuid()))
    families = {str(r.id): str(r.family_id) for r in bind.execute(sa.select(sops))}

    op.drop_table('audit_log')
    op.drop_table('audit_chain')
    new = op.create_table(
        'audit_log',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('chain', sa.String(length=80), nullable=False),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('actor_id', sa.Uuid(), nullable=True),
        sa.Column('actor_role', sa.String(length=16), nullable=True),
        sa.Column('action', sa.String(length=64), nullable=False),
        sa.Column('session_id', sa.Uuid(), nullable=True),
        sa.Column('outcome', sa.String(length=16), nullable=False),
        sa.Column('detail', sa.JSON(), nullable=True),
        sa.Column('request_id', sa.String(length=128), nullable=True),
        sa.Column('dedup_key', sa.String(length=200), nullable=True),
        sa.Column('prev_hash', sa.String(length=64), nullable=False),
        sa.Column('hash', sa.String(length=64), nullable=False),
        sa.Column('legacy', sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_log')),
        sa.UniqueConstraint('dedup_key', name=op.f('uq_audit_log_dedup_key')),
    )
    op.create_index('uq_audit_log_chain_seq', 'audit_log', ['chain', 'seq'], unique=True)
    op.create_index('ix_audit_log_session', 'audit_log', ['session_id', 'chain', 'seq'])
    op.create_index('ix_audit_log_at', 'audit_log', ['at'])
    heads_table = op.create_table(
        'audit_chains',
        sa.Column('chain', sa.String(length=80), nullable=False),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('hash', sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint('chain', name=op.f('pk_audit_chains')),
    )
    with op.batch_alter_table('work_sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('audit_seq', sa.Integer(), nullable=False,
                                      server_default=sa.text('0')))
        batch_op.add_column(sa.Column('audit_hash', sa.String(length=64), nullable=False,
                                      server_default=sa.text(f"'{GENESIS}'")))
        batch_op.drop_column('run_position')

    heads = {}
    out = []
    for r in rows:
        detail = r['detail']
        if r['session_id'] is not None:
            chain = f"session:{r['session_id']}"
        else:
            sop_id = str((detail or {}).get('sop_id'))
            chain = f"sop:{families.get(sop_id, sop_id)}"
        seq, prev = heads.get(chain, (0, GENESIS))
        seq += 1
        at = _at(r['at'])
        body = {"id": str(r['id']), "at": at.isoformat(), "actor_id": _uid(r['actor_id']),
                "actor_role": r['actor_role'], "action": r['action'],
                "session_id": _uid(r['session_id']), "outcome": r['outcome'],
                "detail": detail, "request_id": r['request_id'], "chain": chain, "seq": seq,
                "prev_hash": prev}
        digest = _hash(prev, body)
        heads[chain] = (seq, digest)
        out.append({**{k: r[k] for k in ('id', 'actor_id', 'actor_role', 'action',
                                          'session_id', 'outcome', 'detail', 'request_id',
                                          'dedup_key')},
                    "at": at, "chain": chain, "seq": seq, "prev_hash": prev, "hash": digest,
                    "legacy": {"seq": r['seq'], "prev_hash": r['prev_hash'],
                               "hash": r['hash']}})
    if out:
        op.bulk_insert(new, out)
    sessions = sa.table('work_sessions', sa.column('id', sa.Uuid()),
                        sa.column('audit_seq'), sa.column('audit_hash'))
    known = {str(i) for (i,) in bind.execute(sa.select(sessions.c.id))}
    loose = []
    for chain, (seq, digest) in heads.items():
        kind, _, ident = chain.partition(":")
        if kind == "session" and ident in known:
            bind.execute(sessions.update().where(sessions.c.id == sa.bindparam('sid'))
                         .values(audit_seq=seq, audit_hash=digest),
                         {"sid": uuid.UUID(ident)})
        else:
            loose.append({"chain": chain, "seq": seq, "hash": digest})
    if loose:
        op.bulk_insert(heads_table, loose)


def downgrade() -> None:
    raise NotImplementedError("per-session audit chains cannot be folded back into one "
                              "chain: restore a backup taken before 0003")
