"""Check that product images exist and decode, in parallel threads (PIL releases the GIL)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from fashion_pipeline.core.readers.file_memo import FileMemo
from fashion_pipeline.core.threads import map_chunked
from fashion_pipeline.core.reports import DropReport

# Guard against decompression bombs in user uploads; product photos are far smaller.
Image.MAX_IMAGE_PIXELS = 50_000_000


def image_status(path: str | Path | None) -> str:
    """'ok', 'missing', or 'corrupt' (cannot be fully decoded: truncated, not an image...)."""
    if path is None:
        return "missing"
    p = Path(path)
    if not p.is_file():
        return "missing"
    try:
        with Image.open(p) as im:
            im.load()  # a full decode: verify() alone lets truncated JPEGs through
        return "ok"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return "corrupt"


def check_images(paths: list[str | None], report: DropReport, workers: int = 4,
                 memo: FileMemo | None = None) -> list[str | None]:
    """Return the paths with unreadable ones replaced by None, counting each by reason.

    With a ``memo`` (core.readers.file_memo), an image unchanged since the last check keeps its
    status without being decoded again."""
    def status_of(path):
        if memo is None or path is None:
            return image_status(path)
        return memo.lookup("image", path, lambda: image_status(path))

    statuses = map_chunked(status_of, paths, workers)
    out: list[str | None] = []
    for path, status in zip(paths, statuses):
        if status == "ok":
            out.append(str(path))
        else:
            report.add(f"image_{status}", path)
            out.append(None)
    return out
