"""The transfer map: when does a teacher's inductive bias reach its student, and when not?

One row per scenario x teacher x student x student epochs x temperature x transfer-set size x
metric: the distilled student against the independent one and the self-distilled one, paired
by seed (mean difference, 95% t-interval, paired t-test p), and the transferred share
``(m_KD - m_indep) / (m_teacher - m_indep)``. Beside it: what each teacher gave (its soft
targets on the inputs it taught, :func:`biaskd.metrics.teacher_signal`), each teacher's bias
measured directly, and the figures (:mod:`analysis.transfer_figures`). ``scenarios.csv`` keeps
each scenario's declaration (measure, headline) beside the tables, which
``python -m analysis.merge_tables`` combines across folders; both commands write through
:func:`write_map`.

    python -m analysis.transfer_map RUNS... --out results
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis.bias import BiasMeasure, bias_measure, nan_mean
from analysis.runs import Run, find_runs
from analysis.tables import mean_ci, paired_test, transfer_ratio
from biaskd.scenario import Scenario, write_table

MAP_COLUMNS = ["scenario", "teacher", "student", "student_epochs", "temperature", "transfer_n", "objective", "metric",
               "n_seeds", "m_kd", "m_indep", "m_self", "m_teacher", "diff_vs_independent", "ci_half_width",
               "prediction_half_width", "p_value", "diff_vs_self", "self_ci_half_width", "p_value_vs_self", "teacher_gap", "transferred_share",
               "seeds"]
#: what makes a cell, in the order of its key
CELL_FIELDS = ("scenario", "teacher", "student", "student_epochs", "temperature", "transfer_n", "objective")
#: the smallest teacher - independent gap (in the metric's units) a transferred share is given for
MIN_SHARE_GAP = 0.05


def scenario_of(run: Run) -> Scenario:
    """The scenario the run recorded (:mod:`biaskd.scenario`): its name, bias measure, headline."""
    return run.scenario


def measure_of(scenario: Scenario) -> BiasMeasure:
    return bias_measure(scenario.measure)


def epochs_of(run: Run) -> int:
    return int(run.config.get("trainer", {}).get("max_epochs"))


def run_metrics(run: Run, teacher: Run | None = None) -> dict[str, float]:
    """The map's metrics of one run: its scenario's bias measure; agreement and similarity need
    the ``teacher`` they are measured against."""
    return measure_of(scenario_of(run)).values(run, teacher)


# -- cells -----------------------------------------------------------------------------------------
def _key(run: Run) -> tuple:
    return (scenario_of(run).name, run.model, epochs_of(run), run.transfer_n, run.seed)


def objective_of(run: Run) -> str:
    """The run's distillation objective (``kd`` for runs recorded before objectives were named)."""
    return run.objective or "kd"


def temperature_of(run: Run) -> float:
    """The temperature the run's objective used: ``objective_options["temperature"]`` where the
    run recorded its objective's options, NaN for an objective that reads none (e.g. hard labels,
    hints); the recorded ``distill.temperature`` for runs made before options were recorded."""
    options = run.meta.get("objective_options")
    if isinstance(options, dict):
        return float(options["temperature"]) if options.get("temperature") is not None else math.nan
    return run.temperature


def build_cells(runs: Sequence[Run]) -> dict[tuple, dict[int, dict[str, Run]]]:
    """``cell -> seed -> {"kd", "indep", "self", "teacher"}``; a cell is (scenario, teacher,
    student, student epochs, T, transfer n, objective) of a cross-distilled student; its
    self-distilled control has the same objective and T."""
    indep, self_runs = {}, {}
    for r in runs:
        if r.role != "student":
            continue
        if not r.mode.distilled:
            indep[_key(r)] = r
        elif r.mode.trained_teacher and r.mode.teacher_is_student:
            self_runs[(*_key(r), _t_key(temperature_of(r)), objective_of(r))] = r
    cells: dict[tuple, dict[int, dict[str, Run]]] = defaultdict(dict)
    for r in runs:
        if r.role != "student" or not r.mode.cross_distilled:
            continue
        scenario, model, epochs, n, seed = _key(r)
        t, objective = temperature_of(r), objective_of(r)
        cell = (scenario, r.teacher_model, model, epochs, _t_key(t), n, objective)
        cells[cell][seed] = {"kd": r, "indep": indep.get(_key(r)),
                             "self": self_runs.get((*_key(r), _t_key(t), objective)), "teacher": r.teacher}
    return dict(cells)


def _t_key(t: float) -> float | None:
    return None if math.isnan(t) else t


def transfer_map(runs: Sequence[Run]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The map (one row per cell x metric) and the per-seed values it was computed from."""
    cache: dict[tuple, dict[str, float]] = {}

    def metrics(run: Run | None, teacher: Run) -> dict[str, float]:
        if run is None:
            return {}
        key = (str(run.path), str(teacher.path))
        if key not in cache:
            cache[key] = run_metrics(run, teacher)
        return cache[key]

    rows, per_seed = [], []
    for cell, seeds in sorted(build_cells(runs).items(), key=lambda kv: tuple(map(str, kv[0]))):
        measure = measure_of(scenario_of(next(iter(seeds.values()))["kd"]))
        values: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
        for seed, members in sorted(seeds.items()):
            teacher = members["teacher"]
            for role in ("kd", "indep", "self", "teacher"):
                for metric, v in metrics(members[role], teacher).items():
                    values[metric][role][seed] = v
                    per_seed.append({**_cell_dict(cell), "seed": seed, "role": role, "metric": metric, "value": v,
                                     "run": members[role].run_id if members[role] else None})
        for metric in [*measure.metrics, *(m for m in values if m not in measure.metrics)]:
            if metric in values:
                rows.append({**_cell_dict(cell), "metric": metric, **compare_cell(values[metric])})
    return pd.DataFrame(rows, columns=MAP_COLUMNS), pd.DataFrame(per_seed)


def compare_cell(values: dict[str, dict[int, float]]) -> dict:
    """One cell's comparison from per-seed values ``{"kd"|"indep"|"self"|"teacher": {seed: v}}``:
    the distilled student minus the independent and the self-distilled one, paired by seed, and
    the transferred share of the teacher-independent gap (ratio of the seed means; empty when
    the gap is under :data:`MIN_SHARE_GAP`, where the ratio would be noise over a small number)."""
    vs_indep, vs_self = paired_test(values.get("kd", {}), values.get("indep", {})), \
        paired_test(values.get("kd", {}), values.get("self", {}))
    m = {role: nan_mean(values.get(role, {}).values()) for role in ("kd", "indep", "self", "teacher")}
    gap = m["teacher"] - m["indep"]
    return {"n_seeds": vs_indep["n_pairs"], "m_kd": m["kd"], "m_indep": m["indep"], "m_self": m["self"],
            "m_teacher": m["teacher"], "diff_vs_independent": vs_indep["mean_diff"],
            "ci_half_width": vs_indep["diff_half_width"],
            "prediction_half_width": vs_indep["diff_prediction_half_width"], "p_value": vs_indep["p_ttest"],
            "diff_vs_self": vs_self["mean_diff"], "self_ci_half_width": vs_self["diff_half_width"],
            "p_value_vs_self": vs_self["p_ttest"],
            "teacher_gap": gap, "transferred_share": transfer_ratio(m["kd"], m["indep"], m["teacher"], MIN_SHARE_GAP),
            "seeds": vs_indep["seeds"]}


def _cell_dict(cell: tuple) -> dict:
    """The cell's columns; a temperature the objective does not read (None in the key) is NaN."""
    d = dict(zip(CELL_FIELDS, cell))
    return {**d, "temperature": math.nan if d["temperature"] is None else d["temperature"]}


# -- what the teachers gave and what they are -------------------------------------------------------
def teacher_signal_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """Per distilled run: the teacher's soft targets on the inputs it taught (``train``,
    ``transfer``; recorded by the driver in metrics.json) and on the eval splits (computed here
    from the teacher's outputs), at the run's temperature."""
    from biaskd.metrics import teacher_signal

    rows = []
    for r in runs:
        if r.role != "student" or not r.mode.trained_teacher:
            continue
        base = {"scenario": scenario_of(r).name, "teacher": r.teacher_model, "student": r.model, "distill": r.distill,
                "student_epochs": epochs_of(r), "temperature": r.temperature, "transfer_n": r.transfer_n,
                "seed": r.seed}
        for inputs, sig in (r.metrics.get("teacher_signal") or {}).items():
            rows.append({**base, "inputs": inputs, **sig})
        teacher = r.teacher
        eval_splits = [s for s in teacher.output_splits() if s != "test"]
        sigs = [teacher_signal(o.logits, o.labels, r.temperature) for o in map(teacher.outputs, eval_splits)]
        if sigs:
            rows.append({**base, "inputs": "eval (OOD / attractor splits)", "n": sum(s["n"] for s in sigs),
                         "temperature": r.temperature,
                         **{k: nan_mean(s[k] for s in sigs) for k in ("p_gold", "entropy", "top_not_gold")}})
    return pd.DataFrame(rows)


def teacher_bias_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """Each teacher's bias, measured directly by its scenario's measure (e.g. shift: accuracy and
    prediction consistency per shift size c, c = 0 the test set; attractors: accuracy per count)."""
    rows = []
    for r in runs:
        curve = measure_of(scenario_of(r)).curve
        if r.role != "teacher" or curve is None:
            continue
        base = {"scenario": scenario_of(r).name, "model": r.model, "seed": r.seed, "epochs": epochs_of(r)}
        rows += [{**base, **row} for row in curve(r)]
    return pd.DataFrame(rows)


def summarize_over_seeds(frame: pd.DataFrame, by: Sequence[str], value: str = "value") -> pd.DataFrame:
    if frame.empty:
        return pd.DataFrame(columns=[*by, "mean", "half_width", "n"])
    rows = []
    for key, group in frame.groupby(list(by), dropna=False, sort=True):
        ci = mean_ci(group[value])
        rows.append({**dict(zip(by, key)), "mean": ci["mean"], "half_width": ci["half_width"], "n": ci["n"]})
    return pd.DataFrame(rows)


# -- command line --------------------------------------------------------------------------------------
#: what makes a row of ``teacher_signal.csv`` / ``teacher_bias.csv`` (the rest are its values)
SIGNAL_KEYS = ["scenario", "teacher", "distill", "student_epochs", "temperature", "transfer_n", "inputs"]
BIAS_KEYS = ["scenario", "model", "measure", "x"]


def build(paths: Sequence[str | Path], out: str | Path) -> dict[str, Path]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runs = find_runs(*paths)
    scenarios = {r.scenario.name: r.scenario for r in runs}
    print(f"transfer map: {len(runs)} runs in scenarios {', '.join(sorted(scenarios)) or '(none)'}", file=sys.stderr)
    map_frame, per_seed = transfer_map(runs)
    unmapped = sorted(set(scenarios) - set(map_frame["scenario"]))
    if unmapped:  # said, never silently dropped: such runs need a cross-distilled student to make a cell
        print(f"transfer map: no cross-distilled student (with its teacher) in {', '.join(unmapped)}: "
              "no cells for them", file=sys.stderr)
    signal = teacher_signal_frame(runs)
    if not signal.empty:
        signal = signal.groupby(SIGNAL_KEYS, dropna=False)[["n", "p_gold", "entropy", "top_not_gold"]].mean()
        signal = signal.reset_index()
    bias = summarize_over_seeds(teacher_bias_frame(runs), BIAS_KEYS)
    return write_map(out, map_frame, per_seed, signal, bias, scenarios)


def write_map(out: str | Path, map_frame: pd.DataFrame, per_seed: pd.DataFrame, signal: pd.DataFrame,
              bias: pd.DataFrame, scenarios: dict[str, Scenario],
              source: str = "`python -m analysis.transfer_map`",
              protocols: Sequence[str] | None = None) -> dict[str, Path]:
    """Everything the map is written as, from its frames: ``transfer_map.csv``, the per-seed
    values, each declared protocol (``conf/protocol/``) with cells of its scenarios here judged
    (``claims_<name>.csv``, ``verdicts_<name>.csv``), ``teacher_signal.csv``, ``teacher_bias.csv``
    (``bias``: summarized over seeds), ``scenarios.csv``, ``transfer_map.md`` and the figures.
    ``protocols``: judge only these (default: every declared one with cells here).
    Written into a temporary folder inside ``out`` and moved into ``out`` once all are written,
    so that a failure leaves ``out`` as it was."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".writing-", dir=out))
    try:
        written = _write_map(tmp, map_frame, per_seed, signal, bias, scenarios, source, protocols)
        for path in sorted(tmp.iterdir()):
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {name: out / Path(path).name for name, path in written.items()}


def _write_map(out: Path, map_frame: pd.DataFrame, per_seed: pd.DataFrame, signal: pd.DataFrame,
               bias: pd.DataFrame, scenarios: dict[str, Scenario], source: str,
               protocols: Sequence[str] | None = None) -> dict[str, Path]:
    written = {"transfer_map": out / "transfer_map.csv", "per_seed": out / "transfer_map_per_seed.csv",
               "teacher_signal": out / "teacher_signal.csv", "teacher_bias": out / "teacher_bias.csv",
               "scenarios": out / "scenarios.csv"}
    map_frame.to_csv(written["transfer_map"], index=False, float_format="%.6g")
    per_seed.to_csv(written["per_seed"], index=False, float_format="%.6g")
    from analysis import protocol

    judged = {}  # each declared protocol (conf/protocol/) with cells of its scenarios here
    for name in protocol.available() if protocols is None else protocols:
        declared = protocol.load(name)
        if not {c.scenario for c in declared} & set(map_frame["scenario"]):
            continue
        comparisons, verdicts = protocol.judge(per_seed, declared)
        judged[name] = comparisons
        written[f"claims_{name}"], written[f"verdicts_{name}"] = out / f"claims_{name}.csv", out / f"verdicts_{name}.csv"
        comparisons.to_csv(written[f"claims_{name}"], index=False, float_format="%.6g")
        verdicts.to_csv(written[f"verdicts_{name}"], index=False)
    signal.to_csv(written["teacher_signal"], index=False, float_format="%.4g")
    bias.to_csv(written["teacher_bias"], index=False, float_format="%.4g")
    write_table(written["scenarios"], scenarios.values())  # the declarations, so that the tables outlive the config
    drawn = {name: _drawable(s) for name, s in scenarios.items()}
    written["markdown"] = write_markdown(out, map_frame, judged, signal, bias, drawn, source)
    from analysis.transfer_figures import draw_all  # the figures, from these tables alone

    written.update(draw_all(map_frame, bias, drawn, out))
    return written


def _drawable(scenario: Scenario) -> Scenario:
    """``scenario``, or, where its measure is a user's own that cannot be imported here (tables
    made elsewhere), the same name and headline with the generic measure (said on stderr)."""
    from biaskd.errors import ArtifactError

    try:
        measure_of(scenario)
    except ArtifactError as exc:
        print(f"transfer map: {scenario.name}: {exc}; its markdown and figures use the generic measure's "
              f"metric order (headline {scenario.headline})", file=sys.stderr)
        return Scenario(scenario.name, "generic", scenario.headline)
    return scenario


def _md(frame: pd.DataFrame, digits: int = 3) -> str:
    def cell(v):
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.{digits}g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"
        return str(v)
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def write_markdown(out: Path, map_frame: pd.DataFrame, judged: dict[str, pd.DataFrame], signal: pd.DataFrame,
                   bias: pd.DataFrame, scenarios: dict[str, Scenario],
                   source: str = "`python -m analysis.transfer_map`") -> Path:
    """``transfer_map.md``: the verdicts, the headline rows of the map, what the teachers gave and
    what they are (``bias``: summarized over seeds, as in ``teacher_bias.csv``), as tables (every
    number is in the CSVs beside it)."""
    parts = ["# Transfer map\n", f"Written by {source}; every number is "
             "in the CSVs beside this file. Δ = distilled − independent student (paired by seed, 95% t-interval "
             "half width ±); share = (m_KD − m_indep) / (m_teacher − m_indep).\n"]
    for name, claims in judged.items():
        if claims.empty:
            continue
        c = claims[["claim", "scenario", "metric", "first", "second", "cell", "n", "diff", "ci_half_width", "p",
                    "p_holm", "verdict"]]
        parts += [f"## The paper's claims, protocol {name} (primary comparisons, Holm-corrected)\n", _md(c), ""]
    for scenario in sorted(set(map_frame["scenario"])):
        declared = scenarios.get(scenario)
        described = list(measure_of(declared).metrics) if declared else []
        metrics = [declared.headline] if declared else []
        metrics += [m for m in [*described, *sorted(set(map_frame[map_frame["scenario"] == scenario]["metric"]))]
                    if m not in metrics]
        f = map_frame[(map_frame["scenario"] == scenario) & map_frame["metric"].isin(metrics)]
        if f.empty:
            continue
        f = f.assign(order=f["metric"].map({m: i for i, m in enumerate(metrics)})).sort_values(
            ["order", "teacher", "objective", "student_epochs", "temperature", "transfer_n"])
        cols = ["metric", "teacher", "objective", "student_epochs", "temperature", "transfer_n", "n_seeds", "m_teacher", "m_indep",
                "m_self", "m_kd", "diff_vs_independent", "ci_half_width", "prediction_half_width", "p_value",
                "diff_vs_self",
                "transferred_share"]
        parts += [f"## {scenario}: the map\n", _md(f[cols]), ""]
    if not signal.empty:
        parts += ["## What the teachers gave: their soft targets at T on the inputs they taught, and on the eval "
                  "splits\n", _md(signal), ""]
    if not bias.empty:
        parts += ["## The teachers' own bias (mean over seeds)\n", _md(bias), ""]
    path = out / "transfer_map.md"
    path.write_text("\n".join(parts) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.transfer_map", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="folders of run dirs (students and their teachers)")
    parser.add_argument("--out", required=True, help="folder for transfer_map.csv, teacher_signal.csv and figures")
    args = parser.parse_args(argv)
    for name, path in build(args.runs, args.out).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    from analysis.command import run

    sys.exit(run(main))
