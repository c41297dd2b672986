"""The model store as a Dagster resource (local folder by default)."""


from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from fashion_pipeline.core.model_store import ModelStore
from fashion_pipeline.paths import default_var_path, resolve


class ModelStoreResource(dg.ConfigurableResource):
    root: str | None = Field(default=None, description="Folder holding versioned model artefacts and their "
                             "PUBLISHED markers; default <var dir>/models.")
    keep_versions: int | None = Field(default=3, ge=1, description="After each save of a model, keep its "
                                      "PUBLISHED version and its newest keep_versions versions and delete the "
                                      "rest (a full-data retrain adds ~0.4 GB); null keeps every version.")

    _log: Any = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._log = context.log  # removals of old versions show in the run's log

    def store(self) -> ModelStore:
        return ModelStore(resolve(self.root) if self.root else resolve(default_var_path("models")),
                          keep_versions=self.keep_versions, logger=self._log)
