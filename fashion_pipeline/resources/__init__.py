"""Resources by deployment profile. Each external capability is one resource; the profile
(environment variable FASHION_PROFILE, see fashion_pipeline.profiles) picks the backends."""


import os

import dagster as dg

from fashion_pipeline.profiles import (DATA_ROOT_ENV, DEFAULT_OPEN_CLIP_MODEL, OPEN_CLIP_MODEL_ENV,
                                       OPEN_CLIP_PRETRAINED_ENV, PROFILE_ENV, PROFILES, get_profile)
from fashion_pipeline.resources.data import RawDataResource
from fashion_pipeline.resources.encoders import EncoderResource
from fashion_pipeline.resources.extraction import ExtractorResource
from fashion_pipeline.resources.lineage import LineageWarehouseIOManager
from fashion_pipeline.resources.model_store import ModelStoreResource
from fashion_pipeline.resources.warehouse import WarehouseResource

__all__ = ["PROFILE_ENV", "PROFILES", "build_resources", "current_profile"]


def current_profile() -> str:
    return get_profile().name


def _data_root(profile) -> str | dg.EnvVar:
    if profile.data_root_env_required:
        return dg.EnvVar(DATA_ROOT_ENV)
    return os.environ.get(DATA_ROOT_ENV, "data")


def _open_clip(profile) -> dict:
    """open_clip architecture + weights from the environment (FASHION_OPEN_CLIP_MODEL, _PRETRAINED).

    The weights are bound with dg.EnvVar: the UI shows where the value comes from, and a run fails
    naming the variable when it is unset. Offline profiles take neither.
    """
    if profile.encoder_backend != "open_clip":
        return {}
    return {"open_clip_model": os.environ.get(OPEN_CLIP_MODEL_ENV, DEFAULT_OPEN_CLIP_MODEL),
            "open_clip_pretrained": dg.EnvVar(OPEN_CLIP_PRETRAINED_ENV)}


def build_resources(profile: str | None = None) -> dict:
    """The resources of ``profile`` (default: FASHION_PROFILE, else 'local').

    One line per resource. A stage resource takes its backend from the profile, e.g.
    ``"extractor": ExtractorResource(backend=p.extractor_backend, **cfg("extractor"))``.
    """
    p = get_profile(profile)

    def cfg(name: str) -> dict:
        return dict(p.resource_config.get(name, {}))

    resources: dict = {
        "io_manager": LineageWarehouseIOManager(**cfg("io_manager")),
        "warehouse": WarehouseResource(**cfg("warehouse")),
        "raw_data": RawDataResource(root=_data_root(p), **cfg("raw_data")),
        "model_store": ModelStoreResource(**cfg("model_store")),
        "extractor": ExtractorResource(backend=p.extractor_backend, **cfg("extractor")),
        "encoder": EncoderResource(backend=p.encoder_backend, device=p.device, **_open_clip(p), **cfg("encoder")),
    }
    return resources
