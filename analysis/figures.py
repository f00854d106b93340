"""Summary figures shared by the report and the walkthrough notebook.

Error bars are the Student-t 95% intervals of :func:`analysis.tables.mean_ci` (not seaborn's
bootstrap), so figures and tables show the same intervals; a bar without whisker had n = 1.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.runs import order_splits


def config_label(frame: pd.DataFrame) -> pd.Series:
    """``mlp / cross<-cnn`` style label of a run's model and distillation mode."""
    teacher = frame["teacher_model"].fillna("").astype(str) if "teacher_model" in frame else ""
    mode = np.where((frame["distill"] != "none") & (teacher != ""), frame["distill"] + "<-" + teacher,
                    np.where(frame.get("role", "") == "teacher", "none (teacher)", frame["distill"]))
    label = frame["model"].astype(str) + " / " + pd.Series(mode, index=frame.index).astype(str)
    return label + objective_suffix(frame) + transfer_suffix(frame)


def transfer_suffix(frame: pd.DataFrame) -> pd.Series:
    """`` +heldout 10000`` for runs trained with transfer inputs beyond the training set."""
    out = pd.Series("", index=frame.index)
    if "transfer" in frame:
        extra = frame["transfer"].fillna("").astype(str) != ""
        out[extra] = " +" + frame.loc[extra, "transfer"].astype(str)
    return out


def objective_suffix(frame: pd.DataFrame) -> pd.Series:
    """`` [hints]`` etc. for distilled runs whose objective is not soft-target KD, else ``""``."""
    out = pd.Series("", index=frame.index)
    if "objective" in frame:
        other = (frame["distill"] != "none") & frame["objective"].notna() & (frame["objective"] != "kd")
        out[other] = " [" + frame.loc[other, "objective"].astype(str) + "]"
    return out


def plot_bars_ci(summary: pd.DataFrame, x: str = "split", hue: str = "config", value: str = "mean",
                 err: str = "half_width", ax=None, ylabel: str | None = None, title: str | None = None):
    """Grouped bars of ``value`` per ``x`` and ``hue`` with ``err`` half-width whiskers."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    xs = order_splits(summary[x].unique()) if x == "split" else sorted(summary[x].unique(), key=str)
    hues = sorted(summary[hue].unique(), key=str)
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(xs) * max(1, len(hues)) ** 0.5 + 2), 3.6))
    width = 0.8 / max(1, len(hues))
    colors = sns.color_palette("tab10", n_colors=max(1, len(hues)))
    for j, h in enumerate(hues):
        d = summary[summary[hue] == h].set_index(x).reindex(xs)
        pos = np.arange(len(xs)) - 0.4 + width * (j + 0.5)
        yerr = d[err].to_numpy(dtype=float)
        ax.bar(pos, d[value].to_numpy(dtype=float), width=width, color=colors[j], label=str(h),
               yerr=np.where(np.isnan(yerr), 0.0, yerr), capsize=2, error_kw={"lw": 0.8})
    ax.set_xticks(np.arange(len(xs)), xs, rotation=30 if len(xs) > 4 else 0, ha="right" if len(xs) > 4 else "center")
    ax.set(ylabel=ylabel or value, title=title or "")
    ax.legend(fontsize=7, loc="best", ncols=1 if len(hues) < 6 else 2)
    return ax


def plot_similarity_heatmap(similarity: pd.DataFrame, labels: dict | None = None, ax=None,
                            title: str | None = None, vmin: float = 0.0, vmax: float = 1.0):
    """Heatmap of a square similarity frame; ``labels`` maps index entries to display names."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    S = similarity.rename(index=labels or {}, columns=labels or {})
    n = len(S)
    if ax is None:
        size = min(18.0, 2.5 + 0.38 * n)
        _, ax = plt.subplots(figsize=(size + 1, size))
    sns.heatmap(S, vmin=vmin, vmax=vmax, cmap="viridis", square=True, ax=ax,
                annot=n <= 12, fmt=".2f", annot_kws={"fontsize": 6}, cbar_kws={"shrink": 0.7})
    ax.tick_params(labelsize=6 if n > 12 else 8)
    ax.set(title=title or "", xlabel="", ylabel="")
    return ax


def plot_severity(sev: pd.DataFrame, hue: str = "config", title: str | None = None):
    """Accuracy against severity, one panel per OOD family (a :func:`analysis.tables.severity_table`
    frame); severity 0 is the clean test split. Whiskers: 95% CI over seeds."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    families = sorted(sev["family"].unique())
    hues = sorted(sev[hue].unique(), key=str)
    colors = dict(zip(hues, sns.color_palette("tab10", n_colors=max(1, len(hues)))))
    fig, axes = plt.subplots(1, len(families), figsize=(3.6 * len(families) + 1.5, 3.6), sharey=True,
                             squeeze=False)
    for ax, fam in zip(axes[0], families):
        d = sev[sev["family"] == fam]
        for h in hues:
            g = d[d[hue] == h].sort_values("severity")
            if g.empty:
                continue
            err = np.nan_to_num(g["half_width"].to_numpy(dtype=float))
            ax.errorbar(g["severity"], g["mean"], yerr=err, marker="o", ms=4, capsize=2, lw=1.2,
                        color=colors[h], label=str(h))
        ax.set(title=fam, xlabel="severity (0 = test)", xticks=sorted(d["severity"].unique()))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    if title:
        fig.suptitle(title)
    return fig
