"""The question on the dashboard: every student run logs its agreement, JS divergence and probe
CKA with its teacher to metrics.json and W&B, equal to what the analysis computes from run dirs."""
import json

import numpy as np
import pytest

from analysis.agreement import agreement_table
from analysis.runs import load_run
from analysis.similarity import linear_cka
from biaskd.data.build import build_data
from biaskd.errors import ConfigError
from biaskd.run.train import train
from biaskd.wandb_logging import table_inputs


def _analysis_view(run_dir, teacher_dir):
    """Agreement, JS per split and probe CKA as the analysis computes them from the run dirs."""
    student, teacher = load_run(run_dir.path), load_run(teacher_dir.path)
    at = agreement_table([(student, teacher)]).set_index("split")
    cka = linear_cka(student.features().features, teacher.features().features)
    return at, cka


def _wandb_files(run_dir):
    (offline,) = (run_dir.path / "wandb").glob("offline-run-*")
    return offline


def test_cross_distilled_run_logs_teacher_measures_equal_to_the_analysis(compose_tiny):
    run = train(compose_tiny("distill=cross", "logger=wandb"))
    at, cka = _analysis_view(run, run.teacher_dir)
    metrics = run.metrics
    assert metrics["teacher"]["run_id"] == run.teacher_dir.path.name and metrics["teacher"]["model"] == "cnn_small"
    for split in ("test", "shifted"):
        assert metrics["splits"][split]["teacher_agreement"] == at.loc[split, "top1_agreement"]
        assert metrics["splits"][split]["teacher_js"] == pytest.approx(at.loc[split, "js_divergence"], rel=1e-12)
    assert metrics["probe"] == {"teacher_cka": pytest.approx(cka, rel=1e-12), "n": 64}
    assert 0 < cka <= 1

    # the W&B run's files: the summary keys in its record log, the values in the teacher table
    offline = _wandb_files(run)
    records = next(offline.glob("*.wandb")).read_bytes()
    for key, value in (("test/teacher_agreement", metrics["splits"]["test"]["teacher_agreement"]),
                       ("shifted/teacher_js", metrics["splits"]["shifted"]["teacher_js"]),
                       ("probe/teacher_cka", cka)):
        assert key.encode() in records and json.dumps(value).encode() in records
    (table_file,) = (offline / "files" / "media" / "table" / "teacher").glob("agreement_*.table.json")
    table = json.loads(table_file.read_text())
    rows = {row[0]: dict(zip(table["columns"], row)) for row in table["data"]}
    assert rows["test"]["teacher_agreement"] == at.loc["test", "top1_agreement"]
    assert rows["shifted"]["teacher_js"] == pytest.approx(at.loc["shifted", "js_divergence"], rel=1e-12)
    assert rows["probe"]["teacher_cka"] == pytest.approx(cka, rel=1e-12)
    # prediction tables carry the input and the teacher's prediction
    (pred_file,) = (offline / "files" / "media" / "table" / "predictions").glob("test_*.table.json")
    pred = json.loads(pred_file.read_text())
    assert pred["columns"][:2] == ["id", "image"]
    assert {"teacher_prediction", "agrees_with_teacher"} <= set(pred["columns"])
    t_pred = load_run(run.teacher_dir.path).outputs("test").predictions
    col = pred["columns"].index("teacher_prediction")
    assert [r[col] for r in pred["data"]] == t_pred[: len(pred["data"])].tolist()


def test_independent_student_is_compared_with_its_teacher_when_one_is_known(compose_tiny, tmp_path):
    alone = train(compose_tiny("distill=none", runs_dir=tmp_path / "alone"))
    assert "teacher" not in alone.metrics and "probe" not in alone.metrics
    assert "teacher_agreement" not in alone.metrics["splits"]["test"]

    # teacher.compare=true: the teacher a cross-distilled run of this config would use is trained first
    indep = train(compose_tiny("distill=none", "teacher.compare=true", "experiment_name=b"))
    cross = train(compose_tiny("distill=cross"))
    assert indep.metrics["teacher"]["run_id"] == cross.teacher_dir.path.name
    at, cka = _analysis_view(indep, cross.teacher_dir)
    assert indep.metrics["splits"]["test"]["teacher_agreement"] == at.loc["test", "top1_agreement"]
    assert indep.metrics["probe"]["teacher_cka"] == pytest.approx(cka, rel=1e-12)
    # auto (the default): compared because that teacher's run is complete; the run's identity
    # does not depend on teacher.compare
    auto = train(compose_tiny("distill=none", "experiment_name=c"))
    assert auto.path.name == indep.path.name
    assert auto.metrics["splits"]["test"]["teacher_agreement"] == indep.metrics["splits"]["test"]["teacher_agreement"]


def test_online_student_is_compared_with_its_co_trained_teacher(compose_tiny):
    run = train(compose_tiny("distill=online"))
    m = run.metrics
    assert m["teacher"] == {"model": "cnn_small", "source": "online"}
    assert all(0 <= m["splits"][s]["teacher_agreement"] <= 1 for s in ("test", "shifted"))
    assert 0 <= m["splits"]["test"]["teacher_js"] <= np.log(2)
    assert 0 < m["probe"]["teacher_cka"] <= 1


def test_teacher_compare_is_checked_before_training(compose_tiny):
    with pytest.raises(ConfigError, match="teacher.compare"):
        train(compose_tiny("teacher.compare=sometimes"))


def test_prediction_tables_show_sentences_for_agreement(compose_tiny):
    data = build_data(compose_tiny("task=sva", "task.grammar.n_train=60", "+task.grammar.n_test=20",
                                   "model=transformer"))
    kind, sentences = table_inputs(data, "test", 3)
    assert kind == "sentence" and len(sentences) == 3
    assert all(isinstance(s, str) and len(s.split()) >= 2 for s in sentences)
    assert sentences[0].split() == data.vocab.decode(data.evals["test"].x[0].tolist())
