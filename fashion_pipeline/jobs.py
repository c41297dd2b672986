"""Jobs as asset selections by group, so assets merged later join them without edits here.

Groups: ingest -> products -> enrichment -> models -> scoring. A group that has no assets yet
selects nothing (a job over it runs no steps), which is what lets these jobs exist before the
stages do.
"""

import dagster as dg

INGEST_GROUPS = ("ingest", "products")
ENRICHMENT_GROUP = "enrichment"
MODELS_GROUP = "models"
SCORING_GROUP = "scoring"

# Raw files to the clean product table: cheap, CPU only.
ingest_selection = dg.AssetSelection.groups(*INGEST_GROUPS)
# Weekly retraining: the models and the enrichment they read (attributes, embeddings; both keep
# per-product caches, so unchanged products cost nothing). Not ingestion: new raw data is the
# sensor's business.
retraining_selection = dg.AssetSelection.groups(ENRICHMENT_GROUP, MODELS_GROUP)
# New raw files: everything from ingestion to the models. Scoring follows by automation.
refresh_selection = dg.AssetSelection.groups(*INGEST_GROUPS, ENRICHMENT_GROUP, MODELS_GROUP)

ingest_job = dg.define_asset_job(
    "ingest_job", selection=ingest_selection,
    description="Read both raw datasets and rebuild the clean product table.",
    tags={"fashion/stage": "ingest"},
)
retraining_job = dg.define_asset_job(
    "retraining_job", selection=retraining_selection,
    description="Re-enrich changed products and retrain every model (groups enrichment + models).",
    tags={"fashion/stage": "retraining"},
)
refresh_job = dg.define_asset_job(
    "refresh_job", selection=refresh_selection,
    description="Ingestion to models: what the new-raw-files sensor starts.",
    tags={"fashion/stage": "refresh"},
)

ALL_JOBS = [ingest_job, retraining_job, refresh_job]
