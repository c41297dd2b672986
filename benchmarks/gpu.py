"""The CUDA code paths on a GPU machine, each beside the same work on that machine's CPU.

    python benchmarks/gpu.py [--out benchmarks/results/gpu.md] [--rows 31000] [--epochs 8] [--parts encoders,mlp,neural]

Needs a CUDA device and nothing outside the repository (the embedded sample under data/):

- product_embeddings under the gpu profile: the open_clip backend through ``embed_products`` on
  every image of the embedded sample, on the CPU in float32 and on CUDA in float16 and bfloat16
  (images/s, texts/s, and how far the half-precision vectors are from the float32 ones). No CLIP
  weights install offline, so the model is ViT-B-32 with RANDOM weights saved to a ``local-dir:``
  folder: its compute is the real architecture's, its vectors mean nothing.
- regressor_metrics' price MLP (``MLPConfig.device``; the gpu profile trains it on 'cuda'): seconds
  per epoch at the full data's shape (``--rows`` training rows of 1280 image + 384 text columns,
  plus the stacked TF-IDF ridge and the categorical embeddings), on the CPU in float32 and on CUDA
  in float16 with a GradScaler. The embedding values are random (seeded) and the titles are the
  sample's repeated: a timing, not a quality measure. Quality on real rows is the test
  ``test_the_mlp_trains_on_cuda_in_float16_and_the_stored_model_predicts_on_the_cpu``.
- classifier_leaderboard's neural classifiers (``NeuralConfig.device``; the gpu profile trains them on
  'cuda'): ``train_multitask`` seconds per epoch at the image regime's shape, CPU and CUDA (float32),
  random values (a timing; quality on real rows is ``test_networks_train_on_cuda_and_come_back_on_the_cpu``).

``--parts`` runs some of the three (encoders, mlp, neural); the report then holds only those.

Writes a Markdown report (machine, versions, numbers). Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
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

from fashion_pipeline.core.models.fusion import NeuralConfig, train_multitask  # noqa: E402

SAMPLE = ROOT / "data"
# (device, precision, DataLoader workers) of each encoder run; the first is the reference.
ENCODER_RUNS = [("cpu", "fp32", 0), ("cuda", "fp16", 4), ("cuda", "bf16", 4)]
# (device, mixed precision) of each MLP run.
MLP_RUNS = [("cpu", False), ("cuda", True)]
# Devices of the neural classifier runs.
NEURAL_DEVICES = ["cpu", "cuda"]


def sample_products() -> pd.DataFrame:
    """clean_products of the embedded sample, through the pipeline's readers and cleaning."""
    from fashion_pipeline.core.cleaning import read_clean_products

    return read_clean_products(SAMPLE)


def machine() -> dict:
    return {
        "gpu": torch.cuda.get_device_name(0),
        "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
               f"torch threads {torch.get_num_threads()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


def encoders(products: pd.DataFrame, tmp: Path) -> list[dict]:
    import open_clip

    from fashion_pipeline.core.encoders import build_backend, embed_products, read_embeddings
    from fashion_pipeline.core.encoders.openclip import save_open_clip_dir

    rows = products[products["image_path"].notna()].reset_index(drop=True)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    save_open_clip_dir(model, open_clip.get_model_config("ViT-B-32"), tmp / "vitb32-random")
    del model
    opts = {"model_name": "ViT-B-32", "pretrained": f"local-dir:{tmp / 'vitb32-random'}"}
    out, ref = [], None
    for device, precision, workers in ENCODER_RUNS:
        backend = build_backend("open_clip", device=device, precision=precision, **opts)
        path = tmp / f"{device}-{precision}.parquet"
        rep = embed_products(rows, backend, path, tmp / f"cache-{len(out)}", loader_workers=workers,
                             progress=lambda m: None)
        _, image, text = read_embeddings(path)
        row = {"device": device, "precision": precision, "loader_workers": workers, "rows": len(rows),
               "images_per_s": rep.image.per_second, "texts_per_s": rep.text.per_second,
               "wall_s": rep.wall_seconds}
        if ref is None:
            ref = (image, text)
        else:
            ok = ~np.isnan(image).any(axis=1) & ~np.isnan(ref[0]).any(axis=1)
            row["image_min_cosine"] = float(np.min(np.sum(image[ok] * ref[0][ok], axis=1)))
            row["image_max_abs_diff"] = float(np.max(np.abs(image[ok] - ref[0][ok])))
            row["text_min_cosine"] = float(np.min(np.sum(text * ref[1], axis=1)))
        print("encoder", row, flush=True)
        out.append(row)
    return out


def mlp(products: pd.DataFrame, n_rows: int, epochs: int) -> list[dict]:
    from fashion_pipeline.core.pricing.features import build_price_inputs
    from fashion_pipeline.core.pricing.models import MLPConfig, MLPPriceRegressor, log_target

    priced = products[products["price_status"] == "ok"].reset_index(drop=True)
    reps = int(np.ceil(n_rows * 1.2 / len(priced)))
    big = pd.concat([priced] * reps, ignore_index=True).iloc[: int(n_rows * 1.2)].copy()
    big["product_id"] = [f"{p}-{i}" for i, p in enumerate(big["product_id"])]
    rng = np.random.default_rng(0)
    emb = (big["product_id"].tolist(), rng.standard_normal((len(big), 1280), dtype=np.float32),
           rng.standard_normal((len(big), 384), dtype=np.float32))
    inputs = build_price_inputs(big, emb)
    is_val = np.arange(len(big)) >= n_rows
    train, val = inputs.subset(~is_val), inputs.subset(is_val)
    y_tr, y_va = log_target(train.frame["price_usd"]), log_target(val.frame["price_usd"])
    out = []
    for device, amp in MLP_RUNS:
        times = {}
        for n_epochs in (0, epochs):  # 0 epochs: the stacked ridge, scaling and transfers alone
            cfg = MLPConfig(device=device, mixed_precision=amp, epochs=n_epochs, patience=n_epochs + 1)
            train.cache.clear()
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            reg = MLPPriceRegressor(cfg).fit(train, y_tr, val, y_va)
            times[n_epochs] = time.perf_counter() - t0
        precision = reg.precision_ + (" + GradScaler" if reg.precision_ == "fp16" else "")
        row = {"device": device, "precision": precision, "train_rows": len(train),
               "dense_columns": len(reg.scaler_.mean_) + (reg.text_ridge_ is not None),
               "fit_s_0_epochs": times[0], f"fit_s_{epochs}_epochs": times[epochs],
               "s_per_epoch": (times[epochs] - times[0]) / epochs}
        print("mlp", row, flush=True)
        out.append(row)
    return out


def neural(n_rows: int, epochs: int) -> list[dict]:
    """train_multitask (classifier_leaderboard's neural classifiers) at the image regime's shape:
    ``n_rows`` training rows of 1280 image columns, three task heads (11 / 5 / 8 classes), the
    asset's width (256); random values and labels, a timing only."""
    rng = np.random.default_rng(0)
    n_classes = {"category": 11, "gender": 5, "usage": 8}
    n_val = n_rows // 5
    x = rng.standard_normal((n_rows + n_val, 1280), dtype=np.float32)
    y = {t: rng.integers(0, k, n_rows + n_val) for t, k in n_classes.items()}
    out = []
    for device in NEURAL_DEVICES:
        cfg = NeuralConfig(epochs=epochs, patience=epochs + 1, hidden=256, device=device,
                           n_threads=torch.get_num_threads())
        t0 = time.perf_counter()
        _, info = train_multitask(x[:n_rows], {t: v[:n_rows] for t, v in y.items()}, x[n_rows:],
                                  {t: v[n_rows:] for t, v in y.items()}, n_classes, cfg)
        row = {"device": device, "train_rows": n_rows, "epochs": info["epochs_run"],
               "fit_s": time.perf_counter() - t0, "s_per_epoch": info["seconds"] / max(info["epochs_run"], 1)}
        print("neural", row, flush=True)
        out.append(row)
    return out


def _table(rows: list[dict]) -> list[str]:
    return [pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu.md")
    ap.add_argument("--rows", type=int, default=31000, help="MLP training rows (the full data's train split)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--parts", default="encoders,mlp,neural")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA device (torch.cuda.is_available() is False)")
    info = machine()
    print(info, flush=True)
    parts = args.parts.split(",")
    products = sample_products() if {"encoders", "mlp"} & set(parts) else None
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if "encoders" in parts:
            results["encoders"] = encoders(products, Path(tmp))
        if "mlp" in parts:
            results["mlp"] = mlp(products, args.rows, args.epochs)
        if "neural" in parts:
            results["neural"] = neural(args.rows, args.epochs)
    lines = ["# CUDA code paths beside the CPU (`benchmarks/gpu.py`)", "",
             f"Measured {time.strftime('%Y-%m-%d')}: " + "; ".join(f"{k} {v}" for k, v in info.items()), ""]
    if "encoders" in results:
        lines += ["## open_clip encoder through embed_products (product_embeddings, gpu profile)", "",
                  f"open_clip_torch {version('open_clip_torch')}; ViT-B-32 at 224 px with random weights, every image of the embedded sample; cosine and "
                  "difference against the CPU float32 vectors of the same rows.", ""]
        lines += _table(results["encoders"]) + [""]
    if "mlp" in results:
        lines += ["## Price MLP (regressor_metrics' MLPConfig.device)", "",
                  "Random embedding values at the full data's widths, the sample's titles repeated: a timing only. "
                  "fit_s_0_epochs is the stacked TF-IDF ridge, scaling and transfers without training.", ""]
        lines += _table(results["mlp"]) + [""]
    if "neural" in results:
        lines += ["## Neural classifiers (classifier_leaderboard's neural_device)", "",
                  "train_multitask at the image regime's shape (1280 image columns, category / gender / usage heads, "
                  "width 256, float32); random values and labels: a timing only. s_per_epoch includes the "
                  "validation pass.", ""]
        lines += _table(results["neural"]) + [""]
    args.out.write_text("\n".join(lines))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
