"""The reference-results writer: README sections, claim verdicts, numbers, missing pieces."""

import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from analysis.reference import build_reference, main
from synthetic import make_scenario, rerecord

torch.set_num_threads(1)

SECTIONS = ("## The paper's claims: verdicts", "## Vision scenario", "## Language scenario",
            "## Claims in detail", "## Scale differences from the paper", "## How to regenerate")


@pytest.fixture(scope="module")
def vision_close(tmp_path_factory):
    """Cross MLP students pulled toward their CNN teacher; OOD splits at severities 1..3."""
    return make_scenario(tmp_path_factory.mktemp("vision_close"), "vision", seeds=(0, 1, 2),
                         closeness={"cross": 0.8}, severities=(1, 2, 3), n=120, n_probe=30)


@pytest.fixture(scope="module")
def language_close(tmp_path_factory):
    return make_scenario(tmp_path_factory.mktemp("language_close"), "language", seeds=(0, 1, 2),
                         closeness={"cross": 0.8}, n=120, n_probe=30)


def _verdicts(out):
    v = pd.read_csv(out / "verdicts.csv")
    return {(int(c), s): x for c, s, x in zip(v["claim"], v["scenario"], v["verdict"])}


def _local_links(text):
    return [t for t in re.findall(r"\]\(([^)#][^)]*)\)", text) if not t.startswith("http")]


def test_cli_writes_readme_reports_and_csvs(vision_close, language_close, tmp_path):
    cmds = tmp_path / "commands.txt"
    cmds.write_text("# the vision grid\nbiaskd -m experiment=mnist_reference seed=1,2,3  # wall 41 min\n")
    out = tmp_path / "results"
    assert main(["--vision", str(vision_close.root), "--language", str(language_close.root), "--out", str(out),
                 "--commands-file", str(cmds)]) == 0
    text = (out / "README.md").read_text()
    for heading in SECTIONS:
        assert heading in text, heading
    for csv in ("vision_table.csv", "vision_severity.csv", "vision_transfer.csv", "language_table.csv",
                "language_transfer.csv", "claims.csv", "verdicts.csv", "scale.csv"):
        assert (out / csv).is_file(), csv
    for link in _local_links(text):  # every table, figure and report the README points to exists
        assert (out / link).is_file(), link
    assert "vision/severity_mnist.png" in text and (out / "vision" / "severity_mnist.png").stat().st_size > 5000
    assert "(language/report.md)" in text and "(vision/report.md)" in text
    # the report keeps an independent student's comparisons with different teachers apart
    report = (out / "vision" / "report.md").read_text()
    assert "mlp independent (vs cnn teacher)" in report and "mlp independent (vs mlp teacher)" in report
    assert "biaskd -m experiment=mnist_reference seed=1,2,3  # wall 41 min" in text
    assert "python -m analysis.reference --vision" in text
    # the synthetic teachers' architectures are better where the paper says so
    assert set(_verdicts(out).values()) == {"reproduced"}
    assert "no runs of universal_transformer (none)" in text  # the paper's UT is not in these runs
    sev = pd.read_csv(out / "vision_severity.csv")
    assert set(sev["severity"]) == {0, 1, 2, 3} and set(sev["family"]) == {"translated", "scaled"}
    table = (out / "language_table.csv")
    assert {"A-accuracy", "μ-accuracy (test)", "k=4", "ECE (test)"} <= set(pd.read_csv(table)["column"])


def test_claim5_reproduced_when_cross_students_are_closer_and_not_when_further(vision_close, tmp_path):
    build_reference(tmp_path / "close", vision=[vision_close.root], reports=False)
    assert _verdicts(tmp_path / "close")[(5, "vision")] == "reproduced"
    far = make_scenario(tmp_path / "far", "vision", seeds=(0, 1, 2), n=120, n_probe=30,
                        closeness={"none": 0.8, "self": 0.8, "cross": 0.0})
    build_reference(tmp_path / "out", vision=[far.root], reports=False)
    assert _verdicts(tmp_path / "out")[(5, "vision")] == "not reproduced"
    claims = pd.read_csv(tmp_path / "out" / "claims.csv")
    prim = claims[(claims["claim"] == 5) & claims["primary"]]
    assert len(prim) == 6 and (prim["verdict"] == "not reproduced").all()
    text = (tmp_path / "out" / "README.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| (5)") and "| vision |" in line)
    assert "**not reproduced**" in row and "p = " in row and "n = 3" in row


# --- independent recomputation from the per-example outputs --------------------------------------
def _npz(run, split):
    with np.load(run / "outputs" / f"{split}.npz") as z:
        return z["logits"].astype(np.float64), z["labels"]


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _js(p, q):
    m = (p + q) / 2
    kl = lambda a, b: np.sum(np.where(a > 0, a * np.log(np.where(a > 0, a, 1) / b), 0), axis=1)  # noqa: E731
    return float(np.mean(kl(p, m) / 2 + kl(q, m) / 2))


def _cka(run_a, run_b):
    X, Y = (np.load(r / "features" / "final.npz")["features"].astype(np.float64) for r in (run_a, run_b))
    X, Y = X - X.mean(0), Y - Y.mean(0)
    return np.linalg.norm(Y.T @ X) ** 2 / (np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y))


def _acc(run, split):
    logits, labels = _npz(run, split)
    return float(np.mean(logits.argmax(1) == labels))


def _row(claims, **kw):
    sel = claims
    for k, v in kw.items():
        sel = sel[sel[k] == v]
    assert len(sel) == 1, (kw, len(sel))
    return sel.iloc[0]


def _check(row, a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert row["n"] == len(a)
    np.testing.assert_allclose([row["mean_first"], row["mean_second"], row["diff"]],
                               [a.mean(), b.mean(), (a - b).mean()], rtol=1e-6)
    np.testing.assert_allclose(row["p_ttest"], stats.ttest_rel(a, b).pvalue, rtol=1e-6)


def test_claims_csv_equals_values_recomputed_from_outputs(vision_close, language_close, tmp_path):
    out = tmp_path / "out"
    build_reference(out, vision=[vision_close.root], language=[language_close.root], reports=False)
    claims = pd.read_csv(out / "claims.csv")
    seeds = (0, 1, 2)
    splits = ["test"] + [f"{f}_s{k}" for f in ("scaled", "translated") for k in (1, 2, 3)]

    def ood_mean(run):  # mean over families of the mean over severities
        return np.mean([np.mean([_acc(run, f"{f}_s{k}") for k in (1, 2, 3)]) for f in ("scaled", "translated")])

    # (3) independent CNN vs independent MLP, mean OOD accuracy
    cnn = [ood_mean(vision_close.students[("none-cnn", s)]) for s in seeds]
    mlp = [ood_mean(vision_close.independent[s]) for s in seeds]
    _check(_row(claims, claim=3, primary=True), cnn, mlp)
    # (4) cross vs independent MLP, and the transfer ratio with the named CNN teachers
    cross = [ood_mean(vision_close.students[("cross", s)]) for s in seeds]
    teacher = [ood_mean(vision_close.teachers[s]) for s in seeds]
    r4 = _row(claims, claim=4, primary=True)
    _check(r4, cross, mlp)
    np.testing.assert_allclose(r4["transfer_ratio"], (np.mean(cross) - np.mean(mlp)) / (np.mean(teacher) - np.mean(mlp)),
                               rtol=1e-6)

    # (5) every student against the cross teacher of its seed
    def closeness(kind):
        top1, js, cka = [], [], []
        for s in seeds:
            run = vision_close.independent[s] if kind == "none" else vision_close.students[(kind, s)]
            t = vision_close.teachers[s]
            pairs = [(_npz(run, sp)[0], _npz(t, sp)[0]) for sp in splits]
            top1.append(np.mean([np.mean(a.argmax(1) == b.argmax(1)) for a, b in pairs]))
            js.append(np.mean([_js(_softmax(a), _softmax(b)) for a, b in pairs]))
            cka.append(_cka(run, t))
        return {"top1_agreement": top1, "js_divergence": js, "linear_cka": cka}

    c = closeness("cross")
    for kind, label in (("none", "mlp (independent)"), ("self", "mlp (self-distilled)")):
        base = closeness(kind)
        for measure in ("top1_agreement", "js_divergence", "linear_cka"):
            row = _row(claims, claim=5, scenario="vision", primary=True, measure=measure, second=label)
            _check(row, c[measure], base[measure])
            assert row["verdict"] == "reproduced"

    # (1) independent LSTM vs independent Transformer, A-accuracy = mean over attractors_1..4
    def a_acc(run):
        return np.mean([_acc(run, f"attractors_{k}") for k in range(1, 5)])

    lstm = [a_acc(language_close.students[("none-lstm", s)]) for s in seeds]
    tf = [a_acc(language_close.independent[s]) for s in seeds]
    _check(_row(claims, claim=1, primary=True), lstm, tf)
    k4 = _row(claims, claim=1, split="attractors_4", first="lstm (independent)")
    _check(k4, [_acc(language_close.students[("none-lstm", s)], "attractors_4") for s in seeds],
           [_acc(language_close.independent[s], "attractors_4") for s in seeds])


def test_missing_scenario_one_seed_and_missing_configurations(tmp_path):
    one = make_scenario(tmp_path / "one", "vision", seeds=(0,), n=80, n_probe=20, teacher_arch_students=False)
    for p in one.root.glob("self-*"):
        shutil.rmtree(p)
    out = tmp_path / "out"
    assert main(["--vision", str(one.root), "--language", str(tmp_path / "no_such_dir"), "--out", str(out)]) == 0
    text = (out / "README.md").read_text()
    for heading in SECTIONS:
        assert heading in text, heading
    v = _verdicts(out)
    assert v[(1, "language")] == v[(2, "language")] == v[(5, "language")] == "not evaluated"
    assert v[(3, "vision")] == v[(4, "vision")] == v[(5, "vision")] == "inconclusive (n too small)"
    assert "path `" in text and "no_such_dir` does not exist" in text
    assert "no complete language run dirs were found" in text
    assert "no runs of mlp (self)" in text and "no self-distilled mlp runs" in text
    assert "no `--commands-file` was given" in text
    for link in _local_links(text):
        assert (out / link).is_file(), link
    # claim 3 falls back to the CNN teacher, paired with the seed of the students it taught
    claims = pd.read_csv(out / "claims.csv")
    r3 = _row(claims, claim=3, primary=True)
    assert r3["first"] == "cnn (teacher)" and r3["n"] == 1 and np.isnan(r3["p_ttest"])
    assert "Single seed" in text and "(n=1)" in text
    # a scenario not given at all
    build_reference(tmp_path / "nothing", reports=False)
    text = (tmp_path / "nothing" / "README.md").read_text()
    assert "no vision runs were given (`--vision`)" in text and "no language runs were given" in text
    assert set(_verdicts(tmp_path / "nothing").values()) == {"not evaluated"}


def test_verdict_rule():
    from analysis.tables import Rule, verdict

    assert verdict(0.1, 0.01, 3, higher_is_better=True) == "reproduced"
    assert verdict(-0.1, 0.01, 3, higher_is_better=True) == "not reproduced"
    assert verdict(-0.1, 0.01, 3, higher_is_better=False) == "reproduced"  # e.g. JS divergence
    assert verdict(0.1, 0.2, 3, higher_is_better=True) == "inconclusive (p ≥ 0.05)"
    assert verdict(-0.1, 0.2, 3, higher_is_better=True) == "inconclusive (p ≥ 0.05)"
    assert verdict(0.1, float("nan"), 1, higher_is_better=True) == "inconclusive (n too small)"
    assert verdict(0.1, 0.01, 2, higher_is_better=True) == "inconclusive (n too small)"  # default min_n = 3
    assert verdict(0.1, 0.01, 2, higher_is_better=True, rule=Rule(min_n=2)) == "reproduced"
    assert verdict(float("nan"), float("nan"), 0, higher_is_better=True) == "not evaluated"


# --- scenarios and claims as data ----------------------------------------------------------------------
def test_a_task_of_a_new_name_is_laid_out_by_its_recorded_measure(tmp_path):
    """Nothing in the analysis knows the task 'sketches'; its runs recorded the shift measure, so
    their splits are OOD families with a mean OOD accuracy (not read as attractor splits)."""
    from analysis.scenario import ATTRACTORS, FAMILIES, OOD_MEAN, load_scenario

    sweep = make_scenario(tmp_path / "runs", "vision", seeds=(0, 1), n=60, n_probe=20)
    rerecord(sweep.root, task="sketches", scenario={"name": "sketches", "measure": "shift", "headline": "translated"})
    sc = load_scenario("sketches", [sweep.root])
    assert sc.layouts["sketches"].kind == FAMILIES and set(sc.layouts["sketches"].families) == {"translated", "scaled"}
    assert OOD_MEAN in set(sc.frame["split"])
    rerecord(sweep.root, task="sketches", scenario={"name": "sketches", "measure": "attractors", "headline": "a_accuracy"})
    assert load_scenario("sketches", [sweep.root]).layouts["sketches"].kind == ATTRACTORS


def test_a_scenario_the_claims_do_not_name_gets_its_tables_and_no_verdict(vision_close, tmp_path):
    sweep = make_sweep_birdsong(tmp_path / "birds")
    out = tmp_path / "out"
    assert main(["--vision", str(vision_close.root), "--scenario", "birdsong", str(sweep.root),
                 "--out", str(out)]) == 0
    text = (out / "README.md").read_text()
    assert "## Birdsong scenario" in text and "### Task `birdsong`" in text
    assert text.index("## Language scenario") < text.index("## Birdsong scenario")  # the claims' scenarios first
    table = pd.read_csv(out / "birdsong_table.csv")
    assert {"noisy", "far_field", "OOD mean"} <= set(table["column"])
    assert not [s for _, s in _verdicts(out) if s == "birdsong"]
    with pytest.raises(SystemExit):
        main(["--scenario", "birdsong", "--out", str(out)])  # a name without runs


def make_sweep_birdsong(root):
    from synthetic import make_sweep

    return make_sweep(root, task="birdsong", seeds=(0, 1, 2), steps=())


def test_claims_of_a_file_of_ones_own_name_their_scenarios(vision_close, tmp_path):
    """A claims file of one's own: its scenario is an option of the command, its architectures
    decide the comparisons, its claims the verdicts."""
    claims = tmp_path / "claims.yaml"
    claims.write_text(
        "scenarios:\n  digits: {biased: cnn, others: [mlp], expected: [[cnn, none, null], [mlp, online, cnn]]}\n"
        "claims:\n  - {number: 7, scenario: digits, kind: transfer, title: the CNN helps, text: It does.}\n")
    out = tmp_path / "out"
    assert main(["--claims", str(claims), "--digits", str(vision_close.root), "--out", str(out)]) == 0
    assert _verdicts(out) == {(7, "digits"): "reproduced"}
    text = (out / "README.md").read_text()
    assert "## Digits scenario" in text and "(7) the CNN helps — digits: reproduced" in text
    assert "no runs of mlp (online)" in text and "## Vision scenario" not in text


@pytest.mark.parametrize("text, message", [
    ("scenarios: {a: {biased: cnn}}\n", "scenarios.a needs 'biased' (an architecture) and 'others'"),
    ("scenarios: {a: {biased: cnn, others: [mlp], expected: [[mlp, none]]}}\n", "scenarios.a.expected"),
    ("scenarios: {a: {biased: cnn, others: [mlp]}}\nclaims: [{number: 1, scenario: a, kind: vibes}]\n",
     "claims[0].kind must be one of bias, transfer, closeness; got 'vibes'"),
    ("scenarios: {a: {biased: cnn, others: [mlp]}}\nclaims: [{number: 1, scenario: b, kind: bias}]\n",
     "claims[0].scenario 'b' is not one of scenarios: a"),
])
def test_a_wrong_claims_file_is_one_line_naming_file_and_key(tmp_path, text, message):
    from analysis.claims import load_reference
    from biaskd.errors import ConfigError

    path = tmp_path / "claims.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_reference(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value) and "\n" not in str(err.value)
