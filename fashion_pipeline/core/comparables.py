"""Comparable catalogue products for a listing: nearest neighbours by embedding (faiss).

Pure code, no Dagster. `ComparablesIndex` holds one faiss index over catalogue products and a
metadata table (product_id, title, price_usd, source) in the same row order. Up to
``HNSW_MIN_ROWS`` rows it is an exact ``IndexFlatIP``; above, an ``IndexHNSWFlat`` (inner
product, M=32, efConstruction=64, efSearch=64): on the full development catalogue (34,103
products, 1,664 dimensions) that found 99.5% of the exact top 5 for 10,000 test listings, in
2.3 s instead of 12.9 s (2 loaded cores; benchmarks/results/comparables.md).

The vector
----------
A product has up to two embeddings that live in different, unaligned spaces (image and text,
see core.encoders). The searched vector is their concatenation, each part L2-normalised, with
weights chosen so that the inner product is the **mean cosine similarity over the modalities
the query has**:

- a catalogue row stores ``[img/|img| / sqrt(2), txt/|txt| / sqrt(2)]``; a modality it lacks is
  zeros (so a row with both has norm 1, a row with one has norm 1/sqrt(2));
- a query with both modalities uses the same vector: similarity = (cos_image + cos_text) / 2;
- a query with one modality puts ``sqrt(2) * v/|v|`` in that part and zeros in the other:
  similarity = the cosine on that modality alone (a text-only listing is compared by text with
  every catalogue row that has a text, regardless of their photos).

A catalogue modality the query has but the row lacks counts as similarity 0 for that part, so a
row missing a photo ranks below an equally close row with one for a listing that has a photo.
A row's own vector as a query therefore scores exactly 1 (up to float rounding). Rows with
neither embedding are not indexed; queries with neither get no comparables (None).

Storage: ``save(folder)`` writes ``index.faiss`` (faiss.write_index), ``items.parquet`` and
``comparables.json`` (dimensions, format, build facts); ``load(folder)`` checks they agree.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

MODALITIES = ("image", "text")
ITEM_COLUMNS = ("product_id", "title", "price_usd", "source")
INDEX_FILE = "index.faiss"
ITEMS_FILE = "items.parquet"
META_FILE = "comparables.json"
FORMAT_VERSION = 1
DEFAULT_K = 5
# Graph index (approximate) from this many catalogue rows; exact search below.
HNSW_MIN_ROWS = 10_000
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 64, 64
# Catalogue rows an index is built from: never the test split (it is the models' hold-out).
CATALOGUE_SPLITS = ("train", "validation")

# Why a listing has no comparables (counted by `comparables_columns`).
REASON_NO_INDEX = "no_index"
REASON_NO_EMBEDDING = "no_embedding"
REASON_DISABLED = "disabled"


class ComparablesDimensionError(ValueError):
    """Query embeddings do not have the dimensions the index was built with."""


def openblas_coretype_hint(cpuinfo: str | None = None) -> str | None:
    """The OpenBLAS kernel family this CPU supports, from /proc/cpuinfo flags (None if unknown).

    faiss-cpu 1.15.1 bundles OpenBLAS 0.3.15, which does not recognise recent Xeons (e.g. the
    "Intel Xeon Processor" of these VMs) and falls back to its generic "Prescott" kernels: flat
    search measured 15 GFLOPS there against 105 with SkylakeX kernels (benchmarks/results/
    comparables.md). Only families whose instructions the CPU reports are returned."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
    line = next((ln for ln in cpuinfo.splitlines() if ln.startswith("flags")), "")
    flags = set(line.partition(":")[2].split())
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "SkylakeX"
    if {"avx2", "fma"} <= flags:
        return "Haswell"
    return None


def load_faiss():
    """faiss, imported lazily (scoring without comparables must not need it). Before the first
    import, OPENBLAS_CORETYPE is set from the CPU's flags unless the environment sets it (see
    `openblas_coretype_hint`; numpy's own OpenBLAS is already loaded and unaffected)."""
    import os
    import sys

    if "faiss" not in sys.modules and "OPENBLAS_CORETYPE" not in os.environ:
        hint = openblas_coretype_hint()
        if hint:
            os.environ["OPENBLAS_CORETYPE"] = hint
    import faiss

    return faiss


def _unit(m: np.ndarray | None, n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``m`` L2-normalised (float32), and a mask of rows that had a usable vector
    (finite, non-zero). ``None`` means the modality is absent for every row."""
    if m is None:
        return np.zeros((n, dim), np.float32), np.zeros(n, bool)
    out = np.array(m, dtype=np.float32)  # one copy, normalised in place
    finite = np.isfinite(out).all(axis=1)
    out[~finite] = 0.0
    norms = np.linalg.norm(out, axis=1)
    ok = finite & (norms > 0)
    out[ok] /= norms[ok, None]
    out[~ok] = 0.0
    return out, ok


def _dims_of(previous: "ComparablesIndex", name: str, m: np.ndarray | None) -> int | None:
    """The width of modality ``name``: the given matrix's, else the previous index's."""
    return int(m.shape[1]) if m is not None else previous.dims.get(name)


def _catalogue_vectors(items: pd.DataFrame, image: np.ndarray | None, text: np.ndarray | None,
                       image_dim: int | None, text_dim: int | None
                       ) -> tuple[np.ndarray, pd.DataFrame, dict[str, int], dict[str, int]]:
    """The searched vectors of the catalogue rows that have an embedding (module docstring), those
    rows' items (cleaned ITEM_COLUMNS), the dimensions and the row counts `build` reports."""
    missing = [c for c in ITEM_COLUMNS if c not in items.columns]
    if missing:
        raise ValueError(f"catalogue items lack column(s) {missing}; need {list(ITEM_COLUMNS)}")
    n = len(items)
    dims = {"image": int(image.shape[1]) if image is not None else image_dim,
            "text": int(text.shape[1]) if text is not None else text_dim}
    for name, m in (("image", image), ("text", text)):
        if dims[name] is None:
            raise ValueError(f"no {name} embeddings and no {name}_dim: the index needs both dimensions")
        if m is not None and len(m) != n:
            raise ValueError(f"{len(m)} {name} embeddings for {n} catalogue items")
    img, has_img = _unit(image, n, dims["image"])
    txt, has_txt = _unit(text, n, dims["text"])
    keep = has_img | has_txt
    # Filled block by block, each freed as soon as it is copied (the full catalogue's vectors are
    # hundreds of MB, and faiss keeps its own copy).
    vectors = np.empty((int(keep.sum()), dims["image"] + dims["text"]), np.float32)
    vectors[:, : dims["image"]] = img[keep]
    del img
    vectors[:, dims["image"] :] = txt[keep]
    del txt
    vectors *= np.float32(1.0 / math.sqrt(len(MODALITIES)))
    kept = items.loc[keep, list(ITEM_COLUMNS)].reset_index(drop=True)
    kept["product_id"] = kept["product_id"].astype(str)
    kept["title"] = kept["title"].fillna("").astype(str)
    kept["price_usd"] = pd.to_numeric(kept["price_usd"], errors="coerce").astype(float)
    kept["source"] = kept["source"].astype(object).where(kept["source"].notna(), None)
    counts = {"rows_given": int(n), "rows_without_embedding": int((~keep).sum()),
              "rows_image_and_text": int((has_img & has_txt).sum()),
              "rows_image_only": int((has_img & ~has_txt).sum()), "rows_text_only": int((~has_img & has_txt).sum())}
    return vectors, kept, dims, counts


def _info(index, dims: dict[str, int], counts: dict[str, int], t0: float) -> dict:
    faiss = load_faiss()
    return {"format": FORMAT_VERSION, "metric": "inner product of weighted, L2-normalised image+text",
            "faiss_index": type(index).__name__, "faiss_version": getattr(faiss, "__version__", "?"),
            "size": int(index.ntotal), "dimension": int(index.d), "dims": dims, **counts,
            "build_seconds": round(time.perf_counter() - t0, 3)}


@dataclass
class ComparablesIndex:
    index: object  # faiss.IndexFlatIP, or IndexHNSWFlat from HNSW_MIN_ROWS rows
    items: pd.DataFrame  # ITEM_COLUMNS, row i = faiss id i
    dims: dict[str, int]  # {"image": d_image, "text": d_text}
    info: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, items: pd.DataFrame, image: np.ndarray | None, text: np.ndarray | None,
              image_dim: int | None = None, text_dim: int | None = None,
              hnsw_min_rows: int = HNSW_MIN_ROWS) -> "ComparablesIndex":
        """Index catalogue ``items`` (ITEM_COLUMNS; extra columns dropped) with their aligned image
        and text embeddings ([n, d], NaN rows = missing; either may be None if ``*_dim`` is given).
        Rows with neither embedding are left out and counted in ``info``."""
        t0 = time.perf_counter()
        vectors, kept, dims, counts = _catalogue_vectors(items, image, text, image_dim, text_dim)
        faiss = load_faiss()
        d = vectors.shape[1]
        if len(vectors) >= hnsw_min_rows:
            index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            index.hnsw.efSearch = HNSW_EF_SEARCH
        else:
            index = faiss.IndexFlatIP(d)
        if len(vectors):
            index.add(vectors)
        return cls(index, kept, dims, _info(index, dims, counts, t0))

    @classmethod
    def extend(cls, previous: "ComparablesIndex", items: pd.DataFrame, image: np.ndarray | None,
               text: np.ndarray | None, hnsw_min_rows: int = HNSW_MIN_ROWS) -> tuple["ComparablesIndex | None", str]:
        """``previous`` with the rows of ``items`` it lacks added, when that is what `build` would index:
        every product it holds is still in ``items`` with the same vector (titles, prices and sources
        are refreshed from ``items``), the dimensions agree, and the index kind stays the one `build`
        picks for the new size. Returns (index, how) or (None, why it must be rebuilt).

        The graph index (HNSW) is built by adding vectors one by one anyway; appending the new
        products to it is what a build does for its last rows. ``previous`` is modified in place."""
        t0 = time.perf_counter()
        vectors, kept, dims, counts = _catalogue_vectors(items, image, text, _dims_of(previous, "image", image),
                                                         _dims_of(previous, "text", text))
        if dims != previous.dims:
            return None, f"dimensions {dims} differ from the previous index's {previous.dims}"
        if kept["product_id"].duplicated().any():
            return None, "duplicate product ids in the catalogue"
        hnsw = hasattr(previous.index, "hnsw")
        if hnsw != (len(vectors) >= hnsw_min_rows):
            return None, f"{len(vectors)} products need the other index kind (graph from {hnsw_min_rows})"
        pos = pd.Series(np.arange(len(kept)), index=kept["product_id"].to_numpy())
        old = pos.reindex(previous.items["product_id"].astype(str).to_numpy()).to_numpy()
        if np.isnan(old).any():
            return None, f"{int(np.isnan(old).sum())} indexed products are no longer in the catalogue (or lost their embeddings)"
        old = old.astype(int)
        for s in range(0, len(old), 4096):  # compared block by block: faiss keeps its own copy
            block = old[s : s + 4096]
            stored = previous.index.reconstruct_n(s, len(block))
            if not np.allclose(stored, vectors[block], rtol=0, atol=1e-6):
                return None, "embeddings of indexed products changed"
        new = np.setdiff1d(np.arange(len(kept)), old)
        if hnsw:
            previous.index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        if len(new):
            previous.index.add(np.ascontiguousarray(vectors[new]))
        del vectors
        order = np.concatenate([old, new])
        info = _info(previous.index, dims, counts, t0)
        info["extended"] = {"kept": int(len(old)), "added": int(len(new))}
        return cls(previous.index, kept.iloc[order].reset_index(drop=True), dims, info), (
            f"added {len(new)} products to the {len(old)} of the previous index")

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @property
    def dimension(self) -> int:
        return int(self.index.d)

    # ----------------------------------------------------------------- search
    def query_vectors(self, image: np.ndarray | None, text: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Query vectors for listings' image / text embeddings ([n, d], NaN rows = missing; None
        = that modality missing everywhere) and a mask of rows that have at least one.

        Raises ComparablesDimensionError when a modality's width differs from the index's."""
        n = None
        for name, m in (("image", image), ("text", text)):
            if m is None:
                continue
            m = np.asarray(m)
            if m.ndim != 2 or m.shape[1] != self.dims[name]:
                raise ComparablesDimensionError(
                    f"{name} embeddings of shape {m.shape}: the comparables index was built with {name} "
                    f"dimension {self.dims[name]} (image {self.dims['image']}, text {self.dims['text']}). The "
                    f"listings were embedded with another encoder backend than the catalogue; embed them with the "
                    f"backend the index was built with, or rebuild the index (asset price_comparables).")
            if n is not None and len(m) != n:
                raise ValueError(f"{len(m)} {name} embeddings for {n} rows")
            n = len(m)
        if n is None:
            raise ValueError("query_vectors needs image or text embeddings")
        img, has_img = _unit(image, n, self.dims["image"])
        txt, has_txt = _unit(text, n, self.dims["text"])
        present = has_img.astype(np.float32) + has_txt.astype(np.float32)
        # sqrt(M) / (modalities present): the inner product with a catalogue row is the mean cosine.
        scale = np.where(present > 0, math.sqrt(len(MODALITIES)) / np.maximum(present, 1), 0).astype(np.float32)
        q = np.ascontiguousarray(np.hstack([img, txt]) * scale[:, None], dtype=np.float32)
        return q, present > 0

    def search_arrays(self, vectors: np.ndarray, k: int = DEFAULT_K,
                      batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """(similarities [n, k'], item rows [n, k']) with k' = min(k, size), most similar first;
        row -1 / similarity -inf where there is no result (all-zero query = no embedding)."""
        q = np.asarray(vectors, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dimension:
            raise ComparablesDimensionError(
                f"query vectors of shape {q.shape}: the comparables index has dimension {self.dimension} "
                f"(image {self.dims['image']} + text {self.dims['text']}); build queries with query_vectors()")
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        k = min(int(k), self.size)
        sims = np.full((len(q), k), -np.inf, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        if k == 0 or not len(q):
            return sims, ids
        nonzero = np.flatnonzero(np.any(q != 0, axis=1))
        for s in range(0, len(nonzero), batch_size):  # batched: faiss turns each batch into one GEMM
            rows = nonzero[s : s + batch_size]
            sims[rows], ids[rows] = self.index.search(np.ascontiguousarray(q[rows]), k)
        return sims, ids

    def search(self, vectors: np.ndarray, k: int = DEFAULT_K) -> list[list[dict]]:
        """The ``k`` most similar catalogue products per query vector (rows of ``vectors``, as made
        by `query_vectors`), most similar first: dicts with product_id, title, price_usd, source,
        similarity. An all-zero query row (no embedding) gets an empty list."""
        sims, ids = self.search_arrays(vectors, k)
        pid = self.items["product_id"].to_numpy()
        title = self.items["title"].to_numpy()
        price = self.items["price_usd"].to_numpy(dtype=float)
        source = self.items["source"].to_numpy()
        return [[{"product_id": pid[j], "title": title[j],
                  "price_usd": None if math.isnan(price[j]) else float(price[j]),
                  "source": source[j], "similarity": float(sims[r, c])}
                 for c, j in enumerate(ids[r]) if j >= 0]
                for r in range(len(ids))]

    def search_embeddings(self, image: np.ndarray | None, text: np.ndarray | None,
                          k: int = DEFAULT_K) -> list[list[dict] | None]:
        """`search` on listings' embeddings; None for a listing with neither embedding."""
        q, has = self.query_vectors(image, text)
        res = self.search(q, k)
        return [r if h else None for r, h in zip(res, has)]

    # ------------------------------------------------------------ save / load
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        load_faiss().write_index(self.index, str(folder / INDEX_FILE))
        self.items.to_parquet(folder / ITEMS_FILE, index=False)
        meta = {**self.info, "format": FORMAT_VERSION, "dims": self.dims, "size": self.size,
                "dimension": self.dimension, "item_columns": list(ITEM_COLUMNS)}
        (folder / META_FILE).write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "ComparablesIndex":
        folder = Path(folder)
        for f in (INDEX_FILE, ITEMS_FILE, META_FILE):
            if not (folder / f).is_file():
                raise FileNotFoundError(f"{folder / f} is missing: not a saved comparables index")
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{folder}: comparables format {meta.get('format')!r}, this code reads {FORMAT_VERSION}")
        index = load_faiss().read_index(str(folder / INDEX_FILE))
        if hasattr(index, "hnsw"):
            index.hnsw.efSearch = HNSW_EF_SEARCH
        items = pd.read_parquet(folder / ITEMS_FILE)
        dims = {k: int(v) for k, v in meta["dims"].items()}
        if index.d != sum(dims.values()) or index.ntotal != len(items):
            raise ValueError(f"{folder}: index ({index.ntotal} x {index.d}) does not match its metadata "
                             f"({len(items)} items, dims {dims})")
        items["source"] = items["source"].astype(object).where(items["source"].notna(), None)
        return cls(index, items, dims, meta)


def catalogue_items(products: pd.DataFrame, embeddings: tuple[list[str], np.ndarray, np.ndarray],
                    splits: tuple[str, ...] = CATALOGUE_SPLITS) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Priced catalogue rows of ``splits`` (never test by default) with their embeddings aligned:
    (items, image, text). Rows whose product has no embedding row get NaN vectors (the index
    leaves them out and counts them)."""
    df = products
    if "split" in df.columns:
        df = df[df["split"].astype(str).isin(splits)]
    price = pd.to_numeric(df["price_usd"], errors="coerce")
    ok = price.notna() & np.isfinite(price) & (price > 0)
    if "price_status" in df.columns:
        ok &= df["price_status"] == "ok"
    df = df[ok.to_numpy()].reset_index(drop=True)
    ids, image, text = embeddings
    pos = pd.Series(np.arange(len(ids)), index=pd.Index([str(i) for i in ids])).groupby(level=0).first()
    idx = pos.reindex(df["product_id"].astype(str)).to_numpy()
    have = ~np.isnan(idx)
    rows = idx[have].astype(int)
    img = np.full((len(df), image.shape[1]), np.nan, np.float32)
    txt = np.full((len(df), text.shape[1]), np.nan, np.float32)
    img[have], txt[have] = image[rows], text[rows]
    items = df.reindex(columns=list(ITEM_COLUMNS))
    return items, img, txt


def comparables_columns(index: ComparablesIndex | None, image: np.ndarray | None, text: np.ndarray | None,
                        n: int, k: int = DEFAULT_K) -> tuple[pd.DataFrame, dict]:
    """The scoring output's ``comparables`` (JSON list of k objects: product_id, title, price_usd,
    source, similarity) and ``comparables_median_price_usd`` for ``n`` listings, and counts:
    how many got comparables and, for the others, why not (no_index / no_embedding / disabled)."""
    comp = pd.Series([None] * n, dtype=object)
    median = np.full(n, np.nan)
    counts = {"k": int(k), "with_comparables": 0}
    reason = None
    if k <= 0:
        reason = REASON_DISABLED
    elif image is None and text is None:
        reason = REASON_NO_EMBEDDING
    elif index is None:
        reason = REASON_NO_INDEX
    if reason is not None:
        counts[f"none/{reason}"] = int(n)
        return pd.DataFrame({"comparables": comp, "comparables_median_price_usd": median}), counts
    q, has = index.query_vectors(image, text)
    sims, ids = index.search_arrays(q, k)
    found = ids >= 0
    prices = np.where(found, index.items["price_usd"].to_numpy(dtype=float)[np.maximum(ids, 0)], np.nan)
    with np.errstate(all="ignore"):
        priced = ~np.isnan(prices).all(axis=1)
        median[priced] = np.round(np.nanmedian(prices[priced], axis=1), 2)
    pid = index.items["product_id"].to_numpy()
    title = index.items["title"].to_numpy()
    source = index.items["source"].to_numpy()
    rounded_price, rounded_sim = np.round(prices, 2), np.round(sims.astype(float), 4)
    values = comp.tolist()
    for r in np.flatnonzero(has):
        values[r] = json.dumps([{"product_id": pid[j], "title": title[j],
                                 "price_usd": None if math.isnan(rounded_price[r, c]) else float(rounded_price[r, c]),
                                 "source": source[j], "similarity": float(rounded_sim[r, c])}
                                for c, j in enumerate(ids[r]) if j >= 0], ensure_ascii=False)
    median[~has] = np.nan
    no_emb = int((~has).sum())
    counts["with_comparables"] = int(n - no_emb)
    if no_emb:
        counts[f"none/{REASON_NO_EMBEDDING}"] = no_emb
    return pd.DataFrame({"comparables": pd.Series(values, dtype=object),
                         "comparables_median_price_usd": median}), counts


# --------------------------------------------------------------------------- model store
COMPARABLES_NAME = "price_comparables"  # model store name and asset name


def save_to_store(store, index: ComparablesIndex, price_model_version: str, extra: dict | None = None,
                  publish: bool = True) -> str:
    """Save ``index`` as a new version of COMPARABLES_NAME, tied to the price model version it
    serves (``features_spec["price_model_version"]``), and publish it."""
    version = store.save_files(COMPARABLES_NAME, index.save,
                               {k: index.info.get(k) for k in ("size", "dimension", "build_seconds")},
                               {"price_model_version": price_model_version, "dims": index.dims, **(extra or {})})
    if publish:
        store.publish(COMPARABLES_NAME, version)
    return version


def load_for_price_model(store, price_model_version: str | None) -> tuple[ComparablesIndex | None, dict | None, str]:
    """The comparables index built for ``price_model_version``: the published one if it was built
    for it, else the newest intact version that was. Returns (index, info, note); index None with
    the reason in ``note`` when there is none (never raises for a missing or damaged index)."""
    from .model_store import ModelCorruptError, ModelNotFoundError

    def built_for(info: dict | None) -> bool:
        return bool(info) and (info.get("features_spec") or {}).get("price_model_version") == price_model_version

    problems = []
    try:
        published = store.published(COMPARABLES_NAME)
    except (ModelCorruptError, ModelNotFoundError) as e:
        published = None
        problems.append(f"PUBLISHED: {e}")
    candidates = []
    if built_for(published):
        candidates.append(published["version"])
    candidates += [v for v in reversed(store.versions(COMPARABLES_NAME)) if v not in candidates]
    for v in candidates:
        try:
            info = store.info(COMPARABLES_NAME, v)
            if not built_for(info):
                continue
            folder, info = store.load_files(COMPARABLES_NAME, v)
            return ComparablesIndex.load(folder), info, f"{COMPARABLES_NAME} {v}"
        except (ModelCorruptError, ModelNotFoundError, OSError, ValueError) as e:
            problems.append(f"{v}: {e}")
    note = (f"no {COMPARABLES_NAME} index built for price model {price_model_version} in {getattr(store, 'root', '?')}"
            f" (materialize the asset '{COMPARABLES_NAME}')")
    if problems:
        note += "; unusable versions: " + "; ".join(problems)
    return None, None, note
