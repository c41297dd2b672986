"""Price regressors: train + evaluate (regressor_metrics), then publish behind a blocking gate.

Flow: ``regressor_metrics`` trains every configured regressor, saves each to the model store as
an unpublished version and writes one metrics row per (model, source) on the test split, plus
the currently published model re-scored on the *same* test split. The blocking check
``price_regressor_gate`` (fashion_pipeline/checks.py) compares the best candidate with the
published model and the linear baseline; ``published_price_regressor`` runs only when it
passes (blocking checks skip downstream steps) and publishes the candidate version.
The science lives in fashion_pipeline.core.pricing.
"""


import os

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from fashion_pipeline import metadata as md
from fashion_pipeline.core.pricing import plots
from fashion_pipeline.core.pricing.features import build_price_inputs
from fashion_pipeline.core.pricing.gate import GateDecision, gate
from fashion_pipeline.core.pricing.training import evaluate, priced_rows, train_price_models
from fashion_pipeline.core.scoring import PRICE_MODEL_NAME
from fashion_pipeline.assets.clustering import embeddings_path
from fashion_pipeline.paths import resolve
from fashion_pipeline.resources.model_store import ModelStoreResource

GROUP = "pricing"
BASELINE = "ridge"
PUBLISHED_ROW = "published"


class RegressorConfig(dg.Config):
    models: list[str] = Field(default=["ridge", "lightgbm", "mlp"],
                              description="Regressors to train: any of ridge (linear baseline), lightgbm, mlp.")
    blend: bool = Field(default=True, description="Also evaluate a validation-weighted blend of the non-linear models.")
    lightgbm_estimators: int = Field(default=400, ge=10,
                                     description="Maximum boosting rounds (early stopping on validation picks fewer).")
    mlp_epochs: int = Field(default=15, ge=1, description="Maximum MLP epochs (early stopping on validation).")
    mlp_hidden: int = Field(default=512, ge=8, description="Width of the MLP's first hidden layer.")
    mlp_device: str = Field(default="cpu", description="torch device for the MLP: 'cpu' or 'cuda' (a GPU machine).")
    mixed_precision: bool = Field(default=True,
                                  description="torch.autocast: bfloat16 on CPU, float16 + GradScaler on CUDA.")
    train_fraction: float = Field(default=1.0, gt=0, le=1,
                                  description="Share of the train split used (deterministic); validation and test "
                                  "are always whole. Below 1 only for quick experiments.")
    interval_coverage: float = Field(default=0.8, gt=0, lt=1,
                                     description="Nominal coverage of the prediction intervals (split conformal).")
    embeddings_path: str | None = Field(
        default=None,
        description="product_embeddings Parquet (read with core.encoders.io.read_embeddings); default: the path "
        "recorded by the latest product_embeddings materialization, else <var dir>/embeddings/"
        "product_embeddings.parquet, resolved when the run starts. When it does not exist the regressors train on "
        "text + metadata only, and the metadata says so.",
    )


def load_embeddings(path: str):
    """(ids, image, text) from the embeddings Parquet, or None with the reason."""
    p = resolve(path)
    if not os.path.exists(p):
        return None, f"no embeddings file at {p}"
    try:
        from fashion_pipeline.core.encoders.io import read_embeddings
    except ImportError:  # the embedding stage is not installed in this code location
        return None, "fashion_pipeline.core.encoders not available"
    return read_embeddings(p), f"read from {p}"


def _metrics_md(df: pd.DataFrame) -> dg.MetadataValue:
    cols = ["model", "source", "n", "r2_log", "rmsle", "r2_raw", "rmse", "mae", "interval_coverage", "train_seconds"]
    return dg.MetadataValue.md(df[[c for c in cols if c in df.columns]].round(4).to_markdown(index=False))


@dg.asset(group_name=GROUP, kinds={"duckdb", "pandas", "lightgbm", "pytorch"},
          deps=[dg.AssetKey("product_embeddings")],
          description="Price regressors trained on log price; test-split metrics per model and source "
                      "(plus the published model re-scored on the same split). Models go to the store unpublished.")
def regressor_metrics(context: dg.AssetExecutionContext, config: RegressorConfig, clean_products: pd.DataFrame,
                      model_store: ModelStoreResource) -> dg.Output[pd.DataFrame]:
    store = model_store.store()
    emb, emb_note = load_embeddings(str(embeddings_path(context, config.embeddings_path)))
    context.log.info(f"embeddings: {emb_note}")
    params = {
        "lightgbm": {"n_estimators": config.lightgbm_estimators},
        "mlp": {"epochs": config.mlp_epochs, "hidden": config.mlp_hidden, "device": config.mlp_device,
                "mixed_precision": config.mixed_precision},
    }
    res = train_price_models(clean_products, emb, models=tuple(config.models), params=params,
                             blend=config.blend, coverage=config.interval_coverage,
                             train_fraction=config.train_fraction)
    metrics = res.metrics.copy()
    best = res.best
    features_spec = {"target": "log1p(price_usd)", "embeddings": emb_note, "uses_attributes": False,
                     "featurizer": "fashion_pipeline.core.pricing.features.build_price_inputs"}
    versions = {}
    for name, model in res.models.items():
        rows = metrics[metrics["model"] == name].drop(columns=["model"]).to_dict(orient="records")
        versions[name] = store.save(PRICE_MODEL_NAME, model, {"kind": name, "test": rows, "counts": res.counts},
                                    features_spec)
    metrics["version"] = metrics["model"].map(versions)
    metrics["candidate"] = metrics["model"] == best
    published = store.published(PRICE_MODEL_NAME)
    if published is not None:
        # Re-score the published model on this run's test split: metrics from another split are not comparable.
        pmodel, pinfo = store.load(PRICE_MODEL_NAME, published["version"])
        rows, _ = priced_rows(clean_products)
        inputs = build_price_inputs(rows, emb)
        te = inputs.subset(inputs.frame["split"].astype(str).to_numpy() == "test")
        table, _ = evaluate(pmodel, te, te.frame["price_usd"].to_numpy(dtype=np.float64))
        table.insert(0, "model", PUBLISHED_ROW)
        table["version"], table["candidate"], table["train_seconds"] = pinfo["version"], False, np.nan
        metrics = pd.concat([metrics, table], ignore_index=True)
    pred = res.test_predictions[best]
    te = res.test_inputs
    pva = plots.predicted_vs_actual_png(te.frame["price_usd"], pred["price_usd"], te.frame["source"],
                                        f"{best}: predicted vs actual (test)")
    rbc = plots.residuals_by_category_png(te.frame["price_usd"], pred["price_usd"], te.frame["category"],
                                          f"{best}: residuals by category (test)")
    overall = metrics[(metrics["model"] == best) & (metrics["source"] == "all")].iloc[0]
    return dg.Output(metrics, metadata={
        "metrics": _metrics_md(metrics),
        "best_model": best,
        "candidate_version": versions[best],
        "best_test_rmsle": dg.MetadataValue.float(float(overall["rmsle"])),
        "best_test_r2_log": dg.MetadataValue.float(float(overall["r2_log"])),
        "best_test_r2_raw": dg.MetadataValue.float(float(overall["r2_raw"])),
        "published_version_before": published["version"] if published else "none",
        "train_seconds": dg.MetadataValue.json({k: round(v, 2) for k, v in res.train_seconds.items()}),
        "rows": dg.MetadataValue.json(res.counts),
        "embeddings": emb_note,
        "predicted_vs_actual": md.png(pva, "predicted vs actual"),
        "residuals_by_category": md.png(rbc, "residuals by category"),
    })


# Overall, the candidate may not be worse than the same run's linear baseline at all, and at most
# 1% (relative RMSLE) worse than the published model: retraining on 1% more products moved the
# blend's test RMSLE by +0.4% (0.2552 -> 0.2563, 20k products, benchmarks/results/pipeline.md)
# from training noise alone, and a zero margin refused every such weekly retrain. Drift is
# bounded because each candidate must still beat its own run's baseline.
OVERALL_TOLERANCE = {"published": 0.01, "baseline": 0.0}
# Per-source test sets can be small (tens of H&M rows in the embedded sample), so a source may
# be up to 5% worse than either reference before the gate refuses.
SOURCE_TOLERANCE = 0.05


def price_gate(metrics: pd.DataFrame) -> GateDecision:
    """The candidate (best) model vs the published model and the linear baseline, on test
    RMSLE overall and per source. Shared by the blocking check and the publish step."""
    cand = metrics[metrics["candidate"].astype(bool)]
    if cand.empty:
        return GateDecision(False, ["no candidate model in regressor_metrics"])
    name = cand["model"].iloc[0]
    decision = GateDecision(True)
    for source in cand["source"]:
        c = float(cand.loc[cand["source"] == source, "rmsle"].iloc[0])
        refs, tols = {}, {}
        for ref, kind in ((PUBLISHED_ROW, "published"), (BASELINE, "baseline")):
            r = metrics[(metrics["model"] == ref) & (metrics["source"] == source)]
            key = f"{ref} [{source}]"
            refs[key] = float(r["rmsle"].iloc[0]) if len(r) and ref != name else None
            tols[key] = OVERALL_TOLERANCE[kind] if source == "all" else SOURCE_TOLERANCE
        d = gate(c, refs, metric="rmsle", tolerance=tols)
        decision.passed &= d.passed
        decision.reasons += [f"{name} [{source}]: {r}" for r in d.reasons]
        decision.comparisons += d.comparisons
    return decision


@dg.asset(group_name=GROUP, kinds={"python"},
          description="Publishes the gated candidate price regressor in the model store (scoring uses it). "
                      "Runs only after the blocking check price_regressor_gate passed.")
def published_price_regressor(context: dg.AssetExecutionContext, model_store: ModelStoreResource,
                              regressor_metrics: pd.DataFrame) -> dg.MaterializeResult:
    # The blocking check already stopped a bad candidate in the same run; re-applying the same
    # gate here keeps a later, standalone materialization of this asset from bypassing it.
    decision = price_gate(regressor_metrics)
    if not decision.passed:
        raise dg.Failure(description="price regressor refused by the quality gate",
                         metadata={"gate": dg.MetadataValue.md(decision.markdown())})
    cand = regressor_metrics[regressor_metrics["candidate"].astype(bool)].iloc[0]
    store = model_store.store()
    store.publish(PRICE_MODEL_NAME, str(cand["version"]))
    context.log.info(f"published {PRICE_MODEL_NAME} {cand['version']} ({cand['model']})")
    return dg.MaterializeResult(metadata={
        "published_version": str(cand["version"]),
        "model": str(cand["model"]),
        "test_rmsle": dg.MetadataValue.float(float(cand["rmsle"])),
        "gate": dg.MetadataValue.md(decision.markdown()),
    })
