"""Deployment profiles: the code location loads, validates and initializes every resource under
each profile; the gpu profile insists on its data root."""

import os
import subprocess
import sys

import dagster as dg
import pytest

from fashion_pipeline.definitions import all_assets
from fashion_pipeline.jobs import ALL_JOBS
from fashion_pipeline.paths import PROJECT_ROOT
from fashion_pipeline.profiles import PROFILES, get_profile
from fashion_pipeline.resources import build_resources, current_profile
from fashion_pipeline.sensors import new_raw_files


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_each_profile_gives_a_valid_location_whose_resources_initialize(name, tmp_path, monkeypatch):
    monkeypatch.setenv("FASHION_DATA_ROOT", str(tmp_path / "datasets"))
    monkeypatch.setenv("FASHION_OPEN_CLIP_PRETRAINED", "local-dir:" + str(tmp_path / "clip"))
    profile = get_profile(name)
    resources = build_resources(name)
    dg.Definitions.validate_loadable(dg.Definitions(assets=all_assets, jobs=ALL_JOBS, sensors=[new_raw_files],
                                                    resources=resources))
    with dg.build_resources(resources) as r:  # runs each resource's setup, resolving env vars
        assert r.raw_data.root == str(tmp_path / "datasets")
        assert r.encoder.device == profile.device and r.encoder.backend == profile.encoder_backend
        assert r.extractor.backend == profile.extractor_backend
        if profile.encoder_backend == "open_clip":
            assert (r.encoder.open_clip_model, r.encoder.open_clip_pretrained) == (
                "ViT-B-32", "local-dir:" + str(tmp_path / "clip"))
        assert r.warehouse.file() == tmp_path / "var" / "warehouse.duckdb"  # FASHION_VAR_DIR (conftest)


def test_local_profile_defaults_to_the_embedded_sample(monkeypatch):
    monkeypatch.delenv("FASHION_DATA_ROOT", raising=False)
    monkeypatch.delenv("FASHION_PROFILE", raising=False)
    assert current_profile() == "local"
    with dg.build_resources(build_resources()) as r:
        assert r.raw_data.root_path() == PROJECT_ROOT / "data"


def test_gpu_profile_fails_naming_the_missing_data_root_variable(monkeypatch):
    monkeypatch.delenv("FASHION_DATA_ROOT", raising=False)
    resources = build_resources("gpu")  # loading the location still works: the UI can show it
    with pytest.raises(Exception, match="FASHION_DATA_ROOT"):
        with dg.build_resources(resources):
            pass


def test_gpu_profile_takes_open_clip_model_and_weights_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FASHION_DATA_ROOT", str(tmp_path))
    monkeypatch.delenv("FASHION_OPEN_CLIP_PRETRAINED", raising=False)
    with pytest.raises(Exception, match="FASHION_OPEN_CLIP_PRETRAINED"):
        with dg.build_resources(build_resources("gpu")):
            pass
    monkeypatch.setenv("FASHION_OPEN_CLIP_MODEL", "ViT-S-32-alt")
    monkeypatch.setenv("FASHION_OPEN_CLIP_PRETRAINED", "hf-hub:Marqo/marqo-fashionSigLIP")
    with dg.build_resources(build_resources("gpu")) as r:
        assert (r.encoder.open_clip_model, r.encoder.open_clip_pretrained) == (
            "ViT-S-32-alt", "hf-hub:Marqo/marqo-fashionSigLIP")
    with dg.build_resources(build_resources("local")) as r:  # offline encoders: no open_clip settings needed
        assert r.encoder.backend == "offline"


def test_an_unknown_profile_is_refused(monkeypatch):
    monkeypatch.setenv("FASHION_PROFILE", "cloud")
    with pytest.raises(ValueError, match="FASHION_PROFILE='cloud'"):
        build_resources()


def test_the_cli_loads_the_code_location_under_the_gpu_profile(tmp_path):
    """`dagster definitions validate` in a fresh process, as a deployment would load it."""
    env = {**os.environ, "FASHION_PROFILE": "gpu", "FASHION_EXECUTOR": "k8s",
           "FASHION_DATA_ROOT": str(tmp_path), "DAGSTER_HOME": str(tmp_path), "PYTHONPATH": str(PROJECT_ROOT)}
    dagster = os.path.join(os.path.dirname(sys.executable), "dagster")
    proc = subprocess.run([dagster, "definitions", "validate", "-m", "fashion_pipeline.definitions"],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Validation successful" in proc.stdout + proc.stderr
