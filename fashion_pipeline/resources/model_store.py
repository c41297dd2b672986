"""The model store as a Dagster resource (local folder by default)."""


import dagster as dg
from pydantic import Field

from fashion_pipeline.core.model_store import ModelStore
from fashion_pipeline.paths import default_var_path, resolve


class ModelStoreResource(dg.ConfigurableResource):
    root: str | None = Field(default=None, description="Folder holding versioned model artefacts and their "
                             "PUBLISHED markers; default <var dir>/models.")

    def store(self) -> ModelStore:
        return ModelStore(resolve(self.root) if self.root else resolve(default_var_path("models")))
