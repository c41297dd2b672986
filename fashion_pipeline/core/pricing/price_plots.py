"""Diagnostic plots for the best price model (PNG bytes; the asset wraps them as metadata)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fashion_pipeline.core.figures import figure_png


def predicted_vs_actual_png(actual_usd, predicted_usd, source, title: str) -> bytes:
    a, p = np.asarray(actual_usd, float), np.asarray(predicted_usd, float)
    src = np.asarray(source, dtype=object)
    fig = Figure(figsize=(5.5, 5), dpi=90)
    ax = fig.subplots()
    for s in sorted(set(src)):
        m = src == s
        ax.scatter(a[m], p[m], s=4, alpha=0.35, label=f"{s} (n={int(m.sum())})")
    lo, hi = max(min(a.min(), p.min()), 0.01), max(a.max(), p.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="actual price (USD)", ylabel="predicted price (USD)", title=title)
    ax.legend(markerscale=3)
    return figure_png(fig)


def residuals_by_category_png(actual_usd, predicted_usd, category, title: str) -> bytes:
    res = np.log1p(np.asarray(predicted_usd, float)) - np.log1p(np.asarray(actual_usd, float))
    df = pd.DataFrame({"category": pd.Series(category).fillna("(none)").to_numpy(), "residual": res})
    order = df.groupby("category")["residual"].median().sort_values().index.tolist()
    fig = Figure(figsize=(7, 0.35 * len(order) + 1.5), dpi=90)
    ax = fig.subplots()
    ax.boxplot([df.loc[df.category == c, "residual"] for c in order], orientation="horizontal", showfliers=False)
    ax.set_yticks(range(1, len(order) + 1), [f"{c} ({int((df.category == c).sum())})" for c in order])
    ax.axvline(0, color="k", lw=1)
    ax.set(xlabel="log1p(predicted) - log1p(actual)", title=title)
    return figure_png(fig)
