"""The declared reference protocols: their primary comparisons and the paper's claims judged on them.

Each protocol is data, declared in ``conf/protocol/<name>.yaml`` before its runs: a comparison
names a cell of the transfer map (:mod:`analysis.transfer_map`: scenario, teacher, student,
student epochs, temperature, transfer-set size), the two roles compared in it (``kd``,
``indep``, ``self``, ``teacher``), a metric and the sign the paper reports. Comparisons are
paired by seed; p-values are Holm-corrected across all comparisons of a protocol. A comparison is
*reproduced* when its difference has the paper's sign and the corrected p < 0.05, *not
reproduced* when it has the opposite sign and corrected p < 0.05, and *inconclusive* otherwise;
a claim is reproduced when all its comparisons are.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from analysis.tables import holm, paired_test
from biaskd.errors import ConfigError

ALPHA = 0.05
PROTOCOL_DIR = Path(__file__).resolve().parent.parent / "conf" / "protocol"


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


ROLES = ("kd", "indep", "self", "teacher")
CELL_KEYS = ("teacher", "student", "student_epochs", "temperature", "transfer_n", "objective")


def load(name_or_path: str | Path) -> list[Comparison]:
    """The comparisons of a protocol: a name in ``conf/protocol/`` (``v2``) or a YAML path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROTOCOL_DIR / f"{name_or_path}.yaml"
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the protocol ({exc})") from None
    claims, cells, out = spec.get("claims") or {}, spec.get("cells") or {}, []
    for i, c in enumerate(spec.get("comparisons") or []):
        where = f"{path}: comparisons[{i}]"
        cell = {"objective": "kd", **(cells.get(c.get("cell")) or {})}
        if set(cell) != {"scenario", *CELL_KEYS}:
            raise ConfigError(f"{where}: cell {c.get('cell')!r} must be a cell of 'cells' with keys scenario, "
                              f"{', '.join(CELL_KEYS)} (objective optional, kd when left out)")
        if c.get("claim") not in claims or c.get("first") not in ROLES or c.get("second") not in ROLES \
                or c.get("sign") not in (1, -1) or not c.get("metric"):
            raise ConfigError(f"{where}: needs a claim of 'claims', first/second in {ROLES}, sign 1 or -1, a metric")
        scenario = cell.pop("scenario")
        cell["temperature"] = float(cell["temperature"])
        out.append(Comparison(int(c["claim"]), str(claims[c["claim"]]), str(scenario), cell, str(c["metric"]),
                              c["first"], c["second"], int(c["sign"])))
    return out


def available() -> list[str]:
    return sorted(p.stem for p in PROTOCOL_DIR.glob("*.yaml"))


PRIMARY = load("v2")


def _values(per_seed: pd.DataFrame, c: Comparison, role: str) -> dict[int, float]:
    f = per_seed[(per_seed["scenario"] == c.scenario) & (per_seed["metric"] == c.metric) & (per_seed["role"] == role)]
    for key, value in c.cell.items():
        f = f[f[key] == value] if key in f or (key, value) != ("objective", "kd") else f  # maps made before objectives
    return dict(zip(f["seed"].astype(int), f["value"].astype(float)))


def judge(per_seed: pd.DataFrame, comparisons: list[Comparison] = PRIMARY) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per comparison, one row per claim and scenario) from the transfer map's
    per-seed values."""
    rows = []
    for c in comparisons:
        test = paired_test(_values(per_seed, c, c.first), _values(per_seed, c, c.second))
        cell = ", ".join(f"{k}={v}" for k, v in c.cell.items() if (k, v) != ("objective", "kd"))
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
        verdicts.append({"claim": claim, "scenario": scenario, "text": g["text"].iloc[0], "verdict": verdict,
                         "comparisons": len(g)})
    return frame, pd.DataFrame(verdicts)


def _verdict(diff: float, p_holm: float, sign: int) -> str:
    if math.isnan(diff) or math.isnan(p_holm) or p_holm >= ALPHA:
        return "inconclusive"
    return "reproduced" if diff * sign > 0 else "not reproduced"
