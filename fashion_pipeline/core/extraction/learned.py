"""Learned attribute extractor: text classifiers trained on the Kaggle catalogue's own attributes.

The catalogue's `articleAttributes` (Fabric / Material, Wash Care, Fit, Pattern, Occasion) are
labels written by the retailer. Mapped onto the controlled vocabularies (`quality.catalogue_truth`)
they train one classifier per attribute: TF-IDF word 1-2 grams of title + description in, the
attribute out. The labels are never part of the input.

- Not applicable: products of a catalogue type (50+ training products) that never carries an
  attribute (a watch has no fit, a perfume no fabric) train a separate "not applicable" classifier
  per attribute; when it is at least 90% sure, the attribute is None. The value classifier itself
  is trained on labelled products only (a "not applicable" class inside it cost 2 points of
  validation accuracy on labelled products; the separate head costs under 0.5 points of coverage).
- Unknown: each LinearSVC's scores are turned into probabilities by sigmoid calibration on
  out-of-fold training scores; on validation rows an isotonic fit of right/wrong on the top
  probability finds the threshold below which a guess is right less than `min_precision` of the
  time: there the attribute is unknown (None) instead of a guess.
- Care is predicted like the others: the catalogue's wash instruction follows the garment type,
  so a description without care words still gets an answer when the type makes it likely (H&M
  descriptions never state care: there it is the garment type's usual instruction, not a reading).
- Selection: the regularisation C of each attribute is chosen on validation rows; test rows are
  only scored (`evaluate`).

`LearnedAttributeModel.extract` returns `Attributes`: the learned values for material (the
first material), care (the wash instruction), fit, pattern and occasion; further materials,
further care instructions, style details and the brand come from the rules extractor and the
brand matcher, which the model carries. An attribute with too few labelled training products for
a classifier (the embedded sample has ~600) keeps the rules extractor's value, and says so in
`describe()["rules_attributes"]`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fashion_pipeline.core.extraction import quality, vocab
from fashion_pipeline.core.extraction.brands import BrandMatcher
from fashion_pipeline.core.extraction.rules import RulesExtractor
from fashion_pipeline.core.extraction.schema import MAX_CARE, MAX_MATERIALS, Attributes
from fashion_pipeline.core.extraction.prepared_text import PreparedText
from fashion_pipeline.core.threads import WorkerPool, map_processes

if TYPE_CHECKING:  # sklearn is imported only when a model is trained or used
    from fashion_pipeline.core.token_counts import TokenCounts

log = logging.getLogger(__name__)

STORE_NAME = "attribute_extractor"  # the model store's name for it (the asset of the same name publishes it)
TARGETS = quality.ATTRIBUTES  # material, care, fit, pattern, occasion
NOT_APPLICABLE = "(not applicable)"
WASH_CARE = ("machine wash", "hand wash", "dry clean")
DEFAULT_C_GRID = (0.3, 1.0, 3.0)
MIN_CLASS_ROWS = 10
NOT_APPLICABLE_CONFIDENCE = 0.9  # say "not applicable" only when the text is clearly such a product


def model_text(text: PreparedText) -> str:
    return f"{text.title} . {text.description}"


def not_applicable_types(source_categories: Sequence[str | None], truths: Sequence[dict],
                         max_rate: float = 0.0, min_products: int = 50) -> dict[str, list[str]]:
    """Per attribute, the catalogue types (articleType) where at most `max_rate` of the products
    carry that attribute: their products are "not applicable" examples."""
    out: dict[str, list[str]] = {}
    cats = np.asarray([c if isinstance(c, str) else "" for c in source_categories], dtype=object)
    for attr in TARGETS:
        has = np.asarray([attr in t for t in truths])
        types = []
        for c in sorted(set(cats) - {""}):
            m = cats == c
            if m.sum() >= min_products and has[m].mean() <= max_rate:
                types.append(c)
        out[attr] = types
    return out


def training_labels(source_categories: Sequence[str | None], truths: Sequence[dict],
                    na_types: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Label per attribute and product: the canonical value, NOT_APPLICABLE, or None (unlabelled)."""
    labels = {}
    for attr in TARGETS:
        na = set(na_types.get(attr, ()))
        labels[attr] = np.asarray([t.get(attr) if attr in t else (NOT_APPLICABLE if c in na else None)
                                   for c, t in zip(source_categories, truths)], dtype=object)
    return labels


@dataclass
class AttributeHead:
    attribute: str
    # LinearSVC fitted on all training rows; its probabilities are sigmoid-calibrated on 3-fold
    # out-of-fold scores (ensemble=False: the answer is the full-data SVC's, as in the recipe).
    classifier: object
    threshold: float  # top probability below which the answer is "unknown"
    C: float
    applicability: object | None = None  # P(not applicable): catalogue types that never carry the attribute
    validation: dict = field(default_factory=dict)

    def predict(self, X, abstain: bool = True) -> tuple[list[str | None], np.ndarray]:
        """Value (None = unknown / not applicable) and top probability per row; `abstain=False`
        always answers (for reporting what the threshold costs and buys)."""
        proba = self.classifier.predict_proba(X)
        top = proba.argmax(1)
        conf = proba[np.arange(len(top)), top]
        if not abstain:
            return [str(self.classifier.classes_[k]) for k in top], conf
        na = (self.applicability.predict_proba(X)[:, 1] >= NOT_APPLICABLE_CONFIDENCE if self.applicability is not None
              else np.zeros(len(top), dtype=bool))
        values = [None if c < self.threshold or n else str(self.classifier.classes_[k])
                  for k, c, n in zip(top, conf, na)]
        return values, conf


def _feed_state(h, o) -> None:
    """Feed ``o``'s content to the hash ``h``: arrays, scalars, containers and objects' attributes."""
    if isinstance(o, np.ndarray):
        h.update(f"nd{o.dtype.str}{o.shape}".encode())
        if o.dtype == object:
            for v in o.ravel():
                _feed_state(h, v)
        else:
            h.update(np.ascontiguousarray(o).tobytes())
    elif o is None or isinstance(o, (str, bytes, bool, int, float, np.generic)):
        h.update(f"{type(o).__name__}:{o!r};".encode())
    elif isinstance(o, dict):
        h.update(b"{")
        for k in sorted(o, key=repr):
            _feed_state(h, k)
            _feed_state(h, o[k])
        h.update(b"}")
    elif isinstance(o, (list, tuple, set, frozenset)):
        h.update(f"{type(o).__name__}[".encode())
        for v in (sorted(o, key=repr) if isinstance(o, (set, frozenset)) else o):
            _feed_state(h, v)
        h.update(b"]")
    elif hasattr(o, "__dict__"):
        h.update(f"{type(o).__module__}.{type(o).__qualname__}".encode())
        _feed_state(h, vars(o))
    else:
        h.update(f"{type(o).__name__}:{o!r};".encode())


def _threshold(conf: np.ndarray, right: np.ndarray, min_precision: float) -> float:
    """Lowest confidence at which a guess is right at least `min_precision` of the time, from an
    isotonic fit of right/wrong on confidence (validation rows)."""
    from sklearn.isotonic import IsotonicRegression

    if len(conf) < 20:
        return 0.0
    iso = IsotonicRegression(increasing=True, out_of_bounds="clip").fit(conf, right.astype(float))
    grid = np.unique(conf)
    ok = grid[iso.predict(grid) >= min_precision]
    return float(ok.min()) if len(ok) else float("inf")


@dataclass
class LearnedAttributeModel:
    vectorizer: object
    heads: dict[str, AttributeHead]
    brands: BrandMatcher
    na_types: dict[str, list[str]]
    min_precision: float
    fingerprint: str = ""

    @property
    def version(self) -> str:
        """Content fingerprint taken when trained: part of the extraction cache key, so a retrained
        model recomputes."""
        return "learned-" + self.fingerprint

    def _content_hash(self) -> str:
        """A digest of the fitted state itself (arrays by dtype, shape and bytes; attributes by name), not of
        its pickle: a classifier fitted in a worker process pickles to other bytes (numpy dtype objects are
        shared differently) while it is the same model."""
        h = hashlib.sha256()
        _feed_state(h, (sorted(self.heads), [(h_.C, h_.threshold, h_.classifier, h_.applicability)
                                             for h_ in self.heads.values()], self.brands.brands,
                        sorted(self.brands.start_only), sorted(self.brands.excluded)))
        return h.hexdigest()[:12]

    def predict(self, texts: Sequence[PreparedText], abstain: bool = True, X=None
                ) -> dict[str, tuple[list[str | None], np.ndarray]]:
        """X: ``texts``' TF-IDF rows when the caller has them already (the vectorizer's transform)."""
        if X is None:
            X = self.vectorizer.transform([model_text(t) for t in texts])
        out = {a: h.predict(X, abstain) for a, h in self.heads.items()}
        if abstain:  # no known word at all (a photo-only listing, gibberish): the answer would be the prior
            blank = np.asarray(X.getnnz(axis=1) == 0)
            if blank.any():
                out = {a: ([None if b else v for v, b in zip(values, blank)], conf) for a, (values, conf) in out.items()}
        return out

    def extract(self, texts: Sequence[PreparedText], rules: RulesExtractor | None = None, X=None,
                rules_results: Sequence[Attributes] | None = None) -> list[Attributes]:
        """rules_results: ``rules.extract`` of each text when the caller has them already (a cache)."""
        rules = rules or RulesExtractor()
        pred = self.predict(texts, X=X) if texts else {}
        out = []
        for i, t in enumerate(texts):
            r = rules_results[i] if rules_results is not None else rules.extract(t)
            # An attribute without a head (too few labelled training products) keeps the rules value.
            v = {a: pred[a][0][i] if a in pred else None for a in TARGETS}
            materials, care = r.materials, r.care
            if "material" in pred:
                materials = [v["material"], *[m for m in r.materials if m != v["material"]]] if v["material"] else []
            if "care" in pred:
                care = [c for c in r.care if c not in WASH_CARE and c != "machine wash cold"]
                if v["care"]:
                    care.insert(0, "machine wash cold" if v["care"] == "machine wash" and "machine wash cold" in r.care
                                else v["care"])
            out.append(Attributes(
                brand=self.brands.find(t.title),
                materials=materials[:MAX_MATERIALS],
                care=vocab.drop_implied_care(care)[:MAX_CARE],
                fit=v["fit"] if "fit" in pred else r.fit,
                pattern=v["pattern"] if "pattern" in pred else r.pattern,
                occasion=v["occasion"] if "occasion" in pred else r.occasion,
                style=r.style,
            ))
        return out

    def describe(self) -> dict:
        return {"version": self.version, "min_precision": self.min_precision,
                "heads": {a: {"C": h.C, "threshold": round(h.threshold, 4), "classes": [str(c) for c in
                                                                                          h.classifier.classes_],
                              "validation": h.validation} for a, h in self.heads.items()},
                "rules_attributes": [a for a in TARGETS if a not in self.heads],
                "not_applicable_types": self.na_types, "brands": self.brands.describe()}


def text_vectorizer():
    """The TF-IDF of the learned heads and of the reference recipe (one analyser: a `TokenCounts`
    memo built from it serves both)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, dtype=np.float32)


def _fit_vectorizer(docs: list[str], tokens: TokenCounts | None):
    """A `text_vectorizer` fitted on ``docs`` — through ``tokens`` when given (the same vocabulary
    and idf, each text tokenised once across fit, recipe and evaluation) — and its transform."""
    vec = text_vectorizer()
    if tokens is None:
        vec.fit(docs)
        return vec, vec.transform
    tokens.fit(vec, docs)
    return vec, lambda d: tokens.transform(vec, d)


def _calibrated_svc(C: float, x, y):
    """LinearSVC(C) with sigmoid calibration on 3-fold out-of-fold scores (one final fit on every row).
    random_state: liblinear shuffles its coordinates; seeded, a retrain on the same rows is the same model.
    One BLAS thread: liblinear's dot products and the calibration's sums then add in one order, so the
    model is the same in the run's process or a worker, on any machine (2 threads changed the last digits)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import LinearSVC
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return CalibratedClassifierCV(LinearSVC(C=C, random_state=0), cv=3, method="sigmoid", ensemble=False).fit(x, y)


def fit(texts: Sequence[PreparedText], truths: Sequence[dict], source_categories: Sequence[str | None],
        splits: Sequence[str], titles: Sequence[str], brands: Sequence[str | None],
        min_precision: float = 0.5, c_grid: Sequence[float] = DEFAULT_C_GRID,
        progress: Callable[[str], None] | None = None,
        tuned_c: dict[str, float] | None = None, tokens: TokenCounts | None = None,
        processes: int | WorkerPool = 1) -> LearnedAttributeModel:
    """Train on `split == "train"` rows, choose C and the unknown threshold on "validation" rows.

    tuned_c: {attribute: C} a previous selection chose (a retrain): those attributes fit that C alone
    instead of searching ``c_grid``; the threshold is still set on validation.

    tokens: a `TokenCounts` of `text_vectorizer()` shared with `reference_recipe` / `evaluate`, so
    each text is tokenised once; the fitted model is the same with or without it.

    processes: worker processes for the LinearSVC fits, or a `core.threads.WorkerPool` to run them in;
    the fitted model is the same with any number.

    truths: `quality.catalogue_truth` per product ({} when the product has no catalogue
    attributes, e.g. H&M). titles / brands: the catalogue's brand column, for the brand matcher
    (train rows only)."""
    splits = np.asarray(splits, dtype=object)
    train, val = splits == "train", splits == "validation"
    labelled = np.asarray([bool(t) for t in truths])
    if not (train & labelled).any():
        raise ValueError("no training products with catalogue attributes (Kaggle articleAttributes)")
    na_types = not_applicable_types([c for c, tr in zip(source_categories, train & labelled) if tr],
                                    [t for t, tr in zip(truths, train & labelled) if tr])
    labels = training_labels(source_categories, truths, na_types)
    docs = [model_text(t) for t in texts]
    vec, transform = _fit_vectorizer([d for d, m in zip(docs, train & labelled) if m], tokens)
    X = transform(docs)
    # Every LinearSVC of every attribute is independent of the others: listed first, fitted in up to
    # ``processes`` worker processes (core.threads.map_processes), then judged on validation in order.
    plans, jobs = {}, []
    for attr in TARGETS:
        y = labels[attr]
        na_rows = train & (y == NOT_APPLICABLE)
        tr = train & (y != None) & (y != NOT_APPLICABLE)  # noqa: E711 - elementwise on an object array
        values, counts = np.unique(y[tr].astype(str), return_counts=True)
        rare = set(values[counts < MIN_CLASS_ROWS])
        if rare:  # too few examples to learn or calibrate: those products are left out of training
            log.info("learned extractor: %s classes with < %d training rows left out: %s", attr, MIN_CLASS_ROWS,
                     sorted(rare))
            tr &= ~np.isin(y.astype(str), list(rare))
        va = val & (y != None) & (y != NOT_APPLICABLE)  # noqa: E711 - selection on catalogue values only
        if len(set(y[tr])) < 2:
            log.warning("learned extractor: fewer than 2 classes for %s; attribute skipped", attr)
            continue
        cs = [tuned_c[attr]] if attr in (tuned_c or {}) else list(c_grid)
        plans[attr] = (y, tr, va, na_rows, cs, len(jobs))
        jobs += [(C, X[tr], y[tr].astype(str)) for C in cs]
        if na_rows.sum() >= MIN_CLASS_ROWS:
            rows = tr | na_rows
            jobs.append((1.0, X[rows], na_rows[rows].astype(int)))
    fitted = map_processes(_calibrated_svc, jobs, processes)
    heads: dict[str, AttributeHead] = {}
    for attr, (y, tr, va, na_rows, cs, first) in plans.items():
        best = None
        for C, clf in zip(cs, fitted[first:first + len(cs)]):
            acc = float((clf.predict(X[va]) == y[va].astype(str)).mean()) if va.any() else float("nan")
            if progress:
                progress(f"{attr}: C={C} validation accuracy {acc:.4f} ({int(va.sum())} rows)")
            if best is None or acc > best[0]:
                best = (acc, C, clf)
        acc, C, clf = best
        threshold, rate = 0.0, 1.0
        if va.any():
            proba = clf.predict_proba(X[va])
            conf = proba.max(1)
            right = clf.classes_[proba.argmax(1)] == y[va].astype(str)
            threshold = _threshold(conf, right, min_precision)
            rate = float((conf >= threshold).mean())
        applicability = None
        if na_rows.sum() >= MIN_CLASS_ROWS:
            applicability = fitted[first + len(cs)]
            if va.any():
                lost = float((applicability.predict_proba(X[va])[:, 1] >= NOT_APPLICABLE_CONFIDENCE).mean())
                if progress:
                    progress(f"{attr}: 'not applicable' said for {lost:.2%} of validation products with a value")
        heads[attr] = AttributeHead(attr, clf, threshold, C, applicability, {"accuracy": round(acc, 4), "rows": int(va.sum()),
                                                              "answered": round(rate, 4)})
    matcher = BrandMatcher.fit([t for t, m in zip(titles, train) if m], [b for b, m in zip(brands, train) if m])
    model = LearnedAttributeModel(vec, heads, matcher, na_types, min_precision)
    model.fingerprint = model._content_hash()
    return model


def score_values(truth: Sequence[str | None], pred: Sequence[str | None], attribute: str) -> quality.AttributeScore:
    """Right / answered / macro-F1 over products with a catalogue value; an unknown answer is wrong."""
    from sklearn.metrics import f1_score

    pairs = [(t, p) for t, p in zip(truth, pred) if t is not None and t != NOT_APPLICABLE]
    if not pairs:
        return quality.AttributeScore(attribute, 0, 0, 0)
    t, p = zip(*pairs)
    p = ["(unknown)" if x is None else x for x in p]
    f1 = f1_score(t, p, labels=sorted(set(t)), average="macro", zero_division=0)
    return quality.AttributeScore(attribute, len(t), sum(x != "(unknown)" for x in p), sum(a == b for a, b in zip(t, p)),
                                  float(f1))


def reference_recipe(texts: Sequence[PreparedText], truths: Sequence[dict], train: Sequence[bool],
                     score_rows: Sequence[bool], tokens: TokenCounts | None = None,
                     processes: int | WorkerPool = 1) -> dict[str, list[str | None]]:
    """The plain recipe the learned model must beat: TF-IDF(title, description) word 1-2 grams +
    LinearSVC (C=1) per attribute, trained on the train rows with a catalogue value; predictions
    for `score_rows` (None where no model could be trained). tokens, processes: as in `fit`."""
    train, score_rows = np.asarray(train, bool), np.asarray(score_rows, bool)
    docs = [model_text(t) for t in texts]
    train_docs = [d for d, m in zip(docs, train) if m]
    _, transform = _fit_vectorizer(train_docs, tokens)
    X = transform(train_docs)
    Xs = transform([d for d, m in zip(docs, score_rows) if m])
    out, jobs = {}, []
    for attr in TARGETS:
        y = np.asarray([t.get(attr) for t, m in zip(truths, train) if m], dtype=object)
        has = y != None  # noqa: E711
        if len(set(y[has])) < 2:
            out[attr] = [None] * int(score_rows.sum())
            continue
        out[attr] = None  # filled below, in TARGETS order
        jobs.append((X[has], y[has].astype(str), Xs))
    predicted = iter(map_processes(_svc_predictions, jobs, processes))
    return {attr: next(predicted) if v is None else v for attr, v in out.items()}


def _svc_predictions(x, y, x_score) -> list[str]:
    from sklearn.svm import LinearSVC
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):  # as in `_calibrated_svc`
        return [str(v) for v in LinearSVC(C=1.0, random_state=0).fit(x, y).predict(x_score)]


def evaluate(model: LearnedAttributeModel, texts: Sequence[PreparedText], truths: Sequence[dict],
             recipe: dict[str, list[str | None]] | None = None, tokens: TokenCounts | None = None) -> list[dict]:
    """Rows (extractor, attribute, n, coverage, precision, accuracy, macro_f1) on the given
    products: the learned model as shipped (with "unknown"), the same model always answering,
    and the recipe's predictions when given. tokens: the memo ``model`` was fitted through, if any."""
    docs = [model_text(t) for t in texts]
    X = tokens.transform(model.vectorizer, docs) if tokens is not None else model.vectorizer.transform(docs)
    shipped = model.extract(texts, X=X)
    forced = model.predict(texts, abstain=False, X=X)
    rows = []
    for name in ("learned", "learned, always answering", *(["TF-IDF + LinearSVC recipe"] if recipe else [])):
        for attr in TARGETS:
            if name == "TF-IDF + LinearSVC recipe":
                values = recipe[attr]
            elif name == "learned, always answering" and attr in forced:
                values = forced[attr][0]
            else:  # as shipped; an attribute without a head is the rules value
                values = [attribute_value(a, attr) for a in shipped]
            s = score_values([t.get(attr) for t in truths], values, attr)
            rows.append({"extractor": name, "attribute": attr, "n": s.n_truth, "coverage": s.coverage,
                         "precision": s.precision, "accuracy": s.accuracy, "macro_f1": s.macro_f1})
    return rows


def attribute_value(a: Attributes, attr: str) -> str | None:
    """The one value of an attribute that the catalogue labels: first material, wash instruction."""
    if attr == "material":
        return a.materials[0] if a.materials else None
    if attr == "care":
        wash = [("machine wash" if c == "machine wash cold" else c) for c in a.care
                if c in WASH_CARE or c == "machine wash cold"]
        return wash[0] if wash else None
    return getattr(a, attr)


def paired_accuracy(candidate: LearnedAttributeModel, published: LearnedAttributeModel,
                    texts: Sequence[PreparedText], truths: Sequence[dict]) -> dict:
    """Both extractors as shipped ("unknown" is wrong) on the same products, pooled over every
    (product, attribute) pair with a catalogue value: accuracies, their paired difference
    (candidate - published) and its standard error. ``texts`` / ``truths``: validation products."""
    keep = [i for i, t in enumerate(truths) if any(t.get(a) not in (None, NOT_APPLICABLE) for a in TARGETS)]
    texts, truths = [texts[i] for i in keep], [truths[i] for i in keep]
    rules = RulesExtractor()
    rules_results = [rules.extract(t) for t in texts]  # the rules part is the same for both models
    answers = [m.extract(texts, rules, rules_results=rules_results) for m in (candidate, published)]
    right = {m: [] for m in (0, 1)}
    for attr in TARGETS:
        for i, t in enumerate(truths):
            if t.get(attr) in (None, NOT_APPLICABLE):
                continue
            for m in (0, 1):
                right[m].append(attribute_value(answers[m][i], attr) == t[attr])
    c, p = np.asarray(right[0], float), np.asarray(right[1], float)
    n = len(c)
    d = c - p
    return {"pairs": n, "products": len(texts), "candidate_accuracy": float(c.mean()) if n else float("nan"),
            "published_accuracy": float(p.mean()) if n else float("nan"),
            "difference": float(d.mean()) if n else float("nan"),
            "difference_se": float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
            "pairs_disagreeing": int((d != 0).sum())}


def replaces_published(comparison: dict, se_multiplier: float = 2.0) -> tuple[bool, str]:
    """Whether a retrained extractor should replace the published one, and why: only when it is
    better on the validation pairs by more than ``se_multiplier`` paired standard errors. A change
    of extractor changes the attributes of every product, which the embedding stage then re-encodes
    and every model reads; a refit that is not measurably better is kept as an unpublished candidate."""
    n, d, se = comparison["pairs"], comparison["difference"], comparison["difference_se"]
    if n < 2:
        return True, f"no validation products with catalogue attributes to compare on ({n} pairs): the candidate is published"
    margin = se_multiplier * se
    what = (f"validation accuracy {comparison['candidate_accuracy']:.4f} vs {comparison['published_accuracy']:.4f} "
            f"on {n} (product, attribute) pairs, difference {d:+.4f}, {se_multiplier:g} paired SE {margin:.4f}")
    if d > margin:
        return True, f"candidate measurably better: {what}"
    return False, f"candidate not measurably better: {what}"
