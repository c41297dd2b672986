"""EncoderResource: image + text encoders for product embeddings, backend chosen by configuration.

backend="offline" (default): EfficientNet-Lite0 + all-MiniLM-L6-v2 from registry packages; CPU,
  no download, NOT aligned (image 1280-d, text 384-d).
backend="open_clip": any open_clip checkpoint (pretrained tag, weights file, ``local-dir:``
  folder or ``hf-hub:`` id), one aligned space; mixed precision on CUDA. FashionCLIP / Marqo
  checkpoints drop in by setting model_name + pretrained.

Under FASHION_PROFILE=gpu, build_resources sets ``open_clip_model`` from FASHION_OPEN_CLIP_MODEL
(default ViT-B-32) and ``open_clip_pretrained`` from FASHION_OPEN_CLIP_PRETRAINED (required). GPU
scheduling of the asset (pool, k8s GPU request) follows the profile: fashion_pipeline.gpu. The
device is never guessed from the machine: a CUDA device on a machine without one is a
configuration error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field

from fashion_pipeline.core.encoders import EmbeddingBackend, build_backend
from fashion_pipeline.core.encoders.cache import EmbeddingCache, SweepReport, sweep_cache
from fashion_pipeline.paths import default_var_path, resolve


class EncoderResource(dg.ConfigurableResource):
    """Image and text encoders plus where their outputs and caches live."""

    backend: Literal["offline", "open_clip"] = Field(
        default="offline",
        description="'offline': EfficientNet-Lite0 + MiniLM shipped in pip packages (CPU, not aligned). "
        "'open_clip': an open_clip checkpoint with aligned image/text space (production, GPU).",
    )
    device: str = Field(default="cpu", description="torch device, e.g. 'cpu' or 'cuda:0'. The profile sets it (local: cpu, gpu: cuda).")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        default="auto", description="'auto' = fp16 autocast on CUDA; bf16 autocast on a CPU with native bf16 "
        "(AVX512-BF16/AMX: ~1.75x faster, cosine 0.9986-0.99999 to fp32), else fp32. fp16 needs CUDA."
    )
    image_batch_size: int = Field(default=64, ge=1, description="Images per forward pass.")
    text_batch_size: int = Field(default=256, ge=1, description="Texts per forward pass.")
    loader_workers: int = Field(
        default=1, ge=0, description="DataLoader worker processes decoding/preprocessing images (0 = in-process)."
    )
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="torch intra-op CPU threads for this process (None = torch default). On a busy shared CPU, "
        "1 thread + 1 loader worker was ~2.5x faster than 2 spinning threads (benchmarks/results/embeddings.md).",
    )
    offline_image_resolution: int = Field(
        default=112,
        description="Offline backend input side in px (images are letterboxed on white). 112 was chosen from the "
        "speed/quality sweep in benchmarks/results/embeddings.md; raise for quality, lower for speed.",
    )
    offline_text_max_tokens: int = Field(
        default=64, description="Offline text encoder truncation in word pieces. 64 keeps the title, the attributes "
        "and the head of the description and is ~1.85x faster than 128 (MiniLM's training length) on catalogue "
        "texts (median 115 word pieces); mean cosine 0.974 to the 128-token embedding. See benchmarks/results/embeddings.md."
    )
    open_clip_model: str = Field(
        default="ViT-B-32",
        description="open_clip architecture name (open_clip.list_models()), or a 'local-dir:'/'hf-hub:' source.",
    )
    open_clip_pretrained: str | None = Field(
        default=None,
        description="open_clip weights: a pretrained tag, a weights file path, 'local-dir:<folder>' "
        "(open_clip_config.json + open_clip_model.safetensors) or 'hf-hub:<org/repo>' (e.g. "
        "'hf-hub:Marqo/marqo-fashionSigLIP'). Tags and hf-hub download unless the HF cache is seeded.",
    )
    open_clip_resize_mode: str | None = Field(
        default=None, description="open_clip inference resize: 'shortest' (crop), 'longest' (pad), 'squash'; None = checkpoint's."
    )
    output_dir: str | None = Field(
        default=None, description="Folder of the product_embeddings Parquet file; default <var dir>/embeddings."
    )
    cache_dir: str | None = Field(
        default=None, description="Content-addressed embedding cache; default <var dir>/cache/embeddings."
    )
    cache_retention_days: float | None = Field(
        default=28, gt=0, description="After each product_embeddings computation, delete cached vectors no run "
        "has written or read for this many days (products that left the catalogue, texts an updated extractor "
        "rewrote), and other encoders' cache files unused as long. 28 = four weekly retrains; null keeps all."
    )
    chunk_rows: int = Field(default=4096, ge=1, description="Rows per Parquet row group (bounds memory).")

    def build_backend(self) -> EmbeddingBackend:
        """Load the configured encoders (seconds: weights are read and checksummed)."""
        if self.torch_threads:
            import torch

            torch.set_num_threads(self.torch_threads)
        if self.backend == "offline":
            return build_backend("offline", device=self.device, resolution=self.offline_image_resolution,
                                 precision=self.precision, text_max_tokens=self.offline_text_max_tokens)
        return build_backend(
            "open_clip",
            model_name=self.open_clip_model,
            pretrained=self.open_clip_pretrained,
            device=self.device,
            precision=self.precision,
            image_resize_mode=self.open_clip_resize_mode,
        )

    def output_path(self, name: str = "product_embeddings") -> Path:
        """Where the Parquet file goes (relative paths resolve against the project root)."""
        folder = resolve(self.output_dir) if self.output_dir else resolve(default_var_path("embeddings"))
        return Path(folder) / f"{name}.parquet"

    def cache_path(self) -> Path:
        return Path(resolve(self.cache_dir) if self.cache_dir else resolve(default_var_path("cache", "embeddings")))

    def sweep_cache(self, backend: EmbeddingBackend) -> SweepReport | None:
        """Apply ``cache_retention_days`` to the cache folder (None when retention is off)."""
        if self.cache_retention_days is None:
            return None
        folder = self.cache_path()
        with EmbeddingCache(folder, "image", backend.image.identity, backend.image.dim) as image, \
                EmbeddingCache(folder, "text", backend.text.identity, backend.text.dim) as text:
            return sweep_cache([image, text], self.cache_retention_days * 86400)
