"""open_clip backend: image and text in one aligned space (production, GPU).

Weights come from, in ``pretrained``:
  * a pretrained tag of the model (e.g. ``laion2b_s34b_b79k``; downloads, so only when a user asks),
  * a local weights file (``/models/fashion-clip.safetensors``),
  * ``local-dir:/models/marqo-fashionSigLIP`` (open_clip_config.json + weights, the layout
    open_clip's ``save_for_hf`` writes),
  * ``hf-hub:Marqo/marqo-fashionSigLIP`` (offline only from a seeded Hugging Face cache).
so a FashionCLIP / Marqo checkpoint drops in by configuration alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from .base import (
    EmbeddingBackend,
    EncoderConfigError,
    ModalityInfo,
    autocast,
    file_sha256,
    resolve_device,
    resolve_precision,
)

LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"
_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors", "pytorch_model.bin")


def resolve_source(model_name: str, pretrained: str | None) -> tuple[str, str | None, str]:
    """Validate the configured model + weights; return (model arg, pretrained arg, weights identity).

    Raises EncoderConfigError / FileNotFoundError naming the bad value before open_clip is called,
    because open_clip's own errors for these cases are generic (or start a download).
    """
    import open_clip

    source = model_name
    if pretrained and (pretrained.startswith(LOCAL_DIR) or pretrained.startswith(HF_HUB)):
        source, pretrained = pretrained, None
    if source.startswith(LOCAL_DIR):
        folder = Path(source[len(LOCAL_DIR):]).expanduser()
        config = folder / "open_clip_config.json"
        if not folder.is_dir():
            raise FileNotFoundError(f"open_clip weights folder does not exist: {folder} (from {source!r})")
        if not config.is_file():
            raise FileNotFoundError(f"open_clip weights folder {folder} has no open_clip_config.json")
        weights = next((folder / n for n in _WEIGHT_NAMES if (folder / n).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"open_clip weights folder {folder} holds none of {list(_WEIGHT_NAMES)}")
        ident = f"{source}:config-sha256={file_sha256(config)[:16]}:weights-sha256={file_sha256(weights)[:16]}"
        return f"{LOCAL_DIR}{folder}", None, ident
    if source.startswith(HF_HUB):
        # Resolved (and, unless offline with a seeded cache, downloaded) by open_clip itself.
        return source, None, source
    if source not in open_clip.list_models():
        raise EncoderConfigError(
            f"Unknown open_clip model name {source!r}; known names include "
            f"{sorted(open_clip.list_models())[:12]}... (or use 'local-dir:' / 'hf-hub:')"
        )
    if not pretrained:
        raise EncoderConfigError(
            f"open_clip model {source!r} needs weights: set `pretrained` to a tag, a weights file, "
            "'local-dir:<folder>' or 'hf-hub:<repo>' (random weights are never used silently)"
        )
    looks_like_path = os.sep in pretrained or pretrained.endswith((".safetensors", ".pt", ".pth", ".bin"))
    if looks_like_path:
        if not os.path.isfile(pretrained):
            raise FileNotFoundError(f"open_clip weights file does not exist: {pretrained}")
        return source, pretrained, f"{source}:file-sha256={file_sha256(pretrained)[:16]}"
    tags = open_clip.list_pretrained_tags_by_model(source)
    if pretrained not in tags:
        raise EncoderConfigError(
            f"Unknown pretrained tag {pretrained!r} for open_clip model {source!r} "
            f"(known tags: {tags}); a weights file path must exist"
        )
    return source, pretrained, f"{source}:{pretrained}"


class OpenClipBackend(EmbeddingBackend):
    name = "open_clip"
    aligned = True

    def __init__(
        self,
        model_name: str,
        pretrained: str | None,
        device: str = "cpu",
        precision: str = "auto",
        image_resize_mode: str | None = None,
        cache_dir: str | None = None,
    ):
        import open_clip

        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        model_arg, pretrained_arg, weights_identity = resolve_source(model_name, pretrained)
        # Weights load in fp32; on CUDA, autocast runs the matmuls in half precision (GPU path).
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_arg,
            pretrained=pretrained_arg,
            device=self.device,
            image_resize_mode=image_resize_mode,
            cache_dir=cache_dir,
        )
        self._model = model.eval()
        self._options = {"model_name": model_name, "pretrained": pretrained, "image_resize_mode": image_resize_mode}
        self._preprocess = preprocess
        self._tokenizer = open_clip.get_tokenizer(model_arg)
        dim = self._embed_dim()
        lib = f"open_clip_torch=={version('open_clip_torch')}"
        shown_name = model_arg if pretrained_arg is None else f"{model_arg}/{os.path.basename(pretrained_arg)}"
        resize = image_resize_mode or "checkpoint-default"
        self.image = ModalityInfo(
            model=shown_name,
            version=lib,
            dim=dim,
            identity=f"open_clip-image:{weights_identity}:resize={resize}:{self.precision}",
            normalized=True,
        )
        self.text = ModalityInfo(
            model=shown_name,
            version=lib,
            dim=dim,
            identity=f"open_clip-text:{weights_identity}:{self.precision}",
            normalized=True,
        )

    def _embed_dim(self) -> int:
        visual = self._model.visual
        out = getattr(visual, "output_dim", None)
        if out is None:
            with torch.inference_mode():
                size = visual.image_size if isinstance(visual.image_size, (tuple, list)) else (visual.image_size,) * 2
                out = self._model.encode_image(torch.zeros(1, 3, *size, device=self.device)).shape[-1]
        return int(out)

    def build_options(self) -> dict:
        return dict(self._options)

    def image_transform(self):
        return self._preprocess

    def encode_image_batch(self, pixels: torch.Tensor) -> np.ndarray:
        with torch.inference_mode(), autocast(self.device, self.precision):
            out = self._model.encode_image(pixels.to(self.device, non_blocking=True), normalize=True)
        return out.float().cpu().numpy().astype(np.float32, copy=False)

    def encode_text_batch(self, texts: Sequence[str]) -> np.ndarray:
        tokens = self._tokenizer(list(texts)).to(self.device)
        with torch.inference_mode(), autocast(self.device, self.precision):
            out = self._model.encode_text(tokens, normalize=True)
        return out.float().cpu().numpy().astype(np.float32, copy=False)


def save_open_clip_dir(model: torch.nn.Module, model_cfg: dict, folder: str | os.PathLike) -> Path:
    """Save an open_clip model as a ``local-dir:`` folder (config + safetensors), as open_clip's hub export does."""
    from open_clip.push_to_hf_hub import save_config_for_hf
    from safetensors.torch import save_file

    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # create_model() sets these; a model built with the class constructor lacks them.
    for attr, default in (("image_mean", OPENAI_DATASET_MEAN), ("image_std", OPENAI_DATASET_STD)):
        if getattr(model.visual, attr, None) is None:
            setattr(model.visual, attr, default)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    save_config_for_hf(model, folder / "open_clip_config.json", model_config=model_cfg)
    json.loads((folder / "open_clip_config.json").read_text())  # fail early on a bad write
    return folder
