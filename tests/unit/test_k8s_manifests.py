"""The Kubernetes manifests of deploy/k8s (a kustomize base), checked offline.

Built-in kinds are validated against the Kubernetes OpenAPI schemas shipped inside
the `kubernetes-validate` package (strict: unknown fields fail); the KEDA ScaledObject,
a custom resource it has no schema for, is checked by hand. The settings they carry
are checked against service/settings.py: real STOCK_* names, values it accepts.
"""

from __future__ import annotations

import argparse
import os
import socket
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.entrypoints.cli import _parser
from service.settings import Settings

K8S_DIR = Path(__file__).resolve().parents[2] / "deploy" / "k8s"

# The oldest Kubernetes whose schemas the dev dependency's floor
# (kubernetes-validate>=1.31) ships, and the newest the installed package ships.
_LATEST = ".".join(kubernetes_validate.latest_version().split(".")[:2])
K8S_VERSIONS = list(dict.fromkeys(["1.31", _LATEST]))

# Custom resources: no schema in kubernetes-validate, checked by hand below.
CUSTOM_KINDS = {("keda.sh/v1alpha1", "ScaledObject")}

IMAGE = "stock-worker:0.1.0"
SECRET_SETTINGS = {"STOCK_DATABASE_URL", "STOCK_API_TOKENS", "STOCK_KAFKA_SASL_PASSWORD"}


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to reach the network (a schema fetched by URL) fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access while checking manifests: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@cache
def _kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    return loaded


@cache
def _documents() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(file name, document) for every document of every listed resource file."""
    found = []
    for name in _kustomization()["resources"]:
        for document in yaml.safe_load_all((K8S_DIR / name).read_text()):
            if document is not None:
                found.append((name, document))
    return tuple(found)


def _one(kind: str, name: str) -> dict[str, Any]:
    matches = [
        doc for _, doc in _documents() if doc["kind"] == kind and doc["metadata"]["name"] == name
    ]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def _workloads() -> dict[str, dict[str, Any]]:
    """Each object with a pod template, by kind/name."""
    return {
        f"{doc['kind']}/{doc['metadata']['name']}": doc
        for _, doc in _documents()
        if doc["kind"] in {"Deployment", "Job", "CronJob"}
    }


def _template(workload: dict[str, Any]) -> dict[str, Any]:
    """The pod template: a CronJob's is inside its Job template."""
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return dict(spec["template"])


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    [container] = _template(workload)["spec"]["containers"]
    return dict(container)


def _configuration() -> dict[str, str]:
    """The environment every container gets: the ConfigMap, then the Secret."""
    return {
        **_one("ConfigMap", "stock-config")["data"],
        **_one("Secret", "stock-secrets")["stringData"],
    }


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as the pods see them: the ConfigMap and Secret as the only STOCK_*."""
    for name in list(os.environ):
        if name.startswith("STOCK_"):
            monkeypatch.delenv(name)
    for name, value in _configuration().items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_kustomization_lists_every_file_and_only_existing_ones() -> None:
    listed = _kustomization()["resources"]
    assert len(listed) == len(set(listed)), "a resource is listed twice"
    missing = [name for name in listed if not (K8S_DIR / name).is_file()]
    assert not missing, f"listed but absent: {missing}"
    on_disk = {
        path.name
        for path in K8S_DIR.iterdir()
        if path.suffix in {".yaml", ".yml"} and path.name != "kustomization.yaml"
    }
    assert on_disk == set(listed), f"not listed: {sorted(on_disk - set(listed))}"
    assert {path.name for path in K8S_DIR.iterdir()} == on_disk | {"kustomization.yaml"}


def test_the_expected_objects_are_there() -> None:
    kinds = sorted(f"{doc['kind']}/{doc['metadata']['name']}" for _, doc in _documents())
    assert kinds == [
        "ConfigMap/stock-config",
        "CronJob/stock-prune",
        "CronJob/stock-reconcile",
        "Deployment/stock-api",
        "Deployment/stock-worker",
        "Job/stock-migrate",
        "PodDisruptionBudget/stock-worker",
        "ScaledObject/stock-worker",
        "Secret/stock-secrets",
        "Service/stock-api",
    ]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_built_in_kinds_validate_against_the_kubernetes_schemas(version: str) -> None:
    validated = 0
    for name, doc in _documents():
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            pytest.fail(
                f"{name}: {doc['kind']} invalid for Kubernetes {version}: {path}: {error.message}"
            )
        validated += 1
    assert validated == len(_documents()) - 1  # all but the ScaledObject


def test_every_setting_is_a_real_stock_variable() -> None:
    known = {f"STOCK_{field.upper()}" for field in Settings.model_fields}
    unknown = sorted(set(_configuration()) - known)
    assert not unknown, f"not settings of service/settings.py: {unknown}"


def test_the_settings_are_accepted(settings: Settings) -> None:
    assert settings.http_host == "0.0.0.0"
    assert settings.api_token_list, "no API token: every write would be refused"


def test_secrets_are_in_the_secret_and_are_placeholders() -> None:
    config = _one("ConfigMap", "stock-config")["data"]
    secret = _one("Secret", "stock-secrets")["stringData"]
    assert set(secret) == SECRET_SETTINGS
    assert not SECRET_SETTINGS & set(config), "a secret in the ConfigMap"
    for name, value in secret.items():
        assert "CHANGE-ME" in value, f"{name} is not an obvious placeholder"


@pytest.mark.parametrize("workload", sorted(_workloads()))
def test_every_pod_is_hardened_and_configured(workload: str) -> None:
    doc = _workloads()[workload]
    pod = _template(doc)["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    empty_dirs = {volume["name"] for volume in pod["volumes"] if "emptyDir" in volume}
    for container in pod["containers"]:
        assert container["image"] == IMAGE
        assert container["command"] == ["stock"]
        for bound in ("requests", "limits"):
            assert set(container["resources"][bound]) >= {"cpu", "memory"}, bound
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]
        tmp = [mount for mount in container["volumeMounts"] if mount["mountPath"] == "/tmp"]
        assert len(tmp) == 1 and tmp[0]["name"] in empty_dirs, "no writable /tmp"
        sources = container["envFrom"]
        assert {"configMapRef": {"name": "stock-config"}} in sources
        assert {"secretRef": {"name": "stock-secrets"}} in sources


@pytest.mark.parametrize("workload", sorted(_workloads()))
def test_selectors_match_their_pod_templates(workload: str) -> None:
    doc = _workloads()[workload]
    labels = _template(doc)["metadata"]["labels"]
    if doc["kind"] == "Deployment":
        assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_each_workload_runs_its_command() -> None:
    assert _container(_one("Deployment", "stock-worker"))["args"] == ["run"]
    assert _container(_one("Deployment", "stock-api"))["args"] == ["api"]
    assert _container(_one("Job", "stock-migrate"))["args"] == ["migrate"]
    assert _container(_one("CronJob", "stock-prune"))["args"] == ["prune"]
    assert _container(_one("CronJob", "stock-reconcile"))["args"] == ["reconcile"]
    commands = {
        name
        for action in _parser()._actions
        if isinstance(action, argparse._SubParsersAction)
        for name in action.choices
    }
    for workload in _workloads().values():
        assert _container(workload)["args"][0] in commands


@pytest.mark.parametrize("name", ["stock-worker", "stock-api"])
def test_probes_point_to_healthz_and_readyz(name: str, settings: Settings) -> None:
    container = _container(_one("Deployment", name))
    assert {"name": "http", "containerPort": settings.http_port, "protocol": "TCP"} in (
        container["ports"]
    )
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe


def test_worker_termination_outlasts_a_batch_and_the_shutdown_grace(settings: Settings) -> None:
    worker = _one("Deployment", "stock-worker")
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    default = Settings.model_fields["shutdown_grace_seconds"].default
    http_drain = 5  # uvicorn timeout_graceful_shutdown, service/entrypoints/http/server.py
    assert grace > default + http_drain
    assert grace > settings.shutdown_grace_seconds + http_drain
    # KEDA owns the count; a fixed `replicas` would be reset by every apply.
    assert "replicas" not in worker["spec"]


def test_the_migration_job_retries_and_is_cleaned_up() -> None:
    job = _one("Job", "stock-migrate")
    assert 0 < job["spec"]["backoffLimit"] <= 10
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    assert job["spec"]["template"]["spec"]["restartPolicy"] in {"Never", "OnFailure"}


def test_the_disruption_budget_covers_the_workers() -> None:
    pdb = _one("PodDisruptionBudget", "stock-worker")
    assert pdb["spec"]["maxUnavailable"] == 1
    labels = _one("Deployment", "stock-worker")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_service_sends_port_80_to_the_api_pods_only() -> None:
    service = _one("Service", "stock-api")
    selector = service["spec"]["selector"].items()
    api = _one("Deployment", "stock-api")["spec"]["template"]["metadata"]["labels"]
    worker = _one("Deployment", "stock-worker")["spec"]["template"]["metadata"]["labels"]
    assert selector <= api.items()
    assert not selector <= worker.items()
    [port] = service["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (80, "http")
    assert "http" in {p["name"] for p in _container(_one("Deployment", "stock-api"))["ports"]}


def test_the_scaled_object_scales_the_workers_on_lag(settings: Settings) -> None:
    scaled = _one("ScaledObject", "stock-worker")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == "stock-worker"
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert spec["minReplicaCount"] == 1
    # Never more workers than partitions of an input topic: the extra ones sit idle.
    assert 1 <= spec["maxReplicaCount"] <= settings.kafka_topic_partitions
    triggers = spec["triggers"]
    assert {trigger["type"] for trigger in triggers} == {"kafka"}
    topics = [trigger["metadata"]["topic"] for trigger in triggers]
    assert sorted(topics) == sorted(settings.consumed_topics)
    for trigger in triggers:
        metadata = trigger["metadata"]
        assert metadata["consumerGroup"] == settings.kafka_group_id
        assert metadata["bootstrapServers"] == settings.kafka_bootstrap_servers
        assert metadata["offsetResetPolicy"] == "earliest"  # as the worker's consumer
        assert all(isinstance(value, str) for value in metadata.values()), metadata
        assert int(metadata["lagThreshold"]) > settings.batch_max_records


def test_the_maintenance_cronjobs_run_daily_and_weekly_once_at_a_time() -> None:
    prune, reconcile = _one("CronJob", "stock-prune"), _one("CronJob", "stock-reconcile")
    minute, hour, day, month, weekday = prune["spec"]["schedule"].split()
    assert (day, month, weekday) == ("*", "*", "*") and minute.isdigit() and hour.isdigit()
    minute, hour, day, month, weekday = reconcile["spec"]["schedule"].split()
    assert (day, month) == ("*", "*") and weekday.isdigit()
    for cronjob in (prune, reconcile):
        spec = cronjob["spec"]
        assert spec["concurrencyPolicy"] == "Forbid"
        assert spec["timeZone"] == "Etc/UTC"
        job = spec["jobTemplate"]["spec"]
        assert 0 < job["backoffLimit"] <= 10
        assert job["ttlSecondsAfterFinished"] > 0 and job["activeDeadlineSeconds"] > 0
        assert _template(cronjob)["spec"]["restartPolicy"] == "Never"
    # Discrepancies found (exit 1) fail the Job at once: a retry would publish them again.
    [rule] = reconcile["spec"]["jobTemplate"]["spec"]["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob"
    assert rule["onExitCodes"] == {
        "containerName": _container(reconcile)["name"], "operator": "In", "values": [1]
    }


def test_either_the_workers_or_the_cronjobs_run_the_maintenance_jobs(settings: Settings) -> None:
    """Not both (reconcile would run twice a week), not neither (nothing pruned)."""
    for name in ("stock-prune", "stock-reconcile"):
        suspended = _one("CronJob", name)["spec"].get("suspend", False)
        assert suspended is settings.jobs_enabled, (
            f"CronJob {name}: suspend={suspended} but STOCK_JOBS_ENABLED={settings.jobs_enabled}"
        )
