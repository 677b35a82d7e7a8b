"""Temporal client connection and namespace set-up, shared by the API, the worker and the CLI."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

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
from temporalio.service import RPCError, RPCStatusCode, TLSConfig

from workflows import search_attributes
from worksession.settings import Settings

_INDEXED_TYPE = {
    "KEYWORD": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "BOOL": IndexedValueType.INDEXED_VALUE_TYPE_BOOL,
}


# The settings of the connection (the names of `Settings` fields). `worksession dev` runs its
# own plaintext dev server and leaves them all out, for itself and its children.
TLS_SETTINGS = ("temporal_tls", "temporal_tls_ca_file", "temporal_tls_cert_file",
                "temporal_tls_key_file", "temporal_tls_server_name", "temporal_api_key")
CERT_VARS = "WORKSESSION_TEMPORAL_TLS_CERT_FILE / _KEY_FILE"


class TemporalConnectError(Exception):
    """One line for an operator: what failed, and which settings matter."""


def exit_unconnected(error: TemporalConnectError) -> NoReturn:
    """A command that cannot connect: its one line on stderr, exit status 2. Out without the
    interpreter's teardown: the SDK's Rust threads left by the failed connection can abort it
    ("Fatal Python error: PyGILState_Release", status 134, measured here about one run in
    ten; temporalio/sdk-python#300), which would bury the line under a crash report."""
    print(f"worksession: {error}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(2)


async def connect(settings: Settings, *, lazy: bool = False, runtime: Runtime | None = None,
                  plugins: Sequence[Plugin] = ()) -> Client:
    """The one way every process connects to Temporal: address, namespace, TLS (CA, mTLS
    client certificate and key, server name) and API key from `settings`.
    `lazy`: the API starts (and reports not ready) even while Temporal is down.
    `runtime`: the worker's, which serves the SDK's metrics. `plugins`: tracing's.
    Raises TemporalConnectError for a setting that cannot be used or, unless lazy, a
    connection that fails."""
    tls = tls_config(settings)
    api_key = settings.temporal_api_key.get_secret_value() if settings.temporal_api_key \
        else None
    try:
        return await Client.connect(settings.temporal_address,
                                    namespace=settings.temporal_namespace,
                                    data_converter=pydantic_data_converter, lazy=lazy,
                                    runtime=runtime, plugins=plugins, tls=tls, api_key=api_key)
    except (RuntimeError, RPCError) as e:  # the SDK's core says "Failed client connect: ..."
        raise TemporalConnectError(
            connect_failure(settings.temporal_address, tls, api_key is not None, e)) from None


def tls_config(settings: Settings) -> TLSConfig | bool:
    """The TLS part of the connection; the files are read now (at each connect, so a renewed
    certificate is picked up by the next process start)."""
    if not settings.temporal_tls:
        return False
    cert, key = settings.temporal_tls_cert_file, settings.temporal_tls_key_file
    if (cert is None) != (key is None):
        raise TemporalConnectError(
            "WORKSESSION_TEMPORAL_TLS_CERT_FILE and WORKSESSION_TEMPORAL_TLS_KEY_FILE go "
            f"together (mTLS): set both or neither; only {'the first' if cert else 'the second'}"
            " is set")
    return TLSConfig(
        server_root_ca_cert=_read_pem("temporal_tls_ca_file", settings.temporal_tls_ca_file),
        client_cert=_read_pem("temporal_tls_cert_file", cert),
        client_private_key=_read_pem("temporal_tls_key_file", key),
        domain=settings.temporal_tls_server_name)


def _read_pem(setting: str, path: Path | None) -> bytes | None:
    if path is None:
        return None
    var = f"WORKSESSION_{setting.upper()}"
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TemporalConnectError(f"{var}: cannot read {path} ({e.strerror})") from None
    if b"-----BEGIN " not in data:
        raise TemporalConnectError(f"{var}: {path} is not PEM (no -----BEGIN line)")
    return data


def connect_failure(address: str, tls: TLSConfig | bool | None, api_key: bool,
                    error: BaseException) -> str:
    """One line from the SDK's error (a Rust debug dump): what failed, which settings matter.
    Also the API's /readyz `temporal` check. Never names a secret's value."""
    tls_on = tls is True or isinstance(tls, TLSConfig) or (tls is None and api_key)
    has_cert = isinstance(tls, TLSConfig) and tls.client_cert is not None
    text = str(error)
    reason = " ".join(text.split())[:300]  # what the SDK said, when it is none of these
    grpc_message = re.search(r'message: "([^"]*)"', text)
    if "Unauthenticated" in text or "PermissionDenied" in text:
        said = f" ({grpc_message.group(1)[:100]})" if grpc_message else ""
        reason = (f"the server refused this client's credentials{said}: check "
                  f"WORKSESSION_TEMPORAL_API_KEY{'' if api_key else ', which is unset'}")
    elif "H2NotNegotiated" in text:
        reason = ("the TLS server did not offer HTTP/2 (ALPN h2), which gRPC needs: a proxy "
                  "in front of Temporal must negotiate it")
    elif "NotValidForName" in text:
        name = tls.domain if isinstance(tls, TLSConfig) and tls.domain else \
            address.rsplit(":", 1)[0]
        reason = (f"the server's certificate is not valid for {name} "
                  "(WORKSESSION_TEMPORAL_TLS_SERVER_NAME)")
    elif "InvalidCertificate(Expired" in text or "InvalidCertificate(NotValidYet" in text:
        reason = "the server's certificate has expired or is not yet valid"
    elif "InvalidCertificate" in text:
        reason = ("the server's certificate is not signed by a CA this client trusts "
                  "(WORKSESSION_TEMPORAL_TLS_CA_FILE; unset, the system's trust store)")
    elif "InvalidContentType" in text or "CorruptMessage" in text or "InvalidMessage" in text:
        reason = ("the server does not answer in TLS (is this its TLS port? is "
                  "WORKSESSION_TEMPORAL_TLS meant to be on?)")
    elif "PrivateKeyParseError" in text or "InvalidPrivateKey" in text:
        reason = "the client key cannot be used (WORKSESSION_TEMPORAL_TLS_KEY_FILE)"
    elif "ConnectionRefused" in text or "Connection refused" in text:
        reason = "connection refused (is Temporal listening there? WORKSESSION_TEMPORAL_ADDRESS)"
    elif "dns error" in text or "failed to lookup address" in text:
        reason = "cannot resolve the host (WORKSESSION_TEMPORAL_ADDRESS)"
    elif any(s in text for s in ("fatal alert", "BrokenPipe", "broken pipe", "ConnectionReset",
                                 "connection reset", "UnexpectedEof", "connection closed")):
        # Measured against a proxy that requires a client certificate (TLS 1.3: the client
        # learns of the refusal after its side of the handshake): an alert, CertificateRequired
        # or UnknownCA, most often; a broken pipe or "connection closed" otherwise.
        if not tls_on:
            reason = ("the server closed the connection (does it require TLS? "
                      "WORKSESSION_TEMPORAL_TLS and the settings after it)")
        elif has_cert:
            reason = ("the server refused the connection during the TLS handshake (does it "
                      f"trust the client certificate's CA? {CERT_VARS})")
        else:
            reason = ("the server refused the connection during the TLS handshake (does it "
                      f"require a client certificate? {CERT_VARS})")
    elif "timed out" in text or "TimedOut" in text or "deadline" in text.lower():
        reason = "timed out (WORKSESSION_TEMPORAL_ADDRESS; a firewall in between?)"
    return f"cannot connect to Temporal at {address}{' over TLS' if tls_on else ''}: {reason}"


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
