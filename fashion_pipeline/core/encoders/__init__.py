"""Image and text encoders for product embeddings (no Dagster imports).

- base: the EmbeddingBackend interface, device/precision helpers, letterbox preprocessing
- offline: EfficientNet-Lite0 + all-MiniLM-L6-v2 shipped in registry packages (default, CPU)
- openclip: any open_clip checkpoint (tag / file / local-dir: / hf-hub:), aligned, GPU-ready
- images / text: robust image decoding and product text building
- cache: content-addressed, checksummed vector cache per encoder identity
- pipeline: embed_products(), the batched, incremental, streaming driver
- io: the Parquet layout, read_embeddings() (the warehouse puts a DuckDB view over the file)
"""

from .base import EmbeddingBackend, EncoderConfigError, ModalityInfo
from .io import read_embedding_metadata, read_embeddings
from .pipeline import EmbeddingReport, embed_products

__all__ = [
    "EmbeddingBackend",
    "EncoderConfigError",
    "ModalityInfo",
    "EmbeddingReport",
    "embed_products",
    "read_embeddings",
    "read_embedding_metadata",
    "build_backend",
]


def build_backend(backend: str = "offline", **options) -> EmbeddingBackend:
    """Construct a backend by name ('offline' | 'open_clip'); unknown names are a clear error."""
    if backend == "offline":
        from .offline import OfflineBackend

        return OfflineBackend(**options)
    if backend == "open_clip":
        from .openclip import OpenClipBackend

        return OpenClipBackend(**options)
    raise EncoderConfigError(f"Unknown encoder backend {backend!r}; expected 'offline' or 'open_clip'")
