"""Where the raw datasets are: a folder holding both Kaggle downloads in their own layouts."""


from pathlib import Path

import dagster as dg
from pydantic import Field

from fashion_pipeline.core.readers import DataRootError
from fashion_pipeline.paths import default_var_path, resolve


class RawDataResource(dg.ConfigurableResource):
    """Point ``root`` at a folder with the two datasets and nothing else changes."""

    root: str = Field(
        default="data",
        description="Folder holding both datasets (relative paths resolve against the project root). "
        "Defaults to the embedded sample in data/.",
    )
    kaggle_dir: str = Field(
        default="fashion-product-images",
        description="Sub-folder with the Kaggle Fashion Product Images download (styles.csv, styles/, images/).",
    )
    hm_dir: str = Field(
        default="h-and-m-personalized-fashion-recommendations",
        description="Sub-folder with the H&M download (articles.csv, transactions_train.csv, images/).",
    )
    check_images: bool = Field(
        default=True, description="Decode every image at ingestion and null the path of missing or corrupt ones."
    )
    cache_dir: str | None = Field(default=None, description=(
        "Where ingestion remembers what each product JSON and image yielded (keyed by file size and "
        "modification time), so a re-read after new files arrive parses and decodes only new or changed "
        "ones; default <var dir>/cache/ingest. Deleting it only costs one full read."))

    def root_path(self) -> Path:
        root = resolve(self.root)
        if not root.is_dir():
            raise DataRootError(f"data root not found: {root} (configure resources.raw_data.root)")
        return root

    def kaggle_root(self) -> Path:
        return self.root_path() / self.kaggle_dir

    def hm_root(self) -> Path:
        return self.root_path() / self.hm_dir

    def memo_path(self, dataset: str) -> Path:
        """The file memo of one dataset's reader (core.readers.file_memo)."""
        base = resolve(self.cache_dir) if self.cache_dir else Path(default_var_path("cache", "ingest"))
        return base / f"{dataset}_files.parquet"
