"""Feature building shared by the classifiers and by scoring.

A product *frame* is a pandas DataFrame with one row per product and (some of) the columns
``title``, ``description``, ``brand`` (clean_products), ``image_embedding`` and
``text_embedding`` (one numpy vector or None per row; see :func:`with_embeddings`), and
optionally product_attributes columns (``materials`` as a JSON list string, ``pattern``,
``fit``, ``occasion``, ``style``).

Input regimes say what a listing shows, so a model can be evaluated on what it would really
see at scoring time:

- ``full``:   image + title + description + brand (+ text embedding, + extracted attributes)
- ``sparse``: image + title only.  The stored text embedding is dropped because the embedding
  stage encodes title *and* description together; attributes are dropped because they are
  extracted from the description.
- ``image``:  image embedding only.

:class:`ProductFeaturizer` is sklearn-style (``fit`` / ``transform``), fitted on training rows
only (it refuses a frame whose ``split`` column holds anything but "train"), and picklable.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.decomposition import PCA, TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer

from fashion_pipeline.core.sparse_blocks import dense_csr
from fashion_pipeline.core.token_counts import TokenCounts, memo_for, tfidf_transform


@dataclass(frozen=True)
class Regime:
    name: str
    title: bool
    description: bool
    brand: bool
    image: bool
    text_embedding: bool
    attributes: bool


REGIMES: dict[str, Regime] = {
    "full": Regime("full", title=True, description=True, brand=True, image=True, text_embedding=True, attributes=True),
    "sparse": Regime("sparse", title=True, description=False, brand=False, image=True, text_embedding=False, attributes=False),
    "image": Regime("image", title=False, description=False, brand=False, image=True, text_embedding=False, attributes=False),
}

# Extracted attributes the classifiers' featurizer reads (single values, and lists as JSON).
CLASSIFIER_ATTRIBUTE_COLUMNS = ("pattern", "fit", "occasion", "style")
LIST_ATTRIBUTE_COLUMNS = ("materials",)


def get_regime(name: str) -> Regime:
    try:
        return REGIMES[name]
    except KeyError:
        raise ValueError(f"unknown input regime {name!r}; expected one of {sorted(REGIMES)}") from None


def with_embeddings(products: pd.DataFrame, ids, image: np.ndarray | None, text: np.ndarray | None) -> pd.DataFrame:
    """Join embedding arrays (as returned by ``read_embeddings``) onto products by product_id.

    Products without an embedding row get None; NaN image rows (missing image) become None.
    """
    out = products.copy()
    pos = {pid: i for i, pid in enumerate(ids)}
    rows = out["product_id"].map(pos)
    for col, arr in (("image_embedding", image), ("text_embedding", text)):
        if arr is None:
            out[col] = None
            continue
        vals = []
        for r in rows:
            if pd.isna(r):
                vals.append(None)
                continue
            v = arr[int(r)]
            vals.append(None if not np.all(np.isfinite(v)) else v)
        out[col] = pd.Series(vals, index=out.index, dtype=object)
    return out


def embedding_matrix(frame: pd.DataFrame, column: str, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stack an embedding column into float32 [n, d]; missing rows are zeros. Returns (matrix, present mask).
    A row with a non-finite value counts as missing; a row of another length is an error."""
    if column not in frame.columns:
        if dim is None:
            raise ValueError(f"frame has no column {column!r} and no dimension was given")
        return np.zeros((len(frame), dim), np.float32), np.zeros(len(frame), bool)
    vals = frame[column].to_numpy(dtype=object)
    present = np.fromiter((v is not None and not (np.isscalar(v) and pd.isna(v)) for v in vals), bool, len(vals))
    rows = np.flatnonzero(present)
    if dim is None:
        if not len(rows):
            raise ValueError(f"column {column!r} has no embeddings and no dimension was given")
        dim = len(vals[rows[0]])
    if not len(rows):
        return np.zeros((len(vals), dim), np.float32), present
    bad = next((i for i in rows if np.shape(vals[i]) != (dim,)), None)
    if bad is not None:
        raise ValueError(f"{column} row {bad} has shape {np.shape(vals[bad])}, expected ({dim},)")
    # One C-level stack, a zero row standing in for each missing one (a per-row copy loop into a
    # preallocated matrix took ~0.25 s per 43k rows of 1280 columns; this ~0.05 s).
    zero = np.zeros(dim, np.float32)
    out = np.stack([v if p else zero for v, p in zip(vals, present)]).astype(np.float32, copy=False)
    finite = np.isfinite(out).all(axis=1)
    if not finite.all():
        out[~finite] = 0.0
        present &= finite
    return out, present


def _l2(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-8)


def _text(frame: pd.DataFrame, col: str) -> pd.Series:
    if col not in frame.columns:
        return pd.Series([""] * len(frame), index=frame.index)
    return frame[col].fillna("").astype(str)


def _attr_tokens(frame: pd.DataFrame) -> list[list[str]]:
    toks: list[list[str]] = [[] for _ in range(len(frame))]
    for col in CLASSIFIER_ATTRIBUTE_COLUMNS:
        if col in frame.columns:
            for i, v in enumerate(frame[col].tolist()):
                if isinstance(v, str) and v:
                    toks[i].append(f"{col}={v.lower()}")
    for col in LIST_ATTRIBUTE_COLUMNS:
        if col in frame.columns:
            for i, v in enumerate(frame[col].tolist()):
                if isinstance(v, str) and v:
                    try:
                        items = json.loads(v)
                    except ValueError:
                        items = []
                    toks[i].extend(f"{col}={str(x).lower()}" for x in items if x)
    return toks


def _brand_token(brand: str) -> str:
    # One token per brand, so "United Colors of Benetton" is not three unrelated words.
    return "brand_" + re.sub(r"\W+", "_", brand.lower()) if brand else ""


def _require_train_only(frame: pd.DataFrame) -> None:
    if "split" in frame.columns:
        bad = frame["split"][frame["split"] != "train"]
        if len(bad):
            raise ValueError(
                f"featurizer fit on {len(bad)} non-train rows (splits {sorted(bad.unique())}); fit on train rows only"
            )


KINDS = ("sparse", "nonneg", "dense", "wide")


class ProductFeaturizer:
    """TF-IDF (word + char n-grams) + embeddings + attribute one-hots for one input regime.

    ``transform(frame, kind)`` returns

    - ``"sparse"``: CSR [tfidf blocks | PCA(image) | has_image | text emb (L2) | attributes] for
      linear models;
    - ``"nonneg"``: tfidf, the raw L2 image embedding (EfficientNet's pooled features are
      post-ReLU, so non-negative), attributes; no text embedding (negative values): naive Bayes;
    - ``"dense"``: float32 [TruncatedSVD(tfidf) | PCA(image) | PCA(text emb) | attributes |
      has_image] for tree ensembles and kNN;
    - ``"wide"``: like dense but with the full L2-normalised image and text embeddings (no PCA),
      for the neural heads.
    """

    def __init__(
        self,
        regime: str = "full",
        word_max_features: int = 50_000,
        char_max_features: int = 50_000,
        desc_max_features: int = 30_000,
        svd_components: int = 128,
        image_components: int = 128,
        text_components: int = 64,
        image_weight: float = 1.0,
        seed: int = 0,
    ):
        self.regime = regime
        self.word_max_features = word_max_features
        self.char_max_features = char_max_features
        self.desc_max_features = desc_max_features
        self.svd_components = svd_components
        self.image_components = image_components
        self.text_components = text_components
        self.image_weight = image_weight
        self.seed = seed

    # -- text views ---------------------------------------------------------------------------
    def _title_text(self, frame: pd.DataFrame) -> pd.Series:
        r = get_regime(self.regime)
        t = _text(frame, "title")
        if r.brand:
            t = t + " " + _text(frame, "brand").map(_brand_token)
        return t

    def fit(self, frame: pd.DataFrame, y=None, kinds=KINDS, shared: dict | None = None) -> "ProductFeaturizer":
        """Fit on train rows for the feature ``kinds`` it will be asked for (default: all four).
        The TruncatedSVD of the TF-IDF ('dense', 'wide') and the PCA of the text embedding
        ('dense') are fitted only when a kind that reads them is named; asking a featurizer for
        a kind it was not fitted for is an error. ``shared``: see `fit_transform_kinds`."""
        self._fit(frame, kinds, shared)
        return self

    def fit_transform_kinds(self, frame: pd.DataFrame, kinds, shared: dict | None = None) -> dict:
        """``fit(frame, kinds=kinds)`` then ``transform_kinds(frame, kinds)``, with each training
        text tokenised once (fit, the SVD's input and the transform otherwise tokenise it three
        times); the same features bit for bit.

        ``shared``: a dict handed to the featurizers of several regimes fitted on the *same* frame
        object (one leaderboard run): the image embedding's PCA, identical for every regime (same
        rows, components and seed), is fitted once and the fitted estimator shared."""
        tf = self._fit(frame, kinds, shared)
        b = self.blocks(frame, tfidf=(tf,))
        return {k: self._assemble(b, k) for k in kinds}

    def _image_pca(self, frame: pd.DataFrame, rows: np.ndarray, k: int, shared: dict | None) -> PCA:
        """PCA(k) of the L2-normalised image ``rows`` of ``frame``, through ``shared`` when given."""
        key = ("image_pca", id(frame), k, self.seed)
        if shared is not None and key in shared and shared[key][0] is frame:
            return shared[key][1]
        pca = PCA(k, random_state=self.seed).fit(rows)
        if shared is not None:
            shared[key] = (frame, pca)  # the frame is kept: its id stays its own while the dict lives
        return pca

    def _fit(self, frame: pd.DataFrame, kinds=KINDS, shared: dict | None = None):
        """Fit; returns the training rows' TF-IDF (for `fit_transform_kinds`; not kept). Each
        vectorizer fits through a tokenisation memo (core.token_counts), so computing that
        TF-IDF for the SVD does not tokenise the texts again; the memos are dropped on return
        (unless they are an active `token_caches` block's)."""
        _require_train_only(frame)
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown feature kinds {unknown}; expected some of {list(KINDS)}")
        self.kinds_ = tuple(k for k in KINDS if k in set(kinds))
        r = get_regime(self.regime)
        self.regime_ = r
        self.n_fit_rows_ = len(frame)
        self.vectorizers_: dict[str, TfidfVectorizer] = {}
        memos: dict[str, TokenCounts] = {}

        def fit_vectorizer(name: str, vec: TfidfVectorizer, texts: pd.Series) -> None:
            memos[name] = memo_for(vec)  # the active token_caches block's, kept between runs; else a fresh one
            self.vectorizers_[name] = memos[name].fit(vec, texts)

        if r.title:
            fit_vectorizer("title_word", TfidfVectorizer(
                ngram_range=(1, 2), min_df=2, max_features=self.word_max_features, sublinear_tf=True, dtype=np.float32
            ), self._title_text(frame))
            fit_vectorizer("title_char", TfidfVectorizer(
                analyzer="char_wb", ngram_range=(2, 5), min_df=3, max_features=self.char_max_features,
                sublinear_tf=True, dtype=np.float32,
            ), _text(frame, "title"))
        if r.description:
            desc = _text(frame, "description")
            if (desc.str.len() > 0).sum() >= 2:
                fit_vectorizer("description_word", TfidfVectorizer(
                    ngram_range=(1, 2), min_df=2, max_features=self.desc_max_features, sublinear_tf=True,
                    dtype=np.float32,
                ), desc)
        self.attr_vocab_: list[str] = []
        if r.attributes:
            counts = Counter(t for toks in _attr_tokens(frame) for t in set(toks))
            self.attr_vocab_ = sorted(t for t, c in counts.items() if c >= 2)
        self.image_dim_ = None
        self.text_dim_ = None
        tf = self._tfidf(frame, memos)
        self.svd_ = None
        if tf is not None and tf.shape[1] > self.svd_components and {"dense", "wide"} & set(self.kinds_):
            self.svd_ = TruncatedSVD(self.svd_components, random_state=self.seed, algorithm="randomized", n_iter=4)
            self.svd_.fit(tf)
        if r.image:
            img, present = embedding_matrix(frame, "image_embedding")
            self.image_dim_ = img.shape[1]
            imgn = _l2(img)
            self.image_pca_ = None
            k = min(self.image_components, img.shape[1], max(int(present.sum()) - 1, 1))
            if present.sum() > k:
                self.image_pca_ = self._image_pca(frame, imgn[present], k, shared)
        has_text = "text_embedding" in frame.columns and frame["text_embedding"].notna().any()
        if r.text_embedding and has_text:  # no text embeddings at all: the regime runs without them
            txt, present = embedding_matrix(frame, "text_embedding")
            self.text_dim_ = txt.shape[1]
            self.text_pca_ = None
            k = min(self.text_components, txt.shape[1])
            if present.sum() > k and "dense" in self.kinds_:
                self.text_pca_ = PCA(k, random_state=self.seed).fit(_l2(txt)[present])
        self.fit_digest_ = self._fitted_digest()
        return tf

    def _fitted_digest(self) -> str:
        """A digest of everything ``transform`` reads: two featurizers with the same digest give the
        same features (the classifiers of one training run share one per regime; scoring then
        transforms a listing batch once for all of them, see :func:`shared_transform`)."""
        h = hashlib.sha256()
        h.update(json.dumps([self.regime, self.word_max_features, self.char_max_features, self.desc_max_features,
                             self.svd_components, self.image_components, self.text_components, self.image_weight,
                             self.seed, self.image_dim_, self.text_dim_, self.attr_vocab_, self.kinds_],
                            default=str).encode())
        for name in sorted(self.vectorizers_):
            vec = self.vectorizers_[name]
            h.update(json.dumps([name, vec.get_params(deep=False)], sort_keys=True, default=str).encode())
            h.update("\n".join(sorted(vec.vocabulary_, key=vec.vocabulary_.get)).encode())  # term per column
            h.update(np.ascontiguousarray(vec.idf_).tobytes())
        for est in (self.svd_, getattr(self, "image_pca_", None), getattr(self, "text_pca_", None)):
            for attr in ("components_", "mean_"):
                if est is not None and hasattr(est, attr):
                    h.update(np.ascontiguousarray(getattr(est, attr)).tobytes())
            h.update(b"|")
        return h.hexdigest()

    def _tfidf(self, frame: pd.DataFrame, memos: dict | None = None):
        blocks = []
        for name, vec in self.vectorizers_.items():
            if name.startswith("title_word"):
                texts = self._title_text(frame)
            elif name == "title_char":
                texts = _text(frame, "title")
            elif name == "description_word":
                texts = _text(frame, "description")
            else:
                continue
            blocks.append(memos[name].transform(vec, texts) if memos and name in memos else tfidf_transform(vec, texts))
        return sp.hstack(blocks, format="csr", dtype=np.float32) if blocks else None

    def _attrs(self, frame: pd.DataFrame) -> sp.csr_matrix:
        index = {t: j for j, t in enumerate(self.attr_vocab_)}
        rows, cols = [], []
        for i, toks in enumerate(_attr_tokens(frame) if self.attr_vocab_ else []):
            for t in set(toks):
                if t in index:
                    rows.append(i)
                    cols.append(index[t])
        return sp.csr_matrix(
            (np.ones(len(rows), np.float32), (rows, cols)), shape=(len(frame), len(self.attr_vocab_)), dtype=np.float32
        )

    def blocks(self, frame: pd.DataFrame, tfidf: tuple | None = None) -> dict[str, object]:
        """The raw, unreduced feature blocks of this regime (for inspection and tests); ``tfidf``:
        ``(frame's TF-IDF,)`` when already computed."""
        r = self.regime_
        out: dict[str, object] = {}
        tf = tfidf[0] if tfidf is not None else self._tfidf(frame)
        if tf is not None:
            out["tfidf"] = tf
        if r.image:
            img, present = embedding_matrix(frame, "image_embedding", self.image_dim_)
            out["image"] = _l2(img) * present[:, None]
            out["has_image"] = present.astype(np.float32)[:, None]
        if r.text_embedding and self.text_dim_ is not None:
            txt, present = embedding_matrix(frame, "text_embedding", self.text_dim_)
            out["text_embedding"] = _l2(txt) * present[:, None]
        if self.attr_vocab_:
            out["attributes"] = self._attrs(frame)
        return out

    def transform(self, frame: pd.DataFrame, kind: str = "sparse"):
        return self.transform_kinds(frame, (kind,))[kind]

    def transform_kinds(self, frame: pd.DataFrame, kinds) -> dict:
        """Several feature kinds from one pass over the raw blocks (TF-IDF is computed once)."""
        if not hasattr(self, "regime_"):
            raise RuntimeError("ProductFeaturizer is not fitted")
        b = self.blocks(frame)
        return {k: self._assemble(b, k) for k in kinds}

    def _image_projection(self, b: dict) -> np.ndarray:
        img = b["image"]
        if self.image_pca_ is None:
            return img
        proj = self.image_pca_.transform(img)
        proj[b["has_image"][:, 0] == 0] = 0.0  # a missing image is "no signal", not the mean image
        return proj

    def _assemble(self, b: dict, kind: str):
        fitted = getattr(self, "kinds_", KINDS)  # a featurizer pickled before kinds_ existed fitted all
        if kind in KINDS and kind not in fitted:
            raise ValueError(f"feature kind {kind!r} was not fitted: this featurizer was fitted for {list(fitted)}")
        if kind in ("sparse", "nonneg"):
            parts = []
            if "tfidf" in b:
                parts.append(b["tfidf"])
            if "image" in b:
                # PCA-projected image for linear models: 1280 dense columns in a CSR matrix would make
                # the linear solvers ~10x slower for little gain over the leading components.
                img = self._image_projection(b)
                if kind == "nonneg":
                    img = b["image"]  # NB needs the raw, non-negative (post-ReLU) features
                parts.append(dense_csr(img * self.image_weight))
                parts.append(dense_csr(b["has_image"]))
            if "text_embedding" in b and kind == "sparse":
                parts.append(dense_csr(b["text_embedding"]))
            if "attributes" in b:
                parts.append(b["attributes"])
            return sp.hstack(parts, format="csr", dtype=np.float32)
        if kind in ("dense", "wide"):
            wide = kind == "wide"
            parts = []
            if "tfidf" in b and self.svd_ is not None:
                parts.append(self.svd_.transform(b["tfidf"]))
            elif "tfidf" in b:
                parts.append(b["tfidf"].toarray())
            if "image" in b:
                parts.append(b["image"] if wide else self._image_projection(b))
                parts.append(b["has_image"])
            if "text_embedding" in b:
                te = b["text_embedding"]
                parts.append(self.text_pca_.transform(te) if self.text_pca_ is not None and not wide else te)
            if "attributes" in b:
                parts.append(b["attributes"].toarray())
            return np.hstack(parts).astype(np.float32)
        raise ValueError(f"unknown feature kind {kind!r}; expected sparse, nonneg, dense or wide")

    def spec(self) -> dict:
        """What a scorer must provide: inputs used, dims, and the featurizer's settings."""
        r = get_regime(self.regime)
        return {
            "regime": self.regime,
            "inputs": [k for k in ("title", "description", "brand", "image", "text_embedding", "attributes")
                       if getattr(r, k) and (k != "attributes" or getattr(self, "attr_vocab_", None))],
            # Whether the trained model reads extracted attributes (the regime allows them; the
            # training rows must have carried some).
            "uses_attributes": bool(getattr(self, "attr_vocab_", None)),
            "image_dim": getattr(self, "image_dim_", None),
            "text_dim": getattr(self, "text_dim_", None),
            "attribute_vocab_size": len(getattr(self, "attr_vocab_", [])),
            "tfidf_vocab_sizes": {k: len(v.vocabulary_) for k, v in getattr(self, "vectorizers_", {}).items()},
            "n_fit_rows": getattr(self, "n_fit_rows_", None),
        }


def shared_transform(featurizer, frame: pd.DataFrame, kind: str, memo: dict | None = None):
    """``featurizer.transform(frame, kind)``, computed once per (fitted featurizer, frame object,
    kind) in ``memo``: the category, gender and usage classifiers of one training run were fitted
    on the same features, and each carries its own (unpickled) copy of the featurizer. A
    featurizer without ``fit_digest_`` (one pickled before it existed) is never shared."""
    digest = getattr(featurizer, "fit_digest_", None)
    if memo is None or digest is None:
        return featurizer.transform(frame, kind)
    key = (digest, kind, id(frame))
    if key not in memo:
        memo[key] = (frame, featurizer.transform(frame, kind))  # the frame is kept: its id stays its own
    return memo[key][1]


_TOKEN = re.compile(r"[a-z0-9]+")


class TokenSequencer:
    """Word-id sequences for the text CNN: vocabulary from training rows only, 0 = padding, 1 = unknown."""

    def __init__(self, regime: str = "full", max_len: int = 48, min_count: int = 2, max_vocab: int = 30_000):
        self.regime = regime
        self.max_len = max_len
        self.min_count = min_count
        self.max_vocab = max_vocab

    def _texts(self, frame: pd.DataFrame) -> list[list[str]]:
        r = get_regime(self.regime)
        t = _text(frame, "title") if r.title else pd.Series([""] * len(frame), index=frame.index)
        if r.brand:
            t = _text(frame, "brand") + " " + t
        if r.description:
            t = t + " " + _text(frame, "description")
        return [_TOKEN.findall(s.lower()) for s in t]

    def fit(self, frame: pd.DataFrame, y=None) -> "TokenSequencer":
        _require_train_only(frame)
        counts = Counter(w for toks in self._texts(frame) for w in toks)
        words = [w for w, c in counts.most_common(self.max_vocab) if c >= self.min_count]
        self.vocab_ = {w: i + 2 for i, w in enumerate(words)}
        return self

    @property
    def vocab_size(self) -> int:
        return len(self.vocab_) + 2

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        out = np.zeros((len(frame), self.max_len), np.int64)
        for i, toks in enumerate(self._texts(frame)):
            ids = [self.vocab_.get(w, 1) for w in toks[: self.max_len]]
            out[i, : len(ids)] = ids
        return out
