"""The analysis classifies runs by their distillation mode's properties (:mod:`biaskd.modes`), not by
the mode's name: a mode of one's own, registered in ``MODES``, is counted as its properties say."""

import pytest

from analysis.claims import Claim, Pair, claims_closeness, claims_transfer
from analysis.runs import RunProblem, find_runs, is_independent, load_run, mode_flag, runs_frame
from analysis.scenario import load_scenario, transfer_rows
from analysis.tables import Rule
from biaskd import modes
from biaskd.errors import ArtifactError
from biaskd.modes.cross import CrossDistillation
from synthetic import make_scenario, rerecord


class Tutored(CrossDistillation):
    """A mode of one's own that distils from a trained teacher of another model, as ``cross`` does."""

    name = "tutored"

    def describe(self, model, teacher):
        return f"{model} tutored by {teacher}"


@pytest.fixture
def tutored(tmp_path, monkeypatch):
    """The vision scenario (3 seeds) with its cross-distilled students recorded as ``tutored``."""
    sweep = make_scenario(tmp_path / "runs", "vision", seeds=(0, 1, 2), n=40, n_probe=10)
    monkeypatch.setitem(modes.MODES, "tutored", Tutored())
    for (label, _), path in sweep.students.items():
        if label == "cross":
            rerecord(path, distill="tutored")
    return sweep, load_scenario("vision", [sweep.root])


def test_a_cross_like_mode_of_ones_own_is_distilled_not_independent(tutored):
    sweep, sc = tutored
    students = [r for r in sc.runs if r.distill == "tutored"]
    assert len(students) == 3 and all(r.mode.cross_distilled for r in students)
    assert {r.distill for _, r in sc.independent("mnist", "mlp")} == {"none"}
    assert not is_independent(sc.frame[sc.frame["distill"] == "tutored"]).any()
    groups = sc.distilled("mnist", "mlp", lambda m: m.cross_distilled)
    assert list(groups) == [("tutored", "cnn", 1.0, 1.0)] and len(groups[("tutored", "cnn", 1.0, 1.0)]) == 3
    assert set(sc.taught) == {load_run(p).run_id for p in sweep.teachers.values()}  # the CNN teachers
    t = transfer_rows(sc, "mnist")
    assert set(t["distill"]) == {"tutored"} and (t["n_indep"] == 3).all() and (t["n_kd"] == 3).all()
    pair = Pair("cnn", ("mlp",))
    rows, missing = claims_transfer(sc, Claim(2, "vision", "transfer", "", "transfer"), Rule(), pair)
    assert {r["first"] for r in rows} == {"mlp (tutored<-cnn)"} and not missing
    rows, missing = claims_closeness(sc, Claim(5, "vision", "closeness", "", "closeness"), Rule(), pair)
    assert {r["second"] for r in rows} == {"mlp (independent)", "mlp (self-distilled)"} and not missing


def test_a_run_of_a_mode_the_suite_does_not_define_is_left_out_naming_the_mode(tmp_path):
    sweep = make_scenario(tmp_path / "runs", "vision", seeds=(0,), n=20, n_probe=5)
    path = sweep.students[("cross", 0)]
    rerecord(path, distill="tutored")
    with pytest.raises(ArtifactError, match=f"run {path}: .*distill mode 'tutored'"):
        load_run(path)
    with pytest.warns(RunProblem, match="distill mode 'tutored'"):
        runs = find_runs(sweep.root)
    assert {r.path for r in runs} == {m.parent for m in sweep.root.rglob("meta.json")} - {path}
    with pytest.raises(ArtifactError, match="distill mode.*tutored"):
        mode_flag(runs_frame(runs).assign(distill="tutored"), "distilled")
