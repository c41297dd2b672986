"""Tokenise each text once per training run (the price model's and the classifiers' TF-IDF).

One form's price training fits a `PriceFeaturizer` (and so a ``TfidfVectorizer``) five times —
the ridge, the three out-of-fold ridges and the full ridge stacked into LightGBM / the MLP — and
transforms train, validation and calibration rows some twenty times: on the full development data
that tokenisation was ~65 s of the 'full' form's 170 s. `TokenCounts` analyses each distinct text
once and keeps its term counts; a fit or transform through it is then a selection of rows and
columns of that count matrix followed by the vectorizer's own ``TfidfTransformer``. The classifiers'
`ProductFeaturizer` fits each of its vectorizers through one, so the training rows' TF-IDF (for the
SVD and then the features, `fit_transform_kinds`) does not tokenise them again.

The result is the vectorizer sklearn would have fitted on the same texts — same vocabulary, same
``idf_``, the same transform output bit for bit (fashion_pipeline_tests/test_token_counts.py
compares them on every path) — and a plain ``TfidfVectorizer`` is what gets pickled with a model,
so scoring a listing never meets this memo. The vocabulary selection below is sklearn 1.9's
``CountVectorizer.fit_transform`` (``min_df`` / ``max_df`` / ``max_features``, features sorted
by term) written out, because sklearn exposes no fit from counts. A vectorizer fitted elsewhere with
the memo's analyser (a retrain's kept featurizer, unpickled from the model store) is adopted: its
vocabulary is mapped onto the memo's term ids, and its transform is the same selection.

`transform_memo` is the serving-side counterpart: while it is active, `tfidf_transform` (what
the featurizers call instead of ``vectorizer.transform``) transforms each distinct text once per
fitted vectorizer. The listing evaluation scores the same test products in several listing forms
and two models through `scoring.score_listings`, so the same texts met the same vectorizers
again and again; a TF-IDF row depends only on its own text, so the memo's rows are the ones
``vectorizer.transform`` gives, bit for bit. Nothing is memoised outside the ``with`` block (the
CLI's scoring runs without one).

Across runs: a memo built with a ``cache`` file starts from the term counts the last run saved there
(`TokenCounts.save`: the rows of the texts that run asked for, keyed by a hash of the text), so a
retrain after new products tokenises only the new and edited texts. A count row depends only on its
text and the analyser, so a fit or transform from the file's rows is the one from fresh rows, bit for
bit; a file written for another analyser, sklearn version or format is not read, and an unreadable
one is reported (``cache_note``) and rebuilt.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from numbers import Integral
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import sklearn
from sklearn.feature_extraction.text import TfidfTransformer, TfidfVectorizer

from fashion_pipeline.core.atomic import read_stamped_pickle, write_stamped_pickle

# Parameters that decide what the analyser emits for a text: a memo serves only vectorizers that agree on them.
ANALYZER_PARAMS = ("input", "encoding", "decode_error", "strip_accents", "lowercase", "preprocessor", "tokenizer",
                   "stop_words", "token_pattern", "ngram_range", "analyzer")


CACHE_FORMAT = 1


def _analyzer_key(vectorizer: TfidfVectorizer) -> tuple:
    return tuple(repr(getattr(vectorizer, p)) for p in ANALYZER_PARAMS)


def _countable(vectorizer) -> bool:
    """Whether a memo can count for ``vectorizer`` as sklearn's CountVectorizer would: a TfidfVectorizer
    without binary counts or a fixed vocabulary."""
    return isinstance(vectorizer, TfidfVectorizer) and not vectorizer.binary and vectorizer.vocabulary is None


def _text_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _parse_counts(saved: dict) -> tuple[list[str], bytes, sp.csr_array]:
    """(terms, 16-byte text hashes, counts matrix) of a `TokenCounts` file, checked."""
    names, hashes = list(saved["terms"]), saved["hashes"]
    matrix = sp.csr_array((saved["data"], saved["indices"], saved["indptr"]), shape=(len(hashes) // 16, len(names)))
    if len(hashes) % 16 or len(matrix.indptr) != len(hashes) // 16 + 1:
        raise ValueError("rows and hashes disagree")
    if matrix.nnz and not 0 <= matrix.indices.min() <= matrix.indices.max() < len(names):
        raise ValueError("term ids outside the file's vocabulary")
    return names, hashes, matrix


class TokenCounts:
    """Term counts of every text seen so far, for vectorizers with one analyser configuration.

    ``counts`` says how many distinct texts were tokenised, how many were asked for, and how many
    were read from the ``cache`` file instead of tokenised (see the module docstring; `save` writes it)."""

    def __init__(self, vectorizer: TfidfVectorizer, cache: str | Path | None = None):
        self._key = _analyzer_key(vectorizer)
        self._analyze = vectorizer.build_analyzer()
        self._terms: dict[str, int] = {}
        self._names: list[str] = []
        self._rows: dict[str, int] = {}
        self._matrix = sp.csr_array((0, 0), dtype=np.float32)
        self._fitted: dict[int, tuple[TfidfVectorizer, np.ndarray]] = {}  # id -> (vectorizer, memo term ids)
        self.counts = {"texts_tokenised": 0, "texts_requested": 0, "texts_from_cache": 0}
        self._cache = Path(cache) if cache is not None else None
        self._cached: dict[bytes, int] = {}  # text hash -> row of _cached_matrix (columns: memo term ids)
        self._cached_matrix = None
        self.cache_note = "no cache file"
        if self._cache is not None:
            self._load_cache()

    def _stamp(self) -> dict:
        return {"format": CACHE_FORMAT, "analyser": self._key, "sklearn": sklearn.__version__}

    def _load_cache(self) -> None:
        loaded, why = read_stamped_pickle(self._cache, self._stamp(), _parse_counts,
                                          stale="written for another analyser or sklearn version")
        if loaded is None:
            self.cache_note = why
            return
        names, hashes, matrix = loaded
        self._names = names
        self._terms = {t: j for j, t in enumerate(names)}
        self._cached = {hashes[16 * i:16 * (i + 1)]: i for i in range(len(hashes) // 16)}
        self._cached_matrix = matrix
        self._matrix = sp.csr_array((0, len(names)), dtype=np.float32)
        self.cache_note = f"{self._cache.name}: {len(self._cached)} texts' counts read"

    def save(self) -> None:
        """Write the counts of every text this memo was asked for (and only those: the file follows the
        product set) to its ``cache`` file, atomically; a memo built without one has nothing to write."""
        if self._cache is None:
            return
        m = self._matrix
        # The terms those texts have, renumbered in their order (a count per term: np.unique sorts every entry).
        used = np.flatnonzero(np.bincount(m.indices, minlength=len(self._names)))
        remap = np.full(len(self._names), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        texts = list(self._rows)  # in row order: a text's row is fixed when it is first counted
        failed = write_stamped_pickle(self._cache, self._stamp(), {
            "terms": [self._names[j] for j in used], "hashes": b"".join(_text_hash(t) for t in texts),
            "data": m.data, "indices": remap[m.indices].astype(np.int32), "indptr": m.indptr})
        if failed:
            self.cache_note += f"; {failed}"

    def serves(self, vectorizer: TfidfVectorizer) -> bool:
        """Whether ``vectorizer`` analyses text as this memo does (and counts as sklearn's CountVectorizer
        would: no binary counts, no fixed vocabulary)."""
        return _countable(vectorizer) and _analyzer_key(vectorizer) == self._key

    def _count(self, docs: list[str]) -> sp.csr_array:
        """Rows of the count matrix for ``docs`` (columns: memo term ids), tokenising only unseen texts."""
        if isinstance(docs, str):
            raise ValueError("Iterable over raw text documents expected, string object received.")
        docs = list(docs)
        self.counts["texts_requested"] += len(docs)
        new = [d for d in dict.fromkeys(docs) if d not in self._rows]
        if new and self._cached:  # texts the last run counted: their rows, not a new tokenisation
            hit_rows, unseen = [], []
            for d in new:
                i = self._cached.get(_text_hash(d))
                if i is None:
                    unseen.append(d)
                else:
                    hit_rows.append(i)
                    self._rows[d] = len(self._rows)
            if hit_rows:
                self._append(self._cached_matrix[np.asarray(hit_rows, dtype=np.int64)])
                self.counts["texts_from_cache"] += len(hit_rows)
            new = unseen
        if new:
            terms, names = self._terms, self._names
            indices: list[int] = []
            values: list[int] = []
            indptr = [0]
            for d in new:
                counter: dict[int, int] = {}
                for feature in self._analyze(d):
                    j = terms.get(feature)
                    if j is None:
                        j = terms[feature] = len(names)
                        names.append(feature)
                    counter[j] = counter.get(j, 0) + 1
                indices.extend(counter)
                values.extend(counter.values())
                indptr.append(len(indices))
                self._rows[d] = len(self._rows)
            self._append(sp.csr_array((np.asarray(values, dtype=np.float32), np.asarray(indices, dtype=np.int64),
                                       np.asarray(indptr, dtype=np.int64)), shape=(len(new), len(names))))
            self.counts["texts_tokenised"] += len(new)
        rows = np.fromiter((self._rows[d] for d in docs), dtype=np.int64, count=len(docs))
        return self._matrix[rows]

    def _append(self, rows: sp.csr_array) -> None:
        """Add count rows (columns: memo term ids, up to the current vocabulary) below the matrix."""
        n = len(self._names)
        old = self._matrix
        old = sp.csr_array((old.data, old.indices, old.indptr), shape=(old.shape[0], n))
        rows = sp.csr_array((rows.data, rows.indices, rows.indptr), shape=(rows.shape[0], n))
        self._matrix = sp.vstack([old, rows], format="csr")

    def fit(self, vectorizer: TfidfVectorizer, docs) -> TfidfVectorizer:
        """``vectorizer`` fitted on ``docs`` as ``vectorizer.fit(docs)`` would fit it."""
        if not self.serves(vectorizer):
            raise ValueError("this TokenCounts memo was built for another analyser configuration")
        vectorizer._validate_params()
        vectorizer._check_params()
        vectorizer._validate_ngram_range()
        vectorizer._validate_vocabulary()
        m = self._count(docs)
        n_doc = m.shape[0]
        df_all = np.bincount(m.indices, minlength=m.shape[1])
        present = np.flatnonzero(df_all)
        if not len(present):
            raise ValueError("empty vocabulary; perhaps the documents only contain stop words")
        # sklearn: the vocabulary sorted by term, then pruned by document frequency, then cut to the
        # max_features most frequent terms (by total count; its argsort breaks the ties).
        order = np.asarray(sorted(present, key=self._names.__getitem__), dtype=np.int64)
        x = m[:, order].astype(vectorizer.dtype)  # counts are whole numbers: exact in any float dtype
        max_df, min_df, limit = vectorizer.max_df, vectorizer.min_df, vectorizer.max_features
        high = max_df if isinstance(max_df, Integral) else max_df * n_doc
        low = min_df if isinstance(min_df, Integral) else min_df * n_doc
        if high < low:
            raise ValueError("max_df corresponds to < documents than min_df")
        dfs = df_all[order]
        mask = (dfs <= high) & (dfs >= low)
        if limit is not None and mask.sum() > limit:
            tfs = np.asarray(x.sum(axis=0)).ravel()
            keep = (-tfs[mask]).argsort()[:limit]
            new_mask = np.zeros(len(dfs), dtype=bool)
            new_mask[np.where(mask)[0][keep]] = True
            mask = new_mask
        kept = np.flatnonzero(mask)
        if not len(kept):
            raise ValueError("After pruning, no terms remain. Try a lower min_df or a higher max_df.")
        vectorizer.vocabulary_ = {self._names[j]: i for i, j in enumerate(order[kept])}
        vectorizer._tfidf = TfidfTransformer(norm=vectorizer.norm, use_idf=vectorizer.use_idf,
                                             smooth_idf=vectorizer.smooth_idf, sublinear_tf=vectorizer.sublinear_tf)
        vectorizer._tfidf.fit(sp.csr_matrix(x[:, kept]))
        vectorizer.build_analyzer()  # what sklearn's fit leaves behind (its stop-words consistency mark)
        self._fitted[id(vectorizer)] = (vectorizer, order[kept])
        return vectorizer

    def _adopt(self, vectorizer: TfidfVectorizer) -> tuple[TfidfVectorizer, np.ndarray] | None:
        """Serve a vectorizer fitted elsewhere (a retrain's kept featurizer): its vocabulary's memo term
        ids, in its column order (terms no text has shown yet get ids of their own); None when this
        memo's analyser is not the one it was fitted with."""
        if not self.serves(vectorizer) or not hasattr(vectorizer, "vocabulary_"):
            return None
        terms, names = self._terms, self._names
        ids = np.empty(len(vectorizer.vocabulary_), dtype=np.int64)
        for term, col in vectorizer.vocabulary_.items():
            j = terms.get(term)
            if j is None:
                j = terms[term] = len(names)
                names.append(term)
            ids[col] = j
        old = self._matrix
        self._matrix = sp.csr_array((old.data, old.indices, old.indptr), shape=(old.shape[0], len(names)))
        self._fitted[id(vectorizer)] = (vectorizer, ids)
        return self._fitted[id(vectorizer)]

    def transform(self, vectorizer: TfidfVectorizer, docs):
        """``vectorizer.transform(docs)``; from the memo when the vectorizer was fitted through it or
        analyses text as this memo does."""
        hit = self._fitted.get(id(vectorizer))
        if hit is None or hit[0] is not vectorizer:
            hit = self._adopt(vectorizer)
        if hit is None:
            return vectorizer.transform(docs)
        x = sp.csr_matrix(self._count(docs)[:, hit[1]].astype(vectorizer.dtype))
        if x.nnz < 2**31 and x.shape[1] < 2**31:  # sklearn's index dtype (liblinear refuses int64 indices)
            x.indices, x.indptr = x.indices.astype(np.int32), x.indptr.astype(np.int32)
        x.sort_indices()
        return vectorizer._tfidf.transform(x, copy=False)


class TransformMemo:
    """TF-IDF rows of every (fitted vectorizer, text) transformed while active; see `transform_memo`.

    ``counts``: distinct texts transformed and texts asked for, over all vectorizers."""

    def __init__(self):
        # id -> (vectorizer, {text: row}, rows so far); the entry holds the vectorizer, so its id is not reused.
        self._by_vectorizer: dict[int, tuple[TfidfVectorizer, dict[str, int], sp.csr_matrix]] = {}
        self.counts = {"texts_transformed": 0, "texts_requested": 0}

    def transform(self, vectorizer: TfidfVectorizer, docs) -> sp.csr_matrix:
        if isinstance(docs, str):
            raise ValueError("Iterable over raw text documents expected, string object received.")
        docs = list(docs)
        entry = self._by_vectorizer.get(id(vectorizer))
        if entry is None or entry[0] is not vectorizer:
            entry = (vectorizer, {}, None)
        _, rows, matrix = entry
        new = [d for d in dict.fromkeys(docs) if d not in rows]
        if new:
            x = _counted_transform(vectorizer, new)
            matrix = x if matrix is None else sp.vstack([matrix, x], format="csr")
            rows.update((d, len(rows)) for d in new)
            self.counts["texts_transformed"] += len(new)
        self._by_vectorizer[id(vectorizer)] = (vectorizer, rows, matrix)
        self.counts["texts_requested"] += len(docs)
        if matrix is None:  # no texts at all: what the vectorizer gives for none
            return _counted_transform(vectorizer, docs)
        out = matrix[np.fromiter((rows[d] for d in docs), dtype=np.int64, count=len(docs))]
        out.sort_indices()
        return out


_ACTIVE: ContextVar[TransformMemo | None] = ContextVar("tfidf_transform_memo", default=None)


@contextmanager
def transform_memo() -> Iterator[TransformMemo]:
    """Within the block, `tfidf_transform` transforms each distinct text once per fitted vectorizer.
    Inside another such block, the outer memo goes on serving (and is the one yielded)."""
    outer = _ACTIVE.get()
    if outer is not None:
        yield outer
        return
    memo = TransformMemo()
    token = _ACTIVE.set(memo)
    try:
        yield memo
    finally:
        _ACTIVE.reset(token)


class TokenCaches:
    """One `TokenCounts` per analyser configuration, each with its cache file in ``folder`` (named
    ``<prefix>-<hash of the analyser>.pkl``): see `token_caches`."""

    def __init__(self, folder: str | Path, prefix: str):
        self.folder, self.prefix = Path(folder), prefix
        self._memos: dict[tuple, TokenCounts] = {}

    def memo_for(self, vectorizer: TfidfVectorizer) -> TokenCounts | None:
        """The memo that counts ``vectorizer``'s texts (made, and its file read, on first use); None
        for a vectorizer a memo cannot serve (binary counts, a fixed vocabulary, not a TfidfVectorizer)."""
        if not _countable(vectorizer):
            return None
        key = _analyzer_key(vectorizer)
        if key not in self._memos:
            name = hashlib.blake2b(repr(key).encode(), digest_size=6).hexdigest()
            self._memos[key] = TokenCounts(vectorizer, cache=self.folder / f"{self.prefix}-{name}.pkl")
        return self._memos[key]

    def save(self) -> None:
        for memo in self._memos.values():
            memo.save()

    def describe(self) -> dict[str, dict]:
        """Per cache file: what was tokenised, read from it and asked for, and how the file was read."""
        return {m._cache.name: {**m.counts, "cache": m.cache_note} for m in self._memos.values()}


_CACHES: ContextVar[TokenCaches | None] = ContextVar("token_caches", default=None)


@contextmanager
def token_caches(folder: str | Path, prefix: str) -> Iterator[TokenCaches]:
    """Within the block, a featurizer's vectorizer fits (`memo_for`) and `tfidf_transform` go through
    term counts kept between runs in ``folder``: a retrain that keeps its featurizers, or fits them
    again on a train split that grew by a few products, tokenises only the texts the last run did not
    count. The files are rewritten when the block ends without an error. The same matrices bit for
    bit as without it (the module docstring)."""
    caches = TokenCaches(folder, prefix)
    token = _CACHES.set(caches)
    try:
        yield caches
    finally:
        _CACHES.reset(token)
    caches.save()


def _active_memo(vectorizer: TfidfVectorizer) -> TokenCounts | None:
    """The active `token_caches` block's memo for ``vectorizer``'s analyser, if any."""
    caches = _CACHES.get()
    return caches.memo_for(vectorizer) if caches is not None else None


def memo_for(vectorizer: TfidfVectorizer) -> TokenCounts:
    """The active `token_caches` block's memo for ``vectorizer``, else a fresh one."""
    memo = _active_memo(vectorizer)
    return memo if memo is not None else TokenCounts(vectorizer)


def counted_fit(vectorizer: TfidfVectorizer, docs) -> TfidfVectorizer:
    """``vectorizer.fit(docs)``, counting the texts through the active `token_caches` memo for its analyser
    if there is one (the same fitted vectorizer either way; a fit outside a block tokenises as sklearn)."""
    memo = _active_memo(vectorizer)
    return memo.fit(vectorizer, docs) if memo is not None else vectorizer.fit(docs)


def _counted_transform(vectorizer: TfidfVectorizer, docs):
    """``vectorizer.transform(docs)``, counting the texts through the active `token_caches` memo for its
    analyser if there is one."""
    memo = _active_memo(vectorizer)
    return memo.transform(vectorizer, docs) if memo is not None else vectorizer.transform(docs)


def tfidf_transform(vectorizer: TfidfVectorizer, docs):
    """``vectorizer.transform(docs)``, through the active `transform_memo` (each text's row once per
    vectorizer) and the active `token_caches` (each text tokenised once per analyser, if at all) when
    there are."""
    memo = _ACTIVE.get()
    return memo.transform(vectorizer, docs) if memo is not None else _counted_transform(vectorizer, docs)
