"""Sign-in through a company's identity provider (CONTRACT.md v1.1, "Identity providers"),
against a local stand-in: a small HTTP server serving OpenID discovery and a JWKS with keys
made here, as Keycloak, Okta, Entra ID or Auth0 would."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from uuid import NAMESPACE_URL, uuid5

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from api.app import create_app
from api.oidc import FETCH_BURST, FETCH_EVERY_SECONDS, KEYS_MAX_AGE_SECONDS, IdentityProvider
from tests.conftest import SECRET, bearer, make_confirmed_sop
from worksession.settings import Settings

AUDIENCE = "worksession-api"
ROLE_MAP = {"floor-staff": "worker", "shift-leads": "supervisor", "it-ops": "admin"}


class Provider:
    """A stand-in identity provider: discovery, a JWKS it can rotate, tokens it signs."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {"rsa-1": rsa.generate_private_key(65537, 2048),
                                     "ec-1": ec.generate_private_key(ec.SECP256R1())}
        self.published = {"rsa-1", "ec-1"}
        self.jwks_requests = 0
        self.down = False
        self.discovery: Any = None  # a discovery document of the test's, else the right one
        self.jwks_raw: bytes | None = None  # a key set body of the test's, else the keys
        self.drip = False  # the key set a byte every 0.2 s
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if provider.down:
                    self.send_response(503)
                    self.end_headers()
                    return
                if self.path.endswith("/.well-known/openid-configuration"):
                    data = json.dumps(provider.discovery if provider.discovery is not None else
                                      {"issuer": provider.issuer,
                                       "jwks_uri": f"{provider.issuer}/certs"}).encode()
                elif self.path.endswith("/certs"):
                    provider.jwks_requests += 1
                    data = provider.jwks_raw or json.dumps(provider.jwks()).encode()
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    if provider.drip and self.path.endswith("/certs"):
                        for byte in data:
                            self.wfile.write(bytes([byte]))
                            time.sleep(0.2)
                    else:
                        self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the service gave up reading: what the test wants

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}/realms/plant"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid in sorted(self.published):
            private = self.keys[kid]
            algorithm = RSAAlgorithm if kid.startswith("rsa") else ECAlgorithm
            jwk = algorithm.to_jwk(private.public_key(), as_dict=True)
            jwk.update(kid=kid, use="sig", alg="RS256" if kid.startswith("rsa") else "ES256")
            keys.append(jwk)
        return {"keys": keys}

    def token(self, kid: str = "rsa-1", *, sub: str = "auth0|5f2c1e", groups: Any = None,
              expires_in: float = 600, signer: str | None = None, **claims: Any) -> str:
        """Signed by the key `kid` names, or by `signer`'s key (with its algorithm) instead."""
        now = int(time.time())
        body = {"iss": self.issuer, "aud": AUDIENCE, "sub": sub, "iat": now,
                "exp": now + int(expires_in),
                "groups": ["floor-staff"] if groups is None else groups, **claims}
        signer = signer or kid
        alg = "RS256" if signer.startswith("rsa") else "ES256"
        return jwt.encode(body, self.keys[signer], algorithm=alg, headers={"kid": kid})

    def public_pem(self, kid: str = "rsa-1") -> bytes:
        return self.keys[kid].public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def hs256(key: bytes, claims: dict[str, Any]) -> str:
    """Signed by hand: PyJWT rightly refuses to use a public key as an HMAC secret."""
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    signing_input = (part(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
                     + "." + part(json.dumps(claims).encode()))
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{part(signature)}"


def rs256(key: Any, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """Signed by hand: PyJWT will not write some of the headers a token may come with."""
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    signing_input = (part(json.dumps({"alg": "RS256", **header}).encode()) + "."
                     + part(json.dumps(claims).encode()))
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{part(signature)}"


def h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def provider() -> Iterator[Provider]:
    p = Provider()
    yield p
    p.server.shutdown()


@pytest.fixture
async def oidc_app(provider: Provider, database_url: str, task_queue: str, client: Any, db: Any,
                   worker: Any) -> AsyncIterator[Any]:
    settings = Settings(database_url=database_url, task_queue=task_queue,
                        oidc_issuer=provider.issuer, jwt_audience=AUDIENCE,
                        role_claim="groups", role_map=ROLE_MAP)
    app = create_app(settings, jwt_secret=SECRET, client=client, db=db)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def api(oidc_app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=oidc_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        yield http


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def remake(app: Any, provider: Provider, **kw: Any) -> IdentityProvider:
    """The app's identity provider made again, with a clock or a deadline of the test's."""
    idp = IdentityProvider(issuer=provider.issuer, audience=AUDIENCE, role_claim="groups",
                           role_map=ROLE_MAP, **kw)
    app.state.auth.provider = idp
    return idp


async def status(api: httpx.AsyncClient, token: str) -> int:
    return (await api.get("/api/v1/sessions", headers=h(token))).status_code


def no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    logged = [r for r in caplog.records if r.exc_info]
    assert not logged, [r.getMessage() for r in logged]


async def test_rs256_and_es256_tokens_of_the_provider_are_accepted(api, provider: Provider):
    assert await status(api, provider.token("rsa-1")) == 200
    assert await status(api, provider.token("ec-1")) == 200
    # the shared secret's development tokens go on working beside them
    r = await api.get("/api/v1/sessions", headers=bearer("worker"))
    assert r.status_code == 200


async def test_tokens_the_contract_refuses_are_401(api, provider: Provider):
    now = int(time.time())
    cases = {
        "wrong audience": provider.token(aud="another-api"),
        "wrong issuer": provider.token(iss="https://evil.example/realms/plant"),
        "expired": provider.token(expires_in=-120),
        "alg none": jwt.encode({"iss": provider.issuer, "aud": AUDIENCE, "sub": "x",
                                "exp": now + 600, "groups": ["it-ops"]}, None,
                               algorithm="none", headers={"kid": "rsa-1"}),
        # the public key used as an HMAC secret: checked with the shared secret, never it
        "HS256 with the public key": hs256(provider.public_pem(), {
            "iss": provider.issuer, "aud": AUDIENCE, "sub": str(uuid.uuid4()),
            "exp": now + 600, "role": "admin", "groups": ["it-ops"]}),
        "no exp": jwt.encode({"iss": provider.issuer, "aud": AUDIENCE, "sub": "x",
                              "groups": ["floor-staff"]}, provider.keys["rsa-1"],
                             algorithm="RS256", headers={"kid": "rsa-1"}),
        "exp a string": provider.token(exp=str(now + 600)),
        "signed by a key of its own": jwt.encode(
            {"iss": provider.issuer, "aud": AUDIENCE, "sub": "x", "exp": now + 600,
             "groups": ["it-ops"]}, rsa.generate_private_key(65537, 2048),
            algorithm="RS256", headers={"kid": "rsa-1"}),
    }
    for name, token in cases.items():
        assert token is not None, name
        r = await api.get("/api/v1/sessions", headers=h(token))
        assert r.status_code == 401, (name, r.text)
        assert r.headers["content-type"] == "application/problem+json", name


async def test_a_just_rotated_key_is_taken_at_its_first_token(api, provider: Provider):
    assert await status(api, provider.token("rsa-1")) == 200  # the keys are read just now
    provider.keys["rsa-2"] = rsa.generate_private_key(65537, 2048)
    provider.published.add("rsa-2")  # the provider rotates
    assert await status(api, provider.token("rsa-2")) == 200
    provider.published.discard("rsa-1")


async def test_made_up_key_ids_cost_the_provider_a_bounded_number_of_reads(
        oidc_app, api, provider: Provider):
    clock = Clock()
    remake(oidc_app, provider, clock=clock)
    assert await status(api, provider.token("rsa-1")) == 200
    provider.keys["rsa-2"] = rsa.generate_private_key(65537, 2048)  # not published

    async def made_up(n: int) -> None:
        for _ in range(n):
            token = provider.token(f"made-up-{uuid.uuid4()}", signer="rsa-2")
            assert await status(api, token) == 401  # the provider was asked: not its key

    await made_up(30)
    assert provider.jwks_requests == FETCH_BURST  # the first read, and the rest of the burst
    clock.now += FETCH_EVERY_SECONDS
    await made_up(30)
    assert provider.jwks_requests == FETCH_BURST + 1  # one more a refill later
    # a rotation while the budget is spent is taken at the next refill
    provider.published.add("rsa-2")
    assert await status(api, provider.token("rsa-2")) == 401
    clock.now += FETCH_EVERY_SECONDS
    assert await status(api, provider.token("rsa-2")) == 200


async def test_the_provider_down_and_the_key_unknown_is_503_never_401(
        oidc_app, api, provider: Provider, caplog: pytest.LogCaptureFixture):
    clock = Clock()
    remake(oidc_app, provider, clock=clock)
    assert await status(api, provider.token("rsa-1")) == 200
    provider.keys["rsa-2"] = rsa.generate_private_key(65537, 2048)
    provider.published.add("rsa-2")
    provider.down = True  # and meanwhile it rotated: we cannot know
    for _ in range(2 * FETCH_BURST):  # the read budget spent too: still not proof
        r = await api.get("/api/v1/sessions", headers=h(provider.token("rsa-2")))
        assert r.status_code == 503, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["type"].endswith("/problems/unavailable")
        assert int(r.headers["retry-after"]) > 0
    assert any("could not read the identity provider's keys" in r.getMessage()
               for r in caplog.records)  # logged, once a read, without a traceback
    no_traceback(caplog)
    provider.down = False
    clock.now += FETCH_EVERY_SECONDS
    assert await status(api, provider.token("rsa-2")) == 200


async def test_cached_keys_serve_while_the_provider_is_down(oidc_app, api,
                                                            provider: Provider):
    clock = Clock()
    remake(oidc_app, provider, clock=clock)
    assert await status(api, provider.token("rsa-1")) == 200
    provider.down = True
    assert await status(api, provider.token("ec-1")) == 200
    clock.now += KEYS_MAX_AGE_SECONDS + 1  # the hourly read is due, and fails
    assert await status(api, provider.token("rsa-1")) == 200
    assert await status(api, provider.token("ec-1")) == 200


async def test_a_provider_dripping_its_keys_is_cut_off_at_the_deadline(
        oidc_app, api, provider: Provider, caplog: pytest.LogCaptureFixture):
    remake(oidc_app, provider, deadline=1.0)
    provider.drip = True
    started = time.monotonic()
    answers = await asyncio.gather(*(
        api.get("/api/v1/sessions", headers=h(provider.token("rsa-1", sub=f"u{i}")))
        for i in range(5)))
    elapsed = time.monotonic() - started
    assert [r.status_code for r in answers] == [503] * 5, [r.text for r in answers]
    assert all("retry-after" in r.headers for r in answers)
    # the five wait for one read, cut off after 1 s (the drip would take minutes)
    assert elapsed < 2.5, elapsed
    assert provider.jwks_requests == 1
    no_traceback(caplog)


async def test_what_the_provider_must_not_send_is_503_without_a_traceback(
        oidc_app, api, provider: Provider, caplog: pytest.LogCaptureFixture):
    issuer = provider.issuer
    discovery = {
        "jwks_uri plain http to another host": {"issuer": issuer,
                                                "jwks_uri": "http://sso.example.com/certs"},
        "jwks_uri not a URL httpx takes": {"issuer": issuer,
                                           "jwks_uri": "https://sso.example.com:abc/certs"},
        "jwks_uri not a URL at all": {"issuer": issuer, "jwks_uri": "https://[::1/certs"},
        "jwks_uri missing": {"issuer": issuer},
        "jwks_uri a number": {"issuer": issuer, "jwks_uri": 7},
        "jwks_uri a list": {"issuer": issuer, "jwks_uri": [f"{issuer}/certs"]},
        "not an object": [issuer],
    }
    jwks = {
        "over 1 MiB": json.dumps({**provider.jwks(), "pad": "x" * (1024 * 1024)}).encode(),
        "not an object": b"[]",
        "nested too deep": b"[" * 100_000,
        "not JSON": b"<html>",
    }
    cases = [(name, doc, None) for name, doc in discovery.items()] + \
        [(f"key set {name}", None, body) for name, body in jwks.items()]
    for name, doc, body in cases:
        provider.discovery, provider.jwks_raw = doc, body
        remake(oidc_app, provider)  # nothing cached
        r = await api.get("/api/v1/sessions", headers=h(provider.token("rsa-1")))
        assert r.status_code == 503, (name, r.text)
        assert r.headers["content-type"] == "application/problem+json", name
        assert "retry-after" in r.headers, name
    no_traceback(caplog)


async def test_the_provider_down_is_503_not_401(api, provider: Provider):
    provider.down = True
    r = await api.get("/api/v1/sessions", headers=h(provider.token("rsa-1")))
    assert r.status_code == 503, r.text
    assert r.json()["type"].endswith("/problems/unavailable")


async def test_roles_come_from_the_groups_claim_the_highest_mapped_one_wins(
        api, provider: Provider):
    worker = provider.token(groups=["floor-staff", "canteen"])
    lead = provider.token(sub="auth0|lead", groups=["floor-staff", "shift-leads"])
    admin = provider.token(sub="auth0|ops", groups="it-ops")  # a single string too
    stranger = provider.token(sub="auth0|visitor", groups=["visitors"])
    assert (await api.get("/api/v1/ops/stuck", headers=h(worker))).status_code == 403
    assert (await api.get("/api/v1/ops/stuck", headers=h(lead))).status_code == 403
    assert (await api.get("/api/v1/ops/stuck", headers=h(admin))).status_code == 200
    sop = await api.post("/api/v1/sops", headers=h(lead), json={
        "title": "Forklift check", "tasks": [{"title": "T", "steps": [
            {"title": "Horn", "check": {"kind": "confirm", "prompt": "Horn works"}}]}]})
    assert sop.status_code == 201, sop.text  # supervisors write SOPs
    r = await api.get("/api/v1/sessions", headers=h(stranger))
    assert r.status_code == 403 and "groups" in r.json()["detail"]


async def test_a_non_uuid_sub_is_always_the_same_user_who_sees_only_their_own_sessions(
        api, provider: Provider, supervisor: Any):
    alice, bob = "auth0|64f0c2a9e1", "waad|Bob.Meyer@plant.example"
    sop = await make_confirmed_sop(api, supervisor)
    started = await api.post("/api/v1/sessions", json={"sop_id": sop["id"]},
                             headers=h(provider.token(sub=alice)))
    assert started.status_code == 201, started.text
    session = started.json()
    assert session["worker_id"] == str(uuid5(NAMESPACE_URL, f"{provider.issuer}#{alice}"))
    # a later token of the same person (ES256 this time) is the same user
    again = await api.get(f"/api/v1/sessions/{session['id']}",
                          headers=h(provider.token("ec-1", sub=alice)))
    assert again.status_code == 200 and again.json()["worker_id"] == session["worker_id"]
    # another person: not theirs, so it does not exist for them, and their list is empty
    theirs = await api.get(f"/api/v1/sessions/{session['id']}",
                           headers=h(provider.token(sub=bob)))
    assert theirs.status_code == 404
    listed = await api.get("/api/v1/sessions", headers=h(provider.token(sub=bob)))
    assert listed.json()["total"] == 0
    r = await api.post(f"/api/v1/sessions/{session['id']}/cancel", json={"reason": "done"},
                       headers=h(provider.token(sub=alice)))
    assert r.status_code == 200


async def test_a_header_alg_that_does_not_fit_the_key_is_401_without_a_traceback(
        api, provider: Provider, caplog: pytest.LogCaptureFixture):
    # Signed with ES256 but naming the RSA key, and the other way round: the key's own
    # algorithm decides, and PyJWT is never asked to use an RSA key for ES256 (a TypeError).
    for token in (provider.token("rsa-1", signer="ec-1"), provider.token("ec-1", signer="rsa-1")):
        r = await api.get("/api/v1/sessions", headers=h(token))
        assert r.status_code == 401, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert "signs with" in r.json()["detail"]
    no_traceback(caplog)


async def test_a_kid_that_is_not_a_string_is_401(api, provider: Provider,
                                                 caplog: pytest.LogCaptureFixture):
    for kid in (["rsa-1"], {"k": 1}, 7):
        token = rs256(provider.keys["rsa-1"], {"kid": kid}, {
            "iss": provider.issuer, "aud": AUDIENCE, "sub": "x", "exp": int(time.time()) + 600,
            "groups": ["it-ops"]})
        r = await api.get("/api/v1/sessions", headers=h(token))
        assert r.status_code == 401, (kid, r.text)
    no_traceback(caplog)


async def test_rsa_keys_under_2048_bits_are_not_used(api, provider: Provider):
    with warnings.catch_warnings():  # PyJWT warns that the key is short: that is the point
        warnings.simplefilter("ignore")
        provider.keys["rsa-weak"] = rsa.generate_private_key(65537, 1024)
        provider.published.add("rsa-weak")
        weak = provider.token("rsa-weak")
    r = await api.get("/api/v1/sessions", headers=h(weak))
    assert r.status_code == 401, r.text
    assert await status(api, provider.token("rsa-1")) == 200  # the rest of the set is used


async def test_only_the_canonical_spelling_of_a_uuid_sub_is_that_user(
        api, provider: Provider, supervisor: Any):
    """UUID() reads many spellings of one id; each but str(UUID)'s own is another user (the
    issuer's name for someone else), not the one the id belongs to."""
    user = uuid.uuid4()
    sop = await make_confirmed_sop(api, supervisor)
    started = await api.post("/api/v1/sessions", json={"sop_id": sop["id"]},
                             headers=h(provider.token(sub=str(user))))
    assert started.status_code == 201, started.text
    session = started.json()
    assert session["worker_id"] == str(user)  # a canonical UUID sub is the id as it is
    hex32 = user.hex
    spellings = [f"urn:uuid:{user}", f"{{{user}}}", str(user).upper(), hex32,
                 f"{hex32[:4]}-{hex32[4:16]}-{hex32[16:]}", f"uuid:{user}", f" {user}"]
    for spelling in spellings:
        token = provider.token(sub=spelling)
        theirs = await api.get(f"/api/v1/sessions/{session['id']}", headers=h(token))
        assert theirs.status_code == 404, (spelling, theirs.text)
        listed = await api.get("/api/v1/sessions", headers=h(token))
        assert listed.json()["total"] == 0, spelling
    r = await api.post(f"/api/v1/sessions/{session['id']}/cancel", json={"reason": "done"},
                       headers=h(provider.token(sub=str(user))))
    assert r.status_code == 200
