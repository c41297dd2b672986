"""LLM generation backends. Each turns chat conversations into JSON text constrained to the
attribute schema; validation, retries and fallback live in `pipeline`, shared by all."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass
class Generation:
    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int = 0
    output_tokens: int = 0


class LLMBackend(Protocol):
    name: str
    model: str

    def generate(self, conversations: list[list[dict[str, str]]], max_new_tokens: int) -> list[Generation]:
        ...
