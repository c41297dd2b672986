"""The product_embeddings Parquet file: schema, incremental writer, reader.

Layout (one row per product, row groups written as they are produced):
    product_id       string, not null
    image_embedding  list<float32>, null when the product has no usable image
    text_embedding   list<float32>, null when the product's text is empty
    image_status     string: "ok", "reused", or why there is no image embedding
    text_status      string: "ok", "reused", or "empty_text"
Schema metadata (bytes -> bytes, utf-8): backend, device, precision, aligned ("true"/"false"),
image_model / image_model_version / image_dim / image_normalized / image_identity, the same for
text_*, created_at, row counts, and ``content_digest``: a digest of the ids and vectors as
``read_embeddings`` returns them (``content_digest``), computed while the file is written, so a
model asset can tell "same embeddings" from the footer alone instead of reading ~300 MB of vectors
(``file_content_digest`` falls back to reading and hashing a file that lacks it).
``read_embedding_metadata`` returns the metadata as a str dict.

Downstream model code reads it with ``read_embeddings(path)``:

    ids, image, text = read_embeddings("var/embeddings/product_embeddings.parquet")
    # ids: list[str]; image: float32 [n, image_dim], NaN rows where image_embedding is null;
    # text: float32 [n, text_dim], NaN rows where text_embedding is null (empty text).
    ok = ~np.isnan(image).any(axis=1)
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

IMAGE_COLUMN = "image_embedding"
TEXT_COLUMN = "text_embedding"
CONTENT_DIGEST_KEY = "content_digest"


class ContentHasher:
    """Running digest of (ids, image matrix, text matrix) as ``read_embeddings`` returns them: each id
    followed by NUL, and each matrix's float32 rows in file order with NaN rows where the vector is
    null. Fed batch by batch (the writer) or all at once (a file without the footer key), it gives
    the same digest."""

    def __init__(self, image_dim: int, text_dim: int):
        self.dims = (int(image_dim), int(text_dim))
        self._h = {k: hashlib.blake2b(digest_size=20) for k in ("ids", "image", "text")}
        self.rows = 0

    @staticmethod
    def _rows(vectors: np.ndarray, valid: np.ndarray | None, dim: int) -> np.ndarray:
        if valid is None:  # already NaN where null (a read file): hashed in place, no copy
            return np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, dim)
        out = np.array(vectors, dtype=np.float32, copy=True).reshape(-1, dim)  # one written batch
        out[~np.asarray(valid, dtype=bool)] = np.nan
        return out

    def update(self, ids: Sequence[str], image: np.ndarray, text: np.ndarray,
               image_valid: np.ndarray | None = None, text_valid: np.ndarray | None = None) -> None:
        self._h["ids"].update("".join(f"{i}\0" for i in ids).encode())
        self._h["image"].update(memoryview(self._rows(image, image_valid, self.dims[0])).cast("B"))
        self._h["text"].update(memoryview(self._rows(text, text_valid, self.dims[1])).cast("B"))
        self.rows += len(ids)

    def hexdigest(self) -> str:
        h = hashlib.blake2b(digest_size=20)
        h.update(f"rows={self.rows};dims={self.dims}".encode())
        for k in ("ids", "image", "text"):
            h.update(self._h[k].digest())
        return h.hexdigest()


def content_digest(ids: Sequence[str], image: np.ndarray, text: np.ndarray) -> str:
    """The digest ``EmbeddingsWriter`` records, computed from matrices as ``read_embeddings`` returns them."""
    h = ContentHasher(image.shape[1], text.shape[1])
    h.update(ids, image, text)
    return h.hexdigest()


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
        # Dictionary encoding only for the string columns: on the float vectors it never pays (pyarrow falls
        # back to plain pages) and cost, on the full catalogue, 2.7 s of writing and ~0.25 s per read.
        schema = embeddings_schema(self._metadata)
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(
            self._tmp, schema, use_dictionary=[f.name for f in schema if pa.types.is_string(f.type)])
        self._hasher = ContentHasher(int(self._metadata["image_dim"]), int(self._metadata["text_dim"]))
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
        self._hasher.update(ids, image, text, image_valid, text_valid)
        self.rows += len(batch)

    def commit(self, extra_metadata: dict[str, str] | None = None) -> Path:
        """Close and move into place. Row counts and the content digest, known only at the end, go into
        the footer."""
        # ParquetWriter fixes the schema at open; the footer's key-value metadata can still be added.
        for k, v in {**(extra_metadata or {}), CONTENT_DIGEST_KEY: self._hasher.hexdigest()}.items():
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


def _fill(out: np.ndarray, col: pa.ChunkedArray, dim: int) -> None:
    """Copy a list<float32> column into ``out`` ([len(col), dim] float32): one row per entry, NaN where null."""
    row = 0
    for chunk in col.chunks:
        m = len(chunk)
        dst = out[row : row + m]
        row += m
        valid = None if chunk.null_count == 0 else chunk.is_valid().to_numpy(zero_copy_only=False)
        lengths = chunk.value_lengths().to_numpy(zero_copy_only=False)
        bad = (lengths != dim) if valid is None else (valid & (lengths != dim))
        if bad.any():
            raise ValueError(f"{int(bad.sum())} embeddings do not have the declared dimension {dim}")
        values = chunk.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
        if valid is None:
            dst[:] = values
        else:
            dst[~valid] = np.nan
            dst[valid] = values


def read_embeddings(path: str | os.PathLike) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Read a product_embeddings Parquet file.

    Returns ``(ids, image, text)``: ids as list[str] in file order; image float32 [n, image_dim]
    and text float32 [n, text_dim], with all-NaN rows where the embedding is null (missing or
    undecodable image; empty text). Dimensions come from the file's schema metadata, so an
    all-null column still has its declared width. Raises ValueError on a malformed file.

    The file is read one row group at a time straight into the two matrices: Arrow holds one row
    group (a few thousand rows) at a time and reuses its memory for the next, instead of a whole
    table of vectors beside the matrices and a combined copy of each column. Measured on the full
    catalogue's file (43.7k rows, 11 row groups, 277 MB of vectors), five fresh processes each:
    1.51-1.64 s before, 0.77-0.83 s now, and a peak resident size ~0.6 GB lower (most of the time
    saved was first touches of memory the whole-table read allocated).
    """
    meta = read_embedding_metadata(path)
    try:
        image_dim, text_dim = int(meta["image_dim"]), int(meta["text_dim"])
    except KeyError as exc:
        raise ValueError(f"{path} lacks embedding dimensions in its schema metadata") from exc
    with pq.ParquetFile(path) as pf:
        n = pf.metadata.num_rows
        ids: list[str] = []
        image = np.empty((n, image_dim), dtype=np.float32)
        text = np.empty((n, text_dim), dtype=np.float32)
        row = 0
        for g in range(pf.num_row_groups):
            part = pf.read_row_group(g, columns=["product_id", IMAGE_COLUMN, TEXT_COLUMN])
            m = part.num_rows
            ids.extend(part.column("product_id").to_pylist())
            _fill(image[row : row + m], part.column(IMAGE_COLUMN), image_dim)
            _fill(text[row : row + m], part.column(TEXT_COLUMN), text_dim)
            row += m
            del part
    # Arrow's allocator keeps freed pages for its next read; numpy cannot use them.
    pa.default_memory_pool().release_unused()
    return ids, image, text


def embedding_rows(path: str | os.PathLike) -> int:
    """Rows in the file, from its footer."""
    return pq.read_metadata(path).num_rows


def read_embedding_ids(path: str | os.PathLike) -> list[str]:
    """The file's product ids in file order (the vectors are not read)."""
    return pq.read_table(path, columns=["product_id"]).column("product_id").to_pylist()


def file_content_digest(path: str | os.PathLike, read: Callable[[], tuple] | None = None) -> tuple[str, str]:
    """(digest, how): the footer's ``content_digest`` when the writer recorded one, else the same
    digest computed from the vectors, which ``read`` returns as ``read_embeddings(path)`` does (a caller
    that keeps them passes its own loader, so a file without the key is read once)."""
    recorded = read_embedding_metadata(path).get(CONTENT_DIGEST_KEY)
    if recorded:
        return recorded, "recorded in the file's footer"
    ids, image, text = read() if read is not None else read_embeddings(path)
    return content_digest(ids, image, text), "computed from the vectors (the file records none)"
