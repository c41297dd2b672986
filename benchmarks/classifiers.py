"""Full-data benchmark of the clustering methods and attribute classifiers.

    nice -n 10 .venv/bin/python benchmarks/classifiers.py \
        --data-root "$FASHION_DATA_ROOT" --embeddings var/embeddings/product_embeddings.parquet \
        --out benchmarks/results/classifiers.md

Builds clean_products with the project's own readers and cleaning code (cached under
var/bench/), joins the product_embeddings Parquet, runs every clustering method and every
classifier on every input regime with the classifier asset's settings (featurizer sizes, neural
recipe, brand masking, seed; `ClassifierConfig`'s defaults), and writes a Markdown report with the
machine, versions, timings, the leaderboard and confusion matrices (PNG next to the report).
`--cache` may also be a full-data run's clean_products exported to Parquet, so that the products
match its product_embeddings file row for row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

# Thread count for BLAS/OpenMP/torch, fixed before numpy/torch load: on a shared, oversubscribed
# machine spinning OpenMP threads were measured 5x slower than one thread (DEC: 149 s vs 27 s).
THREADS = int(os.environ.get("BENCH_THREADS", "1"))
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, str(THREADS))

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from placeholders import shown_command  # noqa: E402  (benchmarks/placeholders.py)

from fashion_pipeline.assets.classifiers import ClassifierConfig  # noqa: E402
from fashion_pipeline.core.clustering import ClusteringConfig, cluster_products  # noqa: E402
from fashion_pipeline.core.encoders.io import read_embeddings  # noqa: E402
from fashion_pipeline.core.features import with_embeddings  # noqa: E402
from fashion_pipeline.core.models.classifiers import CLASSICAL  # noqa: E402
from fashion_pipeline.core.models.fusion import ARCHITECTURES, NeuralConfig  # noqa: E402
from fashion_pipeline.core.models.leaderboard import LeaderboardConfig, best_per_task, run_leaderboard  # noqa: E402
from fashion_pipeline.core.figures import confusion_matrix_png  # noqa: E402


def build_clean_products(data_root: Path, cache: Path) -> pd.DataFrame:
    if cache.is_file():
        return pd.read_parquet(cache)
    from fashion_pipeline.core.cleaning import read_clean_products

    df = read_clean_products(data_root)
    cache.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(cache)
    return df


def versions() -> dict:
    import lightgbm
    import sklearn
    import torch
    import xgboost

    return {"python": platform.python_version(), "torch": torch.__version__, "scikit-learn": sklearn.__version__,
            "xgboost": xgboost.__version__, "lightgbm": lightgbm.__version__, "numpy": np.__version__,
            "pandas": pd.__version__}


def machine() -> str:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.machine()}; load average at start {load[0]:.1f}"


def md_table(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False, floatfmt=".4f")


# Arguments naming this machine's files are shown as placeholders in the report.
PLACEHOLDERS = {"--data-root": "<data>", "--embeddings": "<product_embeddings.parquet>",
                "--cache": "<clean_products.parquet>", "--out": "<report.md>"}


# The classifier asset's defaults (featurizer sizes, neural recipe, brand masking, seed): what the pipeline trains.
PIPELINE = ClassifierConfig()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", type=Path, default=os.environ.get("FASHION_DATA_ROOT"), required="FASHION_DATA_ROOT" not in os.environ,
                    help="Folder with both datasets (default: $FASHION_DATA_ROOT)")
    ap.add_argument("--embeddings", type=Path, required=True, help="product_embeddings Parquet")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/classifiers.md")
    ap.add_argument("--cache", type=Path, default=ROOT / "var/bench/clean_products.parquet")
    ap.add_argument("--regimes", default="full,sparse,image")
    ap.add_argument("--classical", default=",".join(CLASSICAL))
    ap.add_argument("--neural", default=",".join(ARCHITECTURES))
    ap.add_argument("--neural-epochs", type=int, default=PIPELINE.neural_epochs)
    ap.add_argument("--clustering", default="kmeans,gmm,dec", help="'' to skip clustering")
    ap.add_argument("--limit-products", type=int, default=0, help="smoke runs: use about this many products")
    ap.add_argument("--smoke-resplit", action="store_true", help="smoke runs: only products with an image, re-split")
    ap.add_argument("--dec-pretrain-epochs", type=int, default=10)
    ap.add_argument("--dec-max-iter", type=int, default=2000)
    ap.add_argument("--neural-patience", type=int, default=PIPELINE.neural_patience)
    ap.add_argument("--neural-hidden", type=int, default=PIPELINE.neural_hidden)
    ap.add_argument("--neural-ensemble", type=int, default=PIPELINE.neural_ensemble,
                    help="networks averaged per neural model (the pipeline's neural_ensemble)")
    ap.add_argument("--max-train-rows", default="xgboost=8000,lightgbm=10000,extra_trees=10000,knn=15000",
                    help="per-model caps on training rows, name=n,...")
    ap.add_argument("--embeddings-note", default="", help="how the embeddings were produced (goes into the report)")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    load0 = machine()
    products = build_clean_products(args.data_root, args.cache)
    if args.limit_products:  # smoke runs only: a seeded sample of whole groups
        groups = products["group_id"].drop_duplicates().sample(frac=1, random_state=0)
        keep = set(groups.head(max(1, int(len(groups) * args.limit_products / len(products)))))
        products = products[products["group_id"].isin(keep)].reset_index(drop=True)
    ids, image, text = read_embeddings(args.embeddings)
    frame = with_embeddings(products, ids, image, text)
    if args.smoke_resplit:  # smoke runs only: products with an image, re-split 60/20/20 by group hash
        frame = frame[frame["image_embedding"].notna()].copy()
        h = pd.util.hash_pandas_object(frame["group_id"], index=False).to_numpy() % 10
        frame["split"] = np.where(h < 6, "train", np.where(h < 8, "validation", "test"))
        products = products[products["product_id"].isin(frame["product_id"])].reset_index(drop=True)
        frame = frame.set_index("product_id").loc[products["product_id"]].reset_index()
    n_img = int(frame["image_embedding"].notna().sum())
    print(f"{len(products)} products, {n_img} with an image embedding", flush=True)

    def run_clustering() -> str:
        clust_md = ''
        if args.clustering:
            inputs = "both" if text is not None else "image"
            cfg = ClusteringConfig(methods=tuple(args.clustering.split(",")), inputs=inputs,
                                   dec_pretrain_epochs=args.dec_pretrain_epochs, dec_max_iter=args.dec_max_iter,
                                   n_threads=THREADS)
            pos = {p: i for i, p in enumerate(ids)}
            rows = products["product_id"].map(pos)
            ok = rows.notna().to_numpy()

            def align(a):
                if a is None:
                    return None
                out = np.full((len(products), a.shape[1]), np.nan, np.float32)
                out[ok] = a[rows[ok].astype(int).to_numpy()]
                return out

            t0 = time.perf_counter()
            _, cm, extras = cluster_products(products["product_id"].tolist(), align(image), align(text),
                                             products["category"], cfg, lambda m: print(m, flush=True))
            clust_md = (f"## Clustering on embeddings alone ({inputs} embeddings, PCA {cfg.pca_components}, k = {cfg.n_clusters})\n\n"
                        f"{int(extras['kept'].sum())} products clustered ({extras['dropped_missing_embedding']} without "
                        f"both embeddings dropped); metrics against the 11 known categories; silhouette on a "
                        f"{cfg.silhouette_sample}-product sample. Wall time {time.perf_counter() - t0:.0f} s.\n\n"
                        + md_table(cm.drop(columns=["inputs"])) + "\n")
            print(cm, flush=True)

        return clust_md

    caps = dict((kv.split("=")[0], int(kv.split("=")[1])) for kv in args.max_train_rows.split(",") if kv)
    lcfg = LeaderboardConfig(
        regimes=tuple(args.regimes.split(",")), classical=tuple(m for m in args.classical.split(",") if m),
        neural=tuple(m for m in args.neural.split(",") if m),
        neural_config=NeuralConfig(epochs=args.neural_epochs, patience=args.neural_patience, hidden=args.neural_hidden,
                                   ensemble=args.neural_ensemble, seed=PIPELINE.seed, n_threads=THREADS),
        featurizer={"svd_components": PIPELINE.svd_components, "image_components": PIPELINE.image_components},
        max_train_rows=caps, seed=PIPELINE.seed, n_threads=THREADS, brand_mask_rate=PIPELINE.brand_mask_rate,
    )

    def write_report(parts, clust_md, final):
        lb = pd.concat([p.leaderboard for p in parts], ignore_index=True)
        res = SimpleNamespace(
            leaderboard=lb, label_counts=parts[0].label_counts,
            serving={k: v for p in parts for k, v in p.serving.items()},
            test_predictions={k: v for p in parts for k, v in p.test_predictions.items()},
            timings={"featurizer_seconds": {k: v for p in parts for k, v in p.timings["featurizer_seconds"].items()},
                     "total_seconds": sum(p.timings["total_seconds"] for p in parts),
                     "train_rows_without_image_excluded": {k: v for p in parts for k, v in
                                                           p.timings.get("train_rows_without_image_excluded", {}).items()}})
        done_regimes = [p.leaderboard["regime"].iloc[0] for p in parts if len(p.leaderboard)]
        out_dir = args.out.parent
        out_dir.mkdir(parents=True, exist_ok=True)
        lb.to_csv(out_dir / "classifiers_leaderboard.csv", index=False)

        best = best_per_task(lb)
        best_src = pd.concat([best_per_task(lb, source=s).assign(source=s) for s in ("kaggle", "hm")])
        cols = ["task", "regime", "model", "accuracy", "macro_f1", "weighted_f1", "n", "train_seconds"]
        serving = lb[lb.serving & (lb.source == "all")][cols]
        plots = []
        for task in lcfg.tasks:
            regime = "full" if "full" in done_regimes else done_regimes[0]
            clf = res.serving[(task, regime)]
            pred = res.test_predictions[(task, clf.model_name, regime)]
            name = f"classifiers_confusion_{task}.png"
            (out_dir / name).write_bytes(confusion_matrix_png(pred.y_true, pred.y_pred, clf.classes,
                                                              f"{task}: {clf.model_name} ({regime}), test"))
            plots.append(f"![{task}]({name})")
        full_tab = lb[lb.source == "all"][["task", "regime", "model", "family", "accuracy", "macro_f1", "weighted_f1",
                                           "n", "train_seconds", "n_train"]].sort_values(
            ["task", "regime", "macro_f1"], ascending=[True, True, False])
        by_source = lb[lb.source != "all"].pivot_table(index=["task", "regime", "model"], columns="source",
                                                       values=["accuracy", "macro_f1"]).round(4)
        by_source.columns = [f"{a}_{b}" for a, b in by_source.columns]
        by_source = by_source.reset_index().sort_values(["task", "regime"])
        report = f"""# Classifier and clustering benchmark (full development data)
    {"" if final else "**PARTIAL: written after each regime; regimes done so far: " + ", ".join(done_regimes) + "**"}

    Command: `nice -n 10 python benchmarks/classifiers.py {shown_command(sys.argv[1:] if argv is None else argv, PLACEHOLDERS)}`

    - Machine: {load0} (shared with other developers: timings are wall-clock under that load);
      {THREADS} thread(s) for BLAS / OpenMP / torch / tree libraries.
    - Versions: {json.dumps(versions())}
    - Data: {len(products)} clean products ({', '.join(f'{k} {v}' for k, v in products['source'].value_counts().items())});
      split {', '.join(f'{k} {v}' for k, v in products['split'].value_counts().items())};
      {n_img} with an image embedding. Embeddings: {args.embeddings_note or args.embeddings}
    - Test split only for every number below; featurizers and models fitted on train; validation used
      for neural early stopping and for choosing the serving model. Rows with a null label are excluded per task:

    {md_table(res.label_counts)}

    - Image-only regime: training rows without an image embedding excluded: {res.timings['train_rows_without_image_excluded']}.
    - Featurizer fit+transform seconds per regime: {res.timings['featurizer_seconds']}; classifier stage
      {res.timings['total_seconds']:.0f} s; whole benchmark so far {time.perf_counter() - t_start:.0f} s.
    - Neural models are multitask (one network for the three tasks): their train_seconds is the whole network's
      training time, repeated on each task's row. The image CNN is a head on *frozen* EfficientNet-Lite0 features.

    {clust_md}
    ## Best per task and regime (test, all sources, by macro-F1)

    {md_table(best[cols])}

    ## Best per task and regime, per source

    {md_table(best_src[['source', *cols]])}

    ## Serving models (chosen on validation macro-F1), their test scores

    {md_table(serving)}

    ## Confusion matrices of the full-regime serving models

    {' '.join(plots)}

    ## Reference (environment.md): TF-IDF + LinearSVC on Myntra listings

    gender accuracy 0.996 (macro-F1 0.986); usage accuracy 0.967 (macro-F1 0.698); subCategory accuracy 0.993.
    Compare with the kaggle-source rows above (the project's 11 categories are close to, not equal to, subCategory).

    ## Every model (test, all sources)

    {md_table(full_tab)}

    ## Every model per source (accuracy / macro-F1)

    {md_table(by_source)}
    """
        report = "\n".join(line[4:] if line.startswith("    ") else line for line in report.splitlines()) + "\n"
        args.out.write_text(report)
        print(report if final else f'partial report written ({done_regimes})', flush=True)

    parts = []
    clust_md = "_(clustering runs after the classifiers; not reached yet)_\n"
    for regime in lcfg.regimes:
        one = LeaderboardConfig(**{**lcfg.__dict__, "regimes": (regime,)})
        r = run_leaderboard(frame, one, lambda m: print(m, flush=True))
        parts.append(r)
        write_report(parts, clust_md, final=False)
    clust_md = run_clustering()
    write_report(parts, clust_md, final=True)
    return 0



if __name__ == "__main__":
    raise SystemExit(main())
