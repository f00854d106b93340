"""Summary figures shared by the report and the walkthrough notebook.

Error bars are the Student-t 95% intervals of :func:`analysis.tables.mean_ci` (not seaborn's
bootstrap), so figures and tables show the same intervals, clipped to the metric's range (with two
seeds a t interval easily runs past 0 or 1); a bar without whisker had n = 1. Labels, colours and
legend order come from :mod:`analysis.style`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.runs import order_splits
from analysis.style import METRIC_LABELS, Style, clip_interval, legend_outside, metric_label, metric_limits, split_label, \
    with_n


def config_label(frame: pd.DataFrame, style: Style | None = None) -> pd.Series:
    """The configuration label of every row (``mlp distilled from cnn``; see :mod:`analysis.style`),
    with α / T where they vary among the rows' otherwise equal configurations."""
    return (style or Style(frame)).labels(frame)


def _style_for(labels, style: Style | None) -> tuple[list[str], dict[str, str]]:
    style = style or Style()
    order = style.order(labels)
    return order, style.palette(order)


def plot_bars_ci(summary: pd.DataFrame, x: str = "split", hue: str = "config", value: str = "mean",
                 err: str = "half_width", ax=None, ylabel: str | None = None, title: str | None = None,
                 metric: str | None = None, style: Style | None = None, legend: bool = True,
                 order: Sequence[str] | None = None):
    """Grouped bars of ``value`` per ``x`` and ``hue`` with ``err`` half-width whiskers, clipped
    to the range of ``metric`` (default: ``ylabel`` when it names one), whose range the y axis
    also shows; colours and legend order from ``style`` (or ``order``: e.g. each distilled student
    beside its control); splits and metrics by their readable names (:mod:`analysis.style`); each
    legend entry with its number of runs (``n`` of the summary); the legend outside the axes."""
    import matplotlib.pyplot as plt

    metric = metric or ylabel
    xs = order_splits(summary[x].unique()) if x == "split" else sorted(summary[x].unique(), key=str)
    hues, colors = _style_for(summary[hue].unique(), style)
    if order is not None:
        hues = [h for h in order if h in set(hues)] + [h for h in hues if h not in set(order)]
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(xs) * max(1, len(hues)) ** 0.5 + 2), 3.6))
    width = 0.8 / max(1, len(hues))
    ends = [0.0]  # bars start at 0: the axis shows it, and every (clipped) whisker
    for j, h in enumerate(hues):
        d = summary[summary[hue] == h].set_index(x).reindex(xs)
        pos = np.arange(len(xs)) - 0.4 + width * (j + 0.5)
        mean = d[value].to_numpy(dtype=float)
        yerr = clip_interval(mean, d[err].to_numpy(dtype=float), metric)
        ends += list(mean - yerr[0]) + list(mean + yerr[1])
        n = d["n"].max() if "n" in d else None
        ax.bar(pos, mean, width=width, color=colors[h], label=with_n(str(h), n), yerr=yerr, capsize=2,
               error_kw={"lw": 0.8, "ecolor": "#222222"})
    names = [split_label(v) for v in xs] if x == "split" else [str(v) for v in xs]
    ax.set_xticks(np.arange(len(xs)), names, rotation=30 if len(xs) > 4 else 0, ha="right" if len(xs) > 4 else "center")
    limits = metric_limits(metric, ends)
    if limits:
        ax.set_ylim(*limits)
    if limits and limits[0] < 0 < limits[1]:
        ax.axhline(0, color="#444444", lw=0.6)
    ax.set(ylabel=metric_label(ylabel) if ylabel in METRIC_LABELS else (ylabel or value), title=title or "")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if legend:
        legend_outside(ax)
    return ax


def plot_similarity_heatmap(similarity: pd.DataFrame, labels: dict | None = None, ax=None,
                            title: str | None = None, vmin: float = 0.0, vmax: float = 1.0,
                            measure: str = "similarity"):
    """Heatmap of a square similarity frame; ``labels`` maps index entries to display names; the
    colour bar is labelled with ``measure`` (its readable name)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    S = similarity.rename(index=labels or {}, columns=labels or {})
    n = len(S)
    if ax is None:
        size = min(18.0, 2.5 + 0.38 * n)
        _, ax = plt.subplots(figsize=(size + 1, size))
    sns.heatmap(S, vmin=vmin, vmax=vmax, cmap="viridis", square=True, ax=ax, linewidths=0.3, linecolor="white",
                annot=n <= 12, fmt=".2f", annot_kws={"fontsize": 9 if n <= 8 else 7},
                cbar_kws={"shrink": 0.7, "label": f"{metric_label(measure)} of probe features"})
    ax.tick_params(labelsize=6 if n > 12 else 8)
    ax.set(title=title or "", xlabel="", ylabel="")
    return ax


def plot_severity(sev: pd.DataFrame, hue: str = "config", title: str | None = None, style: Style | None = None,
                  metric: str = "accuracy"):
    """Accuracy against severity, one panel per OOD family (a :func:`analysis.tables.severity_table`
    frame); severity 0 is the clean test split. Bands: 95% CI over seeds, clipped to [0, 1]."""
    import matplotlib.pyplot as plt

    families = sorted(sev["family"].unique())
    hues, colors = _style_for(sev[hue].unique(), style)
    fig, axes = plt.subplots(1, len(families), figsize=(3.4 * len(families) + 2.8, 3.4), sharey=True,
                             squeeze=False)
    for ax, fam in zip(axes[0], families):
        d = sev[sev["family"] == fam]
        for h in hues:
            g = d[d[hue] == h].sort_values("severity")
            if g.empty:
                continue
            mean = g["mean"].to_numpy(dtype=float)
            lo_hi = clip_interval(mean, g["half_width"].to_numpy(dtype=float), metric)
            ax.plot(g["severity"], mean, marker="o", ms=4, lw=1.5, color=colors[h],
                    label=with_n(str(h), g["n"].max() if "n" in g else None))
            ax.fill_between(g["severity"], mean - lo_hi[0], mean + lo_hi[1], color=colors[h], alpha=0.18, lw=0)
        ax.set(title=fam, xlabel="severity (0 = test)", xticks=sorted(d["severity"].unique()))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric_label(metric))
    axes[0][0].set_ylim(*(metric_limits(metric, sev["mean"]) or (None, None)))
    legend_outside(axes[0][-1])
    if title:
        fig.suptitle(title)
    return fig
