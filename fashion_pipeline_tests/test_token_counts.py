"""The tokenisation memo (price training, classifier featurizer) gives exactly what sklearn's
TfidfVectorizer gives.

Expectations come from sklearn itself (a fresh TfidfVectorizer fitted on the same texts), never
from the memo's own code path."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

from fashion_pipeline.core.pricing.features import (PriceFeaturizer, build_price_inputs, char_text_vectorizer,
                                                    mask_stated, price_text_vectorizer, regime_view)
from fashion_pipeline.core.token_counts import TokenCounts, TransformMemo, tfidf_transform, transform_memo
from fashion_pipeline.core.pricing.training import train_price_models

from .test_pricing_core import clean_sample


def _texts() -> list[str]:
    """The embedded sample's 'full' price texts, with repeats (as train / validation views repeat rows)."""
    df = clean_sample()
    inputs = regime_view(build_price_inputs(df[df["price_status"] == "ok"]), "full")
    return list(inputs.frame["price_text"])


def _same(a, b) -> None:
    assert type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape
    a, b = a.tocsr(), b.tocsr()
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.data, b.data)  # bit for bit, not approximately


@pytest.mark.parametrize("params", [
    {"ngram_range": (1, 2), "min_df": 2, "max_features": 500, "sublinear_tf": True, "dtype": np.float32},
    {"ngram_range": (1, 2), "min_df": 2, "max_features": 50_000, "sublinear_tf": True, "dtype": np.float32},
    {"min_df": 0.01, "max_df": 0.5},
    {"ngram_range": (1, 1), "max_features": 40, "smooth_idf": False, "norm": "l1"},
    {"analyzer": "char_wb", "ngram_range": (2, 5), "min_df": 3, "max_features": 2_000, "sublinear_tf": True,
     "dtype": np.float32},
], ids=["price-limited", "price", "fractions", "unigram-l1", "classifier-char"])
def test_a_vectorizer_fitted_through_the_memo_is_the_one_sklearn_fits(params):
    texts = _texts()
    rng = np.random.default_rng(0)
    memo = TokenCounts(TfidfVectorizer(**params))
    # Several overlapping fits, as the out-of-fold ridges make, each on the memo grown by the last.
    for fold in range(3):
        rows = np.flatnonzero(rng.random(len(texts)) < 0.6)
        fit_docs = [texts[i] for i in rows]
        other = [texts[i] for i in np.flatnonzero(rng.random(len(texts)) < 0.3)] + ["unseen words zzqx", ""]
        expected = TfidfVectorizer(**params).fit(fit_docs)
        got = memo.fit(TfidfVectorizer(**params), fit_docs)
        assert got.vocabulary_ == expected.vocabulary_, fold
        np.testing.assert_array_equal(got.idf_, expected.idf_)
        assert set(vars(got)) == set(vars(expected))
        _same(memo.transform(got, other), expected.transform(other))
        _same(memo.transform(got, fit_docs), expected.transform(fit_docs))
        # What is pickled with a model is a plain TfidfVectorizer that transforms raw text alone.
        _same(pickle.loads(pickle.dumps(got)).transform(other), expected.transform(other))
    assert memo.counts["texts_tokenised"] == len(set(memo._rows))  # each distinct text once
    assert memo.counts["texts_tokenised"] < memo.counts["texts_requested"] / 3


def test_the_memo_raises_what_sklearn_raises_and_refuses_another_analyser():
    memo = TokenCounts(price_text_vectorizer())
    with pytest.raises(ValueError, match="empty vocabulary"):
        memo.fit(price_text_vectorizer(), ["", "a"])
    with pytest.raises(ValueError, match="no terms remain"):
        memo.fit(price_text_vectorizer(), ["red shirt", "blue dress"])  # min_df 2: nothing twice
    with pytest.raises(ValueError, match="string object received"):
        memo.fit(price_text_vectorizer(), "red shirt")
    other = TfidfVectorizer(ngram_range=(1, 1))
    assert not memo.serves(other)
    with pytest.raises(ValueError, match="another analyser"):
        memo.fit(other, ["red shirt", "red dress"])
    # A vectorizer the memo did not fit is transformed by sklearn itself.
    plain = TfidfVectorizer(ngram_range=(1, 1)).fit(["red shirt", "red dress"])
    _same(memo.transform(plain, ["red red shirt"]), plain.transform(["red red shirt"]))


def test_a_vectorizer_fitted_elsewhere_with_the_memos_analyser_is_transformed_through_it_bit_for_bit():
    """A retrain's kept featurizer was fitted by an earlier run: the memo maps its vocabulary onto its own
    term ids (words it has not seen included) and gives sklearn's transform."""
    texts = _texts()
    kept = price_text_vectorizer(max_features=300).fit(texts[: len(texts) // 2])  # fitted by sklearn itself
    memo = TokenCounts(price_text_vectorizer())
    memo.transform(price_text_vectorizer().fit(texts[:40]), texts[:40])  # words seen before the adoption
    fresh = texts[len(texts) // 2:] + ["zzunseen words only", ""]
    _same(memo.transform(kept, fresh), kept.transform(fresh))
    _same(memo.transform(kept, texts[:60]), kept.transform(texts[:60]))
    assert memo._fitted[id(kept)][0] is kept  # adopted: later transforms read the memo's counts


def test_the_price_featurizer_gives_the_same_matrix_with_and_without_the_memo():
    df = clean_sample()
    base = build_price_inputs(df[df["price_status"] == "ok"])
    split = base.frame["split"].to_numpy()
    for form in ("full", "sparse"):
        tr = mask_stated(regime_view(base.subset(split == "train"), form), 0.5, 1)
        va = regime_view(base.subset(split == "validation"), form)
        plain = PriceFeaturizer(use_embeddings=False).fit(tr)
        tr.tokens = TokenCounts(price_text_vectorizer())
        va.tokens = tr.tokens
        memo = PriceFeaturizer(use_embeddings=False).fit(tr)
        for part in (tr, va, tr.subset(np.arange(len(tr)) % 3 == 0)):
            _same(memo.transform(part), plain.transform(part))
        assert tr.tokens.counts["texts_tokenised"] > 0


def test_the_character_ngram_block_is_sklearns_inside_the_runs_memos_and_counted_through_them(tmp_path):
    from fashion_pipeline.core.token_counts import token_caches

    df = clean_sample()
    base = regime_view(build_price_inputs(df[df["price_status"] == "ok"]), "full")
    split = base.frame["split"].to_numpy()
    tr, va = base.subset(split == "train"), base.subset(split == "validation")
    assert (tr.frame["source"] == "hm").sum() >= 20  # the sample has H&M texts for the block
    plain = PriceFeaturizer(use_embeddings=False, char_sources=("hm",)).fit(tr)
    expected = {name: plain.transform(part) for name, part in (("train", tr), ("validation", va))}
    for _ in range(2):  # the second block reads the first one's files
        with token_caches(tmp_path, "price_training") as caches, transform_memo() as memo:
            counted = PriceFeaturizer(use_embeddings=False, char_sources=("hm",)).fit(tr)
            assert counted.char_["hm"].vocabulary_ == plain.char_["hm"].vocabulary_
            np.testing.assert_array_equal(counted.char_["hm"].idf_, plain.char_["hm"].idf_)
            for name, part in (("train", tr), ("validation", va), ("validation", va)):
                _same(counted.transform(part), expected[name])
        # The block's memo for the character analyser (a file of its own) counted the H&M texts, and the
        # transform memo served the repeated validation rows.
        counts = caches.memo_for(char_text_vectorizer()).counts
        assert counts["texts_requested"] >= (tr.frame["source"] == "hm").sum()
        assert len(caches.describe()) == 2  # the word TF-IDF's memo and the character one's
        assert memo.counts["texts_requested"] > memo.counts["texts_transformed"] > 0
    assert counts["texts_tokenised"] == 0 < counts["texts_from_cache"]


def test_price_training_tokenises_through_the_memo_and_pickles_none_of_it(tmp_path):
    from fashion_pipeline.core.token_counts import token_caches

    def train(logs: list[str]):
        with token_caches(tmp_path, "price_training") as caches:
            res = train_price_models(clean_sample(), None, models=("ridge", "lightgbm"),
                                     params={"lightgbm": {"n_estimators": 30}}, blend=False, progress=logs.append)
        files.append(caches.describe())
        return res

    files: list[dict] = []

    logs: list[str] = []
    res = train(logs)
    line = next(m for m in logs if m.startswith("price text:"))
    tokenised, from_cache, requested = (int(w) for w in line.split() if w.isdigit())
    assert 0 < tokenised < requested / 3  # fits and transforms of the same rows share one tokenisation
    assert from_cache == 0 and "none yet" in line
    blob = pickle.dumps(res.model)
    assert b"TokenCounts" not in blob
    # The pickled model prices raw listing texts without the memo.
    df = clean_sample()
    test = build_price_inputs(df[(df["split"] == "test") & (df["price_status"] == "ok")].head(20))
    served = pickle.loads(blob).predict(test)
    assert served["price_usd"].notna().sum() > 10
    assert served.equals(res.model.predict(test))
    # The next training reads every text's counts from the file the first one wrote, and trains the same model.
    again_logs: list[str] = []
    again = train(again_logs)
    line = next(m for m in again_logs if m.startswith("price text:"))
    assert [int(w) for w in line.split() if w.isdigit()] == [0, tokenised, requested, tokenised]  # last: read
    assert again.model.predict(test).equals(served)
    # The source router's TF-IDF (another analyser: words alone) counted its texts through the block's memos too.
    assert len(files[1]) == 2 and all(f["texts_tokenised"] == 0 < f["texts_from_cache"] for f in files[1].values())


def test_the_transform_memo_gives_the_rows_sklearn_transforms_bit_for_bit():
    """Inside `transform_memo`, `tfidf_transform` answers overlapping batches (repeats, unseen words, empty
    texts) of two vectorizers exactly as each vectorizer's own transform does, computing each distinct
    (vectorizer, text) once; outside it nothing is memoised."""
    texts = _texts()
    word = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True).fit(texts[::2])
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=3, dtype=np.float32).fit(texts[1::2])
    rng = np.random.default_rng(1)
    batches = [[texts[i] for i in np.flatnonzero(rng.random(len(texts)) < 0.4)] + ["unseen words zzqx", "", texts[0]]
               for _ in range(3)]
    with transform_memo() as memo:
        for batch in batches:
            for vec in (word, char):
                _same(tfidf_transform(vec, batch), vec.transform(batch))
        _same(tfidf_transform(word, batches[0][:1]), word.transform(batches[0][:1]))
        with transform_memo() as inner:  # a nested block goes on with the outer memo
            assert inner is memo
        distinct = len({t for b in batches for t in b})
        assert memo.counts == {"texts_transformed": 2 * distinct, "texts_requested": 2 * sum(map(len, batches)) + 1}
        with pytest.raises(ValueError, match="string object received"):
            tfidf_transform(word, "one text")
    # Outside the block the vectorizer transforms directly: a memo made now sees nothing.
    assert isinstance(memo, TransformMemo)
    before = dict(memo.counts)
    _same(tfidf_transform(word, batches[1]), word.transform(batches[1]))
    assert memo.counts == before


def _memo_texts(tokens: TokenCounts) -> list[str]:
    return list(tokens._rows)


@pytest.mark.parametrize("params", [
    {"ngram_range": (1, 2), "min_df": 2, "max_features": 300, "sublinear_tf": True, "dtype": np.float32},
    {"analyzer": "char_wb", "ngram_range": (2, 5), "min_df": 3, "max_features": 2_000, "dtype": np.float32},
], ids=["word", "char"])
def test_a_memo_read_from_the_last_runs_file_fits_and_transforms_as_sklearn_and_tokenises_only_new_texts(
        tmp_path, params):
    texts = list(dict.fromkeys(_texts()))
    cache = tmp_path / "tokens.pkl"
    first, later = texts[: len(texts) * 2 // 3], texts[len(texts) // 3:]  # a third of the texts are new next run
    run1 = TokenCounts(TfidfVectorizer(**params), cache=cache)
    assert "none yet" in run1.cache_note
    run1.fit(TfidfVectorizer(**params), first)
    run1.save()
    run2 = TokenCounts(TfidfVectorizer(**params), cache=cache)
    assert f"{len(first)} texts' counts read" in run2.cache_note
    expected = TfidfVectorizer(**params).fit(later)
    got = run2.fit(TfidfVectorizer(**params), later)
    assert got.vocabulary_ == expected.vocabulary_
    np.testing.assert_array_equal(got.idf_, expected.idf_)
    other = texts[: len(texts) // 6] + ["unseen words zzqx", ""]  # the texts between are in neither: dropped
    _same(run2.transform(got, other), expected.transform(other))
    _same(run2.transform(got, later), expected.transform(later))
    new = len(set(later) - set(first)) + 1  # the unseen text (the empty one was in neither: counted too)
    new += "" not in set(first) | set(later)
    assert run2.counts["texts_tokenised"] == new
    assert run2.counts["texts_from_cache"] == len(set(later + other) & set(first))
    # What run 2 saves is what it was asked for: a text only the first run had is gone from the file (and
    # the terms only such texts had: the file's term ids are renumbered).
    run2.save()
    run3 = TokenCounts(TfidfVectorizer(**params), cache=cache)
    assert f"{len(set(later + other))} texts' counts read" in run3.cache_note
    sample = texts[:3] + texts[len(texts) // 4: len(texts) // 4 + 3] + texts[-5:]  # kept, dropped, kept
    _same(run3.transform(TfidfVectorizer(**params).fit(texts), sample),
          TfidfVectorizer(**params).fit(texts).transform(sample))
    assert run3.counts["texts_from_cache"] == len(set(sample) & set(later + other)) == 8
    assert run3.counts["texts_tokenised"] == len(set(sample) - set(later + other)) == 3


def test_a_cache_file_for_another_analyser_or_a_corrupt_one_is_not_read_and_the_counts_are_sklearns(tmp_path):
    texts = list(dict.fromkeys(_texts()))[:120]
    cache = tmp_path / "tokens.pkl"
    word = TokenCounts(TfidfVectorizer(ngram_range=(1, 2)), cache=cache)
    word.fit(TfidfVectorizer(ngram_range=(1, 2)), texts)
    word.save()
    unigram = TokenCounts(TfidfVectorizer(ngram_range=(1, 1)), cache=cache)
    assert "another analyser" in unigram.cache_note
    got = unigram.fit(TfidfVectorizer(ngram_range=(1, 1)), texts)
    assert got.vocabulary_ == TfidfVectorizer(ngram_range=(1, 1)).fit(texts).vocabulary_
    assert unigram.counts["texts_from_cache"] == 0 and unigram.counts["texts_tokenised"] == len(texts)
    cache.write_bytes(cache.read_bytes()[:100])  # a torn file
    torn = TokenCounts(TfidfVectorizer(ngram_range=(1, 2)), cache=cache)
    assert "unreadable" in torn.cache_note and "rebuilt" in torn.cache_note
    expected = TfidfVectorizer(ngram_range=(1, 2)).fit(texts)
    _same(torn.transform(torn.fit(TfidfVectorizer(ngram_range=(1, 2)), texts), texts), expected.transform(texts))
    assert torn.counts["texts_tokenised"] == len(texts)
    torn.save()  # and the next run reads the rebuilt file
    assert f"{len(texts)} texts' counts read" in TokenCounts(TfidfVectorizer(ngram_range=(1, 2)), cache=cache).cache_note


def test_transforms_inside_token_caches_and_a_transform_memo_are_sklearns_and_the_next_block_tokenises_nothing(tmp_path):
    """The listing evaluation's TF-IDF: several vectorizers fitted elsewhere (the served models'), one analyser
    memo each among them, term counts kept in files between blocks."""
    from fashion_pipeline.core.token_counts import token_caches

    texts = _texts()
    word_a = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True).fit(texts[::2])
    word_b = TfidfVectorizer(ngram_range=(1, 2), max_features=200, dtype=np.float32).fit(texts[1::2])  # same analyser
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=3).fit(texts[::3])
    batch = texts[:300] + ["unseen words zzqx", ""]
    for block in range(2):
        with token_caches(tmp_path, "eval") as caches, transform_memo():
            for vec in (word_a, word_b, char, word_a):
                _same(tfidf_transform(vec, batch), vec.transform(batch))
        seen = caches.describe()
        assert len(seen) == 2  # one memo per analyser, not per vectorizer
        distinct = len(set(batch))
        if block == 0:
            assert sorted(s["texts_tokenised"] for s in seen.values()) == [distinct, distinct]
        else:
            assert all(s["texts_tokenised"] == 0 and s["texts_from_cache"] == distinct for s in seen.values()), seen


def test_a_cache_file_that_cannot_be_written_is_reported_not_raised(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")
    memo = TokenCounts(TfidfVectorizer(), cache=blocker / "tokens.pkl")
    memo.fit(TfidfVectorizer(), ["red shirt", "blue shirt"])
    memo.save()
    assert "not saved" in memo.cache_note and not (blocker / "tokens.pkl").exists()
