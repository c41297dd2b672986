"""The Kubernetes scale-out path, checked with dagster-k8s's own code (no cluster needed):
the k8s_job_executor's config schema, the per-step `dagster-k8s/config` tags that
fashion_pipeline.gpu writes under the gpu profile, and the step pod manifest dagster-k8s builds
from them. Which real assets carry them per profile: test_definitions_snapshot.py."""

import json
from pathlib import Path

import dagster as dg
import pytest
import yaml

dagster_k8s = pytest.importorskip("dagster_k8s", reason="dagster-k8s is in the dev extra")
from dagster._core.execution.api import create_execution_plan  # noqa: E402
from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job, get_user_defined_k8s_config  # noqa: E402

from fashion_pipeline.definitions import build_executor  # noqa: E402
from fashion_pipeline.gpu import GPU_POOL, NVIDIA_GPU_RESOURCE, gpu_declarations, k8s_gpu_config  # noqa: E402
from fashion_pipeline.paths import PROJECT_ROOT  # noqa: E402
from fashion_pipeline.profiles import get_profile  # noqa: E402


@dg.asset(pool=GPU_POOL, tags={"gpu": "true"}, op_tags={"dagster-k8s/config": k8s_gpu_config(
    n_gpus=2, cpu="8", memory="48Gi", node_selector={"gpu-type": "h100"})})
def gpu_stage() -> int:
    return 1


@dg.asset
def cpu_stage(gpu_stage: int) -> int:
    return gpu_stage + 1


def _job():
    defs = dg.Definitions(assets=[gpu_stage, cpu_stage], executor=build_executor("k8s"),
                          jobs=[dg.define_asset_job("both", selection="*")])
    return defs.resolve_job_def("both")


def _step_tags(job) -> dict[str, dict]:
    plan = create_execution_plan(job, run_config={})
    return {step.key: dict(step.tags) for step in plan.get_all_steps_in_topo_order()}


def test_fashion_executor_k8s_selects_the_k8s_job_executor():
    assert build_executor("k8s") is dagster_k8s.k8s_job_executor
    with pytest.raises(ValueError, match="FASHION_EXECUTOR"):
        build_executor("celery")


def test_runs_execute_in_process_unless_fashion_executor_says_otherwise(monkeypatch):
    # One host: no Python process start per step (README, OPERATIONS.md); multiprocess is opt-in.
    monkeypatch.delenv("FASHION_EXECUTOR", raising=False)
    assert build_executor() is dg.in_process_executor
    monkeypatch.setenv("FASHION_EXECUTOR", "multiprocess")
    assert build_executor() is dg.multi_or_in_process_executor


def test_k8s_executor_config_is_validated_by_its_schema():
    job = _job()
    good = {"execution": {"config": {
        "job_namespace": "fashion", "max_concurrent": 4,
        "step_k8s_config": {"container_config": {"resources": {"requests": {"cpu": "1"}}}},
        "per_step_k8s_config": {"gpu_stage": {"pod_spec_config": {"priority_class_name": "gpu-high"}}},
    }}}
    assert dg.validate_run_config(job, good)
    with pytest.raises(dg.DagsterInvalidConfigError, match="max_concurrent"):
        dg.validate_run_config(job, {"execution": {"config": {"max_concurrent": "four"}}})
    with pytest.raises(dg.DagsterInvalidConfigError, match="no_such_key"):
        dg.validate_run_config(job, {"execution": {"config": {"no_such_key": 1}}})


def test_gpu_step_tags_parse_with_dagster_k8s_and_reach_the_pod_spec():
    job = _job()
    tags = _step_tags(job)
    # The executor hands each step's string tags to this very function.
    user_cfg = get_user_defined_k8s_config(tags["gpu_stage"])
    resources = user_cfg.container_config["resources"]
    assert resources["limits"][NVIDIA_GPU_RESOURCE] == "2"
    assert resources["requests"] == {"cpu": "8", "memory": "48Gi"}
    assert user_cfg.pod_spec_config["node_selector"] == {"gpu-type": "h100"}
    # CPU steps ask for nothing special.
    assert get_user_defined_k8s_config(tags["cpu_stage"]).container_config == {}

    manifest = construct_dagster_k8s_job(
        job_config=DagsterK8sJobConfig(job_image="fashion:test", dagster_home="/opt/dagster/dagster_home",
                                       instance_config_map="dagster-instance"),
        args=["dagster", "api", "execute_step"], job_name="dagster-step-abc", pod_name="dagster-step-abc",
        component="step_worker", user_defined_k8s_config=user_cfg,
    ).to_dict()
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"][NVIDIA_GPU_RESOURCE] == "2"
    assert {"key": NVIDIA_GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in [
        {k: v for k, v in t.items() if v is not None} for t in pod["tolerations"]]
    assert pod["node_selector"] == {"gpu-type": "h100"}


def test_gpu_declarations_follow_the_profile():
    gpu, local = get_profile("gpu"), get_profile("local")
    decl = gpu_declarations("product_embeddings", gpu)
    assert decl["pool"] == GPU_POOL and decl["tags"] == {"gpu": "true"}
    cfg = get_user_defined_k8s_config({"dagster-k8s/config": json.dumps(decl["op_tags"]["dagster-k8s/config"])})
    assert cfg.container_config["resources"]["limits"][NVIDIA_GPU_RESOURCE] == "1"
    assert gpu_declarations("product_embeddings", local) == {}
    assert gpu_declarations("clean_products", gpu) == {}
    assert dg.AssetSelection.tag("gpu", "true").resolve([gpu_stage, cpu_stage]) == {dg.AssetKey("gpu_stage")}
    with pytest.raises(ValueError):
        k8s_gpu_config(n_gpus=0)


def test_helm_values_file_matches_the_code():
    values = yaml.safe_load((PROJECT_ROOT / "fashion_pipeline/deploy/k8s/values.yaml").read_text())
    dep = values["dagster-user-deployments"]["deployments"][0]
    env = {e["name"]: e["value"] for e in dep["env"]}
    assert env["FASHION_PROFILE"] == "gpu" and env["FASHION_EXECUTOR"] == "k8s"
    assert dep["dagsterApiGrpcArgs"] == ["--module-name", "fashion_pipeline.definitions"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert isinstance(values["concurrency"]["pools"]["defaultLimit"], int)
    assert env["FASHION_OPEN_CLIP_PRETRAINED"]  # the gpu profile's encoder weights: no default
    # Every env var the deployment sets is one the code reads.
    code = "".join(p.read_text() for p in Path(PROJECT_ROOT / "fashion_pipeline").rglob("*.py"))
    assert [name for name in env if name not in code] == []
