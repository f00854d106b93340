"""Transfer-set sweeps: out-of-distribution accuracy against the number of transfer inputs.

    python -m analysis.transfer_sets RUNS... --out DIR [--scenario NAME]

RUNS are run dirs or sweep folders (e.g. ``runs/sva_transfer``; teachers are found through
the students). For every condition — the independent student (with transfer inputs: the
control, trained on them with gold labels), the self-distilled student, and each
cross-architecture distilled student — and every transfer-set size, it reports mean ± 95% CI
over seeds of the headline metric (as the runs' recorded bias measure groups their splits: mean
OOD accuracy over the families, or A-accuracy, the mean over ``attractors_k``; a task of the
generic measure by the mean over its eval splits other than test) and of each component split, and, paired by seed, the difference
between each distilled student and the control (and the self-distilled student) of the same size. Writes
``DIR/transfer_sets.md``, ``transfer_sets.csv`` (long form), ``transfer_sets_paired.csv`` and
``transfer_sets.png``. The runs' scenarios are the ones they recorded (``--scenario NAME``: only
that one's runs); their tasks must share one way of grouping splits.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

from analysis import tables
from analysis.runs import recorded_mode
from analysis.scenario import A_MEAN, ATTRACTORS, OOD_MEAN, Layout, load_scenario
from analysis.markdown import markdown_table


def condition(row) -> str:
    if row["role"] == "teacher":
        return f"teacher ({row['model']})"
    mode = recorded_mode(row["distill"], str(row.get("run", "")))
    if not mode.distilled:
        return CONTROL
    objective = row.get("objective")
    suffix = f" [{objective}]" if isinstance(objective, str) and objective != "kd" else ""
    if mode.teacher_is_student:
        return SELF + suffix
    return f"distilled from {row['teacher_model']}{suffix}"


def sweep_frame(paths: Sequence[str | Path], scenario: str | None = None) -> tuple[pd.DataFrame, str, Layout]:
    """Accuracy rows (run × split, derived splits included) with ``condition`` and
    ``transfer_n``; the scenario (the runs' recorded one, or ``scenario``: only its runs) and
    the layout of its splits (:attr:`Layout.summary` the headline)."""
    keep = None if scenario is None else (lambda r: r.scenario.name == scenario)
    sc = load_scenario(scenario or "", paths, keep=keep)
    if sc.frame is None or not len(sc.frame):
        which = f" of scenario {scenario!r}" if scenario else ""
        raise SystemExit(f"no complete runs{which} under {', '.join(map(str, paths))}")
    kinds = {lay.kind for lay in sc.layouts.values()}
    if len(kinds) > 1:
        raise SystemExit(f"runs of scenarios measured differently ({', '.join(sorted({r.scenario.name for r in sc.runs}))})"
                         f" under {', '.join(map(str, paths))}: give one with --scenario")
    frame = sc.frame[sc.frame["metric"] == "accuracy"].copy()
    frame["condition"] = frame.apply(condition, axis=1)
    name = scenario or ", ".join(sorted({r.scenario.name for r in sc.runs}))
    return frame, name, next(iter(sc.layouts.values()))


def size_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Long form: condition × transfer_n × split → mean, half-width, n (seeds)."""
    rows = []
    for (cond, size, split), g in frame.groupby(["condition", "transfer_n", "split"], sort=True):
        ci = tables.mean_ci(g.groupby("seed")["value"].mean())
        rows.append({"condition": cond, "transfer_n": int(size), "split": split, "mean": ci["mean"],
                     "half_width": ci["half_width"], "n": ci["n"]})
    return pd.DataFrame(rows, columns=["condition", "transfer_n", "split", "mean", "half_width", "n"])


HEADLINE_NAMES = {OOD_MEAN: "mean OOD accuracy", A_MEAN: "A-accuracy (mean over attractors_k)"}
CONTROL = "independent (control: gold labels)"
SELF = "self-distilled"


def paired_vs(frame: pd.DataFrame, splits: Sequence[str], reference: str = CONTROL) -> pd.DataFrame:
    """Each distilled student minus the ``reference`` condition (the control, or the
    self-distilled student: same extra inputs, a teacher without the bias) of the same
    transfer size, paired by seed; column ``versus`` names the reference."""
    students = frame[frame["role"] != "teacher"]
    rows = []
    for (cond, size, split), g in students.groupby(["condition", "transfer_n", "split"], sort=True):
        if split not in splits or cond in (CONTROL, reference):
            continue
        ref = students[(students["condition"] == reference) & (students["transfer_n"] == size) & (students["split"] == split)]
        if not len(ref):
            continue
        test = tables.paired_test(g.groupby("seed")["value"].mean(), ref.groupby("seed")["value"].mean())
        rows.append({"condition": cond, "versus": reference, "transfer_n": int(size), "split": split, **test})
    return pd.DataFrame(rows)


def pivot(long: pd.DataFrame, split: str) -> pd.DataFrame:
    part = long[long["split"] == split].copy()
    part["cell"] = [tables.format_mean_ci(m, h, n) for m, h, n in zip(part["mean"], part["half_width"], part["n"])]
    out = part.pivot(index="condition", columns="transfer_n", values="cell").fillna("–")
    out.columns = [f"N={c}" for c in out.columns]
    return out.reset_index()


def plot(long: pd.DataFrame, split: str, ylabel: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    part = long[long["split"] == split]
    students = part[~part["condition"].str.startswith("teacher")]
    conditions = sorted(students["condition"].unique())
    colors = dict(zip(conditions, sns.color_palette("tab10", n_colors=max(1, len(conditions)))))
    fig, ax = plt.subplots(figsize=(8.4, 3.8))
    for cond in conditions:
        g = students[students["condition"] == cond].sort_values("transfer_n")
        ax.errorbar(g["transfer_n"], g["mean"], yerr=g["half_width"].fillna(0), marker="o", capsize=3,
                    label=cond, color=colors[cond])
    for i, (cond, g) in enumerate(part[part["condition"].str.startswith("teacher")].groupby("condition")):
        ax.axhline(g["mean"].mean(), ls="--", lw=1, color=sns.color_palette("Greys", 3)[2 - i % 2], label=cond)
    ax.set_xlabel("transfer inputs beyond the training set")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # never over the data
    sns.despine(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write(paths: Sequence[str | Path], out: str | Path, scenario: str | None = None) -> Path:
    frame, scenario, layout = sweep_frame(paths, scenario)
    headline = layout.summary
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    long = size_table(frame)
    long.to_csv(out / "transfer_sets.csv", index=False)
    # the OOD families (a family with a severity sweep by its mean), or attractors_k
    splits = set(long["split"])
    if layout.kind != ATTRACTORS:
        components = sorted(s for s in splits if s.endswith("_mean") and s != headline)
        components += sorted(s for s in splits if s not in ("test", headline) and not s.endswith("_mean")
                             and not any(s.startswith(c[: -len("_mean")] + "_s") for c in components))
    else:
        components = sorted(s for s in splits if s.startswith("attractors_") and s != headline)
    paired = pd.concat([paired_vs(frame, [headline, *components, "test"], ref) for ref in (CONTROL, SELF)],
                       ignore_index=True)
    paired.to_csv(out / "transfer_sets_paired.csv", index=False)
    name = HEADLINE_NAMES[headline]
    plot(long, headline, name, out / "transfer_sets.png")
    lines = [f"# Transfer-set sweep ({scenario})", "",
             f"Runs: {', '.join(f'`{p}`' for p in paths)}. Mean ± 95% CI over seeds (n = seeds); "
             "N = transfer inputs beyond the training set; the independent student at N > 0 is the "
             "control trained on the same inputs with their gold labels.", "",
             f"## {name}", "", markdown_table(pivot(long, headline)), "",
             "![accuracy against transfer-set size](transfer_sets.png)", "",
             f"## Distilled minus control, and minus self-distilled, at the same N ({name}, paired by seed)", "",
             "Against the control: what teacher labels give instead of gold labels on the same inputs. "
             "Against the self-distilled student: what this teacher gives beyond a teacher of the "
             "student's own architecture on the same inputs.", ""]
    head = paired[paired["split"] == headline] if len(paired) else paired
    if len(head):
        cols = ["condition", "versus", "transfer_n", "n_pairs", "mean_diff", "diff_half_width", "p_ttest", "note"]
        lines += [markdown_table(head[cols]), ""]
    else:
        lines += ["No distilled runs with a matching reference run.", ""]
    for split in [*components, "test"]:
        if split in set(long["split"]):
            lines += [f"## `{split}` accuracy", "", markdown_table(pivot(long, split)), ""]
    path = out / "transfer_sets.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.transfer_sets", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run dirs or sweep folders")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--scenario", default=None, help="only the runs of this recorded scenario (default: all)")
    args = parser.parse_args(argv)
    print(write(args.runs, args.out, args.scenario))
    return 0


if __name__ == "__main__":
    from analysis.command import run

    sys.exit(run(main))
