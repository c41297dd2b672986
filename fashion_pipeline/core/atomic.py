"""Crash-safe file writes and integrity checks for generated files (Parquet, caches, models).

The rule everywhere: write under a temporary sibling name, flush + fsync, then ``os.replace``
onto the target. A process killed at any instant leaves the old file or the new one, never a
half-written target. Temporary names are ``.<target name>.tmp-<pid>``: hidden, and they end in
``tmp-<pid>``, so a glob such as ``*.parquet`` or ``*.json`` never picks one up. A SIGKILL
leaves the temporary behind; :func:`remove_stale_temps` deletes those of dead processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_TMP = re.compile(r"^\..+\.tmp-(\d+)$")


class CorruptFileError(ValueError):
    """A generated file (model artefact, cache entry, Parquet) is unreadable or fails its check."""


def temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable across a power cut (not needed for a mere SIGKILL).
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_output(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``target`` atomically.

    On an exception the temporary is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(target)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_output(target) as tmp:
        tmp.write_bytes(data)


def read_stamped_pickle(path: str | Path, stamp: Any, parse, stale: str = "written by other code") -> tuple[Any, str]:
    """A memo file `write_stamped_pickle` wrote, as ``(parse(payload), "")``, or ``(None, why)``: the file's
    name and "none yet", "<stale>, not read" (its stamp is not ``stamp``: other code or versions wrote it)
    or "unreadable (<error>), rebuilt" (``parse`` raising included). A memo is never worth a failed run."""
    path = Path(path)
    if not path.exists():
        return None, f"{path.name}: none yet"
    try:
        with open(path, "rb") as fh:
            saved = pickle.load(fh)
        if not isinstance(saved, dict) or saved.get("stamp") != stamp:
            return None, f"{path.name}: {stale}, not read"
        return parse(saved), ""
    except Exception as e:
        return None, f"{path.name}: unreadable ({type(e).__name__}: {e}), rebuilt"


def write_stamped_pickle(path: str | Path, stamp: Any, payload: dict) -> str:
    """Write ``payload`` with its ``stamp`` for `read_stamped_pickle`, atomically; "" or, when the write
    failed, "not saved (<error>)": a full disk costs the next run its memo, not this run its result."""
    try:
        atomic_write_bytes(path, pickle.dumps({**payload, "stamp": stamp}, protocol=pickle.HIGHEST_PROTOCOL))
    except OSError as e:
        return f"not saved ({type(e).__name__}: {e})"
    return ""


def atomic_write_json(target: str | Path, obj: Any) -> None:
    atomic_write_bytes(target, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def atomic_write_parquet(table: Any, target: str | Path, row_group_size: int | None = None, **kwargs: Any) -> None:
    """Write a pyarrow Table or pandas DataFrame to Parquet atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with atomic_output(target) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size, **kwargs)


def read_parquet_checked(path: str | Path, required_columns: list[str] | None = None):
    """Read a Parquet file, turning any damage into :class:`CorruptFileError` naming the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise CorruptFileError(f"{path}: unreadable Parquet ({exc}); delete it and re-materialize") from exc
    missing = [c for c in (required_columns or []) if c not in table.column_names]
    if missing:
        raise CorruptFileError(f"{path}: columns {missing} missing; found {table.column_names}")
    return table


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(directory: str | Path) -> list[Path]:
    """Delete temporaries (files or folders) left in ``directory`` by processes that died.

    Only names of the form ``.<name>.tmp-<pid>`` whose pid is not running are removed, so a
    write in progress in another live process on this machine is never disturbed. (A store
    shared between machines over a network file system cannot tell; there, clean by age.)
    """
    import shutil

    directory = Path(directory)
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        m = _TMP.match(p.name)
        if not m or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        removed.append(p)
    return removed
