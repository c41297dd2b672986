"""Price model: train + evaluate on listings (regressor_metrics), then publish behind a blocking gate.

Flow: ``regressor_metrics`` trains one regressor per listing form (full / sparse / image; each
chosen among ridge, LightGBM, MLP, k-NN and their blend on validation rows in ``mode="select"``, the
model-selection experiment; the weekly retrain, ``mode="retrain"``, trains only the kind the
published model chose per form, with the hyper-parameters its selection tuned), calibrates its intervals
on calibration rows, saves the candidate unpublished, and scores the test split *as listings*
through the code path of ``fashion-pipeline score`` in every listing form, beside the published
model and the TF-IDF recipe on the same listings. The blocking check ``price_regressor_gate``
(fashion_pipeline/checks.py; policy in core/pricing/gate.py) compares them;
``published_price_regressor`` runs only when it passes and publishes the candidate version.
The science lives in fashion_pipeline.core.pricing and core.listing_eval.
"""


from typing import Literal

import dagster as dg
import pandas as pd
from pydantic import Field

from fashion_pipeline import metadata as md
from fashion_pipeline import reuse
from fashion_pipeline.automation import EAGER_WHEN_GATES_PASS
from fashion_pipeline.core import listing_eval, scoring
from fashion_pipeline.core.features import REGIMES
from fashion_pipeline.core.fingerprint import code_digest, combine, frame_digest
from fashion_pipeline.core.pricing import price_plots
from fashion_pipeline.core.pricing.features import SPARSE_TEXT
from fashion_pipeline.core.pricing.gate import price_gate
from fashion_pipeline.core.pricing.training import mlp_precisions, train_price_models
from fashion_pipeline.core.scoring import PRICE_MODEL_NAME
from fashion_pipeline.core.threads import resolve_threads
from fashion_pipeline.core.token_counts import token_caches, transform_memo
from fashion_pipeline.embedding_inputs import EMBEDDINGS_ASSET, read_catalogue_embeddings
from fashion_pipeline.gpu import gpu_declarations
from fashion_pipeline.paths import token_cache_dir
from fashion_pipeline.profiles import get_profile
from fashion_pipeline.resources.encoders import EncoderResource
from fashion_pipeline.resources.model_store import ModelStoreResource
from fashion_pipeline.resources.warehouse import WarehouseResource

GROUP = "pricing"


class RegressorConfig(dg.Config):
    mode: Literal["retrain", "select"] = Field(default="retrain", description=(
        "retrain (the weekly schedule, the sensor): each listing form retrains only the model kind the published "
        "price model chose for it (the latest candidate's, when the gate has refused every one so far), on fresh "
        "data, with the hyper-parameters that model's selection tuned (ridge's alpha; LightGBM's rounds, at most "
        "`lightgbm_estimators`); a form it lacks, or a store with no price model, is selected as in 'select'. "
        "select (model_selection_job, on demand): every kind in `models` (+ the blend) is trained and the best per form "
        "chosen on validation."))
    use_attributes: bool = Field(default=True, description=(
        "Train the price model with the extracted attributes (product_attributes: brand filled from the title, "
        "materials / fit / pattern / occasion / style words beside the description); scoring then extracts them "
        "from listings. benchmarks/attributes_ablation.py: RMSLE -0.013 on full and -0.014 on title + photo "
        "Kaggle listings (ridge), no change on photo-only."))
    models: list[str] = Field(default=["ridge", "lightgbm", "mlp", "knn"], description=(
        "Regressors to train: any of ridge (linear baseline), lightgbm, mlp, knn (the similarity-weighted prices of "
        "the `knn_neighbours` most similar training products of the same source by photo and text embedding; a "
        "blend member whose errors differ from the others')."))
    blend: bool = Field(default=True, description="Also evaluate a validation-weighted blend of the models.")
    char_ngram_sources: list[str] = Field(default=["hm"], description=(
        "Sources whose price texts get a TF-IDF of character 2- to 5-grams (fitted on those rows only) in place of "
        "their per-source copy of the word and one-hot columns, in the TF-IDF ridges (the ridge member, and the "
        "ridge stacked into LightGBM and the MLP) of the listing forms in `char_ngram_forms`. "
        "benchmarks/results/hm_price_cv.md (5-fold grouped CV over the 2,929 priced H&M products): full-form H&M "
        "listings 0.351 against 0.354 without n-grams (0.352 with them beside H&M's copy), the title + photo and "
        "photo forms unchanged (0.395 / 0.438); ~3 s more per training on 2 cores, measured beside the copy. Empty: none."))
    char_ngram_forms: list[str] = Field(default=["full"], description=(
        "The listing forms (of full, sparse) whose TF-IDF ridges get `char_ngram_sources`' character n-grams "
        "(the photo-only form has no text, so none there)."))
    knn_neighbours: int = Field(default=8, ge=1, description="Neighbours the knn regressor averages.")
    lightgbm_estimators: int = Field(default=400, ge=10,
                                     description="Maximum boosting rounds (early stopping on validation picks fewer).")
    mlp_epochs: int = Field(default=15, ge=1, description="Maximum MLP epochs (early stopping on validation).")
    mlp_hidden: int = Field(default=512, ge=8, description="Width of the MLP's first hidden layer.")
    mlp_warm_epochs: int = Field(default=3, ge=0, description=(
        "mode retrain: a form whose chosen kind includes the MLP fine-tunes the retrained model's MLP for this many "
        "epochs (from a quarter of the cold learning rate, keeping its input scaling and categorical levels; its "
        "own validation score counts as epoch 0) instead of training `mlp_epochs` from scratch; it falls back to a "
        "cold start, logged, where the shapes differ. 0: always cold. model_selection_job always starts cold."))
    mlp_warm_patience: int = Field(default=1, ge=1, description=(
        "mode retrain: the MLP's fine-tune stops after this many epochs in a row without a better validation "
        "score (its starting weights' included). A +1% retrain on the full development data kept the starting "
        "weights in every form, so further epochs cost ~2.3 s each per form for nothing; raise it to let a "
        "fine-tune recover from a worse first epoch."))
    lightgbm_warm_rounds: int = Field(default=40, ge=0, description=(
        "mode retrain: a form whose chosen kind includes LightGBM continues the retrained model's trees with up to "
        "this many more boosting rounds on the fresh rows (keeping its categorical codes and image PCA; the stacked "
        "ridge is refitted; the kept number of trees, the starting point included, is chosen on validation) instead "
        "of boosting its tuned rounds from scratch; a model that has grown to twice its tuned rounds, or of another "
        "shape, starts cold (logged). 0: always cold. model_selection_job always starts cold."))
    warm_max_growth: float = Field(default=0.25, ge=0, description=(
        "mode retrain: a retrained form's ridge (alone or in its blend) keeps the retrained model's ridge "
        "featurizer (TF-IDF vocabulary and IDF, categorical levels, embedding scaling) and starts LSQR from its "
        "coefficients (the same ridge problem on the kept columns, to LSQR's tolerance, in fewer iterations), and "
        "its source router keeps the retrained router's TF-IDF and photo PCA and starts its logistic regression "
        "from its coefficients, and its k-NN member keeps the retrained member's embedding projections (PCA), and "
        "the stacked TF-IDF ridge of its LightGBM / MLP members keeps its featurizer and starts each out-of-fold "
        "LSQR (folds by a stable hash of the product group) and the full one from its coefficients, "
        "while the train split differs from the rows those were fitted on by at most this "
        "share; past that, or at 0, they are fitted from scratch (logged). model_selection_job always starts "
        "cold."))
    mlp_device: str = Field(default=get_profile().device,
                            description="torch device for the MLP: 'cpu' or 'cuda' (a GPU machine); default: the profile's.")
    mixed_precision: bool = Field(default=True,
                                  description="torch.autocast for the MLP: float16 + GradScaler on CUDA, bfloat16 on a CPU "
                                              "with native bf16 (AVX512-BF16 / AMX), float32 on other CPUs.")
    threads: int | None = Field(default=None, ge=1, description=(
        "Threads for LightGBM, for the ridge solvers' sparse products (the ridge member's and the stacked TF-IDF "
        "ridge of LightGBM) and for the listing evaluation's recipe fits; default: the cores available to the "
        "run's process."))
    train_fraction: float = Field(default=1.0, gt=0, le=1,
                                  description="Share of the train split used (deterministic); validation and test "
                                  "are always whole. Below 1 only for quick experiments.")
    interval_coverage: float = Field(default=0.8, gt=0, lt=1,
                                     description="Nominal coverage of the prediction intervals (split conformal, "
                                     "calibrated on a hash-chosen 12.5% of the train groups that nothing else uses).")
    max_interval_ratio: float = Field(default=6.0, gt=1, description=(
        "Abstain (price_usd null, flag no_price_interval_too_wide) where the calibrated interval for what the "
        "listing shows spans more than this factor."))
    recipe_max_change: float = Field(default=0.1, ge=0, description=(
        "mode retrain: the listing evaluation's TF-IDF recipes (the gate's reference) are the ones an earlier run "
        "fitted and stored (`listing_recipes` in the model store), re-scored on this run's test listings, while "
        "the train split differs from the one they were fitted on by at most this share of its rows (rows added "
        "or removed; a row edited in a column the recipes read counts twice); otherwise they are fitted again "
        "and stored. "
        "0: always fitted. model_selection_job always fits them. Metadata `listing_recipes` says which it was."))
    listing_eval_max_rows: int | None = Field(default=None, ge=10, description=(
        "Score at most this many test products (seeded sample) per listing form in the evaluation; all by default."))
    embeddings_path: str | None = Field(
        default=None,
        description="product_embeddings Parquet (read with core.encoders.io.read_embeddings); default: the path "
        "recorded by the latest product_embeddings materialization, else <var dir>/embeddings/"
        "product_embeddings.parquet, resolved when the run starts. When it does not exist the regressors train on "
        "text + metadata only, and the metadata says so.",
    )


def retrain_choice(store, config: RegressorConfig) -> tuple[dict[str, str] | None, dict[str, dict], str]:
    """{form: model kind} to retrain, or None to select; the hyper-parameters that model's selection
    tuned ({form: {kind: params}}, reused by the retrain); and why.

    The kinds are the published price model's; when the gate refused every candidate so far (nothing
    published), the latest candidate's — the last selection's choice, as for the classifiers."""
    if config.mode == "select":
        return None, {}, f"selecting per form on validation among {list(config.models)}" + (" + blend" if config.blend else "")
    info, published = store.published_or_latest(PRICE_MODEL_NAME)
    spec = (info or {}).get("features_spec") or {}
    forms = spec.get("forms") or {}
    usable = {f: k for f, k in forms.items() if k in config.models or (k == "blend" and len(config.models) >= 2)}
    if not usable:
        why = "nothing stored" if info is None else f"{PRICE_MODEL_NAME} {info['version']} names no kind this config trains"
        return None, {}, f"{why}: selecting per form on validation among {list(config.models)}"
    tuned = {f: p for f, p in (spec.get("tuned") or {}).items() if f in usable}  # older models record none
    whose = "published" if published else "latest candidate (nothing published: the gate refused it)"
    return usable, tuned, (f"retraining the {whose} {PRICE_MODEL_NAME} {info['version']}'s choices {usable} "
                           f"with its tuned hyper-parameters {tuned or '(none recorded: searched again)'} "
                           "(model_selection_job re-selects and re-tunes)")


def training_options(config: RegressorConfig) -> dict:
    """`train_price_models`' keyword arguments that come from the config (all but the rows and what a
    retrain continues): the asset's, and the H&M cross-validation benchmark's (benchmarks/hm_price_cv.py)."""
    return {
        "models": tuple(config.models),
        "params": {
            "lightgbm": {"n_estimators": config.lightgbm_estimators, "num_threads": resolve_threads(config.threads),
                         "warm_rounds": config.lightgbm_warm_rounds, "warm_max_growth": config.warm_max_growth},
            "mlp": {"epochs": config.mlp_epochs, "hidden": config.mlp_hidden, "device": config.mlp_device,
                    "mixed_precision": config.mixed_precision, "warm_epochs": config.mlp_warm_epochs,
                    "warm_patience": config.mlp_warm_patience, "warm_max_growth": config.warm_max_growth},
            "ridge": {"warm_max_growth": config.warm_max_growth, "n_threads": resolve_threads(config.threads)},
            "knn": {"k": config.knn_neighbours, "warm_max_growth": config.warm_max_growth},
            "router": {"warm_max_growth": config.warm_max_growth},
        },
        "blend": config.blend, "coverage": config.interval_coverage, "train_fraction": config.train_fraction,
        "max_interval_ratio": config.max_interval_ratio, "warm_kinds": warm_kinds(config),
        "char_ngrams": {f: tuple(config.char_ngram_sources) for f in config.char_ngram_forms
                        if config.char_ngram_sources},
    }


def warm_kinds(config: RegressorConfig) -> tuple[str, ...]:
    """The model kinds a retrain continues from the model it retrains (see `warm_start_source`)."""
    kinds = tuple(k for k, n in (("mlp", config.mlp_warm_epochs), ("lightgbm", config.lightgbm_warm_rounds),
                                 ("ridge", config.warm_max_growth), ("knn", config.warm_max_growth))
                  if n > 0 and k in config.models)
    return kinds + (("router",) if config.warm_max_growth > 0 else ())


def warm_start_source(store, chosen: dict[str, str] | None, config: RegressorConfig
                      ) -> tuple[dict[str, object], str | None, str]:
    """({form: FormModel} whose MLP / LightGBM / ridge members and source router a retrain continues, that model's version,
    and why): the model `retrain_choice` retrains, for the forms it retrains; nothing in a
    selection, with no kind to continue (`warm_kinds`), or when that model cannot be loaded (then
    every member starts cold)."""
    if chosen is None:
        return {}, None, "cold (a selection trains every kind from scratch)"
    kinds = warm_kinds(config)
    if not kinds:
        return {}, None, "cold (mlp_warm_epochs, lightgbm_warm_rounds and warm_max_growth are 0)"
    info, _ = store.published_or_latest(PRICE_MODEL_NAME)
    try:
        model, info = store.load(PRICE_MODEL_NAME, info["version"])
    except Exception as e:  # a damaged or foreign model: retrain from scratch, and say so
        return {}, None, f"cold: {PRICE_MODEL_NAME} {info['version']} could not be loaded ({type(e).__name__}: {e})"
    forms = {f: fm for f, fm in getattr(model, "forms", {}).items() if f in chosen}
    how = {"mlp": f"its MLP fine-tuned for up to {config.mlp_warm_epochs} epochs (ending after "
                  f"{config.mlp_warm_patience} without a better validation score)",
           "lightgbm": f"its LightGBM continued for up to {config.lightgbm_warm_rounds} rounds",
           "ridge": "its ridge's featurizer kept and LSQR started from its coefficients",
           "knn": "its k-NN's embedding projections kept",
           "router": "its source router's TF-IDF and photo PCA kept and its logistic regression continued"}
    limit = f" (while the train split is within {config.warm_max_growth:.0%} of the rows they were fitted on)" \
        if config.warm_max_growth > 0 else ""
    return forms, str(info["version"]), (f"continuing {PRICE_MODEL_NAME} {info['version']} where its form's kind "
                                         f"has the member: {'; '.join(how[k] for k in kinds)}{limit}")


RECIPES_NAME = "listing_recipes"


def listing_recipes(store, config: RegressorConfig, train: pd.DataFrame) -> tuple[listing_eval.ListingRecipes, str]:
    """The TF-IDF recipes the listing evaluation scores beside the models, and where they came from:
    in a retrain, the latest stored ones when their code is this code's and at most
    `recipe_max_change` of their train rows differ from ``train``; else fitted on ``train`` and stored."""
    code = listing_eval.recipe_code()
    why = "fitted (model_selection_job fits them)" if config.mode == "select" else "fitted (recipe_max_change 0)"
    if config.mode == "retrain" and config.recipe_max_change > 0:
        info, _ = store.published_or_latest(RECIPES_NAME)
        if info is None:
            why = "fitted (none stored)"
        elif (info.get("features_spec") or {}).get("code") != code:
            why = f"fitted ({RECIPES_NAME} {info['version']} was fitted by other recipe code)"
        else:
            try:
                stored, _ = store.load(RECIPES_NAME, info["version"])
                share = listing_eval.changed_share(stored.train_keys, listing_eval.row_keys(train))
            except Exception as e:  # damaged or foreign: fitted again
                why = f"fitted ({RECIPES_NAME} {info['version']} could not be loaded: {type(e).__name__}: {e})"
            else:
                if share <= config.recipe_max_change:
                    return stored, (f"re-scored {RECIPES_NAME} {info['version']} ({share:.1%} of its "
                                    f"{len(stored.train_keys)} train rows differ from this run's)")
                why = (f"fitted ({share:.1%} of the train rows of {RECIPES_NAME} {info['version']} differ from "
                       f"this run's, more than recipe_max_change {config.recipe_max_change:.0%})")
    recipes = listing_eval.ListingRecipes(train)
    version = store.save(RECIPES_NAME, recipes, {"train_rows": len(recipes.train_keys)}, {"code": code})
    return recipes, f"{why}: stored as {RECIPES_NAME} {version}"


def _md_table(df: pd.DataFrame) -> dg.MetadataValue:
    return dg.MetadataValue.md(df.round(4).to_markdown(index=False) if len(df) else "_empty_")


# Scoring serves the price model beside these; the asset lives in assets/classifiers.py.
PUBLISHED_CLASSIFIERS_ASSET = dg.AssetKey("published_classifiers")

LISTING_COLUMNS = ["form", "source", "n_priced", "abstained", "rmsle", "recipe_rmsle", "coverage",
                   "category_macro_f1", "gender_macro_f1", "usage_macro_f1",
                   "recipe_category_macro_f1", "recipe_gender_macro_f1", "recipe_usage_macro_f1"]


def listing_embedder(context, encoder_rec: dict | None, encoder: EncoderResource):
    """The encoder the catalogue's embeddings were made with (`scoring.encoder_embedder`) over the embedding
    stage's cache — its test products' photos were embedded with the catalogue, and a re-run finds the
    listing and title texts of the previous one — or None (logged) where it cannot be loaded: the price model
    then trains its sparse form without title vectors and the listing evaluation runs without embeddings."""
    try:
        return scoring.encoder_embedder(record=encoder_rec, cache_dir=encoder.cache_path())
    except ImportError as e:
        context.log.warning(f"price training and listing evaluation without the encoder: {e}")
        return None


@dg.asset(group_name=GROUP, kinds={"duckdb", "pandas", "lightgbm", "pytorch"},
          # After published_classifiers: the listing evaluation serves the candidate beside the classifiers
          # that scoring will use after this run, not the ones a retrain is about to replace.
          deps=[EMBEDDINGS_ASSET, PUBLISHED_CLASSIFIERS_ASSET],
          description="The candidate listing price model (one regressor per listing form, chosen on validation), "
                      "saved unpublished, and its test-split listing metrics per form and source through the scoring "
                      "CLI's code path (beside the classifiers published before it in the same run), next to the "
                      "published model and the TF-IDF recipe on the same listings.",
          **gpu_declarations("regressor_metrics"))
def regressor_metrics(context: dg.AssetExecutionContext, config: RegressorConfig, clean_products: pd.DataFrame,
                      product_attributes: pd.DataFrame, model_store: ModelStoreResource,
                      encoder: EncoderResource, warehouse: WarehouseResource) -> dg.Output[pd.DataFrame]:
    store = model_store.store()
    catalogue, emb_note = read_catalogue_embeddings(context, config.embeddings_path)
    context.log.info(f"embeddings: {emb_note}")
    encoder_rec = catalogue.encoder if catalogue is not None else None
    chosen, tuned, mode_note = retrain_choice(store, config)
    context.log.info(f"mode {config.mode}: {mode_note}")
    warm, warm_version, warm_note = warm_start_source(store, chosen, config)
    context.log.info(f"warm start: {warm_note}")
    attributes = product_attributes if config.use_attributes else None
    # Two fingerprints: what the candidate's training reads, and that plus what its listing evaluation
    # reads (the published models it is compared with and served beside).
    train_fp = combine({
        "products": frame_digest(clean_products), "attributes": frame_digest(attributes),
        "embeddings": catalogue.digest() if catalogue is not None else None,
        "config": config.model_dump(exclude={"threads", "embeddings_path", "listing_eval_max_rows"}),
        # Not the model the MLP is fine-tuned from (warm_version): that is the price model this asset trained
        # before (published since), so naming it would make every run's inputs differ from the last one's.
        "chosen": chosen, "tuned": tuned, "code": code_digest()})
    trained = _previous_candidate(context, store, train_fp)
    if trained is not None:
        version = trained[0]
        eval_fp = _evaluation_fingerprint(store, train_fp, version, config, compared_then=trained[3])
        if (previous := reuse.reused_table(context, "regressor_metrics", eval_fp, warehouse.read_table)) is not None:
            return previous
        context.log.info(f"training inputs unchanged since run {trained[2]}: reusing candidate {version}; "
                         "the listing evaluation runs again (the published models it reads changed)")
        model, info = store.load(PRICE_MODEL_NAME, version)
        features_spec = info["features_spec"]
        selection = pd.DataFrame(info["metrics"]["validation"])
        counts, train_seconds = info["metrics"]["counts"], trained[1]
        tokens = {}  # nothing trained, nothing tokenised for training
    else:
        title_encoder = listing_embedder(context, encoder_rec, encoder) if catalogue is not None else None
        # Handed over, not shared: training frees the file's matrices once it has aligned its rows.
        # The price text's, its character n-grams' and the router's TF-IDF count a text the last training counted
        # from its files.
        options = training_options(config)
        with token_caches(token_cache_dir(), "price_training") as train_tokens:
            res = train_price_models(clean_products, catalogue.release() if catalogue is not None else None, attributes,
                                     chosen=chosen, tuned=tuned, warm=warm, progress=context.log.info,
                                     encode_titles=title_encoder.encode_texts if title_encoder is not None else None,
                                     **options)
        model = res.model
        features_spec = {"target": "log1p(price_usd)", "embeddings": emb_note, "uses_attributes": config.use_attributes,
                         "listing_fields": ["title", "description", "image", "brand", "colour", "source"],
                         "forms": {f: m.chosen for f, m in model.forms.items()},
                         "tuned": res.tuned,
                         "warm_starts": {"from": warm_version, **res.warm_starts} if warm_version else {},
                         "mlp_precision": mlp_precisions(model),
                         "encoder": encoder_rec,
                         "sparse_text": SPARSE_TEXT if title_encoder is not None else None,
                         "char_ngrams": {f: list(s) for f, s in options["char_ngrams"].items()},
                         "featurizer": "fashion_pipeline.core.pricing.features.build_price_inputs + regime_view"}
        version = store.save(PRICE_MODEL_NAME, model, {"kind": model.name, "validation": res.selection.to_dict("records"),
                                                       "counts": res.counts, "intervals": model.describe()}, features_spec)
        selection, counts, train_seconds = res.selection, res.counts, res.train_seconds
        tokens = {"price_training_tokens": dg.MetadataValue.json(train_tokens.describe())}
        if title_encoder is not None:  # the sparse form's title vectors: encoded now vs read from the stage's cache
            tokens["price_training_title_vectors"] = dg.MetadataValue.json(
                {k: v for k, v in title_encoder.counts.items() if k.startswith("text_")})
        eval_fp = _evaluation_fingerprint(store, train_fp, version, config)

    # Test rows, as listings, through score_listings: the candidate and the published model.
    test = clean_products[clean_products["split"] == "test"].reset_index(drop=True)
    if config.listing_eval_max_rows and len(test) > config.listing_eval_max_rows:
        test = test.sample(config.listing_eval_max_rows, random_state=0).reset_index(drop=True)
    train = clean_products[clean_products["split"] == "train"]
    # Its own embedder (not training's), so its counts in the metadata are the evaluation's.
    embedder = listing_embedder(context, encoder_rec, encoder) if catalogue is not None else None
    extractor, extraction_note = scoring.listing_extractor(store, model.known_brands())
    context.log.info(f"listing evaluation: attribute extraction with {extraction_note}")
    classifiers = scoring.load_published_classifiers(store)
    recipes, recipes_note = listing_recipes(store, config, train)
    context.log.info(f"listing evaluation: recipes {recipes_note}")
    recipe, text_recipe = recipes.recipe, recipes.text_recipe

    # The published model is judged first, on the gate's forms, and its listings' reads (extraction,
    # embedding, classification: everything but the price model) are kept for the candidate's evaluation
    # of the same forms, which takes them instead of reading the listings again.
    reads: dict = {}

    def judge(m, info, forms, remember=False):
        return listing_eval.evaluate_price_model(m, info, test, train, embedder=embedder, extractor=extractor,
                                                 classifiers=classifiers, forms=forms, progress=context.log.info,
                                                 recipe=recipe, text_recipe=text_recipe, reads=reads,
                                                 remember=remember)

    # One TF-IDF transform memo for both evaluations: the published model meets the same test texts, and
    # the classifiers and recipes it is served beside are the same objects; each text is tokenised once per
    # analyser, and not at all when the last run's evaluation counted it (core.token_counts).
    with token_caches(token_cache_dir(), "listing_eval") as eval_tokens, transform_memo():
        published = store.published(PRICE_MODEL_NAME)
        pub_note, pub_table, pub_pred = "nothing published", None, None
        if published is not None and str(published["version"]) != version:
            try:
                pmodel, pinfo = store.load(PRICE_MODEL_NAME, published["version"])
                if not hasattr(pmodel, "forms"):
                    raise TypeError(f"{type(pmodel).__name__} is not a listing price model (trained by an older version)")
                pub_table, pub_pred = judge(pmodel, pinfo, listing_eval.GATE_FORMS, remember=True)
                pub_note = f"{pinfo['version']} re-scored on this run's test listings"
            except Exception as e:  # a model this code cannot serve: say so; the recipe still gates
                pub_note = f"{published['version']} could not be scored: {type(e).__name__}: {e}"
                context.log.warning(f"published {PRICE_MODEL_NAME} {pub_note}")
                reads.clear()
        cand_table, cand_pred = judge(model, {"version": version, "features_spec": features_spec},
                                      tuple(listing_eval.LISTING_FORMS))
        reads.clear()
        cand_table.insert(0, "model", "candidate")
        cand_table["version"] = version
        tables = [cand_table]
        if published is not None and str(published["version"]) == version:
            # The reused candidate is the published model: the same listings give the same scores.
            pub_table = cand_table[cand_table["form"].isin(listing_eval.GATE_FORMS)].copy()
            pub_table["model"] = "published"
            tables.append(pub_table)
            pub_note = f"{version} is the candidate itself (its training inputs are unchanged)"
        elif pub_pred is not None:
            # How far the two can differ on these listings by chance: the gate's tolerance widens to it.
            pub_table = pub_table.merge(listing_eval.paired_price_differences(
                cand_pred, pub_pred, listing_eval.GATE_FORMS), on=["form", "source"], how="left")
            pub_table.insert(0, "model", "published")
            pub_table["version"] = pinfo["version"]
            tables.append(pub_table)
    metrics = pd.concat(tables, ignore_index=True)
    decision = price_gate(metrics, listing_eval.GATE_FORMS, config.interval_coverage)
    full = cand_pred["full"]
    full = full[full["priced"] & full["predicted_usd"].notna()]
    pva = price_plots.predicted_vs_actual_png(full["price_usd"], full["predicted_usd"], full["source"],
                                              "candidate, 'full' listings: predicted vs actual (test)")
    rbc = price_plots.residuals_by_category_png(full["price_usd"], full["predicted_usd"], full["category"],
                                                "candidate, 'full' listings: residuals by category (test)")
    overall = cand_table.set_index(["form", "source"])
    return dg.Output(metrics, metadata={
        "listing_metrics": _md_table(cand_table[LISTING_COLUMNS]),
        "published_listing_metrics": _md_table(metrics[metrics["model"] == "published"][
            LISTING_COLUMNS + [c for c in ("n_paired", "rmsle_diff_se") if c in metrics.columns]]),
        "validation_selection": _md_table(selection),
        "forms": dg.MetadataValue.json(features_spec["forms"]),
        "mode": f"{config.mode}: {mode_note}",
        "warm_start": dg.MetadataValue.json({"note": warm_note, **features_spec.get("warm_starts", {})}),
        "mlp_precision": dg.MetadataValue.json(features_spec.get("mlp_precision", {})),
        "listing_eval_embeddings": dg.MetadataValue.json(getattr(embedder, "counts", {})),
        "listing_eval_extraction": dg.MetadataValue.json(extractor.counts),
        "listing_eval_tokens": dg.MetadataValue.json(eval_tokens.describe()),
        "listing_recipes": recipes_note,
        "intervals": dg.MetadataValue.json(model.describe()),
        "candidate_version": version,
        **{f"test_rmsle/{f}": dg.MetadataValue.float(float(overall.loc[(f, "all"), "rmsle"]))
           for f in listing_eval.GATE_FORMS if (f, "all") in overall.index},
        **{f"test_coverage/{f}": dg.MetadataValue.float(float(overall.loc[(f, "all"), "coverage"]))
           for f in listing_eval.GATE_FORMS if (f, "all") in overall.index},
        "published_version_before": published["version"] if published else "none",
        "published_model": pub_note,
        "gate_preview": dg.MetadataValue.md(decision.markdown()),
        "train_seconds": dg.MetadataValue.json(train_seconds),
        "rows": dg.MetadataValue.json({**counts, "test_listings_per_form": int(len(test))}),
        **tokens,
        "embeddings": emb_note,
        "predicted_vs_actual": md.png(pva, "predicted vs actual"),
        "residuals_by_category": md.png(rbc, "residuals by category"),
        TRAINED_IN_KEY: trained[2] if trained is not None else context.run.run_id,
        TRAIN_FINGERPRINT_KEY: train_fp,
        reuse.FINGERPRINT_KEY: eval_fp,
    })


TRAIN_FINGERPRINT_KEY = "train_fingerprint"
TRAINED_IN_KEY = "candidate_trained_in_run"


def _previous_candidate(context, store, train_fp: str) -> tuple[str, object, str, str | None] | None:
    """(candidate version, its training seconds, the run that trained it, the published model its
    evaluation compared it with) when the latest regressor_metrics had the same training inputs and
    its candidate is still in the store."""
    event = reuse.matching(context, "regressor_metrics", train_fp, metadata_key=TRAIN_FINGERPRINT_KEY)
    if event is None:
        return None
    meta = event.asset_materialization.metadata
    version = str(meta["candidate_version"].value)
    if version not in store.versions(PRICE_MODEL_NAME):
        context.log.warning(f"training inputs unchanged but candidate {version} is gone from the store; retraining")
        return None
    origin, before = meta.get(TRAINED_IN_KEY), meta.get("published_version_before")
    return (version, meta["train_seconds"].value, str(origin.value) if origin is not None else event.run_id,
            before.value if before is not None else None)


def _evaluation_fingerprint(store, train_fp: str, version: str, config: RegressorConfig,
                            compared_then: str | None = None) -> str:
    """The candidate and what its listing evaluation reads: the classifiers and attribute extractor
    scoring serves it beside, and the published price model it is compared with.

    Once the candidate itself is published (by the run that evaluated it), the comparison that
    gated it still stands: the model it was compared with then (``compared_then``, recorded as
    ``published_version_before``) takes the published model's place, so the next unchanged run
    reuses that evaluation."""
    serving = {n: (store.published(n) or {}).get("version") for n in (
        scoring.EXTRACTOR_MODEL, *(scoring.classifier_name(t, r) for t in scoring.CLASSIFIER_TASKS for r in REGIMES))}
    compared_with = (store.published(PRICE_MODEL_NAME) or {}).get("version")
    if compared_with == version and compared_then is not None:
        compared_with = compared_then
    return combine({"train": train_fp, "candidate": version, "serving": serving, "compared_with": compared_with,
                    "listing_eval_max_rows": config.listing_eval_max_rows, "code": code_digest()})


@dg.asset(group_name=GROUP, kinds={"python"},
          description="Publishes the gated candidate price regressor in the model store (scoring uses it). "
                      "Runs only after the blocking check price_regressor_gate passed.",
          automation_condition=EAGER_WHEN_GATES_PASS)
def published_price_regressor(context: dg.AssetExecutionContext, model_store: ModelStoreResource,
                              regressor_metrics: pd.DataFrame) -> dg.MaterializeResult:
    # The blocking check already stopped a bad candidate in the same run; re-applying the same
    # gate here keeps a later, standalone materialization of this asset from bypassing it.
    decision = price_gate(regressor_metrics, listing_eval.GATE_FORMS)
    if not decision.passed:
        raise dg.Failure(description="price regressor refused by the quality gate",
                         metadata={"gate": dg.MetadataValue.md(decision.markdown())})
    cand = regressor_metrics[(regressor_metrics["model"] == "candidate") & (regressor_metrics["source"] == "all")]
    version = str(cand["version"].iloc[0])
    store = model_store.store()
    store.publish(PRICE_MODEL_NAME, version)
    context.log.info(f"published {PRICE_MODEL_NAME} {version}")
    return dg.MaterializeResult(metadata={
        "published_version": version,
        **{f"test_rmsle/{r.form}": dg.MetadataValue.float(float(r.rmsle))
           for r in cand.itertuples() if r.form in listing_eval.GATE_FORMS},
        "gate": dg.MetadataValue.md(decision.markdown()),
    })
