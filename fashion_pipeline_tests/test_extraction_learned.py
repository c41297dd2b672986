"""The learned attribute extractor and the brand matcher, on real catalogue text.

Expectations are literal (hand-written titles, reviewed values), not derived with the code's own
filters. The quality numbers themselves are benchmarks (benchmarks/extraction_quality.py)."""

import os
import pickle

import pandas as pd
import pytest

from fashion_pipeline.core.extraction import learned, quality
from fashion_pipeline.core.extraction.brands import BrandMatcher, normalise, score_titles
from fashion_pipeline.core.extraction.prepared_text import prepare
from fashion_pipeline.core.model_store import ModelCorruptError, ModelStore
from fashion_pipeline.core.scoring import listing_extractor
from fashion_pipeline.core.threads import WorkerPool


def test_normalise_folds_case_accents_punctuation_and_ampersand():
    assert normalise("Levi's") == ["levis"]
    assert normalise("  ADIDAS Originals ") == ["adidas", "originals"]
    assert normalise("Marks & Spencer") == ["marks", "and", "spencer"]
    assert normalise("Café Coton") == ["cafe", "coton"]
    assert normalise(None) == []


@pytest.mark.parametrize("text, expected", [
    ("vintage nike hoodie size M", "Nike"),                      # anywhere, lower case
    ("NIKE Air max", "Nike"),                                    # upper case
    ("barely worn tommy hilfiger polo", "Tommy Hilfiger"),      # multi-word, mid-title
    ("tommyhilfiger shirt", "Tommy Hilfiger"),                  # written without its space
    ("Levis 501 jeans", "Levi's"),                               # apostrophe dropped by the seller
    ("reebok classic", "Reebok"),
    ("Reebook running shoes", "Reebok"),                         # one extra letter in a 6-letter brand
    ("rebeok trainers", "Reebok"),                               # two letters swapped
    ("Rebook running shoes", None),                              # two edits away: no guess
    ("United Colors of Benetton jumper", "United Colors of Benetton"),
    ("plain white t-shirt", None),
    ("", None),
])
def test_brand_matcher_finds_brands_in_free_text(text, expected):
    m = BrandMatcher(["Nike", "Tommy Hilfiger", "Levi's", "Reebok", "United Colors of Benetton", "Puma"])
    assert m.find(text) == expected


def test_brand_matcher_prefers_the_longest_brand_and_refuses_ambiguous_typos():
    m = BrandMatcher(["Nike", "Nike Sportswear", "Lacoste", "Lacosta"])
    assert m.find("nike sportswear jacket") == "Nike Sportswear"
    assert m.find("lacostx shirt") is None  # one edit from two brands: no guess


@pytest.mark.parametrize("text, expected", [
    ("lacste polo", "Lacoste"),       # one letter dropped
    ("lacoxte polo", "Lacoste"),      # one letter replaced
    ("laccoste polo", "Lacoste"),     # one letter added
    ("lacsote polo", "Lacoste"),      # two neighbours swapped
    ("lcoxte polo", None),            # two edits
    ("birkenstok sandals", "Birkenstock"),
    ("birkenstockk sandals", "Birkenstock"),
    ("birkenstack sandals", "Birkenstock"),
])
def test_brand_matcher_takes_one_edit_of_any_kind(text, expected):
    assert BrandMatcher(["Lacoste", "Birkenstock", "Puma", "Nike"]).find(text) == expected


def test_brand_matcher_finds_what_a_scan_of_every_brand_finds():
    """The deletion index only narrows the search: over random brands and random one- and two-edit
    typos, the brands found are those a scan of every word of a near length finds."""
    import random
    import string

    from fashion_pipeline.core.extraction.brands import _one_edit

    rnd = random.Random(7)
    words = sorted({"".join(rnd.choice("abcde") for _ in range(rnd.randint(6, 9))) for _ in range(400)})
    m = BrandMatcher([w.capitalize() for w in words])
    for _ in range(2000):
        t = list(rnd.choice(words))
        for _ in range(rnd.randint(1, 2)):
            i = rnd.randrange(len(t))
            op = rnd.randrange(4)
            if op == 0:
                t[i] = rnd.choice("abcdef")
            elif op == 1 and len(t) > 6:
                del t[i]
            elif op == 2:
                t.insert(i, rnd.choice(string.ascii_lowercase[:6]))
            elif i + 1 < len(t):
                t[i], t[i + 1] = t[i + 1], t[i]
        token = "".join(t)
        near = {w.capitalize() for w in words if _one_edit(token, w)}
        expected = token.capitalize() if token in words else (near.pop() if len(near) == 1 else None)
        assert m.find(token) == expected, token


def test_brand_matcher_fit_limits_brands_that_are_ordinary_words():
    # "Basics" names a brand, but other brands' titles use the word: accepted only as the first word.
    titles = ["Basics Men Blue Shirt"] * 6 + ["Puma Basics Black Tee"] * 6 + ["Roxy Top"] * 6
    gold = ["Basics"] * 6 + ["Puma"] * 6 + ["H&M"] * 6
    m = BrandMatcher.fit(titles + ["Roxy Women Dress"], gold + ["Roxy"])
    assert m.start_only == {"Basics"}
    assert m.find("Basics Women Jeans") == "Basics" and m.find("puma basics tee") == "Puma"
    assert "Roxy" in m.excluded and m.find("Roxy Top") is None  # an H&M product name, not the brand


def test_score_titles_counts_found_and_wrong_over_titles_that_name_their_brand():
    m = BrandMatcher(["Nike", "Puma"])
    titles = ["Nike Men Shoe", "puma tee", "Puma Nike-style tee", "Plain tee", "Adidas tee"]
    gold = ["Nike", "Puma", "Nike", "Puma", "Adidas"]
    s = score_titles(m.find, m.brands, titles, gold)
    # Titles naming their (known) brand: 1, 2 and 3 -> found 1 and 2; title 3 says Puma first -> wrong.
    assert s["titles_with_known_brand"] == 3
    assert s["found"] == pytest.approx(2 / 3) and s["wrong"] == pytest.approx(1 / 3)
    assert s["wrong_over_all_titles"] == pytest.approx(1 / 5)


@pytest.fixture(scope="module")
def clean_sample(tmp_path_factory):
    """clean_products of the embedded sample, built by the real ingest chain."""
    import duckdb

    from fashion_pipeline_tests.conftest import SAMPLE_ROOT
    from fashion_pipeline_tests.fixtures.runs import INGEST_CHAIN, materialize

    var = tmp_path_factory.mktemp("learned") / "var"
    assert materialize(INGEST_CHAIN, SAMPLE_ROOT, var).success
    with duckdb.connect(str(var / "warehouse.duckdb"), read_only=True) as con:
        return con.execute("select * from clean_products").df()


@pytest.fixture(scope="module")
def trained(clean_sample):
    df = clean_sample
    texts = [prepare(t, d, 2000) for t, d in zip(df["title"], df["description"].fillna(""))]
    truths = [quality.catalogue_truth(v) for v in df["article_attributes"]]
    model = learned.fit(texts, truths, df["source_category"].tolist(), df["split"].tolist(),
                        df["title"].tolist(), df["brand"].tolist())
    return model


def test_a_retrain_fits_the_tuned_c_instead_of_searching(clean_sample, trained):
    df = clean_sample
    texts = [prepare(t, d, 2000) for t, d in zip(df["title"], df["description"].fillna(""))]
    truths = [quality.catalogue_truth(v) for v in df["article_attributes"]]
    searched = {a: h.C for a, h in trained.heads.items()}
    assert set(searched.values()) <= set(learned.DEFAULT_C_GRID) and "material" in searched
    retrained = learned.fit(texts, truths, df["source_category"].tolist(), df["split"].tolist(),
                            df["title"].tolist(), df["brand"].tolist(), tuned_c={"material": 7.0})
    assert retrained.heads["material"].C == 7.0  # outside the grid: only the tuned value was fitted
    assert {a: h.C for a, h in retrained.heads.items() if a != "material"} == \
        {a: c for a, c in searched.items() if a != "material"}  # the others searched as before


def test_learned_model_reads_the_attribute_from_the_text_not_a_constant(trained):
    # The same title, two fibres: the answer follows the description (the sample model is small,
    # so its forced answer is compared; the shipped answer may be "unknown" at this confidence).
    texts = [prepare("Nike Men Black T-shirt", "Composition: 100% cotton", 2000),
             prepare("Nike Men Black T-shirt", "Composition: 100% polyester", 2000)]
    values, _ = trained.predict(texts, abstain=False)["material"]
    assert values == ["cotton", "polyester"]


def test_learned_model_says_unknown_below_its_threshold(trained):
    head = trained.heads["material"]
    assert 0 < head.threshold < 1  # chosen on validation rows, not a default
    values, conf = head.predict(trained.vectorizer.transform(["zzz qqq"]))
    forced, _ = head.predict(trained.vectorizer.transform(["zzz qqq"]), abstain=False)
    assert forced[0] is not None
    assert (values[0] is None) == (conf[0] < head.threshold)


def test_listing_extractor_uses_the_published_model_and_names_a_damaged_file(trained, tmp_path):
    store = ModelStore(tmp_path / "models")
    extract, note = listing_extractor(store)
    assert note.startswith("rules (no published attribute_extractor")
    version = store.save(learned.STORE_NAME, trained, {}, {})
    store.publish(learned.STORE_NAME, version)
    extract, note = listing_extractor(store)
    assert note == f"learned (attribute_extractor {version})"
    import pandas as pd
    out = extract(pd.DataFrame({"product_id": ["x"], "title": ["vintage Nike tee"],
                                "description": ["Composition: 100% cotton"]}))
    assert out.loc[0, "materials"].startswith('["cotton"')
    artefact = tmp_path / "models" / learned.STORE_NAME / version / "model.pkl"
    artefact.write_bytes(b"not a model")
    _, note = listing_extractor(store)
    assert note.startswith("rules (attribute_extractor unusable:") and str(artefact) in note
    with pytest.raises(ModelCorruptError):
        store.load(learned.STORE_NAME)


def test_listing_extractor_extracts_a_repeated_text_once(trained, tmp_path):
    import pandas as pd
    store = ModelStore(tmp_path / "models")
    store.publish(learned.STORE_NAME, store.save(learned.STORE_NAME, trained, {}, {}))
    extract, _ = listing_extractor(store)
    first = extract(pd.DataFrame({"product_id": ["a", "b"], "title": ["vintage Nike tee", "Levis jeans"],
                                  "description": ["Composition: 100% cotton", "denim, slim fit"]}))
    assert extract.counts == {"extracted": 2, "remembered": 0}
    # The same two texts under other ids (as in another listing form), and one new text.
    second = pd.DataFrame({"product_id": ["c", "d", "e"], "title": ["Levis jeans", "vintage Nike tee", "wool scarf"],
                           "description": ["denim, slim fit", "Composition: 100% cotton", ""]})
    again = extract(second)
    assert extract.counts == {"extracted": 3, "remembered": 2}
    assert again["product_id"].tolist() == ["c", "d", "e"]
    # Remembered answers are those a fresh extractor gives.
    fresh, _ = listing_extractor(store)
    pd.testing.assert_frame_equal(again, fresh(second))
    assert again.loc[1, "materials"] == first.loc[0, "materials"]


def test_learned_model_pickles_round_trip_with_the_same_version(trained):
    again = pickle.loads(pickle.dumps(trained))
    assert again.version == trained.version and again.version.startswith("learned-")


def test_a_listing_without_known_words_gets_no_learned_attributes(trained):
    blank, gibberish = trained.extract([prepare("", "", 2000), prepare("zzqx vvbn", "", 2000)])
    for a in (blank, gibberish):
        assert (a.materials, a.fit, a.pattern, a.occasion) == ([], None, None, None)


def test_one_token_memo_for_model_recipe_and_report_changes_no_answer(clean_sample, trained):
    """The asset fits the model, the recipe and the report through one TokenCounts: every text is
    tokenised once, and the vocabularies, the answers and the report are those of plain fits."""
    from fashion_pipeline.core.token_counts import TokenCounts

    df = clean_sample
    texts = [prepare(t, d, 2000) for t, d in zip(df["title"], df["description"].fillna(""))]
    truths = [quality.catalogue_truth(v) for v in df["article_attributes"]]
    splits = df["split"].tolist()
    tokens = TokenCounts(learned.text_vectorizer())
    tuned = {a: h.C for a, h in trained.heads.items()}
    args = (texts, truths, df["source_category"].tolist(), splits, df["title"].tolist(), df["brand"].tolist())
    plain, memo = learned.fit(*args, tuned_c=tuned), learned.fit(*args, tuned_c=tuned, tokens=tokens)
    assert learned.fit(*args, tuned_c=tuned).version == plain.version  # seeded: the same rows, the same model
    assert memo.vectorizer.vocabulary_ == plain.vectorizer.vocabulary_
    assert (memo.vectorizer.idf_ == plain.vectorizer.idf_).all()
    assert memo.version == plain.version  # the content hash covers the heads' fitted classifiers
    train, test = [s == "train" for s in splits], [s == "test" for s in splits]
    assert sum(test) > 20
    recipe = learned.reference_recipe(texts, truths, train, test)
    assert learned.reference_recipe(texts, truths, train, test, tokens=tokens) == recipe
    test_texts = [t for t, m in zip(texts, test) if m]
    test_truths = [t for t, m in zip(truths, test) if m]
    assert learned.evaluate(memo, test_texts, test_truths, recipe, tokens=tokens) == \
        learned.evaluate(plain, test_texts, test_truths, recipe)
    distinct = len({learned.model_text(t) for t in texts})
    assert tokens.counts["texts_tokenised"] == distinct < tokens.counts["texts_requested"]


def test_fits_in_worker_processes_give_the_same_model_recipe_and_version(clean_sample, trained):
    """processes=2 runs every LinearSVC (each C and attribute, the recipe's) in two worker processes: the
    same thresholds, answers, recipe and content version as in the run's own process, which a fit on
    threads could not promise (liblinear's process-global random generator)."""
    df = clean_sample
    texts = [prepare(t, d, 2000) for t, d in zip(df["title"], df["description"].fillna(""))]
    truths = [quality.catalogue_truth(v) for v in df["article_attributes"]]
    splits = df["split"].tolist()
    args = (texts, truths, df["source_category"].tolist(), splits, df["title"].tolist(), df["brand"].tolist())
    train, test = [s == "train" for s in splits], [s == "test" for s in splits]
    with WorkerPool(2) as pool:  # one pool for both, as the asset does
        two = learned.fit(*args, processes=pool)
        recipe_two = learned.reference_recipe(texts, truths, train, test, processes=pool)
    one = learned.fit(*args)
    assert two.version == one.version == trained.version
    assert {a: (h.C, h.threshold) for a, h in two.heads.items()} == {a: (h.C, h.threshold) for a, h in one.heads.items()}
    assert two.extract(texts[:50]) == one.extract(texts[:50])
    assert recipe_two == learned.reference_recipe(texts, truths, train, test)


def worker_pid(_) -> int:
    return os.getpid()


def test_a_worker_pool_returns_results_in_job_order_and_its_workers_end_with_it():
    import psutil

    from fashion_pipeline.core.threads import map_processes

    jobs = [(n, n + 1) for n in range(7)]
    expected = [n * (n + 1) for n in range(7)]
    assert map_processes(int.__mul__, jobs, 1) == map_processes(int.__mul__, jobs, 3) == expected
    assert map_processes(int.__mul__, [], 2) == []
    with WorkerPool(2) as pool:
        assert pool.map(int.__mul__, jobs) == expected
        pids = set(pool.map(worker_pid, [(i,) for i in range(8)]))  # the same workers serve both calls
        assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert WorkerPool(1).map(worker_pid, [(0,), (1,)]) == [os.getpid()] * 2  # one process: this one


def test_a_retrained_model_reuses_the_cached_rules_values_and_answers_as_without_cache(clean_sample, trained,
                                                                                      tmp_path):
    """The learned model completes the rules' values (style, further materials); those depend on the
    text alone, so a retrained model (a new version: its own results recompute) takes them from the
    cache — and answers exactly what an uncached run of the same model answers."""
    from fashion_pipeline.core.extraction.cache import ExtractionCache
    from fashion_pipeline.core.extraction.pipeline import Extractor, ProductText
    from fashion_pipeline.core.extraction.rules import RulesExtractor

    df = clean_sample
    products = [ProductText(p, t, d or "", None) for p, t, d in zip(df["product_id"], df["title"], df["description"])]
    n_texts = len({(t, d or "") for t, d in zip(df["title"], df["description"])})
    texts = [prepare(t, d, 2000) for t, d in zip(df["title"], df["description"].fillna(""))]
    truths = [quality.catalogue_truth(v) for v in df["article_attributes"]]
    retrained = learned.fit(texts, truths, df["source_category"].tolist(), df["split"].tolist(),
                            df["title"].tolist(), df["brand"].tolist(), tuned_c={"material": 7.0})
    assert retrained.version != trained.version
    cache_dir = tmp_path / "cache"

    first, s1 = Extractor(RulesExtractor(), learned=trained, cache=ExtractionCache(cache_dir)).run(products)
    assert s1.rules_reused == 0 and s1.computed == len(products)
    second, s2 = Extractor(RulesExtractor(), learned=retrained, cache=ExtractionCache(cache_dir)).run(products)
    assert s2.cached == 0 and s2.rules_reused == n_texts  # the new version's results computed, the rules' reused
    # The first version's results are gone from the cache (no run asks for them again); the rules' stay.
    assert s2.cache_dropped == n_texts and len(ExtractionCache(cache_dir)) == 2 * n_texts
    fresh, _ = Extractor(RulesExtractor(), learned=retrained).run(products)
    assert [r.attributes for r in second] == [r.attributes for r in fresh]
    assert [r.attributes for r in first] != [r.attributes for r in second]  # the retrained model's own answers


def test_paired_accuracy_pools_the_validation_pairs_as_the_report_scores_them(clean_sample, trained):
    df = clean_sample[clean_sample["split"] == "validation"]
    texts = [prepare(t, d, 2000) for t, d in zip(df["title"], df["description"].fillna(""))]
    truths = [quality.catalogue_truth(v) for v in df["article_attributes"]]
    same = learned.paired_accuracy(trained, trained, texts, truths)
    # (product, attribute) pairs with a catalogue value, counted from the gold directly
    pairs = sum(1 for t in truths for a in learned.TARGETS if t.get(a) not in (None, learned.NOT_APPLICABLE))
    assert pairs > 50 and same["pairs"] == pairs
    assert same["difference"] == 0 and same["difference_se"] == 0 and same["pairs_disagreeing"] == 0
    # the pooled accuracy is the report's per-attribute accuracy weighted by its n ('learned' = as shipped)
    report = pd.DataFrame(learned.evaluate(trained, texts, truths))
    shipped = report[(report["extractor"] == "learned") & (report["n"] > 0)]
    assert same["candidate_accuracy"] == pytest.approx((shipped["accuracy"] * shipped["n"]).sum() / shipped["n"].sum())

    # A model that cannot fit (C tiny: every head answers the majority or abstains) against the real one.
    weak = learned.fit([prepare(t, d, 2000) for t, d in zip(clean_sample["title"], clean_sample["description"].fillna(""))],
                       [quality.catalogue_truth(v) for v in clean_sample["article_attributes"]],
                       clean_sample["source_category"].tolist(), clean_sample["split"].tolist(),
                       clean_sample["title"].tolist(), clean_sample["brand"].tolist(),
                       tuned_c={a: 1e-4 for a in learned.TARGETS})
    better = learned.paired_accuracy(trained, weak, texts, truths)
    assert better["difference"] == pytest.approx(better["candidate_accuracy"] - better["published_accuracy"])
    assert better["difference"] > 2 * better["difference_se"] > 0
    assert learned.replaces_published(better)[0] is True
    worse = learned.paired_accuracy(weak, trained, texts, truths)
    assert worse["difference"] == pytest.approx(-better["difference"])
    assert learned.replaces_published(worse)[0] is False
    assert learned.replaces_published(same)[0] is False  # identical on validation: the published one stays


@pytest.mark.parametrize("d, se, margin, publish", [
    (0.010, 0.004, 2.0, True),    # 2.5 SE better
    (0.010, 0.004, 3.0, False),   # ... but not 3 SE
    (0.002, 0.004, 2.0, False),   # within noise
    (-0.02, 0.004, 2.0, False),   # worse
    (0.05, 0.0, 2.0, True),       # SE 0 and better: every pair moved the same way, to right
])
def test_a_retrained_extractor_replaces_the_published_one_only_when_measurably_better(d, se, margin, publish):
    comparison = {"pairs": 1000, "candidate_accuracy": 0.9 + d, "published_accuracy": 0.9, "difference": d,
                  "difference_se": se}
    ok, why = learned.replaces_published(comparison, margin)
    assert ok is publish and why.startswith("candidate measurably better" if publish else "candidate not measurably")
    assert learned.replaces_published({**comparison, "pairs": 0})[0] is True  # nothing to compare on: publish
