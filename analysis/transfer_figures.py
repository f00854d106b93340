"""The transfer map's figures, drawn from its tables alone (``transfer_map.csv``, ``teacher_bias.csv``).

* ``transfer_map_<scenario>.png`` -- Δ (distilled − independent) of the scenario's headline metric
  per cell (teacher, T × student epochs, transfer inputs N), every heatmap on one colour scale
  (:func:`analysis.style.symmetric_limit` over all of them); a scenario with a single cell gets the
  Δ of each of its metrics, against the independent and the self-distilled student, instead;
* ``transfer_map_epochs_<scenario>.png`` -- Δ against student epochs, one panel per metric on one
  y scale;
* ``teacher_bias.png`` -- each teacher's own bias (accuracy per shift or attractor count), one
  colour per architecture in every panel.

Labels come from :mod:`analysis.style`. From the committed tables::

    python -m analysis.transfer_figures results     # redraws results/*.png from results/*.csv
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import style
from analysis.bias import bias_measure
from biaskd.scenario import Scenario

CONF = Path(__file__).resolve().parent.parent / "conf"


def cell_note(diff: float, half_width: float, share: float) -> str:
    """A heatmap cell's text: the difference, its interval and the share of the gap, rounded as
    printed first, so that a mean that rounds to zero reads +0.000 (not -0.000)."""
    note = f"{round(diff, 3) + 0.0:+.3f}\n±{half_width:.3f}"
    return note if math.isnan(share) else note + f"\nshare {round(share, 2) + 0.0:.2f}"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _seeds(f: pd.DataFrame) -> str:
    lo, hi = int(f["n_seeds"].min()), int(f["n_seeds"].max())
    return f"n = {hi} seeds" if lo == hi else f"n = {lo}–{hi} seeds"


def _with_seed_range(label: str, n_seeds: pd.Series) -> str:
    """``cnn_gp, T = 5 (n=5)``, or ``(n=1–5)`` where the points of a line have different seed counts."""
    lo, hi = int(n_seeds.min()), int(n_seeds.max())
    return style.with_n(label, lo) if lo == hi else f"{label} (n={lo}–{hi})"


def shared_limit(map_frame: pd.DataFrame, scenarios: dict[str, Scenario]) -> float:
    """The one colour limit of every heatmap: the largest |Δ| (with its interval) of any headline cell."""
    values = []
    for name, scenario in scenarios.items():
        f = map_frame[(map_frame["scenario"] == name) & (map_frame["metric"] == scenario.headline)]
        values += list(f["diff_vs_independent"])
    return style.symmetric_limit(values)


def cell_label(teacher: str, objective: str, temperature: float, sep: str = " = ") -> str:
    """``cnn_gp, T = 5`` for soft targets; ``cnn_gp, hard`` for an objective that reads no T."""
    parts = [teacher] + ([objective] if objective != "kd" else [])
    return ", ".join(parts + ([] if math.isnan(temperature) else [f"T{sep}{temperature:g}"]))


def _objectives(f: pd.DataFrame) -> pd.DataFrame:
    """``f`` with an objective column (maps written before objectives were an axis: kd)."""
    return f.assign(objective=f["objective"].fillna("kd") if "objective" in f else "kd")


def heatmap(map_frame: pd.DataFrame, scenario: Scenario, path: Path, limit: float | None = None,
            metric: str | None = None) -> Path | None:
    """Δ vs independent of the headline metric per cell, annotated with the paired 95% interval
    and the transferred share; colours on ``[-limit, limit]`` (shared by every heatmap)."""
    plt = _plt()
    import seaborn as sns

    metric = metric or scenario.headline
    f = map_frame[(map_frame["scenario"] == scenario.name) & (map_frame["metric"] == metric)].copy()
    if f.empty:
        return None
    if len(f) == 1:  # one cell is no map: the cell's metrics side by side instead
        return effects(map_frame, scenario, path, limit)
    f = _objectives(f)
    f["row"] = [cell_label(*c) for c in zip(f["teacher"], f["objective"], f["temperature"])]
    f["col"] = f["student_epochs"].map(lambda e: f"{e} epochs") + "\nN = " + f["transfer_n"].map(lambda n: f"{n:,}")
    grid = f.pivot(index="row", columns="col", values="diff_vs_independent")
    grid = grid[f.sort_values(["student_epochs", "transfer_n"]).drop_duplicates("col")["col"].tolist()]
    notes = f.assign(note=[cell_note(d, h, s)
                           for d, h, s in zip(f["diff_vs_independent"], f["ci_half_width"], f["transferred_share"])]
                     ).pivot(index="row", columns="col", values="note").loc[grid.index, grid.columns]
    limit = limit or style.symmetric_limit(grid.to_numpy().ravel())
    fig, ax = plt.subplots(figsize=(max(1.5 * grid.shape[1] + 3.0, 5.5), 0.9 * grid.shape[0] + 1.8),
                           layout="constrained")
    sns.heatmap(grid, cmap="RdBu", center=0, vmin=-limit, vmax=limit, ax=ax, linewidths=0.5, linecolor="white",
                cbar_kws={"label": "Δ vs independent student\n(paired by seed)", "shrink": 0.9})
    cmap, norm = ax.collections[0].cmap, ax.collections[0].norm
    for (i, row), (j, col) in ((r, c) for r in enumerate(grid.index) for c in enumerate(grid.columns)):
        value = grid.loc[row, col]
        if isinstance(value, float) and math.isnan(value):
            continue
        ax.text(j + 0.5, i + 0.5, notes.loc[row, col], ha="center", va="center", fontsize=8,
                color=style.text_colour(cmap(norm(value))))
    ax.set_xlabel("student epochs, transfer inputs N")
    ax.set_ylabel("teacher, objective, temperature T" if set(f["objective"]) - {"kd"} else "teacher, temperature T")
    ax.tick_params(axis="y", rotation=0)
    ax.set_title(f"{style.scenario_label(scenario.name)}: {style.metric_label(metric)}\n"
                 f"distilled − independent student ({_seeds(f)}); share = of the teacher − independent gap",
                 fontsize=9)
    return style.save(fig, path)


def effects(map_frame: pd.DataFrame, scenario: Scenario, path: Path, limit: float | None = None) -> Path | None:
    """A scenario's one cell: Δ (± 95% interval) of every metric against the independent and the
    self-distilled student, the headline first."""
    plt = _plt()
    f = _objectives(map_frame[(map_frame["scenario"] == scenario.name) & (map_frame["n_seeds"] > 0)])
    if f.empty:
        return None
    described = list(bias_measure(scenario.measure).metrics)
    order = [scenario.headline, *[m for m in described if m != scenario.headline],
             *sorted(set(f["metric"]) - set(described) - {scenario.headline})]
    f = f.set_index("metric").loc[[m for m in order if m in set(f["metric"])]]
    y = np.arange(len(f))[::-1]
    fig, ax = plt.subplots(figsize=(9.0, 0.45 * len(f) + 1.8), layout="constrained")
    for (col, hw, colour, label, dy) in (("diff_vs_independent", "ci_half_width", style.KINDS["independent"][0],
                                          "− independent student", 0.12),
                                         ("diff_vs_self", "self_ci_half_width", style.KINDS["self-distilled"][0],
                                          "− self-distilled student", -0.12)):
        ax.errorbar(f[col], y + dy, xerr=f[hw].fillna(0), fmt="o", capsize=3, color=colour, label=f"distilled {label}")
    ax.axvline(0, color="0.5", lw=0.8)
    ax.set_yticks(y, [style.metric_label(m) for m in f.index], fontsize=8)
    ax.get_yticklabels()[0].set_fontweight("bold")  # the headline
    span = max(limit or 0, style.symmetric_limit(np.r_[f["diff_vs_independent"] + f["ci_half_width"].fillna(0),
                                                       f["diff_vs_independent"] - f["ci_half_width"].fillna(0),
                                                       f["diff_vs_self"] + f["self_ci_half_width"].fillna(0),
                                                       f["diff_vs_self"] - f["self_ci_half_width"].fillna(0)]))
    ax.set_xlim(-1.05 * span, 1.05 * span)
    ax.set_xlabel("Δ (paired by seed, 95% interval)")
    cell = f.iloc[0]
    share = f["transferred_share"].iloc[0]
    what = cell_label(cell["teacher"], cell["objective"], cell["temperature"]).split(", ", 1)[1:]
    ax.set_title(f"{style.scenario_label(scenario.name)}: {cell['teacher']} → {cell['student']}, "
                 f"{', '.join(what) or 'distilled'}, {int(cell['student_epochs'])} epochs, N = {int(cell['transfer_n']):,} "
                 f"({_seeds(f)})" + ("" if math.isnan(share) else
                                     f"\n{style.metric_label(f.index[0])}: share of the teacher − independent gap "
                                     f"{share:.2f}"), fontsize=9)
    style.legend_outside(ax)
    return style.save(fig, path)


#: markers of the lines of one figure that differ in their number N of transfer inputs
SIZE_MARKERS = ("o", "s", "^", "D", "v", "P")
#: factor between neighbouring lines' x positions on a log epoch axis
EPOCH_DODGE = 1.04


def epochs_figure(map_frame: pd.DataFrame, scenario: Scenario, path: Path) -> Path | None:
    """Δ vs independent against student epochs, one line per teacher and temperature, for the
    scenario's headline and the next two metrics of its measure; one y scale for all panels."""
    plt = _plt()
    described = bias_measure(scenario.measure).metrics
    metrics = [scenario.headline, *[m for m in described if m != scenario.headline][:2]]
    f = map_frame[(map_frame["scenario"] == scenario.name) & map_frame["metric"].isin(metrics)]
    f = _objectives(f)
    line = ["teacher", "objective", "temperature", "transfer_n"]
    f = f[f.groupby(line, dropna=False)["student_epochs"].transform("nunique") > 1]
    if f.empty:
        return None
    metrics = [m for m in metrics if m in set(f["metric"])]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.9 * len(metrics) + 2.0, 3.6), sharex=True, sharey=True,
                             layout="constrained", squeeze=False)
    epochs = sorted(f["student_epochs"].unique())
    sizes = sorted(f["transfer_n"].dropna().unique())
    for ax, metric in zip(axes[0], metrics):
        lines = list(f[f["metric"] == metric].groupby(line, dropna=False))
        for i, ((teacher, objective, t, n), g) in enumerate(lines):
            g = g.sort_values("student_epochs")
            label = cell_label(teacher, objective, t) + (f", N = {n:,}" if len(sizes) > 1 else "")
            # lines of one teacher differ by N in their marker (filled, hollow, ...), and sit a
            # little apart on the (log) epoch axis so that their intervals do not hide each other
            k = sizes.index(n) if n in sizes else 0
            dodge = EPOCH_DODGE ** (i - (len(lines) - 1) / 2)
            ax.errorbar(g["student_epochs"] * dodge, g["diff_vs_independent"], yerr=g["ci_half_width"],
                        marker=SIZE_MARKERS[k % len(SIZE_MARKERS)], mfc="white" if k % 2 else None, capsize=3,
                        color=style.model_colour(teacher), ls="--" if t == 1 else "-",
                        label=_with_seed_range(label, g["n_seeds"]))
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(epochs, [str(e) for e in epochs])
        ax.set_title(style.metric_label(metric), fontsize=9)
        ax.set_xlabel("student epochs")
    students = ", ".join(sorted(f["student"].unique()))
    axes[0][0].set_ylabel(f"distilled − independent {students}\n(paired by seed, 95% interval)")
    fig.suptitle(f"{style.scenario_label(scenario.name)}: does a longer-trained student take more of its teacher?",
                 fontsize=10)
    style.legend_outside(axes[0][-1], title="teacher, temperature" + (", transfer inputs" if len(sizes) > 1 else "")
                         + " (seeds)")
    return style.save(fig, path)


def dose_figure(map_frame: pd.DataFrame, scenario: Scenario, path: Path) -> Path | None:
    """The dose-response of transfer inputs: the headline metric against the number N of transfer
    inputs, for every cell line measured at two or more N. Left, the levels: the distilled student
    (teacher's labels on the N inputs), the self-distilled one and the independent control (gold
    labels on the same inputs), and the teacher; right, the distilled student's paired differences
    from the control and from the self-distilled student, with 95% intervals."""
    plt = _plt()
    metric = scenario.headline
    f = _objectives(map_frame[(map_frame["scenario"] == scenario.name) & (map_frame["metric"] == metric)])
    line = ["teacher", "objective", "temperature", "student_epochs", "student"]
    f = f[f.groupby(line, dropna=False)["transfer_n"].transform("nunique") > 1]
    if f.empty:
        return None
    ns = sorted(f["transfer_n"].unique())
    x_of = {n: i for i, n in enumerate(ns)}
    groups = list(f.groupby(line, dropna=False))
    fig, axes = plt.subplots(len(groups), 2, figsize=(10.5, 3.8 * len(groups)), layout="constrained", squeeze=False)
    for (key, g), (level, diff) in zip(groups, axes):
        teacher, objective, t, epochs, student = key
        g = g.sort_values("transfer_n")
        x = g["transfer_n"].map(x_of)
        lo, hi = int(g["n_seeds"].min()), int(g["n_seeds"].max())
        n = f"{lo}" if lo == hi else f"{lo}–{hi}"  # seeds per N differ: say the range
        for col, kind, label in (("m_teacher", "teacher", f"{teacher} teacher"),
                                 ("m_kd", "distilled", f"distilled from {teacher} (its labels on the N inputs)"),
                                 ("m_self", "self-distilled", f"self-distilled ({student} teacher's labels)"),
                                 ("m_indep", "independent", "independent (gold labels on the N inputs)")):
            level.plot(x, g[col], marker="o", color=style.KINDS[kind][0], ls="--" if kind == "teacher" else "-",
                       label=f"{label} (n={n})")
        level.set_ylabel(style.metric_label(metric))
        for col, hw, kind, label, dx in (("diff_vs_independent", "ci_half_width", "independent",
                                          "distilled − independent (gold labels)", -0.06),
                                         ("diff_vs_self", "self_ci_half_width", "self-distilled",
                                          "distilled − self-distilled", 0.06)):
            diff.errorbar(x + dx, g[col], yerr=g[hw].fillna(0), marker="o", capsize=3, color=style.KINDS[kind][0],
                          label=f"{label} (n={n})")
        diff.axhline(0, color="0.5", lw=0.8)
        diff.set_ylabel("Δ, paired by seed (95% interval)")
        for ax in (level, diff):
            ax.set_xticks(range(len(ns)), [f"{v:,}" for v in ns])
            ax.set_xlabel("transfer inputs N")
            ax.legend(frameon=False, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
        level.set_title(f"{cell_label(teacher, objective, t)} → {student}, {int(epochs)} epochs", fontsize=9)
    fig.suptitle(f"{style.scenario_label(scenario.name)}: {style.metric_label(metric)} against the number of "
                 "transfer inputs", fontsize=10)
    return style.save(fig, path)


def teacher_bias_figure(summary: pd.DataFrame, scenarios: dict[str, Scenario], path: Path) -> Path | None:
    """Each teacher's own bias from ``teacher_bias.csv`` (mean, 95% half width and n per scenario,
    model, measure and x): one panel per scenario and measure, one colour per architecture."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    if summary.empty:
        return None
    panels = [(name, m) for name in sorted(summary["scenario"].unique())
              for m in sorted(summary[summary["scenario"] == name]["measure"].unique())]
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.3 * ncols, 3.5 * nrows), squeeze=False, sharey=True,
                             layout="constrained")
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (scenario, measure) in zip(axes.flat, panels):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        s = summary[(summary["scenario"] == scenario) & (summary["measure"] == measure)]
        for model, g in s.groupby("model"):
            g = g.sort_values("x")
            ax.errorbar(g["x"], g["mean"], yerr=style.clip_interval(g["mean"], g["half_width"], "accuracy"),
                        marker="o", capsize=3, label=style.with_n(model, g["n"].max()), color=style.model_colour(model))
        declared = scenarios.get(scenario)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(bias_measure(declared.measure).x_label if declared else "x")
        ax.set_ylabel(f"teacher's {style.metric_label(measure)}")
        ax.set_title(f"{style.scenario_label(scenario)}", fontsize=9)
        ax.legend(frameon=False, fontsize=8, title="teacher (seeds)", title_fontsize=8)
    fig.suptitle("The teachers' own bias (mean over seeds, 95% interval)", fontsize=10)
    return style.save(fig, path)


def draw_all(map_frame: pd.DataFrame, bias_summary: pd.DataFrame, scenarios: dict[str, Scenario],
             out: Path) -> dict[str, Path]:
    """Every figure of the map into ``out``, the heatmaps on one colour scale."""
    written = {}
    limit = shared_limit(map_frame, scenarios)
    for name, scenario in sorted(scenarios.items()):
        for key, p in ((f"heatmap_{name}", heatmap(map_frame, scenario, out / f"transfer_map_{name}.png", limit)),
                       (f"epochs_{name}", epochs_figure(map_frame, scenario, out / f"transfer_map_epochs_{name}.png")),
                       (f"dose_{name}", dose_figure(map_frame, scenario, out / f"transfer_map_dose_{name}.png"))):
            if p:
                written[key] = p
    p = teacher_bias_figure(bias_summary, scenarios, out / "teacher_bias.png")
    if p:
        written["teacher_bias_figure"] = p
    return written


# -- from the committed tables ----------------------------------------------------------------------
def declared_scenarios(names: Sequence[str]) -> dict[str, Scenario]:
    """The scenarios ``names`` as the config declares them (a task's ``bias``, a recipe's
    ``scenario`` rename of its task, ``<name>_lm`` for a task's LM setup), for figures drawn
    from tables that carry only the scenario's name."""
    import yaml

    tasks, found = {}, {}
    for path in sorted((CONF / "task").glob("*.yaml")):
        bias = (yaml.safe_load(path.read_text()) or {}).get("bias") or {}
        if bias.get("scenario"):
            tasks[path.stem] = Scenario(bias["scenario"], bias.get("measure", "generic"), bias.get("headline", "test"))
            found[bias["scenario"]] = tasks[path.stem]
    for path in sorted((CONF / "experiment").glob("*.yaml")):
        recipe = yaml.safe_load(path.read_text()) or {}
        task = next((d["override /task"] for d in recipe.get("defaults") or [] if isinstance(d, dict)
                     and "override /task" in d), None)
        if recipe.get("scenario") and task in tasks:
            found[recipe["scenario"]] = Scenario(recipe["scenario"], tasks[task].measure, tasks[task].headline)
    out = {}
    for name in names:
        base = found.get(name) or found.get(name[: -len("_lm")] if name.endswith("_lm") else "")
        out[name] = Scenario(name, base.measure, base.headline) if base else Scenario(name)
    return out


def from_tables(folder: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """The figures of a folder's tables. Each scenario is drawn as the folder's ``scenarios.csv``
    declares it (written beside the map since it has been; a scenario renamed in a combined table
    keeps its measure and headline); scenarios it does not name, and folders without it, as the
    config declares their name (:func:`declared_scenarios`)."""
    from biaskd.errors import ArtifactError

    folder = Path(folder)
    if not (folder / "transfer_map.csv").is_file():
        raise ArtifactError(f"{folder / 'transfer_map.csv'}: missing (python -m analysis.transfer_map writes it)")
    out = Path(out or folder)
    out.mkdir(parents=True, exist_ok=True)
    map_frame = pd.read_csv(folder / "transfer_map.csv")
    bias = pd.read_csv(folder / "teacher_bias.csv") if (folder / "teacher_bias.csv").is_file() else pd.DataFrame()
    names = sorted(set(map_frame["scenario"]) | (set(bias["scenario"]) if not bias.empty else set()))
    return draw_all(map_frame, bias, folder_scenarios(folder, names), out)


def folder_scenarios(folder: str | Path, names: Sequence[str]) -> dict[str, Scenario]:
    """The scenarios ``names`` of a folder of tables: as its ``scenarios.csv`` declares them, else
    as the config declares their name (:func:`declared_scenarios`)."""
    from biaskd.errors import ArtifactError
    from biaskd.scenario import read_table

    folder = Path(folder)
    declared = read_table(folder / "scenarios.csv") if (folder / "scenarios.csv").is_file() else {}
    for name, scenario in list(declared.items()):
        try:
            bias_measure(scenario.measure)
        except ArtifactError:  # a user's own measure, not importable here: its headline still leads
            declared[name] = Scenario(name, "generic", scenario.headline)
    scenarios = declared_scenarios([n for n in names if n not in declared])
    scenarios.update({n: declared[n] for n in names if n in declared})
    return scenarios


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.transfer_figures", description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a folder with transfer_map.csv (and teacher_bias.csv)")
    parser.add_argument("--out", help="folder for the figures (default: the same folder)")
    args = parser.parse_args(argv)
    for name, path in from_tables(args.folder, args.out).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    from analysis.command import run

    sys.exit(run(main))
