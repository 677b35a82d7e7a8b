"""Temporal over TLS, as a company runs it: a TLS-terminating proxy in front of the Temporal
dev server that requires a client certificate from its CA (mTLS) and an API key, with the CA
and the certificates made here. A real `worksession worker` process and the API connect
through it with the right certificate and key; without a certificate, with one from another
CA, or with a wrong API key, the worker, `setup-temporal` and `ops stuck` exit with one line
saying what failed and which settings matter, and the API's /readyz says the same.

The proxy is Debian's haproxy (`make haproxy`), not stunnel: the SDK's gRPC client (Rust,
tonic) refuses a TLS server that does not negotiate HTTP/2 by ALPN ("H2NotNegotiated"), and
stunnel (5.68 in Debian 12) has no ALPN setting; haproxy's `alpn h2` does it, and its HTTP
mode lets the proxy check the API key as Temporal Cloud does (a gRPC UNAUTHENTICATED answer)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from api.app import create_app
from faults.harness import free_port
from tests.conftest import SECRET, User, make_confirmed_sop, pass_step, start
from worksession.settings import Settings
from worksession.temporal import TemporalConnectError, connect, worker_polls

BIN = Path(sys.executable).parent
API_KEY = "test-api-key-" + uuid.uuid4().hex
HANDSHAKE_REFUSED = "the server refused the connection during the TLS handshake"
NO_CERT = f"{HANDSHAKE_REFUSED} (does it require a client certificate? " \
          "WORKSESSION_TEMPORAL_TLS_CERT_FILE / _KEY_FILE)"
CERT_NOT_TRUSTED = f"{HANDSHAKE_REFUSED} (does it trust the client certificate's CA? " \
                   "WORKSESSION_TEMPORAL_TLS_CERT_FILE / _KEY_FILE)"


def _haproxy() -> str | None:
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy",) if os.access(p, os.X_OK)), None)


# --- the PKI: two CAs, the server's certificate, a client certificate from each -------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False,
          usage: x509.ObjectIdentifier | None = None,
          names: list[x509.GeneralName] | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
    if usage is not None:
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if names:
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


@dataclass
class Pki:
    dir: Path

    def path(self, name: str) -> Path:
        return self.dir / name


def _write(pki: Pki, stem: str, cert: x509.Certificate,
           key: ec.EllipticCurvePrivateKey | None) -> None:
    pki.path(f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        pki.path(f"{stem}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        pki.path(f"{stem}.key").chmod(0o600)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """ca.pem (the company's CA), server.pem/.key (127.0.0.1 and localhost), client.pem/.key
    (the worksession processes'); other-ca.pem and other-client.pem/.key, from another CA."""
    pki = Pki(tmp_path_factory.mktemp("pki"))
    for prefix in ("", "other-"):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _cert(f"{prefix}test CA", ca_key, _name(f"{prefix}test CA"), ca_key, ca=True)
        _write(pki, f"{prefix}ca", ca, None)
        client_key = ec.generate_private_key(ec.SECP256R1())
        _write(pki, f"{prefix}client", _cert("worksession", client_key, ca.subject, ca_key,
                                             usage=ExtendedKeyUsageOID.CLIENT_AUTH), client_key)
        if not prefix:
            server_key = ec.generate_private_key(ec.SECP256R1())
            _write(pki, "server", _cert(
                "localhost", server_key, ca.subject, ca_key,
                usage=ExtendedKeyUsageOID.SERVER_AUTH,
                names=[x509.DNSName("localhost"),
                       x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), server_key)
    return pki


# --- the proxy ---------------------------------------------------------------------------

HAPROXY_CONFIG = """\
global
    log stderr format raw local0 info
defaults
    mode http
    log global
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend temporal
    bind 127.0.0.1:{port} ssl crt {bundle} ca-file {ca} verify required alpn h2
    # Temporal Cloud's answer to a missing or wrong API key: gRPC UNAUTHENTICATED.
    http-request return status 200 hdr grpc-status 16 hdr grpc-message "invalid\\ API\\ key" \
unless {{ req.hdr(authorization) -m str "Bearer {api_key}" }}
    default_backend dev_server
backend dev_server
    server dev {upstream} proto h2
"""


@pytest.fixture(scope="module")
def proxy(temporal_env: Any, pki: Pki, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[str]:
    """haproxy terminating TLS (client certificate required) in front of the dev server;
    its address."""
    haproxy = _haproxy()
    if haproxy is None:
        pytest.skip("haproxy is not installed (`make haproxy` installs Debian's package): "
                    "the TLS-terminating proxy this test puts in front of Temporal")
    d = tmp_path_factory.mktemp("haproxy")
    bundle = d / "server-bundle.pem"
    bundle.write_bytes(pki.path("server.pem").read_bytes() + pki.path("server.key").read_bytes())
    bundle.chmod(0o600)
    port = free_port()
    config = d / "haproxy.cfg"
    config.write_text(HAPROXY_CONFIG.format(
        port=port, bundle=bundle, ca=pki.path("ca.pem"), api_key=API_KEY,
        upstream=temporal_env.client.service_client.config.target_host))
    log = d / "haproxy.log"
    proc = subprocess.Popen([haproxy, "-db", "-f", str(config)], stdin=subprocess.DEVNULL,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            assert proc.poll() is None, f"haproxy exited:\n{log.read_text()}"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        else:
            raise AssertionError(f"haproxy did not listen:\n{log.read_text()}")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- how an operator configures the processes ------------------------------------------

def tls_env(pki: Pki, proxy: str, *, cert: str | None = "client",
            api_key: str | None = API_KEY) -> dict[str, str]:
    """The WORKSESSION_* variables of a process that connects through the proxy: the CA,
    the client certificate and key named `cert` (None: no client certificate), the key."""
    env = {"WORKSESSION_TEMPORAL_ADDRESS": proxy,
           "WORKSESSION_TEMPORAL_TLS_CA_FILE": str(pki.path("ca.pem"))}
    if cert is not None:
        env["WORKSESSION_TEMPORAL_TLS_CERT_FILE"] = str(pki.path(f"{cert}.pem"))
        env["WORKSESSION_TEMPORAL_TLS_KEY_FILE"] = str(pki.path(f"{cert}.key"))
    if api_key is not None:
        env["WORKSESSION_TEMPORAL_API_KEY"] = api_key
    return env


def tls_settings(pki: Pki, proxy: str, database_url: str, task_queue: str,
                 **kw: Any) -> Settings:
    return Settings(database_url=database_url, task_queue=task_queue, **{
        k.removeprefix("WORKSESSION_").lower(): v for k, v in tls_env(pki, proxy, **kw).items()})


def _process_env(variables: dict[str, str], database_url: str, task_queue: str
                 ) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("WORKSESSION_TEMPORAL")}
    return {**base, "WORKSESSION_DATABASE_URL": database_url,
            "WORKSESSION_TASK_QUEUE": task_queue, "WORKSESSION_WORKER_METRICS_PORT": "0",
            "WORKSESSION_METRICS_PORT": "0", **variables}


async def run_command(variables: dict[str, str], database_url: str, task_queue: str,
                      *args: str) -> tuple[int, str]:
    """Runs `worksession ARGS` to its end; its exit code and standard error."""
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "worksession"), *args, env=_process_env(variables, database_url, task_queue),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


@contextlib.asynccontextmanager
async def api_app(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API in-process, making its own (lazy) Temporal client from `settings`."""
    app = create_app(settings, jwt_secret=SECRET)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://api") as http:
            yield http


# --- (a) the right certificate: a worker process polls, the API starts sessions ---------

async def test_a_worker_process_and_the_api_work_through_the_mtls_proxy(
        pki, proxy, temporal_env, database_url, db):
    queue = f"tls-{uuid.uuid4()}"
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "worksession"), "worker",
        env=_process_env(tls_env(pki, proxy), database_url, queue),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    try:
        settings = tls_settings(pki, proxy, database_url, queue)
        async with api_app(settings) as http:
            # /readyz: Temporal reached through the proxy, and the worker process polls there.
            deadline = asyncio.get_running_loop().time() + 60
            while True:
                r = await http.get("/readyz")
                if r.status_code == 200:
                    break
                assert proc.returncode is None, (await proc.stderr.read()).decode()  # type: ignore[union-attr]
                assert asyncio.get_running_loop().time() < deadline, r.text
                await asyncio.sleep(0.5)
            assert r.json()["checks"] == {"database": "ok", "temporal": "ok", "worker": "ok"}
            # Seen from the dev server itself, behind the proxy: a worker polls that queue.
            assert await worker_polls(temporal_env.client, queue)

            supervisor = User(uuid.uuid4(), "supervisor")
            worker = User(uuid.uuid4(), "worker")
            sop = await make_confirmed_sop(http, supervisor)
            session = await start(http, worker, sop)
            assert session["status"] == "in_progress", session
            after = await pass_step(http, worker, session)
            assert after["current_step"]["id"] != session["current_step"]["id"]
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == 0


# --- (b) without the right certificate: one line, and /readyz says the same -------------

def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("command", [["worker"], ["setup-temporal"], ["ops", "stuck"]])
async def test_without_a_client_certificate_each_command_exits_with_one_line(
        command, pki, proxy, database_url, db):
    code, err = await run_command(tls_env(pki, proxy, cert=None), database_url,
                                  f"tls-{uuid.uuid4()}", *command)
    assert code == 2
    assert one_line(err) == \
        f"worksession: cannot connect to Temporal at {proxy} over TLS: {NO_CERT}"


async def test_a_client_certificate_from_another_ca_is_refused_in_one_line(
        pki, proxy, database_url, db):
    code, err = await run_command(tls_env(pki, proxy, cert="other-client"), database_url,
                                  f"tls-{uuid.uuid4()}", "worker")
    assert code == 2
    assert one_line(err) == \
        f"worksession: cannot connect to Temporal at {proxy} over TLS: {CERT_NOT_TRUSTED}"


@pytest.mark.parametrize("cert,expected", [(None, NO_CERT),
                                           ("other-client", CERT_NOT_TRUSTED)])
async def test_the_api_starts_without_the_right_certificate_and_readyz_says_why(
        cert, expected, pki, proxy, database_url, db):
    settings = tls_settings(pki, proxy, database_url, f"tls-{uuid.uuid4()}", cert=cert)
    async with api_app(settings) as http:
        assert (await http.get("/healthz")).status_code == 200
        r = await http.get("/readyz")
    assert r.status_code == 503
    checks = r.json()["checks"]
    assert checks == {
        "database": "ok",
        "temporal": f"cannot connect to Temporal at {proxy} over TLS: {expected}",
        "worker": "unknown (Temporal is down)"}
    assert API_KEY not in r.text


# --- (c) the API key: sent as the bearer token the proxy checks --------------------------

@pytest.mark.parametrize("api_key,expected", [
    ("wrong-key", "the server refused this client's credentials (invalid API key): check "
                  "WORKSESSION_TEMPORAL_API_KEY"),
    (None, "the server refused this client's credentials (invalid API key): check "
           "WORKSESSION_TEMPORAL_API_KEY, which is unset")])
async def test_the_api_key_is_sent_and_a_wrong_one_is_one_line(
        api_key, expected, pki, proxy, database_url, db):
    """The right key is the one test (a) sends: the proxy answers UNAUTHENTICATED to any
    other `authorization: Bearer` header, or to none."""
    code, err = await run_command(tls_env(pki, proxy, api_key=api_key), database_url,
                                  f"tls-{uuid.uuid4()}", "worker")
    assert code == 2
    assert one_line(err) == f"worksession: cannot connect to Temporal at {proxy} over TLS: " \
                            f"{expected}"


# --- the server's side: its CA and its name -------------------------------------------

async def test_a_server_certificate_from_an_untrusted_ca_or_for_another_name_is_refused(
        pki, proxy, database_url):
    base = tls_settings(pki, proxy, database_url, "q")
    for settings, expected in [
        (base.model_copy(update={"temporal_tls_ca_file": pki.path("other-ca.pem")}),
         "the server's certificate is not signed by a CA this client trusts "
         "(WORKSESSION_TEMPORAL_TLS_CA_FILE; unset, the system's trust store)"),
        (base.model_copy(update={"temporal_tls_ca_file": None}),
         "the server's certificate is not signed by a CA this client trusts "
         "(WORKSESSION_TEMPORAL_TLS_CA_FILE; unset, the system's trust store)"),
        (base.model_copy(update={"temporal_tls_server_name": "temporal.example.com"}),
         "the server's certificate is not valid for temporal.example.com "
         "(WORKSESSION_TEMPORAL_TLS_SERVER_NAME)")]:
        with pytest.raises(TemporalConnectError) as e:
            await connect(settings)
        assert str(e.value) == f"cannot connect to Temporal at {proxy} over TLS: {expected}"
    # The name the certificate does carry, other than the address's host, is accepted.
    client = await connect(base.model_copy(update={"temporal_tls_server_name": "localhost"}))
    assert await client.service_client.check_health()


# --- the settings themselves --------------------------------------------------------------

def test_tls_is_on_when_any_of_its_settings_is_set(pki):
    assert not Settings().temporal_tls
    for name, value in [("temporal_tls_ca_file", pki.path("ca.pem")),
                        ("temporal_tls_server_name", "temporal.internal"),
                        ("temporal_api_key", "k")]:
        assert Settings(**{name: value}).temporal_tls, name


@pytest.mark.parametrize("variables,expected", [
    ({"WORKSESSION_TEMPORAL_TLS_CERT_FILE": "client.pem"},
     "WORKSESSION_TEMPORAL_TLS_CERT_FILE and WORKSESSION_TEMPORAL_TLS_KEY_FILE go together "
     "(mTLS): set both or neither; only the first is set"),
    ({"WORKSESSION_TEMPORAL_TLS_KEY_FILE": "client.key"},
     "WORKSESSION_TEMPORAL_TLS_CERT_FILE and WORKSESSION_TEMPORAL_TLS_KEY_FILE go together "
     "(mTLS): set both or neither; only the second is set"),
    ({"WORKSESSION_TEMPORAL_TLS_CA_FILE": "/nonexistent/ca.pem"},
     "WORKSESSION_TEMPORAL_TLS_CA_FILE: cannot read /nonexistent/ca.pem "
     "(No such file or directory)"),
    ({"WORKSESSION_TEMPORAL_TLS_CERT_FILE": "client.pem",
      "WORKSESSION_TEMPORAL_TLS_KEY_FILE": "server-bundle.cfg"},
     "WORKSESSION_TEMPORAL_TLS_KEY_FILE: cannot read server-bundle.cfg "
     "(No such file or directory)"),
    ({"WORKSESSION_TEMPORAL_TLS_CA_FILE": "not-pem.txt"},
     "WORKSESSION_TEMPORAL_TLS_CA_FILE: not-pem.txt is not PEM (no -----BEGIN line)")])
@pytest.mark.parametrize("command", [["worker"], ["api"]])
async def test_unusable_tls_settings_stop_the_worker_and_the_api_in_one_line(
        command, variables, expected, pki, database_url, monkeypatch):
    """Before any connection: the API, which connects lazily, refuses them at its start."""
    monkeypatch.chdir(pki.dir)
    (pki.dir / "not-pem.txt").write_text("this is no certificate\n")
    code, err = await run_command(
        {**variables, "WORKSESSION_JWT_SECRET": SECRET.decode()}, database_url, "q", *command)
    assert code == 2
    assert one_line(err) == f"worksession: {expected}"
