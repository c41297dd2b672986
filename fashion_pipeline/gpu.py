"""Which assets run on CUDA under a profile, and what they declare for it.

Under a profile whose backend for a stage runs on CUDA, that stage's asset carries (via
``**gpu_declarations("<asset name>")`` in its decorator, evaluated when the code location loads
with FASHION_PROFILE):

- ``pool="gpu"``: a Dagster concurrency pool. The instance limits how many steps of the pool run at
  once across all runs (set the limit to the number of GPUs: `dagster instance concurrency set gpu
  <n>`, or `concurrency.pools.default_limit` in the shipped dagster.yaml).
- op tag ``dagster-k8s/config``: with the k8s_job_executor each step is its own pod, and this asks
  Kubernetes for ``nvidia.com/gpu`` and tolerates the usual GPU-node taint.
- asset tag ``gpu: "true"`` (select them with ``tag:gpu=true`` in the UI).

Under a profile where nothing runs on CUDA (local) the same call returns ``{}``: no pool, no tags.

What runs on CUDA (``cuda_assets``) follows the profile's backend fields:
- ``product_attributes`` when the extractor backend is vLLM;
- ``product_embeddings`` when the encoder device is CUDA (open_clip or offline encoders);
- ``regressor_metrics`` when the price MLP trains on CUDA (its ``mlp_device`` defaults to the
  profile's device);
- ``classifier_leaderboard`` (one step that also writes ``attribute_classifiers``: both assets carry
  the tag) when the neural classifiers train on CUDA (``neural_device``, the profile's by default).
DEC clustering trains on the CPU in every profile (its code has no device option), so
``product_clusters`` declares nothing.
"""

from __future__ import annotations

from typing import Any

from fashion_pipeline.profiles import Profile, get_profile

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


def _on_cuda(device: str) -> bool:
    return device.startswith("cuda")


def cuda_assets(profile: Profile | None = None) -> frozenset[str]:
    """Names of the assets whose backend runs on CUDA under ``profile`` (default: FASHION_PROFILE)."""
    p = profile or get_profile()
    out = set()
    if p.extractor_backend == "vllm":
        out.add("product_attributes")
    if _on_cuda(p.device):
        out.add("product_embeddings")  # EncoderResource(device=p.device)
        out.add("regressor_metrics")   # RegressorConfig.mlp_device defaults to p.device
        out.add("classifier_leaderboard")  # ClassifierConfig.neural_device defaults to p.device
    return frozenset(out)


def gpu_declarations(asset_name: str, profile: Profile | None = None) -> dict[str, Any]:
    """Keyword arguments for the decorator of ``asset_name``: pool, k8s GPU request and tag when its
    backend runs on CUDA under ``profile``, else ``{}``."""
    p = profile or get_profile()
    if asset_name not in cuda_assets(p):
        return {}
    return {
        "pool": GPU_POOL,
        "op_tags": {K8S_CONFIG_TAG: k8s_gpu_config(1)},
        "tags": {GPU_TAG_KEY: GPU_TAG_VALUE},
    }
