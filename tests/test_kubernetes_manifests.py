"""deploy/kubernetes/ against the Kubernetes schemas, offline, and the cross-references an
operator relies on (probes, ports, secret files, settings, selectors, images, shutdown).

The schemas are those `kubernetes-validate` ships (JSON Schemas generated from each Kubernetes
release's OpenAPI document; no network): strict, so an unknown or misspelt field fails too.
The kustomizations are rendered here by a small reading of the few features they use
(resources, namespace, components with images); where `kubectl` is installed its own
`kubectl kustomize` output is compared with it (no cluster is needed for that).
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

import worker
from worksession import settings as settings_module
from worksession.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "Dockerfile"
PREFIX = "WORKSESSION_"
# The oldest Kubernetes the manifests claim (README.md) and the newest the package knows.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
EXAMPLE_SECRETS = K8S / "secrets.example.yaml"
NAMESPACE = "worksession"

SECRET_SETTINGS = set(settings_module.SECRET_SETTINGS)


# --- loading and rendering -------------------------------------------------------------------

def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _kustomization(directory: Path) -> dict[str, Any]:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def _images(directory: Path) -> list[dict[str, str]]:
    images = list(_kustomization(directory).get("images") or [])
    for component in _kustomization(directory).get("components") or []:
        images += _images((directory / component).resolve())
    return images


def _containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod_spec.get("initContainers") or []) + list(pod_spec["containers"])


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        return obj["spec"]["template"]["spec"]
    return None


def render(directory: Path) -> list[dict[str, Any]]:
    """What `kubectl kustomize DIRECTORY` gives for the features used here."""
    kustomization = _kustomization(directory)
    assert set(kustomization) <= {"apiVersion", "kind", "namespace", "resources",
                                  "components", "images"}, \
        "a kustomize feature this test does not render: extend render()"
    objects: list[dict[str, Any]] = []
    for resource in kustomization.get("resources") or []:
        path = (directory / resource).resolve()
        assert path.is_file() and K8S in path.parents, resource
        objects += copy.deepcopy(_docs(path))
    images = {i["name"]: i for i in _images(directory)}
    for obj in objects:
        if "namespace" in kustomization and obj["kind"] != "Namespace":
            obj["metadata"]["namespace"] = kustomization["namespace"]
        spec = _pod_spec(obj)
        for container in _containers(spec) if spec else []:
            name, _, tag = container["image"].partition(":")
            if name in images:
                new = images[name]
                container["image"] = f"{new.get('newName', name)}:{new.get('newTag', tag)}"
    return objects


@pytest.fixture(scope="module")
def app() -> list[dict[str, Any]]:
    return render(K8S)


@pytest.fixture(scope="module")
def migration() -> list[dict[str, Any]]:
    return render(K8S / "migrate")


def _one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _workloads(app: list[dict[str, Any]], migration: list[dict[str, Any]]
               ) -> list[dict[str, Any]]:
    return [o for o in app + migration if _pod_spec(o) is not None]


def _configmap(app: list[dict[str, Any]]) -> dict[str, str]:
    return _one(app, "ConfigMap", "worksession-config")["data"]


def _commented_settings() -> dict[str, str]:
    """The optional settings configmap.yaml shows commented out (`#   WORKSESSION_X: v`)."""
    found: dict[str, str] = {}
    for line in (K8S / "configmap.yaml").read_text().splitlines():
        m = re.match(r"^\s*#\s+(WORKSESSION_[A-Z0-9_]+):\s*(.+?)\s*$", line)
        if m:
            found[m[1]] = yaml.safe_load(m[2])
    return found


def _env(obj: dict[str, Any], container: dict[str, Any], app: list[dict[str, Any]]
         ) -> dict[str, str]:
    """A container's environment as the kubelet makes it: envFrom first, env over it."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        assert "configMapRef" in source, f"{obj['metadata']['name']}: {source}"
        env.update(_one(app, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env") or []:
        assert "value" in item, f"{obj['metadata']['name']}: {item['name']} from valueFrom"
        env[item["name"]] = item["value"]
    return env


def _port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in container.get("ports") or [] if p.get("name") == port]
    assert len(named) == 1, f"{container['name']}: no port named {port!r}"
    return named[0]


def _secret_mounts(spec: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """mount path -> Secret name, for the container's mounts of Secret volumes."""
    secrets = {v["name"]: v["secret"]["secretName"]
               for v in spec.get("volumes") or [] if "secret" in v}
    return {m["mountPath"]: secrets[m["name"]]
            for m in container.get("volumeMounts") or [] if m["name"] in secrets}


def _example_secret_keys() -> dict[str, set[str]]:
    return {d["metadata"]["name"]: set(d.get("stringData") or {}) | set(d.get("data") or {})
            for d in _docs(EXAMPLE_SECRETS)}


def _known_variables() -> set[str]:
    fields = set(Settings.model_fields)
    return ({PREFIX + f.upper() for f in fields}
            | {PREFIX + f.upper() + "_FILE" for f in SECRET_SETTINGS})


# --- the schemas ---------------------------------------------------------------------------

def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def test_every_manifest_is_valid_against_the_kubernetes_schemas() -> None:
    files = _manifest_files()
    assert len(files) >= 7, files
    for path in files:
        for doc in _docs(path):
            for version in KUBERNETES_VERSIONS:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    where = ".".join(str(p) for p in e.path)
                    pytest.fail(f"{path.relative_to(ROOT)} {doc['kind']}/"
                                f"{doc['metadata']['name']} against Kubernetes {version}: "
                                f"{where}: {e.message}")


def test_the_rendered_kustomizations_are_valid_too(app, migration) -> None:
    for obj in app + migration:
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def test_the_validation_is_not_vacuous(app) -> None:
    """Strict: a misspelt field, a wrong type or a missing required field is caught."""
    deployment = _one(app, "Deployment", "worksession-api")
    broken = copy.deepcopy(deployment)
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "30s"
    no_selector = copy.deepcopy(deployment)
    del no_selector["spec"]["selector"]
    for bad in (broken, wrong_type, no_selector):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[0], strict=True)


def test_every_manifest_is_applied_by_a_kustomization_but_the_secret_examples() -> None:
    used = set()
    for directory in (K8S, K8S / "migrate"):
        used |= {(directory / r).resolve() for r in _kustomization(directory)["resources"]}
    assert EXAMPLE_SECRETS.resolve() not in used, "placeholders would overwrite real Secrets"
    assert set(_manifest_files()) - used == {EXAMPLE_SECRETS}


def test_the_kustomizations_give_what_the_deployment_needs(app, migration) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in app)
    assert kinds == sorted([
        ("Namespace", NAMESPACE), ("ConfigMap", "worksession-config"),
        ("Deployment", "worksession-api"), ("Service", "worksession-api"),
        ("Deployment", "worksession-worker"),
        ("PodDisruptionBudget", "worksession-api"),
        ("PodDisruptionBudget", "worksession-worker"),
        ("HorizontalPodAutoscaler", "worksession-api")])
    assert [(o["kind"], o["metadata"]["name"]) for o in migration] == [
        ("Job", "worksession-migrate")]
    for obj in app + migration:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("directory", [K8S, K8S / "migrate"], ids=["app", "migrate"])
def test_render_agrees_with_kubectl_kustomize(directory: Path) -> None:
    out = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True,
                         text=True, timeout=60, check=True).stdout

    def key(o: dict[str, Any]) -> tuple[str, str]:
        return o["kind"], o["metadata"]["name"]

    theirs = sorted(_docs_text(out), key=key)
    ours = sorted(render(directory), key=key)
    assert [key(o) for o in theirs] == [key(o) for o in ours]
    for a, b in zip(theirs, ours, strict=True):
        assert a == b, key(a)


def _docs_text(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


# --- cross-references ------------------------------------------------------------------------

def test_api_probes_hit_readyz_and_healthz_on_the_port_the_api_listens_on(app) -> None:
    deployment = _one(app, "Deployment", "worksession-api")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = _env(deployment, container, app)
    assert container["command"] == ["worksession", "api"]
    assert env["WORKSESSION_API_HOST"] == "0.0.0.0"
    listens = int(env.get("WORKSESSION_API_PORT", Settings.model_fields["api_port"].default))
    probes = {k: container[k]["httpGet"] for k in
              ("startupProbe", "livenessProbe", "readinessProbe")}
    for name, probe in probes.items():
        assert _port(container, probe["port"]) == listens, name
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["startupProbe"]["path"] == "/healthz"
    # Readiness: /readyz without the worker check (docs/deployment.md#probes-and-why says why).
    assert probes["readinessProbe"]["path"] == "/readyz?exclude=worker"
    # Each of /readyz's two checks may take its whole bound.
    from api.routers.health import CHECK_TIMEOUT
    assert container["readinessProbe"]["timeoutSeconds"] > 2 * CHECK_TIMEOUT

    service = _one(app, "Service", "worksession-api")
    http = [p for p in service["spec"]["ports"] if p["name"] == "http"]
    assert len(http) == 1 and _port(container, http[0]["targetPort"]) == listens


def test_metrics_ports_match_the_settings_and_the_scrape_annotations(app) -> None:
    for name, setting in (("worksession-api", "WORKSESSION_METRICS_PORT"),
                          ("worksession-worker", "WORKSESSION_WORKER_METRICS_PORT")):
        deployment = _one(app, "Deployment", name)
        template = deployment["spec"]["template"]
        (container,) = template["spec"]["containers"]
        env = _env(deployment, container, app)
        assert env["WORKSESSION_METRICS_HOST"] == "0.0.0.0", name
        port = int(env[setting])
        assert port and _port(container, "metrics") == port, name
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == port, name
        assert annotations["prometheus.io/path"] == "/metrics"
    # Never on the API's own port.
    config = _configmap(app)
    assert config["WORKSESSION_METRICS_PORT"] != "8000"


def test_worker_probes_use_its_metrics_port(app) -> None:
    deployment = _one(app, "Deployment", "worksession-worker")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["worksession", "worker"]
    metrics = int(_env(deployment, container, app)["WORKSESSION_WORKER_METRICS_PORT"])
    for name in ("readinessProbe", "livenessProbe"):
        assert _port(container, container[name]["tcpSocket"]["port"]) == metrics, name


def test_worker_shutdown_finishes_in_flight_tasks_within_the_grace_period(app) -> None:
    spec = _one(app, "Deployment", "worksession-worker")["spec"]["template"]["spec"]
    graceful = worker.GRACEFUL_SHUTDOWN.total_seconds()
    # The tasks' own 10 s, then closing the database pool and the Temporal connection.
    assert spec["terminationGracePeriodSeconds"] >= graceful + 15
    assert "preStop" not in (spec["containers"][0].get("lifecycle") or {}), \
        "a preStop hook would eat into the grace period before SIGTERM"


def test_api_drains_within_its_grace_period(app) -> None:
    spec = _one(app, "Deployment", "worksession-api")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    request_bound = Settings.model_fields["request_timeout_seconds"].default
    assert spec["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + request_bound + 5


def test_every_file_setting_points_into_a_mounted_secret(app, migration) -> None:
    keys = _example_secret_keys()
    for obj in _workloads(app, migration):
        spec = _pod_spec(obj)
        for container in _containers(spec):
            mounts = _secret_mounts(spec, container)
            env = _env(obj, container, app)
            optional = {k: v for k, v in _commented_settings().items() if k not in env}
            for name, value in {**env, **optional}.items():
                if not name.endswith("_FILE"):
                    continue
                path = PurePosixPath(value)
                parent = str(path.parent)
                assert parent in mounts, \
                    f"{obj['metadata']['name']}: {name}={value} is not in a mounted Secret"
                assert path.name in keys[mounts[parent]], \
                    f"{name}: Secret {mounts[parent]} has no key {path.name!r}"


def test_the_secret_volumes_are_read_only_and_readable_by_the_image_user(app, migration) -> None:
    for obj in _workloads(app, migration):
        spec = _pod_spec(obj)
        assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsUser"]
        for volume in spec["volumes"]:
            if "secret" in volume:
                assert volume["secret"]["defaultMode"] & 0o040, "group-readable"
                assert not volume["secret"]["defaultMode"] & 0o007, "not world-readable"
        for container in _containers(spec):
            for mount in _secret_mounts(spec, container):
                (m,) = [m for m in container["volumeMounts"] if m["mountPath"] == mount]
                assert m["readOnly"] is True


def test_every_worksession_variable_is_a_setting(app, migration) -> None:
    known = _known_variables()
    for obj in _workloads(app, migration):
        for container in _containers(_pod_spec(obj)):
            unknown = {n for n in _env(obj, container, app) if n.startswith(PREFIX)} - known
            assert not unknown, f"{obj['metadata']['name']}: {sorted(unknown)}"
    assert all(name.startswith(PREFIX) for name in _configmap(app))
    optional = set(_commented_settings())
    assert optional, "configmap.yaml shows the optional settings"
    unknown = optional - _known_variables()
    assert not unknown, f"configmap.yaml's optional lines: {sorted(unknown)}"


def test_no_secret_is_in_an_environment_value(app, migration) -> None:
    secret_values = {v.strip() for d in _docs(EXAMPLE_SECRETS)
                     for v in (d.get("stringData") or {}).values()}
    secret_names = {PREFIX + s.upper() for s in SECRET_SETTINGS}
    config = _configmap(app)
    assert not secret_names & set(config)
    assert not secret_names & set(_commented_settings())
    for obj in _workloads(app, migration):
        for container in _containers(_pod_spec(obj)):
            for item in container.get("env") or []:
                assert item["name"] not in secret_names, item["name"]
                assert "valueFrom" not in item, f"{item['name']}: secrets are files here"
            for source in container.get("envFrom") or []:
                assert "secretRef" not in source
            for value in _env(obj, container, app).values():
                assert value.strip() not in secret_values
                assert "CHANGE-ME" not in value


def test_hpa_scales_the_api_deployment_on_cpu(app) -> None:
    hpa = _one(app, "HorizontalPodAutoscaler", "worksession-api")
    target = hpa["spec"]["scaleTargetRef"]
    deployment = _one(app, "Deployment", target["name"])
    assert (target["kind"], target["apiVersion"]) == ("Deployment", deployment["apiVersion"])
    assert deployment["metadata"]["labels"]["app.kubernetes.io/component"] == "api"
    assert hpa["spec"]["minReplicas"] >= 2
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    # The autoscaler owns the count: an `apply` must not reset it.
    assert "replicas" not in deployment["spec"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert "cpu" in container["resources"]["requests"], "utilization is of the request"


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) == {"matchLabels"}, "matchExpressions: extend the test"
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def test_selectors_match_the_pods_they_mean(app) -> None:
    deployments = {o["metadata"]["name"]: o for o in app if o["kind"] == "Deployment"}
    pods = {name: d["spec"]["template"]["metadata"]["labels"]
            for name, d in deployments.items()}
    for name, d in deployments.items():
        assert _matches(d["spec"]["selector"], pods[name]), name
        others = [n for n in pods if n != name]
        assert not any(_matches(d["spec"]["selector"], pods[n]) for n in others), name
        for constraint in d["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
            assert constraint["labelSelector"] == d["spec"]["selector"], name
    for pdb in (o for o in app if o["kind"] == "PodDisruptionBudget"):
        selected = [n for n, labels in pods.items() if _matches(pdb["spec"]["selector"], labels)]
        assert selected == [pdb["metadata"]["name"]], pdb["metadata"]["name"]
    service = _one(app, "Service", "worksession-api")
    selected = [n for n, labels in pods.items()
                if all(labels.get(k) == v for k, v in service["spec"]["selector"].items())]
    assert selected == ["worksession-api"]
    assert {o["metadata"]["name"] for o in app if o["kind"] == "PodDisruptionBudget"} \
        == set(deployments)


def test_api_worker_and_job_run_the_same_image(app, migration) -> None:
    images = {c["image"] for o in _workloads(app, migration)
              for c in _containers(_pod_spec(o))}
    assert len(images) == 1, images
    (image,) = images
    assert re.fullmatch(r"[^:\s]+/worksession:[\w.-]+", image) and \
        not image.endswith(":latest"), image


def test_pods_run_as_the_image_user_with_a_read_only_root(app, migration) -> None:
    uid = int(re.search(r"useradd .*--uid (\d+)", DOCKERFILE.read_text())[1])
    for obj in _workloads(app, migration):
        spec = _pod_spec(obj)
        name = obj["metadata"]["name"]
        context = spec["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] == uid, name
        assert context["seccompProfile"]["type"] == "RuntimeDefault"
        # Else a Service named worksession-api would add WORKSESSION_API_PORT=tcp://... and
        # more WORKSESSION_* variables to every pod, which Settings would read.
        assert spec["enableServiceLinks"] is False, name
        assert spec["automountServiceAccountToken"] is False, name
        tmp = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for container in _containers(spec):
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert any(m["mountPath"] == "/tmp" and m["name"] in tmp
                       for m in container["volumeMounts"]), name
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
            assert "memory" in container["resources"]["limits"], name


def test_migration_job_migrates_then_registers_search_attributes(migration) -> None:
    job = _one(migration, "Job", "worksession-migrate")
    spec = job["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    assert container["command"] == [
        "sh", "-c", "worksession migrate && worksession setup-temporal"]
    assert 1 <= spec["backoffLimit"] <= 10
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
