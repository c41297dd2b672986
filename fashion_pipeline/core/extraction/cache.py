"""Incremental, corruption-checked cache of extraction results.

Layout: a directory of append-only JSONL segments. Each run that computes new rows writes one
segment (temp file + os.replace, so a crash never leaves a half-written segment under a live
name). Each line is {"k": key, "v": payload-json, "c": sha256(payload)}; a line that is not JSON,
lacks fields or whose checksum does not match is counted as corrupted and not served, so the
row is recomputed. Many small segments are compacted into one (also atomically). Reading 44k
rows is one pass over a few MB of JSONL; lookups are a dict.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

from fashion_pipeline.core.extraction.prompt import PROMPT_VERSION

MAX_SEGMENTS = 16


def cache_key(title: str, description: str, backend: str, model: str, prompt_version: str = PROMPT_VERSION) -> str:
    blob = json.dumps([title, description, backend, model, prompt_version], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _checksum(payload: str) -> str:
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class ExtractionCache:
    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._data: dict[str, dict] = {}
        self.corrupted = 0  # bad entries found when loading (reported; those rows are recomputed)
        self._load()
        self._dirty = self.corrupted > 0  # rewrite without the bad lines on the next put

    def _segments(self) -> list[Path]:
        return sorted(self.dir.glob("seg-*.jsonl"))

    def _load(self) -> None:
        for seg in self._segments():
            with open(seg, encoding="utf-8", errors="replace") as f:
                for line in f:
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                        key, payload, check = rec["k"], rec["v"], rec["c"]
                        if _checksum(payload) != check:
                            raise ValueError("checksum mismatch")
                        value = json.loads(payload)
                    except (ValueError, KeyError, TypeError):
                        self.corrupted += 1
                        continue
                    self._data[key] = value

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def get(self, key: str) -> dict | None:
        return self._data.get(key)

    def _write_segment(self, items: dict[str, dict]) -> Path:
        name = f"seg-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.jsonl"
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.dir)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for k, v in items.items():
                payload = json.dumps(v, ensure_ascii=False, sort_keys=True)
                f.write(json.dumps({"k": k, "v": payload, "c": _checksum(payload)}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        final = self.dir / name
        os.replace(tmp, final)
        return final

    def put_many(self, items: dict[str, dict]) -> None:
        """Persist new entries as one atomic segment."""
        if not items:
            return
        self._write_segment(items)
        self._data.update(items)
        if len(self._segments()) > MAX_SEGMENTS or self._dirty:
            self.compact()

    def drop_where(self, stale) -> int:
        """Forget the entries whose value ``stale(value)`` says no run will ask for again, and rewrite
        the cache without them (one compaction). Returns how many were dropped."""
        gone = [k for k, v in self._data.items() if stale(v)]
        for k in gone:
            del self._data[k]
        if gone:
            self.compact()
        return len(gone)

    def compact(self) -> None:
        """Rewrite all valid entries into one segment, then remove the old ones (drops corrupt lines)."""
        old = self._segments()
        new = self._write_segment(self._data)
        for seg in old:
            if seg != new:
                seg.unlink(missing_ok=True)
        self._dirty = False
