"""The KubeRay manifests of docs/DEPLOY.md (docs/deploy/), checked without Kubernetes or Ray.

Every key must be a field of KubeRay's CRDs as written down in
`docs/deploy/kuberay_fields.json` (read from the CRD files named there; pod templates
against the core PodTemplateSpec keys listed in the same file), required fields must be
there, the Ray containers must carry emm-ray's Ray environment, the RayJob must run
`pipelines/full.py` with a run config that is the census run, and the RayService's
`serveConfigV2` must be a Ray Serve config whose application is the one of
`serve_configs/` with arguments `ServeSettings` accepts. The last tests break a copy of
each manifest on purpose and expect the checks to say so.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from emm_ray.errors import ConfigError
from emm_ray.pipeline.config import PipelineConfig
from emm_ray.runtime import RAY_ENV
from emm_ray.serve.settings import parse_settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "docs" / "deploy"
FIELDS: dict[str, Any] = json.loads((DEPLOY / "kuberay_fields.json").read_text())
MANIFESTS = {"RayJob": DEPLOY / "rayjob.yaml", "RayService": DEPLOY / "rayservice.yaml"}
IMAGE_ROOT = "/app"  # where the image keeps the repository (docs/DEPLOY.md, Dockerfile)
# Every Ray process of a multi-node cluster: emm-ray's variables, except this one, whose
# "0" (emm-ray's default for one machine) keeps Ray on 127.0.0.1 and makes a worker's
# `ray start --address` abort (test_loopback_setting_stops_ray_clusters).
CLUSTER_ENV = {**RAY_ENV, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}
GPU = "nvidia.com/gpu"


def load(kind: str) -> dict[str, Any]:
    documents = list(yaml.safe_load_all(MANIFESTS[kind].read_text()))
    assert len(documents) == 1, f"{MANIFESTS[kind].name}: one document expected"
    return documents[0]


# --- walking a manifest -------------------------------------------------------------------


def instances(node: Any, path: str, shown: str = "") -> Iterator[tuple[str, Any]]:
    """Every value at `path` (dotted, `a[]` = each item of list `a`) that exists in `node`."""
    if not path:
        yield shown, node
        return
    head, _, rest = path.partition(".")
    key, many = (head[:-2], True) if head.endswith("[]") else (head, False)
    if not isinstance(node, dict) or key not in node:
        return
    where = f"{shown}.{key}" if shown else key
    if not many:
        yield from instances(node[key], rest, where)
        return
    for i, item in enumerate(node[key] or []):
        yield from instances(item, rest, f"{where}[{i}]")


def _map_problems(value: Any, kind: str, where: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{where}: must be a map"]
    if kind == "string":
        return [
            f"{where}.{k}: values must be strings"
            for k, v in value.items()
            if not isinstance(v, str)
        ]
    # a quantity: integer or string (the CRD's int-or-string), never a float or a bool
    return [
        f"{where}.{k}: a quantity must be an integer or a string"
        for k, v in value.items()
        if isinstance(v, bool) or not isinstance(v, int | str)
    ]


def _walk(
    node: Any,
    path: str,
    section: dict[str, Any],
    shown: str,
    problems: list[str],
) -> None:
    if isinstance(node, list):
        for i, item in enumerate(node):
            _walk(item, path + "[]", section, f"{shown}[{i}]", problems)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        child = f"{path}.{key}" if path else str(key)
        where = f"{shown}.{key}" if shown else str(key)
        if child in section.get("templates", ()):
            _walk(value, "", FIELDS["pod_template"], where, problems)
        elif child in section["maps"]:
            problems += _map_problems(value, section["maps"][child], where)
        elif child not in section["fields"]:
            problems.append(f"{where}: not a field in docs/deploy/kuberay_fields.json")
        else:
            _walk(value, child, section, where, problems)


def field_problems(manifest: dict[str, Any], kind: str) -> list[str]:
    """Keys the CRD field list does not hold, maps of the wrong value type, missing
    required fields."""
    spec = FIELDS[kind]
    section = {
        "fields": {"apiVersion", "kind", *FIELDS["metadata"], *spec["fields"]},
        "maps": {**FIELDS["metadata_maps"], **spec["maps"]},
        "templates": spec["templates"],
    }
    problems: list[str] = []
    _walk(manifest, "", section, "", problems)
    for required in ["metadata.name", "spec", *spec["required"]]:
        problems += _missing(manifest, required)
    for template in spec["templates"]:
        for where, pod in instances(manifest, template):
            for required in FIELDS["pod_template"]["required"]:
                problems += [f"{where}.{p}" for p in _missing(pod, required)]
    return problems


def _missing(node: Any, required: str) -> list[str]:
    parent, _, leaf = required.rpartition(".")
    return [
        f"{where + '.' if where else ''}{leaf}: required"
        for where, value in instances(node, parent)
        if isinstance(value, dict) and leaf not in value
    ]


def ray_containers(manifest: dict[str, Any], kind: str) -> Iterator[tuple[str, dict, dict]]:
    """(where, container, its group) for the first container of every Ray pod template."""
    for template in FIELDS[kind]["templates"]:
        group_path = template.rpartition(".")[0]
        groups = dict(instances(manifest, group_path))
        for where, pod in instances(manifest, template):
            group = groups[where.rpartition(".")[0]]
            yield where, pod["spec"]["containers"][0], group


def env_of(container: dict[str, Any]) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def env_problems(manifest: dict[str, Any], kind: str) -> list[str]:
    """Ray containers without emm-ray's cluster environment, or with another MLflow server
    than the RayJob's (one tracking server for the pipeline and for serving)."""
    job_env = env_of(next(ray_containers(load("RayJob"), "RayJob"))[1])
    expected = {**CLUSTER_ENV, "MLFLOW_TRACKING_URI": job_env.get("MLFLOW_TRACKING_URI")}
    problems = []
    for where, container, _ in ray_containers(manifest, kind):
        env = env_of(container)
        problems += [
            f"{where}.spec.containers[0].env {k}={env.get(k)!r}, expected {v!r}"
            for k, v in expected.items()
            if v is None or env.get(k) != v
        ]
    return problems


def head_mounts(manifest: dict[str, Any], kind: str) -> list[str]:
    head = FIELDS[kind]["templates"][0]
    (_, pod), *_ = instances(manifest, head)
    return [m["mountPath"] for m in pod["spec"]["containers"][0].get("volumeMounts", [])]


def serve_config() -> dict[str, Any]:
    return yaml.safe_load(load("RayService")["spec"]["serveConfigV2"])


def serve_problems(config: dict[str, Any]) -> list[str]:
    """Keys Ray Serve's config schema does not know (it accepts and ignores extra keys)."""
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import (
        DeploymentSchema,
        HTTPOptionsSchema,
        RayActorOptionsSchema,
        ServeApplicationSchema,
        ServeDeploySchema,
    )

    problems: list[str] = []

    def check(section: Any, model: Any, where: str) -> None:
        if isinstance(section, dict):
            problems.extend(f"{where}.{k}" for k in section if k not in model.model_fields)

    check(config, ServeDeploySchema, "serveConfigV2")
    check(config.get("http_options"), HTTPOptionsSchema, "serveConfigV2.http_options")
    for i, app in enumerate(config.get("applications", [])):
        where = f"serveConfigV2.applications[{i}]"
        check(app, ServeApplicationSchema, where)
        for j, deployment in enumerate(app.get("deployments", [])):
            at = f"{where}.deployments[{j}]"
            check(deployment, DeploymentSchema, at)
            check(
                deployment.get("ray_actor_options"),
                RayActorOptionsSchema,
                f"{at}.ray_actor_options",
            )
            check(
                deployment.get("autoscaling_config"), AutoscalingConfig, f"{at}.autoscaling_config"
            )
    return problems


def repository_file(image_path: str) -> Path:
    """The repository file an absolute path inside the image names."""
    assert image_path.startswith(IMAGE_ROOT + "/"), f"{image_path}: not under {IMAGE_ROOT}"
    return ROOT / image_path[len(IMAGE_ROOT) + 1 :]


def cluster_run_config() -> PipelineConfig:
    return PipelineConfig.model_validate(yaml.safe_load((DEPLOY / "census.yaml").read_text()))


# --- the manifests as committed -------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_manifest_is_a_ray_io_v1_resource_of_its_kind(kind: str) -> None:
    manifest = load(kind)
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == kind


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_every_key_is_a_crd_field_and_required_fields_are_there(kind: str) -> None:
    assert field_problems(load(kind), kind) == []


def test_field_list_names_the_crds_it_was_read_from() -> None:
    source = FIELDS["source"]
    for kind in MANIFESTS:
        assert source[kind]["file"].startswith("ray-operator/config/crd/bases/ray.io_")
        assert len(source[kind]["commit"]) == 40


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_ray_version_is_the_pinned_one(kind: str) -> None:
    cluster = "rayClusterSpec" if kind == "RayJob" else "rayClusterConfig"
    assert load(kind)["spec"][cluster]["rayVersion"] == importlib.metadata.version("ray")


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_every_ray_container_has_the_cluster_environment(kind: str) -> None:
    assert env_problems(load(kind), kind) == []


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_gpu_limits_match_ray_start_params(kind: str) -> None:
    for where, container, group in ray_containers(load(kind), kind):
        limits = container.get("resources", {}).get("limits", {})
        requests = container.get("resources", {}).get("requests", {})
        if GPU in limits:
            assert group["rayStartParams"].get("num-gpus") == str(limits[GPU]), where
            assert requests.get(GPU, limits[GPU]) == limits[GPU], where
        else:
            assert "num-gpus" not in group["rayStartParams"], where


def test_loopback_setting_stops_ray_clusters() -> None:
    """Why the manifests set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1: with emm-ray's "0", Ray
    disables multi-node clusters (worker `ray start` aborts) and reports 127.0.0.1."""
    probe = (
        "import ray._private.ray_constants as c, ray._private.services as s; "
        "print(c.ENABLE_RAY_CLUSTER, s.get_node_ip_address() == '127.0.0.1')"
    )
    for value, expected in (("0", "False True"), ("1", "True")):
        result = subprocess.run(
            [sys.executable, "-c", probe],
            env={**_plain_env(), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": value},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        assert result.stdout.strip().startswith(expected), (value, result.stdout)


def _plain_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}


def test_rayjob_runs_the_pipeline_with_the_cluster_run_config() -> None:
    job = load("RayJob")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "python"
    script = repository_file(argv[1])
    assert script == ROOT / "pipelines" / "full.py"
    spec = importlib.util.spec_from_file_location("emm_full_pipeline", script)
    assert spec and spec.loader
    full = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(full)
    args = full.parse_args(argv[2:])  # an unknown option exits here
    assert repository_file(str(args.config)) == DEPLOY / "census.yaml"
    mounts = head_mounts(job, "RayJob")
    config = cluster_run_config()
    for name, path in (("--output", str(args.output)), ("prepared_dir", str(config.prepared_dir))):
        assert any(path.startswith(m.rstrip("/") + "/") for m in mounts) or "://" in path, (
            f"{name} {path} is neither on a volume every pod mounts ({mounts}) nor a URI"
        )
    assert job["spec"]["shutdownAfterJobFinishes"] is True


def test_cluster_run_config_is_the_census_run() -> None:
    cluster = cluster_run_config()
    census = PipelineConfig.model_validate(
        yaml.safe_load((ROOT / "configs" / "census.yaml").read_text())
    )
    assert cluster.data == census.data
    assert cluster.evaluate == census.evaluate
    assert cluster.model_name == census.model_name
    placement = {"resources"}  # where it trains, not what it trains
    assert cluster.fuse.model_dump(exclude=placement) == census.fuse.model_dump(exclude=placement)
    assert cluster.baselines.model_dump(exclude=placement) == census.baselines.model_dump(
        exclude=placement
    )
    assert "serve" not in cluster.stages  # the RayService serves
    assert cluster.stages[-1] == "register"
    raw = yaml.safe_load((DEPLOY / "census.yaml").read_text())
    assert raw["storage"].startswith("s3://")
    assert cluster.pool_spec().name == "census" and cluster.tune_spec().num_samples >= 1


def test_serve_config_is_a_ray_serve_config() -> None:
    from ray.serve.schema import ServeDeploySchema

    config = serve_config()
    ServeDeploySchema.model_validate(config)
    assert serve_problems(config) == []


def test_serve_application_is_emm_rays_with_valid_settings() -> None:
    from emm_ray.serve.app import DEPLOYMENT_NAME

    shipped = {
        app["import_path"]: app
        for path in sorted((ROOT / "serve_configs").glob("*.yaml"))
        for app in yaml.safe_load(path.read_text())["applications"]
    }
    census = yaml.safe_load((ROOT / "serve_configs" / "census.yaml").read_text())
    job_env = env_of(next(ray_containers(load("RayJob"), "RayJob"))[1])
    for app in serve_config()["applications"]:
        assert app["import_path"] in shipped
        settings = parse_settings(app["args"], "RayService serveConfigV2 args")
        assert settings.tracking_uri == job_env["MLFLOW_TRACKING_URI"]
        assert settings.model_uri.startswith(f"models:/{cluster_run_config().model_name}@")
        local = {k: v for k, v in census["applications"][0]["args"].items() if k != "tracking_uri"}
        assert {k: v for k, v in app["args"].items() if k != "tracking_uri"} == local
        assert [d["name"] for d in app["deployments"]] == [DEPLOYMENT_NAME]


def test_serve_http_reaches_the_pod_port_kuberay_exposes() -> None:
    service = load("RayService")
    http = serve_config()["http_options"]
    assert http["host"] == "0.0.0.0"
    for where, container, _ in ray_containers(service, "RayService"):
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        assert ports.get("serve") == http["port"], where


# --- the checks catch mistakes -----------------------------------------------------------


def _rename(node: dict[str, Any], old: str, new: str) -> None:
    node[new] = node.pop(old)


BROKEN = [
    pytest.param(
        "RayJob",
        lambda m: _rename(
            m["spec"]["rayClusterSpec"]["headGroupSpec"], "rayStartParams", "rayStartParam"
        ),
        ["headGroupSpec.rayStartParam: not a field", "headGroupSpec.rayStartParams: required"],
        id="misspelled-rayStartParams",
    ),
    pytest.param(
        "RayJob",
        lambda m: _rename(m["spec"], "shutdownAfterJobFinishes", "shutdownAfterJobFinished"),
        ["spec.shutdownAfterJobFinished: not a field"],
        id="misspelled-spec-field",
    ),
    pytest.param(
        "RayJob",
        lambda m: m["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("minReplicas"),
        ["workerGroupSpecs[0].minReplicas: required"],
        id="missing-minReplicas",
    ),
    pytest.param(
        "RayJob",
        lambda m: m["spec"]["rayClusterSpec"]["workerGroupSpecs"][1]["rayStartParams"].update(
            {"num-gpus": 1}
        ),
        ["rayStartParams.num-gpus: values must be strings"],
        id="unquoted-rayStartParams-value",
    ),
    pytest.param(
        "RayService",
        lambda m: _rename(
            m["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][
                0
            ],
            "resources",
            "resource",
        ),
        ["containers[0].resource: not a field"],
        id="misspelled-container-field",
    ),
    pytest.param(
        "RayService",
        lambda m: _rename(m["spec"], "rayClusterConfig", "rayClusterSpec"),
        ["spec.rayClusterSpec: not a field", "rayClusterConfig: required"],
        id="rayjob-field-in-rayservice",
    ),
]


@pytest.mark.parametrize(("kind", "breaks", "expected"), BROKEN)
def test_a_broken_manifest_is_reported(kind: str, breaks: Any, expected: list[str]) -> None:
    manifest = copy.deepcopy(load(kind))
    breaks(manifest)
    problems = field_problems(manifest, kind)
    for message in expected:
        assert any(message in p for p in problems), (message, problems)


def test_a_misspelled_serve_key_is_reported() -> None:
    config = serve_config()
    deployment = config["applications"][0]["deployments"][0]
    _rename(deployment, "max_ongoing_requests", "max_ongoing_request")
    _rename(deployment["ray_actor_options"], "num_cpus", "num_cpu")
    problems = serve_problems(config)
    assert any(p.endswith("deployments[0].max_ongoing_request") for p in problems), problems
    assert any(p.endswith("ray_actor_options.num_cpu") for p in problems), problems


def test_a_misspelled_application_arg_is_refused() -> None:
    args = dict(serve_config()["applications"][0]["args"])
    args["max_batch_sizee"] = args.pop("max_batch_size")
    with pytest.raises(ConfigError, match="max_batch_sizee"):
        parse_settings(args, "RayService serveConfigV2 args")


def test_a_missing_ray_variable_is_reported() -> None:
    service = copy.deepcopy(load("RayService"))
    groups = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    container = groups[0]["template"]["spec"]["containers"][0]
    container["env"] = [e for e in container["env"] if e["name"] != "RAY_USAGE_STATS_ENABLED"]
    problems = env_problems(service, "RayService")
    assert any("containers[0].env RAY_USAGE_STATS_ENABLED=None" in p for p in problems), problems
