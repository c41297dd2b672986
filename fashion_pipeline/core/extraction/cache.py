"""Incremental, corruption-checked cache of extraction results.

Layout: a directory of append-only JSONL segments. Each run that computes new rows writes one
segment (temp file + os.replace, so a crash never leaves a half-written segment under a live
name). Each line is {"k": key, "v": payload-json, "c": sha256(payload), "t": last use (Unix
seconds)}; a line that is not JSON, lacks fields or whose checksum does not match is counted as
corrupted and not served, so the row is recomputed (a line without a usable "t", as written before
retention existed, counts as last used when its segment was written). Many small segments are
compacted into one (also atomically). Reading 44k rows is one pass over a few MB of JSONL; lookups
are a dict.

Retention: `finish(max_age_s)` forgets the entries no run has read or written for ``max_age_s``
(texts that changed, products gone, a superseded prompt or model). A read moves an entry's last
use forward in memory; the cache is rewritten for it only when a read entry's recorded use is
over `REFRESH_S` old, so runs within a day of each other do not rewrite it.
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
# A read entry's recorded last use is rewritten once it is older than this (not at every read).
REFRESH_S = 86400.0


def cache_key(title: str, description: str, backend: str, model: str, prompt_version: str = PROMPT_VERSION) -> str:
    blob = json.dumps([title, description, backend, model, prompt_version], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _checksum(payload: str) -> str:
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class ExtractionCache:
    def __init__(self, directory: str | os.PathLike, clock=time.time):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self._data: dict[str, dict] = {}
        self._used: dict[str, float] = {}  # key -> last read or written (Unix seconds)
        self._refresh = False  # a read moved some entry's last use by more than REFRESH_S
        self._seen: set[str] = set()  # keys read or written through this object: never forgotten by it
        self.corrupted = 0  # bad entries found when loading (reported; those rows are recomputed)
        self._load()
        self._dirty = self.corrupted > 0  # rewrite without the bad lines on the next put

    def _segments(self) -> list[Path]:
        return sorted(self.dir.glob("seg-*.jsonl"))

    def _load(self) -> None:
        for seg in self._segments():
            try:
                written = seg.stat().st_mtime
            except FileNotFoundError:  # compacted away by another process meanwhile
                continue
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
                    used = rec.get("t")
                    self._used[key] = float(used) if isinstance(used, (int, float)) else written

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def get(self, key: str) -> dict | None:
        value = self._data.get(key)
        if value is not None:
            self._seen.add(key)
            now = self.clock()
            if now - self._used[key] > REFRESH_S:
                self._used[key] = now
                self._refresh = True
        return value

    def _write_segment(self, items: dict[str, dict]) -> Path:
        name = f"seg-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.jsonl"
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.dir)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for k, v in items.items():
                payload = json.dumps(v, ensure_ascii=False, sort_keys=True)
                f.write(json.dumps({"k": k, "v": payload, "c": _checksum(payload), "t": self._used[k]},
                                   ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        final = self.dir / name
        os.replace(tmp, final)
        return final

    def put_many(self, items: dict[str, dict]) -> None:
        """Persist new entries as one atomic segment."""
        if not items:
            return
        now = self.clock()
        self._used.update(dict.fromkeys(items, now))
        self._seen.update(items)
        self._write_segment(items)
        self._data.update(items)
        if len(self._segments()) > MAX_SEGMENTS or self._dirty:
            self.compact()

    def drop_where(self, stale) -> int:
        """Forget the entries whose value ``stale(value)`` says no run will ask for again, and rewrite
        the cache without them (one compaction). Returns how many were dropped."""
        gone = [k for k, v in self._data.items() if stale(v)]
        for k in gone:
            del self._data[k], self._used[k]
        if gone:
            self.compact()
        return len(gone)

    def finish(self, max_age_s: float | None) -> int:
        """End of a run: forget the entries not read or written for ``max_age_s`` seconds (None: keep
        all; what this object read or wrote is always kept, so 0 keeps exactly this run's entries), and
        persist the last uses the run's reads moved (see `REFRESH_S`); at most one rewrite. Returns how
        many entries were forgotten."""
        gone: list[str] = []
        if max_age_s is not None:
            if max_age_s < 0:
                raise ValueError(f"max_age_s must be >= 0, not {max_age_s}")
            cutoff = self.clock() - max_age_s
            gone = [k for k, used in self._used.items() if used < cutoff and k not in self._seen]
            for k in gone:
                del self._data[k], self._used[k]
        if gone or self._refresh:
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
        self._refresh = False
