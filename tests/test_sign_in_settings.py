"""Sign-in settings under which tokens would be checked wrongly are refused at start, with
one line (worksession/settings.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from worksession.settings import Settings

ISSUER = "https://sso.example.com/realms/plant"
PROVIDER: dict[str, Any] = {"oidc_issuer": ISSUER, "jwt_audience": "worksession"}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith("WORKSESSION_"):
            monkeypatch.delenv(k)


@pytest.mark.parametrize("algorithms", [["none"], ["RS256"], ["ES256"], ["HS256", "RS256"],
                                        ["hs256"], []])
def test_the_shared_secret_takes_hmac_algorithms_only(algorithms: list[str]):
    with pytest.raises(SystemExit, match="WORKSESSION_JWT_ALGORITHMS is .*HS256, HS384, HS512"):
        Settings(jwt_algorithms=algorithms)


def test_hmac_algorithms_are_taken():
    assert Settings(jwt_algorithms=["HS256", "HS512"]).jwt_algorithms == ["HS256", "HS512"]


def test_a_role_claim_other_than_role_needs_a_role_map():
    # Unmapped, a group literally named "admin" would make its members admins.
    with pytest.raises(SystemExit, match="WORKSESSION_ROLE_CLAIM is 'groups' but "
                                         "WORKSESSION_ROLE_MAP is not set"):
        Settings(**PROVIDER, role_claim="groups")
    mapped = Settings(**PROVIDER, role_claim="groups", role_map={"it-ops": "admin"})
    assert mapped.role_map == {"it-ops": "admin"}
    assert Settings(**PROVIDER).role_claim == "role"  # the contract's own claim needs none
    assert Settings(role_claim="groups").oidc_issuer is None  # no provider, nothing to map


@pytest.mark.parametrize("name, url", [
    ("oidc_issuer", "http://sso.example.com/realms/plant"),
    ("oidc_issuer", "http://10.0.0.5/realms/plant"),
    ("oidc_issuer", "ftp://sso.example.com/realms/plant"),
    ("oidc_issuer", "sso.example.com/realms/plant"),
    ("jwks_url", "http://sso.example.com/certs"),
    ("jwks_url", "http://127.0.0.1.nip.io/certs"),
    ("jwks_url", "https://[::1/certs"),
])
def test_a_provider_address_must_be_https_but_on_this_machine(name: str, url: str):
    with pytest.raises(SystemExit, match=f"WORKSESSION_{name.upper()} must be an https"):
        Settings(**{**PROVIDER, name: url})


@pytest.mark.parametrize("url", ["https://sso.example.com/realms/plant",
                                 "http://127.0.0.1:8080/realms/plant",
                                 "http://127.1.2.3/realms/plant", "http://[::1]:8080/x",
                                 "http://localhost:8080/realms/plant"])
def test_https_and_loopback_addresses_are_taken(url: str):
    assert Settings(**{**PROVIDER, "oidc_issuer": url, "jwks_url": url}).jwks_url == url


def test_the_api_refuses_to_start_with_one_line():
    """A real `worksession api`: it exits at once, saying why in one line, no traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKSESSION_")}
    env.update(WORKSESSION_OIDC_ISSUER=ISSUER, WORKSESSION_JWT_AUDIENCE="worksession",
               WORKSESSION_ROLE_CLAIM="groups", WORKSESSION_METRICS_PORT="0")
    done = subprocess.run([sys.executable, "-c", "from worksession.cli import main; main()",
                           "api"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "WORKSESSION_ROLE_CLAIM is 'groups' but WORKSESSION_ROLE_MAP is not set: map its "
        "values to worker, supervisor or admin"], done.stderr


def test_the_consoles_client_id_needs_an_issuer():
    with pytest.raises(SystemExit, match="WORKSESSION_OIDC_CLIENT_ID is set but "
                                         "WORKSESSION_OIDC_ISSUER is not"):
        Settings(oidc_client_id="console")


def test_the_console_learns_its_provider_and_may_fetch_from_it_only_when_configured():
    """`/app/config.json` and the page's Content-Security-Policy (api/web.py): links only
    without a client id; with one, the issuer, client id, scopes and the button's name, and
    fetches to the issuer's origin (discovery, token endpoint) and nowhere else."""
    from api.web import console_config, security_headers

    links_only = Settings(**PROVIDER)
    assert console_config(links_only) == {"oidc": None}
    assert "connect-src 'self';" in security_headers(links_only)["Content-Security-Policy"]

    console = Settings(**PROVIDER, oidc_client_id="console")
    assert console_config(console) == {"oidc": {
        "issuer": ISSUER, "client_id": "console", "scope": "openid profile offline_access",
        "provider_name": "sso.example.com"}}
    csp = security_headers(console)["Content-Security-Policy"]
    assert "connect-src 'self' https://sso.example.com;" in csp
    assert "script-src 'self';" in csp  # the rest as it was
    named = Settings(**PROVIDER, oidc_client_id="console", oidc_provider_name="Plant SSO",
                     oidc_scope="openid api://x/Sessions.Access")
    assert console_config(named)["oidc"]["provider_name"] == "Plant SSO"
    assert console_config(named)["oidc"]["scope"] == "openid api://x/Sessions.Access"
