"""Readers for the two datasets exactly as their Kaggle downloads are laid out."""

from fashion_pipeline.core.readers.common import DataRootError, MissingColumnError, read_csv_rows
from fashion_pipeline.core.readers.hm import HMLayout, read_hm_articles, read_hm_prices
from fashion_pipeline.core.readers.images import check_images
from fashion_pipeline.core.readers.kaggle import KaggleLayout, read_kaggle_products

__all__ = [
    "DataRootError", "MissingColumnError", "read_csv_rows", "HMLayout", "read_hm_articles",
    "read_hm_prices", "check_images", "KaggleLayout", "read_kaggle_products",
]
