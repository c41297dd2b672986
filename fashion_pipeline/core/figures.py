"""Small, dependency-light plots rendered to PNG bytes for Dagster metadata and reports.

Uses matplotlib's non-interactive Agg backend through an explicit Figure (no pyplot global
state), so plotting is safe inside worker threads and processes.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def figure_png(fig: Figure) -> bytes:
    """PNG bytes of a Figure built without pyplot (the one plotting idiom of this package)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
    return buf.getvalue()


def png_markdown(png: bytes, alt: str = "plot") -> str:
    """Markdown that embeds the PNG inline (for ``MetadataValue.md``)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def confusion_matrix_png(
    y_true: Sequence, y_pred: Sequence, labels: Sequence[str] | None = None, title: str = "", normalize: bool = True
) -> bytes:
    """Row-normalised (recall per true class) confusion matrix heat map, counts annotated."""
    from sklearn.metrics import confusion_matrix

    yt = np.asarray(y_true, dtype=object)
    yp = np.asarray(y_pred, dtype=object)
    if labels is None:
        labels = sorted(set(yt.tolist()) | set(yp.tolist()))
    labels = list(labels)
    cm = confusion_matrix(yt, yp, labels=labels)
    shown = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize else cm
    k = len(labels)
    size = max(4.0, 0.55 * k + 2)
    fig = Figure(figsize=(size, size * 0.85), dpi=90)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(k), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(k), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if shown[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title, fontsize=9)
    return figure_png(fig)


def scatter_2d_png(xy: np.ndarray, labels: Sequence, title: str = "", max_points: int = 5000, seed: int = 0) -> bytes:
    """2-D scatter coloured by label (at most ``max_points`` points, seeded sample)."""
    xy = np.asarray(xy, dtype=float)
    labels = np.asarray(labels, dtype=object).astype(str)
    if len(xy) > max_points:
        idx = np.random.default_rng(seed).choice(len(xy), size=max_points, replace=False)
        xy, labels = xy[idx], labels[idx]
    fig = Figure(figsize=(6.5, 5), dpi=90)
    ax = fig.add_subplot(1, 1, 1)
    uniq = sorted(set(labels.tolist()))
    cmap = __import__("matplotlib").colormaps["tab20"]
    for i, lab in enumerate(uniq):
        m = labels == lab
        ax.scatter(xy[m, 0], xy[m, 1], s=4, alpha=0.6, color=cmap(i % 20), label=lab)
    if len(uniq) <= 20:
        ax.legend(fontsize=6, markerscale=3, loc="best", frameon=False)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return figure_png(fig)

