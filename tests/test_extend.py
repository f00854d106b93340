"""Bring your own model or objective: a class in the user's own package and a YAML in the user's
own config folder (``hydra.searchpath``), nothing changed in the repository."""
import os
import subprocess
import sys
import textwrap

import pytest

from analysis.report import build_report
from analysis.runs import find_runs

MODEL = '''
import torch
from torch import nn


class Bottleneck(nn.Module):
    """An MLP through a narrow layer: the user's own student (or teacher)."""

    input_kind = "image"  # what the task gives it: "image" or "tokens"

    def __init__(self, num_classes, in_shape, width=16):
        super().__init__()
        n = 1
        for s in in_shape:
            n *= int(s)
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(n, width), nn.Tanh())
        self.head = nn.Linear(width, num_classes)
        self.feature_dim = width

    def features(self, x):  # the representation the analysis compares
        return self.encoder(x)

    def forward(self, x):
        return self.head(self.features(x))

    def features_and_logits(self, x):  # optional: feature-based objectives need it
        f = self.features(x)
        return f, self.head(f)
'''

OBJECTIVE = '''
import torch.nn.functional as F

from biaskd.objectives import Objective


class CosineLogits(Objective):
    """1 - cosine similarity of student and teacher logits: the user's own objective."""

    name = "cosine_logits"
    options = {"eps": None}  # options under distill.cosine_logits

    def __init__(self, eps=1e-8):
        super().__init__()
        self.eps = eps

    def term(self, student, teacher):
        return (1 - F.cosine_similarity(student.logits.float(), teacher.logits.float(), eps=self.eps)).mean()
'''


@pytest.fixture
def user_project(tmp_path):
    """A user's folder: a package ``mykd`` and a config folder ``conf`` with a model and an objective."""
    pkg = tmp_path / "mykd"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(MODEL)
    (pkg / "objectives.py").write_text(OBJECTIVE)
    conf = tmp_path / "conf"
    (conf / "model").mkdir(parents=True)
    (conf / "model" / "bottleneck.yaml").write_text(textwrap.dedent("""\
        name: bottleneck
        _target_: mykd.models.Bottleneck
        width: 16
        """))
    (conf / "distill").mkdir()
    (conf / "distill" / "cosine.yaml").write_text(textwrap.dedent("""\
        defaults:
          - cross          # biaskd's offline KD settings (alpha, temperature, cached teacher outputs)
          - _self_
        objective: mykd.objectives.CosineLogits
        alpha: 0.5
        cosine_logits:
          eps: 1.0e-6
        """))
    return tmp_path


def biaskd(project, *args):
    env = dict(os.environ, WANDB_MODE="offline", PYTHONWARNINGS="ignore",
               PYTHONPATH=os.pathsep.join([str(project), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-m", "biaskd.cli", *args, f"hydra.searchpath=[file://{project / 'conf'}]",
                        "task=toy", "trainer.max_epochs=2", "trainer.enable_progress_bar=false", "threads=1",
                        f"runs_dir={project / 'runs'}"], cwd=project, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout


def test_own_model_as_student_and_teacher_and_own_objective_from_a_user_package(user_project):
    # the user's model as the student of a recipe, beside the built-in teacher
    biaskd(user_project, "-m", "experiment=toy_grid", "model=bottleneck", "model@teacher.model=cnn_small",
           "distill=none,cross")
    # ... as the teacher of a built-in student, and the user's objective
    out = biaskd(user_project, "-m", "model=mlp_small", "model@teacher.model=bottleneck", "distill=cross,cosine",
                 "experiment_name=toy_grid")
    assert "mlp_small cross-distilled from bottleneck" in out
    runs = find_runs(user_project / "runs")
    by = {(r.model, r.role, r.distill, r.teacher_model, r.objective): r for r in runs}
    assert ("bottleneck", "student", "cross", "cnn_small", "kd") in by
    assert ("bottleneck", "teacher", "none", None, None) in by
    own = by[("mlp_small", "student", "cross", "bottleneck", "mykd.objectives.CosineLogits")]
    assert own.meta["objective_options"] == {"eps": 1e-6}
    assert 0 <= own.metrics["splits"]["test"]["teacher_agreement"] <= 1  # compared with the user's teacher
    # analysed like the built-in ones
    report = build_report([user_project / "runs"], user_project / "report", progress=False).read_text()
    assert "bottleneck distilled from cnn_small" in report
    assert "mlp_small distilled from bottleneck (CosineLogits)" in report
