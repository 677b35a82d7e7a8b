"""Temporal client connection and namespace set-up, shared by the API, the worker and the CLI."""

from __future__ import annotations

from collections.abc import Sequence

from temporalio.api.enums.v1 import IndexedValueType, TaskQueueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, Plugin
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode

from workflows import search_attributes
from worksession.settings import Settings

_INDEXED_TYPE = {
    "KEYWORD": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "BOOL": IndexedValueType.INDEXED_VALUE_TYPE_BOOL,
}


async def connect(settings: Settings, *, lazy: bool = False, runtime: Runtime | None = None,
                  plugins: Sequence[Plugin] = ()) -> Client:
    """`lazy`: the API starts (and reports not ready) even while Temporal is down.
    `runtime`: the worker's, which serves the SDK's metrics. `plugins`: tracing's."""
    return await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace,
                                data_converter=pydantic_data_converter, lazy=lazy,
                                runtime=runtime, plugins=plugins)


# The dev server's SQLite store in WAL mode: each commit appends to the log instead of
# rewriting pages and syncing them (measured, one check at a time: 57 -> 45 ms through the
# API, and the raw floor faster alike). synchronous=NORMAL, as for the service's own SQLite:
# a commit survives the process being killed (the fault tests SIGKILL it), not a power cut.
# Production runs a Temporal cluster with its own database.
DEV_SERVER_STORE_FLAGS = ["--sqlite-pragma", "journal_mode=wal",
                          "--sqlite-pragma", "synchronous=normal"]


async def register_search_attributes(client: Client, namespace: str) -> list[str]:
    """Idempotent: adds only the attributes the namespace lacks; returns what it added."""
    try:
        existing = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace))
        have = set(existing.custom_attributes) | set(existing.system_attributes)
    except RPCError as e:
        if e.status != RPCStatusCode.UNIMPLEMENTED:  # the time-skipping test server
            raise
        have = set()
    missing = {k.name: _INDEXED_TYPE[k.indexed_value_type.name]
               for k in search_attributes.ALL if k.name not in have}
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing))
    return sorted(missing)


async def worker_polls(client: Client, task_queue: str) -> bool:
    """Whether Temporal has seen a worker polling the task queue recently."""
    resp = await client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
        namespace=client.namespace, task_queue=TaskQueue(name=task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW))
    return bool(resp.pollers)
