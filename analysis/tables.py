"""The statistics of the analysis: mean with 95% CI over seeds, transfer ratio, paired tests of
KD vs independent, and the verdict rule on the paper's claims.

All functions take the tidy frame of :func:`analysis.runs.runs_frame` (one row per
run x split x metric) and return tidy frames, so the same numbers go to Markdown, CSV and plots.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from analysis.runs import is_independent, mode_flag

#: Columns identifying a training configuration; rows that differ only in seed are pooled.
CONFIG_KEYS = ["task", "model", "role", "distill", "objective", "teacher_model", "alpha", "temperature", "transfer"]
NO_CI_NOTE = "n=1: no confidence interval"


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> dict:
    """Mean and Student-t confidence interval over seeds.

    ``half_width = t_{(1+confidence)/2, n-1} * sd / sqrt(n)`` with the sample sd (ddof=1).
    NaN values are dropped. With n = 1 the interval is undefined: ``ci_low``, ``ci_high`` and
    ``half_width`` are NaN and ``note`` says so; with n = 0 the mean is NaN too.
    """
    x = np.asarray([v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))],
                   dtype=float)
    n = len(x)
    out = {"mean": math.nan, "sd": math.nan, "n": n, "half_width": math.nan,
           "ci_low": math.nan, "ci_high": math.nan, "note": ""}
    if n == 0:
        out["note"] = "no values"
        return out
    out["mean"] = float(x.mean())
    if n == 1:
        out["note"] = NO_CI_NOTE
        return out
    sd = float(x.std(ddof=1))
    if sd == 0:  # scipy's interval of constant values is (nan, nan); the mean is exact
        hw = 0.0
    else:
        low, high = stats.ttest_1samp(x, 0.0).confidence_interval(confidence)
        hw = float((high - low) / 2)
    out.update(sd=sd, half_width=hw, ci_low=out["mean"] - hw, ci_high=out["mean"] + hw)
    return out


def format_mean_ci(mean: float, half_width: float, n: int | None = None, digits: int = 3) -> str:
    """``0.912 ± 0.004``; without an interval ``0.912 (n=1)``; ``–`` for a missing mean."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if half_width is None or math.isnan(half_width):
        return f"{mean:.{digits}f}" + (f" (n={n})" if n is not None else "")
    return f"{mean:.{digits}f} ± {half_width:.{digits}f}"


def _keys_present(frame: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    return [k for k in keys if k in frame.columns]


def summarize(frame: pd.DataFrame, by: Sequence[str] | None = None, value: str = "value",
              confidence: float = 0.95) -> pd.DataFrame:
    """Mean ± CI of ``value`` over the rows of each group (by default: over seeds of one
    configuration, split and metric). Adds ``seeds`` (the seeds pooled) and ``text``."""
    by = _keys_present(frame, by if by is not None else CONFIG_KEYS + ["split", "metric"])
    rows = []
    for key, g in frame.groupby(by, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        ci = mean_ci(g[value], confidence)
        seeds = sorted({int(s) for s in g["seed"].dropna()}) if "seed" in g else []
        rows.append({**dict(zip(by, key)), **ci, "seeds": ",".join(map(str, seeds)),
                     "text": format_mean_ci(ci["mean"], ci["half_width"], ci["n"])})
    return pd.DataFrame(rows, columns=by + ["mean", "sd", "n", "half_width", "ci_low", "ci_high",
                                            "note", "seeds", "text"])


def transfer_ratio(m_kd: float, m_indep: float, m_teacher: float, min_gap: float = 1e-9) -> float:
    """``(m(student_KD) - m(student_indep)) / (m(teacher) - m(student_indep))``.

    The fraction of the teacher-student gap that distillation closes: 0 = nothing, 1 = all,
    > 1 = overshoot, < 0 = distillation hurt. NaN when ``|m(teacher) - m(student_indep)| <=
    min_gap`` (no gap to close, e.g. self-distillation): the ratio would be noise over ~0.
    """
    gap = m_teacher - m_indep
    if any(math.isnan(v) for v in (m_kd, m_indep, m_teacher)) or abs(gap) <= min_gap:
        return math.nan
    return float((m_kd - m_indep) / gap)


TRANSFER_COLUMNS = ["task", "split", "metric", "model", "teacher_model", "distill", "objective",
                    "alpha", "temperature", "transfer", "m_kd", "m_indep", "m_teacher", "n_kd", "n_indep",
                    "n_teacher", "gap", "gap_half_width", "transfer_ratio", "teacher_source", "note"]


def _seed_values(frame: pd.DataFrame) -> pd.Series:
    """One value per seed (the mean if a seed appears twice, e.g. two runs of one config)."""
    return frame.groupby("seed")["value"].mean() if len(frame) else pd.Series(dtype=float)


def _independent(frame: pd.DataFrame, task, split, metric, model, prefer_role: str, transfer=None) -> pd.DataFrame:
    """Runs of ``model`` trained without distillation (:func:`~analysis.runs.is_independent`); among them the
    ones with role ``prefer_role`` if there are any (a teacher of the student's architecture,
    e.g. for self-distillation, is not the independent student and vice versa). With a
    ``transfer`` column, only runs on the same transfer inputs (``""``: none) count: a student
    distilled on extra inputs is compared with the control trained on them with gold labels."""
    rows = frame[is_independent(frame) & (frame["task"] == task) & (frame["split"] == split)
                 & (frame["metric"] == metric) & (frame["model"] == model)]
    if "transfer" in frame:
        rows = rows[rows["transfer"].fillna("") == ("" if transfer is None or transfer != transfer else transfer)]
    preferred = rows[rows["role"] == prefer_role]
    return preferred if len(preferred) else rows


def _kd_keys(frame: pd.DataFrame) -> list[str]:
    """What one distilled-student configuration is (its runs differ in seed only)."""
    keys = ["task", "split", "metric", "model", "teacher_model", "distill", "objective", "alpha", "temperature"]
    return keys + _keys_present(frame, ["transfer"])


def _kd_configurations(frame: pd.DataFrame, keys: list[str]) -> Iterator[tuple[dict, pd.DataFrame, pd.DataFrame]]:
    """(configuration, its distilled runs' rows, the rows of its model's independent students) for
    every distilled-student configuration in ``frame`` (a distilled mode, with a teacher
    model), grouped by ``keys``, in sorted order."""
    kd_all = frame[mode_flag(frame, "distilled") & frame["teacher_model"].notna()]
    for key, kd in kd_all.groupby(keys, dropna=False, sort=True):
        rec = dict(zip(keys, key))
        yield rec, kd, _independent(frame, rec["task"], rec["split"], rec["metric"], rec["model"],
                                    prefer_role="student", transfer=rec.get("transfer"))


def _welch_half_width(a: pd.Series, b: pd.Series, confidence: float = 0.95) -> float:
    """Half-width of the Welch t interval of mean(a) - mean(b); NaN unless both have n >= 2."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if a.var(ddof=1) + b.var(ddof=1) == 0:
        return 0.0
    low, high = stats.ttest_ind(a, b, equal_var=False).confidence_interval(confidence)
    return float((high - low) / 2)


def transfer_table(frame: pd.DataFrame, min_gap: float = 1e-9, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Transfer ratio per scenario (task), split, metric and distilled-student configuration.

    * student_KD: runs of a distilled mode (``Mode.distilled``) with a ``teacher_model``;
    * student_indep: runs of the student's model without a teacher (role ``student``
      when there are such runs, so a teacher of the same architecture is not counted);
    * teacher: the runs the KD students name as ``teacher_run`` if they are in ``frame``,
      otherwise independent runs of ``teacher_model``
      (``teacher_source`` says which).

    Means are over seeds. ``note`` flags a ratio that is undefined (gap ~ 0, or a side
    missing) and a gap smaller than its own 95% CI half-width (the ratio is then dominated by
    seed noise); ``gap_half_width`` is the Welch t-interval half-width of the gap.
    """
    if metrics is not None:
        frame = frame[frame["metric"].isin(metrics)]
    rows = []
    for rec, kd, indep in _kd_configurations(frame, _kd_keys(frame)):
        t, s, m = rec["task"], rec["split"], rec["metric"]
        teacher_ids = set(kd["teacher_run"].dropna())
        named = frame[frame["run"].isin(teacher_ids) & (frame["split"] == s) & (frame["metric"] == m)]
        if len(named):
            teacher, source = named, "named teacher runs"
        else:
            teacher = _independent(frame, t, s, m, rec["teacher_model"], prefer_role="teacher", transfer="")
            source = "independent runs of teacher_model"
        v_kd, v_in, v_t = _seed_values(kd), _seed_values(indep), _seed_values(teacher)
        m_kd, m_in, m_t = (float(v.mean()) if len(v) else math.nan for v in (v_kd, v_in, v_t))
        gap = m_t - m_in
        gap_hw = _welch_half_width(v_t, v_in)
        ratio = transfer_ratio(m_kd, m_in, m_t, min_gap)
        notes = []
        if not len(v_in):
            notes.append("no independent student runs")
        if not len(v_t):
            notes.append("no teacher runs")
        if rec["model"] == rec["teacher_model"]:
            ratio = math.nan
            notes.append("self-distillation: teacher and student share an architecture, no gap to close")
        elif len(v_in) and len(v_t) and abs(gap) <= min_gap:
            notes.append("teacher-independent gap ~0: ratio undefined")
        elif not math.isnan(gap_hw) and abs(gap) < gap_hw:
            notes.append("gap within seed noise (95% CI): ratio unreliable")
        rows.append({**rec, "m_kd": m_kd, "m_indep": m_in, "m_teacher": m_t, "n_kd": len(v_kd),
                     "n_indep": len(v_in), "n_teacher": len(v_t), "gap": gap, "gap_half_width": gap_hw,
                     "transfer_ratio": ratio, "teacher_source": source, "note": "; ".join(notes)})
    return pd.DataFrame(rows, columns=TRANSFER_COLUMNS)


def paired_test(kd: dict | pd.Series, indep: dict | pd.Series) -> dict:
    """Paired comparison of two per-seed value maps (seed -> value), paired by seed.

    Paired t-test on the differences (needs >= 2 pairs and non-zero spread) and the exact
    Wilcoxon signed-rank test when there are >= 6 pairs (with fewer, its smallest two-sided
    p-value is >= 0.0625, so it cannot reject at 5%). Seeds present on one side only are
    ignored and listed in ``note``.
    """
    kd, indep = pd.Series(kd, dtype=float).dropna(), pd.Series(indep, dtype=float).dropna()
    seeds = sorted(set(kd.index) & set(indep.index))
    d = np.array([kd[s] - indep[s] for s in seeds], dtype=float)
    n = len(d)
    out = {"n_pairs": n, "seeds": ",".join(str(s) for s in seeds), "mean_diff": math.nan,
           "diff_half_width": math.nan, "diff_prediction_half_width": math.nan, "t": math.nan, "p_ttest": math.nan,
           "wilcoxon_w": math.nan, "p_wilcoxon": math.nan, "note": ""}
    notes = []
    unpaired = sorted(int(x) for x in set(kd.index) ^ set(indep.index))
    if unpaired:
        notes.append(f"unpaired seeds ignored: {unpaired}")
    if n:
        ci = mean_ci(d)
        out.update(mean_diff=ci["mean"], diff_half_width=ci["half_width"],
                   diff_prediction_half_width=prediction_half_width(d))
    if n < 2:
        notes.append("fewer than 2 paired seeds: no test")
    elif np.allclose(d, d[0]):
        notes.append("differences are constant: t-test undefined")
    else:
        res = stats.ttest_rel(kd[seeds].to_numpy(), indep[seeds].to_numpy())
        out.update(t=float(res.statistic), p_ttest=float(res.pvalue))
    if n >= 6 and np.any(d != 0):
        res = stats.wilcoxon(d)
        out.update(wilcoxon_w=float(res.statistic), p_wilcoxon=float(res.pvalue))
    elif n >= 2:
        notes.append("Wilcoxon needs >= 6 pairs" if n < 6 else "all differences 0: no Wilcoxon")
    out["note"] = "; ".join(notes)
    return out


def prediction_half_width(values: Iterable[float], confidence: float = 0.95) -> float:
    """Half width of the Student-t prediction interval for one more draw (a new seed):
    ``t(n−1) · sd · sqrt(1 + 1/n)``; NaN with fewer than 2 values. Beside a confidence interval
    of the mean, it says what a single new seed will likely show."""
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if len(x) < 2:
        return math.nan
    t = stats.t.ppf(0.5 + confidence / 2, len(x) - 1)
    return float(t * x.std(ddof=1) * math.sqrt(1 + 1 / len(x)))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (step-down; family-wise error control), in input
    order. NaN p-values are left out of the family and stay NaN. statsmodels'
    ``multipletests(p, method="holm")`` gives the same numbers, but would make statsmodels and
    patsy (67 MB installed) a dependency for these lines; scipy has no Holm correction."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = [i for i in np.argsort(p, kind="stable") if not np.isnan(p[i])]
    m, running = len(idx), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def paired_tests(frame: pd.DataFrame, metrics: Sequence[str] = ("accuracy",)) -> pd.DataFrame:
    """Distilled vs independent student of the same model, paired by seed, per task, split,
    metric and KD configuration (see :func:`paired_test`)."""
    frame = frame[frame["metric"].isin(metrics)]
    keys = _kd_keys(frame)
    rows = []
    for rec, kd, indep in _kd_configurations(frame, keys):
        rows.append({**rec, **paired_test(_seed_values(kd), _seed_values(indep))})
    cols = keys + ["n_pairs", "seeds", "mean_diff", "diff_half_width", "diff_prediction_half_width", "t", "p_ttest",
                   "wilcoxon_w", "p_wilcoxon", "note"]
    return pd.DataFrame(rows, columns=cols)


_SEVERITY_RE = re.compile(r"^(?P<family>.+)_s(?P<severity>[1-9][0-9]*)$")


def split_severity(split: str) -> tuple[str, int | None]:
    """``("translated", 3)`` for ``translated_s3``; ``(split, None)`` for a split without one."""
    m = _SEVERITY_RE.match(split)
    return (m.group("family"), int(m.group("severity"))) if m else (split, None)


def severity_table(summary: pd.DataFrame, clean_split: str = "test") -> pd.DataFrame:
    """Rows of a :func:`summarize` frame on severity splits (``NAME_sK``), with ``family`` and
    ``severity`` columns; the ``clean_split`` rows are repeated as severity 0 of every family,
    so a curve starts at the undistorted accuracy. Empty if there is no severity split."""
    parsed = summary["split"].map(split_severity)
    fam = parsed.map(lambda t: t[0])
    sev = parsed.map(lambda t: t[1])
    swept = summary[sev.notna()].assign(family=fam[sev.notna()], severity=sev[sev.notna()].astype(int))
    if swept.empty:
        return swept.assign(family=pd.Series(dtype=str), severity=pd.Series(dtype=int))
    clean = summary[summary["split"] == clean_split]
    parts = [swept] + [clean.assign(family=f, severity=0) for f in sorted(swept["family"].unique())]
    out = pd.concat(parts, ignore_index=True)
    return out.sort_values(["family", "severity"], kind="stable").reset_index(drop=True)


# -- verdicts on the paper's claims ---------------------------------------------------------------
VERDICT_RULE = (
    "Every comparison is paired by seed: the runs of one seed are compared with each other, and a teacher "
    "counts for the seed of the students it taught (biaskd trains it with seed + `teacher.seed_offset`). "
    "With n ≥ 2 pairs, a two-sided paired t-test on the per-seed differences gives p; Δ is the mean "
    "difference (first − second) with its 95% t-interval. A comparison is **reproduced** when Δ has the "
    "sign the paper reports and p < {alpha}; **not reproduced** when Δ has the opposite sign and p < {alpha}; "
    "**inconclusive** otherwise: fewer than {min_n} paired seeds (n too small), p ≥ {alpha} (within seed noise; at 0.05 this is the "
    "95% CI of Δ containing 0), or the "
    "same difference on every seed (no test). A claim's verdict combines its *primary* comparisons: "
    "reproduced if all of them are, not reproduced if any of them is not, inconclusive otherwise. Supporting "
    "comparisons (per split, per k, the Universal Transformer, other teacher–student directions) are listed "
    "but do not enter the verdict. "
    "**not evaluated** means the runs the comparison needs are missing (the reason is given). p-values are "
    "not corrected for multiple comparisons."
)


@dataclass(frozen=True)
class Rule:
    """Significance level, and the fewest paired seeds a verdict other than inconclusive needs
    (a t-test on 2 seeds has 1 degree of freedom: too little to stand for a paper's claim)."""

    alpha: float = 0.05
    min_n: int = 3


def verdict(diff: float, p: float, n: int, higher_is_better: bool, rule: Rule = Rule()) -> str:
    """The rule of :data:`VERDICT_RULE` for one paired comparison."""
    alpha = rule.alpha
    if n == 0:
        return "not evaluated"
    if n < max(2, rule.min_n):
        return "inconclusive (n too small)"
    if p is None or math.isnan(p):
        return "inconclusive (no test: same difference on every seed)"
    right = diff > 0 if higher_is_better else diff < 0
    if p < alpha:
        return "reproduced" if right else "not reproduced"
    return f"inconclusive (p ≥ {alpha:g})"


def claim_verdict(rows: pd.DataFrame) -> str:
    """Combine the verdicts of a claim's primary comparisons (see :data:`VERDICT_RULE`)."""
    prim = rows[rows["primary"]] if len(rows) else rows
    if prim.empty or (prim["n"] == 0).all():
        return "not evaluated"
    v = [x for x in prim["verdict"] if x != "not evaluated"]
    if all(x == "reproduced" for x in v):
        return "reproduced"
    if any(x == "not reproduced" for x in v):
        return "not reproduced"
    reasons = sorted({x[len("inconclusive ("):-1] for x in v if x.startswith("inconclusive (")})
    return f"inconclusive ({'; '.join(reasons)})" if reasons else "inconclusive"
