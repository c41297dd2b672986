"""How an asset declares that it needs a GPU.

    from fashion_pipeline.gpu import gpu_asset_kwargs

    @dg.asset(group_name="enrichment", **gpu_asset_kwargs(n_gpus=1, memory="32Gi"))
    def product_embeddings(...): ...

That one splat gives the asset:
- ``pool="gpu"``: a Dagster concurrency pool. The instance limits how many steps of the pool
  run at once across all runs (set the limit to the number of GPUs: `dagster instance
  concurrency set gpu <n>`, or `concurrency.pools.default_limit` in the shipped dagster.yaml);
  further GPU steps queue instead of fighting over the card. One slot per step, whatever its
  n_gpus: with multi-GPU steps, count slots in steps, not cards.
- op tag ``gpu: "true"`` and asset tag ``gpu: "true"`` (select them with ``tag:gpu=true`` in the
  UI or ``AssetSelection.tag("gpu", "true")``).
- op tag ``dagster-k8s/config``: with the k8s_job_executor each step is its own pod, and this
  asks Kubernetes for ``nvidia.com/gpu`` and tolerates the usual GPU-node taint.

Pass extra tags yourself with ``gpu_asset_kwargs(..., op_tags={...}, tags={...})``, not a second
``op_tags=`` keyword (Python refuses a repeated keyword).
"""

from __future__ import annotations

from typing import Any

GPU_POOL = "gpu"
GPU_TAG_KEY = "gpu"
GPU_TAG_VALUE = "true"
K8S_CONFIG_TAG = "dagster-k8s/config"
NVIDIA_GPU_RESOURCE = "nvidia.com/gpu"
# The taint GPU node pools usually carry (GKE, EKS and AKS GPU pools; NVIDIA GPU operator).
DEFAULT_GPU_TOLERATIONS = ({"key": NVIDIA_GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},)


def k8s_gpu_config(n_gpus: int = 1, cpu: str | None = "4", memory: str | None = "32Gi",
                   node_selector: dict[str, str] | None = None,
                   tolerations: list[dict] | tuple[dict, ...] | None = DEFAULT_GPU_TOLERATIONS) -> dict:
    """The ``dagster-k8s/config`` value for a step that needs ``n_gpus`` GPUs.

    GPUs are requested as limits (Kubernetes uses the limit as the request for extended
    resources, and requires them to be equal when both are given).
    """
    if n_gpus < 1:
        raise ValueError(f"n_gpus must be >= 1, got {n_gpus}")
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {NVIDIA_GPU_RESOURCE: str(n_gpus)}
    if cpu:
        requests["cpu"] = cpu
    if memory:
        requests["memory"] = memory
        limits["memory"] = memory
    config: dict[str, Any] = {"container_config": {"resources": {"requests": requests, "limits": limits}}}
    pod_spec: dict[str, Any] = {}
    if node_selector:
        pod_spec["node_selector"] = dict(node_selector)
    if tolerations:
        pod_spec["tolerations"] = [dict(t) for t in tolerations]
    if pod_spec:
        config["pod_spec_config"] = pod_spec
    return config


def gpu_op_tags(n_gpus: int = 1, **k8s: Any) -> dict[str, Any]:
    return {GPU_TAG_KEY: GPU_TAG_VALUE, K8S_CONFIG_TAG: k8s_gpu_config(n_gpus, **k8s)}


def gpu_asset_kwargs(n_gpus: int = 1, *, op_tags: dict | None = None, tags: dict[str, str] | None = None,
                     **k8s: Any) -> dict[str, Any]:
    """Keyword arguments for ``@dg.asset`` / ``@dg.multi_asset`` of a GPU stage (see module doc)."""
    return {
        "pool": GPU_POOL,
        "op_tags": {**(op_tags or {}), **gpu_op_tags(n_gpus, **k8s)},
        "tags": {**(tags or {}), GPU_TAG_KEY: GPU_TAG_VALUE},
    }


def is_gpu_step(op_tags: dict | None, pool: str | None) -> bool:
    """Whether a step declared GPU needs by either mechanism (pool or op tag)."""
    return pool == GPU_POOL or (op_tags or {}).get(GPU_TAG_KEY) == GPU_TAG_VALUE
