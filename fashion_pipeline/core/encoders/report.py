"""A 2-D projection plot of embeddings for asset metadata (PCA; no fitting state kept)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from fashion_pipeline.core.figures import figure_png, png_markdown


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    """Project rows onto their first two principal components (rows with NaN must be removed first)."""
    x = np.asarray(vectors, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    if len(x) < 2:
        return np.zeros((len(x), 2))
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    comps = vt[:2]
    if comps.shape[0] < 2:
        comps = np.vstack([comps, np.zeros_like(comps[:1])])
    return x @ comps.T


def projection_png(vectors: np.ndarray, labels: Sequence[str], title: str) -> bytes:
    """PCA scatter coloured by label, as PNG bytes. NaN rows (missing embeddings) are skipped."""
    from matplotlib import colormaps

    vectors = np.asarray(vectors, dtype=np.float32)
    labels = np.asarray([str(v) for v in labels])
    keep = ~np.isnan(vectors).any(axis=1)
    xy = pca_2d(vectors[keep]) if keep.any() else np.zeros((0, 2))
    labels = labels[keep]
    fig = Figure(figsize=(6.5, 5), dpi=80)
    ax = fig.subplots()
    cmap = colormaps["tab20"]
    for i, lab in enumerate(sorted(set(labels.tolist()))):
        sel = labels == lab
        ax.scatter(xy[sel, 0], xy[sel, 1], s=6, alpha=0.6, color=cmap(i % 20), label=f"{lab} ({int(sel.sum())})")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    if len(labels):
        ax.legend(fontsize=6, markerscale=2, loc="best", frameon=False)
    fig.tight_layout()
    return figure_png(fig)


def projection_markdown(vectors: np.ndarray, labels: Sequence[str], title: str) -> str:
    """Markdown with the plot inlined as a base64 PNG (for dagster MetadataValue.md)."""
    return png_markdown(projection_png(vectors, labels, title), title)
