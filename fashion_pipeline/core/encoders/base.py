"""The encoder interface shared by every backend, plus small helpers they all need."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


class EncoderConfigError(ValueError):
    """A model name, weights path or option that cannot work; the message names the culprit."""


@dataclass(frozen=True)
class ModalityInfo:
    """What produced one modality's vectors.

    ``identity`` is the cache key part: it changes whenever the vectors would change
    (model, weights checksum, preprocessing, precision), so a changed encoder never reuses
    stale vectors.
    """

    model: str
    version: str
    dim: int
    identity: str
    normalized: bool


class EmbeddingBackend(ABC):
    """An image encoder and a text encoder loaded together (one backend of EncoderResource)."""

    name: str
    device: str
    precision: str
    aligned: bool
    image: ModalityInfo
    text: ModalityInfo

    @abstractmethod
    def image_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """PIL RGB image -> CHW float tensor; runs in loader workers, so it must be picklable."""

    @abstractmethod
    def encode_image_batch(self, pixels: torch.Tensor) -> np.ndarray:
        """[B, 3, H, W] preprocessed pixels -> float32 [B, image.dim]."""

    @abstractmethod
    def encode_text_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Non-empty texts -> float32 [B, text.dim]."""

    @abstractmethod
    def build_options(self) -> dict:
        """The ``build_backend`` keyword options (besides device and precision) that rebuild this
        encoder: recorded with the embeddings so scoring can load the encoder a model was trained on."""

    def describe(self) -> dict[str, str]:
        """Flat string metadata (Parquet schema metadata and Dagster metadata)."""
        return {
            "backend": self.name,
            "build_options": json.dumps(self.build_options(), sort_keys=True),
            "device": self.device,
            "precision": self.precision,
            "aligned": str(self.aligned).lower(),
            "image_model": self.image.model,
            "image_model_version": self.image.version,
            "image_dim": str(self.image.dim),
            "image_normalized": str(self.image.normalized).lower(),
            "image_identity": self.image.identity,
            "text_model": self.text.model,
            "text_model_version": self.text.version,
            "text_dim": str(self.text.dim),
            "text_normalized": str(self.text.normalized).lower(),
            "text_identity": self.text.identity,
        }


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def short_text_batch(longest_chars: int, base: int = 32, most: int = 256, chars_per_text: int = 256) -> int:
    """How many texts to encode together when the longest is ``longest_chars`` characters: ``base`` for
    texts of ``chars_per_text`` characters (~64 word pieces, the offline encoder's cap) or longer, and
    for shorter ones ``base`` doubled while the batch holds at most about as many characters in all,
    up to ``most``. Short texts (titles: the price model's title vectors, title + photo listings) are
    cheap per text, so a batch of 32 is mostly per-call overhead: on an Intel Xeon with AMX (2 threads,
    bf16), 6,000 distinct Kaggle titles encoded at ~1,000 titles/s in batches of 32 and ~1,500/s in
    batches of 128-256 (cosine to the batch-32 vectors >= 0.99998); 4,096 catalogue texts (median 590
    characters) at the same ~400/s either way. Only doublings: batch sizes of every value in between
    (each a new tensor shape for the CPU kernels' caches) raised the peak RSS of encoding 12,000
    catalogue texts by ~100 MB over batches of 32; doublings by ~10 MB, within run-to-run noise."""
    size = base
    while size * 2 <= most and size * 2 * max(int(longest_chars), 1) <= base * chars_per_text:
        size *= 2
    return int(size)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a weights file, memoised per (path, size, mtime): weights are read once per process."""
    st = os.stat(path)
    memo_key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if memo_key not in _SHA_MEMO:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA_MEMO[memo_key] = h.hexdigest()
    return _SHA_MEMO[memo_key]


def resolve_device(device: str) -> str:
    """Validate a torch device string; 'cuda' on a machine without CUDA is a clear error, not a fallback."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise EncoderConfigError(f"Unknown torch device {device!r}: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EncoderConfigError(
            f"Encoder device {device!r} requested but CUDA is not available on this machine; "
            "use device='cpu' or run on a GPU node."
        )
    return str(dev)


def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX), where oneDNN runs
    bf16 matmuls/convolutions about twice as fast as fp32. Elsewhere bf16 is emulated (slower)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # private helpers: treat an older/newer torch as "no"
        return False


def resolve_precision(precision: str, device: str) -> str:
    """'auto' -> fp16 on CUDA; bf16 on a CPU with native bf16, else fp32.

    Measured on this project's 2-core AMD EPYC (AVX512-BF16), benchmarks/results/embeddings.md:
    bf16 autocast made MiniLM 1.75x and EfficientNet-Lite0 1.75x faster, with cosine similarity
    0.99999 (text) and 0.9986 (image) to the fp32 embeddings. fp16 on CPU is refused (slow and
    lossy); bf16 on a CPU without native support is refused too (emulated: slower than fp32).
    The resolved precision is part of each encoder's identity, so caches never mix precisions.
    """
    precision = precision.lower()
    if precision not in {"auto", "fp32", "fp16", "bf16"}:
        raise EncoderConfigError(f"Unknown precision {precision!r}; expected auto, fp32, fp16 or bf16")
    is_cuda = device.startswith("cuda")
    if precision == "auto":
        if is_cuda:
            return "fp16"
        return "bf16" if device.startswith("cpu") and cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and not is_cuda:
        raise EncoderConfigError(f"precision 'fp16' needs a CUDA device; device is {device!r}")
    if precision == "bf16" and not is_cuda and not (device.startswith("cpu") and cpu_has_native_bf16()):
        raise EncoderConfigError(
            f"precision 'bf16' on {device!r} needs a CUDA device or a CPU with native bf16 (AVX512-BF16/AMX); "
            "use 'fp32' or 'auto'")
    return precision


def autocast(device: str, precision: str):
    """Mixed precision context: autocast on CUDA (fp16/bf16) or CPU (bf16); a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=dtype)


class LetterboxTransform:
    """Resize to fit a square, pad with white, normalise; keeps the whole garment.

    Catalogue photos are portrait (60x80, 120x180) on white; a centre crop would cut off
    collars and hems, and a squash distorts proportions, so pad with the photo's own white.
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], fill: int = 255):
        self.size = int(size)
        self.mean = np.asarray(mean, dtype=np.float32).reshape(1, 1, -1)
        self.std = np.asarray(std, dtype=np.float32).reshape(1, 1, -1)
        self.fill = int(fill)
        # (x / 255 - mean) / std as one multiply-add per pixel, in CHW order.
        self._scale = torch.from_numpy(1.0 / (255.0 * self.std)).permute(2, 0, 1).contiguous()
        self._shift = torch.from_numpy(-self.mean / self.std).permute(2, 0, 1).contiguous()

    def __call__(self, im: Image.Image) -> torch.Tensor:
        w, h = im.size
        scale = self.size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        resized = im.resize((nw, nh), Image.BICUBIC)
        canvas = Image.new("RGB", (self.size, self.size), (self.fill,) * 3)
        canvas.paste(resized, ((self.size - nw) // 2, (self.size - nh) // 2))
        chw = torch.from_numpy(np.array(canvas)).permute(2, 0, 1)  # a writable copy: torch refuses read-only buffers
        out = torch.empty(chw.shape, dtype=torch.float32)
        out.copy_(chw)  # uint8 HWC -> contiguous float CHW in one pass
        return out.mul_(self._scale).add_(self._shift)

    def describe(self) -> str:
        return f"letterbox{self.size}-fill{self.fill}-mean{self.mean.ravel().tolist()}-std{self.std.ravel().tolist()}"
