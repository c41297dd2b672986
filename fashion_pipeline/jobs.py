"""Jobs as selections over the asset graph (upstream / downstream of named assets), not group names.

- ``ingest_job``: the raw files to the clean product table (everything upstream of
  ``clean_products``).
- ``retraining_job`` (the weekly schedule): everything downstream of ``clean_products``: fresh
  attributes -> embeddings -> every model (classifiers, clustering, price model) -> the blocking
  gates -> publishing -> ``scored_listings``. The clean table itself is not rebuilt: new raw files
  are the sensor's business.
- ``refresh_job`` (the new-raw-files sensor): everything downstream of the raw-file assets, i.e.
  ingestion, then the same chain as the retraining job.
- ``model_selection_job`` (on demand, never scheduled): the model-selection experiment. The
  attribute extractor, classifier, clustering and price model assets run in ``mode="select"`` (C searched per
  attribute; every model family trained — multimodal_cnn, clip_fusion and the classical LightGBM only here —, the serving one chosen
  on validation, the full leaderboard rewritten; the clusterings fitted afresh), then everything downstream of them: attributes, embeddings, the gates, publishing and
  scoring. The retraining and refresh jobs run them in their default ``mode="retrain"``: only the
  model each task/regime or listing form has published is retrained, with the hyper-parameters its
  selection tuned (the extractor's C, ridge's alpha, LightGBM's rounds), the price MLP and image_cnn
  fine-tuned from the weights they retrain, the clusterings continued from the stored clusterer.

A job includes the asset checks of the assets it selects, so the blocking checks
``price_regressor_gate`` / ``classifier_gate`` run inside the job and a failed one stops the
publish step that depends on the checked asset (Dagster skips it). A new asset downstream of
``clean_products`` joins the retraining and refresh jobs without an edit here; an asset key
named here that disappears makes the code location fail to load.
"""

import dagster as dg

from fashion_pipeline.assets.classifiers import FIRST_RUN_CLASSICAL, SELECTION_ONLY_CLASSICAL
from fashion_pipeline.core.models.fusion import ARCHITECTURES

# The assets that read the raw dataset folders (fashion_pipeline/assets/ingest.py).
RAW_FILE_ASSETS = ("kaggle_products_raw", "hm_articles_raw", "hm_article_prices")
CLEAN_PRODUCTS = "clean_products"

ingest_selection = dg.AssetSelection.assets(CLEAN_PRODUCTS).upstream()
retraining_selection = dg.AssetSelection.assets(CLEAN_PRODUCTS).downstream(include_self=False)
refresh_selection = dg.AssetSelection.assets(*RAW_FILE_ASSETS).downstream()

ingest_job = dg.define_asset_job(
    "ingest_job", selection=ingest_selection,
    description="Read both raw datasets and rebuild the clean product table (everything upstream of clean_products).",
    tags={"fashion/stage": "ingest"},
)
retraining_job = dg.define_asset_job(
    "retraining_job", selection=retraining_selection,
    description="Everything downstream of clean_products: attributes, embeddings, every model, the blocking gates, "
                "publishing and scored_listings.",
    tags={"fashion/stage": "retraining"},
)
refresh_job = dg.define_asset_job(
    "refresh_job", selection=refresh_selection,
    description="Everything downstream of the raw files (ingestion, then the retraining chain): what the "
                "new-raw-files sensor starts.",
    tags={"fashion/stage": "refresh"},
)

# The assets whose config `mode` separates selection from retraining (op names = asset names).
MODEL_ASSETS = ("attribute_extractor", "classifier_leaderboard", "regressor_metrics", "product_clusters")
# attribute_classifiers is classifier_leaderboard's sibling output (one op): select both.
model_selection_selection = dg.AssetSelection.assets(*MODEL_ASSETS, "attribute_classifiers").downstream()

SELECTION_EXTRA = {"classifier_leaderboard": {
    "neural_models": list(ARCHITECTURES),
    "classical_models": [*FIRST_RUN_CLASSICAL, *SELECTION_ONLY_CLASSICAL]}}

model_selection_job = dg.define_asset_job(
    "model_selection_job", selection=model_selection_selection,
    # multimodal_cnn, clip_fusion and the classical LightGBM compete only here (the default lists leave them out
    # of a first run: training on a CPU for models that win nothing on the development data; see
    # fashion_pipeline/assets/classifiers.py).
    config={"ops": {name: {"config": {"mode": "select", **SELECTION_EXTRA.get(name, {})}} for name in MODEL_ASSETS}},
    description="On demand: select models anew — the attribute extractor's C searched, every classifier and price "
                "model family trained and the serving one chosen on validation, the clusterings fitted afresh (mode "
                "'select'), then attributes, "
                "embeddings, the gates, publishing and scoring. The schedule and the sensor only retrain the "
                "published choices with their tuned hyper-parameters.",
    tags={"fashion/stage": "model_selection"},
)

ALL_JOBS = [ingest_job, retraining_job, refresh_job, model_selection_job]
