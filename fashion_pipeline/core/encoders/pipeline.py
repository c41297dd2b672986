"""Embed a product table into the product_embeddings Parquet file, incrementally.

Stages (memory stays bounded by a chunk of rows plus a batch of images, whatever the table size):
 1. Key every row: sha256 of its image bytes (read in a thread pool) and of its text.
 2. Ask the per-encoder caches which keys they already hold intact (corrupt entries are dropped).
 3. Encode only the missing unique keys: texts in batches; images decoded + preprocessed by a
    torch DataLoader's worker processes while the main process runs the model; every batch is
    committed to the cache as soon as it is encoded (a killed run keeps its progress).
 4. Stream rows in chunks from the caches into Parquet row groups (temp file, then os.replace).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from fashion_pipeline.core.readers.file_memo import FileMemo
from fashion_pipeline.core.threads import map_chunked

from .base import EmbeddingBackend
from .cache import EmbeddingCache
from .images import decode_image, read_image_bytes
from .io import EmbeddingsWriter
from .product_text import build_texts, text_sha256

log = logging.getLogger(__name__)

EMPTY_TEXT = "empty_text"
NON_FINITE = "non_finite_embedding"


@dataclass
class ModalityStats:
    rows: int = 0
    encoded_rows: int = 0  # rows whose vector was computed in this run
    reused_rows: int = 0  # rows served from the cache
    failed_rows: Counter = field(default_factory=Counter)  # reason -> rows without a vector
    converted_rows: Counter = field(default_factory=Counter)  # image mode conversions (images only)
    unique_encoded: int = 0  # distinct inputs sent through the model
    corrupt_cache_entries: int = 0
    cache_reset: str | None = None
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def place(self, key, missing_reason, vecs: dict, cached, failed: dict, conversions: dict | None = None):
        """One row's (vector or None, status), counted: ``key`` None -> ``missing_reason``; a vector
        in ``vecs`` -> "reused" (it was in the cache before this run) or "ok"; otherwise the
        reason it failed to encode (or could not be read back from the cache)."""
        if key is None:
            reason, vec = missing_reason, None
        elif key in vecs:
            reason, vec = ("reused" if key in cached else "ok"), vecs[key]
        else:
            reason, vec = failed.get(key, "cache_read_failed"), None
        if vec is None:
            self.failed_rows[reason] += 1
        elif reason == "reused":
            self.reused_rows += 1
        else:
            self.encoded_rows += 1
            if conversions and key in conversions:
                self.converted_rows[conversions[key]] += 1
        return vec, reason

    @property
    def per_second(self) -> float:
        return self.unique_encoded / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "rows": self.rows,
            "encoded_rows": self.encoded_rows,
            "reused_rows": self.reused_rows,
            "failed_rows": int(sum(self.failed_rows.values())),
            "failed_by_reason": dict(sorted(self.failed_rows.items())),
            "converted_by_mode": dict(sorted(self.converted_rows.items())),
            "unique_encoded": self.unique_encoded,
            "corrupt_cache_entries": self.corrupt_cache_entries,
            "cache_reset": self.cache_reset,
            "encode_seconds": round(self.seconds, 2),
            "encode_cpu_seconds": round(self.cpu_seconds, 2),
            "per_second": round(self.per_second, 1),
        }


@dataclass
class EmbeddingReport:
    path: Path
    rows: int
    image: ModalityStats
    text: ModalityStats
    backend: dict[str, str]
    wall_seconds: float
    sample_ids: list[str]
    sample_image: np.ndarray  # [k, image_dim], NaN rows where missing
    sample_text: np.ndarray  # [k, text_dim]


class _ImageDataset(Dataset):
    """(key, path) pairs -> (key, pixels, conversion, error); decoding happens in loader workers."""

    def __init__(self, items: list[tuple[str, str]], transform):
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        key, path = self.items[i]
        raw = read_image_bytes(path)
        if raw.error is not None:
            return key, None, None, raw.error
        im, conversion, error = decode_image(raw.data)
        if error is not None:
            return key, None, None, error
        return key, self.transform(im), conversion, None


def _collate(batch):
    keys, pixels, conversions, failed = [], [], [], []
    for key, px, conv, err in batch:
        if err is not None:
            failed.append((key, err))
            continue
        keys.append(key)
        pixels.append(px)
        conversions.append(conv)
    stacked = torch.stack(pixels) if pixels else None
    return keys, stacked, conversions, failed


class _Unread(Exception):
    """An image that could not be read: its error is returned, never remembered in the key memo."""


def _image_sha256(path) -> str:
    r = read_image_bytes(path)  # the bytes are not kept
    if r.error is not None:
        raise _Unread(r.error)
    return r.sha256


# The photos' keys (sha256 of their bytes) by file size and mtime, beside the embedding cache (its sweep removes
# only *.sqlite files): written by the embedding stage, read by the listing scorer (`scoring.encoder_embedder`).
# No code change alters a sha256, so the version is a constant.
IMAGE_KEY_MEMO = "image_keys.parquet"
IMAGE_KEY_VERSION = "sha256-of-file-bytes-1"
IMAGE_KEY_KIND = "image_sha256"


def image_key_memo(cache_dir: str | os.PathLike, fresh: bool = False) -> FileMemo:
    """The photo key memo of the embedding cache ``cache_dir`` (`core.readers.file_memo`)."""
    return FileMemo(Path(cache_dir) / IMAGE_KEY_MEMO, version=IMAGE_KEY_VERSION, fresh=fresh)


def _image_key(path, memo: FileMemo | None) -> tuple[str | None, str | None]:
    """(sha256, None) or (None, error): from ``memo`` while the file's size and mtime are those it
    remembers (`core.readers.file_memo`), else read and hashed."""
    try:
        if memo is None or not isinstance(path, (str, os.PathLike)) or not str(path).strip():
            return _image_sha256(path), None
        return memo.lookup(IMAGE_KEY_KIND, path, lambda: _image_sha256(path)), None
    except _Unread as e:
        return None, str(e)


def _hash_images(paths: list, workers: int, memo: FileMemo | None = None) -> list[tuple[str | None, str | None]]:
    """(sha256, error) per path, read on ``workers`` threads (core.threads.map_chunked).
    ``memo``: the keys of the last run's unchanged files are taken from it instead of read."""
    return map_chunked(lambda p: _image_key(p, memo), paths, workers)


def _cached_vectors(cache: EmbeddingCache, kept: dict[str, np.ndarray], keys) -> dict[str, np.ndarray]:
    """The vectors of ``keys`` (None: no key): from ``kept`` where the cache check kept them, else read."""
    want = [k for k in keys if k]
    out = {k: kept[k] for k in want if k in kept}
    rest = [k for k in want if k not in out]
    if rest:
        out.update(cache.get_many(rest))
    return out


def embed_products(
    products: pd.DataFrame,
    backend: EmbeddingBackend,
    output_path: str | Path,
    cache_dir: str | Path,
    attributes: pd.DataFrame | None = None,
    image_batch_size: int = 64,
    text_batch_size: int = 256,
    loader_workers: int = 1,
    io_threads: int = 8,
    chunk_rows: int = 4096,
    sample_size: int = 2000,
    progress: Callable[[str], None] | None = None,
    key_memo: FileMemo | None = None,
    keep_cached_bytes: int = 512 << 20,
) -> EmbeddingReport:
    """Write image + text embeddings of every row of ``products`` to ``output_path``.

    ``products`` needs product_id, title; uses description, colour and image_path when present.
    ``attributes`` is the optional product_attributes frame (see text.build_texts).
    ``key_memo``: image keys (sha256 of the bytes) of files unchanged since the last run, which then
    are not read to be keyed (the caller saves it).
    ``keep_cached_bytes``: at most this many bytes of cached vectors are held between the cache check
    and the output (the rest is read again, a chunk at a time, while the file is written).
    Rows keep their input order; duplicated product_ids are an error (they would make the
    file ambiguous for joins).
    """
    say = progress or log.info
    t_start = time.perf_counter()
    if "product_id" not in products.columns or "title" not in products.columns:
        raise ValueError("products needs product_id and title columns")
    dup = products["product_id"].duplicated()
    if dup.any():
        raise ValueError(f"{int(dup.sum())} duplicated product_id values, e.g. {products['product_id'][dup].iloc[0]!r}")
    n = len(products)
    ids = products["product_id"].astype(str).tolist()
    img_stats, txt_stats = ModalityStats(rows=n), ModalityStats(rows=n)

    # 1. keys
    texts = build_texts(products, attributes)
    text_keys: list[str | None] = [text_sha256(t) if t.strip() else None for t in texts]
    paths = products["image_path"].tolist() if "image_path" in products.columns else [None] * n
    hashed = _hash_images(paths, io_threads, memo=key_memo)
    image_keys: list[str | None] = [sha for sha, _ in hashed]
    image_error: dict[int, str] = {i: err for i, (_, err) in enumerate(hashed) if err is not None}
    del hashed
    say(f"keyed {n} products: {n - len(image_error)} readable images, {sum(k is not None for k in text_keys)} texts")

    img_cache = EmbeddingCache(cache_dir, "image", backend.image.identity, backend.image.dim)
    txt_cache = EmbeddingCache(cache_dir, "text", backend.text.identity, backend.text.dim)
    img_stats.cache_reset, txt_stats.cache_reset = img_cache.reset_reason, txt_cache.reset_reason
    writer = None
    try:
        # 2. what the caches already hold; the vectors checked are kept for step 4 (up to keep_cached_bytes)
        # instead of being read from the cache a second time (~2.4 s of a +1% retrain on the full data).
        img_kept: dict[str, np.ndarray] = {}
        txt_kept: dict[str, np.ndarray] = {}
        img_cached, img_stats.corrupt_cache_entries = img_cache.validate(
            (k for k in image_keys if k), keep=img_kept, keep_bytes=keep_cached_bytes)
        room = keep_cached_bytes - sum(v.nbytes for v in img_kept.values())
        txt_cached, txt_stats.corrupt_cache_entries = txt_cache.validate(
            (k for k in text_keys if k), keep=txt_kept, keep_bytes=room)

        # 3a. texts
        text_todo: dict[str, str] = {}
        for k, t in zip(text_keys, texts):
            if k is not None and k not in txt_cached:
                text_todo.setdefault(k, t)
        say(f"texts: {len(txt_cached)} cached, {len(text_todo)} to encode")
        t0, c0 = time.perf_counter(), time.process_time()
        # Longest first, so each batch holds texts of similar length (less padding) and any slow batch shows early.
        todo_items = sorted(text_todo.items(), key=lambda kv: -len(kv[1]))
        text_failed: dict[str, str] = {}
        for b in range(0, len(todo_items), text_batch_size):
            batch = todo_items[b : b + text_batch_size]
            vecs = backend.encode_text_batch([t for _, t in batch])
            finite = np.isfinite(vecs).all(axis=1)
            text_failed.update({k: NON_FINITE for (k, _), ok in zip(batch, finite) if not ok})
            txt_cache.put_many([k for (k, _), ok in zip(batch, finite) if ok], vecs[finite])
            txt_stats.unique_encoded += int(finite.sum())
            if (b // text_batch_size) % 20 == 0:
                say(f"texts encoded {b + len(batch)}/{len(todo_items)}")
        txt_stats.seconds, txt_stats.cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        del todo_items, text_todo

        # 3b. images
        image_todo: dict[str, str] = {}
        for i, k in enumerate(image_keys):
            if k is not None and k not in img_cached:
                image_todo.setdefault(k, paths[i])
        say(f"images: {len(img_cached)} cached, {len(image_todo)} to encode")
        image_failed: dict[str, str] = {}
        conversions: dict[str, str] = {}
        t0, c0 = time.perf_counter(), time.process_time()
        if image_todo:
            loader = DataLoader(
                _ImageDataset(list(image_todo.items()), backend.image_transform()),
                batch_size=image_batch_size,
                num_workers=loader_workers,
                collate_fn=_collate,
                pin_memory=backend.device.startswith("cuda"),  # GPU path: async host->device copies
                prefetch_factor=4 if loader_workers > 0 else None,
                persistent_workers=False,
            )
            done = 0
            for bi, (keys, pixels, convs, failed) in enumerate(loader):
                image_failed.update(dict(failed))
                if pixels is not None:
                    vecs = backend.encode_image_batch(pixels)
                    finite = np.isfinite(vecs).all(axis=1)
                    image_failed.update({k: NON_FINITE for k, ok in zip(keys, finite) if not ok})
                    ok_keys = [k for k, ok in zip(keys, finite) if ok]
                    img_cache.put_many(ok_keys, vecs[finite])
                    img_stats.unique_encoded += len(ok_keys)
                    conversions.update({k: c for k, c in zip(keys, convs) if c})
                done += len(keys) + len(failed)
                if bi % 20 == 0:
                    elapsed = time.perf_counter() - t0
                    say(f"images encoded {done}/{len(image_todo)} ({done / max(elapsed, 1e-9):.0f}/s)")
        img_stats.seconds, img_stats.cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        # Conversions of images reused from the cache are not re-detected (they are not decoded again).
        del image_todo

        # 4. stream rows into Parquet
        meta = backend.describe()
        meta.update({"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": str(n)})
        writer = EmbeddingsWriter(output_path, meta)
        rng = np.random.default_rng(0)
        sample_idx = set(rng.choice(n, size=min(sample_size, n), replace=False).tolist()) if n else set()
        s_ids, s_img, s_txt = [], [], []
        for start in range(0, n, chunk_rows):
            stop = min(start + chunk_rows, n)
            m = stop - start
            ikeys, tkeys = image_keys[start:stop], text_keys[start:stop]
            ivecs = _cached_vectors(img_cache, img_kept, ikeys)
            tvecs = _cached_vectors(txt_cache, txt_kept, tkeys)
            image = np.zeros((m, backend.image.dim), dtype=np.float32)
            text = np.zeros((m, backend.text.dim), dtype=np.float32)
            ivalid, tvalid = np.zeros(m, dtype=bool), np.zeros(m, dtype=bool)
            istatus, tstatus = [], []
            for j in range(m):
                i = start + j
                vec, reason = img_stats.place(ikeys[j], image_error.get(i), ivecs, img_cached, image_failed, conversions)
                if vec is not None:
                    image[j], ivalid[j] = vec, True
                istatus.append(reason)
                vec, treason = txt_stats.place(tkeys[j], EMPTY_TEXT, tvecs, txt_cached, text_failed)
                if vec is not None:
                    text[j], tvalid[j] = vec, True
                tstatus.append(treason)
                if i in sample_idx:
                    s_ids.append(ids[i])
                    s_img.append(image[j] if ivalid[j] else np.full(backend.image.dim, np.nan, np.float32))
                    s_txt.append(text[j] if tvalid[j] else np.full(backend.text.dim, np.nan, np.float32))
            writer.write(ids[start:stop], image, ivalid, text, tvalid, istatus, tstatus)
        writer.commit(
            {
                "image_rows_with_embedding": str(img_stats.encoded_rows + img_stats.reused_rows),
                "text_rows_with_embedding": str(txt_stats.encoded_rows + txt_stats.reused_rows),
            }
        )
        writer = None
    finally:
        if writer is not None:
            writer.abort()
        img_cache.close()
        txt_cache.close()
    wall = time.perf_counter() - t_start
    say(
        f"wrote {n} rows to {output_path} in {wall:.1f}s: images encoded {img_stats.encoded_rows}, "
        f"reused {img_stats.reused_rows}, failed {dict(img_stats.failed_rows)}; texts encoded "
        f"{txt_stats.encoded_rows}, reused {txt_stats.reused_rows}, failed {dict(txt_stats.failed_rows)}"
    )
    return EmbeddingReport(
        path=Path(output_path),
        rows=n,
        image=img_stats,
        text=txt_stats,
        backend=backend.describe(),
        wall_seconds=wall,
        sample_ids=s_ids,
        sample_image=np.array(s_img, dtype=np.float32).reshape(-1, backend.image.dim),
        sample_text=np.array(s_txt, dtype=np.float32).reshape(-1, backend.text.dim),
    )
