"""Liveness and readiness (no token)."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from temporalio.service import RPCError

from api.problems import problem
from worksession.temporal import TemporalConnectError, connect_failure, worker_polls

router = APIRouter(tags=["Health"])

CHECK_TIMEOUT = 3.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "a dependency is down"}})
async def readyz(request: Request, exclude: list[Literal["worker"]] = Query(
        default=[], description="checks to leave out: `?exclude=worker` is this process's "
                                "own readiness, for a Kubernetes readiness probe "
                                "(docs/deployment.md#probes-and-why)")) -> Any:
    ctx = getattr(request.app.state, "ctx", None)
    checks: dict[str, str] = {}
    if ctx is None:
        checks["startup"] = "not finished"
    else:
        checks["database"] = await _check(ctx.store.ping())
        checks["temporal"] = await _check(_temporal(ctx))
        if "worker" in exclude:
            pass  # whether a worker polls is the same for every API process: not this one's
        elif checks["temporal"] == "ok":
            checks["worker"] = await _check(_worker_polls(ctx))
        else:
            checks["worker"] = "unknown (Temporal is down)"
    down = [k for k, v in checks.items() if v != "ok"]
    if down:
        return problem(503, f"not ready: {', '.join(down)} down", type_="/problems/not-ready",
                       title="Not ready", checks=checks)
    return JSONResponse({"status": "ready", "checks": checks})


async def _check(coro: Any) -> str:
    try:
        await asyncio.wait_for(coro, CHECK_TIMEOUT)
        return "ok"
    except TimeoutError:
        return "timed out"
    except TemporalConnectError as e:
        return str(e)
    except Exception as e:  # any failure means "down"; say which
        return f"{type(e).__name__}: {str(e)[:200]}"


async def _temporal(ctx: Any) -> None:
    service = ctx.workflows.client.service_client
    try:
        await service.check_health()
    except (RuntimeError, RPCError) as e:  # what failed and which settings matter, as the CLI
        config = service.config
        raise TemporalConnectError(connect_failure(
            config.target_host, config.tls, config.api_key is not None, e)) from None


async def _worker_polls(ctx: Any) -> None:
    if not await worker_polls(ctx.workflows.client, ctx.workflows.task_queue):
        raise RuntimeError(f"no worker polls task queue {ctx.workflows.task_queue!r}")
