"""Evaluate the published (or candidate) models the way a seller meets them: held-out catalogue
products rewritten as listings in each listing form and scored by `scoring.score_listings`,
the code path of `fashion-pipeline score`, next to a plain TF-IDF recipe on the same rows.

A listing form says what the seller sent (every form drops the catalogue-only columns:
articleType, age group, category labels, price):

========================  ==============================================================
``full``                  title + description + photo
``full+brand+colour``     the same, with brand and colour stated
``full+source``           the same as ``full``, with source stated
``title+photo``           title + photo
``title+photo+source``    title + photo, with source stated
``photo``                 photo only
``photo+source``          photo only, with source stated
========================  ==============================================================

The recipe is the one of the environment notes: TF-IDF (1-2 grams) of title + description +
brand with Ridge on log price, one per source, fitted on the train split and given the text the
listing shows; for photo-only listings it is the median train price of the (source, category)
the listing's category was predicted as. The recipe is told the true source, which only helps it.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from . import scoring
from .fingerprint import source_digest
from .label_metrics import classification_metrics
from .token_counts import tfidf_transform, transform_memo

log = logging.getLogger(__name__)

# form name -> fields the listing carries
LISTING_FORMS: dict[str, tuple[str, ...]] = {
    "full": ("title", "description", "image_path"),
    "full+brand+colour": ("title", "description", "image_path", "brand", "colour"),
    "full+source": ("title", "description", "image_path", "source"),
    "title+photo": ("title", "image_path"),
    "title+photo+source": ("title", "image_path", "source"),
    "photo": ("image_path",),
    "photo+source": ("image_path", "source"),
}
# The forms the publishing gate compares on (the ones a seller sends without extras).
GATE_FORMS = ("full", "title+photo", "photo")
TASKS = ("category", "gender", "usage")


def as_listings(rows: pd.DataFrame, form: str) -> pd.DataFrame:
    """Catalogue rows as the listings a seller would send in ``form``, read by the CLI's reader."""
    fields = LISTING_FORMS[form]
    records = []
    for r in rows.itertuples(index=False):
        rec = {"listing_id": r.product_id}
        for f in fields:
            v = getattr(r, f, None)
            if v is not None and not (isinstance(v, float) and np.isnan(v)):
                rec[f] = v
        records.append(rec)
    return scoring.records_to_listings(records, Path("."))


def _text(df: pd.DataFrame) -> pd.Series:
    cols = [df[c].fillna("").astype(str) if c in df.columns else pd.Series([""] * len(df), index=df.index)
            for c in ("title", "description", "brand")]
    return (cols[0] + " " + cols[1] + " " + cols[2]).str.strip()


class Recipe:
    """TF-IDF + Ridge per source on train rows; category-median prices for photo-only listings."""

    def fit(self, train: pd.DataFrame) -> "Recipe":
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import Ridge

        self.models_ = {}
        priced = train[(train["price_status"] == "ok") & train["price_usd"].notna()]
        for source, part in priced.groupby("source"):
            if len(part) < 10:
                continue
            vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
            x = vec.fit_transform(_text(part))
            self.models_[source] = (vec, Ridge(alpha=1.0).fit(x, np.log1p(part["price_usd"].to_numpy(float))))
        self.median_by_category_ = priced.groupby(["source", "category"])["price_usd"].median().to_dict()
        self.median_by_source_ = priced.groupby("source")["price_usd"].median().to_dict()
        return self

    def predict(self, listings: pd.DataFrame, sources: np.ndarray, categories) -> np.ndarray:
        """USD per listing: the text recipe where the listing has text, else the category median."""
        out = np.full(len(listings), np.nan)
        text = _text(listings).to_numpy()
        sources = np.asarray(sources, dtype=object)
        by_text = np.array([bool(t) for t in text]) & np.isin(sources, list(self.models_))
        for s in set(sources[by_text]):  # one TF-IDF transform per source, not per listing
            rows = np.flatnonzero(by_text & (sources == s))
            vec, m = self.models_[s]
            out[rows] = np.expm1(m.predict(tfidf_transform(vec, text[rows])))
        for i in np.flatnonzero(~by_text):
            s, c = sources[i], categories[i]
            out[i] = self.median_by_category_.get((s, c), self.median_by_source_.get(s, np.nan))
        return out


class TextClassifierRecipe:
    """TF-IDF + LinearSVC per task on train rows (title + description + brand).

    The tasks are fitted one after another: liblinear releases the GIL, but sklearn seeds one
    process-wide random generator per fit and draws from it while fitting, so fits on parallel
    threads interleave their draws and their coefficients change from run to run (by up to ~1e-5
    on the full data, measured; ~2-3 s saved there). A reference figure has to be reproducible."""

    def fit(self, train: pd.DataFrame) -> "TextClassifierRecipe":
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.svm import LinearSVC

        self.vec_ = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
        x = self.vec_.fit_transform(_text(train))  # one tokenisation, not one for fit and one for transform
        self.models_ = {}
        for task in TASKS:
            y = train[task]
            ok = y.notna().to_numpy()
            if len(set(y[ok])) >= 2:
                self.models_[task] = LinearSVC(random_state=0).fit(x[ok], y[ok])
        return self

    def predict(self, listings: pd.DataFrame, task: str) -> np.ndarray | None:
        text = _text(listings)
        if task not in self.models_ or not (text.str.len() > 0).any():
            return None
        return self.models_[task].predict(tfidf_transform(self.vec_, text))


RECIPE_COLUMNS = ["product_id", "title", "description", "brand", "source", "category", "gender", "usage",
                  "price_usd", "price_status"]


def row_keys(train: pd.DataFrame) -> np.ndarray:
    """One 64-bit hash per train row over everything the recipes read (`RECIPE_COLUMNS`): two train
    splits differ by the rows whose key is in one and not the other (a changed price or title counts)."""
    cols = [c for c in RECIPE_COLUMNS if c in train.columns]
    return np.unique(pd.util.hash_pandas_object(train[cols].astype(str), index=False).to_numpy())


def changed_share(stored_keys: np.ndarray, keys: np.ndarray) -> float:
    """How far a train split moved from the stored one: row keys in one and not the other (an edited
    row counts twice, its old and its new version) over the stored split's rows (1.0 when it had none)."""
    if len(stored_keys) == 0:
        return 1.0
    return len(np.setxor1d(stored_keys, keys, assume_unique=True)) / len(stored_keys)


class ListingRecipes:
    """The two recipes fitted on one train split, with that split's row keys (`row_keys`): what the
    model store keeps so that a retrain whose train split barely changed re-scores them."""

    def __init__(self, train: pd.DataFrame):
        self.recipe = Recipe().fit(train)
        self.text_recipe = TextClassifierRecipe().fit(train)
        self.train_keys = row_keys(train)


def recipe_code() -> str:
    """The recipes' code version: this module's source and scikit-learn's version."""
    import sklearn

    return f"{source_digest(sys.modules[__name__])[:16]}-sklearn{sklearn.__version__}"


def answers(values) -> np.ndarray:
    """A task's predicted values with a listing left without one as "<none>": a miss of its true class
    when scored (never a class of its own in a macro average: see `classification_metrics`)."""
    return np.array([v if isinstance(v, str) else "<none>" for v in values], dtype=object)


def _rmsle(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.log1p(y) - np.log1p(p)) ** 2))) if len(y) else float("nan")


def evaluate_listings(
    test: pd.DataFrame,
    train: pd.DataFrame,
    score: Callable[[pd.DataFrame], tuple[pd.DataFrame, dict]],
    forms: tuple[str, ...] = tuple(LISTING_FORMS),
    progress=log.info,
    recipe: "Recipe | None" = None,
    text_recipe: "TextClassifierRecipe | None" = None,
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """One row per (form, source) ('all' included): what ``score`` (a `score_listings` call with
    the models to judge) gives on ``test`` rows written as listings, and the recipes (fitted on
    ``train``) on the same rows.

    Price columns cover priced test rows: n_priced, abstained (share), rmsle and coverage (of the
    80% interval) over the listings that got a price, recipe_rmsle over the same listings.
    Classification columns: <task>_macro_f1 over rows with that label, and the recipe's.
    Also returns per form the listing-level predictions (for plots, per-class tables and pooling
    over several evaluations): price, the 80% interval's bounds, the recipe's price, and
    ``<task>_true`` / ``<task>_predicted`` (None where the listing got no value). Pass fitted ``recipe`` /
    ``text_recipe`` to reuse them across several models judged on the same rows.
    """
    recipe = recipe or Recipe().fit(train)
    text_recipe = text_recipe or TextClassifierRecipe().fit(train)
    truth = test.set_index("product_id")
    rows, per_listing = [], {}
    # The forms show the same texts again (and a second model meets them too): each fitted TF-IDF
    # transforms each distinct text once within this evaluation (the same rows, see core.token_counts).
    with transform_memo() as memo:
        for form in forms:
            _evaluate_form(form, test, truth, score, recipe, text_recipe, rows, per_listing, progress)
    progress(f"listing evaluation: {memo.counts['texts_transformed']} distinct (vectorizer, text) TF-IDF rows "
             f"computed for {memo.counts['texts_requested']} asked for")
    return pd.DataFrame(rows), per_listing


def _evaluate_form(form, test, truth, score, recipe, text_recipe, rows, per_listing, progress) -> None:
    """One form's rows of `evaluate_listings` (appended to ``rows``) and its per-listing predictions."""
    listings = as_listings(test, form)
    progress(f"listing evaluation: scoring {len(listings)} listings as '{form}'")
    scores, _ = score(listings)
    s = scores.set_index("listing_id").reindex(test["product_id"])
    src = test["source"].astype(str).to_numpy()
    price = test["price_usd"].to_numpy(float)
    priced = ((test["price_status"] == "ok") & test["price_usd"].notna()).to_numpy()
    pred = s["price_usd"].to_numpy(float)
    lo, hi = s["price_low_usd"].to_numpy(float), s["price_high_usd"].to_numpy(float)
    rec = recipe.predict(listings, src, s["category"].to_numpy())
    text_preds = {t: text_recipe.predict(listings, t) for t in TASKS}
    per_listing[form] = pd.DataFrame({"product_id": test["product_id"].to_numpy(), "source": src,
                                      "category": test["category"].to_numpy(), "price_usd": price,
                                      "predicted_usd": pred, "price_low_usd": lo, "price_high_usd": hi,
                                      "recipe_usd": rec, "priced": priced,
                                      **{f"{t}_true": test[t].to_numpy(dtype=object) for t in TASKS},
                                      **{f"{t}_predicted": s[t].to_numpy(dtype=object) for t in TASKS}})
    for source in ["all", *sorted(set(src))]:
        m = (src == source) if source != "all" else np.ones(len(src), bool)
        mp = m & priced
        got = mp & np.isfinite(pred)
        row = {"form": form, "source": source, "n": int(m.sum()), "n_priced": int(mp.sum()),
               "abstained": float(1 - got.sum() / mp.sum()) if mp.sum() else float("nan"),
               "rmsle": _rmsle(price[got], pred[got]),
               "coverage": float(np.mean((price[got] >= lo[got]) & (price[got] <= hi[got]))) if got.any() else float("nan"),
               "recipe_rmsle": _rmsle(price[got], rec[got]) if got.any() else float("nan")}
        for task in TASKS:
            y = truth[task].reindex(test["product_id"]).to_numpy(dtype=object)
            has = m & pd.notna(y)
            # A listing left without a value counts as wrong, not as skipped; the F1s are averaged
            # over the true classes (not over an extra "<none>" class whose F1 is always zero).
            got_task = answers(s[task])
            row[f"{task}_macro_f1"] = classification_metrics(
                y[has], got_task[has], true_classes_only=True)["macro_f1"] if has.any() else float("nan")
            tp = text_preds[task]
            row[f"recipe_{task}_macro_f1"] = classification_metrics(
                y[has], tp[has], true_classes_only=True)["macro_f1"] if tp is not None and has.any() else float("nan")
        rows.append(row)


def paired_price_differences(candidate: dict[str, pd.DataFrame], published: dict[str, pd.DataFrame],
                             forms: tuple[str, ...]) -> pd.DataFrame:
    """Per (form, source) ('all' included), from two `evaluate_listings` per-listing tables of the same
    test rows: ``rmsle_diff_se``, the standard error of the candidate's RMSLE minus the published
    model's on the priced listings both models priced (`price_metrics.paired_rmsle_difference_se`),
    and ``n_paired``, how many those are."""
    from .pricing.price_metrics import paired_rmsle_difference_se

    rows = []
    for form in forms:
        c, p = candidate[form], published[form]
        if not np.array_equal(c["product_id"].to_numpy(), p["product_id"].to_numpy()):
            raise ValueError(f"'{form}': the two evaluations did not score the same listings in the same order")
        pc, pp = c["predicted_usd"].to_numpy(float), p["predicted_usd"].to_numpy(float)
        both = c["priced"].to_numpy(bool) & np.isfinite(pc) & np.isfinite(pp)
        src = c["source"].to_numpy()
        for source in ["all", *sorted(set(src))]:
            m = both & ((src == source) if source != "all" else True)
            y = c["price_usd"].to_numpy(float)[m]
            rows.append({"form": form, "source": source, "n_paired": int(m.sum()),
                         "rmsle_diff_se": paired_rmsle_difference_se(y, pc[m], pp[m])})
    return pd.DataFrame(rows, columns=["form", "source", "n_paired", "rmsle_diff_se"])


def listings_key(listings: pd.DataFrame) -> str:
    """A digest of listings' content (columns, values and order)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(list(listings.columns)).encode())
    h.update(pd.util.hash_pandas_object(listings.astype(str), index=True).to_numpy().tobytes())
    return h.hexdigest()


def evaluate_price_model(
    model,
    info: dict,
    test: pd.DataFrame,
    train: pd.DataFrame,
    *,
    embedder=None,
    extractor=None,
    classifiers: dict | None = None,
    forms: tuple[str, ...] = tuple(LISTING_FORMS),
    progress=log.info,
    recipe: "Recipe | None" = None,
    text_recipe: "TextClassifierRecipe | None" = None,
    reads: dict | None = None,
    remember: bool = False,
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """`evaluate_listings` with ``score`` = `scoring.score_listings` and the given price model,
    embedder, attribute extractor and classifiers: what `fashion-pipeline score` gives.

    reads: a dict shared by evaluations with the same embedder, extractor and classifiers (and test
    rows): listings another evaluation read (`scoring.listing_reads`: extraction, embedding,
    classification — everything but the price model) are taken from it, not read again, and leave it;
    with ``remember``, this evaluation's reads are put in it for the next one."""
    def score(listings: pd.DataFrame):
        key = listings_key(listings) if reads is not None else None
        read = reads.pop(key, None) if reads is not None else None
        if read is None:
            read = scoring.listing_reads(listings, embedder, extractor, classifiers or {})
            if remember and reads is not None:
                reads[key] = read
        return scoring.price_listing_reads(read, model, info)

    return evaluate_listings(test, train, score, forms, progress, recipe, text_recipe)
