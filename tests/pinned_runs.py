"""The pinned runs: tiny real runs of every training path, and the analysis tables on them.

Their values are recorded in ``tests/pinned/`` (``reference.json``: machine signature, metrics,
analysis values; ``weights.npz``: every tensor of every run) and compared by
``tests/test_pinned.py`` — to the bit on the recording machine, within the tolerances of
:mod:`biaskd.record.reproduce` elsewhere.

    python tests/pinned_runs.py --record        # (re)record the reference on this machine
    python tests/pinned_runs.py --spread        # measure the spread across instruction sets
    python tests/pinned_runs.py --compare DIR   # train into DIR and compare with the reference

``--spread`` trains the runs once per kernel set that PyTorch (``ATEN_CPU_CAPABILITY``), oneDNN
(``ONEDNN_MAX_CPU_ISA``) and MKL (``MKL_ENABLE_INSTRUCTIONS``) can be restricted to on this CPU,
and writes the largest relative weight difference and metric difference to ``spread.json``: the
measured cross-machine spread the tolerances are derived from.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from tiny import TINY, TINY_LM, compose_cfg  # noqa: E402

REFERENCE = HERE / "pinned" / "reference.json"
WEIGHTS = HERE / "pinned" / "weights.npz"
SPREAD = HERE / "pinned" / "spread.json"
PINNED_METRICS = ("accuracy", "loss", "ece")

#: the runs: name -> overrides on top of TINY (teacher: the cross-distilled student's teacher)
RUNS = {
    "student": ["distill=cross"],
    "independent": ["distill=none"],
    "self_forward": ["distill=self", "distill.teacher_outputs=forward"],
    "online": ["distill=online"],
    "hints": ["distill=cross", "objective=hints", "distill.alpha=0.5"],
    "relation_schedule": ["distill=cross", "objective=relation", "distill.alpha=0.8",
                          "distill.alpha_schedule=linear", "distill.final_alpha=0.2"],
    "logits_mse": ["distill=cross", "objective=logits_mse"],
    "lm_cross": [*TINY_LM, "distill=cross"],
    "lm_seqkd": [*TINY_LM, "distill=cross", "objective=seqkd", "distill.alpha=0.5", "distill.seqkd.beam_width=2"],
}

#: kernel sets for --spread: (name, environment); each a "machine" this CPU can emulate
KERNEL_SETS = [
    ("native", {}),
    ("avx2", {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}),
    ("default", {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
                 "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}),
]


def train_runs(runs_dir: Path, names=None, extra: list[str] | None = None) -> dict:
    """Train the pinned runs into ``runs_dir``; ``name -> RunDir`` (plus ``teacher``)."""
    from biaskd.run.train import train

    out = {}
    for name in names or RUNS:
        out[name] = train(compose_cfg([*TINY, *RUNS[name], *(extra or [])], runs_dir))
    if "student" in out:
        out["teacher"] = out["student"].teacher_dir
    return out


def analysis_values(runs: dict) -> dict[str, float]:
    """The analysis tables on the teacher, the cross-distilled and the independent student."""
    from analysis.agreement import agreement_table
    from analysis.runs import find_runs, runs_frame
    from analysis.similarity import linear_cka
    from analysis.tables import summarize, transfer_table

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = find_runs(runs["student"].path, runs["independent"].path, runs["teacher"].path)
    by = {(r.role, r.distill): r for r in found}
    s, i, t = by[("student", "cross")], by[("student", "none")], by[("teacher", "none")]
    out: dict[str, float] = {}
    for row in agreement_table([s, (i, t)]).itertuples():
        for col in ("top1_agreement", "js_divergence", "error_consistency"):
            out[f"agreement/{row.distill}/{row.split}/{col}"] = float(getattr(row, col))
    for r in (s, i):
        out[f"cka/{r.distill}"] = float(linear_cka(r.features().features, t.features().features))
    frame = runs_frame(found)
    for row in summarize(frame[frame.metric.isin(PINNED_METRICS)]).itertuples():
        out[f"summary/{row.role}/{row.distill}/{row.split}/{row.metric}"] = float(row.mean)
    for row in transfer_table(frame, metrics=["accuracy"]).itertuples():
        for col in ("m_kd", "m_indep", "m_teacher", "transfer_ratio"):
            out[f"transfer/{row.split}/{col}"] = float(getattr(row, col))
    return out


def collect(runs: dict) -> tuple[dict, dict[str, np.ndarray]]:
    """``(values, weights)``: metrics per run/split, analysis values, the machine signature; and
    every tensor of every run (``run/tensor``)."""
    from biaskd.record.artifacts import load_state_dict

    values: dict = {"machine": runs["student"].meta["machine"], "metrics": {}, "n": {}, "analysis": {}}
    weights: dict[str, np.ndarray] = {}
    for name, run in sorted(runs.items()):
        for split, m in sorted(run.metrics["splits"].items()):
            for key in PINNED_METRICS:
                values["metrics"][f"{name}/{split}/{key}"] = float(m[key])
            values["n"][f"{name}/{split}/accuracy"] = int(m["n"])
            weights[f"outputs/{name}/{split}"] = run.outputs(split)["logits"]
        for key, t in sorted(load_state_dict(run / "model.pt").items()):
            weights[f"{name}/{key}"] = t.detach().cpu().numpy()
    if {"student", "independent", "teacher"} <= set(runs):
        values["analysis"] = analysis_values(runs)
    return values, weights


def load_reference() -> tuple[dict, dict[str, np.ndarray]]:
    with np.load(WEIGHTS) as w:
        weights = {k: w[k] for k in w.files}
    return json.loads(REFERENCE.read_text()), weights


def _by_run(weights: dict[str, np.ndarray]) -> dict[str, dict]:
    """``run -> {"weights": {tensor: array}, "outputs": {"outputs/run/split": logits}}``."""
    out: dict[str, dict] = {}
    for key, value in weights.items():
        if key.startswith("outputs/"):
            out.setdefault(key.split("/")[1], {"weights": {}, "outputs": {}})["outputs"][key] = value
        else:
            run, tensor = key.split("/", 1)
            out.setdefault(run, {"weights": {}, "outputs": {}})["weights"][tensor] = value
    return out


def compare(values: dict, weights: dict[str, np.ndarray], reference: dict, ref_weights: dict[str, np.ndarray],
            names=None, same: bool | None = None):
    """Compare collected values with the reference: bit for bit where the machine signatures
    match (or ``same=True``), else within :mod:`biaskd.record.reproduce`'s tolerances."""
    import torch

    from biaskd.record import reproduce

    if same is None:
        same = reproduce.same_machine(values["machine"], reference["machine"])
    result = reproduce.Comparison(reproduce.BIT_IDENTICAL if same else reproduce.WITHIN_TOLERANCE)
    names = sorted(names or _by_run(ref_weights))
    actual, expected = _by_run(weights), _by_run(ref_weights)
    for name in names:
        if name not in actual:
            result.fail(f"run {name} is missing")
            continue
        reproduce.compare_weights({k: torch.from_numpy(np.asarray(v)) for k, v in actual[name]["weights"].items()},
                                  {k: torch.from_numpy(np.asarray(v)) for k, v in expected[name]["weights"].items()},
                                  same, into=result, name=f"weights {name}")
        reproduce.compare_arrays(actual[name]["outputs"], expected[name]["outputs"], same, into=result)
    prefixes = tuple(f"{n}/" for n in names)
    steps = {k: 1.0 / n for k, n in reference["n"].items()}
    reproduce.compare_values({k: v for k, v in values["metrics"].items() if k.startswith(prefixes)},
                             {k: v for k, v in reference["metrics"].items() if k.startswith(prefixes)},
                             same, steps=steps, into=result)
    if {"student", "independent", "teacher"} <= set(names):
        reproduce.compare_values(values["analysis"], reference["analysis"], same, into=result)
    return result


def _spread(kernel_sets) -> dict:
    """Train the runs under each kernel set (a subprocess each) and measure the deviations from
    the first."""
    from biaskd.record import reproduce

    collected = {}
    for name, env in kernel_sets:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "values"
            subprocess.run([sys.executable, __file__, "--dump", str(out)], env={**os.environ, **env}, check=True)
            values = json.loads((out / "values.json").read_text())
            with np.load(out / "weights.npz") as w:
                collected[name] = (values, {k: w[k] for k in w.files})
    base_name = kernel_sets[0][0]
    base_values, base_weights = collected[base_name]
    base = _by_run(base_weights)
    report = {"kernel_sets": {n: {"env": env, "machine": collected[n][0]["machine"]} for n, env in kernel_sets},
              "vs": base_name, "deviations": {}}
    for name, _ in kernel_sets[1:]:
        values, weights = collected[name]
        runs = _by_run(weights)

        def run_rel(run):
            keys = sorted(base[run]["weights"])
            return reproduce.relative_difference(np.concatenate([runs[run]["weights"][k].ravel() for k in keys]),
                                                 np.concatenate([base[run]["weights"][k].ravel() for k in keys]))

        report["deviations"][name] = {
            "weights_relative_by_run": {run: run_rel(run) for run in sorted(base)},
            "outputs_max_relative": max(reproduce.relative_difference(weights[k], base_weights[k])
                                        for k in base_weights if k.startswith("outputs/")),
            "loss_ece_max_abs": max(abs(values["metrics"][k] - base_values["metrics"][k])
                                    for k in base_values["metrics"] if not k.endswith("/accuracy")),
            "accuracy_max_examples": max(abs(values["metrics"][k] - base_values["metrics"][k]) * base_values["n"][k]
                                         for k in base_values["n"]),
            "analysis_max_abs": max(abs(values["analysis"][k] - base_values["analysis"][k])
                                    for k in base_values["analysis"] if not np.isnan(base_values["analysis"][k])),
            "bit_identical": all(np.array_equal(weights[k], base_weights[k]) for k in base_weights),
        }
    return report


def _dump(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        values, weights = collect(train_runs(Path(tmp)))
    out.mkdir(parents=True, exist_ok=True)
    (out / "values.json").write_text(json.dumps(values, indent=1, sort_keys=True))
    np.savez_compressed(out / "weights.npz", **weights)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--record", action="store_true", help="record the reference on this machine")
    group.add_argument("--spread", action="store_true", help="measure the spread across kernel sets")
    group.add_argument("--compare", metavar="DIR", help="train into DIR and compare with the reference")
    group.add_argument("--dump", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.dump:
        _dump(Path(args.dump))
        return 0
    if args.record:
        with tempfile.TemporaryDirectory() as tmp:
            values, weights = collect(train_runs(Path(tmp)))
        REFERENCE.parent.mkdir(exist_ok=True)
        REFERENCE.write_text(json.dumps(values, indent=1, sort_keys=True) + "\n")
        np.savez_compressed(WEIGHTS, **weights)
        print(f"recorded {len(values['metrics'])} metrics, {len(values['analysis'])} analysis values and "
              f"{len(weights)} tensors on {values['machine']}")
        return 0
    if args.spread:
        report = _spread(KERNEL_SETS)
        SPREAD.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
        print(json.dumps(report["deviations"], indent=1))
        return 0
    values, weights = collect(train_runs(Path(args.compare)))
    result = compare(values, weights, *load_reference())
    print(result.line())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
