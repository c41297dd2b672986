import shutil
from pathlib import Path

import pytest

from fashion_pipeline.paths import PROJECT_ROOT

SAMPLE_ROOT = PROJECT_ROOT / "data"
KAGGLE = "fashion-product-images"
HM = "h-and-m-personalized-fashion-recommendations"


@pytest.fixture(autouse=True)
def _isolated_var_dir(tmp_path, monkeypatch):
    """Every test writes its warehouse, caches and models under its own temporary folder."""
    monkeypatch.setenv("FASHION_VAR_DIR", str(tmp_path / "var"))


@pytest.fixture
def sample_copy(tmp_path) -> Path:
    """A writable copy of the embedded sample, for tests that damage files."""
    dst = tmp_path / "data"
    shutil.copytree(SAMPLE_ROOT, dst, ignore=shutil.ignore_patterns("README.md"))
    return dst
