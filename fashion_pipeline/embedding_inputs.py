"""How the model assets find and read the product_embeddings Parquet: one place for all of them
(classifiers, clustering, the price model, the comparables index).

The file is located by the asset's configured path, else the path the latest product_embeddings
materialization recorded, else the embedding stage's default location; it is read with the
embedding stage's own reader (core.encoders.io) together with the encoder record every model
stores (core.encoders.record). The assets fingerprint it by the content digest in its footer and
read the vectors only when they recompute.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from fashion_pipeline.core.encoders.io import (content_digest, embedding_rows, file_content_digest,
                                               read_embedding_ids, read_embedding_metadata, read_embeddings)
from fashion_pipeline.core.encoders.record import encoder_record
from fashion_pipeline.paths import default_var_path, resolve

EMBEDDINGS_ASSET = dg.AssetKey("product_embeddings")


def embeddings_path(context, configured: str | None) -> Path:
    """The Parquet written by product_embeddings: configured path, else the path recorded in its
    latest materialization, else the embedding stage's default location."""
    if configured:
        return resolve(configured)
    event = context.instance.get_latest_materialization_event(EMBEDDINGS_ASSET)
    mat = event.asset_materialization if event is not None else None
    if mat is not None and "path" in mat.metadata:
        return Path(str(mat.metadata["path"].value))
    return resolve(default_var_path("embeddings", "product_embeddings.parquet"))


class CatalogueEmbeddings:
    """The embeddings file of the model assets: its encoder and content digest from the footer; the
    ids, image and text matrices (NaN rows where missing) read when first asked for, so an asset whose
    inputs are unchanged (it compares digests and re-emits its last output) never reads the vectors."""

    def __init__(self, path: Path, encoder: dict | None):
        self.path = Path(path)
        self.encoder = encoder
        self._ids: list[str] | None = None
        self._matrices: tuple[np.ndarray, np.ndarray] | None = None
        self._released = False
        self._digest: tuple[str, str] | None = None

    def _load(self) -> None:
        if self._released:
            raise RuntimeError(f"the embeddings read from {self.path} were already handed over")
        if self._matrices is None:
            ids, image, text = read_embeddings(self.path)
            if self._digest is not None and (actual := content_digest(ids, image, text)) != self._digest[0]:
                # The fingerprint was taken from the footer before the vectors were read: the file was
                # replaced in between (another run's product_embeddings), or its footer does not match
                # its vectors. A model trained now would carry the wrong fingerprint.
                raise RuntimeError(
                    f"{self.path} changed since this step fingerprinted it (digest {self._digest[0][:12]} "
                    f"{self._digest[1]}, vectors now {actual[:12]}): run the step again")
            self._ids, self._matrices = ids, (image, text)

    @property
    def ids(self) -> list[str]:
        if self._ids is None:
            self._ids = read_embedding_ids(self.path)
        return self._ids

    @property
    def arrays(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        self._load()
        return self._ids, *self._matrices

    @property
    def note(self) -> str:
        return f"read from {self.path}"

    def digest(self) -> str:
        """The content digest the writer recorded in the footer (computed from the vectors for a file
        without one): what the model assets' fingerprints use."""
        if self._digest is None:
            # A file without the footer key: its vectors are loaded here, once, and kept for the asset.
            self._digest = file_content_digest(self.path, lambda: self.arrays)
        return self._digest[0]

    def release(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """The arrays, handed over: this object keeps no reference, so whoever takes them can free
        them (hundreds of MB on the full catalogue) as soon as it has used them."""
        arrays = self.arrays
        self._ids, self._matrices, self._released = [], None, True
        return arrays

    def missing(self, products: pd.DataFrame) -> int:
        """How many ``products`` rows the file has no row for."""
        return int((~products["product_id"].isin(set(self.ids))).sum())

    def aligned(self, products: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, int]:
        """(image, text) with one row per ``products`` row (NaN where the file has none), and the
        number of products the file has no row for."""
        ids, image, text = self.arrays
        pos = {pid: i for i, pid in enumerate(ids)}
        rows = products["product_id"].map(pos)
        ok = rows.notna().to_numpy()
        take = rows[ok].astype(int).to_numpy()

        def align(arr: np.ndarray) -> np.ndarray:
            out = np.full((len(products), arr.shape[1]), np.nan, np.float32)
            out[ok] = arr[take]
            return out

        return align(image), align(text), int((~ok).sum())


def read_catalogue_embeddings(context, configured: str | None) -> tuple[CatalogueEmbeddings | None, str]:
    """The embeddings file (None when there is none) and a note saying where it came from or why not.
    Only the footer is read here; the vectors when the asset first uses them."""
    path = embeddings_path(context, configured)
    if not path.is_file():
        return None, f"no embeddings file at {path}"
    meta = read_embedding_metadata(path)
    emb = CatalogueEmbeddings(path, encoder_record(meta))
    context.log.info(f"embeddings from {path}: {embedding_rows(path)} rows")
    return emb, emb.note


def require_catalogue_embeddings(context, configured: str | None) -> CatalogueEmbeddings:
    """The embeddings file, or a clear error for assets that cannot work without it."""
    emb, note = read_catalogue_embeddings(context, configured)
    if emb is None:
        raise FileNotFoundError(f"product_embeddings Parquet not found ({note}): materialize product_embeddings first")
    return emb
