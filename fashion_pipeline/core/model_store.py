"""A local model store: versioned artefacts with their metrics and feature spec.

Layout: ``<root>/<name>/<version>/model.joblib`` + ``info.json``, and
``<root>/<name>/PUBLISHED`` naming the version that scoring uses. Writes are atomic
(temporary folder, then rename), so a killed training run never leaves a half model.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import joblib

from fashion_pipeline.core.warehouse import atomic_write_bytes


class ModelNotFoundError(LookupError):
    pass


class ModelStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _dir(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"invalid model name: {name!r}")
        return self.root / name

    def save(self, name: str, model: Any, metrics: dict, features_spec: dict) -> str:
        base = self._dir(name)
        base.mkdir(parents=True, exist_ok=True)
        version = time.strftime("%Y%m%dT%H%M%S") + f"-{time.time_ns() % 1_000_000:06d}"
        tmp = base / f".{version}.tmp-{os.getpid()}"
        tmp.mkdir()
        try:
            joblib.dump(model, tmp / "model.joblib")
            info = {"name": name, "version": version, "created_at": time.time(),
                    "metrics": metrics, "features_spec": features_spec}
            (tmp / "info.json").write_text(json.dumps(info, indent=2, default=str))
            os.replace(tmp, base / version)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return version

    def versions(self, name: str) -> list[str]:
        base = self._dir(name)
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "info.json").is_file())

    def info(self, name: str, version: str) -> dict:
        path = self._dir(name) / version / "info.json"
        if not path.is_file():
            raise ModelNotFoundError(f"model {name} has no version {version} in {self.root}")
        return json.loads(path.read_text())

    def publish(self, name: str, version: str) -> None:
        self.info(name, version)  # must exist
        atomic_write_bytes(self._dir(name) / "PUBLISHED", version.encode())

    def published(self, name: str) -> dict | None:
        marker = self._dir(name) / "PUBLISHED"
        if not marker.is_file():
            return None
        return self.info(name, marker.read_text().strip())

    def load(self, name: str, version: str | None = None) -> tuple[Any, dict]:
        """Load a version; ``None`` means the published one, else the latest saved."""
        if version is None:
            published = self.published(name)
            if published is not None:
                version = published["version"]
            else:
                versions = self.versions(name)
                if not versions:
                    raise ModelNotFoundError(
                        f"no model '{name}' in {self.root}: materialize the asset that trains it first"
                    )
                version = versions[-1]
        info = self.info(name, version)
        return joblib.load(self._dir(name) / version / "model.joblib"), info
