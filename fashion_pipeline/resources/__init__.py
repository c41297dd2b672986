"""Resources by deployment profile. Each external capability is one resource; the profile
(environment variable FASHION_PROFILE, see fashion_pipeline.profiles) picks the backends."""


import os

from fashion_pipeline.resources.data import RawDataResource
from fashion_pipeline.resources.encoders import EncoderResource
from fashion_pipeline.resources.model_store import ModelStoreResource
from fashion_pipeline.resources.warehouse import WarehouseIOManager, WarehouseResource

PROFILE_ENV = "FASHION_PROFILE"
PROFILES = ("local", "gpu")


def current_profile() -> str:
    profile = os.environ.get(PROFILE_ENV, "local")
    if profile not in PROFILES:
        raise ValueError(f"{PROFILE_ENV}={profile!r}: expected one of {PROFILES}")
    return profile


def build_resources(profile: str | None = None) -> dict:
    profile = profile or current_profile()
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: expected one of {PROFILES}")
    data_root = os.environ.get("FASHION_DATA_ROOT", "data")
    resources: dict = {
        "io_manager": WarehouseIOManager(),
        "warehouse": WarehouseResource(),
        "raw_data": RawDataResource(root=data_root),
        "model_store": ModelStoreResource(),
        "encoder": EncoderResource(),
    }
    return resources
