"""Which students are controls for a distilled one is asked of the distillation modes
(:mod:`biaskd.modes`), not read from their names."""

from analysis.controls import comparisons, load_sweep
from biaskd import modes
from biaskd.modes.self import SelfDistillation
from synthetic import make_scenario, rerecord


class BornAgain(SelfDistillation):
    """A mode of one's own whose teacher has the student's architecture, as self-distillation's."""

    name = "born_again"

    def describe(self, model, teacher):
        return f"{model} born again"


def test_a_mode_of_ones_own_with_the_students_architecture_is_the_self_distilled_control(tmp_path, monkeypatch):
    sweep = make_scenario(tmp_path / "runs", "vision", seeds=(0, 1), n=40, n_probe=10)
    monkeypatch.setitem(modes.MODES, "born_again", BornAgain())
    for (label, seed), path in sweep.students.items():
        if label.startswith("self"):
            rerecord(path, distill="born_again")
    loaded = load_sweep(sorted(p.parent for p in sweep.root.rglob("meta.json")))
    comps = {c.distilled: c for c in comparisons(loaded)}
    cross = comps["mlp distilled from cnn"]
    assert cross.independent == "mlp independent" and cross.self_distilled == "mlp born again"
    assert comps["mlp born again"].self_distilled is None  # not a control for itself
