"""Train every configured classifier on every input regime and evaluate it on the test split.

The split column decides everything: featurizers, label encoders and models are fitted on
``split == "train"`` rows only; ``validation`` rows drive neural early stopping and the
choice of the serving model per task; ``test`` rows are only ever predicted.
Rows with a null label are excluded per task and counted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fashion_pipeline.core.features import ProductFeaturizer, TokenSequencer
from fashion_pipeline.core.label_metrics import classification_metrics
from fashion_pipeline.core.models.classifiers import (CLASSICAL, WARM_STARTABLE_CLASSICAL, TaskClassifier, estimator_proba,
                                                      fit_classical, fit_on_lanes)
from fashion_pipeline.core.models.fusion import (
    ARCHITECTURES,
    NeuralConfig,
    WARM_STARTABLE,
    NeuralTaskClassifier,
    predict_multitask,
    train_multitask,
)
from fashion_pipeline.core.models.publishing import BASELINE_MODELS

TASKS = ("category", "gender", "usage")
SPLITS = ("train", "validation", "test")

# Which regimes each neural architecture is evaluated under: the image-only CNN sees only the
# image by construction; the text-using networks are evaluated where there is text.
NEURAL_REGIMES = {"image_cnn": ("image",), "multimodal_cnn": ("full", "sparse"), "clip_fusion": ("full", "sparse")}

log = logging.getLogger(__name__)


@dataclass
class LeaderboardConfig:
    tasks: tuple[str, ...] = TASKS
    regimes: tuple[str, ...] = ("full", "sparse", "image")
    classical: tuple[str, ...] = tuple(CLASSICAL)
    neural: tuple[str, ...] = ARCHITECTURES
    neural_config: NeuralConfig = field(default_factory=NeuralConfig)
    featurizer: dict = field(default_factory=dict)  # ProductFeaturizer keyword arguments
    # Models too slow for the full training set are fitted on a seeded sample of it (reported).
    max_train_rows: dict = field(default_factory=dict)
    seed: int = 0
    n_threads: int = 2
    # A seller's listing may or may not state a brand: the brand is hidden on this share of the
    # training rows (seeded), so a 'full' model has learned to classify without it.
    brand_mask_rate: float = 0.5
    # A retrain, not a selection: {(task, regime): model} trains only that model (and, beside a model
    # that is not itself one of the gate's linear baselines, the configured baselines the gate compares
    # with) and serves it; (task, regime) pairs not named here are selected on validation among every
    # configured model.
    chosen: dict = field(default_factory=dict)
    baselines: tuple[str, ...] = ("linear_svc",)
    # (task, regime) pairs of a retrain whose baseline is not fitted: the caller re-scores a stored one
    # (the classifier_leaderboard asset: the baseline of an earlier run, while the train split has
    # barely grown since).
    stored_baselines: frozenset = frozenset()
    # {(architecture, regime): (fitted MultiTaskNet, {task: its classes})}: a retrained network of a
    # `WARM_STARTABLE` architecture fine-tunes that one (train_multitask(init=...)) when every task it
    # trains for the regime retrains it and the classes are the same; otherwise it starts cold.
    warm: dict = field(default_factory=dict)
    # {regime: fitted ProductFeaturizer}: a retrain transforms that regime's rows with it instead of fitting a
    # new one, where it was fitted for every feature kind the regime's models need (the caller hands over the
    # retrained classifiers' featurizer while the train split is close to the one it was fitted on).
    featurizers: dict = field(default_factory=dict)
    # {(task, regime): (fitted estimator, its class names)}: where the regime's featurizer is kept (the same
    # columns) and the classes are the same, a retrained logistic regression starts lbfgs from its coefficients.
    warm_linear: dict = field(default_factory=dict)

    def trains(self, task: str, regime: str, model: str) -> bool:
        want = self.chosen.get((task, regime))
        # A linear choice is its own linear reference in the gate (publishing.gate_each): a retrained
        # logreg is compared with the published model, and no linear_svc is fitted beside it.
        return want is None or model == want or (
            model in self.baselines and want not in BASELINE_MODELS and (task, regime) not in self.stored_baselines)


@dataclass
class LeaderboardResult:
    leaderboard: pd.DataFrame  # one row per task x model x regime x source
    label_counts: pd.DataFrame  # per task x split: rows used / excluded for a null label
    serving: dict  # (task, regime) -> serving classifier chosen on validation macro-F1
    test_predictions: dict  # (task, model, regime) -> DataFrame[product_id, source, y_true, y_pred]
    timings: dict  # featurizer fit seconds per regime, total seconds
    warm_starts: dict = field(default_factory=dict)  # "arch/regime" -> "warm (kept epoch k of n)" or "cold: why"
    # (task, regime) -> the fitted baseline (`LeaderboardConfig.baselines`) as a serving classifier, for
    # a caller that keeps it for later retrains to re-score.
    baselines: dict = field(default_factory=dict)
    # regime -> how its featurizer started: "kept" (`LeaderboardConfig.featurizers`) or "fitted" (and why,
    # where one was handed over); task/regime -> how a warm-startable linear model started.
    featurizer_starts: dict = field(default_factory=dict)
    linear_starts: dict = field(default_factory=dict)


def _split(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    if "split" not in frame.columns:
        raise ValueError("products need a 'split' column (train / validation / test)")
    bad = set(frame["split"].dropna().unique()) - set(SPLITS)
    if bad:
        raise ValueError(f"unknown split values {sorted(bad)}")
    return {s: frame[frame["split"] == s] for s in SPLITS}


def label_counts(frame: pd.DataFrame, tasks=TASKS) -> pd.DataFrame:
    rows = []
    for t in tasks:
        for s in SPLITS:
            part = frame[frame["split"] == s]
            rows.append({"task": t, "split": s, "labelled": int(part[t].notna().sum()),
                         "excluded_null_label": int(part[t].isna().sum())})
    return pd.DataFrame(rows)


def _metrics_rows(task, model, family, regime, test: pd.DataFrame, y_pred, train_seconds, n_train) -> list[dict]:
    rows = []
    y_true = test[task].astype(str).to_numpy()
    for source in ["all", *sorted(test["source"].unique())]:
        m = np.ones(len(test), bool) if source == "all" else (test["source"] == source).to_numpy()
        met = classification_metrics(y_true[m], np.asarray(y_pred)[m])
        rows.append({"task": task, "model": model, "family": family, "regime": regime, "source": source,
                     **met, "train_seconds": round(float(train_seconds), 2), "n_train": int(n_train)})
    return rows


def _sample_rows(n: int, cap: int | None, seed: int) -> np.ndarray:
    if not cap or n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))


def hide_brand(train: pd.DataFrame, rate: float, seed: int = 0) -> pd.DataFrame:
    """``train`` with ``brand`` set to null on a seeded ``rate`` share of its rows."""
    if rate <= 0 or "brand" not in train.columns or not len(train):
        return train
    out = train.copy()
    hide = np.random.default_rng(seed + 7).random(len(out)) < rate
    out.loc[hide, "brand"] = None
    return out


def run_leaderboard(frame: pd.DataFrame, cfg: LeaderboardConfig | None = None, log_fn=None) -> LeaderboardResult:
    """``frame``: clean_products rows joined with embeddings (``features.with_embeddings``)."""
    cfg = cfg or LeaderboardConfig()
    say = log_fn or log.info
    parts = _split(frame)
    parts["train"] = hide_brand(parts["train"], cfg.brand_mask_rate, cfg.seed)
    t_all = time.perf_counter()
    rows: list[dict] = []
    serving: dict = {}
    best_val: dict = {}
    preds: dict = {}
    timings: dict = {"featurizer_seconds": {}}
    warm_starts: dict = {}
    baselines: dict = {}
    featurizer_starts: dict = {}
    linear_starts: dict = {}
    shared_fits: dict = {}  # the image PCA, identical for every regime's featurizer (same train rows)

    for regime in cfg.regimes:
        t0 = time.perf_counter()
        # Only the kinds of the models this regime trains: a retrain that trains the linear choices
        # fits no TruncatedSVD / text PCA and builds no dense block for a tree model it does not fit.
        kinds_needed = {CLASSICAL[m].kind for m in cfg.classical if any(cfg.trains(t, regime, m) for t in cfg.tasks)}
        if any(regime in NEURAL_REGIMES[a] and any(cfg.trains(t, regime, a) for t in cfg.tasks) for a in cfg.neural):
            kinds_needed.add("wide")
        kept = cfg.featurizers.get(regime)
        lacks = sorted(kinds_needed - set(getattr(kept, "kinds_", ()))) if kept is not None else []
        if kept is not None and not lacks and getattr(kept, "regime", None) == regime:
            fz = kept
            by_split = {s: fz.transform_kinds(parts[s], sorted(kinds_needed)) for s in SPLITS}
            featurizer_starts[regime] = f"kept (fitted on {getattr(fz, 'n_fit_rows_', '?')} train rows)"
        else:
            if kept is not None:
                featurizer_starts[regime] = (f"fitted: the one handed over has no {lacks}" if lacks else
                                             f"fitted: the one handed over is for regime {getattr(kept, 'regime', None)!r}")
            else:
                featurizer_starts[regime] = "fitted"
            fz = ProductFeaturizer(regime=regime, seed=cfg.seed, **cfg.featurizer)
            by_split = {"train": fz.fit_transform_kinds(parts["train"], sorted(kinds_needed), shared=shared_fits)}
            by_split.update({s: fz.transform_kinds(parts[s], sorted(kinds_needed)) for s in SPLITS if s != "train"})
        feats = {k: {s: by_split[s][k] for s in SPLITS} for k in kinds_needed}
        del by_split
        timings["featurizer_seconds"][regime] = round(time.perf_counter() - t0, 2)
        say(f"[{regime}] features built in {timings['featurizer_seconds'][regime]} s ({featurizer_starts[regime]}): "
            + ", ".join(f"{k} {feats[k]['train'].shape[1]} cols" for k in sorted(feats)))

        classes: dict[str, list[str]] = {}
        masks: dict[str, dict[str, np.ndarray]] = {}
        codes: dict[str, dict[str, np.ndarray]] = {}
        for task in cfg.tasks:
            classes[task] = sorted(parts["train"][task].dropna().astype(str).unique())
            idx = {c: i for i, c in enumerate(classes[task])}
            masks[task] = {s: parts[s][task].notna().to_numpy() for s in SPLITS}
            # -1: null label or a label never seen in training (cannot be predicted; still scored).
            codes[task] = {s: parts[s][task].map(lambda v: idx.get(str(v), -1) if pd.notna(v) else -1).to_numpy()
                           for s in SPLITS}

        def record(task, model, family, regime, proba_val, proba_test, seconds, n_train, make_serving):
            test_m = masks[task]["test"]
            test = parts["test"][test_m]
            y_pred = np.asarray(classes[task], dtype=object)[proba_test[test_m].argmax(axis=1)]
            rows.extend(_metrics_rows(task, model, family, regime, test, y_pred, seconds, n_train))
            preds[(task, model, regime)] = pd.DataFrame({
                "product_id": test["product_id"].to_numpy(), "source": test["source"].to_numpy(),
                "y_true": test[task].astype(str).to_numpy(), "y_pred": y_pred})
            val_m = masks[task]["validation"] & (has_img["validation"] | (not image_only))
            val_pred = np.asarray(classes[task], dtype=object)[proba_val[val_m].argmax(axis=1)]
            val_f1 = classification_metrics(parts["validation"][task][val_m].astype(str).to_numpy(), val_pred)["macro_f1"]
            key = (task, regime)
            if cfg.chosen.get(key, model) != model:  # a baseline trained beside a retrained choice
                return val_f1
            if key not in best_val or (val_f1 > best_val[key][0]):
                best_val[key] = (val_f1, model)
                serving[key] = make_serving()
            return val_f1

        # Image-only models learn nothing from a product without an image: train on those with one.
        has_img = {s: parts[s]["image_embedding"].notna().to_numpy() if "image_embedding" in parts[s] else
                   np.zeros(len(parts[s]), bool) for s in SPLITS}
        image_only = not (fz.regime_.title or fz.regime_.description or fz.regime_.brand)
        if image_only:
            timings.setdefault("train_rows_without_image_excluded", {})[regime] = int((~has_img["train"]).sum())
        # The classical fits: planned in order, fitted (two single-threaded solvers at a time where there are
        # cores for it: `fit_on_lanes`), then judged on validation in that same order (a tie keeps the first).
        planned: list[tuple[str, str, np.ndarray]] = []
        for task in cfg.tasks:
            tr = masks[task]["train"] & (codes[task]["train"] >= 0)
            if image_only:
                tr &= has_img["train"]
            if len(np.unique(codes[task]["train"][tr])) < 2:
                say(f"[{regime}] {task}: fewer than two classes among {int(tr.sum())} training rows; skipped")
                continue
            planned.extend((task, name, tr) for name in cfg.classical if cfg.trains(task, regime, name))

        def fit_one(task, name, tr, fz=fz, feats=feats):
            spec = CLASSICAL[name]
            y_tr = codes[task]["train"][tr]
            sub = _sample_rows(len(y_tr), cfg.max_train_rows.get(name), cfg.seed)
            # One row selection (none when every row trains): a copy of a wide CSR block is hundreds
            # of MB beside the solver's own copy of it.
            rows_used = np.flatnonzero(tr)[sub]
            x_fit = feats[spec.kind]["train"]
            if len(rows_used) < x_fit.shape[0]:
                x_fit = x_fit[rows_used]
            warm_from = None
            if (name in WARM_STARTABLE_CLASSICAL and (task, regime) in cfg.warm_linear and fz is kept
                    and cfg.chosen.get((task, regime)) == name):
                warm_from, why = _warm_linear(cfg.warm_linear[(task, regime)], classes[task], y_tr[sub], x_fit)
                linear_starts[f"{task}/{regime}"] = why
            elif (task, regime) in cfg.warm_linear and cfg.chosen.get((task, regime)) == name:
                linear_starts[f"{task}/{regime}"] = f"cold: {featurizer_starts[regime]} (other columns)"
            est, secs = fit_classical(name, x_fit, y_tr[sub], cfg.seed, cfg.n_threads, warm_from=warm_from)
            if warm_from is not None:
                linear_starts[f"{task}/{regime}"] = f"warm: {est.estimator.n_iter_.max()} lbfgs iterations"
            return est, secs, len(sub)

        t_fits = time.perf_counter()
        fitted, lanes = fit_on_lanes(fit_one, planned, cfg.n_threads)
        if planned:
            timings.setdefault("classical_fit_seconds", {})[regime] = round(time.perf_counter() - t_fits, 2)
            timings.setdefault("classical_fit_lanes", {})[regime] = lanes
        for (task, name, _), (est, secs, n_fit) in zip(planned, fitted):
            spec = CLASSICAL[name]

            def full_proba(s, est=est, spec=spec, task=task):
                p = estimator_proba(est, feats[spec.kind][s])
                out = np.zeros((p.shape[0], len(classes[task])))
                out[:, np.asarray(est.classes_, int)] = p
                return out

            vf1 = record(task, name, "classical", regime, full_proba("validation"), full_proba("test"), secs,
                         n_fit, lambda est=est, spec=spec, task=task, name=name: TaskClassifier(
                             task, name, fz, classes[task], est, spec.kind))
            say(f"[{regime}] {task} {name}: {secs:.1f} s, val macro-F1 {vf1:.3f}")
            if name in cfg.baselines:
                baselines[(task, regime)] = TaskClassifier(task, name, fz, classes[task], est, spec.kind)
        del fitted

        # The neural heads read only the wide block: the classical blocks are freed before they train.
        feats = {k: v for k, v in feats.items() if k == "wide"}
        for arch in cfg.neural:
            arch_tasks = [t for t in cfg.tasks if cfg.trains(t, regime, arch)]
            if regime not in NEURAL_REGIMES[arch] or not arch_tasks:
                continue
            nc = cfg.neural_config
            seq = None
            if arch == "image_cnn":
                x_fz = fz
            elif arch == "multimodal_cnn":
                # image branch: the image block only; text goes through the CNN.
                x_fz = ProductFeaturizer(regime="image", seed=cfg.seed).fit(parts["train"], shared=shared_fits)
                seq = TokenSequencer(regime=regime).fit(parts["train"])
            else:
                x_fz = fz
            xs = {s: (x_fz.transform(parts[s], "wide") if x_fz is not fz else feats["wide"][s]) for s in SPLITS}
            toks = {s: seq.transform(parts[s]) for s in SPLITS} if seq is not None else {s: None for s in SPLITS}
            n_classes = {t: len(classes[t]) for t in cfg.tasks}
            y_train = {t: np.where(has_img["train"] | (not image_only), codes[t]["train"], -1) for t in cfg.tasks}
            init, why_cold = _warm_start(cfg, arch, regime, arch_tasks, classes)
            net, info = train_multitask(
                xs["train"], y_train,
                xs["validation"], {t: np.where(has_img["validation"] | (not image_only), codes[t]["validation"], -1)
                                   for t in cfg.tasks},
                n_classes, nc, toks["train"], toks["validation"], seq.vocab_size if seq else None, init=init,
            )
            if init is not None or why_cold:
                warm_starts[f"{arch}/{regime}"] = (
                    f"warm (kept {_kept(info)} of {nc.warm_epochs}; -1: the starting weights)"
                    if info["warm_start"] == "warm" else why_cold or info["warm_start"])
            pv = predict_multitask(net, xs["validation"], toks["validation"])
            pt = predict_multitask(net, xs["test"], toks["test"])
            say(f"[{regime}] {arch}: {info['seconds']:.1f} s, {info['epochs_run']} epochs (multitask"
                + (f", {warm_starts[f'{arch}/{regime}']}" if f"{arch}/{regime}" in warm_starts else "")
                + f"), kept {_kept(info)} (mean validation macro-F1 {info['best_val_macro_f1']:.3f})")
            for task in arch_tasks:
                record(task, arch, "neural", regime, pv[task], pt[task], info["seconds"],
                       int((y_train[task] >= 0).sum()),
                       lambda task=task, arch=arch, x_fz=x_fz, seq=seq, net=net: NeuralTaskClassifier(
                           task, arch, x_fz, classes[task], net, seq, "wide"))
            del xs, toks, net
        del feats  # before the next regime builds its own
    timings["total_seconds"] = round(time.perf_counter() - t_all, 2)
    lb = pd.DataFrame(rows)
    for key, (vf1, model) in best_val.items():
        sel = (lb["task"] == key[0]) & (lb["regime"] == key[1]) & (lb["model"] == model)
        lb.loc[sel, "serving"] = True
    if len(lb):
        lb["serving"] = lb["serving"].eq(True) if "serving" in lb else False
    return LeaderboardResult(lb, label_counts(frame, cfg.tasks), serving, preds, timings, warm_starts, baselines,
                             featurizer_starts, linear_starts)


def _warm_linear(given, classes: list[str], y_codes: np.ndarray, x) -> tuple[object | None, str]:
    """(the fitted estimator a retrained linear model starts from, or None; why / why not). ``given``:
    (estimator, its class names) from `LeaderboardConfig.warm_linear`."""
    est, known = given
    inner = getattr(est, "estimator", est)
    if list(known) != list(classes):
        return None, "cold: its classes are not this run's"
    if not np.array_equal(np.asarray(getattr(est, "classes_", [])), np.unique(y_codes)):
        return None, "cold: the classes present in training differ"
    if getattr(inner, "coef_", None) is None or inner.coef_.shape[1] != x.shape[1]:
        return None, "cold: its coefficients do not match these columns"
    return est, ""


def _kept(info: dict) -> str:
    """'epoch 7', or for an ensemble 'epochs [7, 4, 9] of its 3 networks'."""
    kept = info["best_epoch"]
    return f"epochs {kept} of its {len(kept)} networks" if isinstance(kept, list) else f"epoch {kept}"


def _warm_start(cfg: LeaderboardConfig, arch: str, regime: str, arch_tasks: list[str],
                classes: dict[str, list[str]]):
    """(the network to fine-tune or None, why it starts cold where a warm start was handed over)."""
    given = cfg.warm.get((arch, regime))
    if given is None:
        return None, ""
    if arch not in WARM_STARTABLE:
        return None, f"cold: {arch}'s inputs are refitted on every run (warm-startable: {list(WARM_STARTABLE)})"
    selected = [t for t in arch_tasks if cfg.chosen.get((t, regime)) != arch]
    if selected:
        return None, f"cold: {selected} select on validation here (a warm start only seeds a retrain)"
    net, known = given
    differ = [t for t in cfg.tasks if list(known.get(t, [])) != list(classes[t])]
    if differ:
        return None, f"cold: the classes of {differ} are not those the network was trained on"
    return net, ""


def best_per_task(leaderboard: pd.DataFrame, metric: str = "macro_f1", source: str = "all") -> pd.DataFrame:
    """Best test row per task and regime (for reporting; the serving choice is made on validation)."""
    lb = leaderboard[leaderboard["source"] == source]
    idx = lb.groupby(["task", "regime"])[metric].idxmax()
    return lb.loc[idx].sort_values(["task", "regime"]).reset_index(drop=True)
