"""Static wiring checks of docker-compose.yml and the Dockerfile (Docker is not run here)."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from worksession.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
APP_SERVICES = ("setup", "api", "worker")
LONG_RUNNING = ("api", "worker")
PREFIX = "WORKSESSION_"
# `${VAR:?message}`: Compose refuses to start when VAR is unset or empty.
REQUIRED_VAR = re.compile(r"^\$\{(?P<name>[A-Z0-9_]+):\?[^}]+\}$")


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _service(name: str) -> dict[str, Any]:
    return _compose()["services"][name]


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _command(service: dict[str, Any]) -> str:
    command = service["command"]
    return command if isinstance(command, str) else shlex.join(command)


def test_every_worksession_variable_is_a_settings_field() -> None:
    known = {PREFIX + name.upper() for name in Settings.model_fields}
    for name, service in _compose()["services"].items():
        unknown = {var for var in _env(service) if var.startswith(PREFIX)} - known
        assert not unknown, f"{name} sets variables Settings does not read: {sorted(unknown)}"


def test_app_services_are_configured_only_by_worksession_variables() -> None:
    for name in APP_SERVICES:
        env = _env(_service(name))
        assert env, f"{name} has no environment"
        assert all(var.startswith(PREFIX) for var in env), f"{name}: {sorted(env)}"


def test_api_and_worker_reach_temporal_by_its_service_name() -> None:
    services = _compose()["services"]
    assert "temporal" in services
    for name in LONG_RUNNING:
        address = _env(services[name])["WORKSESSION_TEMPORAL_ADDRESS"]
        assert address == "temporal:7233", f"{name}: {address}"


def test_api_and_worker_use_the_postgres_service_with_asyncpg() -> None:
    services = _compose()["services"]
    assert "postgres" in services
    for name in LONG_RUNNING:
        url = urlsplit(_env(services[name])["WORKSESSION_DATABASE_URL"])
        assert url.scheme == "postgresql+asyncpg", f"{name}: {url.scheme}"
        assert url.hostname == "postgres", f"{name}: {url.hostname}"
        assert (url.port or 5432) == 5432


def test_database_url_credentials_match_the_postgres_service() -> None:
    pg = _env(_service("postgres"))
    for name in APP_SERVICES:
        url = urlsplit(_env(_service(name))["WORKSESSION_DATABASE_URL"])
        assert url.username == pg["POSTGRES_USER"], name
        assert url.password == pg["POSTGRES_PASSWORD"], name
        assert url.path.lstrip("/") == pg["POSTGRES_DB"], name


def test_api_and_worker_share_temporal_namespace_and_task_queue() -> None:
    api, worker = _env(_service("api")), _env(_service("worker"))
    for var in ("WORKSESSION_TEMPORAL_NAMESPACE", "WORKSESSION_TASK_QUEUE",
                "WORKSESSION_DATABASE_URL", "WORKSESSION_JWT_SECRET"):
        assert api[var] == worker[var], var


def test_api_listens_on_all_interfaces_and_publishes_its_port() -> None:
    api = _service("api")
    assert _env(api)["WORKSESSION_API_HOST"] == "0.0.0.0"
    assert "8000:8000" in [str(p) for p in api["ports"]]


def test_jwt_secret_is_required_so_no_placeholder_can_be_used() -> None:
    for name in APP_SERVICES:
        value = _env(_service(name))["WORKSESSION_JWT_SECRET"]
        match = REQUIRED_VAR.match(value)
        assert match, f"{name}: JWT secret must use the ${{VAR:?message}} form, got {value!r}"
        assert match["name"] == "WORKSESSION_JWT_SECRET"


def test_app_services_build_from_the_repository_dockerfile() -> None:
    assert DOCKERFILE.is_file()
    for name in APP_SERVICES:
        build = _service(name)["build"]
        if isinstance(build, str):
            build = {"context": build}
        assert build["context"] == ".", name
        assert build.get("dockerfile", "Dockerfile") == "Dockerfile", name


def test_dockerfile_installs_the_project_and_runs_the_api_as_non_root() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"pip install '?\.(\[[a-z0-9,]+\])?'?(\s|$)", text)
    assert re.search(r"pip install '\.\[[a-z0-9,]*\bs3\b", text), \
        "the image needs the s3 extra: compose keeps evidence files in MinIO"
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r'^CMD \["worksession", "api"\]\s*$', text, re.M)


# Test tooling the package ships (the fault-injection tests, and faults.harness that the other
# tests and the benchmarks use too); the service never imports it.
NOT_IN_IMAGE = {"faults"}


def _dockerfile_copies() -> set[str]:
    """What the Dockerfile copies into its build directory: `COPY x/ x/` -> "x", and the
    files of `COPY a b ./`."""
    copied: set[str] = set()
    for line in DOCKERFILE.read_text().splitlines():
        parts = line.split()
        if parts[:1] != ["COPY"] or any(p.startswith("--") for p in parts):
            continue
        *sources, dest = parts[1:]
        for src in sources:
            if dest in ("./", ".") or dest.rstrip("/") == src.rstrip("/"):
                copied.add(src.rstrip("/"))
    return copied


def _installed_packages() -> set[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    return {pattern.rstrip("*").rstrip(".") for pattern in include}


def test_dockerfile_copies_every_package_the_project_installs() -> None:
    """`pip install .` in the image installs only what was copied: a package left out (as
    `orchestration/` was, which `application/` imports) is an image that cannot start."""
    copied = _dockerfile_copies()
    missing = _installed_packages() - NOT_IN_IMAGE - copied
    assert not missing, f"the Dockerfile does not copy {sorted(missing)}"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for module in pyproject["tool"]["setuptools"]["py-modules"]:
        assert f"{module}.py" in copied, f"the Dockerfile does not copy {module}.py"


def test_the_service_never_imports_what_the_image_leaves_out() -> None:
    imports = re.compile(r"^\s*(?:from|import)\s+(?P<name>[A-Za-z_]\w*)", re.M)
    shipped = (_installed_packages() - NOT_IN_IMAGE) | {"worker"}
    for package in sorted(shipped):
        files = [ROOT / "worker.py"] if package == "worker" else \
            sorted((ROOT / package).rglob("*.py"))
        assert files, package
        for path in files:
            names = {m["name"] for m in imports.finditer(path.read_text())}
            left_out = names & NOT_IN_IMAGE
            assert not left_out, f"{path.relative_to(ROOT)} imports {sorted(left_out)}"


def test_api_and_worker_wait_for_setup_to_complete_successfully() -> None:
    for name in LONG_RUNNING:
        depends_on = _service(name)["depends_on"]
        assert depends_on["setup"]["condition"] == "service_completed_successfully", name


def test_setup_waits_for_healthy_postgres_and_temporal() -> None:
    depends_on = _service("setup")["depends_on"]
    assert depends_on["postgres"]["condition"] == "service_healthy"
    assert depends_on["temporal"]["condition"] == "service_healthy"
    assert "pg_isready" in " ".join(_service("postgres")["healthcheck"]["test"])
    assert "healthcheck" in _service("temporal")


def test_services_run_the_expected_worksession_commands() -> None:
    assert _command(_service("api")) == "worksession api"
    assert _command(_service("worker")) == "worksession worker"
    setup = _command(_service("setup"))
    migrate, register = setup.find("worksession migrate"), setup.find("worksession setup-temporal")
    assert 0 <= migrate < register, setup
    assert "&&" in setup, "setup-temporal must not run when the migration failed"
    assert _service("setup").get("restart", "no") == "no"


def test_temporal_persists_in_the_postgres_service() -> None:
    temporal, pg = _env(_service("temporal")), _env(_service("postgres"))
    assert temporal["DB"] == "postgres12"
    assert temporal["POSTGRES_SEEDS"] == "postgres"
    assert temporal["DB_PORT"] == "5432"
    assert temporal["POSTGRES_USER"] == pg["POSTGRES_USER"]
    assert temporal["POSTGRES_PWD"] == pg["POSTGRES_PASSWORD"]
    assert _service("temporal")["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_postgres_data_lives_in_a_named_volume() -> None:
    compose = _compose()
    volumes = [str(v).split(":", 1) for v in compose["services"]["postgres"]["volumes"]]
    named = {source for source, _target in volumes if not source.startswith((".", "/"))}
    assert named and named <= set(compose["volumes"])


def test_temporal_ui_points_at_the_temporal_service() -> None:
    ui = _service("temporal-ui")
    assert _env(ui)["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert "8233:8080" in [str(p) for p in ui["ports"]]


# --- Monitoring: Prometheus and Grafana (configs under deploy/; their content is checked in
# tests/test_observability_config.py) -----------------------------------------------------------

PINNED_TAG = re.compile(r"^[a-z0-9./-]+:v?\d+\.\d+\.\d+$")


def _binds(service: dict[str, Any]) -> dict[str, str]:
    """Bind mounts of the repository: container path -> path in the repository."""
    binds = {}
    for volume in service.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if source.startswith("./"):
            binds[target] = source
    return binds


def _prometheus_config() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())


def _scrape_targets() -> dict[str, list[str]]:
    return {job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
            for job in _prometheus_config()["scrape_configs"]}


def test_monitoring_images_are_pinned() -> None:
    for name in ("prometheus", "grafana"):
        image = _service(name)["image"]
        assert PINNED_TAG.match(image), f"{name}: pin a release tag, got {image!r}"


def test_monitoring_mounts_exist_in_the_repository() -> None:
    for name in ("prometheus", "grafana"):
        binds = _binds(_service(name))
        assert binds, f"{name} mounts nothing from the repository"
        for target, source in binds.items():
            assert (ROOT / source).exists(), f"{name}: {source} (mounted at {target}) is missing"
        read_only = [str(v).endswith(":ro") for v in _service(name)["volumes"]
                     if str(v).startswith("./")]
        assert all(read_only), f"{name}: mount the repository's files read-only"


def test_prometheus_reads_the_mounted_config_and_its_rules() -> None:
    prometheus = _service("prometheus")
    binds = _binds(prometheus)
    flags = dict(arg.split("=", 1) for arg in prometheus["command"] if "=" in arg)
    config_path = flags["--config.file"]
    folder, _, file_name = config_path.rpartition("/")
    assert binds.get(folder) == "./deploy/prometheus", binds
    assert (ROOT / "deploy/prometheus" / file_name).is_file()
    for rule_file in _prometheus_config()["rule_files"]:
        assert (ROOT / "deploy/prometheus" / rule_file).is_file(), rule_file
    assert "9090:9090" in [str(p) for p in prometheus["ports"]]


def test_scrape_targets_are_compose_services_on_their_metrics_ports() -> None:
    services = _compose()["services"]
    targets = _scrape_targets()
    api, worker = _env(services["api"]), _env(services["worker"])
    expected = {
        "worksession-api": f"api:{api['WORKSESSION_METRICS_PORT']}",
        "worksession-worker": f"worker:{worker['WORKSESSION_WORKER_METRICS_PORT']}",
        "temporal": "temporal:" + _env(services["temporal"])["PROMETHEUS_ENDPOINT"].split(":")[-1],
    }
    for job, target in expected.items():
        assert targets[job] == [target], (job, targets.get(job))
    for job, job_targets in targets.items():
        for target in job_targets:
            host, port = target.rsplit(":", 1)
            if host == "localhost":
                continue  # Prometheus scraping itself
            assert host in services, f"{job}: {host} is not a compose service"
            exposed = [str(p) for p in services[host].get("expose", [])]
            assert port in exposed, f"{job}: {host} does not expose {port}"


def test_app_metrics_listen_on_all_interfaces_on_ports_not_published() -> None:
    services = _compose()["services"]
    for name in LONG_RUNNING:
        env = _env(services[name])
        assert env["WORKSESSION_METRICS_HOST"] == "0.0.0.0", name
        metrics_ports = {env["WORKSESSION_METRICS_PORT"], env["WORKSESSION_WORKER_METRICS_PORT"]}
        published = {str(p).split(":")[0] for p in services[name].get("ports", [])}
        assert not metrics_ports & published, f"{name} publishes a metrics port on the host"
    # The compose ports are the embedded defaults, so docs/operations.md holds outside compose.
    settings = Settings()
    assert _env(services["api"])["WORKSESSION_METRICS_PORT"] == str(settings.metrics_port)
    assert (_env(services["worker"])["WORKSESSION_WORKER_METRICS_PORT"]
            == str(settings.worker_metrics_port))


def test_temporal_serves_its_metrics_for_prometheus() -> None:
    endpoint = _env(_service("temporal"))["PROMETHEUS_ENDPOINT"]
    host, port = endpoint.rsplit(":", 1)
    assert host == "0.0.0.0"
    assert port in [str(p) for p in _service("temporal")["expose"]]


def test_grafana_provisions_the_prometheus_datasource_and_the_dashboards() -> None:
    grafana = _service("grafana")
    binds = _binds(grafana)
    assert binds["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    datasources = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    url = urlsplit(source["url"])
    assert source["type"] == "prometheus"
    assert url.hostname == "prometheus" and url.port == 9090
    providers = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/worksession.yml").read_text())
    (provider,) = providers["providers"]
    dashboards_path = provider["options"]["path"]
    assert binds[dashboards_path] == "./deploy/grafana/dashboards"
    home = _env(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    folder, _, file_name = home.rpartition("/")
    assert folder == dashboards_path
    assert (ROOT / "deploy/grafana/dashboards" / file_name).is_file()
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert "healthcheck" in _service("prometheus")


def test_grafana_admin_password_is_required_and_anonymous_users_only_view() -> None:
    env = _env(_service("grafana"))
    match = REQUIRED_VAR.match(env["GF_SECURITY_ADMIN_PASSWORD"])
    assert match, "Grafana's admin password must use the ${VAR:?message} form"
    assert env.get("GF_AUTH_ANONYMOUS_ENABLED", "false") == "false" or \
        env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert "3000:3000" in [str(p) for p in _service("grafana")["ports"]]


def test_monitoring_data_lives_in_named_volumes() -> None:
    compose = _compose()
    for name, target in (("prometheus", "/prometheus"), ("grafana", "/var/lib/grafana")):
        named = {str(v).split(":")[0] for v in compose["services"][name]["volumes"]
                 if str(v).split(":")[1] == target}
        assert named and named <= set(compose["volumes"]), name


def test_production_logs_json_lines() -> None:
    for name in LONG_RUNNING:
        assert _env(_service(name))["WORKSESSION_LOG_FORMAT"] == "json", name


# --- Evidence files in object storage (MinIO) -----------------------------------------------

def test_api_and_worker_keep_evidence_in_the_minio_bucket_the_setup_job_makes() -> None:
    envs = [_env(_service(name)) for name in LONG_RUNNING]
    for env in envs:
        assert env["WORKSESSION_EVIDENCE_STORE"] == "s3://evidence/"
        assert urlsplit(env["WORKSESSION_S3_ENDPOINT_URL"]).hostname == "minio"
        assert REQUIRED_VAR.match(env["WORKSESSION_S3_SECRET_ACCESS_KEY"])
    assert all(envs[0][k] == envs[1][k] for k in envs[0] if k.startswith("WORKSESSION_S3"))
    setup = _service("minio-setup")
    command = " ".join(setup["command"])
    assert "mc mb --ignore-existing local/evidence" in command
    assert f"mc admin user add local {envs[0]['WORKSESSION_S3_ACCESS_KEY_ID']} " in command
    assert _env(setup)["EVIDENCE_SECRET"] == envs[0]["WORKSESSION_S3_SECRET_ACCESS_KEY"]
    assert setup["depends_on"]["minio"]["condition"] == "service_healthy"
    for name in (*LONG_RUNNING, "setup"):
        assert _service(name)["depends_on"]["minio-setup"]["condition"] == \
            "service_completed_successfully", name


def test_minio_keeps_its_data_in_a_named_volume_and_asks_for_a_root_password() -> None:
    compose = _compose()
    minio = compose["services"]["minio"]
    sources = {str(v).split(":", 1)[0] for v in minio["volumes"]}
    assert sources and sources <= set(compose["volumes"])
    assert REQUIRED_VAR.match(_env(minio)["MINIO_ROOT_PASSWORD"])
    assert re.match(r"^minio/minio:RELEASE\.", minio["image"])
