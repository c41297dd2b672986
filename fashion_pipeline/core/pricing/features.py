"""Price features: one code path for training and for scoring new listings.

A product becomes a `PriceInputs`: a frame of the columns a listing can carry plus two aligned
embedding matrices. `build_price_inputs` is the only way to make one, both in training (from
clean_products + product_embeddings) and in scoring (from listings + freshly computed
embeddings), so a feature cannot silently differ between the two.

The price models read only what a seller's listing can show: title, description, photo, and the
optional stated brand / colour / source. Catalogue-only columns (articleType, age group,
category labels) are never features: a listing does not have them. `regime_view` restricts the
inputs to one listing form (full: title + description; sparse: title only; image: photo only),
so each form's model is trained on exactly what that form shows. The sparse form's text vector is
the embedding of the title alone (`title_texts`), given to `build_price_inputs` as ``title_text``:
the stored product embedding encodes the description too, which a title-only listing does not have.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.decomposition import PCA
from sklearn.feature_extraction.text import TfidfVectorizer

from fashion_pipeline.core.sparse_blocks import dense_csr
from fashion_pipeline.core.token_counts import TokenCounts, counted_fit, tfidf_transform

# Stated listing fields used as one-hot / categorical features. brand and colour are optional in a
# listing (null becomes its own level "<missing>", and training masks them so the models learn
# both); source is stated or predicted from the listing (core.pricing.routing) before pricing.
CATEGORICAL_COLUMNS: tuple[str, ...] = ("source", "brand", "colour")
# Stated fields hidden at random in training, so a model meets listings with and without them.
MASKED_COLUMNS: tuple[str, ...] = ("brand", "colour")
# Extracted attribute columns appended to the price text when product_attributes is given.
ATTRIBUTE_TEXT_COLUMNS: tuple[str, ...] = ("materials", "fit", "pattern", "occasion", "style")
MISSING = "<missing>"
# features_spec["sparse_text"] of a price model whose sparse form was trained on title vectors.
SPARSE_TEXT = "title embedding (features.title_texts)"
TEXT_DIM = 384
IMAGE_DIM = 1280


def _clean_str(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    return " ".join(str(value).split())


def _attr_text(value: Any) -> str:
    s = _clean_str(value)
    if s.startswith("["):
        try:
            return " ".join(str(v) for v in json.loads(s))
        except json.JSONDecodeError:
            return s
    return s


@dataclass
class PriceInputs:
    """Rows to price: metadata frame + aligned text / image embeddings (NaN rows = missing)."""

    frame: pd.DataFrame
    text: np.ndarray
    image: np.ndarray
    # The embedding of each row's title alone (`title_texts`; NaN rows where there is none), the sparse
    # form's text vector; None when it was not computed (that form then has no text vector).
    title_text: np.ndarray | None = None
    # Per-fit memo (e.g. a stacking fit shared by two regressors); never pickled with a model.
    cache: dict = field(default_factory=dict, repr=False, compare=False)
    # The training run's tokenisation memo (core.token_counts), shared by every view of its
    # rows; None when scoring listings. Never pickled with a model.
    tokens: TokenCounts | None = field(default=None, repr=False, compare=False)
    _missing: tuple[np.ndarray, np.ndarray] | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.frame)

    def missing(self) -> tuple[np.ndarray, np.ndarray]:
        """(text missing, image missing) per row: a row with any NaN is a missing embedding. Computed
        once per PriceInputs (its embedding arrays are never written) for the featurizers' passes."""
        if self._missing is None:
            self._missing = (np.isnan(self.text).any(axis=1), np.isnan(self.image).any(axis=1))
        return self._missing

    def subset(self, mask: np.ndarray | pd.Series) -> "PriceInputs":
        m = np.asarray(mask, dtype=bool)
        if m.all():  # every row: the same (never written) embedding arrays, not a copy of them
            return PriceInputs(self.frame.reset_index(drop=True), self.text, self.image, self.title_text,
                               tokens=self.tokens)
        return PriceInputs(self.frame[m].reset_index(drop=True), self.text[m], self.image[m],
                           None if self.title_text is None else self.title_text[m], tokens=self.tokens)


def concat_inputs(parts: list[PriceInputs]) -> PriceInputs:
    """Rows of several PriceInputs, in order (with the first one's tokenisation memo); title vectors only
    when every part has them."""
    titles = [p.title_text for p in parts]
    return PriceInputs(pd.concat([p.frame for p in parts], ignore_index=True),
                       np.concatenate([p.text for p in parts]), np.concatenate([p.image for p in parts]),
                       np.concatenate(titles) if titles and all(t is not None for t in titles) else None,
                       tokens=parts[0].tokens if parts else None)


# Fitted PCAs by (digest of the rows, their shape, components, seed, solver): the members of one price
# training that project the same photo rows — LightGBM's and the source router's PCA(32) of the train
# rows with a photo, in every listing form; the k-NN member's PCA(128) of them, in every form — fit
# each once. sklearn's fit is deterministic for a given seed, so the shared fit is the one each would
# have made; nothing mutates a fitted PCA. A selection on the full development data fitted 11 PCAs in
# 14.3 s (Intel Xeon, 2 cores), 4 of them distinct. A few entries only: a PCA is ~1.3k x k floats.
_PCA_MEMO: OrderedDict = OrderedDict()
_PCA_MEMO_SIZE = 8
_PCA_LOCK = threading.Lock()


def fit_pca(x: np.ndarray, k: int, seed: int, svd_solver: str = "auto") -> PCA:
    """``PCA(k, svd_solver=svd_solver, random_state=seed).fit(x)``, or the same fit made earlier in
    this process on rows with the same bytes."""
    x = np.ascontiguousarray(x)
    key = (hashlib.blake2b(memoryview(x).cast("B"), digest_size=16).hexdigest(), x.shape, x.dtype.str,
           int(k), int(seed), svd_solver)
    with _PCA_LOCK:
        hit = _PCA_MEMO.get(key)
        if hit is not None:
            _PCA_MEMO.move_to_end(key)
            return hit
    pca = PCA(k, svd_solver=svd_solver, random_state=seed).fit(x)
    with _PCA_LOCK:
        _PCA_MEMO[key] = pca
        while len(_PCA_MEMO) > _PCA_MEMO_SIZE:
            _PCA_MEMO.popitem(last=False)
    return pca


def title_texts(titles) -> list[str]:
    """The text whose embedding is a row's title vector: the title alone, as the embedding stage writes a
    product text (`build_product_text`), "" where there is none. The same for a catalogue product in
    training and for a listing in scoring."""
    from fashion_pipeline.core.encoders.product_text import build_product_text

    return [build_product_text(t) for t in titles]


def build_price_inputs(
    products: pd.DataFrame,
    embeddings: tuple[list[str], np.ndarray, np.ndarray] | None = None,
    attributes: pd.DataFrame | None = None,
    title_text: np.ndarray | None = None,
) -> PriceInputs:
    """Align products with their embeddings and (optional) extracted attributes.

    ``embeddings`` is what ``core.encoders.io.read_embeddings`` returns: (ids, image [n,1280],
    text [n,384]); products without an embedding get NaN rows, which the featurizers turn into
    zeros plus a "missing" indicator. Row order follows ``products``. ``title_text``: the embedding
    of each product's `title_texts`, [len(products), d] in its row order (the sparse form's text vector).
    """
    if title_text is not None and (title_text.ndim != 2 or len(title_text) != len(products)):
        raise ValueError(f"title_text has shape {title_text.shape}; expected one row per product ({len(products)})")
    df = products.reset_index(drop=True).copy()
    for col in CATEGORICAL_COLUMNS:
        if col not in df.columns:
            df[col] = None
    for col in ("title", "description"):
        if col not in df.columns:
            df[col] = ""
    attr_text = pd.Series([""] * len(df))
    if attributes is not None and len(attributes):
        a = attributes.drop_duplicates("product_id").set_index("product_id")
        a = a.reindex(df["product_id"])
        if "brand" in a.columns:  # extracted brand fills in where the catalogue has none
            fill = a["brand"].to_numpy()
            df["brand"] = [b if _clean_str(b) else f for b, f in zip(df["brand"], fill)]
        parts = [clean_column(a[c], _attr_text) for c in ATTRIBUTE_TEXT_COLUMNS if c in a.columns]
        if parts:
            attr_text = pd.Series([" ".join(p for p in row if p) for row in zip(*parts)])
    df["attr_text"] = attr_text.to_numpy()
    df["price_text"] = _price_text(df, description=True)
    n = len(df)
    text = np.full((n, TEXT_DIM), np.nan, dtype=np.float32)
    image = np.full((n, IMAGE_DIM), np.nan, dtype=np.float32)
    if embeddings is not None:
        ids, img, txt = embeddings
        pos = pd.Series(np.arange(len(ids)), index=pd.Index(ids)).drop_duplicates()
        idx = pos.reindex(df["product_id"]).to_numpy()
        have = ~np.isnan(idx)
        rows = idx[have].astype(int)
        if txt is not None and len(rows):
            text = np.full((n, txt.shape[1]), np.nan, dtype=np.float32)
            text[have] = txt[rows]
        if img is not None and len(rows):
            image = np.full((n, img.shape[1]), np.nan, dtype=np.float32)
            image[have] = img[rows]
    return PriceInputs(df, text, image, None if title_text is None else np.asarray(title_text, dtype=np.float32))


def _price_text(df: pd.DataFrame, description: bool) -> list[str]:
    """Title, brand, extracted attributes and (for the full form) description as one text.
    Attributes are extracted from title + description, so they go with the description."""
    cols = [clean_column(df[c]) for c in (("title", "brand", "attr_text", "description") if description else ("title", "brand"))]
    return [" ".join(p for p in row if p) for row in zip(*cols)]


# What each listing form shows the price model (the classifiers' input regimes, same names).
REGIME_TEXT = {"full": "description", "sparse": "title", "image": None}


def regime_view(inputs: PriceInputs, regime: str) -> PriceInputs:
    """The inputs as the listing form ``regime`` shows them: full = title + description (+ text
    embedding), sparse = title only (the stored text embedding encodes the description too, so
    the title vector takes its place: ``title_text``, or no text vector when there is none),
    image = photo only (no text at all). The photo is kept where there is one."""
    if regime not in REGIME_TEXT:
        raise ValueError(f"unknown listing form {regime!r}; expected one of {sorted(REGIME_TEXT)}")
    df = inputs.frame.copy()
    text = inputs.text
    if REGIME_TEXT[regime] == "description":
        df["price_text"] = _price_text(df, description=True)
    elif REGIME_TEXT[regime] == "title":
        df["price_text"] = _price_text(df, description=False)
        text = inputs.title_text if inputs.title_text is not None else np.full_like(inputs.text, np.nan)
    else:
        df["price_text"] = ""
        text = np.full_like(inputs.text, np.nan)
    return PriceInputs(df, text, inputs.image, inputs.title_text, tokens=inputs.tokens)


def mask_stated(inputs: PriceInputs, rate: float = 0.5, seed: int = 0) -> PriceInputs:
    """Hide each optional stated field (brand, colour) on a random ``rate`` of rows, and the
    brand's words in the price text with it, so a model trained on catalogue rows has seen
    listings that state none of them."""
    rng = np.random.default_rng(seed)
    df = inputs.frame.copy()
    hidden_brand = rng.random(len(df)) < rate
    for col in MASKED_COLUMNS:
        hide = hidden_brand if col == "brand" else rng.random(len(df)) < rate
        df[col] = [None if h else v for v, h in zip(df[col], hide)]
    return PriceInputs(df, inputs.text, inputs.image, inputs.title_text, tokens=inputs.tokens)


def clean_column(values: pd.Series, clean=None) -> np.ndarray:
    """``clean`` (default ``_clean_str``) of every value, as an object array: computed once per distinct
    value (``pd.factorize``; a null of any kind is one "" entry), not once per row — the categorical
    columns of a training set have a few thousand distinct values over tens of thousands of rows, and
    colour variants share their title and description."""
    codes, uniques = pd.factorize(pd.Series(values, dtype=object).to_numpy(), use_na_sentinel=True)
    cleaned = np.array([(clean or _clean_str)(v) for v in uniques] + [""], dtype=object)
    return cleaned[codes]  # code -1 (a null) reads the trailing ""


def _categorical_values(df: pd.DataFrame, col: str) -> np.ndarray:
    v = clean_column(df[col])
    v[v == ""] = MISSING
    return v


class CategoricalEncoder:
    """Maps each categorical column to integer codes; rare / unseen levels share code 0."""

    def __init__(self, min_count: int = 3):
        self.min_count = min_count
        self.levels_: dict[str, dict[str, int]] = {}

    def fit(self, df: pd.DataFrame) -> "CategoricalEncoder":
        for col in CATEGORICAL_COLUMNS:
            counts = pd.Series(_categorical_values(df, col)).value_counts()
            keep = sorted(counts[counts >= self.min_count].index)
            self.levels_[col] = {v: i + 1 for i, v in enumerate(keep)}  # 0 = rare / unseen
        return self

    def codes(self, df: pd.DataFrame) -> np.ndarray:
        out = np.zeros((len(df), len(CATEGORICAL_COLUMNS)), dtype=np.int64)
        for j, col in enumerate(CATEGORICAL_COLUMNS):
            lv = self.levels_[col]
            out[:, j] = [lv.get(v, 0) for v in _categorical_values(df, col)]
        return out

    def cardinalities(self) -> list[int]:
        return [len(self.levels_[c]) + 1 for c in CATEGORICAL_COLUMNS]

    def one_hot(self, df: pd.DataFrame) -> sp.csr_matrix:
        codes = self.codes(df)
        offsets = np.cumsum([0] + self.cardinalities()[:-1])
        cols = (codes + offsets).ravel()
        rows = np.repeat(np.arange(len(df)), codes.shape[1])
        return sp.csr_matrix(
            (np.ones(len(cols), dtype=np.float32), (rows, cols)), shape=(len(df), sum(self.cardinalities()))
        )


def dense_embeddings(inputs: PriceInputs) -> np.ndarray:
    """[text | image | text_missing | image_missing], missing rows (`PriceInputs.missing`) as zeros."""
    n_t, n_i = inputs.text.shape[1], inputs.image.shape[1]
    text_missing, image_missing = inputs.missing()
    # Filled in place in one preallocated block (no per-part copies: this runs on every training row).
    x = np.empty((len(inputs), n_t + n_i + 2), dtype=np.float32)
    x[:, :n_t] = inputs.text
    x[:, n_t : n_t + n_i] = inputs.image
    # Missing rows zeroed as blocks (a photo-only listing batch is all NaN text: nan_to_num over those
    # values cost ~0.1 s per call); zero_nans_ then only meets a stray non-finite value, if any.
    x[text_missing, :n_t] = 0.0
    x[image_missing, n_t : n_t + n_i] = 0.0
    x[:, n_t + n_i] = text_missing
    x[:, n_t + n_i + 1] = image_missing
    return zero_nans_(x)


def zero_nans_(x: np.ndarray) -> np.ndarray:
    """``np.nan_to_num(x, copy=False, nan=0.0)`` — NaN to 0, +-inf to the dtype's extremes, in place —
    without its whole-array passes for +inf and -inf (cProfile of a +1% retrain's price training on the
    full development data: np.nan_to_num 8.9 s of 94 s, 5.3 s of it in ``isposinf``): one ``isfinite``
    pass, then only the non-finite entries."""
    bad = ~np.isfinite(x)
    if bad.any():
        x[bad] = np.nan_to_num(x[bad], nan=0.0)
    return x


class EmbeddingScaler:
    """Standardises the embedding block with train statistics (missing rows excluded)."""

    def fit(self, inputs: PriceInputs) -> "EmbeddingScaler":
        x = dense_embeddings(inputs)
        text_missing, image_missing = inputs.missing()
        n_t, n_i = inputs.text.shape[1], inputs.image.shape[1]
        cnt = np.maximum(np.concatenate([np.full(n_t, len(x) - text_missing.sum()), np.full(n_i, len(x) - image_missing.sum()),
                                         np.full(2, len(x))]), 1)
        self.mean_ = (x.sum(0) / cnt).astype(np.float32)  # x is 0 on missing rows
        x -= self.mean_  # in place: squared deviations, 0 on missing rows
        x **= 2
        x[text_missing, :n_t] = 0.0
        x[image_missing, n_t : n_t + n_i] = 0.0
        var = (x.sum(0) / cnt).astype(np.float32)
        self.scale_ = np.sqrt(var) + 1e-6
        return self

    def transform(self, inputs: PriceInputs) -> np.ndarray:
        z = dense_embeddings(inputs)  # a fresh array: standardised in place
        z -= self.mean_
        z /= self.scale_
        # A missing embedding stays at 0 (= the train mean) so it does not look like a signal.
        n_t = inputs.text.shape[1]
        text_missing, image_missing = inputs.missing()
        z[text_missing, :n_t] = 0.0
        z[image_missing, n_t : n_t + inputs.image.shape[1]] = 0.0
        return z


def price_text_vectorizer(max_features: int = 50_000) -> TfidfVectorizer:
    """The price text's TF-IDF (word uni- + bigrams), unfitted."""
    return TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=max_features, sublinear_tf=True,
                           dtype=np.float32)


def char_text_vectorizer(max_features: int = 30_000) -> TfidfVectorizer:
    """Character 2- to 5-grams (within word boundaries) of the price text, unfitted: `PriceFeaturizer`'s
    per-source block (``char_sources``)."""
    return TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=3, max_features=max_features,
                           sublinear_tf=True, dtype=np.float32)


class PriceFeaturizer:
    """Sparse design matrix for the linear model: TF-IDF(text) | one-hots | per-source copies of both |
    character n-grams of the text for the ``char_sources`` | scaled embeddings.

    ``char_sources``: sources whose rows get a TF-IDF of the price text's character 2–5-grams
    (`char_text_vectorizer`, fitted on those rows' texts only, at most ``char_max_features`` columns,
    zero on every other row) **instead of** their per-source copy of the word and one-hot columns, for
    what a word TF-IDF cannot share between forms of a word (compounds, inflections, spellings); the
    shared word and one-hot columns (the source's own level among them) still serve those rows. Only those
    rows' texts are counted, so the columns cost little next to the word block when the source is a small
    share of the rows (H&M: ~9% of the priced development data; benchmarks/results/hm_price_cv.md gives the
    effect on its full-form listings)."""

    def __init__(self, max_features: int = 50_000, embedding_weight: float = 0.05, use_embeddings: bool = True,
                 source_interactions: bool = True, char_sources: tuple[str, ...] = (),
                 char_max_features: int = 30_000):
        self.max_features = max_features
        self.embedding_weight = embedding_weight
        self.use_embeddings = use_embeddings
        # "Frustratingly easy" domain adaptation: text and metadata columns also get a copy per
        # source, so a word can price differently on Myntra (INR MRP) and at H&M.
        self.source_interactions = source_interactions
        self.char_sources = tuple(char_sources)
        self.char_max_features = char_max_features

    def fit(self, inputs: PriceInputs) -> "PriceFeaturizer":
        docs = inputs.frame["price_text"]
        # A photo-only form has no text: no TF-IDF block (a vectorizer cannot fit on empty texts).
        self.tfidf_ = None
        if (docs.str.len() > 0).sum() >= 2:
            vec = price_text_vectorizer(self.max_features)
            tokens = inputs.tokens
            self.tfidf_ = tokens.fit(vec, docs) if tokens is not None and tokens.serves(vec) else vec.fit(docs)
        self.cats_ = CategoricalEncoder().fit(inputs.frame)
        src = clean_column(inputs.frame["source"])
        self.sources_ = sorted(set(src) - {""})
        # {source: fitted character vectorizer}; a source with too few texts to keep a 3-document
        # n-gram gets none (and no columns).
        self.char_ = {}
        has_text = (docs.str.len() > 0).to_numpy()
        for s in self.char_sources if self.tfidf_ is not None else ():
            rows = (src == s) & has_text
            if rows.sum() >= 3:
                # Through the run's memo for the character analyser when there is one: a training fits this
                # block five times per form on the same texts, and a retrain finds their counts in its file.
                self.char_[s] = counted_fit(char_text_vectorizer(self.char_max_features), docs[rows])
        # The sources that keep a per-source copy: a source with character n-grams has them instead.
        self.copied_sources_ = [s for s in self.sources_ if s not in self.char_]
        if self.use_embeddings:
            self.scaler_ = EmbeddingScaler().fit(inputs)
        return self

    def transform(self, inputs: PriceInputs) -> sp.csr_matrix:
        sparse, dense = self.transform_blocks(inputs)
        return sparse if dense is None else sp.hstack([sparse, dense_csr(dense)], format="csr", dtype=np.float32)

    def transform_blocks(self, inputs: PriceInputs) -> tuple[sp.csr_matrix, np.ndarray | None]:
        """``transform``'s columns as (the sparse TF-IDF / one-hot / interaction block, the dense
        weighted-embedding block or None): the ridge's solver multiplies the dense block with BLAS
        (a CSR copy of it is ~85% of the design matrix's entries)."""
        parts = [self.cats_.one_hot(inputs.frame)]
        if self.tfidf_ is not None:
            docs = inputs.frame["price_text"]
            tokens = inputs.tokens
            parts.insert(0, tokens.transform(self.tfidf_, docs) if tokens is not None else tfidf_transform(self.tfidf_, docs))
        base = sp.hstack(parts, format="csr")
        blocks = [base]
        src = clean_column(inputs.frame["source"])
        for s in self.copied_sources():
            blocks.append(sp.diags((src == s).astype(np.float32)) @ base)
        for s, vec in getattr(self, "char_", {}).items():  # featurizers pickled before char_ have none
            blocks.append(_rows_placed(vec, inputs.frame["price_text"], np.flatnonzero(src == s)))
        z = None
        if self.use_embeddings:
            z = self.scaler_.transform(inputs)
            z *= self.embedding_weight
        return sp.hstack(blocks, format="csr", dtype=np.float32), z

    def fit_transform(self, inputs: PriceInputs) -> sp.csr_matrix:
        return self.fit(inputs).transform(inputs)

    def copied_sources(self) -> list[str]:
        """The sources whose rows get a per-source copy of the word and one-hot columns. Featurizers pickled
        before ``copied_sources_`` copied every source (beside any n-grams they had)."""
        if not self.source_interactions:
            return []
        return list(getattr(self, "copied_sources_", getattr(self, "sources_", [])))


def _rows_placed(vectorizer: TfidfVectorizer, docs: pd.Series, rows: np.ndarray) -> sp.csr_matrix:
    """``vectorizer``'s transform of ``docs`` at ``rows`` (positions), as a len(docs)-row matrix that is zero
    elsewhere: only those rows' texts are counted (through the active token memos, `tfidf_transform`)."""
    width = len(vectorizer.vocabulary_)
    if len(rows) == 0:
        return sp.csr_matrix((len(docs), width), dtype=np.float32)
    sub = tfidf_transform(vectorizer, docs.iloc[rows])
    place = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, np.arange(len(rows)))),
                          shape=(len(docs), len(rows)))
    return (place @ sub).tocsr()
