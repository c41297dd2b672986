"""Classical attribute classifiers (category / gender / usage) and the serving wrapper.

Eight models, each fitted per task on one feature *kind* from :class:`ProductFeaturizer`:

==============  ======  ===================================================================
name            kind    class imbalance
==============  ======  ===================================================================
linear_svc      sparse  class_weight="balanced" (n / (k * count))
logreg          sparse  class_weight="balanced"
ridge           sparse  class_weight="balanced"
complement_nb   nonneg  none: Complement NB is built for skewed classes (its own correction)
xgboost         dense   balanced per-sample weights
lightgbm        dense   class_weight="balanced"
extra_trees     dense   class_weight="balanced_subsample"
knn             dense   none (distance-weighted vote); reported as a plain reference
==============  ======  ===================================================================

Margin models (SVC, ridge) have no probabilities: :class:`TaskClassifier` turns their
decision scores into a softmax. Those are *uncalibrated* confidence scores, documented as such.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.class_weight import compute_sample_weight

from fashion_pipeline.core.features import ProductFeaturizer, shared_transform


@dataclass(frozen=True)
class ClassicalSpec:
    name: str
    kind: str  # feature kind: sparse | nonneg | dense
    make: Callable[[int, int], object]  # (seed, n_threads) -> unfitted estimator
    sample_weight: bool = False  # pass balanced sample weights to fit()


def _linear_svc(seed, n_threads):
    from sklearn.svm import LinearSVC

    return LinearSVC(C=0.5, class_weight="balanced", random_state=seed, max_iter=3000)


def _logreg(seed, n_threads):
    from sklearn.linear_model import LogisticRegression

    # lbfgs multinomial on sparse input: one model for all classes, probabilities for free.
    return LogisticRegression(C=20.0, class_weight="balanced", max_iter=200, random_state=seed)


def _ridge(seed, n_threads):
    from sklearn.linear_model import RidgeClassifier

    return RidgeClassifier(alpha=1.0, class_weight="balanced", solver="sparse_cg", random_state=seed)


def _complement_nb(seed, n_threads):
    from sklearn.naive_bayes import ComplementNB

    return ComplementNB(alpha=0.3)


def _xgboost(seed, n_threads):
    import xgboost as xgb

    return xgb.XGBClassifier(
        n_estimators=80, max_depth=6, learning_rate=0.25, subsample=0.9, colsample_bytree=0.5,
        tree_method="hist", max_bin=64, n_jobs=n_threads, random_state=seed, verbosity=0,
    )


def _lightgbm(seed, n_threads):
    import lightgbm as lgb

    return lgb.LGBMClassifier(
        n_estimators=120, learning_rate=0.12, num_leaves=31, colsample_bytree=0.5, subsample=0.9,
        subsample_freq=1, max_bin=63, class_weight="balanced", n_jobs=n_threads, random_state=seed, verbose=-1,
    )


def _extra_trees(seed, n_threads):
    from sklearn.ensemble import ExtraTreesClassifier

    return ExtraTreesClassifier(
        n_estimators=100, min_samples_leaf=1, max_features="sqrt", class_weight="balanced_subsample",
        n_jobs=n_threads, random_state=seed,
    )


def _knn(seed, n_threads):
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(n_neighbors=15, weights="distance", metric="cosine", algorithm="brute", n_jobs=n_threads)


CLASSICAL: dict[str, ClassicalSpec] = {
    s.name: s
    for s in [
        ClassicalSpec("linear_svc", "sparse", _linear_svc),
        ClassicalSpec("logreg", "sparse", _logreg),
        ClassicalSpec("ridge", "sparse", _ridge),
        ClassicalSpec("complement_nb", "nonneg", _complement_nb),
        ClassicalSpec("xgboost", "dense", _xgboost, sample_weight=True),
        ClassicalSpec("lightgbm", "dense", _lightgbm),
        ClassicalSpec("extra_trees", "dense", _extra_trees),
        ClassicalSpec("knn", "dense", _knn),
    ]
}


def softmax(scores: np.ndarray) -> np.ndarray:
    s = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(axis=1, keepdims=True)


def estimator_proba(est, x) -> np.ndarray:
    """Class probabilities, or a softmax over decision scores for margin models."""
    if isinstance(est, ContiguousLabels):
        est = est.estimator
    if hasattr(est, "predict_proba"):
        return np.asarray(est.predict_proba(x))
    d = np.asarray(est.decision_function(x))
    if d.ndim == 1:  # binary margin -> two columns
        d = np.column_stack([-d, d])
    return softmax(d)


class ContiguousLabels:
    """Fits an estimator on labels renumbered 0..k-1 (XGBoost insists on it when a class is absent
    from the training rows) and exposes the original codes as ``classes_``."""

    def __init__(self, estimator):
        self.estimator = estimator

    def fit(self, x, y, **kw):
        self.classes_, yy = np.unique(y, return_inverse=True)
        self.estimator.fit(x, yy, **kw)
        return self

    def predict_proba(self, x):
        return self.estimator.predict_proba(x)

    def predict(self, x):
        return self.classes_[np.asarray(self.estimator.predict(x), int)]


# Models whose solver can start from a fitted model's coefficients (fit_classical's warm_from).
WARM_STARTABLE_CLASSICAL = ("logreg",)


def fit_classical(name: str, x, y_codes: np.ndarray, seed: int = 0, n_threads: int = 2, warm_from=None):
    """Fit one classical model on already-featurized training rows. Returns (estimator, seconds).

    ``warm_from``: a fitted model of the same name over the same columns and class codes (a retrain with a
    kept featurizer): a `WARM_STARTABLE_CLASSICAL` model starts its solver from its coefficients (lbfgs on
    the same convex objective, so it ends where a cold fit would, to the solver's tolerance)."""
    spec = CLASSICAL[name]
    est = ContiguousLabels(spec.make(seed, n_threads))
    if warm_from is not None:
        if name not in WARM_STARTABLE_CLASSICAL:
            raise ValueError(f"{name} cannot start from a fitted model (warm-startable: {list(WARM_STARTABLE_CLASSICAL)})")
        old = getattr(warm_from, "estimator", warm_from)
        est.estimator.set_params(warm_start=True)
        est.estimator.coef_, est.estimator.intercept_ = old.coef_.copy(), old.intercept_.copy()
    t0 = time.perf_counter()
    if spec.sample_weight:
        est.fit(x, y_codes, sample_weight=compute_sample_weight("balanced", y_codes))
    else:
        est.fit(x, y_codes)
    secs = time.perf_counter() - t0
    if warm_from is not None:
        est.estimator.set_params(warm_start=False)  # the stored model refits from scratch if ever refitted
    return est, secs


class ServingPredictions:
    """predict / predict_proba for a serving classifier that defines ``classes`` and
    ``_proba_array(frame, memo) -> [n, n_classes]``: shared by the classical and neural models."""

    def predict_proba(self, frame: pd.DataFrame, memo: dict | None = None) -> pd.DataFrame:
        return pd.DataFrame(self._proba_array(frame, memo), columns=self.classes, index=frame.index)

    def predict(self, frame: pd.DataFrame, memo: dict | None = None) -> pd.DataFrame:
        """``memo``: features shared with other classifiers scoring the same frame object
        (features.shared_transform)."""
        p = self._proba_array(frame, memo)
        out = pd.DataFrame(
            {"label": np.asarray(self.classes, dtype=object)[p.argmax(axis=1)], "confidence": p.max(axis=1)},
            index=frame.index,
        )
        if "product_id" in frame.columns:
            out.insert(0, "product_id", frame["product_id"].to_numpy())
        return out


class TaskClassifier(ServingPredictions):
    """A serving classifier for one task: featurizer + fitted model + label names.

    Usage (what scoring calls)::

        frame = with_embeddings(products, ids, image, text)   # core.features
        clf.predict(frame)        # DataFrame[product_id?, label, confidence], one row per input row
        clf.predict_proba(frame)  # DataFrame, one column per class (rows sum to 1)

    ``frame`` needs the columns of ``clf.features_spec()["inputs"]``: ``title``,
    ``description``, ``brand`` as text (missing -> ""), ``image_embedding`` /
    ``text_embedding`` as vectors or None. Unknown extra columns are ignored.
    """

    def __init__(self, task: str, model_name: str, featurizer, classes: list[str], estimator=None, kind: str = "sparse"):
        self.task = task
        self.model_name = model_name
        self.featurizer = featurizer
        self.classes = list(classes)
        self.estimator = estimator
        self.kind = kind

    def _proba_array(self, frame: pd.DataFrame, memo: dict | None = None) -> np.ndarray:
        x = shared_transform(self.featurizer, frame, self.kind, memo)
        p = estimator_proba(self.estimator, x)
        # Estimators may have seen only a subset of the label codes.
        out = np.zeros((len(frame), len(self.classes)), np.float64)
        out[:, np.asarray(self.estimator.classes_, int)] = p
        return out

    def features_spec(self) -> dict:
        return {"task": self.task, "model": self.model_name, "kind": self.kind, "classes": self.classes,
                **self.featurizer.spec()}


def encode_labels(y: pd.Series) -> tuple[LabelEncoder, np.ndarray]:
    le = LabelEncoder().fit(y.astype(str))
    return le, le.transform(y.astype(str))


# Models whose fit runs on one thread and may share a process with another fit (`fit_on_lanes`): liblinear's
# (LinearSVC) and lbfgs / conjugate gradients / counting on sparse rows, whose numeric work releases the GIL
# (measured for LinearSVC beside a logreg: two threads took about the longer fit's time). liblinear draws its
# coordinate order from a process-global generator (seeded by each fit), so two liblinear fits must never
# overlap: they share one lane.
LIBLINEAR_MODELS = ("linear_svc",)
SINGLE_THREADED_MODELS = ("logreg", "ridge", "complement_nb")


def fit_on_lanes(fit: Callable, jobs: list[tuple], n_threads: int) -> tuple[list, str]:
    """``[fit(*job) for job in jobs]`` (in job order; ``job[1]`` is the model name), and how they ran.

    With two or more threads and both kinds present, the liblinear fits run one after another on one thread
    while the other single-threaded ones run on a second, so the two lanes overlap; every other model (those
    with their own threads: LightGBM, XGBoost, extra trees, k-NN) fits afterwards, alone. Each fit is what it
    would be alone: the lanes share no generator and no output. On the full development data's first run (2
    cores) the 27 linear fits took ~90 s one after another; on two lanes classifier_leaderboard took 144 and 154 s
    in two benchmark runs against 166 and 172 s before (benchmarks/results/pipeline.md holds the 154 s one), each
    fit ~25% slower beside the other."""
    out: list = [None] * len(jobs)
    lanes = ([i for i, j in enumerate(jobs) if j[1] in LIBLINEAR_MODELS],
             [i for i, j in enumerate(jobs) if j[1] in SINGLE_THREADED_MODELS])
    rest = list(range(len(jobs)))
    how = "one after another"
    if n_threads >= 2 and all(lanes):
        errors: list[BaseException] = []

        def run(lane: list[int]) -> None:
            try:
                for i in lane:
                    out[i] = fit(*jobs[i])
            except BaseException as e:  # raised in the caller's thread below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(lane,), name=f"fit-lane-{what}")
                   for lane, what in zip(lanes, ("liblinear", "other"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        rest = [i for i in rest if i not in lanes[0] and i not in lanes[1]]
        how = (f"two lanes: {len(lanes[0])} liblinear fits beside {len(lanes[1])} other single-threaded ones"
               + (f", then {len(rest)} alone" if rest else ""))
    for i in rest:
        out[i] = fit(*jobs[i])
    return out, how


__all__ = ["CLASSICAL", "ClassicalSpec", "TaskClassifier", "fit_classical", "fit_on_lanes", "estimator_proba",
           "softmax", "encode_labels", "ProductFeaturizer"]
