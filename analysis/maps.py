"""Maps of model space: MDS of pairwise (dis)similarities, and training paths through it.

Each model (or each model x training step) becomes a point; points are placed with metric
MDS on ``1 - similarity`` (scikit-learn, dissimilarity precomputed), so models that compute
similar functions or representations land close. Training paths put every saved step of many
runs into ONE map, which is what lets one see a distilled student's path bend toward its
teacher's solution.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.manifold import MDS

from biaskd.errors import ArtifactError

from analysis.agreement import LN2, check_same_examples, from_logits, js_divergence, top1_agreement
from analysis.runs import Run
from analysis.similarity import features_similarity
from analysis.style import Style, legend_outside

RUN_INFO = ["task", "model", "role", "distill", "objective", "teacher_model", "seed"]


def _mds(seed: int, n_components: int) -> MDS:
    params = inspect.signature(MDS).parameters
    kw = {"n_components": n_components, "random_state": seed, "n_init": 4, "max_iter": 500}
    if "metric_mds" in params:  # scikit-learn >= 1.8 renamed dissimilarity -> metric
        kw.update(metric="precomputed", metric_mds=True, init="random")
    else:
        kw.update(dissimilarity="precomputed", metric=True)
    return MDS(**kw)


def dissimilarity(similarity: pd.DataFrame) -> np.ndarray:
    """``1 - similarity``, symmetrised, clipped to >= 0, zero diagonal; NaN is an error."""
    S = similarity.to_numpy(dtype=float)
    if S.ndim != 2 or S.shape[0] != S.shape[1] or list(similarity.index) != list(similarity.columns):
        raise ValueError("similarity must be a square frame with the same labels on both axes")
    if np.isnan(S).any():
        raise ValueError("similarity has NaN entries (e.g. a constant representation); cannot map")
    D = 1.0 - (S + S.T) / 2.0
    D = np.clip(D, 0.0, None)
    np.fill_diagonal(D, 0.0)
    return D


def mds_map(similarity: pd.DataFrame, seed: int = 0, n_components: int = 2) -> pd.DataFrame:
    """MDS coordinates (columns ``x``, ``y``) for the labels of a similarity frame.

    Deterministic for a given ``seed``. With one point it sits at the origin; MDS coordinates
    are defined up to rotation and reflection, so only distances are meaningful.
    """
    D = dissimilarity(similarity)
    labels = list(similarity.index)
    cols = ["x", "y", "z"][:n_components] if n_components <= 3 else [f"c{i}" for i in range(n_components)]
    if len(labels) == 1:
        coords = np.zeros((1, n_components))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            coords = _mds(seed, n_components).fit_transform(D)
    out = pd.DataFrame(coords, columns=cols)
    out.insert(0, "label", labels)
    return out


def run_map(runs: Sequence[Run], similarity: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """:func:`mds_map` of a run-indexed similarity frame, with run columns attached."""
    m = mds_map(similarity, seed).rename(columns={"label": "run"})
    info = pd.DataFrame([{"run": r.run_id, **{k: getattr(r, k) for k in RUN_INFO}} for r in runs])
    return m.merge(info, on="run", how="left")


def prediction_similarity(runs: Sequence[Run], split: str = "test", measure: str = "js") -> pd.DataFrame:
    """Pairwise similarity of the runs' predictions on ``split``, indexed by run_id.

    ``measure="js"``: ``1 - mean JS divergence / ln 2`` (in [0, 1], 1 = identical output
    distributions); ``"agreement"``: top-1 agreement. Example ids must match
    (:class:`ArtifactError` otherwise).
    """
    if measure not in ("js", "agreement"):
        raise ValueError("measure must be 'js' or 'agreement'")
    runs = list(runs)
    outs = [r.outputs(split) for r in runs]
    for o in outs[1:]:
        check_same_examples(outs[0], o)
    probs = [from_logits(o.logits) for o in outs]
    m = len(runs)
    S = np.eye(m)
    for i in range(m):
        for j in range(i + 1, m):
            if measure == "js":
                S[i, j] = 1.0 - js_divergence(probs[i], probs[j]) / LN2
            else:
                S[i, j] = top1_agreement(probs[i], probs[j])
            S[j, i] = S[i, j]
    ids = [r.run_id for r in runs]
    return pd.DataFrame(S, index=ids, columns=ids)


def training_paths(runs: Sequence[Run], measure: str = "linear_cka", seed: int = 0,
                   steps: Sequence[int] | None = None, include_final: bool = True) -> pd.DataFrame:
    """All (run, step) probe representations of ``runs`` placed in one MDS map.

    Uses every ``features/step_*.npz`` of each run (or only ``steps``), plus ``final.npz``
    unless its step is already among them. Returns a frame with columns run, step, x, y,
    role, distill, model, task, teacher_model, seed, is_final, ordered by run then step.
    A run without step features contributes only its final point. Probe sets must match
    across all runs (:class:`ArtifactError` names the two runs otherwise).
    """
    feats, keys = [], []
    for run in runs:
        have = run.feature_steps()
        use = [s for s in have if steps is None or s in steps]
        for s in use:
            feats.append(run.features(s))
            keys.append((run, s, False))
        if include_final and run.has_features("final"):
            f = run.features("final")
            if f.step in use:  # the final model was also saved as a step: mark that point
                i = len(keys) - len(use) + use.index(f.step)
                keys[i] = (run, f.step, True)
            else:
                feats.append(f)
                keys.append((run, f.step, True))
    if not feats:
        raise ArtifactError("training_paths: none of the runs has probe features")
    labels = [f"{r.run_id}@{s}" for r, s, _ in keys]
    if len(set(labels)) != len(labels):
        raise ArtifactError("training_paths: duplicate (run, step) points; are two runs the same run_id?")
    sim = features_similarity(feats, labels, measure)
    coords = mds_map(sim, seed)
    rows = [{"run": r.run_id, "step": s, "is_final": fin, "role": r.role, "distill": r.distill,
             "model": r.model, "task": r.task, "teacher_model": r.teacher_model, "seed": r.seed,
             "objective": r.objective}
            for r, s, fin in keys]
    out = pd.concat([pd.DataFrame(rows), coords[["x", "y"]]], axis=1)
    return out.sort_values(["run", "step"], kind="stable").reset_index(drop=True)


def mode_label(frame: pd.DataFrame, style: Style | None = None) -> pd.Series:
    """The configuration label of every row (:mod:`analysis.style`), for legends."""
    return (style or Style(frame)).labels(frame)


def _styled(frame: pd.DataFrame, hue: str, style: Style | None) -> tuple[pd.DataFrame, list, dict]:
    """A copy of ``frame`` (with its configuration labels when ``hue="config"``), the legend order
    of its ``hue`` values and their colours."""
    d = frame.copy()
    style = style or Style(d)
    if hue == "config":
        d["config"] = style.labels(d)
    order = style.order(d[hue].unique())
    return d, order, style.palette(order)


def plot_map(coords: pd.DataFrame, hue: str = "config", ax=None, annotate: bool = False,
             title: str | None = None, style: Style | None = None):
    """Scatter of a :func:`run_map` frame, one colour per configuration (``hue="config"``; colours,
    labels and legend order from ``style``), teachers as large stars; the legend outside the axes."""
    import matplotlib.pyplot as plt

    d, order, palette = _styled(coords, hue, style)
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4.5))
    for label in order:
        g = d[d[hue] == label]
        teacher = "role" in g and (g["role"] == "teacher").all()
        ax.scatter(g["x"], g["y"], s=260 if teacher else 80, marker="*" if teacher else "o", color=palette[label],
                   edgecolor="white", linewidth=0.6, label=label, zorder=3 if teacher else 2)
    if annotate and "seed" in d:
        for _, r in d.iterrows():
            ax.annotate(f"s{r['seed']}", (r["x"], r["y"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="MDS 1", ylabel="MDS 2", title=title or "")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.25)
    legend_outside(ax)
    return ax


def plot_training_paths(paths: pd.DataFrame, hue: str = "config", ax=None, title: str | None = None,
                        style: Style | None = None):
    """Every run's saved steps as points, joined by a faint line from its first saved step
    (open circle) to its final model (star), coloured by configuration. Steps are saved at
    0, 1, 2, 4, … (sparse late in training), so the points, not the line, are the data."""
    import matplotlib.pyplot as plt

    d, order, palette = _styled(paths, hue, style)
    if ax is None:
        _, ax = plt.subplots(figsize=(7.0, 4.8))
    for run, g in d.groupby("run", sort=True):
        g = g.sort_values("step")
        c = palette[g[hue].iloc[0]]
        ax.plot(g["x"], g["y"], "-", color=c, alpha=0.35, lw=0.9, zorder=1)
        ax.scatter(g["x"].iloc[1:-1], g["y"].iloc[1:-1], color=c, s=14, alpha=0.85, lw=0, zorder=2)
        ax.plot(g["x"].iloc[0], g["y"].iloc[0], "o", color=c, ms=5, mfc="white", zorder=3)
        ax.plot(g["x"].iloc[-1], g["y"].iloc[-1], "*", color=c, ms=12, mec="white", mew=0.5, zorder=4)
    for label in order:
        ax.plot([], [], "o", color=palette[label], ms=5, label=label)
    ax.plot([], [], "o", color="gray", mfc="white", label="first saved step")
    ax.plot([], [], "*", color="gray", ms=10, label="final model")
    legend_outside(ax)
    ax.set(xlabel="MDS 1", ylabel="MDS 2", title=title or "")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.25)
    return ax
