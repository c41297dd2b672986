"""Feature building: fitted on train rows only, and each regime sees only its inputs."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pandas as pd
import scipy.sparse as sp
import pytest

from fashion_pipeline.core.features import ProductFeaturizer, TokenSequencer, with_embeddings
from fashion_pipeline_tests.fixtures.real_products import load_products, real_products_with_embeddings


@pytest.fixture(scope="module")
def frame():
    df, image, text = real_products_with_embeddings()
    return with_embeddings(df, df["product_id"].tolist(), image, text)


def test_fit_refuses_non_train_rows(frame):
    with pytest.raises(ValueError, match="non-train"):
        ProductFeaturizer("full").fit(frame)
    with pytest.raises(ValueError, match="non-train"):
        TokenSequencer("full").fit(frame)


def test_vocabulary_comes_from_train_rows_only(frame):
    train = frame[frame["split"] == "train"]
    other = frame[frame["split"] != "train"]
    train_text = " ".join(train["title"] + " " + train["description"] + " " + train["brand"].fillna(""))
    train_words = set(re.findall(r"[a-z0-9]+", train_text.lower()))
    # A real word that occurs only in validation/test titles (twice, so min_df would keep it).
    doc_words = [set(re.findall(r"[a-z0-9]+", t.lower())) - train_words for t in other["title"]]
    df_count = Counter(w for ws in doc_words for w in ws if w.isalpha() and len(w) > 2)
    unseen = next(w for w, c in df_count.most_common() if c >= 2)
    fz = ProductFeaturizer("full", svd_components=8, image_components=8).fit(train)
    assert unseen not in fz.vectorizers_["title_word"].vocabulary_
    assert fz.n_fit_rows_ == len(train)
    # ...and the same featurizer does pick it up once those rows are (wrongly) relabelled train.
    leaked = frame.assign(split="train")
    assert unseen in ProductFeaturizer("full", svd_components=8, image_components=8).fit(leaked).vectorizers_["title_word"].vocabulary_
    seq = TokenSequencer("full").fit(train)
    assert unseen not in seq.vocab_


def _changed(fz, a, b, kind):
    xa, xb = fz.transform(a, kind), fz.transform(b, kind)
    if hasattr(xa, "toarray"):
        xa, xb = xa.toarray(), xb.toarray()
    return not np.allclose(xa, xb)


@pytest.fixture(scope="module")
def fitted(frame):
    train = frame[frame["split"] == "train"]
    return {r: ProductFeaturizer(r).fit(train) for r in ("full", "sparse", "image")}


@pytest.mark.parametrize("kind", ["sparse", "dense", "wide"])
def test_regimes_drop_the_right_inputs(frame, fitted, kind):
    rows = frame[frame["split"] == "test"].head(20)
    other_desc = rows.assign(description="machine wash cotton polyester blend slim fit party wear")
    other_brand = rows.assign(brand="Puma")
    other_title = rows.assign(title="Leather watch strap")
    other_text_emb = rows.assign(text_embedding=list(frame["text_embedding"].iloc[::-1].head(20)))
    other_image = rows.assign(image_embedding=list(frame["image_embedding"].iloc[::-1].head(20)))

    full, sparse, image = fitted["full"], fitted["sparse"], fitted["image"]

    for changed_rows in (other_desc, other_brand, other_title, other_text_emb, other_image):
        assert _changed(full, rows, changed_rows, kind)
    # sparse listings: image + title only
    assert not _changed(sparse, rows, other_desc, kind)
    assert not _changed(sparse, rows, other_brand, kind)
    assert not _changed(sparse, rows, other_text_emb, kind)
    assert _changed(sparse, rows, other_title, kind)
    assert _changed(sparse, rows, other_image, kind)
    # image only
    for changed_rows in (other_desc, other_brand, other_title, other_text_emb):
        assert not _changed(image, rows, changed_rows, kind)
    assert _changed(image, rows, other_image, kind)


def test_missing_image_is_zero_with_flag(frame, fitted):
    fz = fitted["image"]
    rows = frame.head(4).copy()
    rows["image_embedding"] = [None, rows["image_embedding"].iloc[1], None, rows["image_embedding"].iloc[3]]
    x = fz.transform(rows, "dense")
    # last column is has_image; PCA block of a missing image is zero, not the mean image
    assert x[:, -1].tolist() == [0.0, 1.0, 0.0, 1.0]
    assert np.all(x[[0, 2], :-1] == 0) and np.any(x[[1, 3], :-1] != 0)


def test_with_embeddings_joins_by_id_and_marks_missing():
    df = load_products(n_kaggle=5, n_hm=0)
    ids = list(df["product_id"])[::-1]  # different order than the products
    image = np.arange(5 * 3, dtype=np.float32).reshape(5, 3)
    image[0] = np.nan  # the last product (first in ids) has no image
    out = with_embeddings(df, ids, image, None)
    assert out["image_embedding"].iloc[-1] is None
    np.testing.assert_array_equal(out["image_embedding"].iloc[0], image[4])


def test_embedding_matrix_zeroes_missing_and_non_finite_rows_and_refuses_another_length():
    from fashion_pipeline.core.features import embedding_matrix

    col = pd.Series([np.array([1.0, 2.0], np.float32), None, np.array([np.nan, 1.0], np.float32), float("nan"),
                     [3.0, 4.0], np.array([np.inf, 0.0], np.float32)], dtype=object)
    m, present = embedding_matrix(pd.DataFrame({"e": col}), "e")
    assert m.dtype == np.float32 and present.tolist() == [True, False, False, False, True, False]
    np.testing.assert_array_equal(m, [[1, 2], [0, 0], [0, 0], [0, 0], [3, 4], [0, 0]])
    none, present = embedding_matrix(pd.DataFrame({"e": pd.Series([None, None], dtype=object)}), "e", 3)
    assert none.shape == (2, 3) and not none.any() and not present.any()
    with pytest.raises(ValueError, match=r"e row 2 has shape \(3,\), expected \(2,\)"):
        embedding_matrix(pd.DataFrame({"e": pd.Series([None, [1.0, 2.0], [1.0, 2.0, 3.0]], dtype=object)}), "e")


def test_spec_records_whether_the_model_reads_attributes(frame):
    train = frame[frame["split"] == "train"]
    without = ProductFeaturizer("full", svd_components=8, image_components=8).fit(train).spec()
    assert without["uses_attributes"] is False and "attributes" not in without["inputs"]
    tagged = train.assign(fit=["slim", "regular"] * (len(train) // 2) + ["slim"] * (len(train) % 2))
    with_attrs = ProductFeaturizer("full", svd_components=8, image_components=8).fit(tagged).spec()
    assert with_attrs["uses_attributes"] is True and "attributes" in with_attrs["inputs"]
    assert with_attrs["attribute_vocab_size"] == 2  # fit=slim, fit=regular
    # The photo-only regime never reads them.
    assert ProductFeaturizer("image").fit(tagged).spec()["uses_attributes"] is False


@pytest.mark.parametrize("shape", [(7, 5), (1, 1), (0, 4), (3, 0)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_blocks_become_the_same_csr_matrix_scipy_builds(shape, dtype):
    """The design matrices' dense blocks skip scipy's COO detour but must stay the same matrix:
    same shape, values and stored positions (zeros not stored), float32."""
    from fashion_pipeline.core.sparse_blocks import dense_csr

    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    if x.size:
        x[0] = 0.0
        x[:, -1] = 0.0
    want = sp.csr_matrix(x.astype(np.float32))
    before = x.copy()
    got = dense_csr(x)
    assert np.array_equal(x, before)  # the input is left as it was
    assert got.shape == want.shape and got.dtype == np.float32
    assert got.nnz == want.nnz
    assert np.array_equal(got.indptr, want.indptr) and np.array_equal(got.indices, want.indices)
    assert np.array_equal(got.data, want.data)
    with pytest.raises(ValueError, match="2-d"):
        dense_csr(np.zeros(3))


def test_the_fitted_digest_names_what_transform_reads(frame):
    import pickle

    train = frame[frame["split"] == "train"]
    a = ProductFeaturizer("sparse", svd_components=8, image_components=8).fit(train)
    b = pickle.loads(pickle.dumps(ProductFeaturizer("sparse", svd_components=8, image_components=8).fit(train)))
    assert a.fit_digest_ == b.fit_digest_  # refitted on the same rows, and through a pickle: same features
    rows = frame[frame["split"] == "test"].head(15)
    # (equal up to float32 rounding: BLAS may take another path for arrays at another alignment)
    np.testing.assert_allclose(a.transform(rows, "sparse").toarray(), b.transform(rows, "sparse").toarray(),
                               rtol=1e-5, atol=1e-6)
    # Other training rows, other settings, another regime: another digest.
    assert ProductFeaturizer("sparse", svd_components=8, image_components=8).fit(train.iloc[:-5]).fit_digest_ != a.fit_digest_
    assert ProductFeaturizer("sparse", svd_components=8, image_components=9).fit(train).fit_digest_ != a.fit_digest_
    assert ProductFeaturizer("full", svd_components=8, image_components=8).fit(train).fit_digest_ != a.fit_digest_


@pytest.mark.parametrize("regime", ["full", "sparse", "image"])
def test_fit_transform_kinds_is_fit_then_transform_bit_for_bit(frame, regime):
    train = frame[frame["split"] == "train"]
    kinds = ["dense", "nonneg", "sparse", "wide"]
    once = ProductFeaturizer(regime, svd_components=8, image_components=8)
    got = once.fit_transform_kinds(train, kinds)
    plain = ProductFeaturizer(regime, svd_components=8, image_components=8).fit(train)
    want = plain.transform_kinds(train, kinds)
    assert once.fit_digest_ == plain.fit_digest_
    for k in kinds:
        a, b = got[k], want[k]
        assert type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape, k
        if sp.issparse(a):
            a, b = a.tocsr(), b.tocsr()
            for attr in ("indptr", "indices", "data"):
                np.testing.assert_array_equal(getattr(a, attr), getattr(b, attr), err_msg=k)
        else:
            np.testing.assert_array_equal(a, b, err_msg=k)
    # The vectorizers are the ones sklearn fits on the same texts (they fit through a tokenisation memo).
    from sklearn.feature_extraction.text import TfidfVectorizer
    for name, vec in once.vectorizers_.items():
        column = "description" if name == "description_word" else "title"
        texts = train[column].fillna("").astype(str)
        if name == "title_word":
            texts = once._title_text(train)
        ref = TfidfVectorizer(**vec.get_params()).fit(texts)
        assert vec.vocabulary_ == ref.vocabulary_, name
        np.testing.assert_array_equal(vec.idf_, ref.idf_, err_msg=name)


@pytest.mark.parametrize("regime", ["full", "sparse", "image"])
def test_a_featurizer_fitted_for_some_kinds_builds_them_alone_and_refuses_the_others(frame, regime):
    """Fitted for the linear kinds only, a featurizer skips the TruncatedSVD and the text PCA (only
    'dense' / 'wide' read them) and gives the same sparse / nonneg features as one fitted for all."""
    train = frame[frame["split"] == "train"]
    rows = frame[frame["split"] == "test"]
    some = ProductFeaturizer(regime, svd_components=8, image_components=8, text_components=4).fit(
        train, kinds=("nonneg", "sparse"))
    every = ProductFeaturizer(regime, svd_components=8, image_components=8, text_components=4).fit(train)
    assert some.kinds_ == ("sparse", "nonneg") and every.kinds_ == ("sparse", "nonneg", "dense", "wide")
    assert some.svd_ is None and getattr(some, "text_pca_", None) is None
    if regime != "image":  # the image regime has no text: nothing to reduce either way
        assert every.svd_ is not None
    if regime == "full":
        assert every.text_pca_ is not None
    for kind in ("sparse", "nonneg"):
        a, b = some.transform(rows, kind), every.transform(rows, kind)
        for attr in ("indptr", "indices", "data"):
            np.testing.assert_array_equal(getattr(a, attr), getattr(b, attr), err_msg=kind)
    for kind in ("dense", "wide"):
        with pytest.raises(ValueError, match=f"'{kind}' was not fitted"):
            some.transform(rows, kind)
    assert some.fit_digest_ != every.fit_digest_  # never shared with a featurizer that fitted more
    # 'wide' alone needs the SVD (it reads the reduced TF-IDF) but not the text PCA.
    wide = ProductFeaturizer(regime, svd_components=8, image_components=8, text_components=4).fit(
        train, kinds=("wide",))
    assert (wide.svd_ is None) == (every.svd_ is None) and getattr(wide, "text_pca_", None) is None
    np.testing.assert_array_equal(wide.transform(rows, "wide"), every.transform(rows, "wide"))
    with pytest.raises(ValueError, match="unknown feature kinds"):
        ProductFeaturizer(regime).fit(train, kinds=("sparse", "tree"))


def test_regimes_fitted_on_one_frame_share_one_image_pca_and_the_same_features(frame, monkeypatch):
    """A leaderboard run fits the three regimes on the same train frame: with one ``shared`` dict
    the image PCA is fitted once (counted at sklearn's PCA.fit) and every regime's features equal
    those of a featurizer fitted on its own."""
    from sklearn.decomposition import PCA

    train = frame[frame["split"] == "train"]
    rows = frame[frame["split"] == "test"]
    kw = dict(svd_components=8, image_components=8, text_components=4)
    alone = {r: ProductFeaturizer(r, **kw).fit(train) for r in ("full", "sparse", "image")}
    fits = []
    real_fit = PCA.fit
    monkeypatch.setattr(PCA, "fit", lambda self, x, y=None: fits.append(x.shape) or real_fit(self, x, y))
    shared: dict = {}
    together = {r: ProductFeaturizer(r, **kw) for r in ("full", "sparse", "image")}
    for r, fz in together.items():
        fz.fit_transform_kinds(train, ["sparse", "dense"], shared=shared)
    n_images = int(train["image_embedding"].notna().sum())
    # one image PCA for the three regimes, plus the text PCA of 'full' (the only regime with text embeddings)
    assert sorted(fits) == sorted([(n_images, train["image_embedding"].dropna().iloc[0].shape[0]),
                                   (int(train["text_embedding"].notna().sum()), train["text_embedding"].dropna().iloc[0].shape[0])])
    assert together["full"].image_pca_ is together["image"].image_pca_
    for r in together:
        assert together[r].fit_digest_ == ProductFeaturizer(r, **kw).fit(train, kinds=("sparse", "dense")).fit_digest_
        for kind in ("sparse", "dense"):
            a, b = together[r].transform(rows, kind), alone[r].transform(rows, kind)
            a, b = (a.toarray(), b.toarray()) if sp.issparse(a) else (a, b)
            np.testing.assert_array_equal(a, b, err_msg=f"{r}/{kind}")
    # Another frame object (even with the same rows) is never served from the dict.
    other = ProductFeaturizer("image", **kw)
    other.fit(train.copy(), kinds=("sparse",), shared=shared)
    assert other.image_pca_ is not together["image"].image_pca_


def _same_matrix(a, b) -> None:
    if sp.issparse(a):
        a, b = a.tocsr(), b.tocsr()
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a.indptr, b.indptr)
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.data, b.data)
    else:
        np.testing.assert_array_equal(a, b)


def test_featurizers_within_token_caches_give_the_same_features_and_the_next_run_reads_the_counts(frame, tmp_path):
    """A classifier run inside `token_caches` (fits and transforms, a kept featurizer too) builds the matrices
    it builds without; the next run finds every text it asks for in the files and tokenises none."""
    from fashion_pipeline.core.token_counts import token_caches

    train = frame[frame["split"] == "train"]
    other = frame[frame["split"] != "train"]
    kinds = ["dense", "sparse"]
    plain = ProductFeaturizer("full", svd_components=8, image_components=8)
    expected = plain.fit_transform_kinds(train, kinds)
    expected_other = plain.transform_kinds(other, kinds)
    for run in range(2):
        with token_caches(tmp_path, "classifiers") as tokens:
            fz = ProductFeaturizer("full", svd_components=8, image_components=8)
            got = fz.fit_transform_kinds(train, kinds)
            got_other = fz.transform_kinds(other, kinds)
            kept_other = plain.transform_kinds(other, kinds)  # a featurizer fitted elsewhere (a retrain's kept one)
        for k in kinds:
            _same_matrix(got[k], expected[k])
            _same_matrix(got_other[k], expected_other[k])
            _same_matrix(kept_other[k], expected_other[k])
        seen = tokens.describe()
        assert len(seen) == 2  # the word analyser (titles and descriptions) and the title characters
        if run == 0:
            assert all(s["texts_from_cache"] == 0 and s["texts_tokenised"] > 0 for s in seen.values())
        else:
            assert all(s["texts_tokenised"] == 0 and s["texts_from_cache"] > 0 and "counts read" in s["cache"]
                       for s in seen.values()), seen
            # The title characters' memo counted every title, the transformed splits' too: transforms go through it.
            assert frame["title"].fillna("").astype(str).nunique() in {s["texts_from_cache"] for s in seen.values()}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(seen)
