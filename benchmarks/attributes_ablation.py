"""Do extracted attributes help the price model on listings? Train it twice, with and without them.

    nice -n 10 .venv/bin/python benchmarks/attributes_ablation.py --var-dir <var dir of a full-data run> \
        [--models ridge,lightgbm] [--max-test 2000] [--out benchmarks/results/attributes_ablation.md]

Reads clean_products and the product embeddings a pipeline run left in --var-dir, and its
published classifiers. Trains the learned attribute extractor (as the attribute_extractor asset
does) and extracts every product's attributes. Then trains the listing price model twice with the
same settings — without attributes, and with them (`train_price_models(attributes=...)`: brand
filled from the title, attribute words beside the description) — and scores both on the same
test-split products rewritten as listings, through `scoring.score_listings` (the CLI's path;
the with-attributes model gets the listing's extracted attributes, the other none).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path

import duckdb
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fashion_pipeline.core import listing_eval, scoring  # noqa: E402
from fashion_pipeline.core.encoders.io import read_embeddings  # noqa: E402
from fashion_pipeline.core.extraction import learned, quality  # noqa: E402
from fashion_pipeline.core.extraction.pipeline import Extractor, ProductText, results_to_records  # noqa: E402
from fashion_pipeline.core.extraction.rules import RulesExtractor  # noqa: E402
from fashion_pipeline.core.extraction.prepared_text import prepare  # noqa: E402
from fashion_pipeline.core.model_store import ModelStore  # noqa: E402
from fashion_pipeline.core.pricing.training import train_price_models  # noqa: E402

FORMS = ("full", "full+brand+colour", "title+photo", "photo")


def extractor_for(model: learned.LearnedAttributeModel):
    runner = Extractor(RulesExtractor(), learned=model)

    def extract(products: pd.DataFrame) -> pd.DataFrame:
        results, _ = runner.run([ProductText(str(p), str(t or ""), str(d or ""))
                                 for p, t, d in zip(products["product_id"], products["title"], products["description"])])
        return pd.DataFrame(results_to_records(results, runner.backend, runner.model)).drop(
            columns=["backend", "model", "status"])
    return extract


def classifier_ablation(products: pd.DataFrame, emb, attributes: pd.DataFrame, extract, max_test: int,
                        models: tuple[str, ...]) -> list[str]:
    """The 'full' classifiers (title + description + photo + brand regime) trained with and without
    the attribute columns, then scored on test products rewritten as 'full' listings through
    `scoring.classify_listings` (the CLI's classification step; the listing's own extracted
    attributes for the with-attributes arm). Listing embeddings are the products' stored ones."""
    from sklearn.metrics import f1_score

    from fashion_pipeline.core.features import with_embeddings
    from fashion_pipeline.core.models.leaderboard import LeaderboardConfig, run_leaderboard

    ids, image, text = emb
    cfg = LeaderboardConfig(regimes=("full",), classical=models, neural=())
    test = products[products["split"] == "test"]
    if max_test and len(test) > max_test:
        test = test.sample(max_test, random_state=0)
    listings = listing_eval.as_listings(test.reset_index(drop=True), "full")
    listing_attrs = extract(listings)
    truth = test.set_index("product_id").reindex(listings["product_id"])
    a = attributes.set_index("product_id").drop(columns=["brand"], errors="ignore")
    out = ["| arm | task | n | macro-F1 (full listings) |", "|---|---|---:|---:|"]
    for arm, use in (("without attributes", False), ("with attributes", True)):
        frame = products.join(a, on="product_id") if use else products
        t0 = time.perf_counter()
        result = run_leaderboard(with_embeddings(frame, ids, image, text), cfg, logging.info)
        served = {(t, "full"): (clf, {}) for (t, r), clf in result.serving.items() if r == "full"}
        pred = scoring.classify_listings(listings, served, (ids, image, text), listing_attrs if use else None,
                                         [isinstance(p, str) and bool(p) for p in listings["image_path"]])
        for task in ("category", "gender", "usage"):
            y = truth[task].to_numpy()
            keep = pd.notna(y)
            f1 = f1_score(y[keep], pred[f"{task}_predicted"].to_numpy()[keep].astype(str), average="macro")
            out.append(f"| {arm} | {task} | {int(keep.sum())} | {f1:.4f} |")
        logging.info("classifiers %s: %.0f s", arm, time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--var-dir", type=Path, required=True, help="var dir of a full-data pipeline run")
    ap.add_argument("--models", default="ridge,lightgbm")
    ap.add_argument("--forms", default=",".join(FORMS))
    ap.add_argument("--max-test", type=int, default=2000, help="test products per form (seeded sample)")
    ap.add_argument("--part", choices=("price", "classifiers", "both"), default="both")
    ap.add_argument("--classifier-models", default="linear_svc")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "attributes_ablation.md")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with duckdb.connect(str(args.var_dir / "warehouse.duckdb"), read_only=True) as con:
        products = con.sql("select * from clean_products").df()
    emb = read_embeddings(args.var_dir / "embeddings" / "product_embeddings.parquet")
    store = ModelStore(args.var_dir / "models")
    classifiers = scoring.load_published_classifiers(store)

    t0 = time.perf_counter()
    texts = [prepare(t, d, 2000) for t, d in zip(products["title"], products["description"].fillna(""))]
    extractor_model = learned.fit(texts, [quality.catalogue_truth(v) for v in products["article_attributes"]],
                                  products["source_category"].tolist(), products["split"].tolist(),
                                  products["title"].tolist(), products["brand"].tolist())
    extract = extractor_for(extractor_model)
    attributes = extract(products)
    logging.info("attributes for %d products in %.0f s", len(attributes), time.perf_counter() - t0)

    cls_rows: list[str] = []
    if args.part in ("classifiers", "both"):
        cls_rows = classifier_ablation(products, emb, attributes, extract, args.max_test,
                                       tuple(m for m in args.classifier_models.split(",") if m))
        if args.part == "classifiers":
            report = ["# Ablation: the 'full' classifiers with and without extracted attributes", "",
                      f"Command: `python benchmarks/attributes_ablation.py {' '.join(argv or sys.argv[1:])}`", "",
                      f"- Machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores (shared).",
                      f"- Models: {args.classifier_models} (chosen on validation), brand hidden on half the training "
                      "rows as in the pipeline; test products rewritten as 'full' listings (no brand, no catalogue "
                      "columns) and classified by `scoring.classify_listings`.", "", *cls_rows, ""]
            args.out.write_text("\n".join(report), encoding="utf-8")
            print("\n".join(report))
            return 0
    test = products[products["split"] == "test"].reset_index(drop=True)
    if args.max_test and len(test) > args.max_test:
        test = test.sample(args.max_test, random_state=0).reset_index(drop=True)
    train = products[products["split"] == "train"]
    forms = tuple(f for f in args.forms.split(",") if f)
    models = tuple(m for m in args.models.split(",") if m)
    embedder = scoring.encoder_embedder("offline")
    recipe = listing_eval.Recipe().fit(train)
    tables = {}
    for arm, attrs in (("without attributes", None), ("with attributes", attributes)):
        t0 = time.perf_counter()
        res = train_price_models(products, emb, attrs, models=models, progress=logging.info)
        info = {"version": arm, "features_spec": {"uses_attributes": attrs is not None}}
        table, _ = listing_eval.evaluate_price_model(
            res.model, info, test, train, embedder=embedder, extractor=extract if attrs is not None else None,
            classifiers=classifiers, forms=forms, progress=logging.info, recipe=recipe)
        tables[arm] = table
        logging.info("%s: %.0f s", arm, time.perf_counter() - t0)

    rows = []
    a, b = tables["without attributes"], tables["with attributes"]
    key = ["form", "source"]
    for col in ("rmsle", "coverage"):
        if col not in a.columns:
            raise SystemExit(f"listing table has no {col!r} column: {list(a.columns)}")
    merged = a[key + ["n_priced", "rmsle", "coverage"]].merge(
        b[key + ["rmsle", "coverage"]], on=key, suffixes=(" without", " with"))
    for _, r in merged.iterrows():
        rows.append(f"| {r['form']} | {r['source']} | {int(r['n_priced'])} | {r['rmsle without']:.3f} | "
                    f"{r['rmsle with']:.3f} | {r['rmsle with'] - r['rmsle without']:+.3f} | "
                    f"{r['coverage without']:.3f} | {r['coverage with']:.3f} |")
    report = [
        "# Ablation: the listing price model with and without extracted attributes", "",
        f"Command: `python benchmarks/attributes_ablation.py {' '.join(argv or sys.argv[1:])}`", "",
        f"- Machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores (shared).",
        f"- Products: {len(products)}; test products scored per form: {len(test)} (seeded sample); "
        f"price models: {', '.join(models)} (+ blend), chosen per form on validation, the same in both arms.",
        f"- Attributes: learned extractor {extractor_model.version} (train split), extracted for every product "
        "(training) and from each listing's own title + description (scoring).",
        "- Scored through `scoring.score_listings`; RMSLE and 80% coverage over the listings that got a price.", "",
        "| form | source | priced | RMSLE without | RMSLE with | Δ | coverage without | coverage with |",
        "|---|---|---:|---:|---:|---:|---:|---:|", *rows, "",
        *(["## The 'full' classifiers with and without attributes (macro-F1 on 'full' listings)", "", *cls_rows, ""]
          if cls_rows else [])]
    args.out.write_text("\n".join(report), encoding="utf-8")
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
