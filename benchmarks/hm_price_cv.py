"""H&M listing prices by grouped cross-validation: the published price model's recipe, measured on
every priced H&M product instead of the test split's few hundred.

    python benchmarks/hm_price_cv.py --var-dir <var dir of a full pipeline run> --folds 5 \
        --out benchmarks/results/hm_price_cv.md

The test split holds 365 priced H&M products on the full development data, so an H&M listing
RMSLE from it moves by about ±0.03 between draws (benchmarks/results/listings.md), as much as the
gap to the issue's bounds. Here the priced H&M products of the train and test splits are dealt
into ``--folds`` folds by a stable hash of their ``group_id`` (colour variants stay together);
for each fold the price model is trained again — the published model's choice per listing form
and its tuned hyper-parameters, from scratch, with the pipeline's default config
(`assets.regressors.training_options`) — on every other row (Kaggle unchanged; the validation
split, which picks early stopping and blend weights, unchanged), and that fold's H&M products are
scored as listings through `scoring.score_listings`, the CLI's path, beside the TF-IDF recipe
fitted on the same train rows. The pooled figures cover every priced H&M train and test product
once. A first run ("original split") trains the same way on the pipeline's own split, to show
what retraining from scratch alone changes against the published model's figure.

Only H&M is reported: Kaggle products carry catalogue attributes that the published attribute
extractor learned from on the train split, so a Kaggle product moved into a fold's test rows
would be scored with in-sample extracted attributes; H&M products have no such labels.
The photos and the listing texts' vectors come from the run's embedding cache, and texts it
lacks are encoded (and added to it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from placeholders import shown_command  # benchmarks/placeholders.py
from listings import COVERAGE_BAND, RMSLE_TARGETS, machine, require_photos, rmsle_interval, wilson  # benchmarks/listings.py

from fashion_pipeline.assets.regressors import RegressorConfig, training_options
from fashion_pipeline.core import listing_eval, scoring
from fashion_pipeline.core.encoders.io import read_embeddings
from fashion_pipeline.core.model_store import ModelStore
from fashion_pipeline.core.pricing.features import SPARSE_TEXT
from fashion_pipeline.core.pricing.training import train_price_models
from fashion_pipeline.core.split import group_unit

FORMS = ("full", "title+photo", "photo")


def fold_of(group_ids: pd.Series, folds: int, salt: str = "hm-price-cv-v1") -> np.ndarray:
    """A stable fold number per row from its group (the same group always lands in the same fold)."""
    return np.array([int(group_unit(g, salt) * folds) for g in group_ids.astype(str)], dtype=int)


def fold_splits(products: pd.DataFrame, fold: np.ndarray, k: int) -> pd.Series:
    """The split column for fold ``k``: H&M train and test rows in fold k become test, the others train."""
    hm = (products["source"] == "hm").to_numpy() & products["split"].isin(["train", "test"]).to_numpy()
    split = products["split"].to_numpy(dtype=object).copy()
    split[hm] = np.where(fold[hm] == k, "test", "train")
    return pd.Series(split, index=products.index)


def run_fold(name: str, products: pd.DataFrame, embeddings, attributes, spec: dict, serving: dict) -> dict:
    """Train on ``products``' train rows as the published model was chosen, score its H&M test rows as listings."""
    t0 = time.perf_counter()
    # Title vectors only where the published model's sparse form was trained on them, as the pipeline does.
    titles = serving["embedder"].encode_texts if spec.get("sparse_text") == SPARSE_TEXT else None
    res = train_price_models(products, embeddings, attributes, chosen=spec["forms"], tuned=spec.get("tuned") or {},
                             encode_titles=titles, progress=logging.info, **training_options(RegressorConfig()))
    train_s = time.perf_counter() - t0
    test = products[(products["split"] == "test") & (products["source"] == "hm")].reset_index(drop=True)
    train = products[products["split"] == "train"]
    info = {"version": f"cv-{name}", "features_spec": {**spec, "forms": {f: m.chosen for f, m in res.model.forms.items()}}}
    extractor = scoring.listing_extractor(serving["store"], res.model.known_brands())[0]
    t1 = time.perf_counter()
    _, per_listing = listing_eval.evaluate_price_model(
        res.model, info, test, train, embedder=serving["embedder"], extractor=extractor,
        classifiers=serving["classifiers"], forms=FORMS, progress=logging.info)
    logging.info("%s: trained in %.0f s, %d H&M test products (%d priced), evaluated in %.0f s", name, train_s,
                 len(test), int((test["price_status"] == "ok").sum()), time.perf_counter() - t1)
    hm_train = int(((products["split"] == "train") & (products["source"] == "hm") & (products["price_status"] == "ok")).sum())
    return {"name": name, "train_s": train_s, "per_listing": per_listing, "hm_train": hm_train}


def pooled(per_listing: list[pd.DataFrame]) -> dict:
    """RMSLE (95% bootstrap interval), 80% coverage (Wilson) and the recipe's RMSLE over the priced H&M
    listings given a price."""
    d = pd.concat(per_listing, ignore_index=True)
    d = d[d["priced"] & (d["source"] == "hm")]
    got = d[np.isfinite(d["predicted_usd"])]
    price, pred = got["price_usd"].to_numpy(float), got["predicted_usd"].to_numpy(float)
    covered = (price >= got["price_low_usd"].to_numpy(float)) & (price <= got["price_high_usd"].to_numpy(float))
    rmsle = float(np.sqrt(np.mean((np.log1p(pred) - np.log1p(price)) ** 2)))
    recipe = float(np.sqrt(np.mean((np.log1p(got["recipe_usd"].to_numpy(float)) - np.log1p(price)) ** 2)))
    return {"priced": len(got), "rmsle": rmsle, "ci": rmsle_interval(price, pred), "recipe": recipe,
            "coverage": float(covered.mean()), "coverage_ci": wilson(int(covered.sum()), len(covered))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--var-dir", type=Path, required=True, help="A full pipeline run's FASHION_VAR_DIR.")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/hm_price_cv.md"))
    args = ap.parse_args(argv)
    if args.folds < 2:
        ap.error("--folds must be at least 2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    started = machine()
    with duckdb.connect(str(args.var_dir / "warehouse.duckdb"), read_only=True) as con:
        products = con.sql("select * from clean_products").df()
        attributes = con.sql("select * from product_attributes").df()
    # Every fold scores H&M train and test products as listings, photos included.
    require_photos(products[products["split"].isin(["train", "test"]) & (products["source"] == "hm")].reset_index(drop=True))
    store = ModelStore(args.var_dir / "models")
    model, info = scoring.load_published_price_model(store)
    spec = info["features_spec"]
    if not spec.get("uses_attributes"):
        attributes = None
    classifiers = scoring.load_published_classifiers(store)
    embeddings = read_embeddings(args.var_dir / "embeddings" / "product_embeddings.parquet")
    serving = {"store": store, "classifiers": classifiers,
               "embedder": scoring.encoder_embedder(record=scoring.models_encoder(info, classifiers),
                                                    cache_dir=args.var_dir / "cache" / "embeddings")}
    fold = fold_of(products["group_id"], args.folds)

    # The published model itself on the test split's H&M listings, for reference.
    test = products[(products["split"] == "test") & (products["source"] == "hm")].reset_index(drop=True)
    _, published_pl = listing_eval.evaluate_price_model(
        model, info, test, products[products["split"] == "train"], embedder=serving["embedder"],
        extractor=scoring.listing_extractor(store, model.known_brands())[0], classifiers=classifiers, forms=FORMS,
        progress=logging.info)
    runs = [run_fold("original split", products, embeddings, attributes, spec, serving)]
    for k in range(args.folds):
        runs.append(run_fold(f"fold {k + 1}/{args.folds}", products.assign(split=fold_splits(products, fold, k)),
                             embeddings, attributes, spec, serving))

    lines = ["| form | evaluation | H&M products priced | RMSLE | 95% CI | recipe RMSLE | 80% coverage | 95% CI | target |",
             "|---|---|---:|---:|---|---:|---:|---|---|"]
    cv = runs[1:]
    for form in FORMS:
        target = RMSLE_TARGETS[(form, "hm")]
        rows = [("published model, test split", pooled([published_pl[form]])),
                ("retrained from scratch, test split", pooled([runs[0]["per_listing"][form]])),
                (f"{args.folds}-fold grouped CV, train + test", pooled([r["per_listing"][form] for r in cv]))]
        for label, p in rows:  # the marks of benchmarks/listings.py
            mark = " ✓" if p["rmsle"] <= target and p["rmsle"] < p["recipe"] else " ✗"
            cov = " ✓" if COVERAGE_BAND[0] <= p["coverage"] <= COVERAGE_BAND[1] else " ✗"
            lines.append(f"| {form} | {label} | {p['priced']} | {p['rmsle']:.3f}{mark} | {p['ci'][0]:.3f}–{p['ci'][1]:.3f} | "
                         f"{p['recipe']:.3f} | {p['coverage']:.3f}{cov} | {p['coverage_ci'][0]:.3f}–{p['coverage_ci'][1]:.3f} | "
                         f"≤ {target:.2f} and < recipe |")
    per_fold = ["| training | H&M test products priced | H&M priced train-split rows (calibration share included) | "
                + " | ".join(f"{f} RMSLE" for f in FORMS) + " | training (s) |", "|---|---:|---:|" + "---:|" * len(FORMS) + "---:|"]
    for r in runs:
        pf = [pooled([r["per_listing"][f]]) for f in FORMS]
        per_fold.append(f"| {r['name']} | {pf[0]['priced']} | {r['hm_train']} | "
                        + " | ".join(f"{p['rmsle']:.3f}" for p in pf) + f" | {r['train_s']:.0f} |")
    shown = shown_command(list(argv or sys.argv[1:]), {"--var-dir": "<var dir>", "--out": "<report.md>"})
    report = [
        "# H&M listing prices by grouped cross-validation",
        "",
        f"Command: `python benchmarks/hm_price_cv.py {shown}`",
        "",
        f"- Machine: {started}.",
        f"- Published price model {info.get('version')} (per form: {json.dumps(spec.get('forms'))}); each fold retrains "
        "those choices with their tuned hyper-parameters from scratch, the pipeline's default config otherwise.",
        "- H&M products of the train and test splits are dealt into folds by a stable hash of `group_id`; each fold's "
        "are the test rows of one training on all other rows (validation and Kaggle rows as in the pipeline). "
        "Every figure is over H&M listings scored through `scoring.score_listings` (the CLI's path), beside the "
        "TF-IDF recipe fitted on the same train rows (told the true source). Marks as in listings.md: RMSLE within the "
        f"issue's bound and below the recipe's; 80% coverage in {COVERAGE_BAND[0]}–{COVERAGE_BAND[1]}. 95% intervals: "
        "percentile bootstrap (RMSLE), Wilson (coverage).",
        "- The training rows a fold has: about (folds − 1) / folds of the H&M train + test products, against all of "
        "the train split's for the published model (see the per-fold table), so the cross-validated figure is, "
        "if anything, slightly pessimistic.",
        "",
        "## H&M listings",
        "",
        "\n".join(lines),
        "",
        "## Per fold",
        "",
        "\n".join(per_fold),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(report), encoding="utf-8")
    logging.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
