"""What reading one raw file yielded, kept between ingests, so that a re-read after new products
arrive parses and decodes only the files that are new or changed.

A file counts as unchanged while its size and modification time (ns) are — the identity by which
core.raw_files fingerprints a raw folder. The file's stat is taken *before* it is read, so a file
rewritten while it is being read is read again next time. Every entry is tied to a version (the
pipeline's code digest, which covers the readers and the decoding libraries): a different version
starts afresh. Only the files met in the last read are kept, so the memo does not grow with
deleted products.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Callable

from fashion_pipeline.core.atomic import CorruptFileError, atomic_write_parquet, read_parquet_checked, remove_stale_temps

COLUMNS = ["kind", "file", "size", "mtime_ns", "value"]
VERSION_KEY = b"fashion_pipeline.file_memo.version"


class FileMemo:
    """``lookup(kind, file, compute)``: ``compute()``'s JSON-serialisable result for ``file``, reused
    from the last read when the file is unchanged. ``counts`` says how many were reused / read."""

    def __init__(self, path: str | os.PathLike | None, version: str, fresh: bool = False):
        """``fresh``: remember nothing from before (every file read), but still save what this read met."""
        self.path = Path(path) if path is not None else None
        self.version = version
        self._old: dict[tuple[str, str], tuple[int, int, str]] = {}
        self._new: dict[tuple[str, str], tuple[int, int, str]] = {}
        self._lock = threading.Lock()  # lookups run in reader threads
        self.reused = 0
        self.read = 0
        self.note = ("no memo configured" if self.path is None
                     else "reuse turned off: every file read, the memo rewritten" if fresh else self._load())

    def _load(self) -> str:
        if not self.path.exists():
            return f"{self.path}: none yet (first read)"
        try:
            table = read_parquet_checked(self.path, COLUMNS)
        except (CorruptFileError, OSError) as e:
            return f"unreadable, every file read again: {e}"
        found = (table.schema.metadata or {}).get(VERSION_KEY, b"").decode()
        if found != self.version:
            return f"{self.path}: written by other code (version {found[:12] or '?'}), every file read again"
        cols = table.to_pydict()
        self._old = {(k, f): (s, m, v) for k, f, s, m, v in zip(*(cols[c] for c in COLUMNS))}
        return f"{self.path}: {len(self._old)} files remembered"

    def lookup(self, kind: str, file: str | os.PathLike, compute: Callable[[], Any]) -> Any:
        try:
            st = os.stat(file)
        except OSError:  # missing or unreachable: nothing to remember, the reader says why
            return compute()
        key = (kind, str(file))
        old = self._old.get(key)
        if old is not None and old[0] == st.st_size and old[1] == st.st_mtime_ns:
            value, encoded, reused = json.loads(old[2]), old[2], True
        else:
            value = compute()
            encoded, reused = json.dumps(value, ensure_ascii=False), False
        with self._lock:
            self._new[key] = (st.st_size, st.st_mtime_ns, encoded)
            if reused:
                self.reused += 1
            else:
                self.read += 1
        return value

    def known(self, kind: str, file: str | os.PathLike) -> Any | None:
        """What the last read remembered for ``file`` while its size and mtime are unchanged, else None
        (never computes; for a reader of another stage's memo, which it does not save)."""
        try:
            st = os.stat(file)
        except OSError:
            return None
        old = self._old.get((kind, str(file)))
        if old is None or old[0] != st.st_size or old[1] != st.st_mtime_ns:
            return None
        return json.loads(old[2])

    def counts(self) -> dict[str, Any]:
        return {"files_reused": self.reused, "files_read": self.read, "memo": self.note}

    def save(self) -> bool:
        """Write what this read met (atomically); a no-op without a path. A memo that cannot be
        written only costs the next read its speed: the reason goes into ``note``, nothing raises."""
        if self.path is None:
            return False
        try:
            self._write()
        except OSError as e:
            self.note += f"; not saved ({e}): the next read reads every file"
            return False
        return True

    def _write(self) -> None:
        import pyarrow as pa

        keys = sorted(self._new)
        table = pa.table({
            "kind": [k for k, _ in keys], "file": [f for _, f in keys],
            "size": pa.array([self._new[k][0] for k in keys], pa.int64()),
            "mtime_ns": pa.array([self._new[k][1] for k in keys], pa.int64()),
            "value": [self._new[k][2] for k in keys],
        }).replace_schema_metadata({VERSION_KEY: self.version.encode()})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.path.parent)  # a save killed half-way leaves its temporary file
        atomic_write_parquet(table, self.path)
