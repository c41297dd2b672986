"""classifier_leaderboard + attribute_classifiers: category / gender / usage classifiers.

Logic: fashion_pipeline.core.models.leaderboard (training + test evaluation),
core.models.classifiers (classical), core.models.fusion (neural), core.features.

Model store names (what scoring loads)::

    store = ModelStoreResource(...).store()
    clf, info = store.load("category_classifier")          # published serving model, full regime
                                                           # (published by published_classifiers after the gate)
    clf, info = store.load("category_classifier_sparse")   # for listings with a photo + title only
    clf, info = store.load("category_classifier_image")    # photo only
    frame = with_embeddings(products, ids, image, text)    # fashion_pipeline.core.features
    clf.predict(frame)         # DataFrame[product_id, label, confidence]
    clf.predict_proba(frame)   # DataFrame, one column per class
    info["features_spec"]      # inputs the model needs, dims, classes; info["metrics"]: its test scores

Same for gender_classifier* and usage_classifier*. In ``mode="select"`` (model_selection_job) each
serving model is the one with the best *validation* macro-F1 for its task and regime, and the
leaderboard reports every model on *test*; in ``mode="retrain"`` (the weekly schedule) each task and
regime retrains the model its published classifier is, beside the linear baseline the gate needs
(none beside a linear choice: it is its own).
"""


from typing import Literal

import dagster as dg
import pandas as pd
from pydantic import Field
from threadpoolctl import threadpool_limits

from fashion_pipeline import metadata as md
from fashion_pipeline import reuse
from fashion_pipeline.automation import EAGER_WHEN_GATES_PASS
from fashion_pipeline.core.features import REGIMES, with_embeddings
from fashion_pipeline.core.fingerprint import code_digest, combine, frame_digest
from fashion_pipeline.core.models.classifiers import CLASSICAL, WARM_STARTABLE_CLASSICAL
from fashion_pipeline.core.models.fusion import ARCHITECTURES, WARM_STARTABLE, NeuralConfig
from fashion_pipeline.core.models.leaderboard import TASKS, LeaderboardConfig, best_per_task, run_leaderboard
from fashion_pipeline.core.models.publishing import (BASELINE_MODELS, baseline_name, baseline_row, classifier_gate,
                                                     classifier_name, gate_each, macro_f1_on_test_rows)
from fashion_pipeline.core.split import grew_beyond
from fashion_pipeline.core.figures import confusion_matrix_png
from fashion_pipeline.core.threads import resolve_threads
from fashion_pipeline.core.token_counts import token_caches
from fashion_pipeline.embedding_inputs import EMBEDDINGS_ASSET, require_catalogue_embeddings
from fashion_pipeline.gpu import gpu_declarations
from fashion_pipeline.paths import token_cache_dir
from fashion_pipeline.profiles import get_profile
from fashion_pipeline.resources.model_store import ModelStoreResource
from fashion_pipeline.resources.warehouse import WarehouseResource

GROUP = "models"


# The classical families a first run selects among (`classical_models`' default), and the ones only
# model_selection_job adds (fashion_pipeline/jobs.py): LightGBM's boosted trees on the SVD / PCA block.
# In the pipeline benchmark's first run on the full development data (2026-12-07), LightGBM's
# validation macro-F1 trailed the chosen model in all nine task x regime pairs — full: category 0.979
# vs 0.988, gender 0.926 vs 0.960, usage 0.644 vs 0.863; sparse (photo + title): 0.954 vs 0.971,
# 0.900 vs 0.933, 0.702 vs 0.714; photo-only: second to image_cnn, chosen for all three — while its
# fits (9.3 / 4.8 / 5.4, 6.7 / 3.5 / 4.8, 4.2 / 1.8 / 2.3 s) and the TruncatedSVD only it reads were
# ~20% of the leaderboard's time (218 s; 167-172 s without them).
FIRST_RUN_CLASSICAL = ("linear_svc", "logreg", "complement_nb")
SELECTION_ONLY_CLASSICAL = ("lightgbm",)


class ClassifierConfig(dg.Config):
    mode: Literal["retrain", "select"] = Field(default="retrain", description=(
        "retrain (the weekly schedule, the sensor): each task and regime retrains only the model its published "
        "classifier is (plus, beside a non-linear choice, the linear baseline the gate compares with), on fresh data, and the "
        "classifier_leaderboard table keeps the last selection's; a pair with nothing published (its candidates "
        "were refused by the gate) retrains its latest candidate's model, and one with nothing stored (a first run) is "
        "selected as in 'select' among `classical_models` and `neural_models`. select (model_selection_job, on "
        "demand, which adds multimodal_cnn and clip_fusion): every configured model is trained on every regime, the serving one "
        "chosen on validation, and classifier_leaderboard rewritten."))
    regimes: list[str] = Field(default=list(REGIMES), description=(
        "Input regimes: full (image + title + description + brand), sparse (image + title), image (image only)."))
    classical_models: list[str] = Field(
        default=list(FIRST_RUN_CLASSICAL),
        description=f"Classical models that compete in a selection, any of {list(CLASSICAL)}. Default: the linear "
                    "ones and complement_nb, what a first run (nothing stored) selects among; model_selection_job "
                    f"adds {list(SELECTION_ONLY_CLASSICAL)}, which on the full development data lost on validation in "
                    "every task and regime (to a linear model by 0.009-0.22 macro-F1 on text, to image_cnn on the "
                    "photo) and cost ~43 s of a first run's ~220 s here; benchmarks/classifiers.py trains all eight. "
                    "A retrain retrains a published choice whatever this list says.")
    neural_models: list[str] = Field(default=["image_cnn"], description=(
        f"Neural models that compete in a selection, any of {list(ARCHITECTURES)}. Default image_cnn alone (image "
        "regime, `neural_ensemble` multitask networks of 15-30 s each on the full development data, chosen there "
        "for all three tasks: photo-only test macro-F1 category 0.895 (one network) vs LightGBM's 0.870); multimodal_cnn and clip_fusion train for ~5 minutes on "
        "2 cores there and win nothing on test (multimodal_cnn is chosen on validation only for usage/sparse, then "
        "0.597 vs LinearSVC's 0.644 test macro-F1; benchmarks/results/classifiers.md), so only "
        "model_selection_job trains them. A retrain retrains a published neural choice whatever this list says."))
    neural_epochs: int = Field(default=20, ge=1, description=(
        "Epoch budget (cosine learning-rate decay over it); the epoch with the best mean validation macro-F1 is kept."))
    neural_patience: int = Field(default=5, ge=1, description=(
        "Epochs without a better mean validation macro-F1 before stopping."))
    neural_hidden: int = Field(default=256, ge=8, description="Width of the neural trunk.")
    neural_ensemble: int = Field(default=3, ge=1, description=(
        "Networks per neural model, trained from seeds seed, seed+1, ... and served as one (their probabilities "
        "averaged). 3: on the full development data one image_cnn scored photo-only test macro-F1 category / gender / "
        "usage 0.895 / 0.680 / 0.529 on average over 9 seeds (standard deviation 0.007 / 0.015 / 0.011), three "
        "averaged 0.903 / 0.696 / 0.544 (0.004 / 0.007 / 0.008), five 0.904 / 0.700 / 0.546 (validation alike) for "
        "two thirds more time; each network costs the training time of one. A retrain fine-tunes each stored "
        "network (an ensemble of another size starts cold)."))
    neural_warm_epochs: int = Field(default=5, ge=0, description=(
        "mode retrain: a retrained image_cnn (whose input, the photo embedding, means the same from one fit to the "
        "next) fine-tunes the stored network it retrains for this many epochs, from a quarter of the learning rate "
        "and with its input standardisation, instead of `neural_epochs` from scratch; the starting weights count "
        "as epoch -1 on the new validation rows. It starts cold, and says why in the metadata `neural_start`, "
        "where the classes or shapes changed. 0: always cold. The other networks read inputs refitted on every "
        "run and always start cold."))
    neural_warm_patience: int = Field(default=1, ge=1, description=(
        "mode retrain: a network's fine-tune stops after this many epochs in a row without a better mean "
        "validation macro-F1 (its starting weights' included). A +1% retrain on the full development data kept "
        "epochs [-1, -1, 1] of image_cnn's three networks, so the other epochs (~2 s each) changed nothing "
        "served; raise it to let a fine-tune recover from a worse epoch."))
    neural_device: str = Field(default=get_profile().device, description=(
        "torch device the neural classifiers train on: 'cpu' or 'cuda' (a GPU machine); default: the profile's. "
        "The other families train on the CPU."))
    svd_components: int = Field(default=64, ge=2, description="TruncatedSVD dimensions of TF-IDF for tree/dense models.")
    image_components: int = Field(default=64, ge=2, description="PCA dimensions of the image embedding for tree/dense models.")
    max_train_rows: dict[str, int] = Field(default={}, description=(
        "Cap training rows per model name (seeded sample), e.g. {'knn': 20000}; reported as n_train."))
    seed: int = Field(default=0, description="Seed for every model.")
    brand_mask_rate: float = Field(default=0.5, ge=0, lt=1, description=(
        "Share of training rows whose brand is hidden, so the 'full' models also serve listings that state none."))
    baseline_max_growth: float = Field(default=0.1, ge=0, description=(
        "mode retrain: the linear baseline the gate compares a non-linear choice with (linear_svc) is the one an "
        "earlier run fitted and stored (`<classifier>_baseline` in the model store), re-scored on this run's test "
        "rows, while this run's train split differs from the one it was fitted on by at most this share of "
        "rows (and the encoder is the same); otherwise it is fitted again and stored. 0: always fitted. Metadata "
        "`baselines` says which it was."))
    warm_max_growth: float = Field(default=0.25, ge=0, description=(
        "mode retrain: where every task of a regime retrains its stored choice, the regime's featurizer (TF-IDF "
        "vocabularies and idf, image / text PCA, SVD) is the one those classifiers were trained with, kept while "
        "this run's train split is within this share of the rows it was fitted on (and the encoder is the same), "
        "so only the model is refitted; a retrained logreg then starts lbfgs from the stored coefficients (the "
        "same columns). Past it the featurizer is fitted anew. 0: always fitted. Metadata `featurizers` says "
        "which it was per regime, `linear_start` how each logreg started."))
    threads: int | None = Field(default=None, ge=1, description=(
        "Threads for torch, BLAS and the tree libraries; default: the cores available to the run's process. "
        "With two or more, a regime's single-threaded linear fits run two at a time (the LinearSVC ones one "
        "after another beside the logreg / Complement NB ones: core.models.classifiers.fit_on_lanes; the same "
        "models as one thread gives, each fit's train_seconds measured beside the other's; metadata "
        "`classical_fits`). "
        "On a CPU shared with other busy processes, spinning threads were measured up to 5x slower: set 1 there."))
    embeddings_path: str | None = Field(default=None, description=(
        "product_embeddings Parquet; default: the path recorded by the product_embeddings asset."))


def retrain_choice(store, config: ClassifierConfig) -> tuple[dict, str]:
    """{(task, regime): model} to retrain, and a note; empty in select mode or with nothing stored.

    The model is the published classifier's; where the gate refused every candidate so far (nothing
    published), the latest candidate's — the last selection's choice. Re-selecting among every family
    on a few more rows would pay for the whole leaderboard to reach, almost always, the same choice;
    `model_selection_job` (mode 'select') is where the families compete again. The configured model lists
    say which families compete in a selection; a stored choice of any known model is retrained (a neural
    model chosen by model_selection_job stays the choice although the default list leaves it out)."""
    if config.mode == "select":
        return {}, "selecting on validation among every configured model"
    known = set(CLASSICAL) | set(ARCHITECTURES)
    chosen, from_candidate, other = {}, [], []
    for task in TASKS:
        for regime in config.regimes:
            name = classifier_name(task, regime)
            info, published = store.published_or_latest(name)
            if info is not None and not published:
                from_candidate.append(f"{task}/{regime}")
            model = ((info or {}).get("features_spec") or {}).get("model")
            if model in known:
                chosen[(task, regime)] = model
            else:
                other.append(f"{task}/{regime}")
    note = f"retraining the published choices {sorted(f'{t}/{r}={m}' for (t, r), m in chosen.items())}"
    if from_candidate:
        note += f" ({from_candidate}: nothing published, the latest candidate's choice)"
    if other:
        note += f"; selecting on validation for {other} (nothing stored, or a model this code does not know)"
    return chosen, note


def warm_networks(store, chosen: dict, config: ClassifierConfig) -> tuple[dict, dict[str, str]]:
    """The networks a retrain fine-tunes: {(arch, regime): (net, {task: classes})} for every
    `WARM_STARTABLE` architecture a retrain trains, from the stored classifiers it retrains (published,
    else latest candidate), and {arch/regime: the versions it starts from, or why it cannot}."""
    out, notes = {}, {}
    if config.neural_warm_epochs == 0:
        return out, notes
    for arch, regime in sorted({(m, r) for (_, r), m in chosen.items() if m in WARM_STARTABLE}):
        nets, classes, versions = [], {}, []
        for task in TASKS:
            name = classifier_name(task, regime)
            info, _ = store.published_or_latest(name)
            if ((info or {}).get("features_spec") or {}).get("model") != arch:
                continue
            try:
                clf, _ = store.load(name, info["version"])
            except Exception as e:  # damaged or foreign: that task's classes are unknown, so it starts cold
                notes[f"{arch}/{regime}"] = f"cold: {name} {info['version']} could not be loaded ({type(e).__name__}: {e})"
                break
            nets.append(clf.net)
            classes[task] = list(clf.classes)
            versions.append(f"{name} {info['version']}")
        else:
            if nets:
                out[(arch, regime)] = (nets[0], classes)
                notes[f"{arch}/{regime}"] = f"from {versions[0]} (classes of {versions})"
    return out, notes


def stored_baselines(store, chosen: dict, config: ClassifierConfig, encoder, train_rows: int
                     ) -> tuple[dict, dict[str, str]]:
    """The baselines a retrain re-scores instead of fitting: {(task, regime): (classifier, info)} for each
    retrained pair whose choice is not itself a linear baseline, whose latest stored baseline loads, was
    fitted on the same encoder and on a train split within ``baseline_max_growth`` of ``train_rows``;
    and {task/regime: why each of the others is fitted}."""
    out, notes = {}, {}
    for (task, regime), model in sorted(chosen.items()):
        if model in BASELINE_MODELS:
            continue
        key, name = f"{task}/{regime}", baseline_name(task, regime)
        info, _ = store.published_or_latest(name)
        spec = (info or {}).get("features_spec") or {}
        if config.baseline_max_growth == 0:
            notes[key] = "fitted (baseline_max_growth 0)"
        elif info is None:
            notes[key] = "fitted (none stored)"
        elif spec.get("encoder") != encoder:
            notes[key] = f"fitted ({name} {info['version']} read another encoder)"
        elif grew_beyond(train_rows, int(spec.get("train_split_rows", 0)), config.baseline_max_growth):
            notes[key] = (f"fitted ({name} {info['version']} was fitted on {spec.get('train_split_rows')} train-split "
                          f"rows, this run has {train_rows})")
        else:
            try:
                out[(task, regime)] = store.load(name, info["version"])
            except Exception as e:  # damaged or foreign: fitted again
                notes[key] = f"fitted ({name} {info['version']} could not be loaded: {type(e).__name__}: {e})"
    return out, notes


def kept_featurizers(store, chosen: dict, config: ClassifierConfig, encoder, train_rows: int
                     ) -> tuple[dict, dict, dict[str, str]]:
    """What a retrain keeps of the classifiers it retrains: {regime: featurizer} for each regime where every
    task retrains its stored choice (published, else latest candidate), those classifiers share one fitted
    featurizer (the same ``fit_digest_``) built with this config's settings, read the same encoder and were
    fitted on a train split within ``warm_max_growth`` of ``train_rows``; {(task, regime): (estimator, class names)} of the retrained logreg
    choices there (their solver's start); and {regime: why each of the others is fitted}."""
    featurizers, linear, notes = {}, {}, {}
    for regime in config.regimes:
        if config.warm_max_growth == 0:
            notes[regime] = "fitted (warm_max_growth 0)"
            continue
        if not all((t, regime) in chosen for t in TASKS):
            notes[regime] = "fitted (a task selects here)"
            continue
        loaded, why = [], None
        for task in TASKS:
            name = classifier_name(task, regime)
            info, _ = store.published_or_latest(name)
            if ((info or {}).get("features_spec") or {}).get("encoder") != encoder:
                why = f"{name} {(info or {}).get('version')} read another encoder"
                break
            try:
                clf, _ = store.load(name, info["version"])
            except Exception as e:  # damaged or foreign: fitted again
                why = f"{name} {info['version']} could not be loaded ({type(e).__name__}: {e})"
                break
            loaded.append((task, name, info["version"], clf))
        if why is None:
            fzs = [getattr(clf, "featurizer", None) for *_, clf in loaded]
            digests = {getattr(fz, "fit_digest_", None) for fz in fzs}
            rows = getattr(fzs[0], "n_fit_rows_", None)
            settings = {"svd_components": config.svd_components, "image_components": config.image_components,
                        "seed": config.seed}
            differ = {k: getattr(fzs[0], k, None) for k, v in settings.items() if getattr(fzs[0], k, None) != v}
            if None in digests or len(digests) != 1:
                why = "its classifiers were trained with different featurizers"
            elif differ:
                why = f"its featurizer was built with {differ}, this run's config says {settings}"
            elif rows is None or grew_beyond(train_rows, rows, config.warm_max_growth):
                why = (f"its featurizer was fitted on {rows} train rows, this run has {train_rows} "
                       f"(warm_max_growth {config.warm_max_growth:.0%})")
        if why is not None:
            notes[regime] = f"fitted ({why})"
            continue
        featurizers[regime] = fzs[0]
        notes[regime] = f"kept from {loaded[0][1]} {loaded[0][2]} (fitted on {rows} train rows)"
        for task, _, _, clf in loaded:
            if chosen[(task, regime)] in WARM_STARTABLE_CLASSICAL and hasattr(clf, "estimator"):
                linear[(task, regime)] = (clf.estimator, list(clf.classes))
    return featurizers, linear, notes


def models_to_train(config: ClassifierConfig, chosen: dict) -> dict[str, tuple[str, ...]]:
    """The leaderboard's model lists: the configured ones (what competes where a pair selects) plus every
    retrained choice, which is trained whether or not the lists name it."""
    return {"classical": tuple(dict.fromkeys([*config.classical_models, *(m for m in chosen.values() if m in CLASSICAL)])),
            "neural": tuple(dict.fromkeys([*config.neural_models, *(m for m in chosen.values() if m in ARCHITECTURES)]))}


def _reused(context, fingerprint: str, warehouse: WarehouseResource, store, with_leaderboard: bool):
    """The previous run's outputs when it had the same inputs and its candidates are still in the store."""
    keys = (["classifier_leaderboard"] if with_leaderboard else []) + ["attribute_classifiers"]
    outputs = [reuse.reused_table(context, k, fingerprint, warehouse.read_table, output_name=k) for k in keys]
    if any(o is None for o in outputs):
        return None
    candidates = outputs[-1].value
    missing = [f"{n} {v}" for n, v in zip(candidates["name"], candidates["version"]) if str(v) not in store.versions(n)]
    if missing:
        context.log.warning(f"inputs unchanged but candidates are gone from the model store ({missing}); retraining")
        return None
    return outputs


def _table_md(df: pd.DataFrame) -> dg.MetadataValue:
    return dg.MetadataValue.md(df.round(4).to_markdown(index=False) if len(df) else "_empty_")


# Under a profile whose neural classifiers train on CUDA: the step's pool and k8s GPU request, and the
# gpu tag on both of its assets (fashion_pipeline.gpu).
_GPU = gpu_declarations("classifier_leaderboard")


@dg.multi_asset(
    group_name=GROUP,
    deps=[EMBEDDINGS_ASSET],
    pool=_GPU.get("pool"),
    op_tags=_GPU.get("op_tags"),
    outs={
        "classifier_leaderboard": dg.AssetOut(kinds={"scikitlearn", "pytorch", "duckdb"}, is_required=False,
                                              tags=_GPU.get("tags"), description=(
            "The model-selection experiment: test-split accuracy, macro-F1, weighted-F1 per task x model x input "
            "regime x source, with training time, and the serving model chosen on validation. Written when a run "
            "selects (mode 'select', or a store with no published classifier); a retrain — even one that selects "
            "anew for a task/regime whose candidate the gate refused — leaves it as it was.")),
        "attribute_classifiers": dg.AssetOut(kinds={"duckdb"}, tags=_GPU.get("tags"), description=(
            "The candidate serving classifier per task and regime, saved (not yet published) in the model store: "
            "name, version, model, test metrics, and the published model and linear baseline on the same test split "
            "(what the blocking check classifier_gate compares).")),
    },
)
def classifier_leaderboard(context: dg.AssetExecutionContext, config: ClassifierConfig, clean_products: pd.DataFrame,
                           model_store: ModelStoreResource, warehouse: WarehouseResource):
    unknown = (set(config.classical_models) - set(CLASSICAL)) | (set(config.neural_models) - set(ARCHITECTURES)) | (
        set(config.regimes) - set(REGIMES))
    if unknown:
        raise ValueError(f"unknown models or regimes in config: {sorted(unknown)}")
    threads = resolve_threads(config.threads)
    store = model_store.store()
    chosen, mode_note = retrain_choice(store, config)
    context.log.info(f"mode {config.mode}: {mode_note}")
    warm, warm_notes = warm_networks(store, chosen, config)
    if warm_notes:
        context.log.info(f"neural warm starts: {warm_notes}")
    emb = require_catalogue_embeddings(context, config.embeddings_path)
    fingerprint = combine({"products": frame_digest(clean_products), "embeddings": emb.digest(),
                           "config": config.model_dump(exclude={"threads", "embeddings_path"}),
                           # Not the networks a retrain fine-tunes (warm_notes): they are this asset's own
                           # earlier candidates, so naming them would make every run differ from the last.
                           "chosen": sorted(f"{t}/{r}={m}" for (t, r), m in chosen.items()), "code": code_digest()})
    if (previous := _reused(context, fingerprint, warehouse, store, with_leaderboard=not chosen)) is not None:
        yield from previous
        return
    encoder = emb.encoder  # scoring builds and checks this encoder
    train_rows = int((clean_products["split"] == "train").sum())
    reused_baselines, baseline_notes = stored_baselines(store, chosen, config, encoder, train_rows)
    baseline_notes.update({f"{t}/{r}": f"re-scored {baseline_name(t, r)} {info['version']} (fitted on "
                                       f"{info['features_spec'].get('train_split_rows')} train-split rows)"
                           for (t, r), (_, info) in reused_baselines.items()})
    if baseline_notes:
        context.log.info(f"linear baselines: {baseline_notes}")
    featurizers, warm_linear, featurizer_notes = kept_featurizers(store, chosen, config, encoder, train_rows)
    if chosen:
        context.log.info(f"featurizers: {featurizer_notes}")
    # Rows of the file's own matrices, joined by product_id (an aligned copy would double them).
    frame = with_embeddings(clean_products, *emb.arrays)
    no_row = emb.missing(clean_products)
    del emb
    cfg = LeaderboardConfig(
        tasks=TASKS, regimes=tuple(config.regimes), **models_to_train(config, chosen),
        neural_config=NeuralConfig(epochs=config.neural_epochs, patience=config.neural_patience,
                                   hidden=config.neural_hidden, ensemble=config.neural_ensemble, seed=config.seed,
                                   n_threads=threads,
                                   warm_epochs=config.neural_warm_epochs, warm_patience=config.neural_warm_patience,
                                   device=config.neural_device),
        featurizer={"svd_components": config.svd_components, "image_components": config.image_components},
        max_train_rows=dict(config.max_train_rows), seed=config.seed, n_threads=threads,
        brand_mask_rate=config.brand_mask_rate, chosen=chosen, warm=warm,
        stored_baselines=frozenset(reused_baselines), featurizers=featurizers, warm_linear=warm_linear,
    )
    # Every TF-IDF fit and transform below (the leaderboard's, the published models' re-scoring) counts a
    # text the last run counted from the term counts kept under var/cache/tokens (core.token_counts).
    with token_caches(token_cache_dir(), "classifiers") as tokens:
        with threadpool_limits(limits=threads):  # BLAS / OpenMP pools too, not only torch
            result = run_leaderboard(frame, cfg, context.log.info)
        lb = result.leaderboard
        # A baseline fitted beside a non-linear serving choice is kept, so the retrains after it re-score it
        # instead of fitting it again (stored_baselines).
        for (task, regime), base in sorted(result.baselines.items()):
            serving = result.serving.get((task, regime))
            if serving is None or serving.model_name in BASELINE_MODELS:
                continue
            rows = lb[(lb.task == task) & (lb.regime == regime) & (lb.model == base.model_name)]
            version = store.save(baseline_name(task, regime), base,
                                 {"test": {r.source: {"accuracy": r.accuracy, "macro_f1": r.macro_f1, "n": r.n}
                                           for r in rows.itertuples()}},
                                 {**base.features_spec(), "encoder": encoder, "train_split_rows": train_rows})
            baseline_notes[f"{task}/{regime}"] = f"fitted, stored as {baseline_name(task, regime)} {version}"
        stored = []
        plots = {}
        for (task, regime), clf in sorted(result.serving.items()):
            rows = lb[(lb.task == task) & (lb.regime == regime) & (lb.model == clf.model_name)]
            metrics = {r.source: {"accuracy": r.accuracy, "macro_f1": r.macro_f1, "weighted_f1": r.weighted_f1, "n": r.n}
                       for r in rows.itertuples()}
            name = classifier_name(task, regime)
            version = store.save(name, clf, {"test": metrics, "selected_on": "validation macro-F1"}, {**clf.features_spec(), "encoder": encoder})
            all_row = rows[rows.source == "all"].iloc[0]
            published = store.published(name)
            pub_f1, pub_note = None, "nothing published"
            if published is not None:
                # Re-scored on this run's test rows: the published model's recorded metrics came from another split.
                try:
                    pub_f1, _ = macro_f1_on_test_rows(store.load(name, published["version"])[0], frame, task)
                    pub_note = "re-scored on this run's test split"
                except Exception as e:  # an old model this code cannot run: say so, the baseline still applies
                    pub_note = f"could not be scored: {type(e).__name__}: {e}"
                    context.log.warning(f"published {name} {published['version']} {pub_note}")
            base_model, base_f1 = baseline_row(lb, task, regime)
            if (task, regime) in reused_baselines:
                base_clf, base_info = reused_baselines[(task, regime)]
                try:
                    base_model, base_f1 = base_clf.model_name, macro_f1_on_test_rows(base_clf, frame, task)[0]
                except Exception as e:  # a stored baseline this code cannot run: the published model still gates
                    base_model, base_f1 = None, None
                    baseline_notes[f"{task}/{regime}"] = (f"{baseline_name(task, regime)} {base_info['version']} could not "
                                                          f"be scored ({type(e).__name__}: {e})")
                    context.log.warning(baseline_notes[f"{task}/{regime}"])
            stored.append({"name": name, "task": task, "regime": regime, "model": clf.model_name, "version": version,
                           "test_accuracy": float(all_row.accuracy), "test_macro_f1": float(all_row.macro_f1),
                           "n_test": int(all_row.n),
                           "published_version_before": published["version"] if published else None,
                           "published_test_macro_f1": pub_f1, "published_note": pub_note,
                           "baseline_model": base_model, "baseline_test_macro_f1": base_f1})
            if regime == ("full" if "full" in cfg.regimes else cfg.regimes[0]):
                pred = result.test_predictions[(task, clf.model_name, regime)]
                if len(pred):
                    plots[f"confusion/{task}"] = md.png(confusion_matrix_png(
                        pred.y_true, pred.y_pred, clf.classes,
                        f"{task}: {clf.model_name} ({regime}), test split, row-normalised"), f"confusion {task}")
    stored_df = pd.DataFrame(stored)
    if len(stored_df):
        for c in ("published_test_macro_f1", "baseline_test_macro_f1"):
            stored_df[c] = pd.to_numeric(stored_df[c], errors="coerce").astype(float)
        for c in ("published_version_before", "baseline_model"):
            stored_df[c] = stored_df[c].astype("string")
    decision = classifier_gate(stored_df)
    best = best_per_task(lb)
    counts = result.label_counts
    if not chosen:  # a selection (or a first run); a retrain leaves the last selection's leaderboard in place
        yield dg.Output(lb, output_name="classifier_leaderboard", metadata={
            "best_per_task_and_regime": _table_md(best[["task", "regime", "model", "accuracy", "macro_f1", "weighted_f1",
                                                       "n", "train_seconds"]]),
            "leaderboard_all_sources": _table_md(lb[lb.source == "all"].drop(columns=["source"])
                                                 .sort_values(["task", "regime", "macro_f1"], ascending=[True, True, False])),
            "label_counts": _table_md(counts),
            **{f"excluded_null_label/{t}": dg.MetadataValue.int(int(counts[counts.task == t].excluded_null_label.sum()))
               for t in cfg.tasks},
            "dropped/no_embedding_row": dg.MetadataValue.int(no_row),
            "featurizer_seconds": dg.MetadataValue.json(result.timings["featurizer_seconds"]),
            "total_seconds": dg.MetadataValue.float(float(result.timings["total_seconds"])),
            **plots,
            reuse.FINGERPRINT_KEY: fingerprint,
        })
    yield dg.Output(stored_df, output_name="attribute_classifiers", metadata={
        "models": _table_md(stored_df), "model_store": dg.MetadataValue.path(str(store.root)),
        "classical_fits": dg.MetadataValue.json({
            r: {"seconds": secs, "how": result.timings.get("classical_fit_lanes", {}).get(r)}
            for r, secs in result.timings.get("classical_fit_seconds", {}).items()}),
        "gate_preview": dg.MetadataValue.md(decision.markdown()),
        "mode": f"{config.mode}: {mode_note}",
        "baselines": dg.MetadataValue.json(baseline_notes),
        # A featurizer handed over is still refitted where it lacks a feature kind (the leaderboard says so).
        "featurizers": dg.MetadataValue.json({r: n if not result.featurizer_starts.get(r, "").startswith("fitted: ")
                                              else result.featurizer_starts[r] for r, n in featurizer_notes.items()}),
        "linear_start": dg.MetadataValue.json(result.linear_starts),
        "neural_start": dg.MetadataValue.json({k: {"source": warm_notes.get(k, ""), "start": result.warm_starts.get(k, "cold")}
                                                for k in sorted(set(warm_notes) | set(result.warm_starts))}),
        "train_seconds": dg.MetadataValue.float(float(result.timings["total_seconds"])),
        "text_tokenisation": dg.MetadataValue.json(tokens.describe()),
        reuse.FINGERPRINT_KEY: fingerprint,
    })


@dg.asset(group_name=GROUP, kinds={"python"},
          description="Publishes the candidate classifiers of attribute_classifiers that pass the quality gate "
                      "(scoring uses them); a refused candidate's previously published version stays. Blocked by "
                      "the check classifier_gate when every candidate is refused.",
          automation_condition=EAGER_WHEN_GATES_PASS)
def published_classifiers(context: dg.AssetExecutionContext, model_store: ModelStoreResource,
                          attribute_classifiers: pd.DataFrame) -> dg.MaterializeResult:
    # The same gate as the blocking check, so a standalone materialization cannot bypass it.
    decisions = gate_each(attribute_classifiers) if len(attribute_classifiers) else {}
    overall = classifier_gate(attribute_classifiers)
    if not any(d.passed for d in decisions.values()):
        raise dg.Failure(description="every candidate classifier was refused by the quality gate",
                         metadata={"gate": dg.MetadataValue.md(overall.markdown())})
    store = model_store.store()
    rows = []
    for r in attribute_classifiers.itertuples(index=False):
        ok = decisions[r.name].passed
        if ok:
            store.publish(r.name, str(r.version))
            context.log.info(f"published {r.name} {r.version} ({r.model}, test macro-F1 {r.test_macro_f1:.4f})")
        else:
            context.log.warning(f"refused {r.name} {r.version} ({r.model}): " + "; ".join(decisions[r.name].reasons))
        now = store.published(r.name)
        rows.append({"name": r.name, "candidate": r.model, "candidate_version": r.version, "accepted": ok,
                     "test_macro_f1": r.test_macro_f1, "published_version": now["version"] if now else None})
    table = pd.DataFrame(rows)
    return dg.MaterializeResult(metadata={
        "published": _table_md(table),
        "accepted": dg.MetadataValue.int(int(table["accepted"].sum())),
        "refused": dg.MetadataValue.int(int((~table["accepted"]).sum())),
        "gate": dg.MetadataValue.md(overall.markdown()),
    })
