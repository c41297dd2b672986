"""Where the project keeps its files. Relative paths in configuration resolve against the
project root (the folder holding pyproject.toml), so `dagster dev` and the CLI behave the same
from any working directory."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Generated files (warehouse, Parquet, caches, models) live here; never in git.
VAR_DIR_ENV = "FASHION_VAR_DIR"


def resolve(path: str | os.PathLike) -> Path:
    p = Path(os.path.expandvars(os.path.expanduser(str(path))))
    return p if p.is_absolute() else (PROJECT_ROOT / p)


def var_dir() -> Path:
    return resolve(os.environ.get(VAR_DIR_ENV, "var"))


def default_var_path(*parts: str) -> str:
    return str(var_dir().joinpath(*parts))


def token_cache_dir() -> Path:
    """Where the training assets' TF-IDF memos keep their term counts between runs (core.token_counts):
    safe to delete (the next run tokenises every text again)."""
    return var_dir() / "cache" / "tokens"

