"""`worksession`: the service's command line (see CONTRACT.md, "Commands")."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from worksession import aio, logs
from worksession.settings import Settings

# These log at WORKSESSION_LOG_LEVEL; the other commands only what goes wrong (`dev` too: its
# API and worker are processes of their own, `api` and `worker`).
SERVICES = {"api", "worker"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="worksession", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="run the whole stack on this machine (embedded defaults)")
    dev.add_argument("--data-dir", type=Path, default=Path("./data"))
    dev.add_argument("--port", type=int, default=8000, help="API port")
    dev.add_argument("--temporal-port", type=int, default=7233)
    dev.add_argument("--ui-port", type=int, default=8233)
    dev.add_argument("--api-processes", type=int, default=1, choices=range(1, 17),
                     metavar="N", help="API processes sharing the port (default 1)")
    dev.add_argument("--metrics-port", type=int, default=9464,
                     help="the API's Prometheus metrics (more API processes: the next free "
                          "ports after it)")
    dev.add_argument("--worker-metrics-port", type=int, default=9465,
                     help="the worker's Prometheus metrics (the Temporal SDK's and its own)")

    api = sub.add_parser("api", help="run the API alone (configured by WORKSESSION_* variables)")
    api.add_argument("--fd", type=int, default=None,
                     help="accept on this inherited listening socket instead of binding "
                          "WORKSESSION_API_HOST:PORT (several processes can share one)")
    sub.add_parser("worker", help="run the Temporal worker alone")

    tok = sub.add_parser("token", help="print a signed JWT for development and tests")
    tok.add_argument("--role", required=True, choices=["worker", "supervisor", "admin"])
    tok.add_argument("--sub", type=UUID, default=None, help="user UUID (default: a new one)")
    tok.add_argument("--ttl", default="8h", help="lifetime, e.g. 30m, 8h, 2d")
    tok.add_argument("--name", default=None,
                     help="the person's name (the `name` claim; the directory of people and "
                          "the console show it)")
    tok.add_argument("--data-dir", type=Path, default=Path("./data"))

    sub.add_parser("migrate", help="bring the database schema up to date")
    sub.add_parser("setup-temporal", help="register the custom search attributes and the "
                   "evidence cleanup's schedule")

    aud = sub.add_parser("audit", help="audit log tools")
    aud_sub = aud.add_subparsers(dest="audit_command", required=True)
    ver = aud_sub.add_parser("verify", help="check every audit chain, and each session's "
                             "record of its chain")
    ver.add_argument("--anchor", type=Path, default=None,
                     help="an anchor file: also prove no chain lost or rewrote an entry")
    ver.add_argument("--file", type=Path, default=None,
                     help="check a session export (`audit export`) instead of the database: "
                          "needs no database, on any machine")
    ver.add_argument("--evidence", type=Path, default=None, metavar="DIR",
                     help="with --file: also check every evidence file the export names "
                          "against DIR/<sha256> (the directory store, or a copy of the "
                          "bucket's objects): which are missing or altered")
    exp = aud_sub.add_parser("export", help="write one session, its checks and its audit "
                             "chain as one JSON document (`audit verify --file` checks it)")
    exp.add_argument("--session", type=UUID, required=True, help="the session's id")
    exp.add_argument("--out", type=Path, default=None, help="file (default: standard output)")
    anc = aud_sub.add_parser("anchor", help="write the head of every chain, with one digest "
                             "over them, to keep outside the database")
    anc.add_argument("--out", type=Path, default=None, help="file (default: standard output)")

    ops_p = sub.add_parser("ops", help="find and retry stuck sessions")
    ops_sub = ops_p.add_subparsers(dest="ops_command", required=True)
    stuck_p = ops_sub.add_parser("stuck", help="list sessions whose workflow cannot progress")
    stuck_p.add_argument("--json", action="store_true", help="machine-readable output")
    retry_p = ops_sub.add_parser("retry", help="make a stuck session try again now")
    retry_p.add_argument("session_id", type=UUID)

    args = parser.parse_args(argv)
    settings = Settings()
    logs.configure(settings.log_format,
                   settings.log_level if args.command in SERVICES else "warning", args.command)
    handler = {
        "dev": _dev, "api": _api, "worker": _worker, "token": _token, "migrate": _migrate,
        "setup-temporal": _setup_temporal, "audit": _audit, "ops": _ops,
    }[args.command]
    sys.exit(handler(args) or 0)


def _fail(message: str) -> int:
    print(f"worksession: {message}", file=sys.stderr)
    return 2


def _dev(args: argparse.Namespace) -> int:
    from worksession.dev import DevStackError, run_dev

    try:
        return aio.run(run_dev(args.data_dir, args.port, args.temporal_port, args.ui_port,
                               args.api_processes, args.metrics_port,
                               args.worker_metrics_port))
    except DevStackError as e:
        return _fail(str(e))


def _api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app
    from api.server import config as server_config
    from worksession import tracing
    from worksession.metrics import PrometheusMeter
    from worksession.temporal import TemporalConnectError, exit_unconnected, tls_config

    settings = Settings()
    secret = settings.require_jwt_secret()
    try:  # the connection itself is lazy: the API starts, and /readyz says what is down
        tls_config(settings)
    except TemporalConnectError as e:
        exit_unconnected(e)
    meter = None
    if settings.metrics_port:
        meter = PrometheusMeter()
        try:
            meter.serve(settings.metrics_host, settings.metrics_port)
        except OSError as e:
            return _fail(f"cannot serve metrics on {settings.metrics_host}:"
                         f"{settings.metrics_port} ({e.strerror}): set "
                         "WORKSESSION_METRICS_PORT to a free port, or 0 for none")
    app = create_app(settings, jwt_secret=secret, meter=meter,
                     tracer_provider=tracing.tracer_provider(settings, "worksession-api"))
    # log_config=None: uvicorn's loggers (its access log included) propagate to the root
    # logger set up by `logs.configure`, in the service's format, instead of handlers of
    # uvicorn's own.
    if args.fd is None:
        server = uvicorn.Server(server_config(
            app, host=settings.api_host, port=settings.api_port, log_level=settings.log_level,
            log_config=None))
        server.run()
        return 0 if server.started else 3  # as uvicorn.run: it could not start (port taken)
    # Not uvicorn's own `fd`: it takes any such socket for a Unix one, so its connections
    # went without TCP_NODELAY (measured: 40 ms more per request, the delayed ACK).
    import socket
    sock = socket.socket(fileno=args.fd)
    uvicorn.Server(server_config(app, log_level=settings.log_level, log_config=None)
                   ).run(sockets=[sock])
    return 0


def _worker(_: argparse.Namespace) -> int:
    from worker import main as worker_main

    return worker_main()


def _token(args: argparse.Namespace) -> int:
    from worksession.tokens import dev_secret_path, mint, parse_ttl

    settings = Settings()
    if settings.jwt_secret is not None:
        secret = settings.jwt_secret.get_secret_value().encode()
    else:
        path = dev_secret_path(args.data_dir)
        if not path.exists():
            return _fail(f"no WORKSESSION_JWT_SECRET and no {path}: run `worksession dev` "
                         "first or set the variable")
        secret = path.read_text().strip().encode()
    try:
        ttl = parse_ttl(args.ttl)
    except ValueError as e:
        return _fail(str(e))
    print(mint(secret, args.role, args.sub or uuid4(), ttl, name=args.name))
    return 0


def _migrate(_: argparse.Namespace) -> int:
    from persistence.migrate import upgrade

    settings = Settings()
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    print("database schema is up to date")
    return 0


def _setup_temporal(_: argparse.Namespace) -> int:
    from orchestration.schedules import ensure_evidence_cleanup
    from worksession.temporal import (
        TemporalConnectError,
        connect,
        exit_unconnected,
        register_search_attributes,
    )

    async def run() -> tuple[list[str], str]:
        settings = Settings()
        client = await connect(settings)
        added = await register_search_attributes(client, settings.temporal_namespace)
        return added, await ensure_evidence_cleanup(client, settings.task_queue,
                                                    settings.evidence_cleanup_after)

    try:
        added, schedule = asyncio.run(run())
    except TemporalConnectError as e:
        exit_unconnected(e)
    print(f"search attributes added: {', '.join(added)}" if added
          else "search attributes already registered")
    print(f"schedule {schedule}: the hourly evidence cleanup")
    return 0


def _shown(stored: Any, now: Any) -> dict[str, Any]:
    """A session as the API shows it."""
    from api.schemas import SessionOut
    return SessionOut.of(stored.session, workflow_id=stored.workflow_id, run_id=stored.run_id,
                         now=now, worker_name=stored.worker_name).model_dump(mode="json")


def _shown_upload(e: Any) -> dict[str, Any]:
    """An evidence upload as the audit export lists it."""
    from api.schemas import EvidenceRecordOut
    return EvidenceRecordOut.model_validate(e, from_attributes=True).model_dump(mode="json")


def _shown_nc(nc: Any) -> dict[str, Any]:
    """A nonconformance as the API shows it."""
    from api.schemas import NonconformanceOut
    return NonconformanceOut.of(nc).model_dump(mode="json")


def _hash_in(directory: Path) -> Any:
    """The sha256 of the file named `name` in `directory`, None when there is none."""
    import hashlib

    def file_hash(name: str) -> str | None:
        digest = hashlib.sha256()
        try:
            with (directory / name).open("rb") as f:
                while chunk := f.read(1024 * 1024):
                    digest.update(chunk)
        except (FileNotFoundError, IsADirectoryError):
            return None
        return digest.hexdigest()
    return file_hash


def _audit(args: argparse.Namespace) -> int:
    from application import audit
    from domain.errors import NotFound
    from persistence.db import Database
    from persistence.uow import SqlStore

    def write(doc: dict[str, Any]) -> int:
        text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
        if args.out:
            args.out.write_text(text, encoding="utf-8")
        else:
            print(text, end="")
        return 0

    async def run() -> int:
        anchor = None
        if args.audit_command == "verify" and args.evidence and not args.file:
            print("--evidence DIR checks the files a session export names: give --file too")
            return 2
        if args.audit_command == "verify" and args.evidence and not args.evidence.is_dir():
            print(f"--evidence: {args.evidence} is not a directory")
            return 2
        if args.audit_command == "verify" and args.file:
            try:
                doc = json.loads(args.file.read_text("utf-8"))
                n, problems = audit.verify_export(
                    doc, _hash_in(args.evidence) if args.evidence else None)
            except (OSError, ValueError) as e:
                print(f"cannot read {args.file}: {e}")
                return 2
        else:
            db = Database(Settings().db_url)
            try:
                if args.audit_command == "anchor":
                    return write(await audit.anchor(SqlStore(db)))
                if args.audit_command == "export":
                    try:
                        return write(await audit.export_session(
                            SqlStore(db), args.session, _shown, _shown_upload, _shown_nc))
                    except NotFound as e:
                        print(e)
                        return 2
                anchor = json.loads(args.anchor.read_text()) if args.anchor else None
                n, problems = await audit.verify(SqlStore(db), anchor)
            finally:
                await db.dispose()
        for p in problems:
            print(f"BROKEN: {p}")
        what = "session export" if args.audit_command == "verify" and args.file \
            else "audit log"
        if problems:
            print(f"{what} BROKEN: {len(problems)} problem(s) in {n} entries")
            return 1
        if args.audit_command == "verify" and args.file:
            files = f", {audit.files_named(doc)} evidence files intact in {args.evidence}" \
                if args.evidence else ""
            ncs = len(doc.get("nonconformances") or [])
            print(f"session export intact: {n} entries verified, every check recorded "
                  f"once" + (f", {ncs} nonconformance(s) with their chains" if ncs else "")
                  + files)
            return 0
        print(f"audit log intact: {n} entries verified"
              + (f", anchor of {len(anchor['chains'])} chains held" if anchor else ""))
        return 0

    return asyncio.run(run())


def _ops(args: argparse.Namespace) -> int:
    from application import ops
    from application.context import Context
    from domain.errors import DomainError
    from orchestration.client import SessionWorkflows
    from persistence.db import Database
    from persistence.uow import SqlStore
    from worksession.temporal import TemporalConnectError, connect, exit_unconnected

    async def run() -> int:
        settings = Settings()
        db = Database(settings.db_url)
        try:
            try:
                client = await connect(settings)
            except TemporalConnectError as e:
                exit_unconnected(e)
            ctx = Context(store=SqlStore(db), workflows=SessionWorkflows(
                client, settings.task_queue, settings.request_timeout_seconds,
                settings.idle_timeout, settings.escalate_after_failures,
                write_behind=settings.write_behind))
            if args.ops_command == "stuck":
                found = await ops.stuck_sessions(ctx, None)
                if args.json:
                    print(json.dumps(found, indent=2, default=str))
                elif not found:
                    print("no stuck sessions")
                for s in [] if args.json else found:
                    print(f"session {s['session_id']}  worker {s['worker_id']}  "
                          f"SOP {s['sop_title'] or s['sop_id']}\n"
                          f"  {s['kind']}: {s['reason']}\n"
                          f"  since {s['since']}; last error: {s['last_error'] or '-'}")
                return 0
            try:
                done = await ops.retry_session(ctx, None, args.session_id)
            except DomainError as e:
                print(f"worksession: {e.detail}", file=sys.stderr)
                return 1
            print(f"session {done['session_id']} ({done['kind']}): {done['action']}")
            return 0
        finally:
            await db.dispose()

    return asyncio.run(run())


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:] if len(sys.argv) > 1 else None)
    os._exit(0)
