"""HF transformers + xgrammar constrained decoding (CPU-friendly, batched, left padding)."""

from __future__ import annotations

import logging
from pathlib import Path

from fashion_pipeline.core.extraction.backends import Generation
from fashion_pipeline.core.extraction.schema import SCHEMA_JSON

log = logging.getLogger(__name__)


class TransformersBackend:
    name = "transformers"

    def __init__(self, model_dir: str | Path, dtype: str = "float32", num_threads: int | None = None):
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"transformers model folder does not exist or has no config.json: {model_dir}")
        import torch
        import xgrammar as xgr
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.num_threads = num_threads
        self.model = str(model_dir)
        self._torch = torch
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.tok.padding_side = "left"  # decoder-only batching: pad on the left so outputs line up
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
        info = xgr.TokenizerInfo.from_huggingface(self.tok, vocab_size=self.lm.config.vocab_size)
        self._grammar = xgr.GrammarCompiler(info).compile_json_schema(SCHEMA_JSON, any_whitespace=False)
        self._xgr = xgr
        eos = self.lm.generation_config.eos_token_id
        self._eos = set(eos if isinstance(eos, list) else [eos]) | {self.tok.eos_token_id}

    def generate(self, conversations: list[list[dict[str, str]]], max_new_tokens: int) -> list[Generation]:
        torch = self._torch
        prompts = [self.tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
        enc = self.tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        # xgrammar's HF processor keeps per-sequence matcher state: a new one per generate call.
        processor = self._xgr.contrib.hf.LogitsProcessor(self._grammar)
        before = torch.get_num_threads()
        if self.num_threads:  # e.g. 1 on an oversubscribed CPU, where OpenMP spin-waits cost 10-30x
            torch.set_num_threads(self.num_threads)
        try:
            with torch.inference_mode():
                out = self.lm.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                       logits_processor=[processor], pad_token_id=self.tok.pad_token_id)
        finally:
            torch.set_num_threads(before)
        new = out[:, enc["input_ids"].shape[1]:]
        gens = []
        for i, row in enumerate(new.tolist()):
            ended = next((j for j, t in enumerate(row) if t in self._eos), None)
            toks = row if ended is None else row[:ended]
            gens.append(Generation(
                text=self.tok.decode(toks, skip_special_tokens=True),
                finish_reason="length" if ended is None else "stop",
                prompt_tokens=int(enc["attention_mask"][i].sum()),
                output_tokens=len(toks) + (0 if ended is None else 1),
            ))
        return gens
