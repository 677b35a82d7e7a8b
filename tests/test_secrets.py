"""Secrets from files, as containers get them (`WORKSESSION_<NAME>_FILE`), and never shown:
not in /readyz, not in the log."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from faults.harness import free_port
from worksession.settings import SECRET_SETTINGS, Settings
from worksession.tokens import mint

BIN = Path(sys.executable).parent
SECRET = "file-secret-" + "k" * 40
PASSWORD = "s3cret-Passw0rd"


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith("WORKSESSION_"):
            monkeypatch.delenv(k)


def test_every_secret_setting_reads_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _clean_env(monkeypatch)
    (tmp_path / "jwt").write_text(SECRET + "\n")  # as `echo ... > file` leaves it
    url = f"postgresql+asyncpg://app:{PASSWORD}@db:5432/worksession"
    (tmp_path / "db").write_text(url)
    monkeypatch.setenv("WORKSESSION_JWT_SECRET_FILE", str(tmp_path / "jwt"))
    monkeypatch.setenv("WORKSESSION_DATABASE_URL_FILE", str(tmp_path / "db"))
    (tmp_path / "key").write_text("tcld-api-key-123\n")
    monkeypatch.setenv("WORKSESSION_TEMPORAL_API_KEY_FILE", str(tmp_path / "key"))
    (tmp_path / "s3-id").write_text("evidence-writer\n")
    (tmp_path / "s3-secret").write_text("s3-" + "z" * 30 + "\n")
    monkeypatch.setenv("WORKSESSION_S3_ACCESS_KEY_ID_FILE", str(tmp_path / "s3-id"))
    monkeypatch.setenv("WORKSESSION_S3_SECRET_ACCESS_KEY_FILE", str(tmp_path / "s3-secret"))
    settings = Settings()
    assert settings.require_jwt_secret() == SECRET.encode()
    assert settings.db_url == url
    assert settings.temporal_api_key is not None
    assert settings.temporal_api_key.get_secret_value() == "tcld-api-key-123"
    assert settings.temporal_tls  # an API key means TLS
    assert settings.s3_access_key_id is not None and settings.s3_secret_access_key is not None
    assert settings.s3_access_key_id.get_secret_value() == "evidence-writer"
    assert settings.s3_secret_access_key.get_secret_value() == "s3-" + "z" * 30
    assert set(SECRET_SETTINGS) == {"jwt_secret", "database_url", "temporal_api_key",
                                    "s3_access_key_id", "s3_secret_access_key",
                                    "webhook_key"}
    assert SECRET not in repr(settings)  # a SecretStr shows as '**********'


def test_a_secret_set_twice_or_unreadable_is_refused_with_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _clean_env(monkeypatch)
    (tmp_path / "jwt").write_text(SECRET)
    monkeypatch.setenv("WORKSESSION_JWT_SECRET_FILE", str(tmp_path / "jwt"))
    monkeypatch.setenv("WORKSESSION_JWT_SECRET", "x" * 40)
    with pytest.raises(SystemExit, match="both WORKSESSION_JWT_SECRET and "
                                         "WORKSESSION_JWT_SECRET_FILE are set"):
        Settings()
    monkeypatch.delenv("WORKSESSION_JWT_SECRET")
    monkeypatch.setenv("WORKSESSION_JWT_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(SystemExit, match="WORKSESSION_JWT_SECRET_FILE: cannot read"):
        Settings()


def test_the_api_takes_its_secrets_from_files_and_shows_none_of_them(tmp_path: Path):
    """A real `worksession api` process: its token secret and its database address (with a
    password, to a database that is down) come from files; the token is accepted, and
    neither the password nor the secret appears in /readyz or in what it logs."""
    (tmp_path / "jwt").write_text(SECRET)
    (tmp_path / "db").write_text(
        f"postgresql+asyncpg://worksession:{PASSWORD}@127.0.0.1:{free_port()}/worksession")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKSESSION_")}
    env.update(WORKSESSION_JWT_SECRET_FILE=str(tmp_path / "jwt"),
               WORKSESSION_DATABASE_URL_FILE=str(tmp_path / "db"),
               WORKSESSION_TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}",
               WORKSESSION_API_PORT=str(port), WORKSESSION_METRICS_PORT="0",
               WORKSESSION_LOG_FORMAT="json", WORKSESSION_LOG_LEVEL="debug")
    proc = subprocess.Popen([str(BIN / "worksession"), "api"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                ready = httpx.get(f"{base}/readyz", timeout=10)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.2)
        assert ready.status_code == 503  # the database is down: said, not its address
        assert ready.json()["checks"]["database"] != "ok"
        assert PASSWORD not in ready.text and SECRET not in ready.text
        # the file's secret checks tokens: a token it signed gets past authentication
        token = mint(SECRET.encode(), "worker")
        r = httpx.get(f"{base}/api/v1/sessions", timeout=15,
                      headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 503, r.text  # authenticated; the database is what is down
        assert PASSWORD not in r.text
        wrong = mint(b"another-secret-" + b"z" * 40, "worker")
        assert httpx.get(f"{base}/api/v1/sessions", timeout=15, headers={
            "Authorization": f"Bearer {wrong}"}).status_code == 401
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    log = out.decode(errors="replace")
    assert '"logger"' in log  # it did log (JSON lines), the failing database among them
    assert PASSWORD not in log and SECRET not in log
