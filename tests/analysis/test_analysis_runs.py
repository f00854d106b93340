import json
import shutil

import numpy as np
import pytest

from biaskd.errors import ArtifactError
from biaskd.record.artifacts import write_manifest as reseal  # a file changed on purpose: the run's manifest follows

from analysis.agreement import agreement_table
from analysis.runs import FRAME_COLUMNS, find_runs, load_run, runs_frame
from analysis.similarity import similarity_matrix


@pytest.fixture
def copy_run(mnist_sweep, tmp_path):
    """Copy one synthetic run (and its teacher, as a sibling) to a scratch folder."""

    def _copy(kind="student", seed=0):
        src = {"student": mnist_sweep.students.get(("cross", seed)), "teacher": mnist_sweep.teachers.get(seed),
               "indep": mnist_sweep.independent.get(seed)}[kind]
        dst = tmp_path / src.name
        shutil.copytree(src, dst)
        t = mnist_sweep.teachers[seed]
        if not (tmp_path / t.name).exists():
            shutil.copytree(t, tmp_path / t.name)
        return dst

    return _copy


def test_find_runs_and_lazy_metadata(mnist_sweep):
    runs = find_runs(mnist_sweep.root)
    assert len(runs) == 9
    r = load_run(mnist_sweep.students[("cross", 1)])
    assert (r.task, r.scenario.name, r.model, r.role, r.distill, r.seed) == ("mnist", "vision", "mlp", "student", "cross", 1)
    assert r.teacher.run_id == "teacher-cnn-s1" and r.teacher.role == "teacher"
    assert r.splits == ["test", "scaled", "translated"] and r.output_splits() == r.splits
    assert r.feature_steps() == [0, 500, 1000]
    f = r.features()
    assert f.features.shape == (50, 16) and f.step == 1000
    o = r.outputs("translated")
    assert o.logits.shape == (150, 10) and set(o.meta) == {"severity"}
    assert o.correct.mean() == pytest.approx(r.metric("translated", "accuracy"))
    # a path given twice, or a run dir given directly, is found once
    assert len(find_runs(mnist_sweep.root, mnist_sweep.teachers[0])) == 9


def test_runs_frame_is_tidy_and_reads_no_per_example_arrays(mnist_sweep, monkeypatch):
    runs = find_runs(mnist_sweep.root)

    def no_npz(*a, **k):
        raise AssertionError("runs_frame must not load per-example arrays")

    monkeypatch.setattr(np, "load", no_npz)
    frame = runs_frame(runs)
    assert list(frame.columns) == FRAME_COLUMNS
    assert len(frame) == 9 * 3 * 4  # runs x splits x (accuracy, ece, loss, n)
    kd = frame[(frame.distill == "cross") & (frame.seed == 2) & (frame.split == "test") & (frame.metric == "accuracy")]
    assert kd.iloc[0]["teacher_run"] == "teacher-cnn-s2" and kd.iloc[0]["teacher_model"] == "cnn"
    assert kd.iloc[0]["value"] == pytest.approx(load_run(kd.iloc[0]["run_dir"]).metric("test", "accuracy"))


def test_teacher_run_resolves_absolute_and_relative_paths(copy_run, mnist_sweep):
    dst = copy_run("student")
    assert load_run(dst).teacher.path.resolve() == (dst.parent / "teacher-cnn-s0").resolve()
    meta = json.loads((dst / "meta.json").read_text())
    meta["teacher_run"] = str(mnist_sweep.teachers[1].resolve())
    (dst / "meta.json").write_text(json.dumps(meta))
    reseal(dst)
    assert load_run(dst).teacher.run_id == "teacher-cnn-s1"
    meta["teacher_run"] = "does-not-exist"
    (dst / "meta.json").write_text(json.dumps(meta))
    reseal(dst)
    with pytest.raises(ArtifactError, match=f"{meta['run_id']}.*does-not-exist"):
        load_run(dst).teacher


def test_incomplete_and_failed_runs_are_skipped_with_warning_and_refused_directly(copy_run, tmp_path):
    inc = copy_run("student")
    (inc / "COMPLETE").unlink()
    failed = copy_run("indep")
    (failed / "FAILED").write_text(json.dumps({"reason": "loss became NaN"}))
    with pytest.warns(UserWarning) as rec:
        runs = find_runs(tmp_path)
    assert [r.run_id for r in runs] == ["teacher-cnn-s0"]
    messages = " ".join(str(w.message) for w in rec)
    assert "incomplete" in messages and inc.name in messages and "loss became NaN" in messages
    with pytest.raises(ArtifactError, match="incomplete"):
        load_run(inc)
    with pytest.raises(ArtifactError, match="FAILED"):
        load_run(failed)


@pytest.mark.parametrize("damage,match", [
    (lambda d: (d / "meta.json").unlink(), "missing meta.json"),
    (lambda d: (d / "metrics.json").unlink(), "missing metrics.json"),
    (lambda d: (d / "meta.json").write_text("{not json"), "not valid JSON"),
    (lambda d: (d / "metrics.json").write_text('{"train": {}}'), "splits"),
    (lambda d: _edit_meta(d, format_version=99), "unsupported format"),
    (lambda d: _edit_meta(d, drop="model"), "lacks"),
])
def test_corrupt_run_dir_raises_artifact_error(copy_run, damage, match):
    d = copy_run("teacher")
    damage(d)
    reseal(d)  # the format's checks, not the manifest's, are under test
    with pytest.raises(ArtifactError, match=match):
        load_run(d)


def _edit_meta(d, drop=None, **changes):
    meta = json.loads((d / "meta.json").read_text())
    meta.update(changes)
    meta.pop(drop, None)
    (d / "meta.json").write_text(json.dumps(meta))


def test_missing_or_corrupt_arrays_raise_artifact_error_naming_the_run(copy_run):
    d = copy_run("teacher")
    run = load_run(d)
    (d / "outputs" / "scaled.npz").unlink()
    with pytest.raises(ArtifactError, match=f"{run.run_id}.*scaled.npz"):
        run.outputs("scaled")
    (d / "outputs" / "test.npz").write_bytes(b"garbage")
    reseal(d)
    with pytest.raises(ArtifactError, match=f"{run.run_id}.*cannot read"):
        run.outputs("test")
    with pytest.raises(ArtifactError, match="no features at step 7"):
        run.features(7)
    (d / "features" / "final.npz").unlink()
    with pytest.raises(ArtifactError, match=f"{run.run_id}.*final.npz"):
        run.features()


def test_bad_array_contents_raise(copy_run):
    d = copy_run("teacher")
    run = load_run(d)
    a = dict(np.load(d / "outputs" / "test.npz"))
    a["logits"][3, 2] = np.nan
    np.savez(d / "outputs" / "test.npz", **a)
    reseal(d)
    with pytest.raises(ArtifactError, match="non-finite"):
        run.outputs("test")
    a["logits"] = a["logits"][:, :5]
    np.savez(d / "outputs" / "test.npz", **a)
    reseal(d)
    with pytest.raises(ArtifactError, match="inconsistent shapes"):
        run.outputs("test")
    f = dict(np.load(d / "features" / "final.npz"))
    np.savez(d / "features" / "final.npz", **{**f, "features": f["features"][:-1], "ids": f["ids"][:-1]})
    reseal(d)
    with pytest.raises(ArtifactError, match="probe n=50"):
        run.features()


def _rewrite_features(d, transform):
    for p in (d / "features").glob("*.npz"):
        a = dict(np.load(p))
        np.savez(p, **transform(a))
    reseal(d)


@pytest.mark.parametrize("change", ["reordered", "different", "fewer"])
def test_mismatched_probe_sets_raise_naming_both_runs(copy_run, change):
    d = copy_run("student")
    teacher = load_run(d.parent / "teacher-cnn-s0")
    meta = json.loads((d / "meta.json").read_text())

    def transform(a):
        if change == "reordered":
            return {**a, "ids": a["ids"][::-1].copy()}
        if change == "different":
            return {**a, "ids": a["ids"] + 7}
        return {**a, "features": a["features"][:40], "ids": a["ids"][:40]}

    _rewrite_features(d, transform)
    if change == "fewer":
        meta["probe"]["n"] = 40
        (d / "meta.json").write_text(json.dumps(meta))
        reseal(d)
    student = load_run(d)
    with pytest.raises(ArtifactError) as e:
        similarity_matrix([teacher, student])
    assert teacher.run_id in str(e.value) and student.run_id in str(e.value)


def test_mismatched_output_ids_raise_naming_both_runs(copy_run):
    d = copy_run("student")
    a = dict(np.load(d / "outputs" / "test.npz"))
    a["ids"] = a["ids"] + 1
    np.savez(d / "outputs" / "test.npz", **a)
    reseal(d)
    student = load_run(d)
    with pytest.raises(ArtifactError) as e:
        agreement_table([student], splits=["test"])
    assert student.run_id in str(e.value) and "teacher-cnn-s0" in str(e.value)
    # the other splits still match
    assert len(agreement_table([student], splits=["scaled"])) == 1


def test_find_runs_walks_nested_sweep_folders_but_not_into_runs(mnist_sweep, tmp_path):
    nested = tmp_path / "outputs" / "2024-01-01" / "12-00-00" / "0"
    nested.parent.mkdir(parents=True)
    shutil.copytree(mnist_sweep.teachers[0], nested)
    shutil.copytree(mnist_sweep.teachers[1], nested / "features" / "inner")  # never looked at
    shutil.copytree(mnist_sweep.teachers[2], tmp_path / ".hidden" / "t2")
    assert [r.path for r in find_runs(tmp_path)] == [nested]
