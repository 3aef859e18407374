"""cluster.yaml, runtime_env.yaml and deploy/kuberay-rayjob.yaml: checked the way Ray and KubeRay read
them, and against this repository (every file, module and option they name exists; GPU counts add up)."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster.yaml"
RUNTIME_ENV = REPO / "runtime_env.yaml"
RAYJOB = REPO / "deploy" / "kuberay-rayjob.yaml"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))

# GPUs per instance, from AWS's accelerated-computing instance tables (aws.amazon.com/ec2/instance-types):
# a type not listed here must be added with its published count before the config may use it.
AWS_GPUS = {
    "g6e.xlarge": 1,
    "g6e.2xlarge": 1,
    "g6e.12xlarge": 4,
    "g6e.48xlarge": 8,
    "g5.2xlarge": 1,
    "p4d.24xlarge": 8,
    "p4de.24xlarge": 8,
    "p5.48xlarge": 8,
    "p5e.48xlarge": 8,
    "p5en.48xlarge": 8,
}

# Field names of the CRD (ray-project/kuberay ray-operator/apis/ray/v1/rayjob_types.go, raycluster_types.go)
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds",
    "backoffLimit",
    "rayClusterSpec",
    "submitterPodTemplate",
    "metadata",
    "clusterSelector",
    "submitterConfig",
    "managedBy",
    "deletionStrategy",
    "entrypoint",
    "runtimeEnvYAML",
    "jobId",
    "submissionMode",
    "entrypointResources",
    "entrypointNumCpus",
    "entrypointNumGpus",
    "ttlSecondsAfterFinished",
    "shutdownAfterJobFinishes",
    "suspend",
    "schedule",
}
RAYCLUSTER_SPEC_FIELDS = {
    "headGroupSpec",
    "workerGroupSpecs",
    "rayVersion",
    "enableInTreeAutoscaling",
    "autoscalerOptions",
    "headServiceAnnotations",
    "suspend",
}
HEAD_GROUP_FIELDS = {"serviceType", "headService", "enableIngress", "rayStartParams", "template"}
WORKER_GROUP_FIELDS = {
    "groupName",
    "replicas",
    "minReplicas",
    "maxReplicas",
    "numOfHosts",
    "rayStartParams",
    "template",
    "scaleStrategy",
}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode"}

PLACEHOLDER = re.compile(
    r"YOUR[-_ A-Z]|<[A-Za-z _-]+>|CHANGE ?ME|TODO|FIXME|XXX|example\.(com|org)"
)


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _runtime_env() -> dict:
    return _load(RUNTIME_ENV)


def _rayjob() -> dict:
    return _load(RAYJOB)


def _pod_containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def _gpus(container: dict) -> int:
    return int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


def _option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def _entrypoint_argv() -> list[str]:
    return shlex.split(_rayjob()["spec"]["entrypoint"])


def _repo_paths_named(text: str) -> set[str]:
    """Repository files a config names: FILE.yaml/.py/.toml tokens and `python -m MODULE`."""
    names = {
        m.group(1)
        for m in re.finditer(r"(?<![\w~/.$])((?:[\w-]+/)*[\w.-]+\.(?:ya?ml|py|toml))\b", text)
    }
    names |= {
        m.group(1).replace(".", "/") + ".py" for m in re.finditer(r"python -m ([\w.]+)", text)
    }
    return names


@pytest.mark.parametrize("path", [CLUSTER, RUNTIME_ENV, RAYJOB], ids=lambda p: p.name)
def test_no_placeholders_and_every_named_file_exists(path):
    text = path.read_text(encoding="utf-8")
    assert not PLACEHOLDER.search(text), PLACEHOLDER.search(text).group(0)
    named = _repo_paths_named(text)
    assert named, "the file names no repository file: the check below would be vacuous"
    missing = sorted(n for n in named if not (REPO / n).exists())
    assert not missing, f"{path.name} names files that are not in the repo: {missing}"


def test_named_path_scan_finds_a_missing_file():
    assert _repo_paths_named("python -m jobs.nope --config configs/none.yaml") == {
        "jobs/nope.py",
        "configs/none.yaml",
    }
    assert _repo_paths_named("--autoscaling-config=~/ray_bootstrap_config.yaml") == set()


# --- cluster.yaml -------------------------------------------------------------------------------


def test_cluster_yaml_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(_load(CLUSTER)))  # what `ray up` runs before it calls the cloud


def test_cluster_node_types_and_gpu_counts():
    config = _load(CLUSTER)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "engines must not land on the head"
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    assert workers and all(t["resources"].get("GPU", 0) >= 1 for t in workers.values())
    for name, node_type in types.items():
        instance = node_type["node_config"]["InstanceType"]
        if name != config["head_node_type"]:
            assert instance in AWS_GPUS, f"{instance}: add its published GPU count to AWS_GPUS"
            assert node_type["resources"]["GPU"] == AWS_GPUS[instance], (
                f"{name}: resources.GPU differs from {instance}'s GPUs"
            )
        image = node_type["node_config"]["ImageId"]
        assert image.startswith(("ami-", "resolve:ssm:/aws/service/deeplearning/")), image
    assert sum(t.get("min_workers", 0) for t in workers.values()) <= config["max_workers"]
    assert not any("git+" in c for c in config.get("setup_commands", [])), (
        "code comes with the job, not from a git URL"
    )


def _image_ray_and_python(image: str) -> tuple[str, str]:
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-gpu", image)
    assert match, (
        f"{image}: expected a rayproject/ray GPU image pinned to a release and a Python version"
    )
    return match.group(1), f"{match.group(2)}.{match.group(3)}"


def test_images_match_the_packages_ray_and_python():
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    image = _load(CLUSTER)["docker"]["image"]
    ray_version, python = _image_ray_and_python(image)
    ray_req = next(
        Requirement(d) for d in PYPROJECT["project"]["dependencies"] if Requirement(d).name == "ray"
    )
    assert ray_version in ray_req.specifier, (
        f"{image} has Ray {ray_version}, the package needs {ray_req.specifier}"
    )
    assert python in SpecifierSet(PYPROJECT["project"]["requires-python"])
    spec = _rayjob()["spec"]["rayClusterSpec"]
    assert spec["rayVersion"] == ray_version
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    assert {c["image"] for g in groups for c in _pod_containers(g)} == {image}, (
        "one image everywhere, as in cluster.yaml"
    )


# --- runtime_env.yaml ---------------------------------------------------------------------------


def test_runtime_env_keys_are_rays_and_it_constructs():
    from ray.runtime_env import RuntimeEnv

    env = _runtime_env()
    assert set(env) <= RuntimeEnv.known_fields, (
        set(env) - RuntimeEnv.known_fields
    )  # Ray would ignore an unknown key
    built = RuntimeEnv(**env)  # Ray's own validation of each field (pip, excludes, config)
    assert built["working_dir"] == "."
    assert built["config"]["setup_timeout_seconds"] >= 600


def test_runtime_env_installs_this_package_with_the_gpu_extra():
    from packaging.requirements import Requirement

    packages = _runtime_env()["pip"]["packages"]
    assert len(packages) == 1
    # what pip sees after expanding the variable Ray sets to the unpacked working_dir
    req = Requirement(packages[0].replace("${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}", str(REPO)))
    assert req.name == PYPROJECT["project"]["name"]
    assert "gpu" in req.extras and req.extras <= set(PYPROJECT["project"]["optional-dependencies"])
    assert req.url == f"file://{REPO}" and (REPO / "pyproject.toml").is_file()


def _uploaded(root: Path, excludes: list[str]) -> set[str]:
    """The files `ray job submit` would upload from root: Ray's own traversal (.gitignore + excludes)."""
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    files: set[str] = set()
    _dir_travel(
        root,
        [_get_excludes(root, excludes)],
        lambda p: p.is_file() and files.add(str(p.relative_to(root))),
        include_gitignore=True,
    )
    return files


def test_runtime_env_excludes_keep_data_and_environments_off_the_cluster(tmp_path):
    excludes = _runtime_env()["excludes"]
    for name in [
        "care_ray/x.py",
        "jobs/score.py",
        ".venv/lib/big.so",
        ".git/HEAD",
        "out/scores/items/a.parquet",
        "demo-out/tiny-model/model.safetensors",
        "data/sessions/source=x/part-0.parquet",
        "pyproject.toml",
    ]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert _uploaded(tmp_path, excludes) == {"care_ray/x.py", "jobs/score.py", "pyproject.toml"}


def test_the_real_checkout_uploads_code_not_data():
    uploaded = _uploaded(REPO, _runtime_env()["excludes"])
    for needed in [
        "pyproject.toml",
        "jobs/score.py",
        "care_ray/cli/__init__.py",
        "schemas/session.schema.json",
        "runtime_env.yaml",
    ]:
        assert needed in uploaded
    assert not any(
        f.endswith((".parquet", ".safetensors")) or f.startswith((".venv/", ".git/"))
        for f in uploaded
    )


# --- deploy/kuberay-rayjob.yaml -----------------------------------------------------------------


def test_rayjob_uses_only_crd_fields():
    job = _rayjob()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    assert set(spec) <= RAYJOB_SPEC_FIELDS, set(spec) - RAYJOB_SPEC_FIELDS
    assert spec["submissionMode"] in SUBMISSION_MODES
    cluster = spec["rayClusterSpec"]
    assert set(cluster) <= RAYCLUSTER_SPEC_FIELDS, set(cluster) - RAYCLUSTER_SPEC_FIELDS
    head = cluster["headGroupSpec"]
    assert set(head) <= HEAD_GROUP_FIELDS and {"rayStartParams", "template"} <= set(head)
    for group in cluster["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP_FIELDS and {
            "groupName",
            "rayStartParams",
            "template",
        } <= set(group)
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]


def test_rayjob_runtime_env_is_runtime_env_yaml():
    assert yaml.safe_load(_rayjob()["spec"]["runtimeEnvYAML"]) == _runtime_env()


def test_rayjob_entrypoint_is_a_valid_score_command_with_absolute_paths(monkeypatch):
    import typer.main

    from care_ray.cli import app
    from care_ray.cluster.jobs import refuse_relative_in_job

    argv = _entrypoint_argv()
    assert argv[:3] == ["python", "-m", "jobs.score"] and (REPO / "jobs" / "score.py").is_file()
    score = typer.main.get_command(app).commands["score"]
    score.make_context("score", argv[3:])  # unknown options or bad values raise here
    paths = {
        opt: _option(argv, opt)
        for opt in ("--sessions", "--model", "--out", "--adapter", "--rubric")
    }
    assert paths["--sessions"] and paths["--model"] and paths["--out"]
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # as inside a submitted job
    refuse_relative_in_job(paths)


def test_rayjob_gpus_fit_the_engines():
    argv = _entrypoint_argv()
    gpus_per_engine = float(_option(argv, "--gpus-per-engine") or 0)
    num_engines = int(_option(argv, "--num-engines") or 1)
    cluster = _rayjob()["spec"]["rayClusterSpec"]
    assert all(_gpus(c) == 0 for c in _pod_containers(cluster["headGroupSpec"])), (
        "engines must not land on the head"
    )
    groups = cluster["workerGroupSpecs"]
    per_worker = [sum(_gpus(c) for c in _pod_containers(g)) for g in groups]
    assert gpus_per_engine >= 1 and any(n >= gpus_per_engine for n in per_worker), (
        "no worker can host one engine"
    )
    capacity = sum(
        int(n // gpus_per_engine) * g["maxReplicas"]
        for n, g in zip(per_worker, groups, strict=True)
    )
    assert num_engines <= capacity, (
        f"{num_engines} engines need more GPUs than maxReplicas allow ({capacity} engines)"
    )
    for group in groups:
        for c in _pod_containers(group):
            limits, requests = c["resources"]["limits"], c["resources"].get("requests", {})
            assert str(requests.get("nvidia.com/gpu", limits.get("nvidia.com/gpu"))) == str(
                limits.get("nvidia.com/gpu")
            )


def test_rayjob_model_path_is_mounted_on_every_pod():
    model = _option(_entrypoint_argv(), "--model")
    cluster = _rayjob()["spec"]["rayClusterSpec"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            mounts = c.get("volumeMounts", [])
            assert {m["name"] for m in mounts} <= volumes, "a volumeMount names no volume"
            assert any(
                model == m["mountPath"] or model.startswith(m["mountPath"].rstrip("/") + "/")
                for m in mounts
            ), f"--model {model} is not under a mounted volume in {c['name']}"


def test_rayjob_documented_submit_command_matches_the_manifest():
    text = RAYJOB.read_text(encoding="utf-8")
    line = next(ln for ln in text.splitlines() if "kubectl ray job submit" in ln)
    command = shlex.split(line.lstrip("# "))
    assert command[command.index("-f") + 1] == str(RAYJOB.relative_to(REPO))
    assert (REPO / command[command.index("--runtime-env") + 1]).resolve() == RUNTIME_ENV
    assert command[command.index("--") + 1 :] == _entrypoint_argv(), (
        "the comment's command and spec.entrypoint differ"
    )


def test_a_local_ray_quiets_the_state_api_poller_it_cannot_serve(monkeypatch):
    """A local Ray runs without the dashboard, so Ray Train's placement-group cleaner would warn
    on the console every second of a fine-tune; the workers' setup hook silences that logger."""
    import importlib
    import inspect
    import logging

    import ray

    from care_ray.cluster import ray as care_ray_ray

    seen: dict = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.update(kwargs))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    care_ray_ray.start_ray()
    assert seen["include_dashboard"] is False
    module, name = seen["runtime_env"]["worker_process_setup_hook"].rsplit(".", 1)
    getattr(importlib.import_module(module), name)()
    for poller in care_ray_ray.STATE_API_POLLERS:
        assert logging.getLogger(poller).getEffectiveLevel() == logging.ERROR
        # the installed Ray still warns from there (a renamed module would let it through again)
        assert "Failed to query Ray Train Controller" in inspect.getsource(
            importlib.import_module(poller)
        )
