"""Content fingerprints of a stage's inputs, so a re-run with nothing changed can reuse its output.

A stage's fingerprint combines what decides its result: the content of its input tables and
embeddings, its configuration, the published models it reads, and the code (every source file of
this package and the versions of the libraries that compute). Equal fingerprints mean the stage
would recompute what it already has; any change in any part gives a new one. Conservative by
design: an edit anywhere in the package, or a library upgrade, invalidates every stage.

Pure functions (no Dagster); fashion_pipeline.reuse applies them to asset materializations.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from functools import lru_cache
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

# Libraries whose version can change what a stage computes (models, parsing, numerics).
LIBRARIES = ("numpy", "pandas", "pyarrow", "scikit-learn", "lightgbm", "xgboost-cpu", "torch", "open_clip_torch",
             "faiss-cpu", "rapidfuzz", "pillow", "duckdb")
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def _hasher():
    return hashlib.blake2b(digest_size=20)


def frame_digest(df: pd.DataFrame | None) -> str:
    """Digest of a table's content: column names, dtypes and every value in row order (index ignored).

    Columns holding unhashable values (lists, dicts, arrays) are digested through their string form.
    """
    h = _hasher()
    if df is None:
        h.update(b"<none>")
        return h.hexdigest()
    h.update(repr([(str(c), str(t)) for c, t in df.dtypes.items()]).encode())
    h.update(str(len(df)).encode())
    for col in df.columns:
        s = df[col]
        try:
            values = pd.util.hash_pandas_object(s, index=False).to_numpy()
        except TypeError:  # unhashable cells
            values = pd.util.hash_pandas_object(s.map(repr), index=False).to_numpy()
        h.update(values.tobytes())
    return h.hexdigest()



@lru_cache(maxsize=1)
def code_digest() -> str:
    """Digest of every .py source of the fashion_pipeline package and the computing libraries' versions."""
    h = _hasher()
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        h.update(str(path.relative_to(PACKAGE_ROOT)).encode())
        h.update(path.read_bytes())
    for lib in LIBRARIES:
        try:
            version = importlib_metadata.version(lib)
        except importlib_metadata.PackageNotFoundError:
            version = "-"
        h.update(f"{lib}={version}".encode())
    return h.hexdigest()


def source_digest(*modules) -> str:
    """Digest of the given modules' source: the version of code whose results a cache keeps across
    runs (code_digest, over the whole package, would discard them at any edit)."""
    h = _hasher()
    for module in modules:
        h.update(inspect.getsource(module).encode("utf-8"))
    return h.hexdigest()


def combine(parts: Mapping[str, Any]) -> str:
    """One fingerprint for named parts (digests, config dicts, versions); key order does not matter."""
    h = _hasher()
    h.update(json.dumps(parts, sort_keys=True, default=str).encode())
    return h.hexdigest()
