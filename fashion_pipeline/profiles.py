"""Deployment profiles: one environment variable, FASHION_PROFILE, picks every backend.

- ``local`` (default): CPU only, offline encoders (EfficientNet-Lite0 + MiniLM shipped in
  registry packages), the learned attribute extractor, the embedded sample in data/ (or
  FASHION_DATA_ROOT), the DuckDB warehouse file under the var folder.
- ``gpu``: vLLM extraction, open_clip encoders on CUDA, the price MLP and the neural classifiers on
  CUDA, the full data root that FASHION_DATA_ROOT must name (a run fails with the variable's name
  if it is unset). The
  open_clip architecture comes from FASHION_OPEN_CLIP_MODEL (default ViT-B-32) and its weights
  from FASHION_OPEN_CLIP_PRETRAINED (required: a weights file, ``local-dir:<folder>``,
  ``hf-hub:<org/repo>`` from a seeded Hugging Face cache, or a pretrained tag, which downloads).
  The assets that run on CUDA declare the ``gpu`` pool and a k8s GPU request
  (fashion_pipeline.gpu).

A profile is plain settings; fashion_pipeline.resources.build_resources turns it into
resources. A stage's resource reads the field it needs (e.g. ``extractor_backend``) instead of
checking the profile's name, so a third profile is one more entry in PROFILES.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

PROFILE_ENV = "FASHION_PROFILE"
DATA_ROOT_ENV = "FASHION_DATA_ROOT"
# open_clip under the gpu profile (fashion_pipeline.resources.build_resources): the architecture
# and its weights. No default for the weights: a run fails naming the variable instead of
# downloading at run time.
OPEN_CLIP_MODEL_ENV = "FASHION_OPEN_CLIP_MODEL"
OPEN_CLIP_PRETRAINED_ENV = "FASHION_OPEN_CLIP_PRETRAINED"
DEFAULT_OPEN_CLIP_MODEL = "ViT-B-32"


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    # "cpu" or "cuda" ("auto" picks cuda when torch sees a GPU).
    device: str
    # "rules" (offline, deterministic) | "transformers" (tiny local LM) | "vllm".
    extractor_backend: str
    # "offline" (EfficientNet-Lite0 image + MiniLM text) | "open_clip".
    encoder_backend: str
    # False: FASHION_DATA_ROOT if set, else the embedded sample "data". True: FASHION_DATA_ROOT
    # must be set; it is bound with dg.EnvVar, so the UI shows where the value comes from and a
    # run fails naming the variable instead of silently reading the sample.
    data_root_env_required: bool
    # Resource name -> config overrides applied on top of each resource's defaults. The seam for
    # stages merged later: their resource reads these keys (e.g. {"extractor": {"model": ...}}).
    resource_config: dict[str, dict] = field(default_factory=dict)


PROFILES: dict[str, Profile] = {
    "local": Profile(
        name="local",
        description="CPU laptop/CI: offline encoders, learned extraction, embedded sample, DuckDB file.",
        device="cpu",
        extractor_backend="learned",
        encoder_backend="offline",
        data_root_env_required=False,
    ),
    "gpu": Profile(
        name="gpu",
        description="GPU host or cluster: vLLM extraction, open_clip on CUDA, full data via FASHION_DATA_ROOT.",
        device="cuda",
        extractor_backend="vllm",
        encoder_backend="open_clip",
        data_root_env_required=True,
    ),
}


def current_profile_name() -> str:
    name = os.environ.get(PROFILE_ENV, "local").strip() or "local"
    if name not in PROFILES:
        raise ValueError(f"{PROFILE_ENV}={name!r}: expected one of {sorted(PROFILES)}")
    return name


def get_profile(name: str | None = None) -> Profile:
    name = name or current_profile_name()
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}: expected one of {sorted(PROFILES)}")
    return PROFILES[name]
