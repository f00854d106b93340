"""The same cells in two or more scenarios, side by side (e.g. the same vision transfer at 4,500
and at 60,000 training digits), drawn from ``transfer_map.csv`` alone.

A cell (teacher, student, student epochs, temperature, transfer inputs N, objective) is drawn
when every named scenario has it. One row per such cell: left, the levels of the headline metric
(the teacher, the independent, self-distilled and distilled students; mean over seeds) in each
scenario; right, Δ distilled − independent of each metric the scenarios share, with the paired
95% interval of each scenario side by side.

    python -m analysis.compare_figure results vision vision_60k   # -> results/transfer_map_compare_vision_vs_vision_60k.png
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import style
from analysis.transfer_figures import _objectives, _plt, cell_label
from biaskd.errors import ArtifactError

CELL = ["teacher", "student", "student_epochs", "temperature", "transfer_n", "objective"]
LEVELS = (("m_teacher", "teacher"), ("m_indep", "independent"), ("m_self", "self-distilled"), ("m_kd", "distilled"))


def _key(row) -> tuple:
    return tuple(-1.0 if c == "temperature" and math.isnan(row[c]) else row[c] for c in CELL)


def shared_cells(map_frame: pd.DataFrame, names: Sequence[str]) -> list[tuple]:
    """The cells every scenario of ``names`` has, ordered by teacher, student epochs, then T from high to low."""
    f = _objectives(map_frame)
    keys = [{_key(r) for _, r in f[f["scenario"] == name].iterrows()} for name in names]
    common = set.intersection(*keys) if keys else set()
    return sorted(common, key=lambda k: (str(k[0]), str(k[1]), k[2], -k[3], k[4], str(k[5])))


def shared_metrics(map_frame: pd.DataFrame, names: Sequence[str], headline: str) -> list[str]:
    """The metrics every scenario has, the headline first, then in the first scenario's order."""
    per = [list(dict.fromkeys(map_frame[map_frame["scenario"] == n]["metric"])) for n in names]
    common = [m for m in per[0] if all(m in p for p in per[1:])]
    return [headline, *[m for m in common if m != headline]] if headline in common else common


def compare_figure(map_frame: pd.DataFrame, names: Sequence[str], path: Path, headline: str | None = None,
                   metrics: Sequence[str] | None = None) -> Path:
    """Draw the shared cells of the scenarios ``names`` (at least two) into ``path``."""
    if len(names) < 2:
        raise ValueError("compare_figure: name at least two scenarios")
    f = _objectives(map_frame)
    missing = [n for n in names if n not in set(f["scenario"])]
    if missing:
        raise ArtifactError(f"transfer map: no rows of scenario(s) {', '.join(missing)} "
                            f"(it has {', '.join(sorted(set(f['scenario'])))})")
    cells = shared_cells(f, names)
    if not cells:
        raise ArtifactError(f"transfer map: scenarios {', '.join(names)} share no cell "
                            f"(same {', '.join(CELL)})")
    if headline is None:  # as the config declares the first scenario's name
        from analysis.transfer_figures import declared_scenarios

        headline = declared_scenarios([names[0]])[names[0]].headline
    metrics = list(metrics or shared_metrics(f, names, headline))
    plt = _plt()
    colours = [style.KINDS["independent"][0], style.KINDS["distilled"][0], style.KINDS["self-distilled"][0],
               style.KINDS["other"][0], style.KINDS["hints"][0]]
    fig, axes = plt.subplots(len(cells), 2, figsize=(12.0, 3.4 * len(cells) + 0.6), layout="constrained",
                             squeeze=False, gridspec_kw={"width_ratios": [1.0, 1.6]})
    for ax in axes[1:].ravel():  # one scale for every cell's levels, one for every cell's Δ
        ax.sharey(axes[0, 0] if ax in axes[:, 0] else axes[0, 1])
    width = 0.8 / len(names)
    for cell, (level, diff) in zip(cells, axes):
        rows = {name: f[(f["scenario"] == name) & f.apply(lambda r: _key(r) == cell, axis=1)].set_index("metric")
                for name in names}
        # left: the headline's levels per scenario
        for i, name in enumerate(names):
            r = rows[name].loc[headline] if headline in rows[name].index else None
            if r is None:
                continue
            for j, (col, kind) in enumerate(LEVELS):
                level.bar(j + (i - (len(names) - 1) / 2) * width, r[col], width=width * 0.95,
                          color=colours[i % len(colours)], alpha=0.35 + 0.65 * (i + 1) / len(names))
        level.set_xticks(range(len(LEVELS)), [kind for _, kind in LEVELS], fontsize=8)
        level.set_ylabel(style.metric_label(headline))
        lim = style.metric_limits(headline)
        if lim:
            level.set_ylim(*lim)
        teacher, student, epochs, t, n, objective = cell
        level.set_title(f"{cell_label(teacher, objective, math.nan if t == -1.0 else t)} → {student}, "
                        f"{int(epochs)} epochs" + (f", N = {int(n):,}" if n else ""), fontsize=9)
        # right: Δ vs independent, every shared metric
        x = np.arange(len(metrics))
        for i, name in enumerate(names):
            r = rows[name].reindex(metrics)
            diff.errorbar(x + (i - (len(names) - 1) / 2) * width, r["diff_vs_independent"],
                          yerr=r["ci_half_width"].fillna(0), fmt="o", capsize=3, color=colours[i % len(colours)],
                          label=style.with_n(style.scenario_label(name), int(r["n_seeds"].max())))
        diff.axhline(0, color="0.5", lw=0.8)
        diff.set_xticks(x, [style.metric_label(m) for m in metrics], rotation=25, ha="right", fontsize=8)
        diff.set_ylabel("distilled − independent\n(paired by seed, 95% interval)", fontsize=8)
    for row in axes:
        row[1].legend(frameon=False, fontsize=7, loc="best")
    fig.suptitle(" vs ".join(style.scenario_label(n) for n in names) + ": the same cells", fontsize=10)
    return style.save(fig, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.compare_figure", description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a folder with transfer_map.csv")
    parser.add_argument("scenarios", nargs="+", help="two or more scenario names of the map")
    parser.add_argument("--metrics", help="comma-separated metrics (default: all the scenarios share, headline first)")
    parser.add_argument("--headline", help="the metric of the left panels (default: the first scenario's declared headline)")
    parser.add_argument("--out", help="the figure's path (default: <folder>/transfer_map_compare_<a>_vs_<b>.png)")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    if not (folder / "transfer_map.csv").is_file():
        raise ArtifactError(f"{folder / 'transfer_map.csv'}: missing (python -m analysis.transfer_map writes it)")
    if len(args.scenarios) < 2:
        parser.error("name at least two scenarios to compare")
    out = Path(args.out) if args.out else folder / f"transfer_map_compare_{'_vs_'.join(args.scenarios)}.png"
    from analysis.transfer_figures import folder_scenarios

    headline = args.headline or folder_scenarios(folder, args.scenarios[:1])[args.scenarios[0]].headline
    path = compare_figure(pd.read_csv(folder / "transfer_map.csv"), args.scenarios, out, headline,
                          args.metrics.split(",") if args.metrics else None)
    print(path)
    return 0


if __name__ == "__main__":
    from analysis.command import run

    run(main)
