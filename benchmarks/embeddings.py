"""Embedding benchmark: throughput per backend, input-resolution sweep, full dev data end to end.

    nice -n 10 python benchmarks/embeddings.py [--data "$FASHION_DATA_ROOT"] [--parts sweep,throughput,full]

Writes benchmarks/results/embeddings.md (machine, versions, numbers). Not a test: numbers depend
on the machine and its load; CPU seconds are reported beside wall time because the development
machines are shared (wall time under contention overstates cost).

The product list is built straight from the datasets' files (id, title, description, category,
image path), the same fields clean_products carries, so the benchmark runs without the warehouse.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fashion_pipeline.core.encoders import build_backend, embed_products  # noqa: E402
from fashion_pipeline.core.encoders.images import decode_image, read_image_bytes  # noqa: E402

_TAG = re.compile(r"<[^>]+>")


def load_products(data: Path) -> pd.DataFrame:
    """Kaggle + H&M products with title, description, category label and image path."""
    kdir = data / "fashion-product-images"
    styles = pd.read_csv(kdir / "styles.csv", on_bad_lines="skip", dtype=str)
    rows = []
    for r in styles.itertuples(index=False):
        desc = ""
        jp = kdir / "styles" / f"{r.id}.json"
        if jp.exists():
            try:
                d = json.loads(jp.read_text())["data"]
                raw = ((d.get("productDescriptors") or {}).get("description") or {}).get("value") or ""
                desc = " ".join(_TAG.sub(" ", raw).split())
            except (ValueError, KeyError, TypeError):
                desc = ""
        img = kdir / "images" / f"{r.id}.jpg"
        rows.append(
            {
                "product_id": f"kaggle-{r.id}",
                "title": r.productDisplayName if isinstance(r.productDisplayName, str) else "",
                "description": desc,
                "colour": r.baseColour,
                "category": r.subCategory,
                "master_category": r.masterCategory,
                "image_path": str(img) if img.exists() else None,
            }
        )
    hdir = data / "h-and-m-personalized-fashion-recommendations"
    arts = pd.read_csv(hdir / "articles.csv", dtype=str)
    for r in arts.itertuples(index=False):
        img = hdir / "images" / r.article_id[:3] / f"{r.article_id}.jpg"
        rows.append(
            {
                "product_id": f"hm-{r.article_id}",
                "title": r.prod_name,
                "description": r.detail_desc if isinstance(r.detail_desc, str) else "",
                "colour": r.colour_group_name,
                "category": r.product_group_name,
                "master_category": "H&M " + str(r.product_group_name),
                "image_path": str(img) if img.exists() else None,
            }
        )
    return pd.DataFrame(rows)


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "open_clip_torch": version("open_clip_torch"),
        "sentence-transformers": version("sentence-transformers"),
        "pyarrow": version("pyarrow"),
        "load_avg_at_start": os.getloadavg(),
    }


def sweep(products: pd.DataFrame, n: int, resolutions: list[int]) -> list[dict]:
    """Speed (images per CPU-second and per wall-second) and a linear-probe quality per resolution.

    Quality: logistic regression on pooled features, Kaggle products only, stratified 70/30
    split, accuracy + macro-F1 for subCategory and masterCategory.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    k = products[products.product_id.str.startswith("kaggle-") & products.image_path.notna()]
    counts = k.category.value_counts()
    k = k[k.category.isin(counts[counts >= 20].index)].sample(n=n, random_state=0)
    images = [decode_image(read_image_bytes(p).data)[0] for p in k.image_path]
    out = []
    for res in resolutions:
        backend = build_backend("offline", resolution=res)
        tr = backend.image_transform()
        c0, t0 = time.process_time(), time.perf_counter()
        feats = []
        for b in range(0, len(images), 64):
            feats.append(backend.encode_image_batch(torch.stack([tr(im) for im in images[b : b + 64]])))
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        x = np.concatenate(feats)
        row = {"resolution": res, "images_per_cpu_s": len(x) / cpu, "images_per_wall_s": len(x) / wall}
        for target in ("category", "master_category"):
            y = k[target].to_numpy()
            # Classes with < 10 examples in the sample cannot be split and scored meaningfully.
            vc = k[target].value_counts()
            keep = k[target].isin(vc[vc >= 10].index).to_numpy()
            xtr, xte, ytr, yte = train_test_split(x[keep], y[keep], test_size=0.3, random_state=0, stratify=y[keep])
            sc = StandardScaler().fit(xtr)
            clf = LogisticRegression(max_iter=2000, C=0.5).fit(sc.transform(xtr), ytr)
            pred = clf.predict(sc.transform(xte))
            row[f"{target}_acc"] = accuracy_score(yte, pred)
            row[f"{target}_macro_f1"] = f1_score(yte, pred, average="macro")
        print("sweep", row, flush=True)
        out.append(row)
    return out


def throughput(products: pd.DataFrame, n: int, tmp: Path) -> list[dict]:
    """Images/s and texts/s through embed_products (cold cache) for each backend.

    open_clip here is ViT-B-32 with RANDOM weights saved to a local-dir: folder (no CLIP weights
    exist offline); its compute is the real architecture's, its vectors mean nothing.
    """
    import open_clip

    from fashion_pipeline.core.encoders.openclip import save_open_clip_dir

    sample = products[products.image_path.notna()].sample(n=n, random_state=1)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    save_open_clip_dir(model, open_clip.get_model_config("ViT-B-32"), tmp / "vitb32-random")
    del model
    configs = [
        ("offline (EfficientNet-Lite0 112 px + MiniLM)", "offline", {"resolution": 112}),
        ("offline (EfficientNet-Lite0 160 px + MiniLM)", "offline", {"resolution": 160}),
        ("open_clip ViT-B-32 224 px, random weights", "open_clip",
         {"model_name": "ViT-B-32", "pretrained": f"local-dir:{tmp / 'vitb32-random'}"}),
    ]
    out = []
    for label, name, opts in configs:
        backend = build_backend(name, **opts)
        cache = tmp / f"cache-{len(out)}"
        rep = embed_products(sample, backend, tmp / f"tp-{len(out)}.parquet", cache, progress=lambda m: None)
        row = {
            "backend": label,
            "rows": len(sample),
            "images_per_s": rep.image.per_second,
            "images_per_cpu_s_main": rep.image.unique_encoded / max(rep.image.cpu_seconds, 1e-9),
            "texts_per_s": rep.text.per_second,
            "texts_per_cpu_s": rep.text.unique_encoded / max(rep.text.cpu_seconds, 1e-9),
            "wall_s": rep.wall_seconds,
        }
        print("throughput", row, flush=True)
        out.append(row)
        shutil.rmtree(cache, ignore_errors=True)
    return out


def _stamp(message: str) -> None:
    print(time.strftime("%H:%M:%S"), message, flush=True)


def full(products: pd.DataFrame, tmp: Path, resolution: int) -> dict:
    """Cold run on 99% of the products, then the incremental run after adding the last 1%."""
    backend = build_backend("offline", resolution=resolution)
    shuffled = products.sample(frac=1.0, random_state=2).reset_index(drop=True)
    n_new = max(1, len(shuffled) // 100)
    base, everything = shuffled.iloc[:-n_new], shuffled
    cache = tmp / "cache-full"
    c0 = time.process_time()
    cold = embed_products(base, backend, tmp / "full.parquet", cache, progress=_stamp)
    cold_cpu = time.process_time() - c0
    inc = embed_products(everything, backend, tmp / "full.parquet", cache, progress=_stamp)
    noop = embed_products(everything, backend, tmp / "full.parquet", cache, progress=lambda m: None)
    res = {
        "resolution": resolution,
        "cold_rows": len(base),
        "cold_wall_s": cold.wall_seconds,
        "cold_cpu_s_main_process": cold_cpu,
        "cold_images_per_s": cold.image.per_second,
        "cold_texts_per_s": cold.text.per_second,
        "cold_image": cold.image.as_dict(),
        "cold_text": cold.text.as_dict(),
        "incremental_rows": len(everything),
        "incremental_new_rows": n_new,
        "incremental_wall_s": inc.wall_seconds,
        "incremental_image": inc.image.as_dict(),
        "incremental_text": inc.text.as_dict(),
        "noop_rerun_wall_s": noop.wall_seconds,
        "parquet_mb": os.path.getsize(tmp / "full.parquet") / 1e6,
        "cache_mb": sum(p.stat().st_size for p in cache.glob("*")) / 1e6,
    }
    print("full", res, flush=True)
    return res


def write_report(path: Path, info: dict, results: dict) -> None:
    lines = ["# Embedding benchmark", "", f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with "
             "`nice -n 10 python benchmarks/embeddings.py`.", "", "## Machine", "", "```",
             json.dumps(info, indent=1, default=str), "```", ""]
    if "sweep" in results:
        lines += ["## Offline image resolution sweep (EfficientNet-Lite0, letterbox on white)", "",
                  "| px | img / CPU-s | img / wall-s | subCategory acc | subCategory macro-F1 | masterCategory acc | masterCategory macro-F1 |",
                  "|---|---|---|---|---|---|---|"]
        for r in results["sweep"]:
            lines.append(f"| {r['resolution']} | {r['images_per_cpu_s']:.1f} | {r['images_per_wall_s']:.1f} | "
                         f"{r['category_acc']:.3f} | {r['category_macro_f1']:.3f} | {r['master_category_acc']:.3f} | "
                         f"{r['master_category_macro_f1']:.3f} |")
        lines.append("")
    if "throughput" in results:
        lines += ["## Throughput through embed_products (cold cache)", "",
                  "| backend | rows | images/s | texts/s | wall s |", "|---|---|---|---|---|"]
        for r in results["throughput"]:
            lines.append(f"| {r['backend']} | {r['rows']} | {r['images_per_s']:.1f} | {r['texts_per_s']:.1f} | {r['wall_s']:.1f} |")
        lines.append("")
    if "full" in results:
        f = results["full"]
        lines += ["## Full development data, offline backend", "", "```", json.dumps(f, indent=1, default=str), "```", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=os.environ.get("FASHION_DATA_ROOT"), required="FASHION_DATA_ROOT" not in os.environ,
                    help="Folder with both datasets (default: $FASHION_DATA_ROOT)")
    ap.add_argument("--parts", default="sweep,throughput,full")
    ap.add_argument("--sweep-n", type=int, default=2000)
    ap.add_argument("--sweep-resolutions", default="96,112,128,160,224")
    ap.add_argument("--throughput-n", type=int, default=1000)
    ap.add_argument("--resolution", type=int, default=112, help="offline resolution for the full run")
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="torch intra-op threads (0 = torch default). On a shared, loaded 2-core machine 1 thread "
                    "plus 1 loader worker beat 2 spinning threads by ~2.5x in wall time.")
    ap.add_argument("--work-dir", type=Path, default=None,
                    help="keep Parquet + caches here (e.g. benchmarks/out/embeddings) instead of a deleted temp dir; "
                    "a killed cold run then resumes from its cache (its 'reused' counts say so)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "embeddings.md")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    info = machine()
    t = time.perf_counter()
    products = load_products(args.data)
    info["products"] = len(products)
    info["products_with_image"] = int(products.image_path.notna().sum())
    info["load_products_s"] = round(time.perf_counter() - t, 1)
    print(info, flush=True)
    results: dict = {}
    keep = args.work_dir is not None
    tmp = args.work_dir.resolve() if keep else Path(tempfile.mkdtemp(prefix="emb-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        if "sweep" in parts:
            results["sweep"] = sweep(products, args.sweep_n, [int(x) for x in args.sweep_resolutions.split(",")])
            write_report(args.out, info, results)
        if "throughput" in parts:
            results["throughput"] = throughput(products, args.throughput_n, tmp)
            write_report(args.out, info, results)
        if "full" in parts:
            results["full"] = full(products, tmp, args.resolution)
        info["load_avg_at_end"] = os.getloadavg()
        write_report(args.out, info, results)
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
