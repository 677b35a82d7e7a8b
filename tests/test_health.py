"""Readiness names what is down; liveness does not depend on anything."""

from __future__ import annotations

import httpx
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from api.app import create_app
from faults.harness import free_port
from tests.conftest import SECRET


async def test_readyz_is_503_naming_temporal_and_the_worker_when_temporal_is_down(
        settings, db):
    address = f"127.0.0.1:{free_port()}"
    dead = await Client.connect(address, lazy=True, data_converter=pydantic_data_converter)
    app = create_app(settings, jwt_secret=SECRET, client=dead, db=db)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://api") as http:
            assert (await http.get("/healthz")).status_code == 200
            r = await http.get("/readyz")
    assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["temporal"] == (
        f"cannot connect to Temporal at {address}: connection refused (is Temporal listening "
        "there? WORKSESSION_TEMPORAL_ADDRESS)")
    assert "temporal" in body["detail"]


async def test_readyz_is_503_when_no_worker_polls(settings, db, client):
    app = create_app(settings.model_copy(update={"task_queue": "nobody-polls-this"}),
                     jwt_secret=SECRET, client=client, db=db)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://api") as http:
            r = await http.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["temporal"] == "ok" and r.json()["checks"]["worker"] != "ok"


async def test_readyz_without_the_worker_check_is_ready_when_no_worker_polls(
        settings, db, client):
    """`?exclude=worker`, the API's Kubernetes readiness probe: a missing worker is the same
    for every API replica, so it does not take them all out of the Service."""
    app = create_app(settings.model_copy(update={"task_queue": "nobody-polls-this"}),
                     jwt_secret=SECRET, client=client, db=db)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://api") as http:
            r = await http.get("/readyz", params={"exclude": "worker"})
            unknown = await http.get("/readyz", params={"exclude": "everything"})
    assert r.status_code == 200, r.text
    assert r.json()["checks"] == {"database": "ok", "temporal": "ok"}
    assert unknown.status_code == 422
