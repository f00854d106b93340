"""The paper's claims as data, and the paired comparisons that judge them on a scenario's runs.

Each :class:`Claim` says which comparison it is (the biased architecture against the other, the
cross-distilled student against the independent one, or the distilled student's closeness to its
teacher), on which measure, and the sign the paper reports; :func:`evaluate_claims` builds every
comparison (paired by seed, :mod:`analysis.tables` for the statistics) and one verdict per claim.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import yaml

from analysis import agreement as agr
from analysis import similarity, tables
from analysis.runs import Run, is_independent
from analysis.scenario import ALL_SPLITS, Scenario, arch
from analysis.tables import Rule, claim_verdict, verdict
from biaskd.errors import ConfigError


@dataclass(frozen=True)
class Claim:
    """One claim of Abnar et al. (2020) in one scenario: ``kind`` names the comparison
    (``bias``: the biased architecture, independent or as teacher, vs the other one trained
    independently; ``transfer``: cross-distilled vs independent student; ``closeness``:
    cross-distilled students closer to their teacher than independent or self-distilled ones),
    and ``sign`` the direction the paper reports (+1: first > second; per closeness measure, see
    :data:`CLOSENESS_MEASURES`). The primary measure is the scenario's own (:attr:`Layout.summary
    <analysis.scenario.Layout.summary>`: mean OOD accuracy or A-accuracy)."""

    number: int
    scenario: str
    title: str
    text: str
    kind: str
    sign: int = +1


#: the reference's claims and scenarios, as data (:func:`load_reference`)
REFERENCE_FILE = Path(__file__).with_name("reference_claims.yaml")


@dataclass(frozen=True)
class Pair:
    """A scenario's architectures in the reference: ``biased`` has the useful bias, ``others``
    lack it (the first is the primary student); ``expected`` lists the configurations the paper
    trains, (architecture, distill mode, teacher architecture)."""

    biased: str
    others: tuple[str, ...]
    expected: tuple[tuple[str, str, str | None], ...] = ()


@dataclass(frozen=True)
class Reference:
    """The claims and the scenarios they are judged in, in the README's order."""

    scenarios: dict[str, Pair]
    claims: list[Claim]

    @property
    def titles(self) -> dict[int, str]:
        return {c.number: c.title for c in self.claims}


def load_reference(path: str | Path = REFERENCE_FILE) -> Reference:
    """The reference's claims and scenarios from a YAML file (:data:`REFERENCE_FILE`'s format); a
    ConfigError naming the file and key otherwise."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the reference claims ({exc})") from None
    scenarios = {}
    for name, sc in (spec.get("scenarios") or {}).items():
        others = (sc or {}).get("others")
        if not isinstance((sc or {}).get("biased"), str) or not others or not isinstance(others, list):
            raise ConfigError(f"{path}: scenarios.{name} needs 'biased' (an architecture) and 'others' (a list)")
        expected = tuple(tuple(e) for e in sc.get("expected") or [])
        if any(len(e) != 3 for e in expected):
            raise ConfigError(f"{path}: scenarios.{name}.expected: each entry is [architecture, mode, teacher architecture]")
        scenarios[str(name)] = Pair(sc["biased"], tuple(others), expected)
    claims = []
    for i, c in enumerate(spec.get("claims") or []):
        where = f"{path}: claims[{i}]"
        if c.get("kind") not in COMPARISONS:
            raise ConfigError(f"{where}.kind must be one of {', '.join(COMPARISONS)}; got {c.get('kind')!r}")
        names = c.get("scenario") if isinstance(c.get("scenario"), list) else [c.get("scenario")]
        unknown = [n for n in names if n not in scenarios]
        if unknown:
            raise ConfigError(f"{where}.scenario {unknown[0]!r} is not one of scenarios: {', '.join(scenarios)}")
        if not isinstance(c.get("number"), int) or not c.get("title") or not c.get("text"):
            raise ConfigError(f"{where} needs 'number' (an integer), 'title' and 'text'")
        claims += [Claim(c["number"], n, c["title"], c["text"], c["kind"], int(c.get("sign", 1))) for n in names]
    return Reference(scenarios, claims)


CLAIMS: list[Claim] = []  # filled from REFERENCE_FILE at the end of the module
CLAIM_TITLES: dict[int, str] = {}
#: closeness measures and whether higher means closer (the paper's direction)
CLOSENESS_MEASURES = (("top1_agreement", True), ("js_divergence", False), ("linear_cka", True))
CLAIM_COLUMNS = ["claim", "scenario", "task", "primary", "first", "second", "measure", "split", "against",
                 "higher_is_better", "n", "seeds", "mean_first", "mean_second", "diff", "diff_half_width",
                 "t", "p_ttest", "transfer_ratio", "verdict", "note"]


def compare(claim: int, scenario: str, task: str, first: tuple[str, pd.Series], second: tuple[str, pd.Series],
            measure: str, split: str, higher_is_better: bool, primary: bool, rule: Rule,
            transfer_ratio: float = math.nan, note: str = "", against: str = "") -> dict:
    """One paired comparison, first vs second, by seed (``against``: the model both are measured
    against, for closeness measures)."""
    (la, a), (lb, b) = first, second
    res = tables.paired_test(a, b)
    seeds = sorted(set(a.dropna().index) & set(b.dropna().index))
    # the verdict uses the t-test only, so notes about the Wilcoxon test are left out
    notes = [x for x in [note, *res["note"].split("; ")] if x and "Wilcoxon" not in x]
    if not seeds:
        notes.append(f"no seed has both ({la}: seeds {sorted(a.dropna().index.tolist()) or 'none'}; "
                     f"{lb}: seeds {sorted(b.dropna().index.tolist()) or 'none'})")
    return {
        "claim": claim, "scenario": scenario, "task": task, "primary": primary, "first": la, "second": lb,
        "measure": measure, "split": split, "against": against, "higher_is_better": higher_is_better, "n": res["n_pairs"],
        "seeds": res["seeds"], "mean_first": float(a[seeds].mean()) if seeds else math.nan,
        "mean_second": float(b[seeds].mean()) if seeds else math.nan, "diff": res["mean_diff"],
        "diff_half_width": res["diff_half_width"], "t": res["t"], "p_ttest": res["p_ttest"],
        "transfer_ratio": transfer_ratio,
        "verdict": verdict(res["mean_diff"], res["p_ttest"], res["n_pairs"], higher_is_better, rule),
        "note": "; ".join(notes),
    }


def _label(members: Sequence[tuple[int, Run]], what: str) -> str:
    models = sorted({r.model for _, r in members})
    return f"{'/'.join(models)} ({what})"


def _kd_label(model: str, key: tuple, many: bool) -> str:
    mode, teacher, a, t = key
    s = f"{model} ({mode}<-{teacher})"
    return s + (f" α={a}, T={t}" if many else "")


def _ratio(sc: Scenario, task: str, members: Sequence[tuple[int, Run]], split: str, metric: str = "accuracy") -> float:
    """Transfer ratio of these KD students on ``split`` (teacher = the runs they name)."""
    if not members:
        return math.nan
    ids = {r.run_id for _, r in members}
    f = sc.frame[(sc.frame["task"] == task) & (sc.frame["split"] == split) & (sc.frame["metric"] == metric)]
    t = tables.transfer_table(f[is_independent(f) | f["run"].isin(ids)], metrics=[metric])
    return float(t["transfer_ratio"].iloc[0]) if len(t) == 1 else math.nan


def claims_bias(sc: Scenario, claim: Claim, rule: Rule, pair: Pair) -> tuple[list[dict], list[str]]:
    """Claims 1 and 3: the biased architecture beats the other one (independent runs of the other)."""
    rows, missing = [], []
    biased, others = pair.biased, pair.others
    for task in sc.tasks:
        lay = sc.layouts[task]
        if lay.lacks():
            missing.append(f"`{task}`: {lay.lacks()}")
            continue
        key, secondary = lay.summary, lay.components()
        sides = [(_label(m, "independent"), m) for m in [sc.independent(task, biased)] if m]
        sides += [(_label(m, "teacher"), m) for m in [sc.teachers(task, biased)] if m]
        if not sides:
            missing.append(f"`{task}`: no {biased.upper()} runs (independent or teacher)")
            continue
        found_other = False
        for other in others:
            b = sc.independent(task, other)
            if not b:
                continue
            found_other = True
            for i, (la, a) in enumerate(sides):
                for split, sp in [(key, key)] + secondary:
                    primary = i == 0 and split == key and other == others[0]
                    rows.append(compare(claim.number, sc.name, task, (la, sc.per_seed(a, sp)),
                                        (_label(b, "independent"), sc.per_seed(b, sp)),
                                        "accuracy", split, claim.sign > 0, primary, rule))
        if not found_other:
            missing.append(f"`{task}`: no independent {' or '.join(others)} runs")
    return rows, missing


def claims_transfer(sc: Scenario, claim: Claim, rule: Rule, pair: Pair) -> tuple[list[dict], list[str]]:
    """Claims 2 and 4: the cross-distilled student beats the independent one where the bias matters."""
    rows, missing = [], []
    biased, others = pair.biased, pair.others
    for task in sc.tasks:
        lay = sc.layouts[task]
        key, secondary = lay.summary, lay.components() + [("test", "test")]
        models = sorted({r.model for r in sc.task_runs(task) if arch(r.model) in others})
        found = False
        for model in models:
            groups = sc.distilled(task, model, lambda m: m.cross_distilled, biased)
            b = [(s, r) for s, r in sc.independent(task, arch(model)) if r.model == model]
            if not groups:
                continue
            found = True
            if not b:
                missing.append(f"`{task}`: no independent {model} runs to compare the distilled ones with")
                continue
            for gkey, members in groups.items():
                la = _kd_label(model, gkey, len(groups) > 1)
                for split, sp in [(key, key)] + secondary:
                    primary = split == key and arch(model) == others[0]
                    rows.append(compare(claim.number, sc.name, task, (la, sc.per_seed(members, sp)),
                                        (_label(b, "independent"), sc.per_seed(b, sp)), "accuracy", split,
                                        claim.sign > 0, primary, rule, transfer_ratio=_ratio(sc, task, members, sp)))
        if not found:
            missing.append(f"`{task}`: no {'/'.join(others)} students cross-distilled from a {biased} teacher")
    return rows, missing


def _outputs(run: Run, split: str):
    return run.outputs(split) if split in run.output_splits() else None


def _features(run: Run):
    return run.features("final") if run.has_features("final") else None


class _Closeness:
    """Agreement and similarity of students with teachers. A teacher is compared with several
    students of its seed, so its outputs are kept; a student's are read once and dropped."""

    def __init__(self, measure: Callable = similarity.linear_cka):
        self.outputs: dict[tuple[str, str], object] = {}
        self.feats: dict[str, object] = {}
        self.measure = measure

    def _teacher_out(self, run: Run, split: str):
        k = (run.run_id, split)
        if k not in self.outputs:
            self.outputs[k] = _outputs(run, split)
        return self.outputs[k]

    def _teacher_feat(self, run: Run):
        if run.run_id not in self.feats:
            self.feats[run.run_id] = _features(run)
        return self.feats[run.run_id]

    def values(self, student: Run, teacher: Run, splits: Sequence[str]) -> dict[tuple[str, str], float]:
        out = {}
        for split in splits:
            so, to = _outputs(student, split), self._teacher_out(teacher, split)
            if so is None or to is None:
                continue
            m = agr.agreement_metrics(so, to)
            out[("top1_agreement", split)] = m["top1_agreement"]
            out[("js_divergence", split)] = m["js_divergence"]
        for name in ("top1_agreement", "js_divergence"):
            vals = [out.get((name, s)) for s in splits]
            if splits and all(v is not None for v in vals):
                out[(name, ALL_SPLITS)] = float(np.mean(vals))
        fs, ft = _features(student), self._teacher_feat(teacher)
        if fs is not None and ft is not None:
            similarity.check_same_probe(fs, ft)
            out[("linear_cka", "probe")] = self.measure(fs.features, ft.features)
        return out


def claims_closeness(sc: Scenario, claim: Claim, rule: Rule, pair: Pair,
                     cache: _Closeness | None = None) -> tuple[list[dict], list[str]]:
    """Claim 5: cross students are closer to their teacher than independent and self-distilled
    students of the same seed are to that same teacher."""
    cache = cache or _Closeness()
    rows, missing = [], []
    biased, others = pair.biased, pair.others
    for task in sc.tasks:
        lay = sc.layouts[task]
        splits = lay.splits
        models = sorted({r.model for r in sc.task_runs(task) if r.mode.cross_distilled})
        if not models:
            missing.append(f"`{task}`: no cross-distilled students")
            continue
        for model in models:
            groups = sc.distilled(task, model, lambda m: m.cross_distilled)
            for gkey, members in groups.items():
                la = _kd_label(model, gkey, len(groups) > 1)
                teacher_by_seed: dict[int, Run] = {}
                for seed, r in members:
                    if r.run_id in sc.teacher_of:
                        teacher_by_seed.setdefault(seed, sc.teacher_of[r.run_id])
                if not teacher_by_seed:
                    missing.append(f"`{task}`: the teachers of the {la} students cannot be loaded")
                    continue

                def closeness(ms: Sequence[tuple[int, Run]]) -> dict[int, dict]:
                    by_seed: dict[int, list[dict]] = defaultdict(list)
                    for seed, r in ms:
                        if seed in teacher_by_seed:
                            by_seed[seed].append(cache.values(r, teacher_by_seed[seed], splits))
                    return {s: {k: float(np.mean([d[k] for d in ds if k in d])) for k in set().union(*ds)}
                            for s, ds in by_seed.items()}

                cross = closeness(members)
                baselines = [("independent", [(s, r) for s, r in sc.independent(task, arch(model)) if r.model == model])]
                selfs = [m for g in sc.distilled(task, model, lambda mode: mode.teacher_is_student).values()
                         for m in g]
                baselines.append(("self-distilled", selfs))
                t_model = gkey[1]
                # the paper's direction (biased teacher -> first student architecture) decides the verdict
                main_pair = arch(t_model or "") == biased and arch(model) == others[0]
                for what, ms in baselines:
                    if not ms:
                        missing.append(f"`{task}`: no {what} {model} runs to compare {la} with")
                        continue
                    base = closeness(ms)
                    lb = _label(ms, what)
                    keys = [(m, ALL_SPLITS, hib, main_pair) for m, hib in CLOSENESS_MEASURES if m != "linear_cka"]
                    keys.append(("linear_cka", "probe", True, main_pair))
                    keys += [(m, s, hib, False) for s in splits for m, hib in CLOSENESS_MEASURES if m != "linear_cka"]
                    for measure, split, hib, primary in keys:
                        a = pd.Series({s: v.get((measure, split), math.nan) for s, v in cross.items()}, dtype=float)
                        b = pd.Series({s: v.get((measure, split), math.nan) for s, v in base.items()}, dtype=float)
                        note = "" if a.notna().any() and b.notna().any() else (
                            "no probe features" if measure == "linear_cka" else "no outputs on this split")
                        rows.append(compare(claim.number, sc.name, task, (la, a), (lb, b), measure, split, hib, primary,
                                            rule, note=note, against=f"the {t_model} teacher of the seed"))
        if not any(r["primary"] for r in rows if r["task"] == task):
            missing.append(f"`{task}`: no {others[0]} students cross-distilled from a {biased} teacher with "
                           "an independent or self-distilled baseline")
    return rows, missing


def evaluate_claims(scenarios: dict[str, Scenario | None], rule: Rule = Rule(),
                    reference: Reference | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(all comparison rows, one verdict per claim and scenario of ``reference``, by default
    :data:`REFERENCE_FILE`'s)."""
    reference = reference or load_reference()
    rows, summary = [], []
    for c in reference.claims:
        claim, name = c.number, c.scenario
        sc = scenarios.get(name)
        if sc is None:
            r, missing = [], [f"no {name} runs given (`--{name}`)"]
        elif not sc.runs:
            r, missing = [], [f"no complete {name} run dirs were found"]
        else:
            r, missing = COMPARISONS[c.kind](sc, c, rule, reference.scenarios[name])
        rows += r
        rf = pd.DataFrame(r, columns=CLAIM_COLUMNS)
        summary.append({"claim": claim, "scenario": name, "verdict": claim_verdict(rf),
                        "primary_comparisons": int(rf["primary"].sum()) if len(rf) else 0,
                        "missing": "; ".join(missing)})
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS), pd.DataFrame(summary)


#: how each kind of claim is judged on a scenario: (comparison rows, what is missing)
COMPARISONS: dict[str, Callable[[Scenario, Claim, Rule, Pair], tuple[list[dict], list[str]]]] = {
    "bias": claims_bias, "transfer": claims_transfer, "closeness": claims_closeness,
}
_DEFAULT = load_reference()
CLAIMS += _DEFAULT.claims
CLAIM_TITLES.update(_DEFAULT.titles)
