"""Which encoder a model was trained on: recorded from the embeddings file at training, checked at scoring.

A model trained on one encoder's vectors gives nonsense on another's (a different width is an
error; the same width — two checkpoints of one architecture, another resolution or truncation — is
silent garbage). So every model that reads embeddings stores ``encoder_record(...)`` in its
``features_spec["encoder"]``, and scoring builds the encoder from that record and refuses to go on
when the encoder it got is not the one recorded (``check_encoder``).

Identities are compared without their precision suffix: a model trained on fp16 CUDA embeddings
may be served by bf16/fp32 on a CPU (cosine >= 0.998 to each other, benchmarks/results/embeddings.md).
"""

from __future__ import annotations

import json

PRECISIONS = frozenset({"fp32", "fp16", "bf16"})


class EncoderMismatchError(ValueError):
    """The encoder available for scoring is not the one the models were trained on."""


def encoder_record(meta: dict[str, str]) -> dict | None:
    """The record of the encoder behind an embeddings file, from its schema metadata
    (``read_embedding_metadata``); None when the metadata does not identify the encoder (no
    backend or no identities: a file not written by the embedding stage), which cannot be checked."""
    if not (meta.get("backend") and meta.get("image_identity") and meta.get("text_identity")):
        return None
    try:
        options = json.loads(meta.get("build_options") or "{}")
    except json.JSONDecodeError as exc:
        raise ValueError(f"embeddings metadata build_options is not JSON: {meta.get('build_options')!r}") from exc
    return {
        "backend": meta["backend"],
        "options": options,
        "image_identity": meta.get("image_identity", ""),
        "text_identity": meta.get("text_identity", ""),
        "image_dim": int(meta.get("image_dim", 0)),
        "text_dim": int(meta.get("text_dim", 0)),
        "precision": meta.get("precision", ""),
    }


def without_precision(identity: str) -> str:
    head, _, last = identity.rpartition(":")
    return head if head and last in PRECISIONS else identity


def differences(want: dict, got: dict) -> list[str]:
    """What differs between two records (backend, or either modality's identity less precision)."""
    out = []
    if want["backend"] != got["backend"]:
        out.append(f"backend {want['backend']!r} vs {got['backend']!r}")
    for modality in ("image", "text"):
        a, b = want[f"{modality}_identity"], got[f"{modality}_identity"]
        if without_precision(a) != without_precision(b):
            out.append(f"{modality} encoder {a!r} vs {b!r}")
    return out


def check_encoder(record: dict, backend_meta: dict[str, str], trained: str = "the model") -> None:
    """Raise EncoderMismatchError when the loaded backend (its ``describe()``) is not ``record``."""
    got = encoder_record(backend_meta)
    diff = differences(record, got) if got else ["the loaded encoder describes no backend"]
    if diff:
        raise EncoderMismatchError(
            f"{trained}: trained on other embeddings than this encoder gives ({'; '.join(diff)}); "
            "score with the encoder it records, or retrain it on this encoder's embeddings")
