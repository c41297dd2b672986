"""Shared test helpers: real materializations of the project's assets on real data."""

from pathlib import Path

import dagster as dg

from fashion_pipeline.definitions import defs
from fashion_pipeline.resources import build_resources
from fashion_pipeline.resources.data import RawDataResource
from fashion_pipeline.resources.encoders import EncoderResource
from fashion_pipeline.resources.model_store import ModelStoreResource
from fashion_pipeline.resources.warehouse import WarehouseIOManager, WarehouseResource


def resources_for(data_root: Path, var_dir: Path, **overrides) -> dict:
    """The local profile's resources, pointed at ``data_root`` and a private var folder."""
    resources = build_resources("local")
    warehouse = str(var_dir / "warehouse.duckdb")
    resources.update({
        "io_manager": WarehouseIOManager(path=warehouse),
        "warehouse": WarehouseResource(path=warehouse),
        "raw_data": RawDataResource(root=str(data_root)),
        "model_store": ModelStoreResource(root=str(var_dir / "models")),
        # the local profile's encoders, with their Parquet file and cache in the private var folder too
        "encoder": EncoderResource(backend="offline", device="cpu", output_dir=str(var_dir / "embeddings"),
                                   cache_dir=str(var_dir / "cache" / "embeddings")),
    })
    resources.update(overrides)
    return resources


def assets_by_name(*names: str) -> list:
    wanted = set(names)
    found = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition) and {k.path[-1] for k in a.keys} & wanted]
    missing = wanted - {k.path[-1] for a in found for k in a.keys}
    assert not missing, f"unknown assets {missing}"
    return found


def materialize(names: list[str], data_root: Path, var_dir: Path, run_config: dict | None = None,
                raise_on_error: bool = True, **resource_overrides) -> dg.ExecuteInProcessResult:
    """Materialize the named assets (and nothing else) in process, for real."""
    return dg.materialize(
        assets_by_name(*names),
        resources=resources_for(data_root, var_dir, **resource_overrides),
        run_config=run_config or {},
        raise_on_error=raise_on_error,
    )


INGEST_CHAIN = ["kaggle_products_raw", "hm_articles_raw", "hm_article_prices", "merged_products", "clean_products"]
