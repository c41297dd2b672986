"""Content-addressed embedding cache: one SQLite file per (modality, encoder identity).

Key = sha256 of the image bytes or of the text; the encoder identity is part of the file name
and stored inside the file, so a changed encoder (weights, preprocessing, precision) starts
from an empty cache and nothing stale is served. Each vector is stored with its dimension and
a blake2b checksum; an entry that fails either check is deleted and recomputed, never served.
SQLite gives atomic commits (a killed run leaves whole batches) and indexed lookups, so a
chunk of rows can be fetched without loading the whole cache into memory.

Retention: table ``used`` records when a run last wrote or read each entry (unix seconds; a table of
its own, so stamping 40k entries rewrites a few hundred small pages, not every vector's), and
`sweep_cache` deletes the entries no run has used for a given age, and the files of other encoders
(and quarantined files) untouched for as long — so vectors of products that left the catalogue, or
of texts an updated extractor rewrote, do not pile up week after week. A file of schema 1 (before
``used``) is migrated in place on open, its entries stamped with the time of the migration.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_SCHEMA_VERSION = "2"  # 2: table used
_COLUMNS = ["key", "dim", "checksum", "vec"]
_LOOKUP_CHUNK = 500  # SQLite's bound-parameter limit is 999 on old builds
# An entry read again within this long is not re-stamped: a run reads every key twice (validate, then
# get_many), and a stamp an hour old changes no sweep measured in days.
_TOUCH_GRACE_S = 3600
# VACUUM (rewrites the file, seconds for a few hundred MB) only when a sweep left this share of the
# file's pages free; below it SQLite reuses the free pages for new entries.
_VACUUM_FREE_SHARE = 0.25


def vector_checksum(blob: bytes) -> str:
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def cache_file(cache_dir: str | os.PathLike, modality: str, identity: str) -> Path:
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:20]
    return Path(cache_dir) / f"{modality}-{digest}.sqlite"


class EmbeddingCache:
    """Vectors of one modality for one encoder identity."""

    def __init__(self, cache_dir: str | os.PathLike, modality: str, identity: str, dim: int,
                 clock: Callable[[], float] = time.time):
        self.path = cache_file(cache_dir, modality, identity)
        self.identity = identity
        self.dim = int(dim)
        self.clock = clock  # the time stamped on entries and used by sweep (a test sets it)
        self.reset_reason: str | None = None  # set when an unusable cache file was moved aside
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = self._open()
        except sqlite3.DatabaseError as exc:
            self._quarantine(f"unreadable cache file: {exc}")
            self._con = self._open()

    def _open(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=60)
        con.execute("PRAGMA journal_mode=WAL")
        expected = {"schema": _SCHEMA_VERSION, "identity": self.identity, "dim": str(self.dim)}
        if self._meta(con) != expected:  # a new file, or one to migrate: one process at a time, under a write lock
            con.execute("BEGIN IMMEDIATE")
            con.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
            con.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, dim INTEGER NOT NULL, "
                        "checksum TEXT NOT NULL, vec BLOB NOT NULL)")
            con.execute("CREATE TABLE IF NOT EXISTS used (key TEXT PRIMARY KEY, last_used INTEGER NOT NULL)")
            meta = self._meta(con)
            if not meta:
                con.executemany("INSERT INTO meta VALUES (?, ?)", list(expected.items()))
            elif meta == {**expected, "schema": "1"}:
                # Schema 1 had no stamps: every entry counts as used now.
                con.execute("INSERT OR IGNORE INTO used SELECT key, ? FROM vectors", (int(self.clock()),))
                con.execute("UPDATE meta SET v = ? WHERE k = 'schema'", (_SCHEMA_VERSION,))
                log.info("Embedding cache %s migrated to schema %s (entries stamped as used now)",
                         self.path, _SCHEMA_VERSION)
            elif meta != expected:
                # Same file name but different content: a hash collision or a tampered file. Never serve it.
                con.rollback()
                con.close()
                raise sqlite3.DatabaseError(f"cache metadata {meta} does not match {expected}")
            con.commit()
        cols = self._columns(con)
        if cols != _COLUMNS or not con.execute("SELECT 1 FROM sqlite_master WHERE name = 'used'").fetchone():
            con.close()
            raise sqlite3.DatabaseError(f"unexpected cache layout: vectors columns {cols}, table used missing")
        return con

    @staticmethod
    def _meta(con: sqlite3.Connection) -> dict[str, str]:
        if not con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone():
            return {}
        return dict(con.execute("SELECT k, v FROM meta").fetchall())

    @staticmethod
    def _columns(con: sqlite3.Connection) -> list[str]:
        return [r[1] for r in con.execute("PRAGMA table_info(vectors)").fetchall()]

    def _quarantine(self, reason: str) -> None:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        log.warning("Embedding cache %s is unusable (%s); moved to %s and starting empty", self.path, reason, aside)
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(self.path) + suffix)
            if p.exists():
                os.replace(p, Path(str(aside) + suffix))
        self.reset_reason = reason

    def close(self) -> None:
        self._con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _decode(self, dim: int, checksum: str, blob: bytes) -> np.ndarray | None:
        if dim != self.dim or len(blob) != self.dim * 4 or vector_checksum(blob) != checksum:
            return None
        vec = np.frombuffer(blob, dtype="<f4")
        if not np.all(np.isfinite(vec)):
            return None
        return vec

    def _rows(self, keys: Sequence[str]) -> Iterable[tuple[str, int, str, bytes]]:
        for i in range(0, len(keys), _LOOKUP_CHUNK):
            part = keys[i : i + _LOOKUP_CHUNK]
            q = f"SELECT key, dim, checksum, vec FROM vectors WHERE key IN ({','.join('?' * len(part))})"
            yield from self._con.execute(q, part)

    def validate(self, keys: Iterable[str], keep: dict[str, np.ndarray] | None = None,
                 keep_bytes: int = 0) -> tuple[set[str], int]:
        """Keys whose cached vector is intact; corrupt entries are deleted. Returns (valid, n_corrupt).
        ``keep``: a dict that receives the intact vectors read (as `get_many` returns them) while they
        total at most ``keep_bytes``, so a caller that needs them next does not read them again."""
        unique = sorted(set(keys))
        valid: set[str] = set()
        corrupt: list[str] = []
        room = keep_bytes if keep is not None else 0
        for key, dim, checksum, blob in self._rows(unique):
            vec = self._decode(dim, checksum, blob)
            if vec is None:
                corrupt.append(key)
            else:
                valid.add(key)
                if room >= vec.nbytes:
                    keep[key] = vec
                    room -= vec.nbytes
        if corrupt:
            log.warning("Embedding cache %s: %d corrupt entries deleted, will be recomputed", self.path, len(corrupt))
            self._con.executemany("DELETE FROM vectors WHERE key = ?", [(k,) for k in corrupt])
            self._con.executemany("DELETE FROM used WHERE key = ?", [(k,) for k in corrupt])
            self._con.commit()
        self._touch(sorted(valid))
        return valid, len(corrupt)

    def get_many(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """Intact vectors for the keys present (entries failing the checks are left out)."""
        out: dict[str, np.ndarray] = {}
        for key, dim, checksum, blob in self._rows(sorted(set(keys))):
            vec = self._decode(dim, checksum, blob)
            if vec is not None:
                out[key] = vec
        self._touch(sorted(out))
        return out

    def _touch(self, keys: Sequence[str]) -> None:
        """Stamp entries as used now (those stamped within the last hour are left as they are)."""
        now = int(self.clock())
        try:
            for i in range(0, len(keys), _LOOKUP_CHUNK):
                part = keys[i : i + _LOOKUP_CHUNK]
                self._con.execute(f"UPDATE used SET last_used = ? WHERE last_used < ? AND key IN "
                                  f"({','.join('?' * len(part))})", [now, now - _TOUCH_GRACE_S, *part])
            self._con.commit()
        except sqlite3.OperationalError as exc:  # a read-only or long-locked file still serves its vectors
            self._con.rollback()
            log.warning("Embedding cache %s: could not stamp %d entries as used (%s); a sweep may remove them "
                        "early, and they would be recomputed", self.path, len(keys), exc)

    def put_many(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(keys) != len(vectors):
            raise ValueError(f"expected {len(keys)} vectors of dim {self.dim}, got {vectors.shape}")
        now = int(self.clock())
        rows = []
        for key, vec in zip(keys, vectors):
            blob = vec.tobytes()
            rows.append((key, self.dim, vector_checksum(blob), blob))
        self._con.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?)", rows)
        self._con.executemany("INSERT OR REPLACE INTO used VALUES (?, ?)", [(k, now) for k in keys])
        self._con.commit()

    def __len__(self) -> int:
        return int(self._con.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])

    def sweep(self, max_age_s: float) -> int:
        """Delete the entries no run has written or read for ``max_age_s`` seconds; returns how many.
        The file is compacted (VACUUM) when that freed a quarter of it or more; if another process
        holds it open that waits for the next sweep (the free pages are reused meanwhile)."""
        cutoff = int(self.clock() - max_age_s)
        # An entry without a stamp (none is written without one) is left alone rather than guessed old.
        removed = self._con.execute("DELETE FROM vectors WHERE key IN (SELECT key FROM used WHERE last_used < ?)",
                                    (cutoff,)).rowcount
        self._con.execute("DELETE FROM used WHERE last_used < ?", (cutoff,))
        self._con.commit()
        if removed:
            free = self._con.execute("PRAGMA freelist_count").fetchone()[0]
            pages = self._con.execute("PRAGMA page_count").fetchone()[0]
            try:
                if pages and free >= _VACUUM_FREE_SHARE * pages:
                    self._con.execute("VACUUM")
                # The write-ahead log the run's writes grew is folded back into the file and emptied.
                self._con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.OperationalError as exc:
                log.warning("Embedding cache %s: compaction deferred to a later sweep (%s)", self.path, exc)
        return max(int(removed), 0)


def _last_write(path: Path) -> float | None:
    """When the file (or its write-ahead log) was last written; None once it is gone."""
    stamps = []
    for part in (path, Path(f"{path}-wal")):
        try:
            stamps.append(part.stat().st_mtime)
        except FileNotFoundError:
            pass
    return max(stamps) if stamps else None


def _folder_bytes(folder: Path) -> int:
    """Bytes of the cache files in ``folder`` (a file another process removes meanwhile counts as gone)."""
    total = 0
    for p in folder.iterdir():
        if p.name.startswith(("image-", "text-")):
            try:
                total += p.stat().st_size
            except FileNotFoundError:
                pass
    return total


@dataclass
class SweepReport:
    """What `sweep_cache` removed: entries of the caches in use, and whole files of other encoders."""

    entries_removed: dict[str, int] = field(default_factory=dict)  # per cache file name
    files_removed: list[str] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0

    @property
    def total_entries_removed(self) -> int:
        return sum(self.entries_removed.values())


def sweep_cache(caches: Sequence[EmbeddingCache], max_age_s: float) -> SweepReport:
    """Apply the retention rule to the folder of ``caches`` (the ones a run uses; all in one folder):
    their entries unused for ``max_age_s`` are deleted, and so is every other cache file there —
    another encoder's, or one moved aside as corrupt — that nothing has written for as long."""
    if max_age_s < 0:
        raise ValueError(f"max_age_s must be >= 0, not {max_age_s}")
    if not caches:
        return SweepReport()
    folder = caches[0].path.parent
    if any(c.path.parent != folder for c in caches):
        raise ValueError("sweep_cache takes caches of one folder")
    live = {c.path.name for c in caches}
    report = SweepReport(bytes_before=_folder_bytes(folder))
    for cache in caches:
        report.entries_removed[cache.path.name] = cache.sweep(max_age_s)
    cutoff = caches[0].clock() - max_age_s
    for path in sorted(folder.glob("*.sqlite*")):
        if path.name in live or path.name.endswith(("-wal", "-shm")) or not path.name.startswith(("image-", "text-")):
            continue  # a live cache; a -wal / -shm goes with its file
        last = _last_write(path)
        if last is None or last >= cutoff:  # gone meanwhile (another process's sweep), or used recently
            continue
        for part in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            part.unlink(missing_ok=True)
        report.files_removed.append(path.name)
        log.info("Embedding cache: removed %s (not used for %.0f days)", path, max_age_s / 86400)
    report.bytes_after = _folder_bytes(folder)
    return report
