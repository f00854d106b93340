"""The declared reference protocol (v2): its primary cells and the paper's claims judged on them, as data.

Each primary comparison names a cell of the transfer map (:mod:`analysis.transfer_map`), the
two roles compared in it (``kd``, ``indep``, ``self``, ``teacher``), a metric and the sign the
paper reports. Comparisons are paired by seed; p-values are Holm-corrected across all primary
comparisons. A comparison is *reproduced* when its difference has the paper's sign and the
corrected p < 0.05, *not reproduced* when it has the opposite sign and corrected p < 0.05, and
*inconclusive* otherwise; a claim is reproduced when all its primary comparisons are.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from analysis.tables import holm, paired_test

ALPHA = 0.05


@dataclass(frozen=True)
class Comparison:
    claim: int
    text: str
    scenario: str
    cell: dict  # teacher, student, student_epochs, temperature, transfer_n
    metric: str
    first: str  # role
    second: str  # role
    sign: int  # +1: the paper reports first > second


VISION_PRIMARY = {"teacher": "cnn_gp", "student": "mlp", "student_epochs": 100, "temperature": 5.0, "transfer_n": 0}
LANGUAGE_PRIMARY = {"teacher": "lstm", "student": "transformer", "student_epochs": 10, "temperature": 5.0,
                    "transfer_n": 5000}
#: claim 1 compares architectures trained on the same labelled data: the cell without transfer
#: inputs (with them, the independent control has 3.5x the teacher's labelled sentences)
LANGUAGE_SAME_DATA = {**LANGUAGE_PRIMARY, "transfer_n": 0}

CLAIMS = {
    1: "LSTM beats Transformer on agreement with attractors",
    2: "LSTM→Transformer distillation closes part of the gap",
    3: "CNN beats MLP out of distribution",
    4: "CNN→MLP distillation improves the MLP out of distribution",
    5: "distilled students agree with their teacher more",
}

PRIMARY = [
    Comparison(1, CLAIMS[1], "language", LANGUAGE_SAME_DATA, "a_accuracy", "teacher", "indep", +1),
    Comparison(2, CLAIMS[2], "language", LANGUAGE_PRIMARY, "a_accuracy", "kd", "indep", +1),
    Comparison(2, CLAIMS[2], "language", LANGUAGE_PRIMARY, "a_accuracy", "kd", "self", +1),
    Comparison(3, CLAIMS[3], "vision", VISION_PRIMARY, "ood_mean", "teacher", "indep", +1),
    Comparison(4, CLAIMS[4], "vision", VISION_PRIMARY, "ood_mean", "kd", "indep", +1),
    Comparison(4, CLAIMS[4], "vision", VISION_PRIMARY, "ood_mean", "kd", "self", +1),
    Comparison(5, CLAIMS[5], "vision", VISION_PRIMARY, "teacher_agreement_ood", "kd", "indep", +1),
    Comparison(5, CLAIMS[5], "language", LANGUAGE_PRIMARY, "teacher_agreement_attractors", "kd", "indep", +1),
]


def _values(per_seed: pd.DataFrame, c: Comparison, role: str) -> dict[int, float]:
    f = per_seed[(per_seed["scenario"] == c.scenario) & (per_seed["metric"] == c.metric) & (per_seed["role"] == role)]
    for key, value in c.cell.items():
        f = f[f[key] == value]
    return dict(zip(f["seed"].astype(int), f["value"].astype(float)))


def judge(per_seed: pd.DataFrame, comparisons: list[Comparison] = PRIMARY) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per comparison, one row per claim and scenario) from the transfer map's
    per-seed values."""
    rows = []
    for c in comparisons:
        test = paired_test(_values(per_seed, c, c.first), _values(per_seed, c, c.second))
        cell = ", ".join(f"{k}={v}" for k, v in c.cell.items())
        rows.append({"claim": c.claim, "text": c.text, "scenario": c.scenario, "cell": cell, "metric": c.metric,
                     "first": c.first, "second": c.second, "paper_sign": c.sign, "n": test["n_pairs"],
                     "diff": test["mean_diff"], "ci_half_width": test["diff_half_width"], "p": test["p_ttest"]})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame, frame
    frame["p_holm"] = holm(frame["p"].tolist())
    frame["verdict"] = [_verdict(d, p, s) if n else "not evaluated (no runs)"
                        for d, p, s, n in zip(frame["diff"], frame["p_holm"], frame["paper_sign"], frame["n"])]
    verdicts = []
    for (claim, scenario), g in frame.groupby(["claim", "scenario"], sort=True):
        v = set(g["verdict"])
        verdict = ("reproduced" if v == {"reproduced"} else "not reproduced" if "not reproduced" in v
                   else "not evaluated (no runs)" if v == {"not evaluated (no runs)"} else "inconclusive")
        verdicts.append({"claim": claim, "scenario": scenario, "text": CLAIMS[claim], "verdict": verdict,
                         "comparisons": len(g)})
    return frame, pd.DataFrame(verdicts)


def _verdict(diff: float, p_holm: float, sign: int) -> str:
    if math.isnan(diff) or math.isnan(p_holm) or p_holm >= ALPHA:
        return "inconclusive"
    return "reproduced" if diff * sign > 0 else "not reproduced"
