"""Reference results: one report per scenario, and a README with a verdict on each of the paper's claims.

    python -m analysis.reference --vision RUNS... --language RUNS... --out results
        [--scenario NAME RUNS...] [--claims FILE] [--commands-file FILE] [--notes FILE] [--alpha 0.05]
        [--min-seeds 3] [--measure linear_cka] [--seed 0]

RUNS are run dirs or sweep folders, as for :mod:`analysis.report`, which writes the full report
of each scenario into ``OUT/<scenario>/``. The claims and the scenarios they are judged in
(``--vision``, ``--language``: one option each) are data, ``analysis/reference_claims.yaml`` or
``--claims FILE``; ``--scenario NAME RUNS...`` adds a scenario the claims do not name, with its
tables and no verdict. ``OUT/README.md`` then gathers, from the same run
dirs: a table per scenario (mean ± 95% CI over seeds), accuracy against OOD severity, transfer
ratios, an automatic verdict on each claim of Abnar et al. (2020) with the numbers and the paired
test behind it, the scale of the runs next to the paper's, and the commands that made the runs.
Every table is also written as CSV beside the README. What is missing (a scenario, a model, a
second seed) is said in the README; nothing is filled in.
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import pandas as pd

from analysis import similarity, tables
from analysis.claims import REFERENCE_FILE, Reference, evaluate_claims, load_reference
from analysis.markdown import Report
from analysis.report import build_report
from analysis.scale import hydra_commands, read_commands, scale_facts
from analysis.scenario import (A_MEAN, ALL_SPLITS, ATTRACTORS, OOD_MEAN, Scenario, load_scenario, missing_configs,
                               scenario_table, severity_tables, transfer_rows)
from analysis.tables import VERDICT_RULE, Rule

DEFAULT_NOTES = Path(__file__).with_name("reference_notes.md")


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _fmt(v, digits: int = 3) -> str:
    return "–" if _nan(v) else f"{v:.{digits}f}"


def _fmt_p(p) -> str:
    if _nan(p):
        return "–"
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def evidence(row: pd.Series) -> str:
    """``A-accuracy: lstm (independent) 0.912 vs transformer (independent) 0.801, Δ = +0.111 ± 0.020, p = 0.003, n = 3``."""
    hw = "" if _nan(row["diff_half_width"]) else f" ± {row['diff_half_width']:.3f}"
    diff = "–" if _nan(row["diff"]) else f"{row['diff']:+.3f}{hw}"
    tr = "" if _nan(row.get("transfer_ratio")) else f", transfer ratio {row['transfer_ratio']:.2f}"
    return (f"{_measure_name(row['measure'], row['split'], row.get('against'))} [`{row['task']}`]: {row['first']} "
            f"{_fmt(row['mean_first'])} vs {row['second']} {_fmt(row['mean_second'])}, Δ = {diff}, "
            f"p = {_fmt_p(row['p_ttest'])}, n = {row['n']}{tr} → {row['verdict']}")


def _measure_name(measure: str, split: str, against: str | None = None) -> str:
    names = {OOD_MEAN: "mean OOD accuracy", A_MEAN: "A-accuracy", "test": "test accuracy"}
    if measure == "accuracy":
        return names.get(split, f"accuracy on `{split}`")
    what = {"top1_agreement": "top-1 agreement", "js_divergence": "JS divergence", "linear_cka": "linear CKA"}[measure]
    where = {ALL_SPLITS: "mean over eval splits", "probe": "probe set"}.get(split, f"`{split}`")
    return f"{what} with {against or 'the teacher'} ({where})"


# --- README -------------------------------------------------------------------------------------------
def report_figures(folder: Path) -> list[tuple[str, str]]:
    """(file, caption) of the figures a report links, in its order."""
    md = folder / "report.md"
    if not md.is_file():
        return []
    return [(f, c) for c, f in re.findall(r"^!\[(.*?)\]\((.+?\.png)\)$", md.read_text(), flags=re.M)]


def _claims_table(rows: pd.DataFrame, with_ratio: bool) -> pd.DataFrame:
    t = pd.DataFrame({
        "task": rows["task"], "comparison": rows["first"] + " vs " + rows["second"],
        "measure": [_measure_name(m, s, a) for m, s, a in zip(rows["measure"], rows["split"], rows["against"])],
        "n": rows["n"], "seeds": rows["seeds"], "first": rows["mean_first"], "second": rows["mean_second"],
        "Δ (first − second)": [tables.format_mean_ci(d, h) if not _nan(d) else "–"
                               for d, h in zip(rows["diff"], rows["diff_half_width"])],
        "t": rows["t"], "p": [_fmt_p(p) for p in rows["p_ttest"]],
    })
    if with_ratio:
        t["transfer ratio"] = rows["transfer_ratio"]
    t["verdict"] = rows["verdict"]
    if rows["note"].astype(bool).any():
        t["note"] = rows["note"]
    return t


def write_readme(out: Path, scenarios: dict[str, Scenario | None], claims: pd.DataFrame, verdicts: pd.DataFrame,
                 *, rule: Rule, notes_text: str, commands: list[str] | None, commands_file: str | None,
                 argv: Sequence[str], reference: Reference | None = None) -> Path:
    """The README: ``scenarios`` in their order (None: not given), the claims of ``reference``
    (default: :data:`analysis.claims.REFERENCE_FILE`'s)."""
    reference = reference or load_reference()
    titles = reference.titles
    md = Report(out)
    given = [sc for sc in scenarios.values() if sc is not None]
    n_runs = sum(len(sc.runs) for sc in given)
    md.lines += ["# biaskd reference results", "",
                 "Does knowledge distillation carry a teacher's inductive bias into a student of another "
                 "architecture? These are the reference numbers of biaskd's reproduction of Abnar, Dehghani & "
                 "Zuidema (2020), *Transferring Inductive Biases through Knowledge Distillation* (arXiv 2006.00555).",
                 "",
                 f"Written {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by `python -m "
                 f"analysis.reference` from {n_runs} complete run dirs; every number, table and figure below "
                 "is computed from the run dirs (see *How to regenerate*). Intervals are Student-t 95% "
                 "intervals over seeds; `(n=1)` marks a single seed.", ""]
    md.h(2, "Contents")
    md.p("\n".join(["- [The paper's claims: verdicts](#the-papers-claims-verdicts)"]
                   + [f"- [{n.capitalize()} scenario](#{n}-scenario)" for n in scenarios]
                   + ["- [Claims in detail](#claims-in-detail)",
                      "- [Scale differences from the paper](#scale-differences-from-the-paper)",
                      "- [How to regenerate](#how-to-regenerate)"]))

    # verdict summary
    md.h(2, "The paper's claims: verdicts")
    md.p(VERDICT_RULE.format(alpha=f"{rule.alpha:g}", min_n=max(2, rule.min_n)))
    srows = []
    for _, v in verdicts.iterrows():
        r = claims[(claims["claim"] == v["claim"]) & (claims["scenario"] == v["scenario"]) & claims["primary"]]
        ev = [evidence(x) for _, x in r.iterrows()]
        if v["missing"]:
            ev.append("missing: " + v["missing"])
        srows.append({"claim": f"({v['claim']}) {titles[v['claim']]}", "scenario": v["scenario"],
                      "verdict": f"**{v['verdict']}**", "primary comparisons (numbers)": "<br>".join(ev) or "–"})
    md.table(pd.DataFrame(srows))
    verdicts.to_csv(out / "verdicts.csv", index=False)
    claims.to_csv(out / "claims.csv", index=False)
    md.p("CSV: [`verdicts.csv`](verdicts.csv) (one row per claim and scenario), [`claims.csv`](claims.csv) "
         "(every comparison, primary and supporting, with per-side means, Δ, its CI half-width, t and p).")

    # scenarios
    for name, sc in scenarios.items():
        md.h(2, f"{name.capitalize()} scenario")
        if sc is None:
            md.missing(f"no {name} runs were given (`--{name}`), so there is no {name} table, figure or verdict.")
            if (out / name).is_dir():
                md.p(f"The folder [`{name}/`]({name}/) is left from an earlier invocation and is not described here.")
            continue
        report = (f"; full report: [`{name}/report.md`]({name}/report.md)" if (out / name / "report.md").is_file()
                  else "; no scenario report was written")
        md.p("Runs from " + ", ".join(f"`{p}`" for p in sc.paths) + report + ".")
        for note in sc.notes:
            md.p(f"- input note: {note}")
        if not sc.runs:
            md.missing("no complete run dirs under " + ", ".join(f"`{p}`" for p in sc.paths) + ".")
            continue
        pair = reference.scenarios.get(name)
        _scenario_section(md, sc, pair.expected if pair else ())

    # claims in detail
    md.h(2, "Claims in detail")
    md.p("Primary comparisons decide the verdict; supporting ones are listed under them. `first`/`second` "
         "are the per-side means over the paired seeds; Δ = first − second with its 95% CI; p from the "
         "paired t-test. For claim 5, JS divergence is better when lower, so there Δ < 0 is the paper's "
         "direction.")
    for (claim, name), v in verdicts.set_index(["claim", "scenario"]).iterrows():
        md.h(3, f"({claim}) {titles[claim]} — {name}: {v['verdict']}")
        md.p(next(c.text for c in reference.claims if (c.number, c.scenario) == (claim, name)))
        rows = claims[(claims["claim"] == claim) & (claims["scenario"] == name)]
        if v["missing"]:
            md.missing(v["missing"])
        if rows.empty:
            continue
        with_ratio = claim in (2, 4)
        prim, sec = rows[rows["primary"]], rows[~rows["primary"]]
        if len(prim):
            md.p("**Primary**")
            md.table(_claims_table(prim, with_ratio))
        if len(sec):
            md.lines += ["<details><summary>Supporting comparisons "
                         f"({len(sec)})</summary>", ""]
            md.table(_claims_table(sec, with_ratio))
            md.lines += ["</details>", ""]

    # scale
    md.h(2, "Scale differences from the paper")
    facts = pd.concat([scale_facts(sc) for sc in given if sc.runs] or [pd.DataFrame()], ignore_index=True)
    if facts.empty:
        md.missing("no runs, so no facts about their scale.")
    else:
        md.p("What the runs used, read from their run dirs:")
        md.table(facts, csv="scale.csv")
    md.p(notes_text.strip())

    # regenerate
    md.h(2, "How to regenerate")
    if commands:
        md.p(f"The sweeps that made the runs (from `{commands_file}`; annotations after `#` as written there):")
        md.lines += ["```bash", *commands, "```", ""]
    elif commands_file:
        md.missing(f"the commands file `{commands_file}` was not found, so the commands that made the runs "
                   "are not listed here.")
    else:
        md.missing("no `--commands-file` was given, so the commands that made the runs are not listed here.")
    recorded = [c for sc in given for c in hydra_commands(sc.paths)]
    if recorded:
        md.p("Command lines Hydra recorded under the runs folders (`_hydra/`, one per invocation, with its time stamp):")
        md.lines += ["```bash", *dict.fromkeys(recorded), "```", ""]
    md.p("Then this folder:")
    md.lines += ["```bash", "python -m analysis.reference " + shlex.join(argv), "```", ""]
    path = out / "README.md"
    path.write_text("\n".join(md.lines).lstrip() + "\n")
    return path


def _scenario_section(md: Report, sc: Scenario, expected: Sequence[tuple[str, str, str | None]] = ()) -> None:
    name = sc.name
    tables_long, sev_long, transfer = [], [], []
    for task in sc.tasks:
        lay = sc.layouts[task]
        md.h(3, f"Task `{task}`")
        md.p(lay.describe() + ".")
        wide, long = scenario_table(sc, task)
        md.p("**Metrics per configuration (mean ± 95% CI over seeds)**")
        md.table(wide)
        tables_long.append(long)
        missing = missing_configs(sc, task, expected)
        if missing:
            md.missing("no runs of " + ", ".join(missing) + ".")
        single = wide[wide["seeds (n)"] < 2]["config"].tolist()
        if single:
            md.p("Single seed (no interval, and no paired test possible): " + ", ".join(f"`{c}`" for c in single) + ".")
        if lay.kind != ATTRACTORS:
            sw, sl = severity_tables(sc, task)
            if len(sw):
                md.p("**Accuracy against severity** (s0 = `test`)")
                md.table(sw)
                sev_long.append(sl)
                png = f"{name}/severity_{task}.png"
                if (md.out / png).is_file():
                    md.p(f"Figure: [accuracy vs severity per model and mode]({png})")
            else:
                md.p("No severity sweep among the OOD splits (`NAME_s1..5`), so no accuracy-vs-severity table.")
        tr = transfer_rows(sc, task)
        md.p("**Transfer ratio** (m(student_KD) − m(student_indep)) / (m(teacher) − m(student_indep)), "
             "means over seeds; teacher = the runs the students name.")
        if tr.empty:
            md.missing("no cross-architecture distilled students, so no transfer ratio.")
        else:
            show = tr[["student", "column", "m_kd", "m_indep", "m_teacher", "n_kd", "n_indep", "n_teacher",
                       "transfer_ratio", "note"]].rename(columns={"column": "metric"})
            md.table(show)
            transfer.append(tr)
    if tables_long:
        pd.concat(tables_long).to_csv(md.out / f"{name}_table.csv", index=False)
        md.p(f"CSV: [`{name}_table.csv`]({name}_table.csv)")
    if sev_long:
        pd.concat(sev_long).to_csv(md.out / f"{name}_severity.csv", index=False)
        md.p(f"CSV: [`{name}_severity.csv`]({name}_severity.csv)")
    if transfer:
        pd.concat(transfer).to_csv(md.out / f"{name}_transfer.csv", index=False)
        md.p(f"CSV: [`{name}_transfer.csv`]({name}_transfer.csv)")
    figs = report_figures(md.out / name)
    md.p("**Figures** (from the scenario report)")
    if figs:
        md.p("\n".join(f"- [{cap}]({name}/{f})" for f, cap in figs))
    else:
        md.missing("the scenario report has no figures.")


# --- entry points ----------------------------------------------------------------------------------
def _clean(folder: Path) -> None:
    """Remove what an earlier report left in ``folder`` (generated file types only)."""
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_file() and p.suffix in (".png", ".csv", ".md"):
                p.unlink()


def build_reference(out: str | Path, runs: dict[str, Sequence[str]] | None = None, *,
                    claims: str | Path | None = None, commands_file: str | Path | None = None,
                    notes: str | Path | None = None, alpha: float = 0.05, min_seeds: int = 3,
                    measure: str = "linear_cka", seed: int = 0, reports: bool = True, argv: Sequence[str] = (),
                    **by_scenario: Sequence[str] | None) -> Path:
    """Write ``out/<scenario>/`` reports and ``out/README.md`` with its CSVs; returns the README
    path. ``runs`` (or keywords, ``vision=[...]``): scenario name -> its run dirs; the scenarios of
    the claims (``claims``: a file like :data:`analysis.claims.REFERENCE_FILE`) come first, given
    or not, then any other given."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    reference = load_reference(claims or REFERENCE_FILE)
    given = {**(runs or {}), **by_scenario}
    scenarios: dict[str, Scenario | None] = {}
    for name in [*reference.scenarios, *(n for n in given if n not in reference.scenarios)]:
        paths = given.get(name)
        if not paths:
            scenarios[name] = None
            continue
        sc = load_scenario(name, paths)
        scenarios[name] = sc
        if reports:
            _clean(out / name)
            if sc.runs:
                build_report([p for p in paths if Path(p).exists()], out / name, measure=measure, seed=seed)
    rule = Rule(alpha, min_seeds)
    claims_rows, verdicts = evaluate_claims(scenarios, rule, reference)
    notes_path = Path(notes) if notes else DEFAULT_NOTES
    notes_text = (notes_path.read_text() if notes_path.is_file()
                  else f"> **Missing:** notes file `{notes_path}` not found.")
    commands = None
    if commands_file and Path(commands_file).is_file():
        commands = read_commands(Path(commands_file))
    return write_readme(out, scenarios, claims_rows, verdicts, rule=rule, notes_text=notes_text, commands=commands,
                        commands_file=str(commands_file) if commands_file else None, argv=argv, reference=reference)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--claims")
    claims_file = first.parse_known_args(argv)[0].claims or REFERENCE_FILE
    reference = load_reference(claims_file)
    ap = argparse.ArgumentParser(prog="python -m analysis.reference", description=__doc__.split("\n\n")[0])
    ap.add_argument("--claims", default=str(claims_file), help="the claims and their scenarios (YAML; default: %(default)s)")
    for name, pair in reference.scenarios.items():
        ap.add_argument(f"--{name}", nargs="+", metavar="RUNS", dest=f"runs:{name}",
                        help=f"{name} ({pair.biased}/{'/'.join(pair.others)}) run dirs or sweep folders")
    ap.add_argument("--scenario", nargs="+", action="append", default=[], metavar="NAME RUNS",
                    help="another scenario's name and its run dirs (tables, no verdict); repeatable")
    ap.add_argument("--out", required=True, help="results folder (README.md, CSVs, one report folder per scenario)")
    ap.add_argument("--commands-file", help="text file with the commands that made the runs, one per line "
                                            "(`# ...` after a command: an annotation such as its wall time)")
    ap.add_argument("--notes", help=f"Markdown paragraph for the scale section (default: {DEFAULT_NOTES.name})")
    ap.add_argument("--alpha", type=float, default=0.05, help="significance level of the verdicts")
    ap.add_argument("--min-seeds", type=int, default=3,
                    help="fewest paired seeds for a verdict other than inconclusive (at least 2)")
    ap.add_argument("--measure", default="linear_cka", choices=sorted(similarity.MEASURES),
                    help="representational similarity of the scenario reports")
    ap.add_argument("--seed", type=int, default=0, help="random_state of the reports' MDS maps")
    args = ap.parse_args(argv)
    runs = {name: vars(args)[f"runs:{name}"] for name in reference.scenarios}
    for item in args.scenario:
        if len(item) < 2:
            ap.error(f"--scenario {item[0]}: give the scenario's name, then its run dirs or sweep folders")
        runs[item[0]] = [*(runs.get(item[0]) or []), *item[1:]]
    if not any(runs.values()):
        options = ", ".join(f"--{n}" for n in reference.scenarios)
        print(f"note: no runs given ({options} or --scenario NAME RUNS...); the README will say so", file=sys.stderr)
    path = build_reference(args.out, runs, claims=args.claims, commands_file=args.commands_file,
                           notes=args.notes, alpha=args.alpha, min_seeds=args.min_seeds, measure=args.measure, seed=args.seed, argv=argv)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from analysis.command import run

    sys.exit(run(main))
