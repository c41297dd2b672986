"""A reviewed snapshot of the code location, per deployment profile, written out as literals.

Each profile is loaded in a fresh process (fashion_pipeline_tests/defs_snapshot.py), as a
deployment loads it with FASHION_PROFILE set. Nothing here is computed with the selections the
code uses: when an asset, a group, a job's or schedule's assets, a pool, a tag or an automation
condition changes, this test fails until the literal below is reviewed and updated.

The GPU half checks the `dagster-k8s/config` tags with dagster-k8s's own parser, the function the
k8s_job_executor applies to each step's tags.
"""

import json
import os
import subprocess
import sys

import pytest

from fashion_pipeline.paths import PROJECT_ROOT

INGEST = ["clean_products", "hm_article_prices", "hm_articles_raw", "kaggle_products_raw", "merged_products"]
# Weekly retraining: everything after the clean table, through the gates to publishing and scoring.
RETRAIN = ["attribute_classifiers", "attribute_extractor", "classifier_leaderboard", "clustering_metrics", "price_comparables",
           "product_attributes", "product_clusters", "product_embeddings", "published_classifiers",
           "published_price_regressor", "regressor_metrics", "scored_listings"]
GATES = ["classifier_gate", "price_regressor_gate"]
GROUPS = {
    "kaggle_products_raw": "ingest", "hm_articles_raw": "ingest", "hm_article_prices": "ingest",
    "merged_products": "products", "clean_products": "products",
    "attribute_extractor": "attributes", "product_attributes": "attributes", "product_embeddings": "embeddings",
    "classifier_leaderboard": "models", "attribute_classifiers": "models", "published_classifiers": "models",
    "product_clusters": "models", "clustering_metrics": "models",
    "regressor_metrics": "pricing", "published_price_regressor": "pricing", "price_comparables": "pricing",
    "scored_listings": "pricing",
}
EAGER_GATED = "eager, blocking checks passed"
AUTOMATION = {"published_classifiers": EAGER_GATED, "published_price_regressor": EAGER_GATED,
              "price_comparables": EAGER_GATED, "scored_listings": EAGER_GATED}
K8S_TAG = "dagster-k8s/config"
# The assets whose backend runs on CUDA under the gpu profile: vLLM extraction, the encoders on
# cuda, the price MLP on cuda, the neural classifiers on cuda (one step writes both classifier
# assets). DEC trains on the CPU in every profile.
GPU_ASSETS = {"product_attributes", "product_embeddings", "regressor_metrics", "classifier_leaderboard",
              "attribute_classifiers"}

# On demand: the model assets in mode 'select' and what is downstream of them. The schedule and the
# sensor run the default mode, 'retrain' (only the published choices are retrained).
# The attribute extractor is one of them (it searches C per attribute), so selection re-extracts,
# re-embeds and retrains everything after it.
SELECTION = ["attribute_classifiers", "attribute_extractor", "classifier_leaderboard", "clustering_metrics",
             "price_comparables", "product_attributes", "product_clusters", "product_embeddings",
             "published_classifiers", "published_price_regressor", "regressor_metrics", "scored_listings"]
SELECT_MODE = {"ops": {"attribute_extractor": {"config": {"mode": "select"}},
                       "classifier_leaderboard": {"config": {"mode": "select", "neural_models": [
                           "image_cnn", "multimodal_cnn", "clip_fusion"], "classical_models": [
                           "linear_svc", "logreg", "complement_nb", "lightgbm"]}},
                       "regressor_metrics": {"config": {"mode": "select"}},
                       "product_clusters": {"config": {"mode": "select"}}}}
EXPECTED_JOBS = {
    "ingest_job": {"assets": INGEST, "checks": [], "tags": {"fashion/stage": "ingest"}, "run_config": {}},
    "retraining_job": {"assets": RETRAIN, "checks": GATES, "tags": {"fashion/stage": "retraining"}, "run_config": {}},
    "refresh_job": {"assets": sorted(INGEST + RETRAIN), "checks": GATES, "tags": {"fashion/stage": "refresh"},
                    "run_config": {}},
    "model_selection_job": {"assets": SELECTION, "checks": GATES, "tags": {"fashion/stage": "model_selection"},
                            "run_config": SELECT_MODE},
}
EXPECTED_SCHEDULES = {"weekly_retraining": {"job": "retraining_job", "cron": "0 3 * * 1", "timezone": "UTC",
                                            "assets": RETRAIN, "checks": GATES}}
EXPECTED_SENSORS = {
    "new_raw_files": {"job": "refresh_job", "assets": sorted(INGEST + RETRAIN), "checks": GATES},
    "model_automation": {"automation_targets": sorted(AUTOMATION)},
}
EXPECTED_CHECKS = {"classifier_gate": {"asset": "attribute_classifiers", "blocking": True},
                   "price_regressor_gate": {"asset": "regressor_metrics", "blocking": True}}


def _load(profile: str, tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FASHION_RETRAIN_", "FASHION_AUTOMATION", "FASHION_EXECUTOR"))}
    env.update(FASHION_PROFILE=profile, PYTHONPATH=str(PROJECT_ROOT), DAGSTER_HOME=str(tmp_path),
               FASHION_DATA_ROOT=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "fashion_pipeline_tests.defs_snapshot"], cwd=PROJECT_ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory) -> dict[str, dict]:
    return {p: _load(p, tmp_path_factory.mktemp(p)) for p in ("local", "gpu")}


@pytest.mark.parametrize("profile", ["local", "gpu"])
def test_jobs_schedules_sensors_and_checks_are_the_reviewed_ones(snapshots, profile):
    snap = snapshots[profile]
    assert snap["jobs"] == EXPECTED_JOBS
    assert snap["schedules"] == EXPECTED_SCHEDULES
    assert snap["sensors"] == EXPECTED_SENSORS
    assert snap["checks"] == EXPECTED_CHECKS


def test_local_profile_assets(snapshots):
    expected = {name: {"group": group, "pool": None, "tags": {}, "op_tags": {},
                       "automation": AUTOMATION.get(name)} for name, group in GROUPS.items()}
    assert snapshots["local"]["assets"] == expected


def test_gpu_profile_assets(snapshots):
    assets = snapshots["gpu"]["assets"]
    assert set(assets) == set(GROUPS)
    for name, group in GROUPS.items():
        got = {k: v for k, v in assets[name].items() if k != "op_tags"}
        if name in GPU_ASSETS:
            assert got == {"group": group, "pool": "gpu", "tags": {"gpu": "true"},
                           "automation": AUTOMATION.get(name)}, name
            assert set(assets[name]["op_tags"]) == {K8S_TAG}, name
        else:
            assert got == {"group": group, "pool": None, "tags": {}, "automation": AUTOMATION.get(name)}, name
            assert assets[name]["op_tags"] == {}, name


def test_gpu_k8s_tags_parse_with_dagster_k8s(snapshots):
    k8s_job = pytest.importorskip("dagster_k8s.job", reason="dagster-k8s is in the dev extra")
    for profile, snap in snapshots.items():
        for name, asset in snap["assets"].items():
            cfg = k8s_job.get_user_defined_k8s_config(asset["op_tags"])
            limits = cfg.container_config.get("resources", {}).get("limits", {})
            if profile == "gpu" and name in GPU_ASSETS:
                assert limits["nvidia.com/gpu"] == "1", (profile, name)
                assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
                    cfg.pod_spec_config["tolerations"], (profile, name)
            else:
                assert "nvidia.com/gpu" not in limits, (profile, name)
