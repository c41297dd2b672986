"""Content-addressed embedding cache: one SQLite file per (modality, encoder identity).

Key = sha256 of the image bytes or of the text; the encoder identity is part of the file name
and stored inside the file, so a changed encoder (weights, preprocessing, precision) starts
from an empty cache and nothing stale is served. Each vector is stored with its dimension and
a blake2b checksum; an entry that fails either check is deleted and recomputed, never served.
SQLite gives atomic commits (a killed run leaves whole batches) and indexed lookups, so a
chunk of rows can be fetched without loading the whole cache into memory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_SCHEMA_VERSION = "1"
_LOOKUP_CHUNK = 500  # SQLite's bound-parameter limit is 999 on old builds


def vector_checksum(blob: bytes) -> str:
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def cache_file(cache_dir: str | os.PathLike, modality: str, identity: str) -> Path:
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:20]
    return Path(cache_dir) / f"{modality}-{digest}.sqlite"


class EmbeddingCache:
    """Vectors of one modality for one encoder identity."""

    def __init__(self, cache_dir: str | os.PathLike, modality: str, identity: str, dim: int):
        self.path = cache_file(cache_dir, modality, identity)
        self.identity = identity
        self.dim = int(dim)
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
        con.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
        con.execute(
            "CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, dim INTEGER NOT NULL, "
            "checksum TEXT NOT NULL, vec BLOB NOT NULL)"
        )
        meta = dict(con.execute("SELECT k, v FROM meta").fetchall())
        expected = {"schema": _SCHEMA_VERSION, "identity": self.identity, "dim": str(self.dim)}
        if not meta:
            con.executemany("INSERT INTO meta VALUES (?, ?)", list(expected.items()))
            con.commit()
        elif meta != expected:
            # Same file name but different content: a hash collision or a tampered file. Never serve it.
            con.close()
            raise sqlite3.DatabaseError(f"cache metadata {meta} does not match {expected}")
        cols = [r[1] for r in con.execute("PRAGMA table_info(vectors)").fetchall()]
        if cols != ["key", "dim", "checksum", "vec"]:
            con.close()
            raise sqlite3.DatabaseError(f"unexpected cache columns {cols}")
        return con

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

    def validate(self, keys: Iterable[str]) -> tuple[set[str], int]:
        """Keys whose cached vector is intact; corrupt entries are deleted. Returns (valid, n_corrupt)."""
        unique = sorted(set(keys))
        valid: set[str] = set()
        corrupt: list[str] = []
        for key, dim, checksum, blob in self._rows(unique):
            if self._decode(dim, checksum, blob) is None:
                corrupt.append(key)
            else:
                valid.add(key)
        if corrupt:
            log.warning("Embedding cache %s: %d corrupt entries deleted, will be recomputed", self.path, len(corrupt))
            self._con.executemany("DELETE FROM vectors WHERE key = ?", [(k,) for k in corrupt])
            self._con.commit()
        return valid, len(corrupt)

    def get_many(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """Intact vectors for the keys present (entries failing the checks are left out)."""
        out: dict[str, np.ndarray] = {}
        for key, dim, checksum, blob in self._rows(sorted(set(keys))):
            vec = self._decode(dim, checksum, blob)
            if vec is not None:
                out[key] = vec
        return out

    def put_many(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(keys) != len(vectors):
            raise ValueError(f"expected {len(keys)} vectors of dim {self.dim}, got {vectors.shape}")
        rows = []
        for key, vec in zip(keys, vectors):
            blob = vec.tobytes()
            rows.append((key, self.dim, vector_checksum(blob), blob))
        self._con.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?)", rows)
        self._con.commit()

    def __len__(self) -> int:
        return int(self._con.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])
