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
    (conf / "objective").mkdir()
    (conf / "objective" / "cosine.yaml").write_text(textwrap.dedent("""\
        # @package distill
        defaults: [kd, _self_]   # the keys every objective has (alpha, temperature, t_squared)
        objective: mykd.objectives.CosineLogits
        alpha: 0.5
        cosine_logits:
          eps: 1.0e-6
        """))
    return tmp_path


def biaskd(project, *args):
    env = dict(os.environ, WANDB_MODE="offline", PYTHONWARNINGS="ignore",
               PYTHONPATH=os.pathsep.join([str(project), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-m", "biaskd.tools.cli", *args, f"hydra.searchpath=[file://{project / 'conf'}]",
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
    out = biaskd(user_project, "-m", "model=mlp_small", "model@teacher.model=bottleneck", "distill=cross", "objective=kd,cosine",
                 "experiment_name=toy_grid")
    assert "mlp_small distilled from bottleneck (CosineLogits)" in out
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


TASK = '''
import numpy as np
import torch

from biaskd.data.base import Split
from biaskd.data.datamodule import TaskData


class Stripes(TaskData):
    """Horizontal vs vertical stripes in 6x6 noise; the eval split 'rotated' turns every image by
    90 degrees (and so swaps the labels): a task the suite has never seen."""

    task = "stripes"
    input_kind = "image"

    def __init__(self, n_train=192, n_eval=96, data_seed=0, **base):
        base.setdefault("probe_size", 48)
        super().__init__(**base)
        self.n_train, self.n_eval, self.data_seed, self.num_classes = n_train, n_eval, data_seed, 2

    def build(self):
        rng = np.random.default_rng(self.data_seed)

        def split(name, n, rotate=False):
            y = rng.integers(0, 2, n)
            x = rng.normal(0.0, 0.3, (n, 1, 6, 6)).astype(np.float32)
            x[y == 0, 0, ::2, :] += 1.5
            x[y == 1, 0, :, ::2] += 1.5
            if rotate:
                x, y = np.rot90(x, axes=(2, 3)).copy(), 1 - y
            return Split(name, torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)), torch.arange(n))

        return split("train", self.n_train), split("valid", self.n_eval), {
            "test": split("test", self.n_eval), "rotated": split("rotated", self.n_eval, rotate=True)}
'''

MEASURE = '''
def rotation_measure(run, teacher=None):
    """The user's own bias measure: accuracy on rotated stripes, and how much is lost there."""
    test, rotated = run.metric("test", "accuracy"), run.metric("rotated", "accuracy")
    return {"rotated": rotated, "rotation_gap": test - rotated}
'''


def test_own_task_with_its_own_bias_measure_goes_through_training_sweeps_and_every_analysis(user_project):
    """A task, its bias measure, a teacher and a student from the user's package: rows in the
    sweep summary, the transfer map and the report, and no file of the repository changed."""
    import pandas as pd

    from analysis.transfer_map import build

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout
    (user_project / "mykd" / "tasks.py").write_text(TASK)
    (user_project / "mykd" / "measures.py").write_text(MEASURE)
    (user_project / "conf" / "task").mkdir()
    (user_project / "conf" / "task" / "stripes.yaml").write_text(textwrap.dedent("""\
        name: stripes
        _target_: mykd.tasks.Stripes
        batch_size: ${train.batch_size}
        eval_batch_size: 256
        probe_split: test
        kd:
          temperature: 2.0
        bias:
          scenario: stripes
          measure: mykd.measures:rotation_measure
          headline: rotated
        """))
    env = dict(os.environ, WANDB_MODE="offline", PYTHONWARNINGS="ignore",
               PYTHONPATH=os.pathsep.join([str(user_project), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-m", "biaskd.tools.cli", "-m", f"hydra.searchpath=[file://{user_project / 'conf'}]",
                        "task=stripes", "model=bottleneck", "model@teacher.model=cnn_small", "distill=none,self,cross",
                        "seed=1,2", "trainer.max_epochs=2", "trainer.enable_progress_bar=false", "threads=1",
                        "teacher.compare=true", f"runs_dir={user_project / 'runs'}"],
                       cwd=user_project, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "bottleneck distilled from cnn_small" in p.stdout
    sweep = next((user_project / "runs" / "_hydra").glob("*_multirun"))
    summary = (sweep / "summary.md").read_text()
    assert "rotated" in summary and "bottleneck" in summary
    runs = find_runs(user_project / "runs")
    assert {r.scenario.name for r in runs} == {"stripes"}
    # the transfer map: the user's measure, its rows paired by seed
    sys.path.insert(0, str(user_project))
    try:
        written = build([user_project / "runs"], user_project / "map")
    finally:
        sys.path.remove(str(user_project))
    frame = pd.read_csv(written["transfer_map"])
    assert set(frame["metric"]) == {"rotated", "rotation_gap"} and set(frame["n_seeds"]) == {2}
    assert written["heatmap_stripes"].is_file()
    report = build_report([user_project / "runs"], user_project / "report", progress=False).read_text()
    assert "bottleneck distilled from cnn_small" in report and "rotated" in report
    after = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout
    assert after == status  # nothing in the repository was written or changed
