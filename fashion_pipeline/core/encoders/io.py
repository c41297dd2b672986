"""The product_embeddings Parquet file: schema, incremental writer, reader.

Layout (one row per product, row groups written as they are produced):
    product_id       string, not null
    image_embedding  list<float32>, null when the product has no usable image
    text_embedding   list<float32>, null when the product's text is empty
    image_status     string: "ok", "reused", or why there is no image embedding
    text_status      string: "ok", "reused", or "empty_text"
Schema metadata (bytes -> bytes, utf-8): backend, device, precision, aligned ("true"/"false"),
image_model / image_model_version / image_dim / image_normalized / image_identity, the same for
text_*, created_at, row counts. ``read_embedding_metadata`` returns it as a str dict.

Downstream model code reads it with ``read_embeddings(path)``:

    ids, image, text = read_embeddings("var/embeddings/product_embeddings.parquet")
    # ids: list[str]; image: float32 [n, image_dim], NaN rows where image_embedding is null;
    # text: float32 [n, text_dim], NaN rows where text_embedding is null (empty text).
    ok = ~np.isnan(image).any(axis=1)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

IMAGE_COLUMN = "image_embedding"
TEXT_COLUMN = "text_embedding"


def embeddings_schema(metadata: dict[str, str] | None = None) -> pa.Schema:
    schema = pa.schema(
        [
            pa.field("product_id", pa.string(), nullable=False),
            pa.field(IMAGE_COLUMN, pa.list_(pa.float32())),
            pa.field(TEXT_COLUMN, pa.list_(pa.float32())),
            pa.field("image_status", pa.string()),
            pa.field("text_status", pa.string()),
        ]
    )
    return schema.with_metadata({k: str(v) for k, v in (metadata or {}).items()})


def _list_array(vectors: np.ndarray, valid: np.ndarray) -> pa.ListArray:
    """[n, d] float32 + validity mask -> list<float32> with nulls (no Python loop over rows)."""
    n, d = vectors.shape
    offsets = np.zeros(n + 1, dtype=np.int32)
    offsets[1:] = np.cumsum(np.where(valid, d, 0))
    values = pa.array(np.ascontiguousarray(vectors[valid], dtype=np.float32).ravel(), type=pa.float32())
    mask = pa.array(~valid) if not valid.all() else None
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), values, mask=mask)


class EmbeddingsWriter:
    """Write row groups to a temp file in the target folder; ``commit`` renames it into place.

    A crash leaves the previous file intact (os.replace is atomic on one filesystem).
    """

    def __init__(self, path: str | os.PathLike, metadata: dict[str, str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        self._metadata = dict(metadata)
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(self._tmp, embeddings_schema(self._metadata))
        self.rows = 0

    def write(self, ids, image, image_valid, text, text_valid, image_status, text_status) -> None:
        batch = pa.table(
            [
                pa.array(list(ids), type=pa.string()),
                _list_array(image, np.asarray(image_valid, dtype=bool)),
                _list_array(text, np.asarray(text_valid, dtype=bool)),
                pa.array(list(image_status), type=pa.string()),
                pa.array(list(text_status), type=pa.string()),
            ],
            schema=embeddings_schema(self._metadata),
        )
        self._writer.write_table(batch)
        self.rows += len(batch)

    def commit(self, extra_metadata: dict[str, str] | None = None) -> Path:
        """Close and move into place. Row counts known only at the end go into the footer."""
        if extra_metadata:
            # ParquetWriter fixes the schema at open; the footer's key-value metadata can still be added.
            for k, v in extra_metadata.items():
                self._writer.add_key_value_metadata({k: str(v)})
        self._writer.close()
        self._writer = None
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._tmp.unlink(missing_ok=True)


def read_embedding_metadata(path: str | os.PathLike) -> dict[str, str]:
    meta = pq.read_metadata(path).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items() if not k.startswith(b"ARROW:")}


def _to_matrix(col: pa.ChunkedArray, dim: int) -> np.ndarray:
    arr = col.combine_chunks()
    n = len(arr)
    out = np.full((n, dim), np.nan, dtype=np.float32)
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    if valid.any():
        lengths = arr.value_lengths().to_numpy(zero_copy_only=False)
        bad = valid & (lengths != dim)
        if bad.any():
            raise ValueError(f"{int(bad.sum())} embeddings do not have the declared dimension {dim}")
        out[valid] = arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    return out


def read_embeddings(path: str | os.PathLike) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Read a product_embeddings Parquet file.

    Returns ``(ids, image, text)``: ids as list[str] in file order; image float32 [n, image_dim]
    and text float32 [n, text_dim], with all-NaN rows where the embedding is null (missing or
    undecodable image; empty text). Dimensions come from the file's schema metadata, so an
    all-null column still has its declared width. Raises ValueError on a malformed file.
    """
    meta = read_embedding_metadata(path)
    table = pq.read_table(path, columns=["product_id", IMAGE_COLUMN, TEXT_COLUMN])
    try:
        image_dim, text_dim = int(meta["image_dim"]), int(meta["text_dim"])
    except KeyError as exc:
        raise ValueError(f"{path} lacks embedding dimensions in its schema metadata") from exc
    ids = table.column("product_id").to_pylist()
    image, text = _to_matrix(table.column(IMAGE_COLUMN), image_dim), _to_matrix(table.column(TEXT_COLUMN), text_dim)
    del table
    # Arrow's allocator keeps freed pages for its next read; numpy cannot use them. Measured on the
    # full catalogue (43.7k rows, 277 MB of vectors): the read grew the process by 0.87 GB without
    # this, by 0.32 GB with it.
    pa.default_memory_pool().release_unused()
    return ids, image, text
